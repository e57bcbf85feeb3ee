// Tests of ssepp/redis/reply.hpp and its conversion from hiredis's redisReply (detail/hiredis.hpp):
// RESP bytes fed to hiredis's own reader, no server.
#include <ssepp/redis/reply.hpp>
#include <ssepp/redis/detail/hiredis.hpp>

#include "../catch.hpp"

#include <memory>
#include <string>
#include <string_view>

using ssepp::redis::reply;

namespace {
reply parse(std::string_view resp)
{
    std::unique_ptr<redisReader, void (*)(redisReader*)> reader(redisReaderCreate(), &redisReaderFree);
    REQUIRE(redisReaderFeed(reader.get(), resp.data(), resp.size()) == REDIS_OK);
    void* raw = nullptr;
    REQUIRE(redisReaderGetReply(reader.get(), &raw) == REDIS_OK);
    REQUIRE(raw != nullptr);
    std::unique_ptr<void, void (*)(void*)> owned(raw, &freeReplyObject);
    return ssepp::redis::detail::to_reply(static_cast<redisReply*>(raw));
}
} // namespace

TEST_CASE("reply: every RESP2 type converts to an owning value")
{
    CHECK(parse("$-1\r\n").is_nil());
    CHECK(parse("*-1\r\n").is_nil());
    CHECK(parse("+OK\r\n") == reply::status("OK"));
    CHECK(parse("-ERR wrong\r\n") == reply::error("ERR wrong"));
    CHECK(parse(":-42\r\n") == reply::integer(-42));
    CHECK(parse(":9223372036854775807\r\n").integer() == 9223372036854775807LL);
    CHECK(parse("$0\r\n\r\n") == reply::string(""));
    CHECK(parse("*0\r\n") == reply::array({}));
    const reply nested = parse("*4\r\n:1\r\n$3\r\ntwo\r\n*2\r\n$-1\r\n+OK\r\n-ERR x\r\n");
    CHECK(nested == reply::array({reply::integer(1), reply::string("two"),
                                  reply::array({reply{}, reply::status("OK")}), reply::error("ERR x")}));
    CHECK(nested[2][1].is_status());
    CHECK(nested.size() == 4);
}

TEST_CASE("reply: strings are binary-safe (NUL, CR, LF, high bytes)")
{
    const std::string bytes("a\0b\r\nc\n\r\xff", 9);
    const reply r = parse("$9\r\n" + bytes + "\r\n");
    REQUIRE(r.is_string());
    CHECK(r.str() == bytes);
    CHECK(r.str().size() == 9);
}

TEST_CASE("reply: accessors of other kinds are empty, and to_string renders each kind")
{
    const reply i = reply::integer(7);
    CHECK(i.str().empty());
    CHECK(i.elements().empty());
    CHECK(reply::string("x").integer() == 0);
    CHECK(reply{}.type() == reply::kind::nil);
    CHECK(to_string(reply::array({reply{}, reply::status("OK"), reply::error("ERR e"), reply::integer(3),
                                  reply::string(std::string("q\"\0\n\x80", 5))})) ==
          R"([nil, +OK, -ERR e, :3, "q\"\x00\n\x80"])");
}
