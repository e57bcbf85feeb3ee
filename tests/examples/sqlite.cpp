// Test that the header is self-contained.
#include "common/sqlite.hpp"

#include "catch.hpp"

#include <stdexcept>
#include <string>

using common::sqlite::db;
using common::sqlite::statement;
using common::sqlite::transaction;

namespace {

std::int64_t count(db& d, const char* table)
{
    auto s = d.prepare(std::string("SELECT count(*) FROM ") + table);
    REQUIRE(s.step());
    return s.column_int64(0);
}

} // namespace

TEST_CASE("sqlite: errors carry sqlite3_errmsg", "[sqlite]")
{
    CHECK_THROWS_WITH(db("/nonexistent-dir/x.db"),
                      "unable to open database file (opening /nonexistent-dir/x.db)");
    db d(":memory:");
    CHECK_THROWS_WITH(d.exec("CREATE TABLE"), "incomplete input");
    CHECK_THROWS_WITH(d.prepare("SELECT * FROM nowhere"),
                      "no such table: nowhere (SELECT * FROM nowhere)");
    try {
        d.exec("CREATE TABLE t(k TEXT PRIMARY KEY); INSERT INTO t VALUES('a')");
        auto s = d.prepare("INSERT INTO t VALUES(?1)");
        s.bind(1, "a");
        (void)s.step();
        FAIL("no exception");
    } catch (const common::sqlite::error& e) {
        CHECK(e.code() == SQLITE_CONSTRAINT_PRIMARYKEY);
        CHECK(std::string(e.what()) == "UNIQUE constraint failed: t.k");
    }
}

TEST_CASE("sqlite: bind, step, read columns, reset keeps bindings", "[sqlite]")
{
    db d(":memory:");
    d.exec("CREATE TABLE t(i INTEGER, r REAL, s TEXT, n)");
    auto insert = d.prepare("INSERT INTO t VALUES(?1, ?2, ?3, ?4)");
    const std::string text = "héllo";
    insert.bind(1, std::int64_t{1} << 40).bind(2, 2.5).bind_static(3, text).bind(4, nullptr);
    insert.run();
    CHECK(d.changes() == 1);
    // Bindings survive reset(): only ?1 changes. An empty view is '', not NULL.
    insert.bind(1, 7).bind(3, std::string_view{});
    insert.run();

    auto select = d.prepare("SELECT i, r, s, n FROM t ORDER BY i");
    CHECK(select.column_count() == 4);
    REQUIRE(select.step());
    CHECK(select.column_int64(0) == 7);
    CHECK(select.column_text(2).empty());
    CHECK_FALSE(select.column_is_null(2));
    REQUIRE(select.step());
    CHECK(select.column_int64(0) == std::int64_t{1} << 40);
    CHECK(select.column_double(1) == 2.5);
    CHECK(select.column_text(2) == "héllo");
    CHECK(select.column_is_null(3));
    CHECK(select.column_text(3).empty());
    CHECK_FALSE(select.step());
    select.reset();
    CHECK(select.step()); // from the start again
}

TEST_CASE("sqlite: a transaction rolls back unless committed", "[sqlite]")
{
    db d(":memory:");
    d.exec("CREATE TABLE t(x)");
    {
        transaction tx(d);
        CHECK_FALSE(d.autocommit());
        d.exec("INSERT INTO t VALUES(1)");
    }
    CHECK(d.autocommit());
    CHECK(count(d, "t") == 0);
    {
        transaction tx(d, transaction::mode::deferred);
        d.exec("INSERT INTO t VALUES(1)");
        tx.commit();
    }
    CHECK(count(d, "t") == 1);
    {
        transaction tx(d, transaction::mode::exclusive);
        d.exec("INSERT INTO t VALUES(2)");
        tx.rollback();
        CHECK(d.autocommit());
        CHECK_THROWS_AS(tx.commit(), std::logic_error);
    }
    CHECK(count(d, "t") == 1);
    {
        // Ended behind the guard's back: its destructor must not fail.
        transaction tx(d);
        d.exec("ROLLBACK");
    }
    {
        transaction outer(d);
        CHECK_THROWS_WITH(transaction(d), "cannot start a transaction within a transaction");
    }
    CHECK(d.autocommit());
}

TEST_CASE("sqlite: connections and statements move", "[sqlite]")
{
    db a(":memory:");
    a.exec("CREATE TABLE t(x); INSERT INTO t VALUES(42)");
    db b = std::move(a);
    CHECK(a.handle() == nullptr); // NOLINT(bugprone-use-after-move)
    statement s = b.prepare("SELECT x FROM t");
    statement moved = std::move(s);
    REQUIRE(moved.step());
    CHECK(moved.column_int64(0) == 42);
}
