// examples/common/metrics.hpp
// /metrics for the example servers: the registries' counters (ssepp::format_prometheus) and
// the server's own, in one Prometheus text exposition, every family with its # HELP and
// # TYPE lines.
#pragma once

#include "common/request_parser.hpp"

#include <ssepp/metrics.hpp>

#include <fmt/format.h>

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <iterator>
#include <string>
#include <string_view>
#include <utility>

namespace common {

/// The content type of the Prometheus text format.
inline constexpr std::string_view prometheus_content_type = "text/plain; version=0.0.4; charset=utf-8";

/// A Prometheus text exposition being written: the library's families, then the server's own.
class exposition {
public:
    exposition& registry(const ssepp::metrics& m, std::string_view prefix = "ssepp")
    {
        ssepp::format_prometheus(text_, m, prefix);
        return *this;
    }

    /// A value that goes up and down (something held now).
    exposition& gauge(std::string_view name, std::string_view help, std::uint64_t value)
    {
        return family(name, "gauge", help, {{"", value}});
    }

    /// A value that only grows: `name` ends in _total.
    exposition& counter(std::string_view name, std::string_view help, std::uint64_t value)
    {
        return family(name, "counter", help, {{"", value}});
    }

    /// One family, its samples labelled: `labels` like `reason="job"` (one per sample, "" for none).
    exposition& family(std::string_view name, std::string_view type, std::string_view help,
                       std::initializer_list<std::pair<std::string_view, std::uint64_t>> samples)
    {
        fmt::format_to(std::back_inserter(text_), "# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
        for (const auto& [labels, value] : samples) {
            if (labels.empty())
                fmt::format_to(std::back_inserter(text_), "{} {}\n", name, value);
            else
                fmt::format_to(std::back_inserter(text_), "{}{{{}}} {}\n", name, labels, value);
        }
        return *this;
    }

    const std::string& text() const { return text_; }

    http::response response() const { return {200, std::string(prometheus_content_type), text_, {}}; }

private:
    std::string text_;
};

} // namespace common
