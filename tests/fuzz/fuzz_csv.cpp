// fuzz_csv: the upload example's CSV reader (examples/upload_progress/csv.hpp) on any text.
//
// Checks:
// - reading every record with next() and stepping over them with skip() (count_records) agree:
//   the same number of records, or the same csv::error at the same line after the same number;
// - records are well formed: lines and offsets strictly increase, offsets inside the text, a
//   record that is not malformed has at least one field, fields are views that stay put;
// - seek() to a record read before reads the same record again;
// - round trip: the records that are not malformed, written back as RFC 4180 with every field
//   quoted, read back as the same fields and none malformed.
#include "upload_progress/csv.hpp"

#include "check.hpp"

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace {

namespace csv = upload::csv;

struct row {
    std::uint64_t line;
    std::size_t offset;
    std::vector<std::string> fields;
    bool malformed;
    friend bool operator==(const row&, const row&) = default;
};

row copy(const csv::record& r)
{
    return {r.line, r.offset, {r.fields.begin(), r.fields.end()}, r.malformed};
}

struct reading {
    std::vector<row> rows;
    std::optional<std::uint64_t> error_line;
};

reading read_all(std::string_view text)
{
    reading out;
    csv::reader r(text);
    csv::record rec;
    try {
        while (r.next(rec))
            out.rows.push_back(copy(rec));
    } catch (const csv::error& e) {
        out.error_line = e.line();
        FUZZ_CHECK(r.offset() == text.size());
    }
    return out;
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* bytes, std::size_t size)
{
    const std::string_view text(reinterpret_cast<const char*>(bytes), size);
    const reading all = read_all(text);

    // skip() agrees with next().
    {
        csv::reader r(text);
        std::size_t n = 0;
        std::optional<std::uint64_t> error_line;
        try {
            while (r.skip())
                ++n;
        } catch (const csv::error& e) {
            error_line = e.line();
        }
        FUZZ_CHECK(n == all.rows.size());
        FUZZ_CHECK(error_line == all.error_line);
        if (!error_line)
            FUZZ_CHECK(csv::count_records(text) == n);
    }

    std::uint64_t line_ends = 0;
    for (std::size_t i = 0; i < text.size(); ++i)
        if (text[i] == '\n' || (text[i] == '\r' && (i + 1 == text.size() || text[i + 1] != '\n')))
            ++line_ends;
    for (std::size_t i = 0; i < all.rows.size(); ++i) {
        const row& r = all.rows[i];
        FUZZ_CHECK(r.line >= 1 && r.line <= line_ends + 1);
        FUZZ_CHECK(r.offset < text.size());
        FUZZ_CHECK(r.malformed || !r.fields.empty());
        if (i > 0) {
            FUZZ_CHECK(r.line > all.rows[i - 1].line);
            FUZZ_CHECK(r.offset > all.rows[i - 1].offset);
        }
    }
    if (all.error_line)
        FUZZ_CHECK(*all.error_line >= 1 && *all.error_line <= line_ends + 1);

    // seek() back to each record (last first, so each seek goes backwards) reads it again.
    {
        csv::reader r(text);
        csv::record rec;
        for (std::size_t i = all.rows.size(); i-- > 0;) {
            r.seek(all.rows[i].offset, all.rows[i].line);
            FUZZ_CHECK(r.next(rec));
            FUZZ_CHECK(copy(rec) == all.rows[i]);
        }
    }

    // Round trip of the well-formed records.
    std::string out;
    std::vector<std::vector<std::string>> want;
    for (const row& r : all.rows) {
        if (r.malformed)
            continue;
        for (std::size_t f = 0; f < r.fields.size(); ++f) {
            if (f > 0)
                out += ',';
            out += '"';
            for (const char c : r.fields[f]) {
                out += c;
                if (c == '"')
                    out += '"';
            }
            out += '"';
        }
        out += want.size() % 2 ? "\r\n" : "\n";
        want.push_back(r.fields);
    }
    const reading again = read_all(out);
    FUZZ_CHECK(!again.error_line);
    FUZZ_CHECK(again.rows.size() == want.size());
    for (std::size_t i = 0; i < want.size(); ++i) {
        FUZZ_CHECK(!again.rows[i].malformed);
        FUZZ_CHECK(again.rows[i].fields == want[i]);
    }
    return 0;
}
