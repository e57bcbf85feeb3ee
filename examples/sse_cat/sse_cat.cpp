// sse-cat: follows a Server-Sent Events stream like a browser's EventSource (libcurl does the
// HTTP, ssepp::event_source the rules: open, fail, reconnect with Last-Event-ID and back-off)
// and prints one JSON object per event per line. `sse-cat -` reads a stream from stdin instead.
#include <ssepp/event_source.hpp>
#include <ssepp/version.hpp>

#include <curl/curl.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace {

using clock_type = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr int exit_ok = 0;     // a normal end: max events, timeout, end of input, 204, ...
constexpr int exit_failed = 1; // the connection failed (or the output did)
constexpr int exit_usage = 2;

constexpr std::string_view usage_text = R"(usage: sse-cat [options] URL
       sse-cat [options] -
Follows the Server-Sent Events stream at URL (http or https), reconnecting as EventSource does,
or reads one from standard input (-), and prints one JSON object per event per line:
  {"type": ..., "data": ..., "id": ...}   (id: the last event id when the event arrived)
options:
  -H, --header 'Name: value'  add a request header (repeatable); an Accept or Cache-Control
                              one replaces sse-cat's own
  --last-event-id ID          resume from ID (sent as Last-Event-ID)
  --max-events N              exit after N events
  --timeout S                 exit after S seconds (decimals allowed)
  --no-reconnect              exit when the first response ends
  --raw                       print each event's data and a newline instead of JSON
  -h, --help                  print this help
exit status: 0 on a normal end (--max-events, --timeout, --no-reconnect, end of input, or the
server answering 204), 1 when the connection fails (non-200 status, wrong content type, a
broken stream, or a network error with --no-reconnect), 2 on bad usage.
)";

struct options {
    std::string url; // "-": standard input
    std::vector<std::string> headers;
    std::string last_event_id;
    std::optional<std::uint64_t> max_events;
    std::optional<milliseconds> timeout;
    bool reconnect = true;
    bool raw = false;
};

bool iequals(std::string_view a, std::string_view b)
{
    if (a.size() != b.size())
        return false;
    for (std::size_t i = 0; i < a.size(); ++i)
        if (std::tolower(static_cast<unsigned char>(a[i]))
            != std::tolower(static_cast<unsigned char>(b[i])))
            return false;
    return true;
}

std::string_view trim(std::string_view s)
{
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t'))
        s.remove_prefix(1);
    const auto space = [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; };
    while (!s.empty() && space(s.back()))
        s.remove_suffix(1);
    return s;
}

// The field name of a `Name: value` header; empty when it is not one.
std::string_view header_name(std::string_view h)
{
    const auto colon = h.find(':');
    if (colon == std::string_view::npos || colon == 0)
        return {};
    const auto name = h.substr(0, colon);
    for (const char c : name)
        if (c <= ' ' || c == 0x7F) // a token: no whitespace or controls
            return {};
    return name;
}

[[noreturn]] void usage_error(const std::string& message)
{
    fmt::print(stderr, "sse-cat: {}\nTry 'sse-cat --help'.\n", message);
    std::exit(exit_usage);
}

bool is_http_url(const std::string& url)
{
    CURLU* u = curl_url();
    if (!u)
        return false;
    bool ok = curl_url_set(u, CURLUPART_URL, url.c_str(), 0) == CURLUE_OK;
    char* scheme = nullptr;
    if (ok && curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK) {
        ok = iequals(scheme, "http") || iequals(scheme, "https");
        curl_free(scheme);
    } else {
        ok = false;
    }
    curl_url_cleanup(u);
    return ok;
}

