// tests/support/test_stream.hpp
// An in-memory transport, modelled on Beast's test::stream: what is written collects in a
// string, and the test plays the network: a write that fails after N (fail_after), writes
// that take only part of what they are offered (write_cap), writes that wait until released
// (stall), a peer that leaves (leave). Every completion is posted to the stream's executor,
// never run inline, as Asio's own streams do (a handler's associated executor is not
// consulted: the emitter's handlers have none); a held operation keeps its context busy (run()
// does not return while a write is stalled), and the context's destruction frees it, as a
// socket's does.
#pragma once

#include "asio.hpp"


#include <algorithm>
#include <chrono>
#include <cstddef>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

namespace test {

class stream;

/// The test's side of a test::stream (the other end of the connection): what was written,
/// and what the network does next. Copies share one state; safe from any thread.
class stream_peer {
public:
    /// Everything the stream accepted, in order.
    std::string str() const { return get(&state::written); }
    /// async_write_some calls, failed ones included.
    std::size_t writes() const { return get(&state::writes); }
    /// Bytes accepted (str().size()).
    std::size_t bytes() const { return get(&state::written).size(); }
    /// close() calls.
    std::size_t closes() const { return get(&state::closes); }
    bool closed() const { return get(&state::closed); }
    /// The most writes ever in flight at once (initiated, handler not yet run): an
    /// AsyncWriteStream allows one.
    int max_writes_in_flight() const { return get(&state::max_in_flight); }
    /// Writes whose handler has not run yet.
    int writes_in_flight() const { return get(&state::in_flight); }
    /// A stalled write waits for release().
    bool write_held() const { return static_cast<bool>(get(&state::held_write)); }
    /// A read waits (the emitter's peer watch).
    bool read_pending() const { return static_cast<bool>(get(&state::held_read)); }

    /// The first `n` writes succeed; every later one fails with `ec`, accepting nothing.
    void fail_after(std::size_t n, ssepp::error_code ec)
    {
        std::lock_guard lock(s_->mtx);
        s_->fail_after = n;
        s_->fail_ec = ec;
    }

    /// Each write accepts at most `n` bytes (0: all it is offered): partial writes.
    void write_cap(std::size_t n)
    {
        std::lock_guard lock(s_->mtx);
        s_->cap = n;
    }

    /// From now on a write takes its bytes only when release() is called: a peer that stopped
    /// reading. close() ends a held write with operation_aborted, as a socket does.
    void stall()
    {
        std::lock_guard lock(s_->mtx);
        s_->stalled = true;
    }

    /// Stops stalling; the held write, if any, takes its bytes and completes (posted).
    void release()
    {
        std::lock_guard lock(s_->mtx);
        s_->stalled = false;
        if (s_->held_write) {
            s_->written += s_->held_bytes;
            s_->post(std::exchange(s_->held_write, nullptr), {}, std::exchange(s_->held_bytes, {}).size());
        }
    }

    /// The peer leaves: a pending read and later ones complete with eof; the held write and
    /// later ones fail with connection_reset, as a TCP peer's reset does.
    void leave()
    {
        std::lock_guard lock(s_->mtx);
        s_->left = true;
        if (s_->held_read)
            s_->post(std::exchange(s_->held_read, nullptr), asio::error::eof, 0);
        if (s_->held_write)
            s_->post(std::exchange(s_->held_write, nullptr), asio::error::connection_reset, 0);
        s_->held_bytes.clear();
    }

private:
    friend class stream;
    using completion = std::function<void(ssepp::error_code, std::size_t)>;

    struct state {
        explicit state(asio::any_io_executor e) : ex(std::move(e)) {}

        // Posts `c(ec, n)` to the stream's executor, never inline.
        void post(completion c, ssepp::error_code ec, std::size_t n) const
        {
            asio::post(ex, [c = std::move(c), ec, n] { c(ec, n); });
        }

        mutable std::mutex mtx;
        asio::any_io_executor ex;
        std::string written;
        std::size_t writes = 0;
        std::size_t closes = 0;
        std::size_t fail_after = std::numeric_limits<std::size_t>::max();
        ssepp::error_code fail_ec;
        std::size_t cap = 0;
        completion held_write;   // a stalled write
        std::string held_bytes;  // what it takes when released
        completion held_read;    // a read waiting for the peer
        int in_flight = 0;
        int max_in_flight = 0;
        bool stalled = false;
        bool left = false;
        bool closed = false;
    };

    // Drops the held operations of the context's streams when the context shuts down, as
    // Asio does with a socket's: a held handler that owns its emitter, which owns the stream,
    // is then not leaked.
    class service final : public asio::execution_context::service {
    public:
        inline static asio::execution_context::id id;
        explicit service(asio::execution_context& ctx) : asio::execution_context::service(ctx) {}

        void add(const std::shared_ptr<state>& s)
        {
            std::lock_guard lock(mtx_);
            std::erase_if(states_, [](const auto& w) { return w.expired(); });
            states_.push_back(s);
        }

    private:
        void shutdown() override
        {
            std::vector<std::weak_ptr<state>> states;
            {
                std::lock_guard lock(mtx_);
                states.swap(states_);
            }
            for (auto& w : states)
                if (auto s = w.lock()) {
                    completion write, read;  // destroyed outside the stream's lock
                    std::lock_guard lock(s->mtx);
                    write = std::move(s->held_write);
                    read = std::move(s->held_read);
                    s->held_write = s->held_read = nullptr;
                }
        }

        std::mutex mtx_;
        std::vector<std::weak_ptr<state>> states_;
    };

    explicit stream_peer(std::shared_ptr<state> s) : s_(std::move(s)) {}

