// examples/common/sqlite.hpp
// A thin RAII layer over the SQLite C API for the examples: a connection, prepared statements,
// a transaction guard; every failure becomes a common::sqlite::error carrying sqlite3_errmsg.
// Nothing is hidden: handle() gives the raw pointer for anything not wrapped here.
//
// Threads: one db (and its statements) is used by one thread at a time; give each worker its
// own connection (the default open flags keep SQLite's serialized mode, so a mistake is not UB).
// SPDX-License-Identifier: BSL-1.0
#ifndef SSEPP_EXAMPLES_COMMON_SQLITE_HPP
#define SSEPP_EXAMPLES_COMMON_SQLITE_HPP

#include <sqlite3.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

namespace common::sqlite {

/// A failed SQLite call: what() is sqlite3_errmsg() (plus the SQL for a failed prepare).
class error : public std::runtime_error {
public:
    error(int code, const std::string& message) : std::runtime_error(message), code_(code) {}
    /// The (extended) result code, e.g. SQLITE_CONSTRAINT_PRIMARYKEY.
    [[nodiscard]] int code() const noexcept { return code_; }

private:
    int code_;
};

namespace detail {
[[noreturn]] inline void fail(sqlite3* db, int rc, std::string_view context = {})
{
    std::string message = db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
    if (!context.empty())
        message.append(" (").append(context).append(")");
    throw error(db != nullptr ? sqlite3_extended_errcode(db) : rc, message);
}
} // namespace detail

class statement;

/// An open connection; closed by the destructor.
class db {
public:
    static constexpr int default_flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE;

    /// Opens (by default creating) the database file at `path`; ":memory:" works too.
    explicit db(const std::string& path, int flags = default_flags)
    {
        const int rc = sqlite3_open_v2(path.c_str(), &handle_, flags, nullptr);
        if (rc != SQLITE_OK) {
            const std::string message
                = std::string(handle_ != nullptr ? sqlite3_errmsg(handle_) : sqlite3_errstr(rc))
                  + " (opening " + path + ")";
            sqlite3_close_v2(handle_);
            handle_ = nullptr;
            throw error(rc, message);
        }
        sqlite3_extended_result_codes(handle_, 1);
    }
    db(db&& other) noexcept : handle_(std::exchange(other.handle_, nullptr)) {}
    db& operator=(db&& other) noexcept
    {
        if (this != &other) {
            sqlite3_close_v2(handle_);
            handle_ = std::exchange(other.handle_, nullptr);
        }
        return *this;
    }
    db(const db&) = delete;
    db& operator=(const db&) = delete;
    /// sqlite3_close_v2: statements not yet finalized keep the connection alive until they are.
    ~db() { sqlite3_close_v2(handle_); }

    [[nodiscard]] sqlite3* handle() const noexcept { return handle_; }

    /// Runs one or more `;`-separated statements that return no rows you need (DDL, PRAGMAs).
    void exec(const std::string& sql)
    {
        char* message = nullptr;
        const int rc = sqlite3_exec(handle_, sql.c_str(), nullptr, nullptr, &message);
        if (rc != SQLITE_OK) {
            const std::string text = message != nullptr ? message : sqlite3_errstr(rc);
            sqlite3_free(message);
            throw error(sqlite3_extended_errcode(handle_), text);
        }
    }

    /// How long a statement waits for another connection's lock before failing with
    /// SQLITE_BUSY ("database is locked"); 0 fails at once (SQLite's default).
    void busy_timeout(std::chrono::milliseconds timeout)
    {
        const int rc = sqlite3_busy_timeout(handle_, static_cast<int>(timeout.count()));
        if (rc != SQLITE_OK)
            detail::fail(handle_, rc);
    }

    /// Rows changed by the last INSERT/UPDATE/DELETE.
    [[nodiscard]] std::int64_t changes() const noexcept { return sqlite3_changes64(handle_); }
    [[nodiscard]] std::int64_t last_insert_rowid() const noexcept
    {
        return sqlite3_last_insert_rowid(handle_);
    }
    /// True outside an explicit transaction.
    [[nodiscard]] bool autocommit() const noexcept { return sqlite3_get_autocommit(handle_) != 0; }

    [[nodiscard]] statement prepare(std::string_view sql);

private:
    sqlite3* handle_ = nullptr;
};

/// A prepared statement. Parameters and columns are numbered as in SQLite: binds from 1,
/// columns from 0. Bindings survive reset(), so constant parameters are bound once.
class statement {
public:
    statement(db& connection, std::string_view sql) : db_(connection.handle())
    {
        const int rc = sqlite3_prepare_v2(db_, sql.data(), static_cast<int>(sql.size()), &handle_,
                                          nullptr);
        if (rc != SQLITE_OK)
            detail::fail(db_, rc, sql);
    }
    statement(statement&& other) noexcept
        : db_(other.db_), handle_(std::exchange(other.handle_, nullptr))
    {
    }
    statement& operator=(statement&& other) noexcept
    {
        if (this != &other) {
            sqlite3_finalize(handle_);
            db_ = other.db_;
            handle_ = std::exchange(other.handle_, nullptr);
        }
        return *this;
    }
    statement(const statement&) = delete;
    statement& operator=(const statement&) = delete;
    ~statement() { sqlite3_finalize(handle_); }

    [[nodiscard]] sqlite3_stmt* handle() const noexcept { return handle_; }

