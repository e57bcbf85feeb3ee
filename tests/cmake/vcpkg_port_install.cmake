# cmake -DSOURCE_DIR=<ssepp source> -DBUILD_DIR=<dir> -DPREFIX=<dir> -DGENERATOR=<g>
#       [-DMAKE_PROGRAM=<p>] [-DCXX_COMPILER=<c>] [-DFEATURES=<feature;...>] -P vcpkg_port_install.cmake
#
# This machine cannot run vcpkg, so this script replays ports/ssepp/portfile.cmake by hand into
# PREFIX, which then looks as vcpkg's installed/<triplet> tree would for ssepp alone:
#   vcpkg_check_features   -> -D<option>=ON for each of the portfile's feature/option pairs whose
#                             feature is in FEATURES (as `vcpkg install ssepp[redis]`), =OFF else
#   vcpkg_cmake_configure  -> a fresh Release configure (VCPKG_BUILD_TYPE release) of the source
#                             tree with the -DSSEPP_* OPTIONS read from the portfile itself, plus
#                             the two vcpkg defaults that matter to install rules:
#                             CMAKE_ERROR_ON_ABSOLUTE_INSTALL_DESTINATION=ON, CMAKE_INSTALL_LIBDIR=lib
#   vcpkg_cmake_install    -> build the `install` target
#   vcpkg_cmake_config_fixup(PACKAGE_NAME ssepp CONFIG_PATH share/cmake/ssepp)
#                          -> move share/cmake/ssepp/* to share/ssepp, delete share/cmake, and
#                             re-point the files' relative climb to the prefix (_IMPORT_PREFIX,
#                             PACKAGE_PREFIX_DIR) from three levels up to two, as vcpkg does
#   vcpkg_install_copyright, file(INSTALL usage) -> share/ssepp/copyright, share/ssepp/usage
# Not emulated: the vcpkg toolchain and vcpkg's own asio and fmt (Debian's are used; vcpkg's asio
# brings an asio-config.cmake, which Findasio.cmake prefers), the triplet's flags, and
# config_fixup's patching of absolute paths: instead the tree must contain none.
# Then checks what vcpkg's post-build checks would: copyright present, no empty directories.
cmake_minimum_required(VERSION 3.21) # policies as in a project: the version file needs CMP0012
foreach(var IN ITEMS SOURCE_DIR BUILD_DIR PREFIX GENERATOR)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "vcpkg_port_install.cmake: pass -D${var}=...")
  endif()
endforeach()
set(port_dir "${SOURCE_DIR}/ports/ssepp")

# vcpkg_cmake_configure
file(READ "${port_dir}/portfile.cmake" portfile)
string(REGEX MATCHALL "-DSSEPP_[A-Z_]+=[A-Za-z0-9]+" port_options "${portfile}")
if(NOT port_options)
  message(FATAL_ERROR "No -DSSEPP_* options found in ${port_dir}/portfile.cmake")
endif()
# vcpkg_check_features(OUT_FEATURE_OPTIONS ... FEATURES <feature> <option>...): each feature
# must be one that vcpkg.json declares.
file(READ "${port_dir}/vcpkg.json" manifest)
if(portfile MATCHES "vcpkg_check_features\\(([^)]*)\\)")
  string(REGEX REPLACE "^.*[ \t\n]FEATURES[ \t\n]+" "" pairs "${CMAKE_MATCH_1}")
  string(REGEX REPLACE "[ \t\n]+" ";" pairs "${pairs}")
  list(REMOVE_ITEM pairs "")
  list(LENGTH pairs n)
  math(EXPR last "${n} - 1")
  foreach(i RANGE 0 ${last} 2)
    math(EXPR j "${i} + 1")
    list(GET pairs ${i} feature)
    list(GET pairs ${j} option)
    string(JSON declared ERROR_VARIABLE undeclared GET "${manifest}" features "${feature}")
    if(undeclared)
      message(FATAL_ERROR "portfile.cmake maps feature '${feature}', which vcpkg.json does not declare")
    endif()
    if(feature IN_LIST FEATURES)
      list(APPEND port_options "-D${option}=ON")
    else()
      list(APPEND port_options "-D${option}=OFF")
    endif()
  endforeach()
endif()
# The boost feature picks the Asio flavour (a choice, not an ON/OFF option: outside
# vcpkg_check_features, so set here as the portfile sets it).
if("boost" IN_LIST FEATURES)
  list(APPEND port_options -DSSEPP_ASIO=boost)
endif()
message(STATUS "Port options: ${port_options}")
file(REMOVE_RECURSE "${BUILD_DIR}" "${PREFIX}")
set(configure "${CMAKE_COMMAND}" -S "${SOURCE_DIR}" -B "${BUILD_DIR}" -G "${GENERATOR}"
    -DCMAKE_BUILD_TYPE=Release "-DCMAKE_INSTALL_PREFIX=${PREFIX}"
    -DCMAKE_ERROR_ON_ABSOLUTE_INSTALL_DESTINATION=ON -DCMAKE_INSTALL_LIBDIR:STRING=lib
    ${port_options})
