// examples/upload_progress/import.cpp
// SPDX-License-Identifier: BSL-1.0
#include "upload_progress/import.hpp"

#include "upload_progress/csv.hpp"

#include <ssepp/detail/utf8.hpp>
#include <ssepp/request.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <bit>
#include <charconv>
#include <cstdio>
#include <ctime>
#include <limits>
#include <span>

namespace upload {
namespace {

using clock_type = std::chrono::steady_clock;
namespace sqlite = common::sqlite;

constexpr std::array<std::string_view, 4> required_columns{"sku", "name", "price", "quantity"};

// Progress: at least this far apart (but the first and the last call)...
constexpr auto progress_interval = std::chrono::milliseconds(100);
// ...and the clock is read (and the cancelled hook polled) after this many rows or bytes,
// whichever comes first, so the gap stays well under 250 ms whatever the row sizes.
constexpr std::uint64_t check_every_rows = 64;
constexpr std::size_t check_every_bytes = 64 * 1024;
constexpr std::uint32_t check_every_compares = 1024; // while sorting the good rows

constexpr std::size_t max_reported_sku = 64;

// Header names and values: case-insensitive names, spaces and tabs trimmed, as HTTP does.
using ssepp::detail::iequals;
using ssepp::detail::trim_ows;

bool is_digit(char c) noexcept { return c >= '0' && c <= '9'; }

// Well-formed UTF-8 (no overlongs, no surrogates, nothing above U+10FFFF): the parser's check.
bool valid_utf8(std::string_view s) noexcept
{
    return ssepp::detail::utf8_valid_prefix(s) == s.size();
}

// `12`, `12.5`, `12.50` -> cents; no sign, no exponent, at most two decimals, fits in int64.
bool parse_price(std::string_view s, std::int64_t& cents) noexcept
{
    const std::size_t dot = s.find('.');
    const std::string_view whole = s.substr(0, dot);
    const std::string_view frac
        = dot == std::string_view::npos ? std::string_view{} : s.substr(dot + 1);
    if (whole.empty() || (dot != std::string_view::npos && (frac.empty() || frac.size() > 2)))
        return false;
    if (!std::all_of(whole.begin(), whole.end(), is_digit)
        || !std::all_of(frac.begin(), frac.end(), is_digit))
        return false;
    std::int64_t units = 0;
    const auto [end, ec] = std::from_chars(whole.data(), whole.data() + whole.size(), units);
    if (ec != std::errc{} || end != whole.data() + whole.size())
        return false;
    std::int64_t hundredths = 0;
    for (std::size_t i = 0; i < 2; ++i)
        hundredths = hundredths * 10 + (i < frac.size() ? frac[i] - '0' : 0);
    constexpr auto max = std::numeric_limits<std::int64_t>::max();
    if (units > (max - hundredths) / 100)
        return false;
    cents = units * 100 + hundredths;
    return true;
}

bool parse_quantity(std::string_view s, std::int64_t& quantity) noexcept
{
    if (s.empty() || !is_digit(s.front()))
        return false;
    const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), quantity);
    return ec == std::errc{} && end == s.data() + s.size();
}

// Why a price or a quantity was refused, for the row-error: the rule it broke. Only called for
// a value the parser refused.
std::string_view number_problem(std::string_view s, bool decimal) noexcept
{
    if (s.empty())
        return decimal ? "price is empty" : "quantity is empty";
    if (s.front() == '-')
        return decimal ? "price must not be negative" : "quantity must not be negative";
    const std::size_t dot = s.find('.');
    const auto digits = [](std::string_view d) { return !d.empty() && std::all_of(d.begin(), d.end(), is_digit); };
    if (!decimal) {
        if (digits(s))
            return "quantity is too large";
        return "quantity must be a whole number written in digits only (like 12)";
    }
    if (dot != std::string_view::npos && digits(s.substr(0, dot)) && digits(s.substr(dot + 1))) {
        if (s.size() - dot - 1 > 2)
            return "price must be a number with at most 2 decimals";
        return "price is too large";
    }
    if (dot == std::string_view::npos && digits(s))
        return "price is too large";
    return "price must be a number with at most 2 decimals, in digits with an optional '.' (like 12.50)";
}

