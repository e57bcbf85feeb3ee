// ssepp/detail/utf8.hpp
// UTF-8 validation and repair for the parser: an event stream is decoded as the WHATWG
// "UTF-8 decode" does, so every invalid sequence becomes U+FFFD (maximal-subpart replacement).
// SPDX-License-Identifier: BSL-1.0
#ifndef SSEPP_DETAIL_UTF8_HPP
#define SSEPP_DETAIL_UTF8_HPP

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace ssepp::detail {

/// U+FFFD REPLACEMENT CHARACTER in UTF-8.
inline constexpr std::string_view utf8_replacement{"\xEF\xBF\xBD", 3};

/// Examines the sequence at `p` (with `p < end`, `*p` not ASCII).
/// @returns its length when it encodes a scalar value; otherwise 0, with `bad` set to the length
/// (>= 1) of the maximal subpart that the WHATWG decoder replaces with one U+FFFD.
inline std::size_t utf8_sequence(const unsigned char* p, const unsigned char* end,
                                 std::size_t& bad) noexcept
{
    const unsigned char lead = *p;
    std::size_t trail;
    // The bounds of the first trail byte exclude overlongs (E0, F0), surrogates (ED) and
    // values past U+10FFFF (F4); later trail bytes are always 80..BF.
    unsigned char lo = 0x80;
    unsigned char hi = 0xBF;
    if (lead >= 0xC2 && lead <= 0xDF) {
        trail = 1;
    } else if (lead >= 0xE0 && lead <= 0xEF) {
        trail = 2;
        if (lead == 0xE0)
            lo = 0xA0;
        else if (lead == 0xED)
            hi = 0x9F;
    } else if (lead >= 0xF0 && lead <= 0xF4) {
        trail = 3;
        if (lead == 0xF0)
            lo = 0x90;
        else if (lead == 0xF4)
            hi = 0x8F;
    } else {
        bad = 1;
        return 0;
    }
    for (std::size_t i = 1; i <= trail; ++i) {
        if (p + i == end || p[i] < lo || p[i] > hi) {
            bad = i;
            return 0;
        }
        lo = 0x80;
        hi = 0xBF;
    }
    return trail + 1;
}

/// The length of the longest prefix of `s` that is valid UTF-8.
inline std::size_t utf8_valid_prefix(std::string_view s) noexcept
{
    const auto* const first = reinterpret_cast<const unsigned char*>(s.data());
    const auto* const end = first + s.size();
    const auto* p = first;
    constexpr std::uint64_t high_bits = 0x8080808080808080u;
    for (;;) {
        // ASCII fast path: 32 bytes per test while they last, then 8.
        while (end - p >= 32) {
            std::uint64_t w[4];
            std::memcpy(w, p, sizeof w);
            if (((w[0] | w[1] | w[2] | w[3]) & high_bits) != 0)
                break;
            p += 32;
        }
        while (end - p >= 8) {
            std::uint64_t w;
            std::memcpy(&w, p, sizeof w);
            if ((w & high_bits) != 0)
                break;
            p += 8;
        }
        while (p != end && *p < 0x80)
            ++p;
        if (p == end)
            return static_cast<std::size_t>(p - first);
        // Multibyte text: stay byte-wise until the next ASCII byte.
        do {
            std::size_t bad = 0;
            const std::size_t n = utf8_sequence(p, end, bad);
            if (n == 0)
                return static_cast<std::size_t>(p - first);
            p += n;
        } while (p != end && *p >= 0x80);
    }
}

/// Appends `s` to `out` as the WHATWG UTF-8 decoder would read it: each maximal invalid subpart
/// becomes one U+FFFD. `s` is appended unchanged (one copy, no scan beyond validation) when
/// it is valid.
inline void append_utf8(std::string& out, std::string_view s)
{
    std::size_t valid = utf8_valid_prefix(s);
    if (valid == s.size()) {
        out.append(s);
        return;
    }
    const auto* const end = reinterpret_cast<const unsigned char*>(s.data() + s.size());
    for (;;) {
        out.append(s.data(), valid);
        s.remove_prefix(valid);
        if (s.empty())
            return;
        // s starts with an invalid sequence.
        std::size_t bad = 0;
        (void)utf8_sequence(reinterpret_cast<const unsigned char*>(s.data()), end, bad);
        out.append(utf8_replacement);
        s.remove_prefix(bad);
        valid = utf8_valid_prefix(s);
    }
}

/// `s` itself when it is valid UTF-8; otherwise its repaired copy, built in `scratch`.
inline std::string_view repair_utf8(std::string_view s, std::string& scratch)
{
    if (utf8_valid_prefix(s) == s.size())
        return s;
    scratch.clear();
    append_utf8(scratch, s);
    return scratch;
}

} // namespace ssepp::detail

#endif
