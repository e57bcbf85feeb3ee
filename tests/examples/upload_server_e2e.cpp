// End-to-end tests of examples/upload_progress/upload_server (issue 4; the contract is in
// examples/upload_progress/README.md): the real binary on 127.0.0.1, port 0, a temp database;
// uploads over real sockets, the job's event stream parsed with ssepp::parser, and the rows
// checked in SQLite.
#include "examples/support/metrics.hpp"
#include "examples/support/upload_support.hpp"

#include "catch.hpp"
#include "support/loopback.hpp"

#include "common/sqlite.hpp"

#include <algorithm>
#include <csignal>
#include <set>
#include <thread>

using namespace e2e;
using namespace e2e::upload;
using namespace std::chrono_literals;

namespace {

// Event ids are opaque strings (the registry's, unique across restarts): only equality and
// uniqueness mean anything.
void check_id(const event& e)
{
    REQUIRE(!e.id.empty());
}

/// Follows a job's stream until the server ends it (bounded); the client.
std::unique_ptr<sse_client> follow(std::uint16_t port, const std::string& id, header_list headers = {},
                                   std::chrono::milliseconds timeout = 60s)
{
    auto c = std::make_unique<sse_client>(port, "/api/upload/" + id + "/events", headers);
    REQUIRE(c->read_head() == 200);
    CHECK(c->response.header("Content-Type").value_or("") == "text/event-stream");
    // Neither cached nor compressed by a proxy; nginx does not buffer it.
    CHECK(c->response.header("Cache-Control").value_or("") == "no-cache, no-transform");
    CHECK(c->response.header("X-Accel-Buffering").value_or("") == "no");
    CHECK_FALSE(c->response.header("Connection"));
    REQUIRE(c->read_to_eof(timeout));
    CHECK(!c->parse_error);
    return c;
}

/// What the stream of a job that ended must look like, whatever the file: an id on every event,
/// no id twice; progress first, rows_done never going back; row-errors for the first 1,000 bad
/// rows, equal to `errors` and in order; exactly one terminal event, last. Returns the terminal.
const event& check_sequence(const std::vector<event>& events, std::uint64_t rows,
                            const std::vector<expected_error>& errors)
{
    REQUIRE(events.size() >= 2);
    CHECK(events.front().type == "progress");
    std::uint64_t rows_done = 0;
    std::size_t row_errors = 0;
    std::size_t terminals = 0;
    std::set<std::string> ids;
    for (std::size_t i = 0; i < events.size(); ++i) {
        const auto& e = events[i];
        INFO("event " << i << ": " << e.type << " id " << e.id << " " << e.data);
        check_id(e);
        REQUIRE(ids.insert(e.id).second);
        const auto d = json::parse(e.data);
        if (e.type == "progress") {
            REQUIRE(d.at("rows_total").get<std::uint64_t>() == rows);
            const auto done = d.at("rows_done").get<std::uint64_t>();
            REQUIRE(done >= rows_done);
            REQUIRE(done <= rows);
            rows_done = done;
            const double percent = d.at("percent").get<double>();
            CHECK(percent >= 0.0);
            CHECK(percent <= 100.0);
        } else if (e.type == "row-error") {
            REQUIRE(row_errors < errors.size());
            const auto& x = errors[row_errors++];
            CHECK(d.at("line").get<std::uint64_t>() == x.line);
            CHECK(d.at("sku").get<std::string>() == x.sku);
            CHECK(d.at("reason").get<std::string>() == x.reason);
        } else if (e.type == "complete" || e.type == "error") {
            ++terminals;
            REQUIRE(i == events.size() - 1);
        } else {
            FAIL("unexpected event type " << e.type);
        }
    }
    CHECK(terminals == 1);
    CHECK(row_errors == std::min<std::size_t>(errors.size(), 1000));
    return events.back();
}

/// The products table, by sku.
std::map<std::string, product> products_in(const fs::path& db_path)
{
    common::sqlite::db db(db_path.string(), SQLITE_OPEN_READONLY);
    db.busy_timeout(5s); // as any reader of a WAL file written by another process should
    common::sqlite::statement q(db, "SELECT sku, name, price_cents, quantity FROM products");
    std::map<std::string, product> out;
    while (q.step())
        out[std::string(q.column_text(0))] = {std::string(q.column_text(1)), q.column_int64(2), q.column_int64(3)};
    return out;
}

/// Every good row of `g` is in the table, as written in the file; and `others` rows besides.
void check_products(const fs::path& db_path, const generated_csv& g, std::size_t others = 0)
{
    const auto rows = products_in(db_path);
    REQUIRE(rows.size() == g.good.size() + others);
    for (const auto& [sku, p] : g.good) {
        auto it = rows.find(sku);
        REQUIRE(it != rows.end());
        INFO("sku " << sku);
        CHECK(it->second.name == p.name);
        CHECK(it->second.price_cents == p.price_cents);
        CHECK(it->second.quantity == p.quantity);
    }
}

void check_complete(const event& terminal, const generated_csv& g, std::uint64_t inserted, std::uint64_t updated)
{
    REQUIRE(terminal.type == "complete");
    const auto d = json::parse(terminal.data);
    CHECK(d.at("rows").get<std::uint64_t>() == g.rows);
    CHECK(d.at("errors").get<std::uint64_t>() == g.errors.size());
    CHECK(d.at("inserted").get<std::uint64_t>() == inserted);
    CHECK(d.at("updated").get<std::uint64_t>() == updated);
    CHECK(d.at("products").get<std::string>() == "/api/products");
    CHECK(d.at("elapsed_ms").get<std::int64_t>() >= 0);
}

/// Holds the database's write lock (BEGIN IMMEDIATE) until release() or destruction: an import
/// then waits in its own BEGIN (busy timeout 5 s), before its first progress event, looking
/// "processing", and the ones after it wait "queued". Deterministic, unlike a job that is
/// merely big.
class write_lock {
public:
    explicit write_lock(const fs::path& path) : db_(path.string())
    {
        db_.busy_timeout(5s);
        db_.exec("BEGIN IMMEDIATE");
        held_ = true;
    }
    ~write_lock() { release(); }
    void release()
    {
        if (held_)
            db_.exec("ROLLBACK");
        held_ = false;
    }

private:
    common::sqlite::db db_;
    bool held_ = false;
};

/// Waits (bounded) until the job's status says `state`.
bool wait_state(server& s, const std::string& id, const std::string& state, std::chrono::milliseconds timeout = 30s)
{
    return test::eventually([&] { return s.status(id).at("state") == state; }, timeout, 10ms);
}

} // namespace

