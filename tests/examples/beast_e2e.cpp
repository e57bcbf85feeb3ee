// End-to-end tests of examples/beast/beast_upload_server (issue 13): the real binary on
// 127.0.0.1, port 0, a temp database; uploads over real sockets, and each job's event stream
// followed with ssepp::event_source (the project's client: it decides on reconnection and
// sends Last-Event-ID), over plain TCP and over TLS (a certificate made at run time, pinned by
// the client). Built when examples/beast is (SSEPP_BEAST_E2E, tests/examples/CMakeLists.txt).
#if SSEPP_BEAST_E2E

#include "examples/support/upload_support.hpp"

#include "catch.hpp"
#include "support/loopback.hpp"
#include "support/tls.hpp"

#include <ssepp/event_source.hpp>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include <fstream>
#include <functional>
#include <memory>
#include <set>

using e2e::upload::json;
using namespace std::chrono_literals;

namespace {

/// beast_upload_server on port 0 with a database in a temp dir of its own; with `tls`, a
/// self-signed certificate for 127.0.0.1 (made at run time) in that dir, served with --cert/--key.
struct beast_server {
    e2e::temp_dir dir;
    std::optional<test::self_signed> tls;
    e2e::server_process proc;

    explicit beast_server(std::vector<std::string> extra = {}, bool with_tls = false)
        : tls(with_tls ? std::optional(test::self_signed::make()) : std::nullopt),
          proc(e2e::example_binary("beast_upload_server", "SSEPP_BEAST_UPLOAD_SERVER"), args(std::move(extra)))
    {
    }

    std::uint16_t port() const { return proc.port(); }

    std::vector<std::string> args(std::vector<std::string> extra) const
    {
        std::vector<std::string> a{"--port", "0", "--db", (dir / "upload.db").string()};
        if (tls) {
            std::ofstream(dir / "cert.pem") << tls->certificate_pem;
            std::ofstream(dir / "key.pem") << tls->private_key_pem;
            a.insert(a.end(), {"--cert", (dir / "cert.pem").string(), "--key", (dir / "key.pem").string()});
        }
        a.insert(a.end(), extra.begin(), extra.end());
        return a;
    }
};

/// A TLS client connection over e2e::connection's non-blocking socket (OpenSSL directly, every
/// wait bounded by poll), trusting exactly the server's certificate and checking its address.
/// The same reads and writes as e2e::connection, so the helpers below take either.
class tls_connection {
public:
    tls_connection(std::uint16_t port, const test::self_signed& pinned, std::chrono::milliseconds timeout = 10s)
        : tcp_(port), ctx_(SSL_CTX_new(TLS_client_method()), &SSL_CTX_free), ssl_(nullptr, &SSL_free)
    {
        std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new_mem_buf(pinned.certificate_pem.data(),
                                                                      static_cast<int>(pinned.certificate_pem.size())),
                                                      &BIO_free);
        std::unique_ptr<X509, decltype(&X509_free)> cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr),
                                                         &X509_free);
        if (!ctx_ || !cert || X509_STORE_add_cert(SSL_CTX_get_cert_store(ctx_.get()), cert.get()) != 1)
            throw std::runtime_error("tls_connection: cannot set up the client context");
        SSL_CTX_set_verify(ctx_.get(), SSL_VERIFY_PEER, nullptr);
        ssl_.reset(SSL_new(ctx_.get()));
        X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl_.get()), "127.0.0.1");
        SSL_set_fd(ssl_.get(), tcp_.fd());
        const auto deadline = e2e::clock::now() + timeout;
        for (;;) {
            const int r = SSL_connect(ssl_.get());
            if (r == 1)
                break;
            if (!wait_for(SSL_get_error(ssl_.get(), r), deadline))
                throw std::runtime_error("tls_connection: handshake failed or timed out (verify result "
                                         + std::to_string(SSL_get_verify_result(ssl_.get())) + ")");
        }
    }

    void send_all(std::string_view bytes, std::chrono::milliseconds timeout = 10s)
    {
        const auto deadline = e2e::clock::now() + timeout;
        while (!bytes.empty()) {
            const int n = SSL_write(ssl_.get(), bytes.data(), static_cast<int>(bytes.size()));
            if (n > 0)
                bytes.remove_prefix(static_cast<std::size_t>(n));
            else if (!wait_for(SSL_get_error(ssl_.get(), n), deadline))
                throw std::runtime_error("tls_connection: send failed or timed out");
        }
    }

    /// As e2e::connection::read_some: appends what is there, waiting until `deadline`; false at
    /// the deadline; eof() once the stream ended, closed() tells whether with close_notify.
    bool read_some(std::string& out, e2e::clock::time_point deadline)
    {
        for (;;) {
            char buf[16384];
            const int n = SSL_read(ssl_.get(), buf, sizeof buf);
            if (n > 0) {
                out.append(buf, static_cast<std::size_t>(n));
                return true;
            }
            const int err = SSL_get_error(ssl_.get(), n);
            if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
                if (!wait_for(err, deadline))
                    return false;
                continue;
            }
            eof_ = true;
            close_notify_ = err == SSL_ERROR_ZERO_RETURN;
            ERR_clear_error();
            return true;
        }
    }

    bool eof() const { return eof_; }
    /// The server ended the stream with close_notify (not a truncation).
    bool close_notify() const { return close_notify_; }
    void reset() { tcp_.reset(); }

