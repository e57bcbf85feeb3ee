// ssepp/impl/emitter.hpp
// The bodies of basic_emitter (ssepp/emitter.hpp holds the contract): the queue, the write
// loop, the close, and the completion-token operations.
// SPDX-License-Identifier: BSL-1.0
#ifndef SSEPP_IMPL_EMITTER_HPP
#define SSEPP_IMPL_EMITTER_HPP

#include <ssepp/detail/asio.hpp>

#include <algorithm>
#include <mutex>
#include <span>
#include <stdexcept>

namespace ssepp {

namespace detail {

// Write errors that mean the peer is gone, as opposed to a failure of the transport.
inline bool is_peer_gone(error_code ec) noexcept
{
    return ec == asio::error::connection_reset || ec == asio::error::broken_pipe || ec == asio::error::eof
        || ec == asio::error::not_connected || ec == asio::error::connection_aborted
        || ec == asio::error::timed_out || ec == asio::error::network_reset || ec == asio::error::shut_down
        || ec == asio::error::bad_descriptor;
}

template <class Executor>
std::optional<asio::io_context::executor_type> io_context_executor(const Executor& ex)
{
    if constexpr (std::is_same_v<Executor, asio::io_context::executor_type>)
        return ex;
    else if constexpr (std::is_same_v<Executor, asio::any_io_executor>) {
        if (const auto* io_ex = ex.template target<asio::io_context::executor_type>())
            return *io_ex;
    }
    return std::nullopt;
}

} // namespace detail

template <transport T>
basic_emitter<T>::basic_emitter(T transport, const emitter_options& options)
    : detail::liveness(options.heartbeat, options.lifetime, options.write_timeout)
    , transport_(std::move(transport))
    , policy_(options.overflow)
    , max_queued_bytes_(static_cast<std::uint32_t>(options.max_queued_bytes))
{
    if (options.max_queued_bytes > emitter_options::max_bound)
        throw std::invalid_argument("ssepp::basic_emitter: max_queued_bytes above emitter_options::max_bound");
    error_code ec;
    auto hint = retry_frame(options.retry_hint);
    hint_queued_ = hint != nullptr;
    enqueue(std::move(hint), 0, ec);  // the stream's first bytes
    hint_queued_ = hint_queued_ && !ec;
}

template <transport T>
basic_emitter<T>::~basic_emitter()
{
    stop_liveness();  // first: no sweep may reach a half-destroyed stream
    detail::close_node::destroy(handlers_);
    detail::waiter::destroy(waiters_);
}

template <transport T>
void basic_emitter<T>::start()
{
    std::lock_guard lock(mtx_);
    if (started_ || state_ >= state::aborting)
        return;
    started_ = true;
    start_liveness(get_executor());
    kick_locked(state_ == state::closing);
    asio::post(get_executor(), [self = this->shared_from_this()] { detail::watch_peer(self); });
}

// -- Sending ----------------------------------------------------------------------------------

template <transport T>
void basic_emitter<T>::send(const event& e, error_code& ec)
{
    auto frame = make_frame(e, ec);
    if (!ec)
        enqueue(std::move(frame), 0, ec);
}

template <transport T>
void basic_emitter<T>::send(const event& e)
{
    error_code ec;
    send(e, ec);
    detail::throw_on_error(ec, "ssepp::basic_emitter::send");
}

template <transport T>
void basic_emitter<T>::enqueue(shared_frame frame, std::uint64_t seq, error_code& ec)
{
    std::lock_guard lock(mtx_);
    enqueue_locked(std::move(frame), seq, ec);
}

template <transport T>
void basic_emitter<T>::enqueue(shared_frame frame, std::uint64_t seq)
{
    error_code ec;
    enqueue(std::move(frame), seq, ec);
    detail::throw_on_error(ec, "ssepp::basic_emitter::enqueue");
}

template <transport T>
void basic_emitter<T>::enqueue_locked(shared_frame frame, std::uint64_t seq, error_code& ec)
{
    ec = {};
    if (state_ != state::open) {
        ec = errc::closed;
        return;
    }
    if (!frame || frame->empty())
        return;
    const auto size = frame->size();
    if (size > max_queued_bytes_) {
        ec = errc::event_too_large;
        return;
    }
    pending_bytes_ += static_cast<std::uint32_t>(size);  // size <= the bound
    enqueued_ += size;
    pending_.push_back({std::move(frame), seq});
    if (pending_bytes_ + inflight_bytes_ > max_queued_bytes_) {
        if (policy_ == overflow_policy::close) {
            abort_locked(close_reason::overflow, errc::overflow);
            ec = errc::overflow;
            return;
        }
        drop_oldest_locked();
    }
    kick_locked();
}

// -- Ending -----------------------------------------------------------------------------------

template <transport T>
void basic_emitter<T>::complete()
{
    std::lock_guard lock(mtx_);
    end_locked(close_reason::completed, {});
}

template <transport T>
void basic_emitter<T>::complete(const event& last, error_code& ec)
{
    send(last, ec);
    complete();
}

template <transport T>
void basic_emitter<T>::complete(const event& last)
{
    error_code ec;
    complete(last, ec);
    detail::throw_on_error(ec, "ssepp::basic_emitter::complete");
}

template <transport T>
void basic_emitter<T>::complete_with_error(error_code why)
{
    std::lock_guard lock(mtx_);
    end_locked(close_reason::completed_with_error, why);
}

template <transport T>
void basic_emitter<T>::abort()
{
    std::lock_guard lock(mtx_);
    if (state_ < state::aborting)
        abort_locked(close_reason::aborted, {});
}

template <transport T>
template <class Handler>
    requires std::invocable<Handler&, close_reason, error_code>
void basic_emitter<T>::on_close(Handler handler)
{
    std::unique_lock lock(mtx_);
    if (state_ != state::closed) {
        auto* node = new detail::close_node_for<Handler>(std::move(handler));
        node->next = handlers_;
        handlers_ = node;
        return;
    }
    lock.unlock();
    asio::post(get_executor(), [h = std::move(handler), r = reason_, ec = reason_ec_]() mutable { h(r, ec); });
}

template <transport T>
template <class Handler>
    requires std::invocable<Handler&>
void basic_emitter<T>::on_timeout(Handler handler)
{
    add_waiter(new detail::direct_waiter<Handler>(std::move(handler)));
}

template <transport T>
template <class CompletionToken>
auto basic_emitter<T>::async_wait_closed(CompletionToken&& token)
{
    return asio::async_initiate<CompletionToken, void(close_reason, error_code)>(
        [this](auto handler) {
            auto work = asio::make_work_guard(asio::get_associated_executor(handler, get_executor()));
            on_close([h = std::move(handler), work = std::move(work)](close_reason r, error_code ec) mutable {
                auto ex = work.get_executor();
                asio::post(ex, [h = std::move(h), r, ec]() mutable { h(r, ec); });
                work.reset();
            });
        },
        token);
}

// -- Backpressure -----------------------------------------------------------------------------

template <transport T>
template <class CompletionToken>
auto basic_emitter<T>::async_flush(CompletionToken&& token)
{
    return asio::async_initiate<CompletionToken, void(error_code)>(
        [this](auto handler) {
            using waiter = detail::async_waiter<decltype(handler), executor_type>;
            add_waiter(new waiter(detail::waiter::kind::flushed, 0, std::move(handler), get_executor()));
        },
        token);
}

template <transport T>
template <class CompletionToken>
auto basic_emitter<T>::async_wait_drained(std::size_t threshold, CompletionToken&& token)
{
    return asio::async_initiate<CompletionToken, void(error_code)>(
        [this, threshold](auto handler) {
            using waiter = detail::async_waiter<decltype(handler), executor_type>;
            add_waiter(new waiter(detail::waiter::kind::drained, threshold, std::move(handler), get_executor()));
        },
        token);
}

// Links `w`, or completes it at once: with errc::closed when the stream is ending, or with
// success when its condition already holds. A flush waits for what is queued now.
template <transport T>
void basic_emitter<T>::add_waiter(detail::waiter* w)
{
    std::unique_ptr<detail::waiter> owned(w);
    std::lock_guard lock(mtx_);
    using kind = detail::waiter::kind;
    if (w->what == kind::flushed)
        w->value = enqueued_;
    if (state_ >= state::aborting || (w->what == kind::timeout && state_ != state::open)) {
        w->complete(errc::closed, this->weak_from_this().lock());
        return;
    }
    if (w->what != kind::timeout && ready_locked(*w)) {
        w->complete({}, this->weak_from_this().lock());
        return;
    }
    w->next = waiters_;
    waiters_ = owned.release();
}

template <transport T>
bool basic_emitter<T>::ready_locked(const detail::waiter& w) const noexcept
{
    using kind = detail::waiter::kind;
    return w.what == kind::flushed ? settled_ >= w.value
                                   : w.what == kind::drained && pending_bytes_ + inflight_bytes_ <= w.value;
}

// Completes the waiters whose condition now holds (a write or a drop made progress).
template <transport T>
void basic_emitter<T>::settle_waiters_locked()
{
    for (auto** link = &waiters_; *link;) {
        auto* w = *link;
        if (w->what == detail::waiter::kind::timeout || !ready_locked(*w)) {
            link = &w->next;
            continue;
        }
        *link = w->next;
        std::unique_ptr<detail::waiter> owned(w);
        w->complete({}, this->weak_from_this().lock());
    }
}

// -- Observers --------------------------------------------------------------------------------

template <transport T>
bool basic_emitter<T>::is_open() const
{
    std::lock_guard lock(mtx_);
    return state_ == state::open;
}

template <transport T>
std::size_t basic_emitter<T>::queued_bytes() const
{
    std::lock_guard lock(mtx_);
    return pending_bytes_ + inflight_bytes_;
}

template <transport T>
std::uint32_t basic_emitter<T>::heartbeats() const
{
    std::lock_guard lock(mtx_);
    return heartbeats_;
}

template <transport T>
std::uint64_t basic_emitter<T>::dropped() const
{
    std::lock_guard lock(mtx_);
    return dropped_;
}

// -- The write loop ---------------------------------------------------------------------------

// Starts the write loop unless it runs. `force`: run even with nothing queued (to finish).
template <transport T>
void basic_emitter<T>::kick_locked(bool force)
{
    if (!started_ || writing_ || (!force && pending_.empty()))
        return;
    writing_ = true;
    auto ex = get_executor();
    // Streams on a plain io_context executor share one queue of kicks, drained in batches:
    // a broadcast then posts a handler per batch instead of one per connection. Any other
    // executor (a strand, say) gets its own post, so that the write starts on it.
    if (auto io_ex = detail::io_context_executor(ex)) {
        std::shared_ptr<detail::stream_member> self(this->shared_from_this(), this);
        detail::stream_service::of(*this, ex).kick(std::move(self), *io_ex);
        return;
    }
    asio::post(ex, [self = this->shared_from_this()] { self->kicked(); });
}

// The first step of the write loop, after a kick. Kicks may run in a batch with other
// streams' (stream_service): the end that may follow runs in a handler of its own.
template <transport T>
void basic_emitter<T>::kicked()
{
    std::unique_lock lock(mtx_);
    if (write_next_locked() == after::finish) {
        lock.unlock();
        asio::post(get_executor(), [self = this->shared_from_this()] { self->finish(); });
    }
}

// The write loop's completion handler. It is a continuation of the loop: a write that
// completes at once (the usual case: the socket takes the bytes) is then queued on the thread
// that started it, without taking the scheduler's lock or waking another thread.
template <transport T>
struct basic_emitter<T>::write_handler {
    std::shared_ptr<basic_emitter> self;
    void operator()(error_code ec, std::size_t n) const { self->on_written(ec, n); }
    friend bool asio_handler_is_continuation(write_handler*) { return true; }
};

// With mtx_ held and writing_ set: starts the next write_some of the batch, or gathers the
// next batch from the queue.
template <transport T>
auto basic_emitter<T>::write_next_locked() -> after
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
            write_idle();
            // An idle stream holds no batch memory: most connections are idle most of the
            // time, and re-growing these for the next event is cheap by comparison.
            std::vector<asio::const_buffer>().swap(bufs_);
            std::vector<queued>().swap(owners_);
            std::vector<queued>().swap(pending_);
            return state_ == state::closing ? after::finish : after::nothing;
        }
    }
    write_started();
    // Asio writes at most 64 buffers per call; pass no more than that.
    const auto rest = std::span<const asio::const_buffer>(bufs_).subspan(buf_pos_);
    in_flight_ = true;
    transport_.async_write_some(rest.first(std::min<std::size_t>(rest.size(), 64)),
                                write_handler{this->shared_from_this()});
    return after::nothing;
}

