// ssepp/emitter.hpp
// One event stream on one transport: a bounded queue that every byte enters through, drained
// by one coalesced write at a time, with exactly-once close callbacks and completion-token
// operations for producers (flush, drain, wait for the end). Bodies: ssepp/impl/emitter.hpp.
// SPDX-License-Identifier: BSL-1.0
#ifndef SSEPP_EMITTER_HPP
#define SSEPP_EMITTER_HPP

#include <ssepp/close_reason.hpp>
#include <ssepp/detail/liveness.hpp>
#include <ssepp/detail/small_mutex.hpp>
#include <ssepp/detail/waiters.hpp>
#include <ssepp/error.hpp>
#include <ssepp/event.hpp>
#include <ssepp/frame.hpp>
#include <ssepp/http_body.hpp>
#include <ssepp/transport.hpp>

#include <ssepp/detail/asio.hpp>

#include <array>
#include <atomic>
#include <chrono>
#include <concepts>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <vector>

namespace ssepp {

/// What happens when a slow consumer's queue passes its bound.
enum class overflow_policy : std::uint8_t {
    /// Close the connection: the client reconnects and resumes from history, losing nothing.
    close,
    /// Drop the oldest queued events not yet being written: for lossy feeds (tickers).
    drop_oldest,
};

struct emitter_options {
    /// A `retry:` hint, the first bytes of the stream; nullopt sends none.
    std::optional<std::chrono::milliseconds> retry_hint = std::chrono::milliseconds(5000);
    /// A comment frame after this long without a write; 0 disables.
    std::chrono::milliseconds heartbeat = std::chrono::seconds(15);
    /// The stream ends (close_reason::timeout) this long after start(); 0 = never.
    std::chrono::milliseconds lifetime{0};
    /// A write making no progress for this long ends the stream (close_reason::timeout); 0 = never.
    std::chrono::milliseconds write_timeout = std::chrono::seconds(30);
    /// Bound on bytes queued or being written for this connection. Under
    /// overflow_policy::drop_oldest the newest event is always kept, so the queue may pass the
    /// bound by at most that one event while a write is stuck. At most max_bound (1 GiB).
    std::size_t max_queued_bytes = std::size_t(1) << 20;
    /// The largest max_queued_bytes.
    static constexpr std::size_t max_bound = std::size_t(1) << 30;
    overflow_policy overflow = overflow_policy::close;
};

/// What basic_registry needs of a connection; basic_emitter<T> is one. None of these may call
/// back into the registry: handlers run later, on the emitter's executor.
template <class E>
concept stream_emitter = requires(E& e, const E& ce, shared_frame f, error_code& ec) {
    e.start();
    e.enqueue(f, std::uint64_t(), ec);
    e.complete();
    e.on_close([](close_reason, error_code) {});
    e.async_wait_drained(std::size_t(), [](error_code) {});
    { ce.is_open() } -> std::convertible_to<bool>;
    { ce.queued_bytes() } -> std::convertible_to<std::size_t>;
    { ce.max_queued_bytes() } -> std::convertible_to<std::size_t>;
    { ce.written_seq() } -> std::convertible_to<std::uint64_t>;
};

/// One server-sent event stream over a transport (an http_body over a socket, or a stack's
/// own body stream).
///
/// Owned by std::shared_ptr (make_emitter()). Every byte, the retry hint and heartbeats too,
/// enters one queue through enqueue(); at most one write is in flight, gathering all that is
/// queued. Thread-safe: operations on the transport run under the emitter's lock, so a plain
/// socket needs no strand; a layered stream (TLS) whose operations are themselves composed
/// needs a strand executor when several threads run its context, as Asio requires.
///
/// Errors follow Asio: an operation that can fail has an `error_code&` overload and one
/// that throws system_error. Handlers never run inside a call that adds work: they run
/// on the transport's executor (or the handler's associated one), so a caller may hold its own
/// locks while sending.
template <transport Transport>
class basic_emitter : public std::enable_shared_from_this<basic_emitter<Transport>>,
                      private detail::liveness {
public:
    using transport_type = Transport;
    using executor_type = typename Transport::executor_type;
    /// A type that on_close() accepts (any callable of this signature is).
    using close_handler = std::function<void(close_reason, error_code)>;

    /// Prefer make_emitter(). Nothing is written before start().
    /// @throws std::invalid_argument for a negative retry_hint.
    explicit basic_emitter(Transport transport, const emitter_options& options = {});
    basic_emitter(const basic_emitter&) = delete;
    basic_emitter& operator=(const basic_emitter&) = delete;
    ~basic_emitter();

    executor_type get_executor() noexcept { return transport_.get_executor(); }
    /// Use it only on its executor, and not for writes while the stream is open.
    Transport& transport() noexcept { return transport_; }

    /// Starts the writes, the peer watch and the timers. Calling it again does nothing.
    void start();
    // -- Sending ------------------------------------------------------------------------------

    /// Formats `e` once and queues it. Returns at once, from any thread. Errors: those of
    /// validate(e) (nothing queued), errc::closed once the stream is ending,
    /// errc::event_too_large when `e` alone is over the queue bound (nothing queued, the stream
    /// stays open), errc::overflow when it pushed a slow consumer past its bound under
    /// overflow_policy::close (the stream then closes).
    void send(const event& e, error_code& ec);
    void send(const event& e);

    /// Queues bytes that are already whole frames: the one way in for every byte (the
    /// registry's path, an event formatted once for all). `seq`, when not 0, tags the frame:
    /// written_seq() reports the last tag written whole. Errors as send().
    void enqueue(shared_frame frame, std::uint64_t seq, error_code& ec);
    void enqueue(shared_frame frame, std::uint64_t seq = 0);
    // -- Ending ---------------------------------------------------------------------------------

    /// Flushes the queue, ends the body (the transport's closing handshake), then closes:
    /// close_reason::completed.
    void complete();
    /// Queues `last` (a final event), then completes. Errors as send(); it completes anyway.
    void complete(const event& last, error_code& ec);
    void complete(const event& last);
    /// As complete(), but the close handlers see close_reason::completed_with_error and `why`:
    /// Spring's completeWithError().
    void complete_with_error(error_code why);
    /// Closes now, dropping what is queued: close_reason::aborted.
    void abort();

    /// Adds `handler(close_reason, error_code)`, called exactly once when the stream has
    /// ended and the transport is closed, on the transport's executor, in the order added.
    /// Added after the end, it is posted at once.
    template <class Handler>
        requires std::invocable<Handler&, close_reason, error_code>
    void on_close(Handler handler);

    /// Adds `handler()`, run on the transport's executor when the lifetime expires, while the
    /// stream is still open: it may send a last event, which is flushed before the stream ends
    /// with close_reason::timeout. Dropped uncalled if the stream ends otherwise.
    template <class Handler>
        requires std::invocable<Handler&>
    void on_timeout(Handler handler);

    /// Completes, `void(close_reason, error_code)`, when the stream has ended.
    template <class CompletionToken>
    auto async_wait_closed(CompletionToken&& token);
    // -- Backpressure ---------------------------------------------------------------------------

    /// Completes, `void(error_code)`, once every byte queued before the call is written
    /// (or dropped under overflow_policy::drop_oldest); errc::closed if the stream ends first.
    template <class CompletionToken>
    auto async_flush(CompletionToken&& token);

    /// Completes, `void(error_code)`, once queued_bytes() is at most `threshold` (at once
    /// if it is); errc::closed if the stream ends first. A producer with more to send than the
    /// bound allows feeds the stream as it drains.
    template <class CompletionToken>
    auto async_wait_drained(std::size_t threshold, CompletionToken&& token);
    // -- Observers ------------------------------------------------------------------------------

    /// False once the stream is ending or ended; sends then fail with errc::closed.
    bool is_open() const;
    /// Bytes queued or being written.
    std::size_t queued_bytes() const;
    std::size_t max_queued_bytes() const noexcept { return max_queued_bytes_; }
    /// The tag (see enqueue()) of the last tagged frame the transport took whole; 0 before
    /// any. Frames dropped under overflow_policy::drop_oldest count as passed.
    std::uint64_t written_seq() const noexcept { return written_seq_.load(std::memory_order_acquire); }
    /// Events dropped under overflow_policy::drop_oldest.
    std::uint64_t dropped() const;
    /// Heartbeat comments queued so far.
    std::uint32_t heartbeats() const;
    /// Body bytes the transport has taken so far.
    std::uint64_t bytes_written() const noexcept { return bytes_written_.load(std::memory_order_relaxed); }

private:
    enum class state : std::uint8_t { open, closing, aborting, closed };
    enum class after : std::uint8_t { nothing, finish };
    struct queued {
        shared_frame frame;
        std::uint64_t seq = 0;  // 0: untagged
    };
    struct write_handler;
    template <class Owner>
    friend void detail::watch_peer(const std::shared_ptr<Owner>&);

    void enqueue_locked(shared_frame frame, std::uint64_t seq, error_code& ec);
    void kick_locked(bool force = false);
    void kicked() override;
    after write_next_locked();
    bool gather_locked();
    void on_written(error_code ec, std::size_t n);
    void account_written_locked(std::size_t n);
    void drop_oldest_locked();
    void abort_locked(close_reason reason, error_code ec);
    void end_locked(close_reason reason, error_code ec);
    void finish();
    void close_now(close_reason reason, error_code ec);
    void add_waiter(detail::waiter* w);
    bool ready_locked(const detail::waiter& w) const noexcept;
    void settle_waiters_locked();
    template <class F>
    bool with_transport(F f);
    void peer_left(error_code ec) { close_now(close_reason::client_gone, ec); }
    auto& read_sink() noexcept { return read_sink_; }
    void expire();
    void heartbeat_due() noexcept override;
    void lifetime_expired() noexcept override;
    void write_stalled() noexcept override;
    static shared_frame retry_frame(std::optional<std::chrono::milliseconds> hint);

    Transport transport_;
    mutable detail::small_mutex mtx_;
    std::vector<queued> pending_;           // queued, not yet being written
    std::vector<asio::const_buffer> bufs_;  // the batch being written, consumed as written
    std::vector<queued> owners_;            // what each of bufs_ points into
    std::uint64_t enqueued_ = 0;            // bytes ever queued: async_flush's positions
    std::uint64_t settled_ = 0;             // of those, bytes written or dropped, in order
    detail::close_node* handlers_ = nullptr;  // most recent first
    detail::waiter* waiters_ = nullptr;       // async_flush, async_wait_drained, on_timeout
    std::atomic<std::uint64_t> bytes_written_{0};
    std::atomic<std::uint64_t> written_seq_{0};
    std::uint64_t dropped_ = 0;
    error_code reason_ec_;
    close_reason reason_ = close_reason::completed;
    overflow_policy policy_;
    state state_ = state::open;
    bool started_ = false;
    bool writing_ = false;      // the write loop runs (a kick or a write is under way)
    bool in_flight_ = false;    // a write_some's handler is to come
    bool finishing_ = false;    // the closing handshake is under way
    bool hint_queued_ = false;  // the retry hint is pending_'s first: drop_oldest keeps it
    std::uint32_t buf_pos_ = 0;  // the first of bufs_ not wholly written
    std::uint32_t heartbeats_ = 0;
    // 32 bits, as the bound is at most max_bound: queued and in flight are each at most the
    // bound plus one frame. Every byte of an idle stream counts, thousands at a time.
    std::uint32_t pending_bytes_ = 0;
    std::uint32_t inflight_bytes_ = 0;  // bytes of the batch not yet written
    std::uint32_t max_queued_bytes_;
    // Only layered transports keep a read outstanding, and so a buffer for it.
    [[no_unique_address]] std::array<char, detail::is_plain_socket<Transport> ? 0 : 64> read_sink_{};
};

/// Makes an emitter over `transport`; call start() on it (or attach it to a registry).
template <transport Transport>
std::shared_ptr<basic_emitter<Transport>> make_emitter(Transport transport, const emitter_options& options = {})
{
    return std::make_shared<basic_emitter<Transport>>(std::move(transport), options);
}

/// The emitter of an HTTP/1.1 response on a plain TCP socket:
/// `make_emitter(http_body(std::move(socket)))`.
using emitter = basic_emitter<http_body<asio::ip::tcp::socket>>;

} // namespace ssepp

#include <ssepp/impl/emitter.hpp>

#endif