private:
    // Waits for what OpenSSL wants; false on a hard error or at the deadline.
    bool wait_for(int ssl_error, e2e::clock::time_point deadline)
    {
        short events = 0;
        if (ssl_error == SSL_ERROR_WANT_READ)
            events = POLLIN;
        else if (ssl_error == SSL_ERROR_WANT_WRITE)
            events = POLLOUT;
        else
            return false;
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - e2e::clock::now()).count();
        if (left <= 0)
            return false;
        pollfd p{tcp_.fd(), events, 0};
        return ::poll(&p, 1, static_cast<int>(left)) > 0;
    }

    e2e::connection tcp_;
    std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)> ctx_;
    std::unique_ptr<SSL, decltype(&SSL_free)> ssl_;
    bool eof_ = false;
    bool close_notify_ = false;
};

/// Reads one response with a Content-Length body (all of the server's answers but streams).
template <class Conn>
e2e::http_response read_response(Conn& c, std::string& pending, std::chrono::milliseconds timeout = 20s)
{
    const auto deadline = e2e::clock::now() + timeout;
    std::size_t end;
    while ((end = pending.find("\r\n\r\n")) == std::string::npos)
        if (c.eof() || !c.read_some(pending, deadline))
            throw std::runtime_error("no response head; got: " + pending);
    e2e::http_response r;
    r.head = pending.substr(0, end + 4);
    pending.erase(0, end + 4);
    e2e::connection::parse_head(r);
    const std::size_t length = r.status == 204 ? 0 : std::stoull(r.header("Content-Length").value_or("0"));
    while (pending.size() < length)
        if (c.eof() || !c.read_some(pending, deadline))
            throw std::runtime_error("body not complete");
    r.body = pending.substr(0, length);
    pending.erase(0, length);
    return r;
}

template <class Conn>
e2e::http_response ask(Conn& c, std::string_view method, std::string_view target,
                           const e2e::header_list& headers = {}, std::string_view body = {})
{
    c.send_all(e2e::format_request(method, target, headers, body));
    std::string pending;
    return read_response(c, pending);
}

struct received {
    std::string type, data, id;
    friend bool operator==(const received&, const received&) = default;
};

/// Follows an event stream with ssepp::event_source over connections that `connect` makes:
/// open() sends the source's request (Last-Event-ID once it has one), read_to_end() feeds the
/// body until the server ends it, drop() breaks the connection as a network failure would.
template <class Conn>
class follower {
public:
    follower(std::function<std::unique_ptr<Conn>()> connect, std::string target)
        : connect_(std::move(connect)), target_(std::move(target))
    {
    }

