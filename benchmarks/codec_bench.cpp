// benchmarks/codec_bench.cpp
// Throughput of the formatter and the parser on a few payload shapes, timed with steady_clock;
// each figure is the median of several runs. See benchmarks/README.md.
// SPDX-License-Identifier: BSL-1.0
#include <ssepp/format.hpp>
#include <ssepp/parser.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdlib>
#include <random>
#include <string>
#include <string_view>
#include <vector>

namespace {

using clock_type = std::chrono::steady_clock;

struct shape {
    std::string name;
    std::string data;
};

// Printable ASCII, JSON-ish, with an LF after every `line - 1` bytes when `line` is non-zero.
std::string ascii_payload(std::size_t size, std::size_t line)
{
    std::mt19937 rng(42);
    std::uniform_int_distribution<int> printable(0x20, 0x7E);
    std::string s(size, ' ');
    for (std::size_t i = 0; i < size; ++i) {
        if (line != 0 && i % line == line - 1 && i + 1 != size)
            s[i] = '\n';
        else
            s[i] = static_cast<char>(printable(rng));
    }
    return s;
}

// Two-byte UTF-8 (Cyrillic) text: the validator's non-ASCII path.
std::string utf8_payload(std::size_t size)
{
    std::string s;
    while (s.size() + 2 <= size)
        s += s.size() % 16 == 14 ? "  " : "\xD0\xB6";
    return s;
}

struct result {
    double mb_per_s;
    double events_per_s;
};

// Runs `body` (which returns bytes processed and events) `runs` times, and returns the median.
template <class Body>
result median_of(int runs, Body&& body)
{
    std::vector<result> results;
    for (int r = 0; r < runs; ++r) {
        const auto start = clock_type::now();
        const auto [bytes, events] = body();
        const std::chrono::duration<double> elapsed = clock_type::now() - start;
        results.push_back({static_cast<double>(bytes) / elapsed.count() / 1e6,
                           static_cast<double>(events) / elapsed.count()});
    }
    // Events/s is proportional to MB/s within one shape, so one sort orders both.
    std::sort(results.begin(), results.end(),
              [](const result& a, const result& b) { return a.mb_per_s < b.mb_per_s; });
    return results[results.size() / 2];
}

struct sizes {
    std::size_t bytes;
    std::size_t events;
};

struct counter {
    std::size_t events = 0;
    std::size_t data_bytes = 0;
    void operator()(const ssepp::message& m)
    {
        ++events;
        data_bytes += m.data.size();
    }
};

} // namespace

int main(int argc, char** argv)
{
    bool smoke = false;
    std::size_t chunk = 16 * 1024;
    for (int i = 1; i < argc; ++i) {
        const std::string_view arg = argv[i];
        if (arg == "--smoke") {
            smoke = true;
        } else if (arg == "--chunk" && i + 1 < argc) {
            chunk = static_cast<std::size_t>(std::strtoul(argv[++i], nullptr, 10));
        } else {
            fmt::print(stderr, "usage: codec_bench [--smoke] [--chunk BYTES]\n");
            return 2;
        }
    }
    if (chunk == 0)
        chunk = 1;
    // Each measurement handles about `target` bytes; --smoke only checks that everything runs.
    const std::size_t target = smoke ? 64 * 1024 : std::size_t{256} << 20;
    const int runs = smoke ? 1 : 7;

    const std::vector<shape> shapes{
        {"64 B, 1 line", ascii_payload(64, 0)},
        {"1 KiB, 1 line", ascii_payload(1024, 0)},
        {"16 KiB, 64 B lines", ascii_payload(16 * 1024, 64)},
        {"1 KiB UTF-8, 1 line", utf8_payload(1024)},
    };

    fmt::print("codec_bench: median of {} runs, ~{} KiB each; parser fed {} B chunks; "
               "MB = 10^6 bytes of wire format\n\n",
               runs, target >> 10, chunk);
    fmt::print("| {:<20} | {:>14} | {:>14} | {:>14} | {:>14} |\n", "data", "format MB/s",
               "format ev/s", "parse MB/s", "parse ev/s");
    fmt::print("|{:-<22}|{:->16}|{:->16}|{:->16}|{:->16}|\n", "", ":", ":", ":", ":");

    int failures = 0;
    for (const auto& s : shapes) {
        const ssepp::event e{.data = s.data};
        const std::string one = ssepp::format(e);
        const std::size_t iterations = std::max<std::size_t>(1, target / one.size());

        std::string out;
        const auto fmt_result = median_of(runs, [&] {
            sizes n{0, 0};
            for (std::size_t i = 0; i < iterations; ++i) {
                out.clear();
                (void)ssepp::format_to(out, e);
                n.bytes += out.size();
            }
            n.events = iterations;
            return n;
        });

        // A stream of about 1 MiB (cache-resident, as a socket buffer would be), parsed over
        // and over in chunks like socket reads; a chunk boundary may fall anywhere.
        std::string wire;
        const std::size_t per_stream
            = std::max<std::size_t>(1, (std::size_t{1} << 20) / one.size());
        for (std::size_t i = 0; i < (smoke ? 3 : per_stream); ++i)
            wire += one;
        const std::size_t events_per_stream = wire.size() / one.size();
        const std::size_t passes = std::max<std::size_t>(1, target / wire.size());
        ssepp::parser parser;
        counter count;
        const auto parse_result = median_of(runs, [&] {
            for (std::size_t pass = 0; pass < passes; ++pass) {
                for (std::size_t at = 0; at < wire.size(); at += chunk)
                    (void)parser.feed(std::string_view(wire).substr(at, chunk), count);
                parser.finish();
            }
            return sizes{wire.size() * passes, events_per_stream * passes};
        });

        // The benchmark is also a check: every event parsed back, byte for byte in size.
        const std::size_t expected_events
            = events_per_stream * passes * static_cast<std::size_t>(runs);
        const std::size_t expected_bytes = expected_events * s.data.size();
        if (count.events != expected_events || count.data_bytes != expected_bytes) {
            fmt::print(stderr, "{}: parsed {} events / {} data bytes, expected {} / {}\n", s.name,
                       count.events, count.data_bytes, expected_events, expected_bytes);
            ++failures;
        }

        fmt::print("| {:<20} | {:>14.0f} | {:>14.0f} | {:>14.0f} | {:>14.0f} |\n", s.name,
                   fmt_result.mb_per_s, fmt_result.events_per_s, parse_result.mb_per_s,
                   parse_result.events_per_s);
    }
    return failures == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