struct columns {
    std::array<std::size_t, 4> index; // sku, name, price, quantity
    std::size_t needed;               // fields a row needs: the largest index + 1
};

std::optional<std::string> map_header(std::span<const std::string_view> fields, columns& out)
{
    constexpr std::size_t none = std::numeric_limits<std::size_t>::max();
    out.index.fill(none);
    for (std::size_t i = 0; i < fields.size(); ++i) {
        const std::string_view name = trim_ows(fields[i]);
        for (std::size_t c = 0; c < required_columns.size(); ++c) {
            if (!iequals(name, required_columns[c]))
                continue;
            if (out.index[c] != none)
                return "duplicate column: " + std::string(required_columns[c]);
            out.index[c] = i;
        }
    }
    std::string missing;
    for (std::size_t c = 0; c < required_columns.size(); ++c) {
        if (out.index[c] != none)
            continue;
        missing.append(missing.empty() ? "" : ", ").append(required_columns[c]);
    }
    if (!missing.empty())
        return "missing required columns: " + missing;
    out.needed = *std::max_element(out.index.begin(), out.index.end()) + 1;
    return std::nullopt;
}

// Reads the header record into `cols`; an error message if it is not usable.
std::optional<std::string> read_header(csv::reader& reader, columns& cols)
{
    csv::record header;
    if (!reader.next(header))
        return "empty file";
    if (header.malformed)
        return "malformed quotes in header row";
    return map_header(header.fields, cols);
}

// For row_error::sku: valid UTF-8, at most max_reported_sku bytes, cut between characters.
std::string reported_sku(std::string_view sku)
{
    if (!valid_utf8(sku))
        return {};
    if (sku.size() > max_reported_sku) {
        std::size_t cut = max_reported_sku;
        while (cut > 0 && (static_cast<unsigned char>(sku[cut]) & 0xC0) == 0x80)
            --cut;
        sku = sku.substr(0, cut);
    }
    return std::string(sku);
}

std::string utc_now_iso8601()
{
    const auto now = std::chrono::system_clock::now();
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch());
    const std::time_t seconds = static_cast<std::time_t>(ms.count() / 1000);
    std::tm tm{};
    gmtime_r(&seconds, &tm);
    char buf[32];
    const std::size_t n = std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
    std::snprintf(buf + n, sizeof buf - n, ".%03dZ", static_cast<int>(ms.count() % 1000));
    return buf;
}

std::uint64_t count_products(sqlite::statement& count)
{
    count.step();
    const auto n = static_cast<std::uint64_t>(count.column_int64(0));
    count.reset();
    return n;
}

// The work of import_csv inside its transaction, in two passes over the rows:
// 1. read and validate them in file order: bad rows are counted and reported as they come;
// 2. sort the good rows by sku, then read each again and upsert it. Writing in key order
//    touches the B-tree page after page instead of at random: about three times faster than
//    file order when the file is not sorted by sku already.
// Between the passes a row is kept as 32 bytes (where it is, its line, its sku's first 16
// bytes), and the duplicate check adds 16 bytes a row: memory that is new to the process costs
// time, more than reading a row twice does (see benchmarks/README.md).
// rows_done counts rows whose fate is settled: bad rows in pass 1, good rows once written.
class importer {
public:
    importer(const import_hooks& hooks, std::string_view text, std::uint64_t rows_total)
        : hooks_(hooks), text_(text), total_(rows_total), reader_(text), lookup_(text)
    {
        rows_.reserve(rows_total);
        const std::uint64_t slots = std::max<std::uint64_t>(16, rows_total + rows_total / 2 + 1);
        slots_.resize(std::bit_ceil(slots));
    }