    statement& bind(int index, std::int64_t value)
    {
        check(sqlite3_bind_int64(handle_, index, value));
        return *this;
    }
    statement& bind(int index, int value) { return bind(index, std::int64_t{value}); }
    statement& bind(int index, double value)
    {
        check(sqlite3_bind_double(handle_, index, value));
        return *this;
    }
    statement& bind(int index, std::nullptr_t)
    {
        check(sqlite3_bind_null(handle_, index));
        return *this;
    }
    /// Binds a copy of the text (SQLITE_TRANSIENT).
    statement& bind(int index, std::string_view text)
    {
        return bind_text(index, text, SQLITE_TRANSIENT);
    }
    statement& bind(int index, const char* text) { return bind(index, std::string_view(text)); }
    statement& bind(int index, const std::string& text)
    {
        return bind(index, std::string_view(text));
    }
    /// Binds the text without copying (SQLITE_STATIC): the bytes must stay alive and unchanged
    /// until the statement is stepped for the last time with this binding (or rebound).
    statement& bind_static(int index, std::string_view text)
    {
        return bind_text(index, text, SQLITE_STATIC);
    }

    /// One step: true when a row is ready to read, false when the statement is done.
    /// On error the statement is reset (releasing its locks) and common::sqlite::error thrown.
    bool step()
    {
        const int rc = sqlite3_step(handle_);
        if (rc == SQLITE_ROW)
            return true;
        if (rc == SQLITE_DONE)
            return false;
        error e(sqlite3_extended_errcode(db_), sqlite3_errmsg(db_));
        sqlite3_reset(handle_);
        throw e;
    }
    /// Steps to the end, ignoring rows, then resets: for INSERT/UPDATE/DELETE.
    void run()
    {
        while (step()) {
        }
        reset();
    }
    /// Ready to step again from the start; bindings are kept.
    void reset() noexcept { sqlite3_reset(handle_); }
    void clear_bindings() noexcept { sqlite3_clear_bindings(handle_); }

    [[nodiscard]] int column_count() const noexcept { return sqlite3_column_count(handle_); }
    [[nodiscard]] bool column_is_null(int column) const noexcept
    {
        return sqlite3_column_type(handle_, column) == SQLITE_NULL;
    }
    [[nodiscard]] std::int64_t column_int64(int column) const noexcept
    {
        return sqlite3_column_int64(handle_, column);
    }
    [[nodiscard]] double column_double(int column) const noexcept
    {
        return sqlite3_column_double(handle_, column);
    }
    /// The text of a column of the current row; valid until the next step(), reset() or
    /// destruction. NULL reads as "".
    [[nodiscard]] std::string_view column_text(int column) const noexcept
    {
        const auto* text = reinterpret_cast<const char*>(sqlite3_column_text(handle_, column));
        if (text == nullptr)
            return {};
        return {text, static_cast<std::size_t>(sqlite3_column_bytes(handle_, column))};
    }

private:
    void check(int rc) const
    {
        if (rc != SQLITE_OK)
            detail::fail(db_, rc);
    }
    statement& bind_text(int index, std::string_view text, sqlite3_destructor_type lifetime)
    {
        // A null pointer would bind NULL; an empty view may have one, so point it somewhere.
        const char* data = text.data() != nullptr ? text.data() : "";
        check(sqlite3_bind_text64(handle_, index, data, text.size(), lifetime, SQLITE_UTF8));
        return *this;
    }

    sqlite3* db_;
    sqlite3_stmt* handle_ = nullptr;
};

inline statement db::prepare(std::string_view sql) { return statement(*this, sql); }

/// BEGIN in the constructor; ROLLBACK in the destructor unless commit() ran first.
/// Not nestable (SQLite has no nested BEGIN; use SAVEPOINTs through exec() for that).
class transaction {
public:
    enum class mode { deferred, immediate, exclusive };

    /// `immediate` takes the write lock at once, so a writer fails (or waits, see
    /// db::busy_timeout) here rather than halfway through.
    explicit transaction(db& connection, mode m = mode::immediate) : db_(&connection)
    {
        switch (m) {
        case mode::deferred: db_->exec("BEGIN DEFERRED"); break;
        case mode::immediate: db_->exec("BEGIN IMMEDIATE"); break;
        case mode::exclusive: db_->exec("BEGIN EXCLUSIVE"); break;
        }
    }
    transaction(const transaction&) = delete;
    transaction& operator=(const transaction&) = delete;
    ~transaction()
    {
        // SQLite may already have rolled back by itself (e.g. after SQLITE_FULL).
        if (db_ != nullptr && !db_->autocommit())
            sqlite3_exec(db_->handle(), "ROLLBACK", nullptr, nullptr, nullptr);
    }

    /// COMMIT; if it fails (e.g. SQLITE_BUSY), the destructor still rolls back.
    void commit()
    {
        active().exec("COMMIT");
        db_ = nullptr;
    }
    void rollback()
    {
        sqlite::db* d = &active();
        db_ = nullptr;
        if (!d->autocommit())
            d->exec("ROLLBACK");
    }

private:
    sqlite::db& active() const
    {
        if (db_ == nullptr)
            throw std::logic_error("common::sqlite::transaction: already committed or rolled back");
        return *db_;
    }

    sqlite::db* db_;
};

} // namespace common::sqlite

#endif // SSEPP_EXAMPLES_COMMON_SQLITE_HPP
