// ssepp/detail/small_mutex.hpp
// A 4-byte mutex for per-connection state: std::mutex is 40 bytes, and a server holds one
// per idle connection. Uncontended lock/unlock is one atomic operation; waiters sleep on the
// futex behind std::atomic::wait, never spin for long.
// SPDX-License-Identifier: BSL-1.0
#ifndef SSEPP_DETAIL_SMALL_MUTEX_HPP
#define SSEPP_DETAIL_SMALL_MUTEX_HPP

#include <atomic>
#include <cstdint>

namespace ssepp::detail {

class small_mutex {
public:
    small_mutex() = default;
    small_mutex(const small_mutex&) = delete;
    small_mutex& operator=(const small_mutex&) = delete;

    bool try_lock() noexcept
    {
        std::uint32_t expected = unlocked;
        return state_.compare_exchange_strong(expected, locked, std::memory_order_acquire,
                                              std::memory_order_relaxed);
    }

    void lock() noexcept
    {
        // Critical sections here are a few dozen instructions: a short spin usually wins.
        for (int i = 0; i < 100; ++i) {
            if (try_lock())
                return;
            if (state_.load(std::memory_order_relaxed) == contended)
                break;
        }
        // Mark it contended, then sleep until it is released (Drepper, "Futexes Are Tricky").
        while (state_.exchange(contended, std::memory_order_acquire) != unlocked)
            state_.wait(contended, std::memory_order_relaxed);
    }

    void unlock() noexcept
    {
        if (state_.exchange(unlocked, std::memory_order_release) == contended)
            state_.notify_one();
    }

private:
    static constexpr std::uint32_t unlocked = 0, locked = 1, contended = 2;
    std::atomic<std::uint32_t> state_{unlocked};
};

} // namespace ssepp::detail

#endif
