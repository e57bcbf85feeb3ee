// ssepp/version.hpp
// The library's version, one source of truth: CMake reads it from here.
// SPDX-License-Identifier: BSL-1.0
#ifndef SSEPP_VERSION_HPP
#define SSEPP_VERSION_HPP

#define SSEPP_VERSION_MAJOR 0
#define SSEPP_VERSION_MINOR 1
#define SSEPP_VERSION_PATCH 0
#define SSEPP_VERSION (SSEPP_VERSION_MAJOR * 10000 + SSEPP_VERSION_MINOR * 100 + SSEPP_VERSION_PATCH)

#endif
