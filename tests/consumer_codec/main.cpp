// A user of the codec alone: formats events and parses them back, with ssepp's client state
// machine, as a server or client on a non-Asio stack would. Exits non-zero on a difference.
#include <ssepp/error.hpp>
#include <ssepp/event.hpp>
#include <ssepp/event_source.hpp>
#include <ssepp/format.hpp>
#include <ssepp/parser.hpp>
#include <ssepp/request.hpp>

// The codec's promise: none of its headers brings Asio or Boost (ASIO_VERSION and
// BOOST_ASIO_VERSION come with any Asio header, BOOST_CONFIG_HPP with any Boost header).
#if defined(ASIO_VERSION) || defined(BOOST_ASIO_VERSION) || defined(BOOST_CONFIG_HPP)
#error "a codec header included Asio or Boost"
#endif

#include <cstdio>
#include <string>
#include <system_error>
#include <vector>

int main()
{
    const std::vector<ssepp::event> sent{{.id = "1", .event = "greeting", .data = "hello\nworld"},
                                         {.id = "2", .data = "bye"}};
    std::string wire;
    for (const auto& e : sent)
        wire += ssepp::format(e);

    ssepp::event_source es;
    if (!es.on_response(200, "text/event-stream").open) {
        std::fputs("consumer: event_source refused a 200 text/event-stream response\n", stderr);
        return 1;
    }
    std::vector<std::string> got;
    const std::error_code ec = es.feed(wire, [&](const ssepp::message& m) {
        got.push_back(std::string(m.last_event_id) + "|" + std::string(m.type) + "|" + std::string(m.data));
    });
    const std::vector<std::string> expected{"1|greeting|hello\nworld", "2|message|bye"};
    if (ec || got != expected || es.last_event_id() != "2") {
        std::fputs("consumer: the parsed events differ from the formatted ones\n", stderr);
        return 1;
    }
    // Errors are std::error_code in the ssepp category, whichever Asio ssepp::ssepp uses.
    if (ssepp::validate({.id = "a\nb", .data = "x"}) != ssepp::errc::invalid_id) {
        std::fputs("consumer: an id with LF was not refused\n", stderr);
        return 1;
    }
    std::fwrite(wire.data(), 1, wire.size(), stdout);
    return 0;
}
