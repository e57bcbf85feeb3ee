# Packaging tests (label "packaging"): small projects that use ssepp the three ways a user can,
# each configured, built and run by `ctest --build-and-test` with this build's compiler and
# generator. They build one main.cpp each, never ssepp's own tests.
#   ssepp.consumer_add_subdirectory  tests/consumer_subdir, add_subdirectory() of the source tree
#   ssepp.install_stage              cmake --install of this build into a fresh <build>/stage
#   ssepp.consumer_find_package      tests/consumer_find_package against that stage
#   ssepp.vcpkg_port_install         ports/ssepp/portfile.cmake replayed by hand (this machine
#                                    cannot run vcpkg) into <build>/packaging/vcpkg/installed
#   ssepp.consumer_vcpkg             tests/consumer_find_package against that tree
# and, when this build has ssepp::redis (hiredis found), tests/consumer_redis, a user of
# find_package(ssepp CONFIG REQUIRED COMPONENTS redis) -> ssepp::redis:
#   ssepp.consumer_redis_add_subdirectory, ssepp.consumer_redis_find_package (the stage),
#   ssepp.consumer_redis_vcpkg (the port replayed with its redis feature, as ssepp[redis])
# and the codec alone (tests/consumer_codec) and the Boost.Asio flavour (tests/consumer_boost):
# see the end of this file.

set(_ssepp_pkg "${PROJECT_BINARY_DIR}/packaging")
set(_ssepp_build_and_test
  --build-generator "${CMAKE_GENERATOR}"
  --build-makeprogram "${CMAKE_MAKE_PROGRAM}")
set(_ssepp_consumer_options "-DCMAKE_CXX_COMPILER=${CMAKE_CXX_COMPILER}")
if(CMAKE_CXX_COMPILER_LAUNCHER)
  list(APPEND _ssepp_consumer_options "-DCMAKE_CXX_COMPILER_LAUNCHER=${CMAKE_CXX_COMPILER_LAUNCHER}")
endif()
if(CMAKE_VERSION VERSION_GREATER_EQUAL 3.24)
  # A fresh cache each run: a value cached by an earlier run must not hide a changed default.
  list(APPEND _ssepp_consumer_options --fresh)
endif()

# ssepp_consumer_test(<name> <project dir> <build dir> <configure options>...)
function(ssepp_consumer_test name project_dir build_dir)
  add_test(NAME ${name}
    COMMAND "${CMAKE_CTEST_COMMAND}" --build-and-test "${project_dir}" "${build_dir}"
      ${_ssepp_build_and_test}
      --build-options ${_ssepp_consumer_options} ${ARGN}
      --test-command consumer)
  set_tests_properties(${name} PROPERTIES LABELS packaging)
endfunction()

ssepp_consumer_test(ssepp.consumer_add_subdirectory
  "${CMAKE_CURRENT_LIST_DIR}/consumer_subdir" "${_ssepp_pkg}/consumer_subdir"
  "-DSSEPP_SOURCE_DIR=${PROJECT_SOURCE_DIR}")

