// tests/fuzz/check.hpp
// The fuzz targets' assertion: unlike assert() it holds under NDEBUG, and it aborts so that
// libFuzzer saves the input as a crash.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <string_view>
#include <vector>

#define FUZZ_CHECK(cond)                                                                   \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            std::fprintf(stderr, "%s:%d: FUZZ_CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
            std::abort();                                                                  \
        }                                                                                  \
    } while (0)

// The stream cut into chunks, for targets that compare a whole feed with a split one: `n`
// split points are read from the first 2n bytes of `in` (consumed: `in` is left holding the
// stream), or the stream goes one byte at a time when `bytewise`. Empty chunks are kept.
inline std::vector<std::string_view> split_input(std::string_view& in, unsigned n, bool bytewise)
{
    std::vector<std::size_t> splits;
    for (unsigned i = 0; i < n && in.size() >= 2; ++i) {
        splits.push_back(static_cast<unsigned char>(in[0]) | static_cast<std::size_t>(static_cast<unsigned char>(in[1])) << 8);
        in.remove_prefix(2);
    }
    for (auto& sp : splits)
        sp %= in.size() + 1;
    std::sort(splits.begin(), splits.end());
    std::vector<std::string_view> chunks;
    if (bytewise) {
        for (std::size_t i = 0; i < in.size(); ++i)
            chunks.push_back(in.substr(i, 1));
        return chunks;
    }
    std::size_t at = 0;
    for (const auto sp : splits) {
        chunks.push_back(in.substr(at, sp - at));
        at = sp;
    }
    chunks.push_back(in.substr(at));
    return chunks;
}
