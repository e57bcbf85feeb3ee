// ssepp/redis/reply.hpp
// ssepp::redis::reply: an owning C++ value of one Redis reply (nil, status, error, integer,
// string, array), copied out of hiredis's redisReply so it outlives the callback. No hiredis here.
// SPDX-License-Identifier: BSL-1.0
#ifndef SSEPP_REDIS_REPLY_HPP
#define SSEPP_REDIS_REPLY_HPP

#include <cstddef>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace ssepp::redis {

/// One RESP2 reply. Strings are binary-safe (may hold NUL, CR, LF). A default reply is nil.
class reply {
public:
    enum class kind { nil, status, error, integer, string, array };

    reply() = default;

    static reply status(std::string text) { return reply(kind::status, std::move(text)); }
    static reply error(std::string text) { return reply(kind::error, std::move(text)); }
    static reply string(std::string bytes) { return reply(kind::string, std::move(bytes)); }
    static reply integer(long long value)
    {
        reply r;
        r.kind_ = kind::integer;
        r.integer_ = value;
        return r;
    }
    static reply array(std::vector<reply> elements)
    {
        reply r;
        r.kind_ = kind::array;
        r.elements_ = std::move(elements);
        return r;
    }

    kind type() const noexcept { return kind_; }
    bool is_nil() const noexcept { return kind_ == kind::nil; }
    bool is_status() const noexcept { return kind_ == kind::status; }
    bool is_error() const noexcept { return kind_ == kind::error; }
    bool is_integer() const noexcept { return kind_ == kind::integer; }
    bool is_string() const noexcept { return kind_ == kind::string; }
    bool is_array() const noexcept { return kind_ == kind::array; }

    /// The bytes of a string, or the text of a status or an error; empty for other kinds.
    const std::string& str() const noexcept { return text_; }
    std::string& str() noexcept { return text_; }
    /// The value of an integer reply; 0 for other kinds.
    long long integer() const noexcept { return integer_; }
    /// The elements of an array; empty for other kinds.
    const std::vector<reply>& elements() const noexcept { return elements_; }
    std::vector<reply>& elements() noexcept { return elements_; }
    std::size_t size() const noexcept { return elements_.size(); }
    const reply& operator[](std::size_t i) const { return elements_[i]; }

    friend bool operator==(const reply&, const reply&) = default;

private:
    reply(kind k, std::string text) : kind_(k), text_(std::move(text)) {}

    kind kind_ = kind::nil;
    long long integer_ = 0;
    std::string text_;
    std::vector<reply> elements_;
};

namespace detail {
inline void append_quoted(std::string& out, std::string_view bytes)
{
    constexpr char hex[] = "0123456789abcdef";
    out += '"';
    for (unsigned char c : bytes) {
        if (c == '"' || c == '\\') {
            out += '\\';
            out += static_cast<char>(c);
        } else if (c == '\n') {
            out += "\\n";
        } else if (c == '\r') {
            out += "\\r";
        } else if (c < 0x20 || c >= 0x7f) {
            out += "\\x";
            out += hex[c >> 4];
            out += hex[c & 15];
        } else {
            out += static_cast<char>(c);
        }
    }
    out += '"';
}

inline void append_reply(std::string& out, const reply& r)
{
    switch (r.type()) {
    case reply::kind::nil: out += "nil"; break;
    case reply::kind::status: out += '+'; out += r.str(); break;
    case reply::kind::error: out += '-'; out += r.str(); break;
    case reply::kind::integer: out += ':'; out += std::to_string(r.integer()); break;
    case reply::kind::string: append_quoted(out, r.str()); break;
    case reply::kind::array:
        out += '[';
        for (std::size_t i = 0; i < r.size(); ++i) {
            if (i)
                out += ", ";
            append_reply(out, r[i]);
        }
        out += ']';
        break;
    }
}
} // namespace detail

/// A one-line rendering for logs and test messages: nil, +OK, -ERR text, :42, "bytes" (C
/// escapes for control and non-ASCII bytes), [a, b].
inline std::string to_string(const reply& r)
{
    std::string out;
    detail::append_reply(out, r);
    return out;
}

} // namespace ssepp::redis

#endif