    void run(sqlite::statement& upsert)
    {
        if (auto problem = read_header(reader_, cols_))
            throw import_error(*problem); // check_header passed, so this cannot happen
        emit();

        std::uint64_t rows_read = 0;
        std::size_t offset_at_tick = reader_.offset();
        csv::record rec;
        while (reader_.next(rec)) {
            validate(rec);
            if (++rows_read % check_every_rows == 0
                || reader_.offset() - offset_at_tick >= check_every_bytes) {
                offset_at_tick = reader_.offset();
                tick();
            }
        }
        std::vector<slot>().swap(slots_); // the duplicate check is done: give its memory back

        // Skus longer than 16 bytes that all begin alike ("ACME-WIDGET-2024-0001...") would
        // leave the keys equal and the comparisons reading the rows: key them after the
        // shared prefix instead (the prefix being shared, the order is the same).
        if (shared_prefix_ > 0 && longest_sku_ > 16) {
            for (std::size_t i = 0; i < rows_.size(); ++i) {
                if (rows_[i].good != 0)
                    set_key(rows_[i], sku_at(rows_[i], reader_), shared_prefix_);
                if ((i + 1) % check_every_rows == 0)
                    tick();
            }
        }
        // The good rows first, then sorted by sku, mostly by the integers holding 16 bytes of
        // it (the comparison reads the skus themselves only when those are equal). Skus are
        // unique among good rows, so the order is total. The comparator ticks too: sorting a
        // million rows takes a while.
        const auto good_end = std::partition(rows_.begin(), rows_.end(),
                                             [](const kept_row& r) { return r.good != 0; });
        good_ = static_cast<std::uint64_t>(good_end - rows_.begin());
        std::uint32_t compares = 0;
        std::sort(rows_.begin(), good_end, [&](const kept_row& a, const kept_row& b) {
            if (++compares % check_every_compares == 0)
                tick();
            if (a.head != b.head)
                return a.head < b.head;
            if (a.tail != b.tail)
                return a.tail < b.tail;
            return sku_at(a, reader_) < sku_at(b, lookup_);
        });

        for (std::uint64_t i = 0; i < good_; ++i) {
#if defined(__GNUC__)
            // The rows lie all over the upload now; fetch a few ahead.
            if (i + 8 < good_)
                __builtin_prefetch(text_.data() + rows_[i + 8].offset);
#endif
            write(rows_[i], rec, upsert);
            ++done_;
            if ((i + 1) % check_every_rows == 0)
                tick();
        }
        if (hooks_.cancelled && hooks_.cancelled())
            throw import_cancelled();
        emit();
    }

    [[nodiscard]] std::uint64_t done() const noexcept { return done_; }
    [[nodiscard]] std::uint64_t errors() const noexcept { return errors_; }
    [[nodiscard]] std::uint64_t good() const noexcept { return good_; }

private:
    // A row with a usable sku, between the passes.
    struct kept_row {
        std::uint64_t head; // the sku's first 16 bytes, zero-padded, as two big-endian integers:
        std::uint64_t tail; // their order is the skus' byte order as far as it goes
        std::uint64_t offset;
        std::uint64_t line : 63;
        std::uint64_t good : 1; // passed every check (else kept for the duplicate check only)
    };
    // The duplicate check: open addressing with linear probing; 0 is an empty slot.
    struct slot {
        std::uint32_t tag;  // high bits of the sku's hash
        std::uint32_t row;  // index in rows_, plus 1
    };

    // Sets k.head and k.tail from the 16 bytes of `sku` from `skip` on.
    static void set_key(kept_row& k, std::string_view sku, std::size_t skip) noexcept
    {
        std::array<unsigned char, 16> bytes{};
        if (skip < sku.size())
            std::copy_n(sku.begin() + skip, std::min(sku.size() - skip, bytes.size()),
                        bytes.begin());
        k.head = 0;
        k.tail = 0;
        for (std::size_t i = 0; i < 8; ++i) {
            k.head = k.head << 8 | bytes[i];
            k.tail = k.tail << 8 | bytes[i + 8];
        }
    }

