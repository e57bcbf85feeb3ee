// ssepp/emitter.hpp
// One event stream on one connection: a bounded write queue drained by coalesced gather
// writes, heartbeats, timeouts, a vanished-peer watch and exactly-once close callbacks.
// SPDX-License-Identifier: BSL-1.0
#ifndef SSEPP_EMITTER_HPP
#define SSEPP_EMITTER_HPP

#include <ssepp/detail/exact_allocator.hpp>
#include <ssepp/detail/small_mutex.hpp>
#include <ssepp/detail/stream_service.hpp>
#include <ssepp/error.hpp>
#include <ssepp/event.hpp>
#include <ssepp/frame.hpp>
#include <ssepp/response.hpp>
#include <ssepp/transport.hpp>

#include <asio/any_io_executor.hpp>
#include <asio/bind_allocator.hpp>
#include <asio/error.hpp>
#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/post.hpp>
#include <asio/steady_timer.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <stdexcept>
#include <type_traits>
#include <utility>
#include <vector>

namespace ssepp {

/// Why a stream ended; each emitter reports exactly one.
enum class close_reason : std::uint8_t {
    /// complete() flushed the queue, or the application closed the stream.
    completed,
    /// The peer closed or reset the connection, or a write failed.
    client_gone,
    /// The stream lifetime or the write-stall timeout expired.
    timeout,
    /// The queue passed max_queued_bytes under overflow_policy::close.
    overflow,
    /// A write failed for another reason than the peer leaving (a TLS failure, say).
    error,
};

/// What happens when a slow consumer's queue passes its bound.
enum class overflow_policy : std::uint8_t {
    /// Close the connection: the client reconnects and resumes from history, losing nothing.
    close,
    /// Drop the oldest queued events not yet being written: for lossy feeds (tickers).
    drop_oldest,
};

struct emitter_options {
    /// Write ssepp::response_head(response) first: for raw sockets. A stack that wrote its own
    /// head sets this to false.
    bool write_head = true;
    response_options response{};
    /// A `retry:` hint sent on open; nullopt sends none.
    std::optional<std::chrono::milliseconds> retry_hint = std::chrono::milliseconds(5000);
    /// A comment frame after this long without a write; 0 disables.
    std::chrono::milliseconds heartbeat = std::chrono::seconds(15);
    /// The stream ends (close_reason::timeout) this long after start(); 0 = never.
    std::chrono::milliseconds lifetime{0};
    /// A write making no progress for this long ends the stream (close_reason::timeout); 0 = never.
    std::chrono::milliseconds write_timeout = std::chrono::seconds(30);
    /// Bound on bytes queued or being written (not yet accepted by the transport) for this
    /// connection. Under overflow_policy::drop_oldest the newest event is always kept, so the
    /// queue may pass the bound by at most that one event while a write is stuck.
    std::size_t max_queued_bytes = std::size_t(1) << 20;
    overflow_policy overflow = overflow_policy::close;
};

namespace detail {

// The close handlers: an owning list of nodes, one allocation per handler of any type.
struct close_node {
    close_node* next = nullptr;
    virtual void invoke(close_reason, std::error_code) = 0;
    virtual ~close_node() = default;

    static void destroy(close_node* head) noexcept
    {
        while (head)
            delete std::exchange(head, head->next);
    }

