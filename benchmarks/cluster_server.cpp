// cluster_server: one node of a cluster on Redis (ssepp::redis::node), for benchmarks/cluster.sh.
// The same front and publisher as fanout_server, but every event goes through Redis: the
// publisher calls node->async_send (one EVAL: XADD + PUBLISH) and each node, this one too,
// delivers what comes back on the bus to its own subscribers. Run two (or more) on one Redis,
// the publisher on one of them (--rate), the others with --rate 0.
//   GET /events        subscribes to the key "events" (what --keys 0 publishes to)
//   GET /events/<key>  subscribes to <key> (--keys N publishes to u0 ... u<N-1> in turn)
// On SIGINT/SIGTERM it prints one line: published, acknowledged, failed sends, why subscribers
// left, and the time from async_send to its completion (the EVAL's round trip, percentiles).
//
// Pacing at --rate max: a node's subscribers can fall behind only on that node, which the
// publisher does not see, and so can the node itself (its bus backlog); past their queue bound
// the subscribers would be dropped. So every node writes its unwritten bytes per subscriber and
// the last id it delivered to Redis every 5 ms (PSETEX bench:backlog:<port>, on a link of its
// own, not the node's); the publishing node reads them all (MGET) and waits while any node is
// more than --max-lag sends behind or above the byte mark, and until all --nodes have reported
// (a node it did not know of would not pace it). About 400 small commands a second
// per node, apart from the events' EVALs (cluster.sh leaves psetex, mget and keys out of the
// per-event counts).
#include "bench_front.hpp"

#include <ssepp/redis/cluster.hpp>
#include <ssepp/redis/connection.hpp>
#include <ssepp/ssepp.hpp>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <deque>

// As in fanout_server: sockets typed on io_context's own executor (smaller per connection).
using socket_type = asio::basic_stream_socket<asio::ip::tcp, asio::io_context::executor_type>;
using emitter_type = ssepp::basic_emitter<ssepp::http_body<socket_type>>;
using node_type = ssepp::redis::basic_node<emitter_type>;

namespace {

// --delivery: cluster_options::delivery where the library has it (targeted delivery, issue 11);
// written against the option's expected shape, so that this builds before and after it lands.
template <class Options>
constexpr bool has_delivery = requires(Options o) { o.delivery; };

template <class Options>
void set_delivery(Options& options, const std::string& delivery)
{
    if constexpr (has_delivery<Options>) {
        using kind = decltype(options.delivery);
        if (delivery == "targeted")
            options.delivery = kind::targeted;
        else if (delivery == "broadcast")
            options.delivery = kind::broadcast;
        else
            throw std::invalid_argument("--delivery: broadcast or targeted");
    } else if (delivery != "broadcast") {
        throw std::invalid_argument("--delivery: this ssepp has broadcast delivery only");
    }
}

std::size_t local_backlog(node_type& node)
{
    return node.local().queued_bytes() / std::max<std::size_t>(1, node.local().size());
}

// The pacing exchange described above, on the node's executor: one command at a time, then
// 5 ms; the reader refreshes its list of nodes (KEYS) once a second. A node writes
// "<unwritten bytes per subscriber> <last id delivered of the key 'events'>"; the publisher
// turns each id into how many of its acknowledged sends that node has yet to deliver.
struct pacing : std::enable_shared_from_this<pacing> {
    std::shared_ptr<node_type> node;
    std::shared_ptr<ssepp::redis::connection> link;
    asio::steady_timer timer;
    std::string mine;
    bool reader;
    std::size_t expected;  // nodes the reader waits to know of (--nodes)
    std::vector<std::string> keys;
    std::atomic<std::size_t> known{0};
    unsigned tick = 0;
    // The publisher's acknowledged sends, in order: (id, count so far); the last 64k.
    std::deque<std::pair<ssepp::redis::stream_id, std::uint64_t>> acked;
    std::uint64_t acked_count = 0;
    std::atomic<std::size_t> most_backlog{0};  // bytes per subscriber, the most on any node
    std::atomic<std::uint64_t> most_lag{0};    // acknowledged sends not delivered, the most on any node

    pacing(std::shared_ptr<node_type> n, ssepp::redis::endpoint server, std::uint16_t port, bool r, std::size_t e)
        : node(std::move(n)), link(ssepp::redis::connection::create(node->get_executor(), {.server = std::move(server)})),
          timer(node->get_executor()), mine(fmt::format("bench:backlog:{}", port)), reader(r), expected(e)
    {
    }