if(SSEPP_INSTALL)
  add_test(NAME ssepp.install_stage
    COMMAND "${CMAKE_COMMAND}" "-DSOURCE_DIR=${PROJECT_SOURCE_DIR}"
      "-DBUILD_DIR=${PROJECT_BINARY_DIR}" "-DSTAGE_DIR=${PROJECT_BINARY_DIR}/stage"
      -P "${CMAKE_CURRENT_LIST_DIR}/cmake/install_stage.cmake")
  set_tests_properties(ssepp.install_stage PROPERTIES
    LABELS packaging FIXTURES_SETUP ssepp_stage)

  ssepp_consumer_test(ssepp.consumer_find_package
    "${CMAKE_CURRENT_LIST_DIR}/consumer_find_package" "${_ssepp_pkg}/consumer_find_package"
    "-DCMAKE_PREFIX_PATH=${PROJECT_BINARY_DIR}/stage"
    "-DSSEPP_EXPECTED_PREFIX=${PROJECT_BINARY_DIR}/stage")
  set_tests_properties(ssepp.consumer_find_package PROPERTIES FIXTURES_REQUIRED ssepp_stage)

  add_test(NAME ssepp.vcpkg_port_install
    COMMAND "${CMAKE_COMMAND}" "-DSOURCE_DIR=${PROJECT_SOURCE_DIR}"
      "-DBUILD_DIR=${_ssepp_pkg}/vcpkg/build" "-DPREFIX=${_ssepp_pkg}/vcpkg/installed"
      "-DGENERATOR=${CMAKE_GENERATOR}" "-DMAKE_PROGRAM=${CMAKE_MAKE_PROGRAM}"
      "-DCXX_COMPILER=${CMAKE_CXX_COMPILER}" "-DFEATURES=$<$<TARGET_EXISTS:ssepp_redis>:redis>"
      -P "${CMAKE_CURRENT_LIST_DIR}/cmake/vcpkg_port_install.cmake")
  set_tests_properties(ssepp.vcpkg_port_install PROPERTIES
    LABELS packaging FIXTURES_SETUP ssepp_vcpkg)

  # vcpkg's toolchain puts installed/<triplet> on CMAKE_PREFIX_PATH; so does this test.
  ssepp_consumer_test(ssepp.consumer_vcpkg
    "${CMAKE_CURRENT_LIST_DIR}/consumer_find_package" "${_ssepp_pkg}/consumer_vcpkg"
    "-DCMAKE_PREFIX_PATH=${_ssepp_pkg}/vcpkg/installed"
    "-DSSEPP_EXPECTED_PREFIX=${_ssepp_pkg}/vcpkg/installed")
  set_tests_properties(ssepp.consumer_vcpkg PROPERTIES FIXTURES_REQUIRED ssepp_vcpkg)
endif()

if(TARGET ssepp_redis)
  ssepp_consumer_test(ssepp.consumer_redis_add_subdirectory
    "${CMAKE_CURRENT_LIST_DIR}/consumer_redis" "${_ssepp_pkg}/consumer_redis_subdir"
    "-DSSEPP_SOURCE_DIR=${PROJECT_SOURCE_DIR}")
  if(SSEPP_INSTALL)
    ssepp_consumer_test(ssepp.consumer_redis_find_package
      "${CMAKE_CURRENT_LIST_DIR}/consumer_redis" "${_ssepp_pkg}/consumer_redis_find_package"
      "-DCMAKE_PREFIX_PATH=${PROJECT_BINARY_DIR}/stage"
      "-DSSEPP_EXPECTED_PREFIX=${PROJECT_BINARY_DIR}/stage")
    set_tests_properties(ssepp.consumer_redis_find_package PROPERTIES FIXTURES_REQUIRED ssepp_stage)
    ssepp_consumer_test(ssepp.consumer_redis_vcpkg
      "${CMAKE_CURRENT_LIST_DIR}/consumer_redis" "${_ssepp_pkg}/consumer_redis_vcpkg"
      "-DCMAKE_PREFIX_PATH=${_ssepp_pkg}/vcpkg/installed"
      "-DSSEPP_EXPECTED_PREFIX=${_ssepp_pkg}/vcpkg/installed")
    set_tests_properties(ssepp.consumer_redis_vcpkg PROPERTIES FIXTURES_REQUIRED ssepp_vcpkg)
  endif()
endif()

# The codec alone (tests/consumer_codec): find_package(ssepp COMPONENTS codec) -> ssepp::codec,
# with Asio and Boost unfindable, and a main.cpp that does not compile if a codec header includes
# either: ssepp.consumer_codec_find_package (the stage), ssepp.consumer_codec_vcpkg.
if(SSEPP_INSTALL)
  ssepp_consumer_test(ssepp.consumer_codec_find_package
    "${CMAKE_CURRENT_LIST_DIR}/consumer_codec" "${_ssepp_pkg}/consumer_codec_find_package"
    "-DCMAKE_PREFIX_PATH=${PROJECT_BINARY_DIR}/stage"
    "-DSSEPP_EXPECTED_PREFIX=${PROJECT_BINARY_DIR}/stage")
  set_tests_properties(ssepp.consumer_codec_find_package PROPERTIES FIXTURES_REQUIRED ssepp_stage)
  ssepp_consumer_test(ssepp.consumer_codec_vcpkg
    "${CMAKE_CURRENT_LIST_DIR}/consumer_codec" "${_ssepp_pkg}/consumer_codec_vcpkg"
    "-DCMAKE_PREFIX_PATH=${_ssepp_pkg}/vcpkg/installed"
    "-DSSEPP_EXPECTED_PREFIX=${_ssepp_pkg}/vcpkg/installed")
  set_tests_properties(ssepp.consumer_codec_vcpkg PROPERTIES FIXTURES_REQUIRED ssepp_vcpkg)
