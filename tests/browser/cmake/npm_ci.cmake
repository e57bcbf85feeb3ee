# ctest fixture: node_modules for the browser tests, from package-lock.json, in NODE_DIR (the
# build tree). `npm ci` runs only when the lockfile differs from the one last installed, so
# later runs need no network; the first one needs the npm registry (or npm's cache).
foreach(var NPM NODE SOURCE_DIR NODE_DIR)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "npm_ci.cmake: -D${var}=... is required")
  endif()
endforeach()
if(NOT NODE OR NODE MATCHES "NOTFOUND$")
  message(FATAL_ERROR "browser tests: node not found; run scripts/deps.sh --tests (Node.js 18 or later, and npm), then re-run cmake")
endif()
if(NOT NPM OR NPM MATCHES "NOTFOUND$")
  message(FATAL_ERROR "browser tests: npm not found; run scripts/deps.sh --tests (Debian packages npm apart from nodejs), then re-run cmake")
endif()

file(MAKE_DIRECTORY ${NODE_DIR})
set(lock ${SOURCE_DIR}/package-lock.json)
set(installed ${NODE_DIR}/installed-package-lock.json)
if(EXISTS ${installed} AND EXISTS ${NODE_DIR}/node_modules/playwright-core/package.json)
  file(SHA256 ${lock} want)
  file(SHA256 ${installed} have)
  if(want STREQUAL have)
    message(STATUS "browser tests: node_modules up to date with package-lock.json")
    return()
  endif()
endif()

file(REMOVE ${installed})
configure_file(${SOURCE_DIR}/package.json ${NODE_DIR}/package.json COPYONLY)
configure_file(${lock} ${NODE_DIR}/package-lock.json COPYONLY)
execute_process(
  COMMAND ${NPM} ci --no-audit --no-fund --prefer-offline --ignore-scripts
  WORKING_DIRECTORY ${NODE_DIR}
  RESULT_VARIABLE rv)
if(NOT rv EQUAL 0)
  message(FATAL_ERROR "browser tests: 'npm ci' in ${NODE_DIR} failed (${rv}): the npm registry or npm's cache is needed once")
endif()
configure_file(${lock} ${installed} COPYONLY)