    // On the node's executor (where its send handlers run).
    void on_acked(const std::string& id)
    {
        ++acked_count;
        if (auto sid = ssepp::redis::stream_id::parse(id)) {
            acked.emplace_back(*sid, acked_count);
            if (acked.size() > 65536)
                acked.pop_front();
        }
    }

    void next()
    {
        timer.expires_after(std::chrono::milliseconds(5));
        timer.async_wait([self = shared_from_this()](std::error_code ec) {
            if (!ec)
                self->write();
        });
    }

    void write()
    {
        const auto value = fmt::format("{} {}", local_backlog(*node), node->local().last_id("events").value_or("0-0"));
        link->async_command({"PSETEX", mine, "1000", value}, [self = shared_from_this()](std::error_code, ssepp::redis::reply) {
            if (!self->reader)
                return self->next();
            // The list of nodes: at every tick until every node is known, then once a second.
            if (self->keys.size() < self->expected || self->tick++ % 200 == 0)
                return self->list();
            self->read();
        });
    }

    void list()
    {
        link->async_command({"KEYS", "bench:backlog:*"}, [self = shared_from_this()](std::error_code ec, ssepp::redis::reply r) {
            if (!ec && r.is_array()) {
                self->keys.clear();
                for (const auto& k : r.elements())
                    if (k.is_string())
                        self->keys.push_back(k.str());
                self->known = self->keys.size();
            }
            self->read();
        });
    }

    // Sends acknowledged after `id` (all we remember when it is older than that).
    std::uint64_t lag(std::string_view id) const
    {
        const auto sid = ssepp::redis::stream_id::parse(id);
        if (!sid || acked.empty() || (sid->ms == 0 && sid->seq == 0))
            return 0;  // nothing delivered there yet: the start, not a lag
        auto it = std::lower_bound(acked.begin(), acked.end(), *sid,
                                   [](const auto& a, const ssepp::redis::stream_id& b) { return a.first < b; });
        if (it == acked.end())
            return 0;
        return acked_count - it->second;
    }

    void read()
    {
        if (keys.empty())
            return next();
        std::vector<std::string_view> args{"MGET"};
        args.insert(args.end(), keys.begin(), keys.end());
        link->async_command(std::span<const std::string_view>(args),
                            [self = shared_from_this()](std::error_code ec, ssepp::redis::reply r) {
                                if (!ec && r.is_array()) {
                                    std::size_t backlog = 0;
                                    std::uint64_t lag = 0;
                                    for (const auto& v : r.elements()) {
                                        if (!v.is_string())
                                            continue;
                                        const auto& text = v.str();
                                        const auto space = text.find(' ');
                                        backlog = std::max<std::size_t>(backlog, std::stoull(text.substr(0, space)));
                                        if (space != std::string::npos)
                                            lag = std::max(lag, self->lag(std::string_view(text).substr(space + 1)));
                                    }
                                    self->most_backlog = backlog;
                                    self->most_lag = lag;
                                }
                                self->next();
                            });
    }
};

std::shared_ptr<pacing> start_pacing(std::shared_ptr<node_type> node, ssepp::redis::endpoint server,
                                     std::uint16_t port, bool reader, std::size_t nodes)
{
    auto s = std::make_shared<pacing>(std::move(node), std::move(server), port, reader, nodes);
    asio::dispatch(s->node->get_executor(), [s] { s->next(); });
    return s;
}

} // namespace

