// ssepp/detail/liveness.hpp
// What keeps a stream honest about time and about its peer, beside the shared timer service:
// heartbeats, the lifetime and write-stall timeouts (decided by the service's sweep), the watch
// for a vanished peer, and the bounded closing handshake (TLS close_notify, a last chunk).
// SPDX-License-Identifier: BSL-1.0
#ifndef SSEPP_DETAIL_LIVENESS_HPP
#define SSEPP_DETAIL_LIVENESS_HPP

#include <ssepp/detail/exact_allocator.hpp>
#include <ssepp/detail/stream_service.hpp>
#include <ssepp/transport.hpp>

#include <ssepp/detail/asio.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <limits>
#include <memory>
#include <system_error>

namespace ssepp::detail {

/// The timing half of a stream's liveness. The stream_service sweeps it; what a sweep finds
/// due is handed to the owner, which posts the work to its own executor.
class liveness : public stream_member {
public:
    liveness(std::chrono::milliseconds heartbeat, std::chrono::milliseconds lifetime,
             std::chrono::milliseconds write_timeout) noexcept
        : heartbeat_ms_(ms(heartbeat)), lifetime_ms_(ms(lifetime)), write_timeout_ms_(ms(write_timeout))
    {
    }

protected:
    ~liveness() { stream_service::remove(*this); }

