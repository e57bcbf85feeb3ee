// tests/support/asio_ssl.hpp
// support/asio.hpp with Asio's TLS streams (OpenSSL), for the tests that need them.
#pragma once

#include "asio.hpp"

#ifdef SSEPP_USE_BOOST_ASIO
#include <boost/asio/ssl.hpp>
#else
#include <asio/ssl.hpp>
#endif