// Moves the queue into one gather batch; false when there is nothing to write.
template <transport T>
bool basic_emitter<T>::gather_locked()
{
    if (pending_.empty())
        return false;
    owners_.swap(pending_);  // the batch owns the frames; the queue starts empty
    hint_queued_ = false;
    bufs_.reserve(owners_.size());
    for (const auto& f : owners_)
        bufs_.emplace_back(f.frame->data(), f.frame->size());
    inflight_bytes_ = std::exchange(pending_bytes_, 0);
    return true;
}

template <transport T>
void basic_emitter<T>::on_written(error_code ec, std::size_t n)
{
    std::unique_lock lock(mtx_);
    in_flight_ = false;
    account_written_locked(n);
    if (state_ == state::closed) {
        // Closed while this write was in flight: what it wrote counts, then the close
        // handlers, held for it, run.
        writing_ = false;
        auto* handlers = std::exchange(handlers_, nullptr);
        const auto reason = reason_;
        const auto reason_ec = reason_ec_;
        lock.unlock();
        detail::close_node::invoke_all(handlers, reason, reason_ec);
        return;
    }
    if (ec) {
        writing_ = false;
        lock.unlock();
        close_now(detail::is_peer_gone(ec) ? close_reason::client_gone : close_reason::error, ec);
        return;
    }
    settle_waiters_locked();
    if (write_next_locked() == after::finish) {
        lock.unlock();
        finish();
    }
}