options parse_args(int argc, char** argv)
{
    options o;
    bool have_url = false;
    bool only_positional = false;
    for (int i = 1; i < argc; ++i) {
        std::string_view arg = argv[i];
        if (only_positional || arg == "-" || !arg.starts_with("-")) {
            if (have_url)
                usage_error(fmt::format("more than one URL ('{}' and '{}')", o.url, arg));
            o.url = arg;
            have_url = true;
            continue;
        }
        if (arg == "--") {
            only_positional = true;
            continue;
        }
        if (arg == "-h" || arg == "--help") {
            fmt::print("{}", usage_text);
            std::exit(exit_ok);
        }
        // --name=value, or --name value
        std::optional<std::string_view> inline_value;
        if (const auto eq = arg.find('='); arg.starts_with("--") && eq != std::string_view::npos) {
            inline_value = arg.substr(eq + 1);
            arg = arg.substr(0, eq);
        }
        const auto value = [&]() -> std::string_view {
            if (inline_value)
                return *inline_value;
            if (i + 1 >= argc)
                usage_error(fmt::format("option '{}' needs a value", arg));
            return argv[++i];
        };
        const auto flag = [&] {
            if (inline_value)
                usage_error(fmt::format("option '{}' takes no value", arg));
        };
        if (arg == "-H" || arg == "--header") {
            const auto h = value();
            const auto name = header_name(h);
            if (name.empty()
                || h.find_first_of(std::string_view("\r\n\0", 3)) != std::string_view::npos)
                usage_error(fmt::format("bad header '{}' (expected 'Name: value')", h));
            if (iequals(name, "Last-Event-ID"))
                usage_error("use --last-event-id, not a Last-Event-ID header");
            o.headers.emplace_back(h);
        } else if (arg == "--last-event-id") {
            const auto id = value();
            if (id.find_first_of(std::string_view("\r\n\0", 3)) != std::string_view::npos)
                usage_error("the last event id cannot hold CR or LF");
            o.last_event_id = id;
        } else if (arg == "--max-events") {
            const auto v = value();
            std::uint64_t n = 0;
            const auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
            if (ec != std::errc() || p != v.data() + v.size() || n == 0)
                usage_error(fmt::format("bad --max-events '{}' (expected a positive integer)", v));
            o.max_events = n;
        } else if (arg == "--timeout") {
            const auto v = value();
            double s = 0;
            const auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), s);
            if (ec != std::errc() || p != v.data() + v.size() || !(s > 0) || s > 1e9)
                usage_error(fmt::format("bad --timeout '{}' (expected seconds, more than 0)", v));
            o.timeout = milliseconds(static_cast<milliseconds::rep>(std::ceil(s * 1000)));
        } else if (arg == "--no-reconnect") {
            flag();
            o.reconnect = false;
        } else if (arg == "--raw") {
            flag();
            o.raw = true;
        } else {
            usage_error(fmt::format("unknown option '{}'", arg));
        }
    }
    if (!have_url)
        usage_error("no URL (or - for standard input)");
    if (o.url != "-" && !is_http_url(o.url))
        usage_error(fmt::format("bad URL '{}' (expected http:// or https://)", o.url));
    return o;
}

// Writes the events to stdout and counts them against --max-events.
class printer {
public:
    explicit printer(const options& o) : raw_(o.raw), max_(o.max_events) {}

    /// Prints `m`; false once no more events are wanted (or stdout failed).
    bool print(const ssepp::message& m)
    {
        if (raw_) {
            line_.assign(m.data);
        } else {
            // ordered_json keeps the fields in this order; the parser's views are valid UTF-8,
            // and dump() escapes quotes, backslashes and control characters.
            nlohmann::ordered_json j;
            j["type"] = m.type;
            j["data"] = m.data;
            j["id"] = m.last_event_id;
            line_ = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
        }
        line_ += '\n';
        if (std::fwrite(line_.data(), 1, line_.size(), stdout) != line_.size())
            fail();
        ++count_;
        return !done();
    }

    /// Flushes what was printed: once per chunk, so that a follower sees events as they come.
    void flush()
    {
        if (std::fflush(stdout) != 0)
            fail();
    }

    bool done() const { return failed_ || (max_ && count_ >= *max_); }
    bool failed() const { return failed_; }
    /// Why the output failed.
    std::string error() const { return std::strerror(errno_); }

private:
    void fail()
    {
        if (!failed_)
            errno_ = errno;
        failed_ = true;
    }

    bool raw_;
    std::optional<std::uint64_t> max_;
    std::uint64_t count_ = 0;
    bool failed_ = false;
    int errno_ = 0;
    std::string line_;
};

std::optional<clock_type::time_point> deadline_of(const options& o)
{
    if (!o.timeout)
        return std::nullopt;
    return clock_type::now() + *o.timeout;
}

// What to say and return once the event source has closed.
int closed_exit(
    const ssepp::event_source& es, const printer& out, long status, const std::string& type)
{
    if (out.failed()) {
        fmt::print(stderr, "sse-cat: cannot write the output: {}\n", out.error());
        return exit_failed;
    }
    switch (es.reason()) {
    case ssepp::event_source::stop_reason::closed: // --max-events
        return exit_ok;
    case ssepp::event_source::stop_reason::no_content:
        fmt::print(stderr, "sse-cat: the server answered 204 No Content: done\n");
        return exit_ok;
    case ssepp::event_source::stop_reason::bad_status:
        fmt::print(stderr, "sse-cat: HTTP status {} (expected 200)\n", status);
        return exit_failed;
    case ssepp::event_source::stop_reason::bad_content_type:
        fmt::print(stderr, "sse-cat: content type '{}' (expected text/event-stream)\n", type);
        return exit_failed;
    case ssepp::event_source::stop_reason::stream_error:
        fmt::print(stderr, "sse-cat: bad event stream: {}\n", es.stream_error().message());
        return exit_failed;
    case ssepp::event_source::stop_reason::none:
        break;
    }
    return exit_failed;
}