if(MAKE_PROGRAM)
  list(APPEND configure "-DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM}")
endif()
if(CXX_COMPILER)
  list(APPEND configure "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}")
endif()
execute_process(COMMAND ${configure} OUTPUT_VARIABLE out ERROR_VARIABLE err
                RESULT_VARIABLE failed)
message("${out}${err}")
if(failed)
  message(FATAL_ERROR "configure failed")
endif()
# vcpkg warns about options the project never reads: a stale option in the portfile.
string(FIND "${err}" "Manually-specified variables were not used by the project" at)
if(at GREATER -1)
  string(SUBSTRING "${err}" ${at} -1 unused_text)
  foreach(option IN LISTS port_options)
    string(REGEX MATCH "^-D([A-Z_]+)" _ "${option}")
    if(unused_text MATCHES "\n[ \t]+${CMAKE_MATCH_1}\n")
      message(FATAL_ERROR "portfile.cmake passes ${option}, which the project does not use")
    endif()
  endforeach()
endif()
# The port declares only asio and fmt: whatever would need more (Catch2...) must be off.
file(STRINGS "${BUILD_DIR}/CMakeCache.txt" switched_on REGEX "^SSEPP_BUILD_[A-Z_]+:BOOL=(ON|TRUE|1)$")
if(switched_on)
  message(FATAL_ERROR "The port build turns on ${switched_on}; add -D...=OFF to portfile.cmake")
endif()

# vcpkg_cmake_install
execute_process(COMMAND "${CMAKE_COMMAND}" --build "${BUILD_DIR}" --config Release --target install
                COMMAND_ERROR_IS_FATAL ANY)

# vcpkg_cmake_config_fixup(PACKAGE_NAME ssepp CONFIG_PATH share/cmake/ssepp)
set(config_dir "${PREFIX}/share/ssepp")
file(GLOB config_files "${PREFIX}/share/cmake/ssepp/*")
if(NOT config_files)
  message(FATAL_ERROR "Nothing installed in share/cmake/ssepp, the portfile's CONFIG_PATH")
endif()
file(COPY ${config_files} DESTINATION "${config_dir}")
file(REMOVE_RECURSE "${PREFIX}/share/cmake")
file(GLOB config_files "${config_dir}/*.cmake")
foreach(file IN LISTS config_files)
  file(READ "${file}" text)
  # The export file climbs one get_filename_component(... PATH) per level, the config file one
  # ../ per level: keep two levels, share/ssepp.
  set(up [[get_filename_component(_IMPORT_PREFIX "${_IMPORT_PREFIX}" PATH)]])
  string(REGEX REPLACE "(get_filename_component\\(_IMPORT_PREFIX \"\\\${_IMPORT_PREFIX}\" PATH\\)\n)+"
         "${up}\n${up}\n" text "${text}")
  string(REGEX REPLACE "(PACKAGE_PREFIX_DIR \"\\\${CMAKE_CURRENT_LIST_DIR}/)(\\.\\./)+\""
         "\\1../../\"" text "${text}")
  file(WRITE "${file}" "${text}")
endforeach()

# vcpkg_install_copyright(FILE_LIST LICENSE) and the usage file
file(COPY_FILE "${SOURCE_DIR}/LICENSE" "${config_dir}/copyright")
file(COPY_FILE "${port_dir}/usage" "${config_dir}/usage")

# What vcpkg's post-build checks and our consumers need.
include("${CMAKE_CURRENT_LIST_DIR}/check_install_tree.cmake")
ssepp_check_install_tree("${PREFIX}" share/ssepp "${SOURCE_DIR}"
                         "${SOURCE_DIR}" "${BUILD_DIR}" "${PREFIX}")
file(GLOB_RECURSE dirs LIST_DIRECTORIES true "${PREFIX}/*")
foreach(dir IN LISTS dirs)
  file(GLOB entries "${dir}/*")
  if(IS_DIRECTORY "${dir}" AND NOT entries)
    message(FATAL_ERROR "vcpkg rejects empty directories: ${dir}")
  endif()
endforeach()

# vcpkg.json repeats the version that include/ssepp/version.hpp defines.
file(READ "${port_dir}/vcpkg.json" manifest)
foreach(key IN ITEMS version-semver version version-string)
  string(JSON port_version ERROR_VARIABLE no_key GET "${manifest}" ${key})
  if(NOT no_key)
    break()
  endif()
endforeach()
include("${config_dir}/sseppConfigVersion.cmake")
if(NOT port_version STREQUAL PACKAGE_VERSION)
  message(FATAL_ERROR "ports/ssepp/vcpkg.json says version ${port_version}, the package ${PACKAGE_VERSION}")
endif()