// Consumes `n` written bytes from the batch: whole frames are freed, and their tags recorded
// in written_seq().
template <transport T>
void basic_emitter<T>::account_written_locked(std::size_t n)
{
    bytes_written_.fetch_add(n, std::memory_order_relaxed);
    settled_ += n;
    inflight_bytes_ -= static_cast<std::uint32_t>(std::min<std::size_t>(n, inflight_bytes_));
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
    // A batch written whole settles what was dropped behind it too: all that is not queued.
    if (buf_pos_ == bufs_.size())
        settled_ = enqueued_ - pending_bytes_;
}

template <transport T>
void basic_emitter<T>::drop_oldest_locked()
{
    // Keep at least the newest frame so the stream keeps moving, and the retry hint still
    // queued before start(): it is not an event.
    const std::size_t from = hint_queued_ ? 1 : 0;
    std::size_t n = 0;
    std::size_t bytes = 0;
    while (from + n + 1 < pending_.size() && pending_bytes_ - bytes + inflight_bytes_ > max_queued_bytes_)
        bytes += pending_[from + n++].frame->size();
    const auto first = pending_.begin() + static_cast<std::ptrdiff_t>(from);
    pending_.erase(first, first + static_cast<std::ptrdiff_t>(n));
    pending_bytes_ -= static_cast<std::uint32_t>(bytes);
    dropped_ += n;
    // The dropped frames came after the batch in flight: they settle once it is written.
    if (buf_pos_ == bufs_.size()) {
        settled_ = enqueued_ - pending_bytes_;
        settle_waiters_locked();
    }
}

