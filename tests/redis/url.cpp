// Tests of ssepp/redis/url.hpp: parse_url's accepted forms and its errors.
#include <ssepp/redis/url.hpp>

#include "../catch.hpp"

#include <string>

using ssepp::redis::endpoint;
using ssepp::redis::parse_url;

TEST_CASE("parse_url: host, port and database")
{
    CHECK(parse_url("redis://127.0.0.1:6380") == endpoint{"127.0.0.1", 6380, 0});
    CHECK(parse_url("redis://cache.internal") == endpoint{"cache.internal", 6379, 0});
    CHECK(parse_url("redis://localhost:6379/2") == endpoint{"localhost", 6379, 2});
    CHECK(parse_url("redis://localhost/15") == endpoint{"localhost", 6379, 15});
    CHECK(parse_url("redis://localhost:1/") == endpoint{"localhost", 1, 0});
    CHECK(parse_url("redis://[::1]:7000/3") == endpoint{"::1", 7000, 3});
    CHECK(parse_url("redis://[::1]") == endpoint{"::1", 6379, 0});
    CHECK(parse_url("redis://h:65535") == endpoint{"h", 65535, 0});
}

TEST_CASE("parse_url: bad input throws invalid_url naming the URL and the fault")
{
    const auto fails = [](std::string url, std::string why) {
        try {
            parse_url(url);
            FAIL("accepted " << url);
        } catch (const ssepp::system_error& e) {
            CHECK(e.code() == ssepp::redis::errc::invalid_url);
            const std::string what = e.what();
            CHECK(what.find("'" + url + "'") != std::string::npos);
            CHECK_THAT(what, Catch::Matchers::Contains(why));
        }
    };
    fails("", "expected redis://host[:port][/db]");
    fails("http://h:1", "expected redis://host[:port][/db]");
    fails("127.0.0.1:6379", "expected redis://host[:port][/db]");
    fails("redis://", "no host");
    fails("redis://:6379", "no host");
    fails("redis://h:", "empty port");
    fails("redis://h:0", "port must be a number from 1 to 65535");
    fails("redis://h:65536", "port must be a number from 1 to 65535");
    fails("redis://h:-1", "port must be a number from 1 to 65535");
    fails("redis://h:63a", "port must be a number from 1 to 65535");
    fails("redis://h:99999999999999999999", "port must be a number from 1 to 65535");
    fails("redis://h:6379/x", "database number");
    fails("redis://h:6379/1/2", "database number");
    fails("redis://h:6379/-1", "database number");
    fails("redis://::1:6379", "brackets");
    fails("redis://[::1:6379", "unterminated");
    fails("redis://[::1]x", "after ']'");
    fails("redis://user:pw@h:6379", "credentials");
    fails("rediss://h:6379", "TLS");
    fails("unix:///tmp/redis.sock", "unix sockets");
    fails("redis://h:6379?db=1", "query");
}