    /// A request (the first, or a reconnection the source asked for); the response's status.
    int open(std::chrono::milliseconds timeout = 10s)
    {
        conn_ = connect_();
        sent_ = source.request_headers();
        conn_->send_all(e2e::format_request("GET", target_, sent_));
        const auto deadline = e2e::clock::now() + timeout;
        std::string bytes;
        std::size_t end;
        while ((end = bytes.find("\r\n\r\n")) == std::string::npos)
            if (conn_->eof() || !conn_->read_some(bytes, deadline))
                throw std::runtime_error("follower: no response head; got: " + bytes);
        response = {};
        response.head = bytes.substr(0, end + 4);
        e2e::connection::parse_head(response);
        if (source.on_response(response.status, response.header("Content-Type").value_or("")).open)
            feed(std::string_view(bytes).substr(end + 4));
        return response.status;
    }

    template <class Pred>
    bool read_until(Pred pred, std::chrono::milliseconds timeout = 30s)
    {
        const auto deadline = e2e::clock::now() + timeout;
        while (!pred() && !conn_->eof()) {
            std::string chunk;
            if (!conn_->read_some(chunk, deadline))
                return pred();
            feed(chunk);
        }
        return pred();
    }

    /// Reads until the server ends the response; then asks the source what next (decision).
    bool read_to_end(std::chrono::milliseconds timeout = 60s)
    {
        if (!read_until([&] { return conn_->eof(); }, timeout))
            return false;
        decision = source.on_end();
        return true;
    }

    /// Breaks the connection (RST), as a network failure would.
    void drop()
    {
        conn_->reset();
        decision = source.on_end(std::make_error_code(std::errc::connection_reset));
    }

    /// The header fields the last request carried.
    std::optional<std::string> sent(std::string_view name) const
    {
        for (const auto& [k, v] : sent_)
            if (e2e::iequals(k, name))
                return v;
        return std::nullopt;
    }

    Conn& conn() { return *conn_; }

    ssepp::event_source source{ssepp::event_source_options{.seed = 1}};
    e2e::http_response response;  // the last head
    std::vector<received> events;
    ssepp::reconnect_decision decision{false, {}};

private:
    void feed(std::string_view chunk)
    {
        source.feed(chunk, [&](const ssepp::message& m) {
            events.push_back({std::string(m.type), std::string(m.data), std::string(m.last_event_id)});
        });
    }

    std::function<std::unique_ptr<Conn>()> connect_;
    std::string target_;
    std::unique_ptr<Conn> conn_;
    e2e::header_list sent_;
};

std::function<std::unique_ptr<e2e::connection>()> plain(std::uint16_t port)
{
    return [port] { return std::make_unique<e2e::connection>(port); };
}

std::function<std::unique_ptr<tls_connection>()> over_tls(const beast_server& s)
{
    return [port = s.port(), &cert = *s.tls] { return std::make_unique<tls_connection>(port, cert); };
}

/// Posts `csv` as multipart; the transaction id of the 202.
template <class Conn>
std::string upload(Conn&& c, const std::string& csv)
{
    const e2e::http_response r = ask(*c, "POST", "/api/upload/csv", e2e::upload::multipart_headers(),
                                     e2e::upload::multipart_body(csv));
    REQUIRE(r.status == 202);
    const json answer = json::parse(r.body);
    const std::string id = answer.at("transaction_id").get<std::string>();
    CHECK(id.size() == 32);
    CHECK(answer.at("events") == "/api/upload/" + id + "/events");
    CHECK(r.header("Location").value_or("") == "/api/upload/" + id);
    return id;
}

/// The stream of a job that ended, as the contract says: every event with an id, no id twice;
/// progress first, rows_done never going back; the row errors of `g`, in order; one terminal
/// event, `complete`, last, with the file's counts.
void check_stream(const std::vector<received>& events, const e2e::upload::generated_csv& g)
{
    REQUIRE(events.size() >= 2);
    CHECK(events.front().type == "progress");
    std::set<std::string> ids;
    std::uint64_t rows_done = 0;
    std::size_t row_errors = 0;
    for (std::size_t i = 0; i < events.size(); ++i) {
        const auto& e = events[i];
        INFO("event " << i << ": " << e.type << " id " << e.id << " " << e.data);
        REQUIRE(!e.id.empty());
        REQUIRE(ids.insert(e.id).second);
        const auto d = json::parse(e.data);
        if (e.type == "progress") {
            CHECK(d.at("rows_total") == g.rows);
            REQUIRE(d.at("rows_done").get<std::uint64_t>() >= rows_done);
            rows_done = d.at("rows_done").get<std::uint64_t>();
        } else if (e.type == "row-error") {
            REQUIRE(row_errors < g.errors.size());
            const auto& x = g.errors[row_errors++];
            CHECK(d.at("line") == x.line);
            CHECK(d.at("sku") == x.sku);
            CHECK(d.at("reason") == x.reason);
        } else {
            REQUIRE(e.type == "complete");
            REQUIRE(i == events.size() - 1);
            CHECK(d.at("rows") == g.rows);
            CHECK(d.at("errors") == g.errors.size());
            CHECK(d.at("inserted").get<std::uint64_t>() + d.at("updated").get<std::uint64_t>() == g.good.size());
        }
    }
    CHECK(row_errors == std::min<std::size_t>(g.errors.size(), 1000));
    CHECK(events.back().type == "complete");
}

