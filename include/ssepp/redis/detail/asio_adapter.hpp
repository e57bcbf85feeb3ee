// ssepp/redis/detail/asio_adapter.hpp
// Drives one redisAsyncContext from Asio, as hiredis's own adapters (adapters/libuv.h...) do
// for other loops: its event hooks become async_wait(wait_read / wait_write) on its socket.
// SPDX-License-Identifier: BSL-1.0
#ifndef SSEPP_REDIS_DETAIL_ASIO_ADAPTER_HPP
#define SSEPP_REDIS_DETAIL_ASIO_ADAPTER_HPP

#include <ssepp/redis/detail/hiredis.hpp>

#include <ssepp/detail/asio.hpp>

#include <memory>
#include <system_error>

namespace ssepp::redis::detail {

/// Whoever owns a redisAsyncContext attached to an asio_watcher.
class link_owner {
public:
    /// After hiredis handled readiness (replies may have arrived; the context may be gone).
    virtual void after_io() = 0;
    /// From the cleanup hook, inside hiredis: `ac` is being freed.
    virtual void link_freed(redisAsyncContext* ac) = 0;

protected:
    ~link_owner() = default;
};

/// One context's socket in Asio's reactor. hiredis keeps a raw pointer to it (ac->ev.data)
/// until its cleanup hook; pending waits keep it alive past that, and find it detached.
class asio_watcher : public std::enable_shared_from_this<asio_watcher> {
public:
    asio_watcher(const asio::any_io_executor& ex, redisAsyncContext* ac, std::weak_ptr<link_owner> owner,
                 link_owner* raw_owner)
        : fd_(ex), ac_(ac), owner_(std::move(owner)), raw_owner_(raw_owner)
    {
    }

    /// Watches ac's socket and installs the hooks; nullptr (and nothing installed) when the
    /// reactor refuses the descriptor.
    static std::shared_ptr<asio_watcher> attach(const asio::any_io_executor& ex, redisAsyncContext* ac,
                                                std::weak_ptr<link_owner> owner, link_owner* raw_owner)
    {
        auto w = std::make_shared<asio_watcher>(ex, ac, std::move(owner), raw_owner);
        error_code ec;
        w->fd_.assign(ac->c.fd, ec);  // hiredis owns (and closes) the fd: released in cleanup()
        if (ec)
            return nullptr;
        ac->ev.data = w.get();
        ac->ev.addRead = &add_read;
        ac->ev.delRead = &del_read;
        ac->ev.addWrite = &add_write;
        ac->ev.delWrite = &del_write;
        ac->ev.cleanup = &cleanup;
        return w;
    }

private:
    static asio_watcher& self(void* p) { return *static_cast<asio_watcher*>(p); }
    static void add_read(void* p) { self(p).want(true, true); }
    static void del_read(void* p) { self(p).want_read_ = false; }
    static void add_write(void* p) { self(p).want(false, true); }
    static void del_write(void* p) { self(p).want_write_ = false; }

    static void cleanup(void* p)
    {
        asio_watcher& w = self(p);
        redisAsyncContext* ac = w.ac_;
        w.ac_ = nullptr;
        w.want_read_ = w.want_write_ = false;
        // Cancels the waits (they complete with operation_aborted) without closing the fd,
        // which redisFree closes right after this hook.
        if (w.fd_.is_open())
            (void)w.fd_.release();
        w.raw_owner_->link_freed(ac);  // last: the owner may drop its reference to *this
    }

    void want(bool read, bool on)
    {
        (read ? want_read_ : want_write_) = on;
        bool& busy = read ? reading_ : writing_;
        if (busy || ac_ == nullptr)
            return;
        busy = true;
        // A wait (not a speculative read): Asio re-arms the descriptor in epoll, so readiness
        // that came before the wait still completes it.
        fd_.async_wait(read ? asio::posix::stream_descriptor::wait_read : asio::posix::stream_descriptor::wait_write,
                       [w = shared_from_this(), read](error_code ec) { w->ready(read, ec); });
    }

    void ready(bool read, error_code ec)
    {
        (read ? reading_ : writing_) = false;
        if (ec == asio::error::operation_aborted || ac_ == nullptr)
            return;
        auto owner = owner_.lock();  // the owner outlives this call even if a handler drops it
        if (!owner || !(read ? want_read_ : want_write_))
            return;
        // Other errors: let hiredis meet them on the socket itself.
        if (read)
            redisAsyncHandleRead(ac_);  // re-arms through add_read, or frees the context
        else
            redisAsyncHandleWrite(ac_);
        owner->after_io();
    }

    asio::posix::stream_descriptor fd_;
    redisAsyncContext* ac_;
    std::weak_ptr<link_owner> owner_;
    link_owner* raw_owner_;
    bool want_read_ = false, want_write_ = false;
    bool reading_ = false, writing_ = false;
};

} // namespace ssepp::redis::detail

#endif