    // The sku of a kept row, read again with `reader` (valid until its next use).
    std::string_view sku_at(const kept_row& k, csv::reader& reader)
    {
        reader.seek(k.offset, k.line);
        csv::record rec;
        reader.next(rec);
        return trim_ows(rec.fields[cols_.index[0]]);
    }

    // The first kept row with this sku; else nullptr, having recorded the sku for the row that
    // the caller keeps next (rows_[rows_.size()]).
    const kept_row* first_with(std::string_view sku)
    {
        if (rows_.size() + 1 >= std::numeric_limits<std::uint32_t>::max())
            throw import_error("too many rows");
        const std::uint64_t hash = std::hash<std::string_view>{}(sku);
        const auto tag = static_cast<std::uint32_t>(hash >> 32);
        const std::size_t mask = slots_.size() - 1;
        for (std::size_t i = hash & mask;; i = (i + 1) & mask) {
            slot& s = slots_[i];
            if (s.row == 0) {
                s = {tag, static_cast<std::uint32_t>(rows_.size() + 1)};
                return nullptr;
            }
            if (s.tag == tag && sku_at(rows_[s.row - 1], lookup_) == sku)
                return &rows_[s.row - 1];
        }
    }

    // Between rows: cancelled?, and progress if 100 ms have passed since the last call.
    void tick()
    {
        if (hooks_.cancelled && hooks_.cancelled())
            throw import_cancelled();
        if (clock_type::now() - last_progress_ >= progress_interval)
            emit();
    }

    // The interval counts from the return of the previous call, so the calls start at least
    // 100 ms apart as the hook itself sees them, however long it or the scheduler takes.
    void emit()
    {
        if (hooks_.on_progress)
            hooks_.on_progress(progress{done_, total_, errors_});
        last_progress_ = clock_type::now();
    }

    template <class Reason>
    void reject(std::uint64_t line, std::string_view sku, Reason&& reason)
    {
        ++errors_;
        ++done_;
        if (errors_ > hooks_.max_reported_errors || !hooks_.on_row_error)
            return;
        hooks_.on_row_error(row_error{line, reported_sku(sku), std::string(reason())});
    }

    std::string_view field(const csv::record& rec, std::size_t column) const noexcept
    {
        const std::size_t i = cols_.index[column];
        return i < rec.fields.size() ? trim_ows(rec.fields[i]) : std::string_view{};
    }

    // The name of a column of the file by its index: one of ours, or its number.
    std::string column_name(std::size_t index) const
    {
        for (std::size_t c = 0; c < required_columns.size(); ++c)
            if (cols_.index[c] == index)
                return std::string("the ") + std::string(required_columns[c]) + " field";
        return "field " + std::to_string(index + 1);
    }