    template <class T>
    T get(T state::*member) const
    {
        std::lock_guard lock(s_->mtx);
        return (*s_).*member;
    }

    std::shared_ptr<state> s_;
};

/// An in-memory ssepp::transport (and Asio AsyncReadStream / AsyncWriteStream): see
/// stream_peer for what the test controls. Move-only, like a socket; peer() may be taken
/// before the stream is moved into an emitter.
class stream {
public:
    using executor_type = asio::any_io_executor;

    explicit stream(executor_type ex) : s_(std::make_shared<stream_peer::state>(std::move(ex)))
    {
        asio::use_service<stream_peer::service>(asio::query(s_->ex, asio::execution::context)).add(s_);
    }

    template <class ExecutionContext>
        requires std::is_convertible_v<ExecutionContext&, asio::execution_context&>
    explicit stream(ExecutionContext& context) : stream(executor_type(context.get_executor()))
    {
    }

    stream(stream&&) noexcept = default;
    stream& operator=(stream&&) noexcept = default;

    executor_type get_executor() const { return s_->ex; }

    stream_peer peer() const { return stream_peer(s_); }

    template <class ConstBuffers, class Token>
    auto async_write_some(const ConstBuffers& buffers, Token&& token)
    {
        return asio::async_initiate<Token, void(ssepp::error_code, std::size_t)>(
            [s = s_](auto handler, const ConstBuffers& b) { start_write(s, b, std::move(handler)); }, token,
            buffers);
    }

    template <class MutableBuffers, class Token>
    auto async_read_some(const MutableBuffers& buffers, Token&& token)
    {
        return asio::async_initiate<Token, void(ssepp::error_code, std::size_t)>(
            [s = s_](auto handler, const MutableBuffers&) {
                // The peer never sends bytes: a read waits until the peer leaves or the close.
                std::lock_guard lock(s->mtx);
                auto c = erase(*s, std::move(handler));
                if (s->closed)
                    s->post(std::move(c), asio::error::bad_descriptor, 0);
                else if (s->left)
                    s->post(std::move(c), asio::error::eof, 0);
                else
                    s->held_read = std::move(c);
            },
            token, buffers);
    }

    /// Ends the held write and read with operation_aborted; later operations fail with
    /// bad_descriptor, as on a closed socket.
    void close(ssepp::error_code& ec)
    {
        ec = {};
        std::lock_guard lock(s_->mtx);
        ++s_->closes;
        s_->closed = true;
        if (s_->held_write)
            s_->post(std::exchange(s_->held_write, nullptr), asio::error::operation_aborted, 0);
        if (s_->held_read)
            s_->post(std::exchange(s_->held_read, nullptr), asio::error::operation_aborted, 0);
        s_->held_bytes.clear();
    }

private:
    using state = stream_peer::state;

    // Type-erases a (possibly move-only) handler; while it waits, it keeps the context busy.
    template <class Handler>
    static stream_peer::completion erase(state& s, Handler handler)
    {
        auto h = std::make_shared<Handler>(std::move(handler));
        auto work = asio::prefer(s.ex, asio::execution::outstanding_work.tracked);
        return [h, work](ssepp::error_code ec, std::size_t n) { (*h)(ec, n); };
    }

    template <class ConstBuffers, class Handler>
    static void start_write(const std::shared_ptr<state>& sp, const ConstBuffers& buffers, Handler handler)
    {
        auto& s = *sp;
        std::lock_guard lock(s.mtx);
        ++s.writes;
        s.max_in_flight = std::max(s.max_in_flight, ++s.in_flight);
        // Counted out of flight when the handler runs, just before it. Weakly: a held write
        // lives in the state.
        stream_peer::completion c = [w = std::weak_ptr<state>(sp),
                                     c = erase(s, std::move(handler))](ssepp::error_code ec, std::size_t n) {
            if (auto s = w.lock()) {
                std::lock_guard lock(s->mtx);
                --s->in_flight;
            }
            c(ec, n);
        };
        if (s.closed)
            return s.post(std::move(c), asio::error::bad_descriptor, 0);
        if (s.left)
            return s.post(std::move(c), asio::error::connection_reset, 0);
        if (s.writes > s.fail_after)
            return s.post(std::move(c), s.fail_ec, 0);
        std::string taken;
        const auto limit = s.cap ? s.cap : std::numeric_limits<std::size_t>::max();
        for (auto it = asio::buffer_sequence_begin(buffers); it != asio::buffer_sequence_end(buffers); ++it) {
            const asio::const_buffer b(*it);
            const auto k = std::min(b.size(), limit - taken.size());
            taken.append(static_cast<const char*>(b.data()), k);
            if (taken.size() == limit)
                break;
        }
        if (s.stalled && !taken.empty()) {
            s.held_write = std::move(c);
            s.held_bytes = std::move(taken);
            return;
        }
        s.written += taken;
        s.post(std::move(c), {}, taken.size());
    }

    std::shared_ptr<state> s_;
};

/// Runs `io` on this thread until `pred()` holds; false after `timeout`, or as soon as `io`
/// has nothing left to run, so that a failing test fails instead of hanging.
template <class Pred>
bool run_until(asio::io_context& io, Pred pred, std::chrono::milliseconds timeout = std::chrono::seconds(5))
{
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!pred()) {
        if (std::chrono::steady_clock::now() >= deadline)
            return false;
        io.restart();
        if (io.run_one_until(deadline) == 0 && io.stopped())
            return pred();
    }
    return true;
}

/// Runs the handlers of `io` that are ready, and those they make ready, then returns.
inline void poll(asio::io_context& io)
{
    io.restart();
    io.poll();
}

} // namespace test
