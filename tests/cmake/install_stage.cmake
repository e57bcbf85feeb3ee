# cmake -DSOURCE_DIR=<ssepp source> -DBUILD_DIR=<ssepp build> -DSTAGE_DIR=<dir> -P install_stage.cmake
# Installs the build into a freshly wiped STAGE_DIR (a stale stage must not hide a broken install
# rule), then checks the installed tree. Setup fixture of ssepp.consumer_find_package.
cmake_minimum_required(VERSION 3.21) # policies as in a project: the version file needs CMP0012
foreach(var IN ITEMS SOURCE_DIR BUILD_DIR STAGE_DIR)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "install_stage.cmake: pass -D${var}=...")
  endif()
endforeach()

file(REMOVE_RECURSE "${STAGE_DIR}")
execute_process(COMMAND "${CMAKE_COMMAND}" --install "${BUILD_DIR}" --prefix "${STAGE_DIR}"
                COMMAND_ERROR_IS_FATAL ANY)

include("${CMAKE_CURRENT_LIST_DIR}/check_install_tree.cmake")
ssepp_check_install_tree("${STAGE_DIR}" share/cmake/ssepp "${SOURCE_DIR}"
                         "${SOURCE_DIR}" "${BUILD_DIR}")
