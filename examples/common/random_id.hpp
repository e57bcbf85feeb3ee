// examples/common/random_id.hpp
// Unguessable ids (transaction ids, session tokens): 128 random bits from the OS, as hex.
#pragma once

#include <array>
#include <cstdint>
#include <random>
#include <string>

namespace common {

inline std::string random_id()
{
    // std::random_device reads the kernel's CSPRNG (getrandom) on Linux with libstdc++.
    thread_local std::random_device rd;
    std::array<std::uint32_t, 4> words{rd(), rd(), rd(), rd()};
    static constexpr char hex[] = "0123456789abcdef";
    std::string out;
    out.reserve(32);
    for (auto w : words)
        for (int shift = 28; shift >= 0; shift -= 4)
            out += hex[(w >> shift) & 0xF];
    return out;
}

} // namespace common