endif()

# The Boost.Asio flavour (tests/consumer_boost), whenever Boost >= 1.79 is installed and this
# build is the standalone flavour, so that every build compiles (and runs) ssepp against
# Boost.Asio, redis headers included when hiredis is there:
#   ssepp.consumer_boost_add_subdirectory  add_subdirectory() with SSEPP_ASIO=boost
#   ssepp.install_stage_boost              a Boost-flavour configure installed to <build>/stage-boost
#   ssepp.consumer_boost_find_package      against that stage: sseppConfig.cmake finds Boost
if(NOT SSEPP_ASIO STREQUAL "boost")
  find_package(Boost 1.79 CONFIG QUIET COMPONENTS headers)
endif()
if(SSEPP_ASIO STREQUAL "boost" OR Boost_FOUND)
  ssepp_consumer_test(ssepp.consumer_boost_add_subdirectory
    "${CMAKE_CURRENT_LIST_DIR}/consumer_boost" "${_ssepp_pkg}/consumer_boost_subdir"
    "-DSSEPP_SOURCE_DIR=${PROJECT_SOURCE_DIR}")
  add_test(NAME ssepp.install_stage_boost
    COMMAND "${CMAKE_COMMAND}" "-DSOURCE_DIR=${PROJECT_SOURCE_DIR}"
      "-DBUILD_DIR=${_ssepp_pkg}/boost_build" "-DSTAGE_DIR=${PROJECT_BINARY_DIR}/stage-boost"
      "-DGENERATOR=${CMAKE_GENERATOR}" "-DMAKE_PROGRAM=${CMAKE_MAKE_PROGRAM}"
      "-DCXX_COMPILER=${CMAKE_CXX_COMPILER}"
      -P "${CMAKE_CURRENT_LIST_DIR}/consumer_boost/stage.cmake")
  set_tests_properties(ssepp.install_stage_boost PROPERTIES
    LABELS packaging FIXTURES_SETUP ssepp_stage_boost)
  ssepp_consumer_test(ssepp.consumer_boost_find_package
    "${CMAKE_CURRENT_LIST_DIR}/consumer_boost" "${_ssepp_pkg}/consumer_boost_find_package"
    "-DCMAKE_PREFIX_PATH=${PROJECT_BINARY_DIR}/stage-boost"
    "-DSSEPP_EXPECTED_PREFIX=${PROJECT_BINARY_DIR}/stage-boost")
  set_tests_properties(ssepp.consumer_boost_find_package PROPERTIES FIXTURES_REQUIRED ssepp_stage_boost)
  # ssepp[boost]: the port replayed with its boost feature, and consumer_boost against it.
  if(SSEPP_INSTALL)
    add_test(NAME ssepp.vcpkg_port_install_boost
      COMMAND "${CMAKE_COMMAND}" "-DSOURCE_DIR=${PROJECT_SOURCE_DIR}"
        "-DBUILD_DIR=${_ssepp_pkg}/vcpkg_boost/build" "-DPREFIX=${_ssepp_pkg}/vcpkg_boost/installed"
        "-DGENERATOR=${CMAKE_GENERATOR}" "-DMAKE_PROGRAM=${CMAKE_MAKE_PROGRAM}"
        "-DCXX_COMPILER=${CMAKE_CXX_COMPILER}" "-DFEATURES=boost"
        -P "${CMAKE_CURRENT_LIST_DIR}/cmake/vcpkg_port_install.cmake")
    set_tests_properties(ssepp.vcpkg_port_install_boost PROPERTIES
      LABELS packaging FIXTURES_SETUP ssepp_vcpkg_boost)
    ssepp_consumer_test(ssepp.consumer_boost_vcpkg
      "${CMAKE_CURRENT_LIST_DIR}/consumer_boost" "${_ssepp_pkg}/consumer_boost_vcpkg"
      "-DCMAKE_PREFIX_PATH=${_ssepp_pkg}/vcpkg_boost/installed"
      "-DSSEPP_EXPECTED_PREFIX=${_ssepp_pkg}/vcpkg_boost/installed")
    set_tests_properties(ssepp.consumer_boost_vcpkg PROPERTIES FIXTURES_REQUIRED ssepp_vcpkg_boost)
  endif()
endif()