// -- The end ----------------------------------------------------------------------------------

// Ends the stream from under the lock: the reason is recorded now, so that a write failing
// before the posted close runs cannot report another one.
template <transport T>
void basic_emitter<T>::abort_locked(close_reason reason, error_code ec)
{
    state_ = state::aborting;
    reason_ = reason;
    reason_ec_ = ec;
    pending_.clear();
    pending_bytes_ = 0;
    asio::post(get_executor(), [self = this->shared_from_this(), reason, ec] { self->close_now(reason, ec); });
}

// Stops taking events and flushes; finish() follows once the queue is written.
template <transport T>
void basic_emitter<T>::end_locked(close_reason reason, error_code ec)
{
    if (state_ != state::open)
        return;
    state_ = state::closing;
    reason_ = reason;
    reason_ec_ = ec;
    kick_locked(true);
}

// The queue is flushed after complete(): end the body, then close.
template <transport T>
void basic_emitter<T>::finish()
{
    std::lock_guard lock(mtx_);
    if (state_ != state::closing || finishing_)
        return;
    finishing_ = true;
    auto done = [self = this->shared_from_this()] { self->close_now(close_reason::completed, {}); };
    // A stream whose lifetime ran out ends without the closing handshake (no last chunk, no
    // close_notify): its client can tell it from one that completed.
    if (reason_ == close_reason::timeout)
        asio::post(get_executor(), std::move(done));
    else
        detail::close_gracefully(transport_, std::move(done));
}

