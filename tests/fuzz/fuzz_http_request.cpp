// fuzz_http_request: the examples' HTTP/1.1 request parsing (common::http::request_parser,
// examples/common/request_parser.hpp, llhttp underneath) on arbitrary bytes.
//
// Input: byte 0 picks the mode (bits 0-2: how many split points, bit 3: feed one byte at a
// time, bits 4-5: the limits, small ones reaching 431 and 413, bits 6-7: the head check: none,
// one that refuses some paths, one that lowers the body limit), then two bytes per split point,
// then the bytes of the connection.
//
// Checks:
// - whole and split: the bytes fed at once and fed in chunks (each chunk fed again from where
//   the parser stopped, as the server does) give the same events: the same requests (method,
//   target, path, headers, body, Content-Length, keep-alive), 100-continue points and refusal;
// - feed() uses at most what it is given, all of it when it asks for more, makes progress, and
//   after a refusal returns error with nothing used;
// - an accepted request: path is the target up to '?', the body within the limit and as long as
//   its Content-Length, the head within its limit; the parser is idle after it; the request's
//   accessors (header, query, cookie) are safe on whatever was accepted.
#include "common/request_parser.hpp"

#include "check.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace {

namespace http = common::http;
using parser_t = http::request_parser;

struct seen {
    parser_t::event what;
    // request
    std::string method, target, path, body;
    std::vector<std::pair<std::string, std::string>> headers;
    std::optional<std::uint64_t> content_length;
    bool keep_alive = false;
    // error
    int status = 0;
    std::string reason;
    friend bool operator==(const seen&, const seen&) = default;
};

struct setup {
    http::parser_limits limits;
    unsigned check = 0;
};

http::head_check make_check(unsigned which)
{
    switch (which) {
    case 1:
        return [](const http::request& r, std::size_t&) -> std::optional<http::response> {
            if (r.path.starts_with("/no"))
                return http::response::error(403, "refused by the check");
            return std::nullopt;
        };
    case 2:
        return [](const http::request& r, std::size_t& max_body) -> std::optional<http::response> {
            if (r.method == "POST")
                max_body = 8;
            return std::nullopt;
        };
    default: return {};
    }
}

std::vector<seen> run(const std::vector<std::string_view>& chunks, const setup& s, std::size_t total)
{
    std::vector<seen> out;
    parser_t p(s.limits, make_check(s.check));
    std::size_t max_body = s.limits.max_body_bytes;
    if (s.check == 2)
        max_body = std::max<std::size_t>(max_body, 8); // POST lowers it, others keep it
    bool refused = false;
    std::size_t steps = 0;
    for (std::string_view rest : chunks) {
        for (;;) {
            // Each step either ends the chunk or yields an event that used up some bytes or
            // completed a request; more steps than bytes plus events would be a loop.
            FUZZ_CHECK(++steps <= 2 * total + 16);
            const auto [what, used] = p.feed(rest);
            FUZZ_CHECK(used <= rest.size());
            rest.remove_prefix(used);
            if (refused) {
                FUZZ_CHECK(what == parser_t::event::error && used == 0);
                break;
            }
            if (what == parser_t::event::need_more) {
                FUZZ_CHECK(rest.empty());
                break;
            }
            seen e{what, {}, {}, {}, {}, {}, {}, false, 0, {}};
            if (what == parser_t::event::request) {
                FUZZ_CHECK(p.where() == parser_t::phase::idle);
                FUZZ_CHECK(p.head_bytes() <= s.limits.max_head_bytes);
                e.keep_alive = p.keep_alive();
                http::request r = p.take_request();
                FUZZ_CHECK(!r.method.empty());
                FUZZ_CHECK(r.path == std::string_view(r.target).substr(0, r.target.find('?')));
                FUZZ_CHECK(r.body.size() <= max_body);
                FUZZ_CHECK(p.body_bytes() == r.body.size());
                if (r.content_length)
                    FUZZ_CHECK(r.body.size() == *r.content_length);
                (void)r.header("Host");
                (void)r.header("");
                (void)r.query("a");
                (void)r.query("");
                (void)r.cookie("sid");
                (void)r.cookie("");
                e.method = std::move(r.method);
                e.target = std::move(r.target);
                e.path = std::move(r.path);
                e.body = std::move(r.body);
                e.headers = std::move(r.headers);
                e.content_length = r.content_length;
            } else if (what == parser_t::event::expect_continue) {
                FUZZ_CHECK(p.where() == parser_t::phase::body);
            } else {
                FUZZ_CHECK(what == parser_t::event::error);
                const auto& rej = p.rejection();
                FUZZ_CHECK(rej.status >= 400 && rej.status <= 599);
                e.status = rej.status;
                e.reason = rej.body;
                refused = true;
            }
            out.push_back(std::move(e));
            if (refused)
                break; // the next feed() must refuse at once: checked above
        }
    }
    return out;
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* bytes, std::size_t size)
{
    std::string_view in(reinterpret_cast<const char*>(bytes), size);
    if (in.empty())
        return 0;
    const auto mode = static_cast<unsigned char>(in.front());
    in.remove_prefix(1);
    const unsigned n_splits = mode & 7;
    const bool bytewise = (mode & 8) != 0;
    setup s;
    switch ((mode >> 4) & 3) {
    case 1: s.limits = {.max_head_bytes = 64, .max_body_bytes = 16}; break;
    case 2: s.limits = {.max_head_bytes = 200, .max_body_bytes = 0}; break;
    case 3: s.limits = {.max_head_bytes = 0, .max_body_bytes = 1}; break;
    default: break;
    }
    s.check = mode >> 6;

    const auto chunks = split_input(in, n_splits, bytewise);
    const std::string_view stream = in;

    const auto whole = run({stream}, s, stream.size());
    const auto split = run(chunks, s, stream.size());
    if (std::getenv("FUZZ_DEBUG")) { // to read a crash: FUZZ_DEBUG=1 fuzz_http_request <input>
        for (const auto* events : {&whole, &split}) {
            std::fprintf(stderr, events == &whole ? "whole:\n" : "split:\n");
            for (const auto& e : *events)
                std::fprintf(stderr, "  event %d %s %s body=%zu keep-alive=%d status=%d %s\n",
                             static_cast<int>(e.what), e.method.c_str(), e.target.c_str(),
                             e.body.size(), e.keep_alive, e.status, e.reason.c_str());
        }
    }
    // The same events, refusals included: the trailers are measured in bytes fed, as the head
    // is, so their verdict (400 or 431) does not depend on the split either.
    FUZZ_CHECK(whole == split);
    return 0;
}
