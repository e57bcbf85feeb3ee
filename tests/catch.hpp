// tests/catch.hpp
// Catch2 v2 (Debian's 2.13) and v3 expose different headers; the tests include this one.
#pragma once
#if __has_include(<catch2/catch_test_macros.hpp>)
#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>
#else
#include <catch2/catch.hpp>
#endif