    void validate(const csv::record& rec)
    {
        const auto fixed = [](std::string_view r) { return [r] { return r; }; };
        const std::string_view sku = field(rec, 0);
        if (rec.malformed) {
            return reject(rec.line, sku, [&] {
                if (rec.fault == csv::fault::text_after_closing_quote)
                    return "malformed quotes in " + column_name(rec.fault_field)
                           + ": text after its closing quote (a quoted field ends at its closing quote)";
                return "malformed quotes in " + column_name(rec.fault_field)
                       + ": a quote in an unquoted field (quote the whole field and double the quotes in it)";
            });
        }
        if (rec.fields.size() < cols_.needed) {
            const auto have = rec.fields.size();
            return reject(rec.line, sku, [this, have] {
                return "row has " + std::to_string(have) + (have == 1 ? " field" : " fields") + ", "
                       + std::to_string(cols_.needed) + " needed to reach the " + std::string(last_column_name()) + " column";
            });
        }
        if (sku.empty())
            return reject(rec.line, sku, fixed("sku is empty"));
        if (!valid_utf8(sku))
            return reject(rec.line, sku, fixed("sku is not valid UTF-8"));
        if (const kept_row* first = first_with(sku)) {
            const std::uint64_t first_line = first->line;
            return reject(rec.line, sku, [first_line] {
                return "duplicate sku (first at line " + std::to_string(first_line) + ")";
            });
        }
        kept_row& kept = rows_.emplace_back(kept_row{0, 0, rec.offset, rec.line, 0});
        set_key(kept, sku, 0);
        const std::string_view name = field(rec, 1);
        if (name.empty())
            return reject(rec.line, sku, fixed("name is empty"));
        if (!valid_utf8(name))
            return reject(rec.line, sku, fixed("name is not valid UTF-8"));
        std::int64_t number = 0;
        if (const auto price = field(rec, 2); !parse_price(price, number))
            return reject(rec.line, sku, fixed(number_problem(price, true)));
        if (const auto quantity = field(rec, 3); !parse_quantity(quantity, number))
            return reject(rec.line, sku, fixed(number_problem(quantity, false)));
        kept.good = 1;
        // The longest sku, and the prefix all good skus share, for the sort keys.
        longest_sku_ = std::max(longest_sku_, sku.size());
        if (first_sku_.empty()) {
            first_sku_ = sku;
            shared_prefix_ = sku.size();
        } else {
            const auto shared = std::mismatch(sku.begin(), sku.end(), first_sku_.begin(),
                                              first_sku_.begin() + shared_prefix_);
            shared_prefix_ = static_cast<std::size_t>(shared.first - sku.begin());
        }
    }

    // The required column furthest right in the file.
    std::string_view last_column_name() const
    {
        std::size_t best = 0;
        for (std::size_t c = 1; c < required_columns.size(); ++c)
            if (cols_.index[c] > cols_.index[best])
                best = c;
        return required_columns[best];
    }

    // Reads a good row again and upserts it.
    void write(const kept_row& k, csv::record& rec, sqlite::statement& upsert)
    {
        reader_.seek(k.offset, k.line);
        reader_.next(rec);
        std::int64_t cents = 0;
        std::int64_t quantity = 0;
        (void)parse_price(field(rec, 2), cents);
        (void)parse_quantity(field(rec, 3), quantity);
        // The views stay valid (in the upload or the reader's buffer) until the next row.
        upsert.bind_static(1, field(rec, 0)).bind_static(2, field(rec, 1));
        upsert.bind(3, cents).bind(4, quantity);
        upsert.step();
        upsert.reset();
    }

    const import_hooks& hooks_;
    std::string_view text_;
    std::uint64_t total_;
    columns cols_{};
    csv::reader reader_;
    csv::reader lookup_; // reads kept rows again for the duplicate check and the sort
    clock_type::time_point last_progress_;
    std::uint64_t done_ = 0;
    std::uint64_t errors_ = 0;
    std::uint64_t good_ = 0;
    std::vector<kept_row> rows_;
    std::vector<slot> slots_;
    std::string first_sku_;         // of the first good row
    std::size_t shared_prefix_ = 0; // bytes all good skus have in common
    std::size_t longest_sku_ = 0;
};

} // namespace

std::optional<std::string> check_header(std::string_view csv)
{
    try {
        csv::reader reader(csv);
        columns cols{};
        return read_header(reader, cols);
    } catch (const csv::error& e) {
        return e.what();
    }
}

void ensure_schema(sqlite::db& db)
{
    db.exec("PRAGMA journal_mode=WAL;"
            "CREATE TABLE IF NOT EXISTS products("
            " sku TEXT PRIMARY KEY,"
            " name TEXT NOT NULL,"
            " price_cents INTEGER NOT NULL CHECK (price_cents >= 0),"
            " quantity INTEGER NOT NULL CHECK (quantity >= 0),"
            " updated_at TEXT NOT NULL"
            ") WITHOUT ROWID");
}

