// ssepp/detail/asio.hpp
// The one place that chooses between standalone Asio and Boost.Asio. With SSEPP_USE_BOOST_ASIO
// defined (CMake: -DSSEPP_ASIO=boost), ssepp is compiled against Boost.Asio (Boost >= 1.79, whose
// Asio 1.22 matches the standalone Asio ssepp targets) and its error_code is Boost.System's, the
// type Beast's handlers take; otherwise against standalone Asio and std::error_code.
// Library code writes `asio::`, `error_code` and `system_error` inside namespace ssepp and
// includes Asio through this header only, so no other header knows the flavour.
// The codec (event, format, parser, event_source) does not include this header: it reports
// std::error_code, which Boost.System's error_code converts from and compares with.
// SPDX-License-Identifier: BSL-1.0
#ifndef SSEPP_DETAIL_ASIO_HPP
#define SSEPP_DETAIL_ASIO_HPP

#ifdef SSEPP_USE_BOOST_ASIO

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/associated_allocator.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/bind_allocator.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/error.hpp>
#include <boost/asio/execution_context.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/handler_continuation_hook.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/socket_base.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <boost/system/error_code.hpp>
#include <boost/system/system_error.hpp>
#include <boost/version.hpp>

static_assert(BOOST_VERSION >= 107900, "ssepp needs Boost >= 1.79 (Boost.Asio 1.22)");

namespace ssepp {
namespace asio = ::boost::asio;
using error_code = ::boost::system::error_code;
using error_condition = ::boost::system::error_condition;
using system_error = ::boost::system::system_error;
namespace detail {
using error_category_base = ::boost::system::error_category;
} // namespace detail
} // namespace ssepp

// Declares E (an enum in ssepp's namespaces) an error code enum of the flavour's error_code.
#define SSEPP_ERROR_CODE_ENUM(E)                                                                  \
    template <>                                                                                    \
    struct boost::system::is_error_code_enum<E> : std::true_type {};

#else

#include <asio/any_io_executor.hpp>
#include <asio/associated_allocator.hpp>
#include <asio/associated_executor.hpp>
#include <asio/async_result.hpp>
#include <asio/bind_allocator.hpp>
#include <asio/buffer.hpp>
#include <asio/dispatch.hpp>
#include <asio/error.hpp>
#include <asio/execution_context.hpp>
#include <asio/executor_work_guard.hpp>
#include <asio/handler_continuation_hook.hpp>
#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/posix/stream_descriptor.hpp>
#include <asio/post.hpp>
#include <asio/socket_base.hpp>
#include <asio/steady_timer.hpp>
#include <asio/write.hpp>

#include <system_error>

namespace ssepp {
namespace asio = ::asio;
using error_code = std::error_code;
using error_condition = std::error_condition;
using system_error = std::system_error;
namespace detail {
using error_category_base = std::error_category;
} // namespace detail
} // namespace ssepp

#define SSEPP_ERROR_CODE_ENUM(E)                                                                  \
    template <>                                                                                    \
    struct std::is_error_code_enum<E> : std::true_type {};

#endif

#include <type_traits>

namespace ssepp::detail {
// The throwing overloads of the connection layer: what the error_code overloads report, as the
// flavour's system_error (what Asio itself throws).
inline void throw_on_error(const error_code& ec, const char* what)
{
    if (ec)
        throw system_error(ec, what);
}
} // namespace ssepp::detail

#endif
