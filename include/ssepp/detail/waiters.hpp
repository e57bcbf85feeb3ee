// ssepp/detail/waiters.hpp
// The emitter's lists of who waits on it: close handlers, and completion handlers of its
// asynchronous operations. Intrusive lists of one allocation per waiter: an idle stream with
// none costs two pointers.
// SPDX-License-Identifier: BSL-1.0
#ifndef SSEPP_DETAIL_WAITERS_HPP
#define SSEPP_DETAIL_WAITERS_HPP

#include <ssepp/detail/asio.hpp>

#include <cstdint>
#include <memory>
#include <system_error>
#include <utility>

namespace ssepp {
enum class close_reason : std::uint8_t;
} // namespace ssepp

namespace ssepp::detail {

// A close handler.
struct close_node {
    close_node* next = nullptr;
    virtual void invoke(close_reason, error_code) = 0;
    virtual ~close_node() = default;

    static void destroy(close_node* head) noexcept
    {
        while (head)
            delete std::exchange(head, head->next);
    }

    // Calls each once in the order added (the list is newest first), then frees them.
    static void invoke_all(close_node* head, close_reason reason, error_code ec)
    {
        close_node* ordered = nullptr;
        while (head) {
            auto* n = std::exchange(head, head->next);
            n->next = std::exchange(ordered, n);
        }
        struct guard {
            close_node*& rest;
            ~guard() { destroy(rest); }
        } g{ordered};
        while (ordered) {
            std::unique_ptr<close_node> n(std::exchange(ordered, ordered->next));
            n->invoke(reason, ec);
        }
    }
};

template <class F>
struct close_node_for final : close_node {
    explicit close_node_for(F fn) : f(std::move(fn)) {}
    void invoke(close_reason reason, error_code ec) override { f(reason, ec); }
    F f;
};

// An asynchronous operation's completion handler, or an on_timeout() handler: completed when
// its condition holds, or with errc::closed when the stream ends first.
struct waiter {
    enum class kind : std::uint8_t { flushed, drained, timeout };
    waiter* next = nullptr;
    std::uint64_t value = 0;  // flushed: the byte position; drained: the threshold
    kind what;

    explicit waiter(kind k, std::uint64_t v) : value(v), what(k) {}
    // Runs or posts the handler with `ec`; the node is deleted by the caller afterwards.
    // `owner` (the stream) is kept alive until a posted handler has run: it may rely on it.
    virtual void complete(error_code ec, std::shared_ptr<const void> owner) = 0;
    virtual ~waiter() = default;

    static void destroy(waiter* head) noexcept
    {
        while (head)
            delete std::exchange(head, head->next);
    }
};

// Posts a completion handler to its associated executor (the stream's by default), keeping
// that executor's work counted while it waits, as Asio's own operations do.
template <class Handler, class Executor>
struct async_waiter final : waiter {
    async_waiter(kind k, std::uint64_t v, Handler h, const Executor& ex)
        : waiter(k, v), handler(std::move(h)), work(asio::get_associated_executor(handler, ex))
    {
    }
    void complete(error_code ec, std::shared_ptr<const void> owner) override
    {
        auto ex = work.get_executor();
        asio::post(ex, [h = std::move(handler), ec, owner = std::move(owner)]() mutable { h(ec); });
        work.reset();
    }
    Handler handler;
    asio::executor_work_guard<asio::associated_executor_t<Handler, Executor>> work;
};

// Runs a plain handler in place (on_timeout(): the caller is on the stream's executor).
template <class F>
struct direct_waiter final : waiter {
    explicit direct_waiter(F fn) : waiter(kind::timeout, 0), f(std::move(fn)) {}
    void complete(error_code ec, std::shared_ptr<const void>) override
    {
        if (!ec)
            f();
    }
    F f;
};

} // namespace ssepp::detail

#endif
