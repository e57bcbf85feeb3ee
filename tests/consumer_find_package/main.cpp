// A user's program: includes ssepp through the umbrella header only and formats one event.
// Exits non-zero when the bytes differ from the protocol's.
#include <ssepp/ssepp.hpp>

#include <cstdio>
#include <string>
#include <string_view>

int main()
{
    const ssepp::event e{.id = "1", .event = "greeting", .data = "hello\nworld"};
    const std::string wire = ssepp::format(e);
    constexpr std::string_view expected = "id: 1\nevent: greeting\ndata: hello\ndata: world\n\n";
    std::fwrite(wire.data(), 1, wire.size(), stdout);
    if (wire != expected) {
        std::fputs("consumer: ssepp::format wrote unexpected bytes\n", stderr);
        return 1;
    }
    return 0;
}