// Runs on the executor: closes the transport, completes the waiters and calls the close
// handlers, once.
template <transport T>
void basic_emitter<T>::close_now(close_reason reason, error_code ec)
{
    detail::close_node* handlers = nullptr;
    detail::waiter* waiters = nullptr;
    {
        std::lock_guard lock(mtx_);
        if (state_ == state::closed)
            return;
        if (state_ == state::aborting || finishing_) {
            // Decided already: a failure racing with that close, or with the closing
            // handshake of a complete stream, does not change it.
            reason = reason_;
            ec = reason_ec_;
        }
        state_ = state::closed;
        reason_ = reason;
        reason_ec_ = ec;
        pending_.clear();
        pending_bytes_ = 0;
        inflight_bytes_ = 0;  // the batch is abandoned (its buffers live until the write ends)
        if (finishing_)
            detail::shutdown_send(transport_);
        detail::close_transport(transport_);
        // A write in flight may have been taken whole by the transport already (the peer read
        // it, then left): its handler, which the close makes come soon, counts it in
        // written_seq() before the close handlers learn what was written.
        if (!in_flight_)
            handlers = std::exchange(handlers_, nullptr);
        waiters = std::exchange(waiters_, nullptr);
    }
    stop_liveness();
    while (waiters) {
        std::unique_ptr<detail::waiter> w(std::exchange(waiters, waiters->next));
        w->complete(errc::closed, this->weak_from_this().lock());
    }
    detail::close_node::invoke_all(handlers, reason, ec);
}

// -- Liveness ---------------------------------------------------------------------------------

template <transport T>
template <class F>
bool basic_emitter<T>::with_transport(F f)
{
    std::lock_guard lock(mtx_);
    if (state_ == state::closed || finishing_)
        return false;
    f(transport_);
    return true;
}

// The sweep's decisions run under its lock: each posts to the executor, moving the reference
// in, since releasing the last one here would destroy the stream under that lock.
template <transport T>
void basic_emitter<T>::heartbeat_due() noexcept
{
    if (auto self = this->weak_from_this().lock())
        asio::post(get_executor(), [self = std::move(self)] {
            std::lock_guard lock(self->mtx_);
            if (self->pending_.empty() && !self->writing_) {
                static const shared_frame comment = make_raw_frame(":\n\n");
                error_code ec;
                self->enqueue_locked(comment, 0, ec);
                self->heartbeats_ += !ec;
            }
        });
}

template <transport T>
void basic_emitter<T>::lifetime_expired() noexcept
{
    if (auto self = this->weak_from_this().lock())
        asio::post(get_executor(), [self = std::move(self)] { self->expire(); });
}

template <transport T>
void basic_emitter<T>::write_stalled() noexcept
{
    if (auto self = this->weak_from_this().lock())
        asio::post(get_executor(), [self = std::move(self)] { self->close_now(close_reason::timeout, errc::timeout); });
}

// The lifetime is over: the on_timeout() handlers may send a last event, then the stream
// flushes and ends.
template <transport T>
void basic_emitter<T>::expire()
{
    detail::waiter* handlers = nullptr;
    {
        std::lock_guard lock(mtx_);
        if (state_ != state::open)
            return;
        for (auto** link = &waiters_; *link;) {
            auto* w = *link;
            if (w->what != detail::waiter::kind::timeout) {
                link = &w->next;
                continue;
            }
            *link = w->next;
            w->next = handlers;
            handlers = w;
        }
    }
    while (handlers) {  // in the order added: the list was newest first, this one is reversed
        std::unique_ptr<detail::waiter> w(std::exchange(handlers, handlers->next));
        w->complete({}, nullptr);
    }
    std::lock_guard lock(mtx_);
    end_locked(close_reason::timeout, errc::timeout);
}

template <transport T>
shared_frame basic_emitter<T>::retry_frame(std::optional<std::chrono::milliseconds> hint)
{
    if (!hint)
        return nullptr;
    const auto make = [](std::chrono::milliseconds ms) {
        error_code ec;
        auto frame = make_frame(event{.retry = ms}, ec);
        if (ec)
            throw std::invalid_argument("ssepp::basic_emitter: negative retry_hint");
        return frame;
    };
    // The default hint is shared by every stream: opening one allocates nothing for it.
    if (*hint == *emitter_options{}.retry_hint) {
        static const shared_frame standard = make(*hint);
        return standard;
    }
    return make(*hint);
}

} // namespace ssepp

#endif