int main(int argc, char** argv)
{
    bench::options o;
    std::string redis_url = "redis://127.0.0.1:6379";
    std::size_t keys = 0;
    std::size_t max_in_flight = 256;
    std::uint64_t max_lag = 2048;
    std::size_t nodes = 1;
    std::string delivery = "broadcast";
    common::cli args("cluster_server");
    o.add_flags(args)
        .flag("--redis", redis_url, "the cluster's Redis (redis://host:port[/db])")
        .flag("--keys", keys, "0: publish to the key \"events\"; N: to u0 ... u<N-1>, one at a time, in turn")
        .flag("--max-in-flight", max_in_flight, "with --rate max, sends not yet acknowledged by Redis at most")
        .flag("--max-lag", max_lag, "with --rate max, acknowledged sends a node has not delivered at most (--keys 0)")
        .flag("--nodes", nodes, "with --rate max, publish once this many nodes report their backlog (this one included)")
        .flag("--delivery", delivery,
              has_delivery<ssepp::redis::cluster_options>
                  ? "broadcast|targeted: every node gets every event, or only the nodes holding the key"
                  : "broadcast only (this ssepp has no targeted delivery)")
        .parse(argc, argv);

    asio::io_context io;
    ssepp::redis::cluster_options cluster{.server = ssepp::redis::parse_url(redis_url)};
    try {
        set_delivery(cluster, delivery);
    } catch (const std::invalid_argument& e) {
        fmt::print(stderr, "cluster_server: {}\n", e.what());
        return 2;
    }
    auto node = node_type::create(asio::make_strand(io), std::move(cluster), {.max_events = 64});

    // Why subscribers left, indexed by close_reason (the last slot counts any reason after error).
    std::array<std::atomic<std::uint64_t>, std::size_t(ssepp::close_reason::error) + 1> closed{};
    bench::front front(
        io, o,
        [&](asio::ip::tcp::socket s, std::string key) {
            auto stream = ssepp::make_emitter(
                ssepp::http_body(socket_type(io.get_executor(), asio::ip::tcp::v4(), s.release())));
            stream->on_close([&closed](ssepp::close_reason r, std::error_code) {
                ++closed[std::min<std::size_t>(static_cast<std::size_t>(r), closed.size() - 1)];
            });
            node->async_attach(std::move(key), stream, {.otherwise = ssepp::replay::none},
                               [](std::error_code, ssepp::attach_result) {});
        },
        [&](std::string body) { node->async_send("events", {.data = std::move(body)}, [](std::error_code, std::string) {}); });

    const auto pace = start_pacing(node, ssepp::redis::parse_url(redis_url), front.port(), o.rate != "0", nodes);

    std::jthread io_thread([&] { bench::run(io, o.threads); });
    // Publish only once the bus is subscribed: before that, this node would miss its own events.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!node->is_ready() && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    if (!node->is_ready()) {
        fmt::print(stderr, "cluster_server: no bus subscription on {} after 10 s\n", redis_url);
        std::_Exit(1);
    }
    fmt::print("cluster_server listening on http://{}:{}/events\n", o.host, front.port());
    std::fflush(stdout);

    std::atomic<std::uint64_t> published{0}, acked{0}, failed{0};
    std::atomic<std::size_t> in_flight{0};
    // From async_send to its completion: the publisher's round trip through Redis (the EVAL).
    bench::histogram ack_latency;
    std::uint64_t next_key = 0;  // the publisher's thread only
    {
        bench::publisher publisher(
            o,
            [&](std::string data) {
                std::string key = keys == 0 ? std::string("events") : fmt::format("u{}", next_key++ % keys);
                ++published;
                ++in_flight;
                node->async_send(std::move(key), {.data = std::move(data)},
                                 [&, sent = bench::now_ns()](std::error_code ec, std::string id) {
                                     --in_flight;
                                     ++(ec ? failed : acked);
                                     if (!ec) {
                                         pace->on_acked(id);
                                         ack_latency.add(bench::now_ns() - sent);  // on the node's strand
                                     }
                                 });
            },
            [&]() -> std::size_t {
                // Redis's pace first (sends in flight), then the nodes' (sends not delivered
                // yet, unwritten bytes per subscriber: the most on any node).
                if (in_flight.load() > max_in_flight || pace->most_lag.load() > max_lag || pace->known.load() < nodes)
                    return SIZE_MAX;
                return std::max(pace->most_backlog.load(), local_backlog(*node));
            });
        io_thread.join();  // until SIGINT/SIGTERM
    }
    const auto count = [&](ssepp::close_reason r) { return closed[static_cast<std::size_t>(r)].load(); };
    fmt::print("cluster_server: published {} acked {} failed {}; subscribers closed: client_gone {} timeout {} "
               "overflow {} other {}; send to ack us: p50 {:.1f} p99 {:.1f} max {:.1f}\n",
               published.load(), acked.load(), failed.load(), count(ssepp::close_reason::client_gone),
               count(ssepp::close_reason::timeout), count(ssepp::close_reason::overflow),
               count(ssepp::close_reason::completed) + count(ssepp::close_reason::completed_with_error)
                   + count(ssepp::close_reason::aborted) + count(ssepp::close_reason::error),
               ack_latency.percentile_us(0.5), ack_latency.percentile_us(0.99),
               double(ack_latency.max) / 1000.0);
    std::fflush(stdout);
    // The node's handlers still queued in the stopped io_context own it and its emitters:
    // tearing that down buys a benchmark nothing.
    std::_Exit(0);
}
