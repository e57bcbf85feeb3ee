// examples/upload_progress/import.hpp
// The upload example's import core, with no HTTP or SSE in it: check a CSV's header, import its
// rows into SQLite in one transaction while reporting progress and row errors, list products.
//
// The file: a header row naming `sku`, `name`, `price`, `quantity` in any order (names trimmed,
// matched case-insensitively; other columns ignored), then one product per record (csv.hpp has
// the dialect). Values are trimmed of surrounding spaces and tabs. A row is rejected, counted
// and reported, never fatal, for the first of these that applies:
//   "malformed quotes"                 its quoting is broken (csv.hpp)
//   "missing fields"                   it ends before one of the four columns
//   "missing sku"                      the sku is empty
//   "invalid UTF-8 in sku"
//   "duplicate sku (first at line N)"  an earlier row had that sku; N is the first such row,
//                                      whether it was imported or rejected for what follows
//   "missing name"                     the name is empty
//   "invalid UTF-8 in name"
//   "bad price"                        not digits with an optional `.` and 1 or 2 digits
//                                      (`12`, `12.5`, `12.50`); stored as integer cents
//   "bad quantity"                     not digits, or more than fits in int64
// Good rows are upserted by sku (so within a file, skus of good rows are unique).
// SPDX-License-Identifier: BSL-1.0
#ifndef SSEPP_EXAMPLES_UPLOAD_PROGRESS_IMPORT_HPP
#define SSEPP_EXAMPLES_UPLOAD_PROGRESS_IMPORT_HPP

#include "common/sqlite.hpp"

#include <nlohmann/json_fwd.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace upload {

struct progress {
    std::uint64_t rows_done;  // data rows settled so far: bad ones when found, good once written
    std::uint64_t rows_total; // data rows in the file (header and blank lines not counted)
    std::uint64_t errors;     // bad rows so far
};

struct row_error {
    std::uint64_t line; // 1-based line where the row starts
    std::string sku;    // as read, at most 64 bytes (cut at a UTF-8 boundary); empty if none
    std::string reason; // see the list above
};

struct summary {
    std::uint64_t rows;     // data rows, good and bad
    std::uint64_t inserted; // good rows whose sku was new
    std::uint64_t updated;  // good rows whose sku existed
    std::uint64_t errors;   // bad rows
    std::chrono::milliseconds elapsed;
};

/// on_progress is called once at the start (rows_done 0), then at least 100 ms (counted from
/// the return of the previous call) and at most 250 ms apart while the import works, and once
/// more with the final counts when the last row is written (just before COMMIT, which with its
/// WAL checkpoint takes a few hundred ms for a million new rows). The import validates every
/// row first, reporting bad ones as it goes, then writes the good ones in sku order; so the
/// errors come early and rows_done may stand still for a moment between the two passes. All
/// hooks run on the thread calling import_csv, and may be empty. A hook that throws aborts the
/// import (rolled back) with its exception.
struct import_hooks {
    std::function<void(const progress&)> on_progress;
    /// Called for the first max_reported_errors bad rows only; all are counted.
    std::function<void(const row_error&)> on_row_error;
    /// Polled every few dozen rows (and while sorting); true rolls back and throws
    /// import_cancelled.
    std::function<bool()> cancelled;
    std::uint64_t max_reported_errors = 1000;
};

/// The import failed as a whole and changed nothing; what() is the reason, e.g.
/// "unterminated quoted field starting at line 7" or "database error: database is locked".
class import_error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

/// The cancelled hook said so; nothing changed. what() is "cancelled".
class import_cancelled : public import_error {
public:
    import_cancelled() : import_error("cancelled") {}
};

/// Checks the header row only (cheap, for a 400 before accepting an upload): nullopt if the
/// four columns are there, else why not: "empty file", "missing required columns: price,
/// quantity", "duplicate column: sku", "malformed quotes in header row", or the csv::error.
std::optional<std::string> check_header(std::string_view csv);

/// Creates table `products` if needed and switches the file to WAL (so listings can read while
/// an import writes):
///   products(sku TEXT PRIMARY KEY, name TEXT NOT NULL, price_cents INTEGER NOT NULL,
///            quantity INTEGER NOT NULL, updated_at TEXT NOT NULL) WITHOUT ROWID
/// updated_at is UTC ISO 8601 with milliseconds, e.g. "2024-05-01T12:00:00.123Z".
void ensure_schema(common::sqlite::db& db);

/// Imports the file: every good row upserted by sku, in one IMMEDIATE transaction (committed at
/// the end; rolled back on any exception). Before the transaction it counts the rows (a quick
/// pass that also finds an unterminated quote) and checks the header. Sets PRAGMA
/// synchronous=NORMAL and cache_size=-16384 (16 MiB) on `db`. If another connection is writing,
/// BEGIN waits up to db's busy timeout (none by default), before the first progress call, then
/// fails ("database error: database is locked").
/// Throws import_error (a fatal file or database error), import_cancelled, or what a hook threw.
summary import_csv(common::sqlite::db& db, std::string_view csv, const import_hooks& hooks = {});

struct product {
    std::string sku;
    std::string name;
    std::int64_t price_cents;
    std::int64_t quantity;
    std::string updated_at;
};

struct product_page {
    std::uint64_t total; // products in the table
    std::vector<product> products;
};

inline constexpr std::uint64_t max_page_size = 1000;

/// Products ordered by sku (byte order), `limit` (at most max_page_size) from `offset`, with
/// the table's total, read in one snapshot.
product_page list_products(common::sqlite::db& db, std::uint64_t limit, std::uint64_t offset);

/// Decimal text of a price in cents: 1250 -> "12.50" (prices are never negative).
std::string format_price(std::int64_t cents);

/// {"sku": ..., "name": ..., "price": "12.50", "price_cents": 1250, "quantity": 3,
///  "updated_at": "2024-05-01T12:00:00.123Z"}
void to_json(nlohmann::json& j, const product& p);
/// {"total": N, "products": [...]}
void to_json(nlohmann::json& j, const product_page& page);

} // namespace upload

#endif // SSEPP_EXAMPLES_UPLOAD_PROGRESS_IMPORT_HPP