// Feeds a chunk, printing its events; closes the source once enough are printed.
void feed(ssepp::event_source& es, printer& out, std::string_view chunk)
{
    es.feed(chunk, [&](const ssepp::message& m) {
        if (!out.print(m))
            es.close();
    });
    out.flush();
    if (out.failed())
        es.close();
}

int run_stdin(const options& o, ssepp::event_source& es, printer& out)
{
    const auto deadline = deadline_of(o);
    es.on_response(200, "text/event-stream");
    std::vector<char> buf(64 * 1024);
    for (;;) {
        if (deadline) {
            const auto left = std::chrono::ceil<milliseconds>(*deadline - clock_type::now());
            if (left <= milliseconds(0))
                return exit_ok;
            pollfd p{STDIN_FILENO, POLLIN, 0};
            const int r = ::poll(
                &p, 1, static_cast<int>(std::min<milliseconds::rep>(left.count(), 1 << 30)));
            if (r == 0 || (r < 0 && errno == EINTR))
                continue;
        }
        const auto n = ::read(STDIN_FILENO, buf.data(), buf.size());
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            fmt::print(stderr, "sse-cat: cannot read standard input: {}\n", std::strerror(errno));
            return exit_failed;
        }
        if (n == 0) {
            es.on_end(); // discards an unterminated last event, as EventSource does
            return exit_ok;
        }
        feed(es, out, std::string_view(buf.data(), static_cast<std::size_t>(n)));
        if (es.state() == ssepp::event_source::ready_state::closed)
            return closed_exit(es, out, 200, "text/event-stream");
    }
}

// libcurl's errors as std::error_code, for event_source::on_end().
class curl_category final : public std::error_category {
public:
    const char* name() const noexcept override { return "curl"; }
    std::string message(int ev) const override
    {
        return curl_easy_strerror(static_cast<CURLcode>(ev));
    }
};

std::error_code make_error_code(CURLcode rc)
{
    static const curl_category category;
    return {static_cast<int>(rc), category};
}

// Errors that another attempt cannot fix: EventSource would "fail the connection".
bool futile(CURLcode rc)
{
    switch (rc) {
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
    case CURLE_NOT_BUILT_IN:
    case CURLE_TOO_MANY_REDIRECTS:
    case CURLE_OUT_OF_MEMORY:
    case CURLE_BAD_FUNCTION_ARGUMENT:
    case CURLE_UNKNOWN_OPTION:
        return true;
    default:
        return false;
    }
}

// One request and its response, as the curl callbacks see them.
struct transfer {
    CURL* curl;
    ssepp::event_source& es;
    printer& out;
    std::string content_type{}; // of the response whose header block is being read
    bool location = false;    // ditto: it has a Location field
    bool judged = false;      // on_response() has been called for this request
    long status = 0;
};

bool is_redirect(long status)
{
    return status == 301 || status == 302 || status == 303 || status == 307 || status == 308;
}

std::size_t on_header(char* data, std::size_t size, std::size_t n, void* user)
{
    auto& t = *static_cast<transfer*>(user);
    const std::size_t bytes = size * n;
    const std::string_view line = trim(std::string_view(data, bytes));
    if (t.judged) // trailers, after the body
        return bytes;
    if (line.starts_with("HTTP/")) {
        // A new response: an interim 1xx one, or one redirected from, came before it.
        t.content_type.clear();
        t.location = false;
        return bytes;
    }
    if (line.empty()) {
        // The end of a header block: judge it unless it is interim, or a redirect that curl
        // follows (EventSource follows redirects, as fetch does).
        long status = 0;
        curl_easy_getinfo(t.curl, CURLINFO_RESPONSE_CODE, &status);
        if ((status >= 100 && status < 200) || (is_redirect(status) && t.location))
            return bytes;
        t.judged = true;
        t.status = status;
        return t.es.on_response(static_cast<int>(status), t.content_type).open ? bytes : 0;
    }
    const auto colon = line.find(':');
    if (colon == std::string_view::npos)
        return bytes;
    const auto name = trim(line.substr(0, colon));
    if (iequals(name, "Content-Type"))
        t.content_type = trim(line.substr(colon + 1));
    else if (iequals(name, "Location"))
        t.location = true;
    return bytes;
}

std::size_t on_body(char* data, std::size_t size, std::size_t n, void* user)
{
    auto& t = *static_cast<transfer*>(user);
    const std::size_t bytes = size * n;
    if (t.es.state() != ssepp::event_source::ready_state::open)
        return bytes; // not the stream's body (cannot happen once judged; harmless)
    feed(t.es, t.out, std::string_view(data, bytes));
    // Returning less than `bytes` aborts the transfer.
    return t.es.state() == ssepp::event_source::ready_state::open ? bytes : 0;
}