TEST_CASE("upload_server e2e: a valid CSV as multipart is imported, and its stream tells it all", "[upload-e2e]")
{
    server s;
    const auto g = make_csv(2000);
    auto r = s.upload(g.text);
    REQUIRE(r.status == 202);
    const auto answer = json::parse(r.body);
    const auto id = answer.at("transaction_id").get<std::string>();
    CHECK(id.size() == 32);
    CHECK(id.find_first_not_of("0123456789abcdef") == std::string::npos);
    CHECK(answer.at("events") == "/api/upload/" + id + "/events");
    CHECK(answer.at("status") == "/api/upload/" + id);
    CHECK(r.header("Location").value_or("") == "/api/upload/" + id);
    CHECK(r.header("Content-Type").value_or("") == "application/json");

    auto c = follow(s.port(), id);
    const auto& terminal = check_sequence(c->events, g.rows, g.errors);
    check_complete(terminal, g, g.good.size(), 0);
    // The last progress before the end says all rows are done.
    auto last_progress = std::find_if(c->events.rbegin(), c->events.rend(), [](auto& e) { return e.type == "progress"; });
    REQUIRE(last_progress != c->events.rend());
    CHECK(json::parse(last_progress->data).at("rows_done") == g.rows);
    CHECK(json::parse(last_progress->data).at("percent") == 100.0);
    check_products(s.db, g);

    auto st = s.status(id);
    CHECK(st.at("state") == "completed");
    CHECK(st.at("rows_done") == g.rows);
    CHECK(st.at("rows_total") == g.rows);
    CHECK(st.at("errors") == 0);

    // The same file again: every row is an update now.
    const auto again = s.accepted(g.text);
    auto c2 = follow(s.port(), again);
    check_complete(check_sequence(c2->events, g.rows, g.errors), g, 0, g.good.size());
    check_products(s.db, g);
}

TEST_CASE("upload_server e2e: a raw text/csv body with bad rows reports each one, in order", "[upload-e2e]")
{
    server s;
    const auto g = make_csv(3000, 7, /*crlf=*/true);
    REQUIRE(g.errors.size() > 400);
    const auto id = s.accepted(g.text, /*multipart=*/false);
    auto c = follow(s.port(), id);
    const auto& terminal = check_sequence(c->events, g.rows, g.errors);
    check_complete(terminal, g, g.good.size(), 0);
    auto last_progress = std::find_if(c->events.rbegin(), c->events.rend(), [](auto& e) { return e.type == "progress"; });
    CHECK(json::parse(last_progress->data).at("errors") == g.errors.size());
    check_products(s.db, g);
    CHECK(s.status(id).at("errors") == g.errors.size());
}

TEST_CASE("upload_server e2e: malformed quotes fail the row, an unterminated quote fails the job and changes nothing",
          "[upload-e2e]")
{
    server s;
    SECTION("a stray quote in a row")
    {
        const std::string csv = "sku,name,price,quantity\n"
                                "A-1,\"Good, quoted\",1.00,1\n"
                                "A-2,bad\"quote,2.00,2\n"
                                "A-3,\"closed\"junk,3.00,3\n"
                                "A-4,Fine,4.00,4\n";
        const auto id = s.accepted(csv);
        auto c = follow(s.port(), id);
        const auto& terminal = check_sequence(c->events, 4, {{3, "A-2", quote_inside_name}, {4, "A-3", text_after_quote_in_name}});
        REQUIRE(terminal.type == "complete");
        const auto d = json::parse(terminal.data);
        CHECK(d.at("rows") == 4);
        CHECK(d.at("errors") == 2);
        CHECK(d.at("inserted") == 2);
        const auto rows = products_in(s.db);
        REQUIRE(rows.size() == 2);
        CHECK(rows.at("A-1").name == "Good, quoted");
        CHECK(rows.at("A-4").price_cents == 400);
    }
    SECTION("a quoted field never closed")
    {
        const auto good = make_csv(50);
        (void)s.accepted(good.text);
        REQUIRE(wait_state(s, s.accepted(good.text), "completed"));  // the db has 50 products
        const std::string csv = "sku,name,price,quantity\nB-1,One,1.00,1\nB-2,\"never closed,2.00,2\nB-3,Three,3.00,3\n";
        const auto id = s.accepted(csv);
        auto c = follow(s.port(), id);
        const auto& terminal = c->events.back();
        REQUIRE(terminal.type == "error");
        CHECK(json::parse(terminal.data).at("reason") == "unterminated quoted field starting at line 3");
        std::size_t terminals = 0;
        for (const auto& e : c->events) {
            check_id(e);
            terminals += e.type == "error" || e.type == "complete";
        }
        CHECK(terminals == 1);
        CHECK(s.status(id).at("state") == "failed");
        check_products(s.db, good);  // nothing of the failed file
    }
}

TEST_CASE("upload_server e2e: refused uploads (400, 415) start no job", "[upload-e2e]")
{
    server s;
    const auto csv = make_csv(3).text;
    auto expect_error = [&](const http_response& r, int status, std::string_view says) {
        INFO(r.head << r.body);
        CHECK(r.status == status);
        CHECK(r.header("Content-Type").value_or("") == "application/json");
        const auto j = json::parse(r.body);
        CHECK(j.at("error").get<std::string>().find(says) != std::string::npos);
    };
    // Empty: no body at all, and an empty file part.
    expect_error(request(s.port(), "POST", "/api/upload/csv", {{"Content-Type", "text/csv"}}), 400, "empty");
    expect_error(request(s.port(), "POST", "/api/upload/csv", multipart_headers(), multipart_body("")), 400, "empty");
    // Missing file field.
    expect_error(request(s.port(), "POST", "/api/upload/csv", multipart_headers(), multipart_body(csv, "upload")),
                 400, "'file'");
    // A header without the required columns.
    expect_error(s.upload("sku,name,cost\nA,B,1\n"), 400, "missing required columns: price, quantity");
    expect_error(s.upload("sku,name,price,quantity,sku\nA,B,1,1,A\n", false), 400, "duplicate column");
    // Wrong content types.
    expect_error(request(s.port(), "POST", "/api/upload/csv", {{"Content-Type", "application/json"}}, "{}"), 415,
                 "multipart/form-data");
    expect_error(request(s.port(), "POST", "/api/upload/csv", {{"Content-Type", "multipart/form-data"}}, csv), 415,
                 "multipart/form-data");
    expect_error(request(s.port(), "POST", "/api/upload/csv", {}, csv), 415, "text/csv");
    // Media types are case-insensitive.
    auto r = request(s.port(), "POST", "/api/upload/csv", {{"Content-Type", "Text/CSV"}}, csv);
    CHECK(r.status == 202);
    // Only that one was accepted: a header-only file is a job of zero rows.
    const auto id = s.accepted("sku,name,price,quantity\r\n", false);
    auto c = follow(s.port(), id);
    const auto& terminal = check_sequence(c->events, 0, {});
    CHECK(terminal.type == "complete");
    CHECK(json::parse(terminal.data).at("rows") == 0);
}