/// Follows the job from a connection that drops mid-job, then resumes as the source decides:
/// with Last-Event-ID, to the end. The events got are the whole history, which a late
/// subscriber then gets from the replay: no gap, no duplicate.
template <class Conn>
void drop_and_resume(std::function<std::unique_ptr<Conn>()> connect, const std::string& id,
                     const e2e::upload::generated_csv& g)
{
    const auto target = "/api/upload/" + id + "/events";
    follower<Conn> a(connect, target);
    REQUIRE(a.open() == 200);
    CHECK_FALSE(a.sent("Last-Event-ID"));
    REQUIRE(a.read_until([&] { return a.events.size() >= 40; }));
    // Mid-job: the import pauses 5 ms every few dozen rows, seconds in all.
    const json state = json::parse(ask(*connect(), "GET", "/api/upload/" + id).body).at("state");
    REQUIRE((state == "queued" || state == "processing"));
    a.drop();
    REQUIRE(a.decision.reconnect);
    const auto before = a.events.size();
    const auto last_id = a.events.back().id;
    REQUIRE(a.open() == 200);
    CHECK(a.sent("Last-Event-ID") == last_id);
    REQUIRE(a.read_to_end());
    INFO(before << " events before the drop, " << a.events.size() << " in all");
    check_stream(a.events, g);

    follower<Conn> late(connect, target);
    REQUIRE(late.open() == 200);
    REQUIRE(late.read_to_end());
    CHECK(late.events == a.events);
}

} // namespace

TEST_CASE("beast_upload_server e2e: a 202 at once, then the job's stream, followed with event_source, ends with the "
          "outcome",
          "[beast-e2e]")
{
    beast_server s;
    const auto g = e2e::upload::make_csv(3000, 7);
    const auto id = upload(plain(s.port())(), g.text);

    const auto target = "/api/upload/" + id + "/events";
    follower<e2e::connection> f(plain(s.port()), target);
    REQUIRE(f.open() == 200);
    CHECK(f.response.header("Content-Type") == "text/event-stream");
    CHECK(f.response.header("Cache-Control") == "no-cache, no-transform");
    CHECK(f.response.header("X-Accel-Buffering") == "no");
    REQUIRE(f.read_to_end());
    check_stream(f.events, g);
    CHECK(json::parse(f.events.back().data).at("inserted") == g.good.size());

    // The server ended the stream; EventSource reconnects with the terminal event's id, and the
    // server's 204 tells it to stop.
    REQUIRE(f.decision.reconnect);
    REQUIRE(f.open() == 204);
    CHECK(f.source.state() == ssepp::event_source::ready_state::closed);
    CHECK(f.source.reason() == ssepp::event_source::stop_reason::no_content);

    // A late subscriber gets the whole history, the same events with the same ids.
    follower<e2e::connection> late(plain(s.port()), target);
    REQUIRE(late.open() == 200);
    REQUIRE(late.read_to_end());
    CHECK(late.events == f.events);

    const auto st = json::parse(e2e::request(s.port(), "GET", "/api/upload/" + id).body);
    CHECK(st.at("state") == "completed");
    CHECK(st.at("rows_done") == g.rows);
    const auto products = json::parse(e2e::request(s.port(), "GET", "/api/products?limit=3").body);
    CHECK(products.at("total") == g.good.size());
    CHECK(products.at("products").size() == 3);
    // The page is upload_progress's.
    const auto page = e2e::request(s.port(), "GET", "/");
    CHECK(page.status == 200);
    CHECK(page.body.find("new EventSource(`/api/upload/${id}/events`)") != std::string::npos);
}

