// fuzz_multipart: the examples' multipart/form-data reader (examples/common/multipart.hpp).
//
// Byte 0 chooses the case:
// - even: arbitrary Content-Type, boundary, field name and body. boundary() gives 1 to 70
//   bytes of the Content-Type or nothing; find_field() gives a view into the body that follows
//   a blank line and is followed by CRLF and the delimiter, which it does not itself contain.
// - odd: a well-formed body built from fuzzed parts (RFC 7578: delimiter, Content-Disposition
//   with a name and maybe a filename, maybe a Content-Type, a blank line, the content, the
//   closing delimiter). find_field() must find exactly the content of the first part with the
//   name asked for, or nothing when no part has it; boundary() must read back the boundary of
//   the Content-Type written for it.
#include "common/multipart.hpp"

#include "check.hpp"

#include <fuzzer/FuzzedDataProvider.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace {

bool within(std::string_view part, std::string_view whole)
{
    return part.data() >= whole.data() && part.data() + part.size() <= whole.data() + whole.size();
}

// Characters from `alphabet` only, 1 to max bytes.
std::string token(FuzzedDataProvider& in, std::string_view alphabet, std::size_t max)
{
    std::string s;
    const auto n = in.ConsumeIntegralInRange<std::size_t>(1, max);
    for (std::size_t i = 0; i < n; ++i)
        s += alphabet[in.ConsumeIntegralInRange<std::size_t>(0, alphabet.size() - 1)];
    return s;
}

void arbitrary(FuzzedDataProvider& in)
{
    const std::string content_type = in.ConsumeRandomLengthString(120);
    if (const auto b = common::multipart::boundary(content_type)) {
        FUZZ_CHECK(!b->empty() && b->size() <= 70);
        FUZZ_CHECK(content_type.find(*b) != std::string::npos);
    }
    const std::string boundary = in.ConsumeRandomLengthString(72);
    const std::string field = in.ConsumeRandomLengthString(16);
    const std::string body = in.ConsumeRemainingBytesAsString();
    const auto got = common::multipart::find_field(body, boundary, field);
    if (!got)
        return;
    const std::string_view b = body;
    FUZZ_CHECK(within(*got, b));
    const auto begin = static_cast<std::size_t>(got->data() - b.data());
    FUZZ_CHECK(begin >= 4 && b.substr(begin - 4, 4) == "\r\n\r\n");
    const std::string closing = "\r\n--" + boundary;
    FUZZ_CHECK(b.substr(begin + got->size()).starts_with(closing));
    FUZZ_CHECK(got->find(closing) == std::string_view::npos);
}

void well_formed(FuzzedDataProvider& in)
{
    // RFC 2046's bchars, less the space (which may not end a boundary).
    constexpr std::string_view bchars =
        "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=?";
    const std::string boundary = token(in, bchars, 70);
    const std::string delimiter = "--" + boundary;

    std::string content_type = "multipart/form-data; boundary=" + boundary;
    if (in.ConsumeBool())
        content_type = "Multipart/Form-Data;charset=utf-8; BOUNDARY=\"" + boundary + "\"";
    const auto read_back = common::multipart::boundary(content_type);
    FUZZ_CHECK(read_back && *read_back == boundary);

    struct part {
        std::string name;
        std::string content;
    };
    std::vector<part> parts;
    std::string body;
    for (int n = in.ConsumeIntegralInRange(0, 4); n > 0; --n) {
        part p{token(in, "abcdefghij_", 6), in.ConsumeRandomLengthString(200)};
        if (p.content.find("\r\n" + delimiter) != std::string::npos)
            return; // a content holding the delimiter is not a well-formed body
        body += delimiter + "\r\n";
        if (in.ConsumeBool())
            body += "Content-Type: text/csv\r\n";
        body += in.ConsumeBool() ? "Content-Disposition: form-data; name=\"" : "content-disposition: form-data;name=\"";
        body += p.name + "\"";
        if (in.ConsumeBool())
            body += "; filename=\"" + token(in, "abcxyz.", 8) + "\"";
        body += "\r\n";
        if (in.ConsumeBool())
            body += "Content-Type: application/octet-stream\r\n";
        body += "\r\n" + p.content + "\r\n";
        parts.push_back(std::move(p));
    }
    body += delimiter + "--\r\n";

    const std::string field = in.ConsumeBool() && !parts.empty()
        ? parts[in.ConsumeIntegralInRange<std::size_t>(0, parts.size() - 1)].name
        : token(in, "abcdefghij_", 6);
    std::optional<std::string_view> want;
    for (const auto& p : parts) {
        if (p.name == field) {
            want = p.content;
            break;
        }
    }
    const auto got = common::multipart::find_field(body, boundary, field);
    FUZZ_CHECK(got.has_value() == want.has_value());
    if (got) {
        FUZZ_CHECK(within(*got, body));
        FUZZ_CHECK(*got == *want);
    }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* bytes, std::size_t size)
{
    if (size == 0)
        return 0;
    FuzzedDataProvider in(bytes + 1, size - 1);
    if (bytes[0] & 1)
        well_formed(in);
    else
        arbitrary(in);
    return 0;
}