summary import_csv(sqlite::db& db, std::string_view csv, const import_hooks& hooks)
{
    const auto started = clock_type::now();
    if (auto problem = check_header(csv))
        throw import_error(*problem);
    std::uint64_t records = 0;
    try {
        records = csv::count_records(csv);
    } catch (const csv::error& e) {
        throw import_error(e.what());
    }
    if (hooks.cancelled && hooks.cancelled())
        throw import_cancelled();

    importer job(hooks, csv, records - 1); // the header is a record
    std::uint64_t before = 0;
    std::uint64_t after = 0;
    try {
        // A modest page cache: the rows go in sku order, so the B-tree pages in use are few,
        // and SQLite writes the others to the WAL early instead of keeping every dirty page of
        // the transaction (80 MB for a million new rows), memory that costs time to touch.
        db.exec("PRAGMA synchronous=NORMAL; PRAGMA cache_size=-16384");
        sqlite::transaction tx(db);
        auto count = db.prepare("SELECT count(*) FROM products");
        before = count_products(count);
        auto upsert = db.prepare(
            "INSERT INTO products(sku, name, price_cents, quantity, updated_at)"
            " VALUES(?1, ?2, ?3, ?4, ?5)"
            " ON CONFLICT(sku) DO UPDATE SET name = excluded.name,"
            " price_cents = excluded.price_cents, quantity = excluded.quantity,"
            " updated_at = excluded.updated_at");
        upsert.bind(5, utc_now_iso8601());
        job.run(upsert);
        after = count_products(count);
        tx.commit();
    } catch (const sqlite::error& e) {
        throw import_error(std::string("database error: ") + e.what());
    } catch (const csv::error& e) {
        throw import_error(e.what());
    }
    const std::uint64_t inserted = after - before;
    const auto elapsed = clock_type::now() - started;
    return summary{job.done(), inserted, job.good() - inserted, job.errors(),
                   std::chrono::duration_cast<std::chrono::milliseconds>(elapsed)};
}

product_page list_products(sqlite::db& db, std::uint64_t limit, std::uint64_t offset)
{
    constexpr auto max_sql = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
    product_page page{0, {}};
    sqlite::transaction tx(db, sqlite::transaction::mode::deferred);
    auto count = db.prepare("SELECT count(*) FROM products");
    page.total = count_products(count);
    auto select = db.prepare("SELECT sku, name, price_cents, quantity, updated_at FROM products"
                             " ORDER BY sku LIMIT ?1 OFFSET ?2");
    select.bind(1, static_cast<std::int64_t>(std::min(limit, max_page_size)));
    select.bind(2, static_cast<std::int64_t>(std::min(offset, max_sql)));
    while (select.step()) {
        page.products.push_back(product{std::string(select.column_text(0)),
                                        std::string(select.column_text(1)),
                                        select.column_int64(2), select.column_int64(3),
                                        std::string(select.column_text(4))});
    }
    select.reset();
    tx.commit();
    return page;
}

std::string format_price(std::int64_t cents)
{
    char buf[32];
    const int n = std::snprintf(buf, sizeof buf, "%lld.%02lld", static_cast<long long>(cents / 100),
                                static_cast<long long>(cents % 100));
    return std::string(buf, static_cast<std::size_t>(n));
}

void to_json(nlohmann::json& j, const product& p)
{
    j = nlohmann::json{{"sku", p.sku},
                       {"name", p.name},
                       {"price", format_price(p.price_cents)},
                       {"price_cents", p.price_cents},
                       {"quantity", p.quantity},
                       {"updated_at", p.updated_at}};
}

void to_json(nlohmann::json& j, const product_page& page)
{
    j = nlohmann::json{{"total", page.total}, {"products", page.products}};
}

} // namespace upload
