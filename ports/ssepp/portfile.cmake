# In-repo overlay port: builds the checked-out tree (vcpkg install ssepp --overlay-ports=ports).
# vcpkg's binary cache keys on these port files, not on the tree: pass --no-binarycaching after
# changing the sources. An upstream port would use vcpkg_from_github(OUT_SOURCE_PATH SOURCE_PATH
# REPO <owner>/ssepp REF "v${VERSION}" SHA512 <sha512> HEAD_REF main) instead.
# tests/cmake/vcpkg_port_install.cmake replays this file (and reads its -DSSEPP_* options).
set(VCPKG_BUILD_TYPE release) # header-only
get_filename_component(SOURCE_PATH "${CMAKE_CURRENT_LIST_DIR}/../.." ABSOLUTE)

# Feature redis turns SSEPP_REDIS on (ssepp::redis, with vcpkg's hiredis); without it, off: never a
# hiredis found elsewhere on the machine.
vcpkg_check_features(OUT_FEATURE_OPTIONS FEATURE_OPTIONS
    FEATURES
        redis SSEPP_REDIS
)

# Feature boost compiles ssepp against Boost.Asio (vcpkg's boost-asio) instead of standalone
# Asio: SSEPP_ASIO is a choice, not an ON/OFF option, hence not in vcpkg_check_features.
set(SSEPP_ASIO_FLAVOUR standalone)
if("boost" IN_LIST FEATURES)
    set(SSEPP_ASIO_FLAVOUR boost)
endif()

vcpkg_cmake_configure(
    SOURCE_PATH "${SOURCE_PATH}"
    OPTIONS
        ${FEATURE_OPTIONS}
        -DSSEPP_ASIO=${SSEPP_ASIO_FLAVOUR}
        -DSSEPP_BUILD_TESTS=OFF
        -DSSEPP_BUILD_EXAMPLES=OFF
        -DSSEPP_BUILD_BENCHMARKS=OFF
        -DSSEPP_INSTALL=ON
)
vcpkg_cmake_install()
vcpkg_cmake_config_fixup(PACKAGE_NAME ssepp CONFIG_PATH share/cmake/ssepp)

vcpkg_install_copyright(FILE_LIST "${SOURCE_PATH}/LICENSE")
file(INSTALL "${CMAKE_CURRENT_LIST_DIR}/usage" DESTINATION "${CURRENT_PACKAGES_DIR}/share/${PORT}")