int run_url(const options& o, ssepp::event_source& es, printer& out)
{
    const auto deadline = deadline_of(o);
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fmt::print(stderr, "sse-cat: cannot initialise libcurl\n");
        return exit_failed;
    }
    CURL* curl = curl_easy_init();
    if (!curl) {
        fmt::print(stderr, "sse-cat: cannot initialise libcurl\n");
        return exit_failed;
    }
    // Released on every return path.
    struct cleanup {
        CURL* curl;
        curl_slist* headers = nullptr;
        ~cleanup()
        {
            curl_slist_free_all(headers);
            curl_easy_cleanup(curl);
            curl_global_cleanup();
        }
    } res{curl};

    char error[CURL_ERROR_SIZE];
    const std::string user_agent = fmt::format("sse-cat/{}.{}.{}", SSEPP_VERSION_MAJOR,
                                               SSEPP_VERSION_MINOR, SSEPP_VERSION_PATCH);
    for (;;) {
        milliseconds left(0);
        if (deadline) {
            left = std::chrono::ceil<milliseconds>(*deadline - clock_type::now());
            if (left <= milliseconds(0))
                return exit_ok;
        }

        // The client's headers (Accept, Cache-Control, Last-Event-ID), unless -H gave one of
        // the same name, then the user's.
        curl_slist_free_all(res.headers);
        res.headers = nullptr;
        for (const auto& [name, value] : es.request_headers()) {
            bool overridden = false;
            for (const auto& h : o.headers)
                overridden = overridden || iequals(header_name(h), name);
            if (!overridden)
                res.headers = curl_slist_append(res.headers, (name + ": " + value).c_str());
        }
        for (const auto& h : o.headers)
            res.headers = curl_slist_append(res.headers, h.c_str());

        transfer t{curl, es, out};
        error[0] = '\0';
        curl_easy_setopt(curl, CURLOPT_URL, o.url.c_str());
        curl_easy_setopt(curl, CURLOPT_HTTPGET, 1L);
        curl_easy_setopt(curl, CURLOPT_HTTPHEADER, res.headers);
        curl_easy_setopt(curl, CURLOPT_USERAGENT, user_agent.c_str());
        curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, on_header);
        curl_easy_setopt(curl, CURLOPT_HEADERDATA, &t);
        curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(curl, CURLOPT_WRITEDATA, &t);
        curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, error);
        curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 1L);
        curl_easy_setopt(curl, CURLOPT_MAXREDIRS, 10L);
#if LIBCURL_VERSION_NUM >= 0x075500
        curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
        curl_easy_setopt(curl, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
#endif
        curl_easy_setopt(curl, CURLOPT_SUPPRESS_CONNECT_HEADERS, 1L); // a proxy's are not ours
        curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(curl, CURLOPT_TCP_KEEPALIVE, 1L);
        // The whole transfer, connecting included, ends at the deadline.
        curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, static_cast<long>(left.count()));
        const CURLcode rc = curl_easy_perform(curl);

        if (es.state() == ssepp::event_source::ready_state::closed)
            return closed_exit(es, out, t.status, t.content_type);
        if (rc == CURLE_OPERATION_TIMEDOUT && deadline && clock_type::now() >= *deadline)
            return exit_ok; // --timeout
        const std::string why = rc == CURLE_OK
            ? "the stream ended"
            : (error[0] ? std::string(error) : curl_easy_strerror(rc));
        if (futile(rc)) {
            fmt::print(stderr, "sse-cat: {}\n", why);
            return exit_failed;
        }
        const bool opened = es.state() == ssepp::event_source::ready_state::open;
        const auto next = es.on_end(rc == CURLE_OK ? std::error_code() : make_error_code(rc));
        if (!o.reconnect) {
            // The first response ended: normally once it had opened, else the connection failed.
            if (!opened || rc != CURLE_OK)
                fmt::print(stderr, "sse-cat: {}\n", why);
            return opened ? exit_ok : exit_failed;
        }
        fmt::print(stderr, "sse-cat: {}; reconnecting in {} ms\n", why, next.delay.count());
        auto pause = next.delay;
        if (deadline)
            pause = std::min(pause, std::chrono::ceil<milliseconds>(*deadline - clock_type::now()));
        if (pause > milliseconds(0))
            std::this_thread::sleep_for(pause);
    }
}

} // namespace

int main(int argc, char** argv)
{
    const options o = parse_args(argc, argv);
    ssepp::event_source_options eo;
    eo.last_event_id = o.last_event_id; // checked by parse_args: cannot throw
    ssepp::event_source es(eo);
    printer out(o);
    return o.url == "-" ? run_stdin(o, es, out) : run_url(o, es, out);
}