    /// Starts the clocks and, when any of them is set, the sweeps.
    template <class Executor>
    void start_liveness(const Executor& ex)
    {
        const auto now = steady_now_ns();
        opened_ns_ = now;
        last_write_ns_.store(now, std::memory_order_relaxed);
        if (!heartbeat_ms_ && !lifetime_ms_ && !write_timeout_ms_)
            return;
        // Swept at a quarter of the shortest period: a deadline is met within 25 %.
        auto shortest = std::int64_t(1'000'000'000);
        for (auto d : {ns(heartbeat_ms_), ns(lifetime_ms_), ns(write_timeout_ms_)})
            if (d)
                shortest = std::min(shortest, d / 4);
        stream_service::of(*this, ex).add(*this, ex, std::chrono::nanoseconds(shortest));
    }

    void stop_liveness() noexcept { stream_service::remove(*this); }

    /// A write started: it may stall from now on.
    void write_started() noexcept { write_started_ns_.store(steady_now_ns(), std::memory_order_relaxed); }
    /// The stream went idle: the heartbeat's clock starts.
    void write_idle() noexcept
    {
        last_write_ns_.store(steady_now_ns(), std::memory_order_relaxed);
        write_started_ns_.store(0, std::memory_order_relaxed);
    }

    // What the sweep found due; each is called at most once per due time, under the
    // service's lock: it may only post to the owner's executor.
    virtual void heartbeat_due() noexcept = 0;
    virtual void lifetime_expired() noexcept = 0;
    virtual void write_stalled() noexcept = 0;

private:
    void sweep(std::int64_t now) noexcept final
    {
        const auto started = write_started_ns_.load(std::memory_order_relaxed);
        if (write_timeout_ms_ && started && now - started >= ns(write_timeout_ms_)) {
            if (!(fired_.fetch_or(stalled_bit) & stalled_bit))
                write_stalled();
            return;
        }
        if (lifetime_ms_ && now - opened_ns_ >= ns(lifetime_ms_) && !(fired_.fetch_or(expired_bit) & expired_bit))
            lifetime_expired();
        if (heartbeat_ms_ && !started && now - last_write_ns_.load(std::memory_order_relaxed) >= ns(heartbeat_ms_)) {
            last_write_ns_.store(now, std::memory_order_relaxed);
            heartbeat_due();
        }
    }

    // Durations are kept as 32-bit milliseconds (up to 49 days; longer is clamped): three of
    // them in every connection.
    static std::uint32_t ms(std::chrono::milliseconds d) noexcept
    {
        return static_cast<std::uint32_t>(std::clamp<std::int64_t>(d.count(), 0, std::numeric_limits<std::uint32_t>::max()));
    }
    static std::int64_t ns(std::uint32_t ms) noexcept { return std::int64_t(ms) * 1'000'000; }

    static constexpr std::uint8_t stalled_bit = 1, expired_bit = 2;

    std::uint32_t heartbeat_ms_;
    std::uint32_t lifetime_ms_;
    std::uint32_t write_timeout_ms_;
    std::atomic<std::uint8_t> fired_{0};
    std::int64_t opened_ns_ = 0;
    std::atomic<std::int64_t> last_write_ns_{0};
    std::atomic<std::int64_t> write_started_ns_{0};  // 0: no write in flight
};

/// Watches `owner`'s transport for a vanished peer: readability on a plain socket (no buffer
/// held; the client's bytes are drained and discarded), or a small read into `sink` on a
/// layered stream. The pending operation lives as long as the connection, so it is allocated
/// at its exact size. Owner: `bool with_transport(f)`, which calls `f(transport)` under its
/// lock unless it is closing for good (then false), `peer_left(error_code)`, and
/// `read_sink()`, a small buffer for layered streams.
template <class Owner>
void watch_peer(const std::shared_ptr<Owner>& owner)
{
    using transport_type = typename Owner::transport_type;
    if constexpr (is_plain_socket<transport_type>) {
        owner->with_transport([&](transport_type& t) {
            error_code ec;
            t.lowest_layer().non_blocking(true, ec);
            t.lowest_layer().async_wait(
                asio::socket_base::wait_read,
                asio::bind_allocator(exact_allocator<void>(), [owner](error_code ec) {
                    if (ec == asio::error::operation_aborted)
                        return;
                    bool again = false;
                    if (!ec && !owner->with_transport([&](transport_type& t) {
                            std::array<char, 512> drain;
                            do
                                plain_socket(t).read_some(asio::buffer(drain), ec);
                            while (!ec);
                            again = ec == asio::error::would_block || ec == asio::error::try_again;
                        }))
                        return;
                    if (again)
                        watch_peer(owner);
                    else
                        owner->peer_left(ec);
                }));
        });
    } else if constexpr (has_async_read_some<transport_type>) {
        owner->with_transport([&](transport_type& t) {
            t.async_read_some(asio::buffer(owner->read_sink()),
                              asio::bind_allocator(exact_allocator<void>(), [owner](error_code ec, std::size_t) {
                                  if (!ec)
                                      watch_peer(owner);
                                  else if (ec != asio::error::operation_aborted)
                                      owner->peer_left(ec);
                              }));
        });
    }
}

/// How long a closing handshake may take before the connection is closed anyway.
inline constexpr auto closing_handshake_timeout = std::chrono::seconds(1);

/// Ends a stream that completed: the transport's closing handshake (TLS close_notify,
/// http_body's last chunk) bounded by closing_handshake_timeout, then `done()` on `t`'s
/// executor. `done` is copied to both outcomes and may run twice: it must be idempotent (the
/// emitter's close is). A transport without a handshake: `done()` is posted at once.
template <transport Transport, class Done>
void close_gracefully(Transport& t, Done done)
{
    if constexpr (has_async_shutdown<Transport>) {
        if constexpr (has_lowest_socket<Transport>) {
            error_code ec;
            t.lowest_layer().cancel(ec);  // ends the peer watch's read: the handshake reads itself
        }
        auto timer = std::make_shared<asio::steady_timer>(t.get_executor(), closing_handshake_timeout);
        timer->async_wait([done](error_code ec) {
            if (ec != asio::error::operation_aborted)
                done();
        });
        t.async_shutdown([timer, done](error_code) {
            timer->cancel();
            done();
        });
    } else {
        asio::post(t.get_executor(), std::move(done));
    }
}

} // namespace ssepp::detail

#endif
