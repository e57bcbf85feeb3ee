// Test that the header is self-contained.
#include <ssepp/history.hpp>

#include "catch.hpp"
#include "support/registry_support.hpp"

#include <set>

// The pure history types; the registry's use of them is tested in registry.cpp.

using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

namespace {

ssepp::history_record rec(std::uint64_t seq, std::string id, std::size_t size = 10, clock_type::time_point at = {})
{
    return {seq, std::move(id), ssepp::make_raw_frame(std::string(size, 'x')), at};
}

std::vector<std::uint64_t> seqs(const ssepp::key_history& h)
{
    std::vector<std::uint64_t> out;
    for (const auto& r : h.records())
        out.push_back(r.seq);
    return out;
}

} // namespace

TEST_CASE("history_order: positions and ids, one epoch per order", "[history]")
{
    ssepp::history_order order("n1");
    CHECK(order.last() == 0);
    CHECK(order.peek() == 1);
    CHECK(order.take() == 1);
    CHECK(order.take() == 2);
    CHECK(order.id(2) == "n1-2");
    std::set<std::string> epochs;
    for (int i = 0; i < 100; ++i)
        epochs.insert(ssepp::history_order().epoch());
    CHECK(epochs.size() == 100);
    for (const auto& e : epochs) {
        CHECK(e.size() == 8);
        CHECK(e.find_first_not_of("0123456789abcdefghijklmnopqrstuvwxyz") == std::string::npos);
    }
    CHECK_THROWS_AS(ssepp::history_order(std::string("a\0b", 3)), std::invalid_argument);
    CHECK_THROWS_AS(ssepp::history_order("a\rb"), std::invalid_argument);
}

TEST_CASE("key_history: bounds by count, bytes and age, eviction watermark", "[history]")
{
    ssepp::key_history h;
    SECTION("count")
    {
        const ssepp::history_options o{.max_events = 3};
        for (std::uint64_t i = 1; i <= 5; ++i)
            h.append(rec(i, "i" + std::to_string(i)), o);
        CHECK(seqs(h) == std::vector<std::uint64_t>{3, 4, 5});
        CHECK(h.evicted_through() == 2);
        CHECK(h.bytes() == 30);
    }
    SECTION("bytes, the newest always kept")
    {
        const ssepp::history_options o{.max_events = 100, .max_bytes = 25};
        h.append(rec(1, "a"), o);
        h.append(rec(2, "b"), o);
        h.append(rec(3, "c"), o);
        CHECK(seqs(h) == std::vector<std::uint64_t>{2, 3});
        h.append(rec(4, "big", 100), o);
        CHECK(seqs(h) == std::vector<std::uint64_t>{4});
        CHECK(h.evicted_through() == 3);
    }
    SECTION("age: what is older than max_age goes when the key is next used")
    {
        const ssepp::history_options o{.max_age = 1s};
        const auto t0 = clock_type::now();
        h.append(rec(1, "a", 10, t0), o);
        h.append(rec(2, "b", 10, t0 + 500ms), o);
        h.append(rec(3, "c", 10, t0 + 1200ms), o);  // 1 is now older than a second
        CHECK(seqs(h) == std::vector<std::uint64_t>{2, 3});
        h.expire(t0 + 2s, o);
        CHECK(seqs(h) == std::vector<std::uint64_t>{3});
        CHECK(h.evicted_through() == 2);
        h.expire(t0 + 1h, ssepp::history_options{});  // no max_age: nothing goes
        CHECK(seqs(h) == std::vector<std::uint64_t>{3});
    }
    SECTION("max_events 0 retains nothing unless kept (a terminal event)")
    {
        const ssepp::history_options o{.max_events = 0};
        h.append(rec(1, "a"), o);
        CHECK(h.empty());
        CHECK(h.evicted_through() == 1);
        h.append(rec(2, "done"), o, true);
        CHECK(seqs(h) == std::vector<std::uint64_t>{2});
    }
    SECTION("find: the oldest record with that id")
    {
        const ssepp::history_options o{};
        h.append(rec(1, "dup"), o);
        h.append(rec(2, "x"), o);
        h.append(rec(3, "dup"), o);
        CHECK(h.find("dup") == 1u);
        CHECK(h.find("x") == 2u);
        CHECK(h.find("nope") == std::nullopt);
        h.clear();
        CHECK(h.empty());
        CHECK(h.bytes() == 0);
        CHECK(h.find("x") == std::nullopt);
    }
}