TEST_CASE("upload_server e2e: over --max-upload-mb is 413 from the head, before any body is sent", "[upload-e2e]")
{
    server s({"--max-upload-mb", "1"});
    const std::string too_big = std::to_string((1 << 20) + 1);
    auto check_413_and_close = [](connection& c) {
        const auto r = c.read_response(5s);
        INFO(r.head << r.body);
        CHECK(r.status == 413);
        CHECK(r.header("Connection").value_or("") == "close");
        CHECK(json::parse(r.body).at("error").get<std::string>().find("over the limit") != std::string::npos);
        std::string rest;
        CHECK(c.read_to_eof(rest, 5s));
        CHECK(rest.empty());
    };
    SECTION("Content-Length over the limit, body never sent")
    {
        connection c(s.port());
        c.send_all("POST /api/upload/csv HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/csv\r\nContent-Length: "
                   + too_big + "\r\n\r\n");
        check_413_and_close(c);
    }
    SECTION("Expect: 100-continue over the limit: 413 instead of 100 Continue")
    {
        connection c(s.port());
        c.send_all("POST /api/upload/csv HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: " + multipart_headers()[0].second
                   + "\r\nExpect: 100-continue\r\nContent-Length: " + too_big + "\r\n\r\n");
        // The first thing back is the final answer: no "HTTP/1.1 100" before it.
        check_413_and_close(c);
    }
    SECTION("Expect: 100-continue under the limit: 100 Continue, then the body, then 202")
    {
        const auto g = make_csv(100);
        connection c(s.port());
        c.send_all("POST /api/upload/csv HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/csv\r\nExpect: 100-continue\r\n"
                   "Content-Length: " + std::to_string(g.text.size()) + "\r\n\r\n");
        const auto interim = c.read_response(5s);
        REQUIRE(interim.status == 100);
        c.send_all(g.text);
        const auto r = c.read_response(5s);
        REQUIRE(r.status == 202);
        auto st = follow(s.port(), json::parse(r.body).at("transaction_id").get<std::string>());
        check_complete(check_sequence(st->events, g.rows, g.errors), g, g.good.size(), 0);
    }
    SECTION("a chunked body that grows over the limit")
    {
        connection c(s.port());
        c.send_all("POST /api/upload/csv HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/csv\r\n"
                   "Transfer-Encoding: chunked\r\n\r\n");
        const std::string chunk(64 * 1024, 'x');
        char size_line[32];
        std::snprintf(size_line, sizeof size_line, "%zx\r\n", chunk.size());
        // 17 chunks of 64 KiB pass 1 MiB; the server may answer and close before all are sent.
        try {
            for (int i = 0; i < 17; ++i)
                c.send_all(size_line + chunk + "\r\n", 5s);
        } catch (const std::exception&) {
        }
        const auto r = c.read_response(5s);
        CHECK(r.status == 413);
    }
}

