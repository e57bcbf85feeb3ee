// examples/common/multipart.hpp
// Finds one field of a multipart/form-data body (RFC 7578), as `curl -F file=@x.csv` and a
// browser's FormData send it, without copying: the body is already in memory.
#pragma once

#include <ssepp/request.hpp>

#include <optional>
#include <string>
#include <string_view>

namespace common::multipart {

/// The boundary parameter of a `multipart/form-data; boundary=...` content type.
inline std::optional<std::string> boundary(std::string_view content_type)
{
    const auto semi = content_type.find(';');
    if (!ssepp::detail::iequals(ssepp::detail::trim_ows(content_type.substr(0, semi)), "multipart/form-data")
        || semi == std::string_view::npos)
        return std::nullopt;
    auto params = content_type.substr(semi + 1);
    while (!params.empty()) {
        const auto next = params.find(';');
        auto p = ssepp::detail::trim_ows(params.substr(0, next));
        if (const auto eq = p.find('='); eq != std::string_view::npos
            && ssepp::detail::iequals(ssepp::detail::trim_ows(p.substr(0, eq)), "boundary")) {
            auto v = ssepp::detail::trim_ows(p.substr(eq + 1));
            if (v.size() >= 2 && v.front() == '"' && v.back() == '"')
                v = v.substr(1, v.size() - 2);
            if (v.empty() || v.size() > 70)
                return std::nullopt;
            return std::string(v);
        }
        if (next == std::string_view::npos)
            break;
        params.remove_prefix(next + 1);
    }
    return std::nullopt;
}

/// The content of the part whose Content-Disposition names `field`; nullopt when the body
/// has no such part or is malformed.
inline std::optional<std::string_view> find_field(std::string_view body, std::string_view boundary,
                                                  std::string_view field)
{
    const std::string delimiter = "--" + std::string(boundary);
    auto pos = body.find(delimiter);
    while (pos != std::string_view::npos) {
        pos += delimiter.size();
        if (body.substr(pos, 2) == "--")
            return std::nullopt;  // the closing delimiter
        if (body.substr(pos, 2) != "\r\n")
            return std::nullopt;
        const auto headers_end = body.find("\r\n\r\n", pos);
        if (headers_end == std::string_view::npos)
            return std::nullopt;
        const auto headers = body.substr(pos + 2, headers_end - pos - 2);
        const auto content_begin = headers_end + 4;
        const auto content_end = body.find("\r\n" + delimiter, content_begin);
        if (content_end == std::string_view::npos)
            return std::nullopt;
        // Content-Disposition: form-data; name="file"; filename="x.csv"
        std::string_view rest = headers;
        while (!rest.empty()) {
            const auto eol = rest.find("\r\n");
            const auto line = rest.substr(0, eol);
            const auto colon = line.find(':');
            if (colon != std::string_view::npos
                && ssepp::detail::iequals(line.substr(0, colon), "content-disposition")) {
                const std::string quoted = "name=\"" + std::string(field) + "\"";
                const auto at = line.find(quoted);
                // "name=" must be a parameter of its own, not the tail of "filename=".
                if (at != std::string_view::npos && (line[at - 1] == ' ' || line[at - 1] == ';'))
                    return body.substr(content_begin, content_end - content_begin);
            }
            if (eol == std::string_view::npos)
                break;
            rest.remove_prefix(eol + 2);
        }
        pos = content_end + 2;
    }
    return std::nullopt;
}

} // namespace common::multipart
