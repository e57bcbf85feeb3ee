// ssepp/redis/detail/hiredis.hpp
// hiredis's headers, and the copy of a redisReply into an owning ssepp::redis::reply. RESP3
// types of hiredis >= 1.0 (never produced here: no HELLO 3) map to their nearest RESP2 kind.
// SPDX-License-Identifier: BSL-1.0
#ifndef SSEPP_REDIS_DETAIL_HIREDIS_HPP
#define SSEPP_REDIS_DETAIL_HIREDIS_HPP

#include <ssepp/redis/reply.hpp>

#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include <string>
#include <vector>

namespace ssepp::redis::detail {

inline reply to_reply(const redisReply* r)
{
    if (r == nullptr)
        return {};
    switch (r->type) {
    case REDIS_REPLY_STATUS: return reply::status(std::string(r->str, r->len));
    case REDIS_REPLY_ERROR: return reply::error(std::string(r->str, r->len));
    case REDIS_REPLY_INTEGER: return reply::integer(r->integer);
    case REDIS_REPLY_STRING: return reply::string(std::string(r->str, r->len));
#ifdef REDIS_REPLY_DOUBLE
    case REDIS_REPLY_DOUBLE: return reply::string(std::string(r->str, r->len));
#endif
#ifdef REDIS_REPLY_BOOL
    case REDIS_REPLY_BOOL: return reply::integer(r->integer);
#endif
#ifdef REDIS_REPLY_VERB
    case REDIS_REPLY_VERB: return reply::string(std::string(r->str, r->len));
#endif
#ifdef REDIS_REPLY_BIGNUM
    case REDIS_REPLY_BIGNUM: return reply::string(std::string(r->str, r->len));
#endif
    case REDIS_REPLY_ARRAY:
#ifdef REDIS_REPLY_MAP
    case REDIS_REPLY_MAP:
    case REDIS_REPLY_SET:
    case REDIS_REPLY_PUSH:
#endif
    {
        std::vector<reply> elements;
        elements.reserve(r->elements);
        for (std::size_t i = 0; i < r->elements; ++i)
            elements.push_back(to_reply(r->element[i]));
        return reply::array(std::move(elements));
    }
    default: return {};  // REDIS_REPLY_NIL
    }
}

} // namespace ssepp::redis::detail

#endif