TEST_CASE("beast_upload_server e2e: a client dropped mid-job resumes with Last-Event-ID, no gap, no duplicate",
          "[beast-e2e]")
{
    beast_server s({"--import-pause-us", "5000"});
    const auto g = e2e::upload::make_csv(20000, 25);  // 800 row errors, reported as the rows are checked
    const auto id = upload(plain(s.port())(), g.text);
    drop_and_resume(plain(s.port()), id, g);
}

TEST_CASE("beast_upload_server e2e: malformed and refused requests get a 4xx with the reason", "[beast-e2e]")
{
    beast_server s({"--max-upload-mb", "1", "--max-head-bytes", "2048"});
    const auto error_of = [](const e2e::http_response& r) { return json::parse(r.body).at("error").get<std::string>(); };

    SECTION("a header line without a colon: 400, and the connection closes")
    {
        e2e::connection c(s.port());
        c.send_all("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nthis line has no colon\r\n\r\n");
        const auto r = c.read_response();
        CHECK(r.status == 400);
        CHECK(error_of(r).starts_with("malformed request: "));
        CHECK(error_of(r).size() > std::string_view("malformed request: ").size());
        std::string rest;
        CHECK(c.read_to_eof(rest));
    }
    SECTION("a head larger than --max-head-bytes: 431")
    {
        const auto r = e2e::request(s.port(), "GET", "/", {{"X-Padding", std::string(4000, 'x')}});
        CHECK(r.status == 431);
        CHECK(error_of(r) == "the request head is larger than 2048 bytes");
    }
    SECTION("an upload larger than --max-upload-mb: 413 from its Content-Length, no 100 Continue, no body read")
    {
        e2e::connection c(s.port());
        c.send_all("POST /api/upload/csv HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/csv\r\n"
                   "Content-Length: 2097152\r\nExpect: 100-continue\r\n\r\n");
        const auto r = c.read_response();
        CHECK(r.status == 413);
        CHECK(error_of(r) == "the upload is 2097152 bytes; the most this server takes is 1048576 bytes");
    }
    SECTION("an upload that is neither multipart nor CSV: 415")
    {
        const auto r = e2e::request(s.port(), "POST", "/api/upload/csv", {{"Content-Type", "application/json"}}, "{}");
        CHECK(r.status == 415);
        CHECK(error_of(r) == "send the file as multipart/form-data (field 'file') or as text/csv");
    }
    SECTION("a CSV without the required columns: 400")
    {
        const auto r = e2e::request(s.port(), "POST", "/api/upload/csv", {{"Content-Type", "text/csv"}}, "a,b\n1,2\n");
        CHECK(r.status == 400);
        CHECK(error_of(r).find("missing required columns") != std::string::npos);
    }
    SECTION("the events of an unknown transaction: 404")
    {
        const auto r = e2e::request(s.port(), "GET", "/api/upload/00112233445566778899aabbccddeeff/events");
        CHECK(r.status == 404);
        CHECK(error_of(r) == "unknown transaction");
    }
    // Still serving after all that.
    CHECK(e2e::request(s.port(), "GET", "/").status == 200);
}

TEST_CASE("beast_upload_server e2e: over TLS, upload, drop mid-job and resume, and the stream ends with close_notify",
          "[beast-e2e][tls]")
{
    beast_server s({"--import-pause-us", "5000"}, true);
    const auto g = e2e::upload::make_csv(20000, 25);
    const auto id = upload(over_tls(s)(), g.text);
    drop_and_resume(over_tls(s), id, g);

    // complete() ends a TLS stream with close_notify: the client sees an end, not a truncation.
    follower<tls_connection> f(over_tls(s), "/api/upload/" + id + "/events");
    REQUIRE(f.open() == 200);
    REQUIRE(f.read_to_end());
    CHECK(f.conn().close_notify());
    CHECK(f.events.back().type == "complete");
}

#endif // SSEPP_BEAST_E2E