    // Calls each once in the order added (the list is newest first), then frees them.
    static void invoke_all(close_node* head, close_reason reason, std::error_code ec)
    {
        close_node* ordered = nullptr;
        while (head) {
            auto* n = head;
            head = head->next;
            n->next = ordered;
            ordered = n;
        }
        struct guard {
            close_node*& rest;
            ~guard() { destroy(rest); }
        } g{ordered};
        while (ordered) {
            auto* n = std::exchange(ordered, ordered->next);
            std::unique_ptr<close_node> owned(n);
            n->invoke(reason, ec);
        }
    }
};

template <class F>
struct close_node_for final : close_node {
    explicit close_node_for(F fn) : f(std::move(fn)) {}
    void invoke(close_reason reason, std::error_code ec) override { f(reason, ec); }
    F f;
};

// The on_drained() handler: one allocation, held only while a producer waits.
struct drain_node {
    std::size_t threshold = 0;
    virtual void invoke() = 0;
    virtual ~drain_node() = default;
};

template <class F>
struct drain_node_for final : drain_node {
    explicit drain_node_for(F fn) : f(std::move(fn)) {}
    void invoke() override { f(); }
    F f;
};

} // namespace detail

/// One server-sent event stream over a transport.
///
/// Owned by std::shared_ptr (make_emitter()). send() may be called from any thread and never
/// blocks: the event is formatted once by the caller, queued, and written by at most one write
/// in flight that gathers everything queued. Every operation on the transport runs under the
/// emitter's lock, so a plain socket needs no strand; a layered stream (TLS) whose operations
/// are themselves composed needs a strand executor when several threads run its context, as
/// Asio requires.
///
/// Callbacks never run inside send() or complete(): they run on the transport's executor, so
/// a caller may hold its own locks while sending.
template <transport Transport>
class basic_emitter : public std::enable_shared_from_this<basic_emitter<Transport>>,
                      private detail::stream_member {
public:
    using transport_type = Transport;
    using executor_type = typename Transport::executor_type;
    /// A type that on_close() accepts (any callable of this signature is).
    using close_handler = std::function<void(close_reason, std::error_code)>;

    /// Prefer make_emitter(). Nothing is written before start().
    explicit basic_emitter(Transport transport, const emitter_options& options = {})
        : transport_(std::move(transport))
        , head_(options.write_head ? head_frame(options.response) : nullptr)
        , prelude_(retry_frame(options.retry_hint))
        , max_queued_bytes_(options.max_queued_bytes)
        , heartbeat_ms_(ms(options.heartbeat))
        , lifetime_ms_(ms(options.lifetime))
        , write_timeout_ms_(ms(options.write_timeout))
        , policy_(options.overflow)
        , chunked_(options.response.framing == body_framing::chunked)
    {
    }

    basic_emitter(const basic_emitter&) = delete;
    basic_emitter& operator=(const basic_emitter&) = delete;

    ~basic_emitter()
    {
        detail::stream_service::remove(*this);
        detail::close_node::destroy(handlers_);
    }

    executor_type get_executor() noexcept { return transport_.get_executor(); }

    /// The transport. Use it only on its executor, and not for writes while the stream is open.
    Transport& transport() noexcept { return transport_; }

    /// Adds a handler, `void(close_reason, std::error_code)`, called exactly once when the
    /// stream ends, on the transport's executor, after the transport is closed; handlers run in
    /// the order they were added. Added after the end, it is posted at once.
    template <class Handler>
        requires std::invocable<Handler&, close_reason, std::error_code>
    void on_close(Handler handler)
    {
        std::unique_lock lock(mtx_);
        if (state_ != state::closed) {
            // One allocation per handler, none while none is added: idle streams are many.
            auto* node = new detail::close_node_for<Handler>(std::move(handler));
            node->next = handlers_;
            handlers_ = node;
            return;
        }
        lock.unlock();
        asio::post(get_executor(), [h = std::move(handler), r = reason_, ec = reason_ec_]() mutable { h(r, ec); });
    }

    /// Writes the response head and retry hint, starts the peer watch and the timers, then
    /// whatever was queued. Calling it again does nothing.
    void start()
    {
        std::lock_guard lock(mtx_);
        if (started_ || state_ >= state::aborting)
            return;
        started_ = true;
        const auto now = detail::steady_now_ns();
        opened_ns_ = now;
        last_write_ns_.store(now, std::memory_order_relaxed);
        auto ex = get_executor();
        auto& service = detail::stream_service::of(*this, ex);
        kick_locked(state_ == state::closing);
        asio::post(ex, [self = this->shared_from_this()] { self->watch(); });
        if (heartbeat_ms_ || lifetime_ms_ || write_timeout_ms_) {
            auto shortest = std::int64_t(1'000'000'000);
            for (auto d : {ns(heartbeat_ms_), ns(lifetime_ms_), ns(write_timeout_ms_)})
                if (d)
                    shortest = std::min(shortest, d / 4);
            service.add(*this, ex, std::chrono::nanoseconds(shortest));
        }
    }

    /// Queues `e`, formatted once here. Returns at once, from any thread.
    /// @returns an error of validate(e) (nothing queued), errc::closed once the stream is
    /// ending, errc::overflow when this event pushed a slow consumer past its bound under
    /// overflow_policy::close (the stream then closes), errc::event_too_large when the event
    /// alone is larger than the bound (nothing queued, the stream stays open); empty otherwise.
    std::error_code send(const event& e)
    {
        std::error_code ec;
        auto frame = make_frame(e, ec);
        return ec ? ec : send(std::move(frame));
    }

    /// Queues bytes that are already whole frames (the registry's path: formatted once for all).
    /// `seq`, when not 0, tags the frame: written_seq() reports the last tag written, so that
    /// the sender learns what reached the transport (the registry passes its positions).
    /// @returns as send(event), and errc::event_too_large, with nothing queued and the stream
    /// open, for a frame larger than emitter_options::max_queued_bytes.
    std::error_code send(shared_frame frame, std::uint64_t seq = 0)
    {
        std::unique_lock lock(mtx_);
        if (state_ != state::open)
            return errc::closed;
        if (!frame || frame->empty())
            return {};
        if (frame->size() > max_queued_bytes_)
            return errc::event_too_large;
        pending_bytes_ += frame->size();
        pending_.push_back({std::move(frame), seq});
        if (pending_bytes_ + inflight_bytes_ > max_queued_bytes_) {
            if (policy_ == overflow_policy::close) {
                abort_locked(close_reason::overflow, errc::overflow);
                return errc::overflow;
            }
            drop_oldest_locked();
        }
        kick_locked();
        return {};
    }

    /// Flushes what is queued, then ends the stream (close_reason::completed).
    void complete()
    {
        std::lock_guard lock(mtx_);
        if (state_ != state::open)
            return;
        state_ = state::closing;
        kick_locked(true);
    }

    /// Sends `last` (an error or final event), then completes.
    std::error_code complete(const event& last)
    {
        auto ec = send(last);
        complete();
        return ec;
    }

    /// Ends the stream now, dropping what is queued (close_reason::completed).
    void close()
    {
        std::lock_guard lock(mtx_);
        if (state_ < state::aborting)
            abort_locked(close_reason::completed, {});
    }

    /// False once the stream is ending or ended; sends then report errc::closed.
    bool is_open() const
    {
        std::lock_guard lock(mtx_);
        return state_ == state::open;
    }

    /// Bytes queued or being written.
    std::size_t queued_bytes() const
    {
        std::lock_guard lock(mtx_);
        return pending_bytes_ + inflight_bytes_;
    }

    /// emitter_options::max_queued_bytes.
    std::size_t max_queued_bytes() const noexcept { return max_queued_bytes_; }

    /// The tag (see send(shared_frame, seq)) of the last tagged frame the transport accepted
    /// whole; 0 before any. What was queued after it may be lost if the stream does not
    /// complete. Frames dropped under overflow_policy::drop_oldest count as passed.
    std::uint64_t written_seq() const noexcept { return written_seq_.load(std::memory_order_acquire); }

    /// Calls `handler()` once, on the transport's executor, when queued_bytes() is at most
    /// `threshold` after a write (at once, posted, if it is already): a producer with more to
    /// send than the bound allows feeds it as it drains. One handler at a time (a new one
    /// replaces the last); it is dropped, uncalled, when the stream ends.
    template <class Handler>
        requires std::invocable<Handler&>
    void on_drained(std::size_t threshold, Handler handler)
    {
        std::unique_lock lock(mtx_);
        if (state_ >= state::aborting)
            return;
        if (pending_bytes_ + inflight_bytes_ <= threshold) {
            lock.unlock();
            // Holding the emitter, as the call after a write does: the handler may rely on it.
            asio::post(get_executor(), [self = this->shared_from_this(), h = std::move(handler)]() mutable { h(); });
            return;
        }
        drained_.reset(new detail::drain_node_for<Handler>(std::move(handler)));
        drained_->threshold = threshold;
    }

    /// Events dropped under overflow_policy::drop_oldest.
    std::uint64_t dropped() const
    {
        std::lock_guard lock(mtx_);
        return dropped_;
    }

    /// Bytes the transport has accepted so far, head included.
    std::uint64_t bytes_written() const noexcept { return bytes_written_.load(std::memory_order_relaxed); }

private:
    enum class state : std::uint8_t { open, closing, aborting, closed };
    // A queued frame and its tag (0: none).
    struct queued {
        shared_frame frame;
        std::uint64_t seq = 0;
    };
    enum class after { nothing, close_completed };

    // Durations are kept as 32-bit milliseconds (up to 49 days; longer is clamped): three of
    // them in every connection.
    static std::uint32_t ms(std::chrono::milliseconds d) noexcept
    {
        return static_cast<std::uint32_t>(std::clamp<std::int64_t>(d.count(), 0, std::numeric_limits<std::uint32_t>::max()));
    }

    // Write errors that mean the peer is gone, as opposed to a failure of the transport.
    static bool peer_gone(std::error_code ec) noexcept
    {
        return ec == asio::error::connection_reset || ec == asio::error::broken_pipe || ec == asio::error::eof
            || ec == asio::error::not_connected || ec == asio::error::connection_aborted
            || ec == asio::error::timed_out || ec == asio::error::network_reset || ec == asio::error::shut_down
            || ec == asio::error::bad_descriptor;
    }

    static std::int64_t ns(std::uint32_t ms) noexcept { return std::int64_t(ms) * 1'000'000; }

    // The default heads and retry hint are shared by every emitter that uses them: a server
    // with many connections then allocates nothing per connection to open a stream.
    static shared_frame head_frame(const response_options& r)
    {
        if (r.cors_origin.empty() && r.headers.empty()) {
            static const shared_frame raw = make_raw_frame(response_head({}));
            static const shared_frame chunked = make_raw_frame(response_head({.framing = body_framing::chunked}));
            return r.framing == body_framing::chunked ? chunked : raw;
        }
        return make_raw_frame(response_head(r));
    }

    static shared_frame retry_frame(std::optional<std::chrono::milliseconds> hint)
    {
        if (!hint)
            return nullptr;
        const auto make = [](std::chrono::milliseconds ms) {
            std::error_code ec;
            auto frame = make_frame(event{.retry = ms}, ec);
            if (ec)
                throw std::invalid_argument("ssepp::basic_emitter: negative retry_hint");
            return frame;
        };
        if (*hint == *emitter_options{}.retry_hint) {
            static const shared_frame standard = make(*hint);
            return standard;
        }
        return make(*hint);
    }

    static const shared_frame& heartbeat_frame()
    {
        static const shared_frame frame = make_raw_frame(":\n\n");
        return frame;
    }

    static const shared_frame& chunk_terminator()
    {
        static const shared_frame frame = make_raw_frame("0\r\n\r\n");
        return frame;
    }

    // Starts the write loop unless it runs. `force`: run even with nothing queued (to finish).
    void kick_locked(bool force = false)
    {
        if (!started_ || writing_)
            return;
        if (!force && pending_.empty() && head_ == nullptr && prelude_ == nullptr)
            return;
        writing_ = true;
        auto ex = get_executor();
        // Streams on a plain io_context executor share one queue of kicks, drained in batches:
        // a broadcast then posts a handler per batch instead of one per connection. Any other
        // executor (a strand, say) gets its own post, so that the write starts on it.
        if (auto io_ex = io_context_executor(ex)) {
            std::shared_ptr<detail::stream_member> self(this->shared_from_this(), this);
            detail::stream_service::of(*this, ex).kick(std::move(self), *io_ex);
            return;
        }
        asio::post(ex, [self = this->shared_from_this()] { self->kicked(); });
    }

    template <class Executor>
    static std::optional<asio::io_context::executor_type> io_context_executor(const Executor& ex)
    {
        if constexpr (std::is_same_v<Executor, asio::io_context::executor_type>)
            return ex;
        else if constexpr (std::is_same_v<Executor, asio::any_io_executor>) {
            if (const auto* io_ex = ex.template target<asio::io_context::executor_type>())
                return *io_ex;
        }
        return std::nullopt;
    }

    // The first step of the write loop, after a kick. Kicks may run in a batch with other
    // streams' (stream_service): the close that may follow, with the application's handlers,
    // runs in a handler of its own.
    void kicked() override
    {
        std::unique_lock lock(mtx_);
        if (write_next_locked() == after::close_completed) {
            lock.unlock();
            asio::post(get_executor(), [self = this->shared_from_this()] { self->finish_completed(); });
        }
    }

    // The write loop's completion handler. It is a continuation of the loop: a write that
    // completes at once (the usual case: the socket takes the bytes) is then queued on the
    // thread that started it, without taking the scheduler's lock or waking another thread.
    struct write_handler {
        std::shared_ptr<basic_emitter> self;
        void operator()(std::error_code ec, std::size_t n) const { self->on_written(ec, n); }
        friend bool asio_handler_is_continuation(write_handler*) { return true; }
    };

    void drop_oldest_locked()
    {
        // Keep at least the newest frame so the stream keeps moving.
        std::size_t n = 0;
        while (n + 1 < pending_.size() && pending_bytes_ + inflight_bytes_ > max_queued_bytes_)
            pending_bytes_ -= pending_[n++].frame->size();
        pending_.erase(pending_.begin(), pending_.begin() + static_cast<std::ptrdiff_t>(n));
        dropped_ += n;
    }

    // Ends the stream from under the lock: the reason is recorded now, so that a write failing
    // before the posted close runs cannot report another one.
    void abort_locked(close_reason reason, std::error_code ec)
    {
        state_ = state::aborting;
        reason_ = reason;
        reason_ec_ = ec;
        pending_.clear();
        pending_bytes_ = 0;
        asio::post(get_executor(),
                   [self = this->shared_from_this(), reason, ec] { self->close_now(reason, ec); });
    }

    // The write loop: with mtx_ held and writing_ set, starts the next write_some of the
    // current batch, or gathers the next batch from the queue.
    after write_next_locked()
    {
        if (state_ == state::closed) {
            writing_ = false;
            return after::nothing;
        }
        if (buf_pos_ == bufs_.size()) {
            bufs_.clear();
            owners_.clear();
            buf_pos_ = 0;
            inflight_bytes_ = 0;
            if (!gather_locked()) {
                writing_ = false;
                write_started_ns_.store(0, std::memory_order_relaxed);
                // An idle stream holds no batch memory: most connections are idle most of the
                // time, and re-growing these for the next event is cheap by comparison.
                std::vector<asio::const_buffer>().swap(bufs_);
                std::vector<queued>().swap(owners_);
                std::vector<queued>().swap(pending_);
                return state_ == state::closing ? after::close_completed : after::nothing;
            }
        }
        write_started_ns_.store(detail::steady_now_ns(), std::memory_order_relaxed);
        // Asio writes at most 64 buffers per call; pass no more than that.
        const auto rest = std::span<const asio::const_buffer>(bufs_).subspan(buf_pos_);
        in_flight_ = true;
        transport_.async_write_some(rest.first(std::min<std::size_t>(rest.size(), 64)),
                                    write_handler{this->shared_from_this()});
        return after::nothing;
    }

    // Appends one buffer to the batch; `owner` keeps its bytes alive until they are written.
    void push_buffer_locked(asio::const_buffer b, queued owner)
    {
        if (b.size() == 0)
            return;
        bufs_.push_back(b);
        owners_.push_back(std::move(owner));
        inflight_bytes_ += b.size();
    }

    void push_frame_locked(queued f)
    {
        const asio::const_buffer b(f.frame->data(), f.frame->size());
        push_buffer_locked(b, std::move(f));
    }

    // Moves the queue into one gather batch; false when there is nothing left to write.
    bool gather_locked()
    {
        // Head, chunk size, prelude, the queue, chunk end: size the batch once.
        bufs_.reserve(pending_.size() + 4);
        owners_.reserve(pending_.size() + 4);
        // The head is raw HTTP; with chunked framing the body bytes after it form one chunk.
        if (head_)
            push_frame_locked({std::exchange(head_, nullptr)});
        if (prelude_ != nullptr || !pending_.empty()) {
            const std::size_t body = pending_bytes_ + (prelude_ ? prelude_->size() : 0);
            if (chunked_) {
                const auto n = fmt::format_to_n(chunk_size_.data(), chunk_size_.size(), "{:x}\r\n", body).size;
                push_buffer_locked(asio::const_buffer(chunk_size_.data(), n), {});
            }
            if (prelude_)
                push_frame_locked({std::exchange(prelude_, nullptr)});
            for (auto& f : pending_)
                push_frame_locked(std::move(f));
            pending_.clear();
            pending_bytes_ = 0;
            if (chunked_)
                push_buffer_locked(asio::const_buffer("\r\n", 2), {});
        } else if (state_ == state::closing && chunked_ && !terminated_) {
            terminated_ = true;
            push_frame_locked({chunk_terminator()});
        }
        return !bufs_.empty();
    }

    void on_written(std::error_code ec, std::size_t n)
    {
        std::unique_lock lock(mtx_);
        in_flight_ = false;
        if (state_ == state::closed) {
            // Closed while this write was in flight: what it wrote counts, then the close
            // handlers, held for it, run.
            account_written_locked(n);
            writing_ = false;
            auto* handlers = std::exchange(handlers_, nullptr);
            const auto reason = reason_;
            const auto reason_ec = reason_ec_;
            lock.unlock();
            detail::close_node::invoke_all(handlers, reason, reason_ec);
            return;
        }
        if (ec) {
            account_written_locked(n);
            writing_ = false;
            lock.unlock();
            close_now(peer_gone(ec) ? close_reason::client_gone : close_reason::error, ec);
            return;
        }
        bytes_written_.fetch_add(n, std::memory_order_relaxed);
        last_write_ns_.store(detail::steady_now_ns(), std::memory_order_relaxed);
        inflight_bytes_ -= std::min(n, inflight_bytes_);
        account_written_locked(n);
        // A producer waiting for room is told once the queue is low enough.
        if (drained_ && pending_bytes_ + inflight_bytes_ <= drained_->threshold)
            asio::post(get_executor(), [self = this->shared_from_this(), h = std::move(drained_)] { h->invoke(); });
        if (write_next_locked() == after::close_completed) {
            lock.unlock();
            finish_completed();
        }
    }

    // Consumes `n` written bytes from the batch: whole frames are freed, and their tags
    // recorded in written_seq().
    void account_written_locked(std::size_t n)
    {
        while (n > 0 && buf_pos_ < bufs_.size()) {
            auto& b = bufs_[buf_pos_];
            if (n < b.size()) {
                b += n;
                break;
            }
            n -= b.size();
            auto& owner = owners_[buf_pos_];
            if (owner.seq)
                written_seq_.store(owner.seq, std::memory_order_release);
            owner.frame.reset();  // written: free it now, not at the end of the batch
            ++buf_pos_;
        }
    }

    // The queue is flushed after complete(): close. A TLS stream first sends close_notify, so
    // that the client sees the end of the stream rather than a truncation, and waits a little
    // for the peer's; a peer that never answers does not hold the connection open.
    void finish_completed()
    {
        if constexpr (detail::has_async_shutdown<Transport>) {
            std::unique_lock lock(mtx_);
            if (state_ == state::closing && !tls_shutdown_) {
                tls_shutdown_ = true;
                std::error_code ec;
                transport_.lowest_layer().cancel(ec);  // ends the watch's read
                auto self = this->shared_from_this();
                auto bound = std::make_shared<asio::steady_timer>(get_executor(), tls_shutdown_timeout);
                bound->async_wait([self](std::error_code ec) {
                    if (ec != asio::error::operation_aborted)
                        self->close_now(close_reason::completed, {});
                });
                transport_.async_shutdown([self, bound](std::error_code) {
                    bound->cancel();
                    self->close_now(close_reason::completed, {});
                });
                return;
            }
            if (tls_shutdown_)
                return;
        }
        close_now(close_reason::completed, {});
    }

    static constexpr auto tls_shutdown_timeout = std::chrono::seconds(1);

    // Watches for a vanished peer: readability on a plain socket (no buffer held), or a small
    // read on a layered stream; bytes the client sends are discarded. The pending operation
    // lives as long as the connection, so it is allocated at its exact size.
    void watch()
    {
        std::lock_guard lock(mtx_);
        if (state_ == state::closed || tls_shutdown_)
            return;
        if constexpr (detail::is_plain_socket<Transport>) {
            std::error_code ec;
            transport_.lowest_layer().non_blocking(true, ec);
            wait_readable();
        } else if constexpr (detail::has_async_read_some<Transport>) {
            transport_.async_read_some(
                asio::buffer(read_sink_),
                asio::bind_allocator(detail::exact_allocator<void>(),
                                     [self = this->shared_from_this()](std::error_code ec, std::size_t) {
                                         if (!ec)
                                             self->watch();
                                         else if (ec != asio::error::operation_aborted)
                                             self->close_now(close_reason::client_gone, ec);
                                     }));
        }
    }

    void wait_readable()
    {
        transport_.lowest_layer().async_wait(
            asio::socket_base::wait_read,
            asio::bind_allocator(detail::exact_allocator<void>(),
                                 [self = this->shared_from_this()](std::error_code ec) { self->on_readable(ec); }));
    }

    void on_readable(std::error_code ec)
    {
        if (ec == asio::error::operation_aborted)
            return;
        if (!ec) {
            if constexpr (detail::is_plain_socket<Transport>) {
                std::unique_lock lock(mtx_);
                if (state_ == state::closed)
                    return;
                std::array<char, 512> sink;
                for (;;) {
                    transport_.read_some(asio::buffer(sink), ec);
                    if (ec == asio::error::would_block || ec == asio::error::try_again) {
                        wait_readable();
                        return;
                    }
                    if (ec)
                        break;
                }
            }
        }
        close_now(close_reason::client_gone, ec);
    }

    // Runs on the executor: closes the transport and calls the handlers, once.
    void close_now(close_reason reason, std::error_code ec)
    {
        detail::close_node* handlers = nullptr;
        std::unique_ptr<detail::drain_node> drained;  // dropped outside the lock: it may own us
        {
            std::lock_guard lock(mtx_);
            if (state_ == state::closed)
                return;
            if (state_ == state::aborting) {
                // abort_locked() recorded why; a failure racing with its close does not count.
                reason = reason_;
                ec = reason_ec_;
            } else if (tls_shutdown_) {
                // The stream was complete: how the closing handshake went does not change that.
                reason = close_reason::completed;
                ec = {};
            }
            state_ = state::closed;
            reason_ = reason;
            reason_ec_ = ec;
            pending_.clear();
            pending_bytes_ = 0;
            inflight_bytes_ = 0;  // the batch is abandoned (its buffers live until the write ends)
            if (reason == close_reason::completed)
                detail::shutdown_send(transport_);
            detail::close_transport(transport_);
            // A write in flight may have been taken whole by the transport already (the peer
            // read it, then left): its handler, which the close makes come soon, counts it in
            // written_seq() before the close handlers learn what was written.
            if (!in_flight_)
                handlers = std::exchange(handlers_, nullptr);
            drained = std::move(drained_);
        }
        detail::stream_service::remove(*this);
        detail::close_node::invoke_all(handlers, reason, ec);
    }

    void sweep(std::int64_t now) noexcept override
    {
        const auto started = write_started_ns_.load(std::memory_order_relaxed);
        const bool expired = lifetime_ms_ && now - opened_ns_ >= ns(lifetime_ms_);
        const bool stalled = write_timeout_ms_ && started && now - started >= ns(write_timeout_ms_);
        if (expired || stalled) {
            if (close_posted_.exchange(true))
                return;
            // Moved into the handler: were this the last reference, the emitter would be
            // destroyed here, under the sweeper's lock, which its destructor takes.
            if (auto self = this->weak_from_this().lock())
                asio::post(get_executor(),
                           [self = std::move(self)] { self->close_now(close_reason::timeout, errc::timeout); });
            return;
        }
        if (heartbeat_ms_ && !started
            && now - last_write_ns_.load(std::memory_order_relaxed) >= ns(heartbeat_ms_)) {
            last_write_ns_.store(now, std::memory_order_relaxed);
            if (auto self = this->weak_from_this().lock())
                asio::post(get_executor(), [self = std::move(self)] {
                    std::lock_guard lock(self->mtx_);
                    if (self->state_ == state::open && self->pending_.empty() && !self->writing_) {
                        self->pending_.push_back({heartbeat_frame()});
                        self->pending_bytes_ += heartbeat_frame()->size();
                        self->kick_locked();
                    }
                });
        }
    }

    Transport transport_;
    mutable detail::small_mutex mtx_;
    std::vector<queued> pending_;            // queued, not yet being written
    std::vector<asio::const_buffer> bufs_;   // the batch being written, consumed as written
    std::vector<queued> owners_;             // what each of bufs_ points into (null: framing)
    std::size_t pending_bytes_ = 0;
    std::size_t inflight_bytes_ = 0;         // bytes of the batch not yet written
    detail::close_node* handlers_ = nullptr;  // most recent first
    std::unique_ptr<detail::drain_node> drained_;  // see on_drained()
    shared_frame head_;
    shared_frame prelude_;
    std::size_t max_queued_bytes_;
    std::uint32_t heartbeat_ms_;
    std::uint32_t lifetime_ms_;
    std::uint32_t write_timeout_ms_;
    std::int64_t opened_ns_ = 0;
    std::atomic<std::int64_t> last_write_ns_{0};
    std::atomic<std::int64_t> write_started_ns_{0};  // 0: no write in flight
    std::atomic<std::uint64_t> bytes_written_{0};
    std::atomic<std::uint64_t> written_seq_{0};
    std::uint64_t dropped_ = 0;
    std::error_code reason_ec_;
    close_reason reason_ = close_reason::completed;
    overflow_policy policy_;
    state state_ = state::open;
    bool chunked_;
    bool started_ = false;
    bool writing_ = false;
    bool in_flight_ = false;  // a write_some's handler is to come
    bool terminated_ = false;
    bool tls_shutdown_ = false;  // close_notify under way (TLS transports only)
    std::atomic<bool> close_posted_{false};
    std::uint32_t buf_pos_ = 0;           // the first of bufs_ not wholly written
    std::array<char, 16> chunk_size_{};  // "<hex size>\r\n" of the batch in flight
    // Only layered transports keep a read outstanding, and so a buffer for it.
    [[no_unique_address]] std::conditional_t<detail::is_plain_socket<Transport>, std::array<char, 0>,
                                             std::array<char, 64>> read_sink_{};
};

/// Makes an emitter over `transport`; call start() on it (or attach it to a registry).
template <transport Transport>
std::shared_ptr<basic_emitter<Transport>> make_emitter(Transport transport, const emitter_options& options = {})
{
    return std::make_shared<basic_emitter<Transport>>(std::move(transport), options);
}

/// The emitter of a plain TCP socket.
using emitter = basic_emitter<asio::ip::tcp::socket>;

} // namespace ssepp

#endif
