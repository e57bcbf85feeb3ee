# ssepp_check_install_tree(<prefix> <config dir, relative to prefix> <source dir> [<path>...])
# Fails (FATAL_ERROR) unless <prefix> holds an installed ssepp:
# - include/ holds exactly the files of the source tree's include/;
# - <config dir> holds sseppConfig.cmake, sseppConfigVersion.cmake, ssepp-targets.cmake and
#   Findasio.cmake, and the version file accepts a consumer of another pointer size
#   (ARCH_INDEPENDENT: a header-only package has no architecture);
# - share/doc/ssepp/LICENSE is installed;
# - no installed file mentions any of the extra <path>s (source, build or install dirs): the
#   package must be relocatable.
# Shared by install_stage.cmake and vcpkg_port_install.cmake.
function(ssepp_check_install_tree prefix config_dir source_dir)
  set(errors "")

  file(GLOB_RECURSE source_headers RELATIVE "${source_dir}/include" "${source_dir}/include/*")
  file(GLOB_RECURSE installed_headers RELATIVE "${prefix}/include" "${prefix}/include/*")
  list(SORT source_headers)
  list(SORT installed_headers)
  if(NOT source_headers STREQUAL installed_headers)
    set(missing ${source_headers})
    list(REMOVE_ITEM missing ${installed_headers} "")
    set(extra ${installed_headers})
    list(REMOVE_ITEM extra ${source_headers} "")
    list(APPEND errors "include/ differs from the source tree: missing [${missing}], extra [${extra}]")
  endif()

  foreach(file IN ITEMS sseppConfig.cmake sseppConfigVersion.cmake ssepp-targets.cmake
                        Findasio.cmake)
    if(NOT EXISTS "${prefix}/${config_dir}/${file}")
      list(APPEND errors "missing ${config_dir}/${file}")
    endif()
  endforeach()
  if(NOT EXISTS "${prefix}/share/doc/ssepp/LICENSE")
    list(APPEND errors "missing share/doc/ssepp/LICENSE")
  endif()

  set(version_file "${prefix}/${config_dir}/sseppConfigVersion.cmake")
  if(EXISTS "${version_file}")
    # Ask for the package's own version, as find_package would, from a "16-bit" project.
    include("${version_file}")
    set(PACKAGE_FIND_VERSION "${PACKAGE_VERSION}")
    string(REPLACE "." ";" parts "${PACKAGE_VERSION}")
    list(GET parts 0 PACKAGE_FIND_VERSION_MAJOR)
    list(GET parts 1 PACKAGE_FIND_VERSION_MINOR)
    list(GET parts 2 PACKAGE_FIND_VERSION_PATCH)
    set(PACKAGE_FIND_VERSION_COUNT 3)
    set(CMAKE_SIZEOF_VOID_P 2)
    unset(PACKAGE_VERSION_COMPATIBLE)
    unset(PACKAGE_VERSION_UNSUITABLE)
    include("${version_file}")
    if(NOT PACKAGE_VERSION_COMPATIBLE OR PACKAGE_VERSION_UNSUITABLE)
      list(APPEND errors "sseppConfigVersion.cmake is not ARCH_INDEPENDENT (or rejects its own "
                         "version): reports '${PACKAGE_VERSION}' as unsuitable")
    endif()
  endif()

  list(REMOVE_ITEM ARGN "")
  file(GLOB_RECURSE installed_files "${prefix}/*")
  # Programs (sse-cat) carry their build paths in debug info by design; the package's own
  # files (headers, CMake config) must not.
  list(FILTER installed_files EXCLUDE REGEX "^${prefix}/bin/")
  foreach(file IN LISTS installed_files)
    file(READ "${file}" text)
    foreach(path IN LISTS ARGN)
      string(FIND "${text}" "${path}" at)
      if(at GREATER -1)
        file(RELATIVE_PATH rel "${prefix}" "${file}")
        list(APPEND errors "${rel} contains the absolute path ${path}")
      endif()
    endforeach()
  endforeach()

  if(errors)
    list(JOIN errors "\n  " errors)
    message(FATAL_ERROR "Installed tree ${prefix} is wrong:\n  ${errors}")
  endif()
  message(STATUS "Installed tree ${prefix}: OK")
endfunction()
