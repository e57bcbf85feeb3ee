# cmake -DSOURCE_DIR=<ssepp source> -DBUILD_DIR=<dir> -DSTAGE_DIR=<dir> -DGENERATOR=<g>
#       [-DMAKE_PROGRAM=<p>] [-DCXX_COMPILER=<c>] -P stage.cmake
# Configures ssepp with SSEPP_ASIO=boost (nothing to build: header-only, tests and examples off)
# and installs it into a fresh STAGE_DIR with tests/cmake/install_stage.cmake, which checks the
# installed tree. Setup fixture of ssepp.consumer_boost_find_package.
cmake_minimum_required(VERSION 3.21)
foreach(var IN ITEMS SOURCE_DIR BUILD_DIR STAGE_DIR GENERATOR)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "stage.cmake: pass -D${var}=...")
  endif()
endforeach()
file(REMOVE_RECURSE "${BUILD_DIR}")
set(configure "${CMAKE_COMMAND}" -S "${SOURCE_DIR}" -B "${BUILD_DIR}" -G "${GENERATOR}"
    -DCMAKE_BUILD_TYPE=Release -DSSEPP_ASIO=boost -DSSEPP_INSTALL=ON -DSSEPP_BUILD_TESTS=OFF
    -DSSEPP_BUILD_EXAMPLES=OFF -DSSEPP_BUILD_BENCHMARKS=OFF)
if(MAKE_PROGRAM)
  list(APPEND configure "-DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM}")
endif()
if(CXX_COMPILER)
  list(APPEND configure "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}")
endif()
execute_process(COMMAND ${configure} COMMAND_ERROR_IS_FATAL ANY)
execute_process(COMMAND "${CMAKE_COMMAND}" "-DSOURCE_DIR=${SOURCE_DIR}" "-DBUILD_DIR=${BUILD_DIR}"
                        "-DSTAGE_DIR=${STAGE_DIR}"
                        -P "${SOURCE_DIR}/tests/cmake/install_stage.cmake"
                COMMAND_ERROR_IS_FATAL ANY)
