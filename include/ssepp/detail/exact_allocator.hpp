// ssepp/detail/exact_allocator.hpp
// An allocator that asks operator new for exactly the size needed. Asio's default reuses
// per-thread blocks, which suits short operations; but an operation that waits as long as its
// connection lives may then keep a block sized for something larger (~100 B per connection).
// SPDX-License-Identifier: BSL-1.0
#ifndef SSEPP_DETAIL_EXACT_ALLOCATOR_HPP
#define SSEPP_DETAIL_EXACT_ALLOCATOR_HPP

#include <cstddef>
#include <new>

namespace ssepp::detail {

template <class T>
struct exact_allocator {
    using value_type = T;

    exact_allocator() noexcept = default;
    template <class U>
    exact_allocator(const exact_allocator<U>&) noexcept
    {
    }

    T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T))); }
    void deallocate(T* p, std::size_t) noexcept { ::operator delete(p); }

    template <class U>
    bool operator==(const exact_allocator<U>&) const noexcept
    {
        return true;
    }
};

} // namespace ssepp::detail

#endif
