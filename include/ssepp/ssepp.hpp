// ssepp/ssepp.hpp
// The umbrella header: includes every public header of ssepp (nothing under detail/).
// SPDX-License-Identifier: BSL-1.0
#ifndef SSEPP_SSEPP_HPP
#define SSEPP_SSEPP_HPP

#include <ssepp/close_reason.hpp>
#include <ssepp/emitter.hpp>
#include <ssepp/error.hpp>
#include <ssepp/event.hpp>
#include <ssepp/event_source.hpp>
#include <ssepp/format.hpp>
#include <ssepp/frame.hpp>
#include <ssepp/history.hpp>
#include <ssepp/metrics.hpp>
#include <ssepp/parser.hpp>
#include <ssepp/registry.hpp>
#include <ssepp/request.hpp>
#include <ssepp/http_body.hpp>
#include <ssepp/transport.hpp>
#include <ssepp/version.hpp>

#endif