TEST_CASE("upload_server e2e: a big import streams progress at the promised pace, the first 1000 row errors, one end",
          "[upload-e2e]")
{
    server s;
    const auto g = make_csv(600'000, 200);  // 3,000 bad rows
    REQUIRE(g.errors.size() == 3000);
    // The job waits for the lock while the client connects, so that every event of it is
    // received live (a replay would arrive all at once).
    write_lock lock(s.db);
    const auto id = s.accepted(g.text, false);
    sse_client c(s.port(), "/api/upload/" + id + "/events");
    REQUIRE(c.read_head() == 200);
    REQUIRE(wait_state(s, id, "processing", 5s));
    REQUIRE(c.events.empty());
    lock.release();
    REQUIRE(c.read_to_eof(120s));
    REQUIRE(!c.parse_error);

    const auto& terminal = check_sequence(c.events, g.rows, g.errors);
    check_complete(terminal, g, g.good.size(), 0);

    // The pace: progress events at least ~100 ms apart and, while the job runs (up to the
    // terminal event), never more than 250 ms without one. Measured on arrival: on a loaded
    // machine (ctest -j2 on two cores) the client may see an event some tens of ms late, which
    // shortens the next gap by as much, hence 50 ms on the short side. A server that does not
    // pace its last progress, or re-sends in bursts, still fails it; the long side has the
    // server's own margin (it re-sends after 150 ms of quiet).
    std::vector<clock::time_point> times;
    for (const auto& e : c.events)
        if (e.type == "progress")
            times.push_back(e.at);
    REQUIRE(times.size() >= 5);  // enough gaps to judge the pace
    const auto job_time = terminal.at - times.front();
    INFO("job took " << std::chrono::duration_cast<std::chrono::milliseconds>(job_time).count() << " ms, "
                     << times.size() << " progress events");
    // Five progress events 100 ms apart or more: the job took at least 400 ms (it takes about
    // one second on a quiet machine; a faster one is no fault).
    CHECK(job_time >= 400ms);
    times.push_back(terminal.at);
    std::chrono::milliseconds shortest{100000}, longest{0};
    std::string gaps;
    for (std::size_t i = 1; i < times.size(); ++i) {
        const auto gap = std::chrono::duration_cast<std::chrono::milliseconds>(times[i] - times[i - 1]);
        gaps += std::to_string(gap.count()) + (i + 1 < times.size() ? " " : " (to the end)");
        longest = std::max(longest, gap);
        if (i + 1 < times.size())  // the terminal event may follow the last progress closely
            shortest = std::min(shortest, gap);
    }
    INFO("progress gaps: shortest " << shortest.count() << " ms, longest " << longest.count() << " ms; all (ms): "
                                     << gaps);
    CHECK(shortest >= 50ms);
    CHECK(longest <= 250ms);

    check_products(s.db, g);
}

TEST_CASE("upload_server e2e: resuming with Last-Event-ID misses nothing and repeats nothing", "[upload-e2e]")
{
    server s;
    const auto g = make_csv(300'000, 250);
    const auto id = s.accepted(g.text);
    const std::string path = "/api/upload/" + id + "/events";

    // Follow until the job is well under way, then drop the connection.
    std::vector<event> before;
    {
        sse_client c(s.port(), path);
        REQUIRE(c.read_head() == 200);
        REQUIRE(c.read_until(
            [&] {
                return std::count_if(c.events.begin(), c.events.end(), [](auto& e) { return e.type == "progress"; }) >= 3;
            },
            30s));
        before = c.events;
        REQUIRE(before.back().type != "complete");
        c.conn().reset();
    }
    // Events go on while this client is away.
    const auto seen = json::parse(std::find_if(before.rbegin(), before.rend(), [](auto& e) {
                                      return e.type == "progress";
                                  })->data).at("rows_done").get<std::uint64_t>();
    REQUIRE(test::eventually([&] { return s.status(id).at("rows_done").get<std::uint64_t>() > seen; }, 30s, 10ms));

    auto after = follow(s.port(), id, {{"Last-Event-ID", before.back().id}});
    REQUIRE(!after->events.empty());
    std::vector<event> joined = before;
    joined.insert(joined.end(), after->events.begin(), after->events.end());
    const auto& terminal = check_sequence(joined, g.rows, g.errors);
    check_complete(terminal, g, g.good.size(), 0);

    // Connecting after the end replays the whole history, the same events, and ends.
    auto late = follow(s.port(), id);
    REQUIRE(late->events.size() == joined.size());
    for (std::size_t i = 0; i < joined.size(); ++i) {
        INFO("event " << i);
        CHECK(late->events[i].id == joined[i].id);
        CHECK(late->events[i].type == joined[i].type);
        CHECK(late->events[i].data == joined[i].data);
    }
    // From the middle of the history, after the end: the rest.
    auto middle = follow(s.port(), id, {{"Last-Event-ID", joined[joined.size() / 2].id}});
    REQUIRE(middle->events.size() == joined.size() - joined.size() / 2 - 1);
    CHECK(middle->events.front().id == joined[joined.size() / 2 + 1].id);

    // With the terminal event's id: 204, nothing to resume.
    auto done = request(s.port(), "GET", path, {{"Last-Event-ID", terminal.id}});
    CHECK(done.status == 204);
    CHECK(done.body.empty());
}

TEST_CASE("upload_server e2e: unknown ids and paths are 404", "[upload-e2e]")
{
    server s;
    const std::string unknown(32, 'a');
    for (const auto& path : {"/api/upload/" + unknown + "/events", "/api/upload/" + unknown, std::string("/nope")}) {
        auto r = request(s.port(), "GET", path, {{"Accept", "text/event-stream"}});
        INFO(path);
        CHECK(r.status == 404);
        CHECK(json::parse(r.body).contains("error"));
    }
    auto page = request(s.port(), "GET", "/");
    CHECK(page.status == 200);
    CHECK(page.header("Content-Type").value_or("").starts_with("text/html"));
    CHECK(page.body.find("<progress") != std::string::npos);
}

TEST_CASE("upload_server e2e: status goes queued, processing, completed or failed", "[upload-e2e]")
{
    server s;
    write_lock lock(s.db);  // the first job waits for it, in BEGIN
    const auto first = s.accepted(make_csv(2000).text, false);
    const auto second = s.accepted(make_csv(1000).text, false);
    const auto broken = s.accepted("sku,name,price,quantity\nX,\"open,1,1\n", false);
    // One import at a time: while the first runs, the others wait.
    REQUIRE(wait_state(s, first, "processing", 5s));
    CHECK(s.status(second).at("state") == "queued");
    CHECK(s.status(second).at("rows_done") == 0);
    CHECK(s.status(broken).at("state") == "queued");
    lock.release();
    REQUIRE(wait_state(s, second, "completed"));
    CHECK(s.status(first).at("state") == "completed");
    auto st = s.status(second);
    CHECK(st.at("rows_done") == 1000);
    CHECK(st.at("rows_total") == 1000);
    CHECK(st.at("transaction_id") == second);
    REQUIRE(wait_state(s, broken, "failed"));
}

TEST_CASE("upload_server e2e: two uploads at once both complete", "[upload-e2e]")
{
    server s;
    const auto a = make_csv(50'000);
    auto b = make_csv(0);
    b.text = "sku,name,price,quantity\nOTHER-1,Other,1.00,1\n";
    const auto ida = s.accepted(a.text);
    const auto idb = s.accepted(b.text);
    auto ca = follow(s.port(), ida);
    auto cb = follow(s.port(), idb);
    CHECK(ca->events.back().type == "complete");
    CHECK(cb->events.back().type == "complete");
    INFO(cb->events.back().data);
    CHECK(products_in(s.db).size() == a.good.size() + 1);
}

TEST_CASE("upload_server e2e: products are listed by sku, page by page", "[upload-e2e]")
{
    server s;
    const auto g = make_csv(2500, 9);
    auto c = follow(s.port(), s.accepted(g.text));
    REQUIRE(c->events.back().type == "complete");

    std::vector<std::string> skus;
    for (std::uint64_t offset = 0;; offset += 1000) {
        auto r = request(s.port(), "GET", "/api/products?limit=1000&offset=" + std::to_string(offset));
        REQUIRE(r.status == 200);
        const auto page = json::parse(r.body);
        CHECK(page.at("total") == g.good.size());
        for (const auto& p : page.at("products")) {
            const auto sku = p.at("sku").get<std::string>();
            const auto& want = g.good.at(sku);
            CHECK(p.at("name") == want.name);
            CHECK(p.at("price_cents") == want.price_cents);
            CHECK(p.at("quantity") == want.quantity);
            skus.push_back(sku);
        }
        if (page.at("products").size() < 1000)
            break;
        REQUIRE(offset < 10'000);
    }
    REQUIRE(skus.size() == g.good.size());
    CHECK(std::is_sorted(skus.begin(), skus.end()));
    CHECK(std::adjacent_find(skus.begin(), skus.end()) == skus.end());

    auto defaults = json::parse(request(s.port(), "GET", "/api/products").body);
    CHECK(defaults.at("products").size() == 50);
    CHECK(defaults.at("products")[0].at("sku") == skus[0]);
    auto capped = json::parse(request(s.port(), "GET", "/api/products?limit=5000").body);
    CHECK(capped.at("products").size() == 1000);
    auto tail = json::parse(request(s.port(), "GET", "/api/products?limit=10&offset=" + std::to_string(skus.size() - 3)).body);
    REQUIRE(tail.at("products").size() == 3);
    CHECK(tail.at("products")[2].at("sku") == skus.back());
    CHECK(request(s.port(), "GET", "/api/products?limit=-1").status == 400);
    CHECK(request(s.port(), "GET", "/api/products?offset=x").status == 400);
}

TEST_CASE("upload_server e2e: keep-alive carries several requests on one connection", "[upload-e2e]")
{
    server s;
    const auto g = make_csv(10);
    connection c(s.port());
    c.send_all(format_request("POST", "/api/upload/csv", {{"Content-Type", "text/csv"}}, g.text));
    auto r1 = c.read_response();
    REQUIRE(r1.status == 202);
    CHECK(!r1.header("Connection"));
    const auto id = json::parse(r1.body).at("transaction_id").get<std::string>();
    c.send_all(format_request("GET", "/api/upload/" + id));
    auto r2 = c.read_response();
    CHECK(r2.status == 200);
    CHECK(json::parse(r2.body).at("transaction_id") == id);
    // Two pipelined requests in one write, answered in order.
    c.send_all(format_request("GET", "/api/products?limit=1") + format_request("GET", "/nope"));
    auto r3 = c.read_response();
    auto r4 = c.read_response();
    CHECK(r3.status == 200);
    CHECK(r4.status == 404);
    // The connection stays open until the client is done.
    c.send_all(format_request("GET", "/api/upload/" + id, {}, {}, /*close=*/true));
    auto r5 = c.read_response();
    CHECK(r5.status == 200);
    CHECK(r5.header("Connection").value_or("") == "close");
    std::string rest;
    CHECK(c.read_to_eof(rest, 5s));
}

TEST_CASE("upload_server e2e: SIGTERM ends the running job and every stream, and exits 0", "[upload-e2e]")
{
    server s({"--grace-ms", "300"});
    const auto done = make_csv(100);
    const auto finished = s.accepted(done.text);
    REQUIRE(wait_state(s, finished, "completed"));
    const auto g = make_csv(400'000);
    const auto id = s.accepted(g.text, false);
    sse_client a(s.port(), "/api/upload/" + id + "/events");
    sse_client b(s.port(), "/api/upload/" + id + "/events");
    REQUIRE(a.read_head() == 200);
    REQUIRE(b.read_head() == 200);
    REQUIRE(a.read_until([&] { return a.events.size() >= 2; }, 30s));
    // An idle keep-alive connection must not hold the shutdown up either.
    connection idle(s.port());
    idle.send_all(format_request("GET", "/api/upload/" + finished));
    REQUIRE(idle.read_response().status == 200);

    const auto t0 = clock::now();
    s.proc.signal(SIGTERM);
    for (auto* c : {&a, &b}) {
        REQUIRE(c->read_to_eof(15s));
        REQUIRE(!c->events.empty());
        const auto& last = c->events.back();
        INFO(last.type << " " << last.data);
        const bool ok = last.type == "complete"
                        || (last.type == "error" && json::parse(last.data).at("reason") == "shutting down");
        CHECK(ok);
        CHECK(std::count_if(c->events.begin(), c->events.end(),
                            [](auto& e) { return e.type == "complete" || e.type == "error"; })
              == 1);
    }
    std::string rest;
    CHECK(idle.read_to_eof(rest, 10s));
    const auto code = s.proc.wait_exit(15s);
    REQUIRE(code.has_value());
    CHECK(*code == 0);
    CHECK(clock::now() - t0 < 15s);
    // A job cut short changed nothing; the finished one's rows are there.
    if (a.events.back().type == "error")
        check_products(s.db, done);
}

// --- limits: the HTTP front (examples/common) and the service (issue 16, items 6 and 7) -------

namespace {

/// Sends `bytes` in pieces of `piece` bytes, one every `gap`, until all are sent, the server
/// answers or closes, or `bound` passes. Returns when the first byte of an answer came, if one
/// did; what came is in `got`.
std::optional<clock::time_point> trickle(connection& c, std::string_view bytes, std::size_t piece,
                                         std::chrono::milliseconds gap, std::string& got,
                                         std::chrono::milliseconds bound = 8s)
{
    const auto end = clock::now() + bound;
    std::optional<clock::time_point> answered;
    while (clock::now() < end && !c.eof()) {
        if (!bytes.empty()) {
            try {
                c.send_all(bytes.substr(0, piece), 1s);
            } catch (const std::exception&) {
                break; // the server closed
            }
            bytes.remove_prefix(std::min(piece, bytes.size()));
        }
        // The pause between pieces doubles as the wait for an answer.
        const auto before = got.size();
        c.read_some(got, std::min(end, clock::now() + gap));
        if (!answered && got.size() > before)
            answered = clock::now();
        if (answered)
            break;
    }
    return answered;
}

http_response parse_response(const std::string& raw)
{
    http_response r;
    const auto end = raw.find("\r\n\r\n");
    REQUIRE(end != std::string::npos);
    r.head = raw.substr(0, end + 4);
    connection::parse_head(r);
    r.body = raw.substr(end + 4);
    return r;
}

/// A GET whose head, as sent, is exactly `size` bytes (padded in one field).
std::string head_of_size(std::size_t size)
{
    std::string h = "GET /api/products?limit=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: ";
    const std::string tail = "\r\nConnection: close\r\n\r\n";
    REQUIRE(size > h.size() + tail.size());
    h += std::string(size - h.size() - tail.size(), 'p') + tail;
    REQUIRE(h.size() == size);
    return h;
}

std::string error_of(const http_response& r)
{
    return json::parse(r.body).at("error").get<std::string>();
}

/// The head of a text/csv upload of `content_length` bytes with Expect: 100-continue.
std::string upload_head(std::size_t content_length)
{
    return "POST /api/upload/csv HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/csv\r\nExpect: 100-continue\r\n"
           "Content-Length: " + std::to_string(content_length) + "\r\n\r\n";
}

/// What the server answers to the head of an upload of `content_length` bytes alone (100 when
/// it would take the body, a refusal otherwise); the connection then closes, body unsent.
http_response announce(std::uint16_t port, std::size_t content_length)
{
    connection c(port);
    c.send_all(upload_head(content_length));
    return c.read_response(5s);
}

} // namespace

TEST_CASE("upload_server e2e: a head that trickles in gets 408 at the head deadline, whatever its pace",
          "[upload-e2e][front]")
{
    // A byte every 50 ms: under the old idle timer (re-armed by every byte) the connection
    // lived as long as the client kept trickling.
    server s({"--head-timeout-ms", "600"});
    connection c(s.port());
    const std::string head = "GET /api/products HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + std::string(300, 'a');
    const auto t0 = clock::now();
    std::string got;
    const auto answered = trickle(c, head, 1, 50ms, got);
    REQUIRE(answered);
    const auto after = std::chrono::duration_cast<std::chrono::milliseconds>(*answered - t0);
    INFO("answered after " << after.count() << " ms: " << got);
    CHECK(after >= 550ms);  // not before the deadline (the first byte went a moment after t0)
    CHECK(after < 3s);
    std::string rest;
    CHECK(c.read_to_eof(rest, 5s));
    const auto r = parse_response(got + rest);
    CHECK(r.status == 408);
    CHECK(r.header("Connection").value_or("") == "close");
    CHECK(error_of(r).find("request head not complete") != std::string::npos);
}

TEST_CASE("upload_server e2e: a body that stalls gets 408, one that keeps the minimum rate takes the time it needs",
          "[upload-e2e][front]")
{
    server s({"--body-timeout-ms", "600", "--min-body-rate", "1000"});
    const auto g = make_csv(150);
    REQUIRE(g.text.size() > 4000);
    const std::string head = "POST /api/upload/csv HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/csv\r\n"
                             "Content-Length: " + std::to_string(g.text.size()) + "\r\n\r\n";
    SECTION("a byte every 50 ms (20 B/s): 408 after about body-timeout")
    {
        connection c(s.port());
        c.send_all(head);
        const auto t0 = clock::now();
        std::string got;
        const auto answered = trickle(c, g.text, 1, 50ms, got);
        REQUIRE(answered);
        const auto after = std::chrono::duration_cast<std::chrono::milliseconds>(*answered - t0);
        INFO("answered after " << after.count() << " ms: " << got);
        CHECK(after >= 600ms);
        CHECK(after < 3s);
        std::string rest;
        c.read_to_eof(rest, 5s);
        const auto r = parse_response(got + rest);
        CHECK(r.status == 408);
        CHECK(error_of(r).find("request body") != std::string::npos);
    }
    SECTION("500 bytes every 100 ms (5 kB/s) for longer than body-timeout: accepted")
    {
        connection c(s.port());
        c.send_all(head);
        const auto t0 = clock::now();
        std::string got;
        const auto answered = trickle(c, g.text, 500, 100ms, got, 20s);
        REQUIRE(answered);
        INFO(got);
        CHECK(*answered - t0 > 600ms);  // longer than the body timeout alone allows
        const auto r = parse_response(got);
        CHECK(r.status == 202);
    }
}

TEST_CASE("upload_server e2e: the head limit counts the head as sent: 16 KiB passes, one byte more is 431",
          "[upload-e2e][front]")
{
    server s;
    const auto answer = [&](const std::string& text) {
        connection c(s.port());
        try {
            c.send_all(text, 5s);
        } catch (const std::exception&) {
            // The server may answer and stop reading before all of an oversized head is sent.
        }
        return c.read_response(5s);
    };
    CHECK(answer(head_of_size(16 * 1024)).status == 200);
    const auto over = answer(head_of_size(16 * 1024 + 1));
    CHECK(over.status == 431);
    CHECK(over.header("Connection").value_or("") == "close");
    CHECK(error_of(over).find("16384") != std::string::npos);

    // Per-field overhead counts: 3,500 fields "a: b" are 2 bytes of name and value each, but
    // 6 bytes each as sent (": " and CRLF).
    std::string many = "GET /api/products HTTP/1.1\r\nHost: 127.0.0.1\r\n";
    for (int i = 0; i < 3500; ++i)
        many += "a: b\r\n";
    many += "\r\n";
    REQUIRE(many.size() > 16 * 1024);
    CHECK(answer(many).status == 431);
    // So does the spacing around a value, which is not part of it.
    CHECK(answer("GET /api/products HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad:" + std::string(17000, ' ') + "v\r\n\r\n")
              .status
          == 431);
    // And empty lines before a request line.
    std::string blank_lines;
    for (int i = 0; i < 9000; ++i)
        blank_lines += "\r\n";
    CHECK(answer(blank_lines + "GET /api/products HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").status == 431);
}

TEST_CASE("upload_server e2e: past --max-connections a connection is answered 503 at once, closing one frees a place, "
          "and event streams do not count",
          "[upload-e2e][front]")
{
    server s({"--max-connections", "3"});
    write_lock lock(s.db);  // the job stays running, so its streams stay open
    const auto id = s.accepted(make_csv(10).text);
    // Event streams leave the HTTP front: these three take no place.
    std::vector<std::unique_ptr<sse_client>> streams;
    for (int i = 0; i < 3; ++i) {
        streams.push_back(std::make_unique<sse_client>(s.port(), "/api/upload/" + id + "/events"));
        REQUIRE(streams.back()->read_head() == 200);
    }
    // Three keep-alive connections, each answered (so each was accepted and counted).
    std::vector<std::unique_ptr<connection>> held;
    for (int i = 0; i < 3; ++i) {
        held.push_back(std::make_unique<connection>(s.port()));
        held.back()->send_all(format_request("GET", "/api/upload/" + id));
        REQUIRE(held.back()->read_response().status == 200);
    }
    // The fourth: 503 with Retry-After before it even asks, then closed.
    {
        connection extra(s.port());
        const auto r = extra.read_response(5s);
        CHECK(r.status == 503);
        CHECK(r.header("Retry-After").value_or("") == "1");
        CHECK(r.header("Connection").value_or("") == "close");
        CHECK(error_of(r).find("too many connections") != std::string::npos);
        std::string rest;
        CHECK(extra.read_to_eof(rest, 5s));
    }
    // A held connection closes: its place is free again (once the server saw it close).
    held.front()->close();
    const bool served = test::eventually(
        [&] {
            try {
                return request(s.port(), "GET", "/api/upload/" + id, {}, {}, 5s).status == 200;
            } catch (const std::exception&) {
                return false;  // refused, and the answer lost to the reset
            }
        },
        10s, 20ms);
    CHECK(served);
    // The others still work.
    held.back()->send_all(format_request("GET", "/api/upload/" + id));
    CHECK(held.back()->read_response().status == 200);
    lock.release();
    for (auto& st : streams)
        CHECK(st->read_to_eof(30s));
}

TEST_CASE("upload_server e2e: past --max-queued-jobs or --max-queued-mb an upload is refused 503 with Retry-After, "
          "from its head, and accepted again once the queue drains",
          "[upload-e2e]")
{
    const auto small = make_csv(20);
    SECTION("jobs")
    {
        server s({"--max-queued-jobs", "2"});
        write_lock lock(s.db);  // the first job waits in BEGIN, the second behind it
        const auto a = s.accepted(small.text);
        const auto b = s.accepted(small.text);
        const auto r = s.upload(small.text);
        INFO(r.head << r.body);
        CHECK(r.status == 503);
        CHECK(r.header("Retry-After").value_or("") == "5");
        CHECK(error_of(r).find("2 uploads are waiting or running") != std::string::npos);
        // From the head: asked to continue, the server answers 503 instead, and reads no body.
        connection c(s.port());
        c.send_all("POST /api/upload/csv HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/csv\r\nExpect: 100-continue\r\n"
                   "Content-Length: " + std::to_string(small.text.size()) + "\r\n\r\n");
        const auto early = c.read_response(5s);
        CHECK(early.status == 503);
        CHECK(early.header("Connection").value_or("") == "close");

        lock.release();
        REQUIRE(wait_state(s, a, "completed"));
        REQUIRE(wait_state(s, b, "completed"));
        CHECK(test::eventually([&] { return s.upload(small.text).status == 202; }, 10s, 20ms));
    }
    SECTION("bytes")
    {
        server s({"--max-queued-mb", "1"});
        const auto big = make_csv(18'000);  // about 0.65 MiB
        REQUIRE(big.text.size() > 600'000);
        REQUIRE(big.text.size() < 800'000);
        write_lock lock(s.db);
        const auto a = s.accepted(big.text, false);
        const auto r = s.upload(big.text, false);
        INFO(r.head << r.body);
        CHECK(r.status == 503);
        CHECK(r.header("Retry-After").value_or("") == "5");
        CHECK(error_of(r).find("would pass the limit of 1048576 bytes") != std::string::npos);
        // A small one still fits.
        const auto b = s.accepted(small.text, false);
        lock.release();
        REQUIRE(wait_state(s, a, "completed"));
        REQUIRE(wait_state(s, b, "completed"));
        CHECK(test::eventually([&] { return s.upload(big.text, false).status == 202; }, 10s, 20ms));
    }
    SECTION("bytes still arriving count, until their connection goes")
    {
        server s({"--max-queued-mb", "1"});
        const auto big = make_csv(18'000);
        // A body announced and mostly sent. Its bytes count as they arrive (no longer all of
        // them from its head: a rule changed, see "a few slow connections do not lock out"),
        // so another as large no longer fits, once the server has read them.
        auto slow = std::make_unique<connection>(s.port());
        slow->send_all("POST /api/upload/csv HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/csv\r\n"
                       "Expect: 100-continue\r\nContent-Length: " + std::to_string(big.text.size()) + "\r\n\r\n");
        REQUIRE(slow->read_response(5s).status == 100);
        slow->send_all(big.text.substr(0, big.text.size() * 9 / 10));
        REQUIRE(test::eventually([&] { return announce(s.port(), big.text.size()).status == 503; }, 10s, 20ms));
        const auto r = s.upload(big.text, false);
        CHECK(r.status == 503);
        CHECK(error_of(r).find("waiting, running or arriving") != std::string::npos);
        // The slow client gives up: its reservation goes with its connection.
        slow->reset();
        slow.reset();
        CHECK(test::eventually([&] { return s.upload(big.text, false).status == 202; }, 10s, 20ms));
    }
}

TEST_CASE("upload_server e2e: past --max-finished-jobs the oldest finished job is forgotten", "[upload-e2e]")
{
    server s({"--max-finished-jobs", "2"});
    const auto g = make_csv(10);
    std::vector<std::string> ids;
    for (int i = 0; i < 3; ++i) {
        ids.push_back(s.accepted(g.text));
        (void)follow(s.port(), ids.back());
    }
    CHECK(test::eventually([&] { return request(s.port(), "GET", "/api/upload/" + ids[0]).status == 404; }, 10s, 20ms));
    CHECK(request(s.port(), "GET", "/api/upload/" + ids[0] + "/events").status == 404);
    for (int i = 1; i < 3; ++i) {
        CHECK(s.status(ids[i]).at("state") == "completed");
        auto c = follow(s.port(), ids[i]);
        CHECK(c->events.back().type == "complete");
    }
}

TEST_CASE("upload_server e2e: after the history linger, a reconnect gets the job's outcome and the end, never an "
          "endless stream",
          "[upload-e2e]")
{
    server s({"--finished-linger-ms", "300"});
    const auto g = make_csv(500, 7);
    const auto id = s.accepted(g.text);
    const auto full = follow(s.port(), id);
    const auto& terminal = check_sequence(full->events, g.rows, g.errors);
    REQUIRE(terminal.type == "complete");

    // Once the history is gone, only the outcome is replayed, with its own id, and the stream
    // ends (each attempt is bounded: a stream that stays open fails here).
    std::unique_ptr<sse_client> late;
    REQUIRE(test::eventually(
        [&] {
            late = std::make_unique<sse_client>(s.port(), "/api/upload/" + id + "/events");
            REQUIRE(late->read_head() == 200);
            REQUIRE(late->read_to_eof(5s));
            return late->events.size() == 1;
        },
        10s, 50ms));
    CHECK(late->events[0].type == terminal.type);
    CHECK(late->events[0].data == terminal.data);
    CHECK(late->events[0].id == terminal.id);
    // Twice: the outcome is kept in the job, not used up.
    auto again = follow(s.port(), id);
    REQUIRE(again->events.size() == 1);
    CHECK(again->events[0].id == terminal.id);
    // Resuming from an event of the forgotten history: the outcome, then the end.
    auto middle = follow(s.port(), id, {{"Last-Event-ID", full->events[1].id}});
    REQUIRE(!middle->events.empty());
    CHECK(middle->events.back().id == terminal.id);
    CHECK(middle->events.back().type == "complete");
    // With the outcome's id: 204, nothing more to come.
    CHECK(request(s.port(), "GET", "/api/upload/" + id + "/events", {{"Last-Event-ID", terminal.id}}).status == 204);
    CHECK(s.status(id).at("state") == "completed");
}

TEST_CASE("upload_server e2e: after --finished-ttl-ms a finished job is forgotten (404)", "[upload-e2e]")
{
    server s({"--finished-linger-ms", "100", "--finished-ttl-ms", "300"});
    const auto id = s.accepted(make_csv(10).text);
    REQUIRE(wait_state(s, id, "completed"));
    CHECK(test::eventually([&] { return request(s.port(), "GET", "/api/upload/" + id).status == 404; }, 10s, 20ms));
    CHECK(request(s.port(), "GET", "/api/upload/" + id + "/events").status == 404);
}

// Issue 16 review, item 2: the head reserved its whole Content-Length before any body came, so
// four connections announcing large bodies and trickling them held all of --max-queued-mb.
TEST_CASE("upload_server e2e: a few slow connections announcing large bodies do not lock out uploads, bodies count "
          "as they arrive, and never pass --max-queued-mb",
          "[upload-e2e]")
{
    server s({"--max-queued-mb", "1"});
    const std::size_t announced = 900 * 1024;
    const std::string filler(announced, 'x');
    std::vector<std::unique_ptr<connection>> slow;
    for (int i = 0; i < 4; ++i) {
        slow.push_back(std::make_unique<connection>(s.port()));
        slow.back()->send_all(upload_head(announced));
        INFO("slow connection " << i);
        REQUIRE(slow.back()->read_response(5s).status == 100);  // was 503 from the second on
        slow.back()->send_all(filler.substr(0, 1000));
    }
    // An honest upload gets in and is imported meanwhile.
    const auto g = make_csv(2000);
    const auto id = s.accepted(g.text, false);
    REQUIRE(wait_state(s, id, "completed"));

    // Sent on, the slow bodies would pass the limit together: the first two hold 600 KiB
    // each once the server read them, and the second is refused on the way, 503 with
    // Retry-After, before what they hold passes 1 MiB.
    slow[0]->send_all(filler.substr(0, 600 * 1024));
    REQUIRE(test::eventually([&] { return announce(s.port(), 500 * 1024).status == 503; }, 10s, 20ms));
    try {
        slow[1]->send_all(filler.substr(0, 600 * 1024), 5s);
    } catch (const std::exception&) {
        // The server may stop reading once it refused.
    }
    const auto r = slow[1]->read_response(5s);
    CHECK(r.status == 503);
    CHECK(r.header("Retry-After").value_or("") == "5");
    CHECK(error_of(r).find("would pass the limit of 1048576 bytes") != std::string::npos);
    // The refused body's bytes went with it: 400 KiB fit again (1 MiB less the first's 601 KB).
    CHECK(test::eventually([&] { return announce(s.port(), 400 * 1024).status == 100; }, 10s, 20ms));
}

TEST_CASE("upload_server e2e: a body over --max-upload-mb is 413 even when the queue has no room (not 503 forever)",
          "[upload-e2e]")
{
    server s;
    // 300 MiB: over both --max-upload-mb (64) and --max-queued-mb (256); only 413 is final.
    const auto r = announce(s.port(), std::size_t(300) << 20);
    INFO(r.head << r.body);
    CHECK(r.status == 413);
    CHECK(!r.header("Retry-After"));
    CHECK(error_of(r).find("over the limit of 67108864 bytes") != std::string::npos);
    // Under it, still accepted.
    CHECK(announce(s.port(), 1000).status == 100);
}

TEST_CASE("upload_server e2e: a body that arrived fast then stalls gets 408 after --body-timeout-ms, and what it held "
          "is free before the 408 is sent",
          "[upload-e2e][front]")
{
    server s({"--max-queued-mb", "1", "--body-timeout-ms", "3000", "--min-body-rate", "1000"});
    connection c(s.port());
    c.send_all(upload_head(900 * 1024));
    REQUIRE(c.read_response(5s).status == 100);
    // 800 KiB at once earn about 800 s at --min-body-rate: the stall alone ends it now.
    const auto t0 = clock::now();
    c.send_all(std::string(800 * 1024, 'x'));
    REQUIRE(test::eventually([&] { return announce(s.port(), 300 * 1024).status == 503; }, 10s, 20ms));
    const auto r = c.read_response(10s);
    const auto after = clock::now() - t0;
    CHECK(r.status == 408);
    CHECK(after < 8s);
    // The client has not closed (the server lingers 2 s for it): the bytes were freed anyway.
    CHECK(announce(s.port(), 300 * 1024).status == 100);
}

// Issue 16 review, item 1: event streams left the front's count, so nothing bounded them.
TEST_CASE("upload_server e2e: event streams are capped per job (--max-job-streams) and in all (--max-streams), 503 "
          "with a reason, and a closed stream frees its place",
          "[upload-e2e]")
{
    server s({"--max-streams", "3", "--max-job-streams", "2"});
    write_lock lock(s.db);  // the jobs stay queued or running, so their streams stay open
    const auto a = s.accepted(make_csv(10).text);
    const auto b = s.accepted(make_csv(10).text);
    const auto open = [&](const std::string& id) {
        auto c = std::make_unique<sse_client>(s.port(), "/api/upload/" + id + "/events");
        c->read_head();
        return c;
    };
    const auto refused = [&](sse_client& c, const std::string& why) {
        INFO(c.response.head);
        CHECK(c.response.status == 503);
        CHECK(c.response.header("Retry-After").value_or("") == "5");
        const auto length = std::stoul(c.response.header("Content-Length").value_or("0"));
        REQUIRE(c.read_until([&] { return c.response.body.size() >= length; }, 5s));
        CHECK(error_of(c.response).find(why) != std::string::npos);
    };
    auto a1 = open(a);
    auto a2 = open(a);
    REQUIRE(a1->response.status == 200);
    REQUIRE(a2->response.status == 200);
    auto a3 = open(a);
    refused(*a3, "this job has 2 event streams open");
    auto b1 = open(b);
    REQUIRE(b1->response.status == 200);
    auto b2 = open(b);
    refused(*b2, "the server has 3 event streams open");
    // The refusals count with the registry's own (issue 14).
    const auto m = parse_samples(request(s.port(), "GET", "/metrics").body);
    CHECK(m.at("ssepp_open_connections") == 3);
    CHECK(m.at("ssepp_connections_refused_total") == 2);
    // A stream that closes gives its place back.
    a1->conn().close();
    std::unique_ptr<sse_client> b3;
    CHECK(test::eventually([&] { return (b3 = open(b))->response.status == 200; }, 10s, 20ms));
    lock.release();
    for (auto* c : {a2.get(), b1.get(), b3.get()})
        CHECK(c->read_to_eof(30s));
}
