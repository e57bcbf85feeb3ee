# Findhiredis.cmake: hiredis as the imported target hiredis::hiredis (for ssepp::redis).
# hiredis >= 1.0 (vcpkg's) ships a CMake config with that target: preferred when present.
# Debian's libhiredis-dev (0.14) ships a pkg-config file and a config without targets, so fall
# back to pkg-config's hints and find_path/find_library. Installed beside sseppConfig.cmake.
if(TARGET hiredis::hiredis)
  set(hiredis_FOUND TRUE)
  return()
endif()

find_package(hiredis CONFIG QUIET)
if(hiredis_FOUND AND TARGET hiredis::hiredis)
  return()
endif()
set(hiredis_FOUND FALSE)

find_package(PkgConfig QUIET)
if(PKG_CONFIG_FOUND)
  pkg_check_modules(PC_hiredis QUIET hiredis)
endif()
# pkg-config's include dir is .../include/hiredis; sources include <hiredis/hiredis.h>.
find_path(HIREDIS_INCLUDE_DIR hiredis/hiredis.h HINTS ${PC_hiredis_INCLUDEDIR}/.. ${PC_hiredis_INCLUDE_DIRS})
find_library(HIREDIS_LIBRARY NAMES hiredis HINTS ${PC_hiredis_LIBDIR} ${PC_hiredis_LIBRARY_DIRS})

if(HIREDIS_INCLUDE_DIR AND EXISTS "${HIREDIS_INCLUDE_DIR}/hiredis/hiredis.h")
  file(STRINGS "${HIREDIS_INCLUDE_DIR}/hiredis/hiredis.h" _hiredis_version_lines
       REGEX "^#define HIREDIS_(MAJOR|MINOR|PATCH) [0-9]+")
  foreach(_part MAJOR MINOR PATCH)
    string(REGEX MATCH "HIREDIS_${_part} ([0-9]+)" _ "${_hiredis_version_lines}")
    set(_hiredis_${_part} "${CMAKE_MATCH_1}")
  endforeach()
  set(hiredis_VERSION "${_hiredis_MAJOR}.${_hiredis_MINOR}.${_hiredis_PATCH}")
endif()

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(hiredis
  REQUIRED_VARS HIREDIS_LIBRARY HIREDIS_INCLUDE_DIR
  VERSION_VAR hiredis_VERSION)

if(hiredis_FOUND AND NOT TARGET hiredis::hiredis)
  add_library(hiredis::hiredis UNKNOWN IMPORTED)
  set_target_properties(hiredis::hiredis PROPERTIES
    IMPORTED_LOCATION "${HIREDIS_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${HIREDIS_INCLUDE_DIR}")
endif()
mark_as_advanced(HIREDIS_INCLUDE_DIR HIREDIS_LIBRARY)
