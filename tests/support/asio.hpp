// tests/support/asio.hpp
// The tests' Asio, in the flavour the library was built with (SSEPP_USE_BOOST_ASIO, see
// ssepp/detail/asio.hpp): the whole of it, and `asio::` naming it at global scope, so that one
// test source compiles against standalone Asio and Boost.Asio alike. TLS: support/asio_ssl.hpp.
#pragma once

#include <ssepp/detail/asio.hpp>

#ifdef SSEPP_USE_BOOST_ASIO
#include <boost/asio.hpp>
#include <boost/asio/use_future.hpp>
namespace asio = ::boost::asio;
namespace test {
inline constexpr bool boost_asio = true;  // for the few measurements that differ by flavour
}
#else
#include <asio.hpp>
#include <asio/use_future.hpp>
namespace test {
inline constexpr bool boost_asio = false;
}
#endif
