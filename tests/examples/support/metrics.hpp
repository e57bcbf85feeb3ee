// tests/examples/support/metrics.hpp
// The samples of a Prometheus text exposition (an example server's /metrics) by name, labels
// included as sent (`ssepp_closed_total{reason="overflow"}`); # lines skipped. The format
// itself is checked by a real parser (tests/examples/metrics_scrape.py).
#pragma once

#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <string_view>

namespace e2e {

inline std::map<std::string, std::uint64_t> parse_samples(std::string_view text)
{
    std::map<std::string, std::uint64_t> out;
    while (!text.empty()) {
        const auto eol = text.find('\n');
        const auto line = text.substr(0, eol);
        text.remove_prefix(eol == std::string_view::npos ? text.size() : eol + 1);
        if (line.empty() || line.front() == '#')
            continue;
        const auto sp = line.rfind(' ');
        if (sp == std::string_view::npos)
            throw std::runtime_error("not a sample line: " + std::string(line));
        out[std::string(line.substr(0, sp))] = std::stoull(std::string(line.substr(sp + 1)));
    }
    return out;
}

} // namespace e2e
