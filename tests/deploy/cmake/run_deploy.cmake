# Runs tests/deploy's browser test: checks what it needs beyond the browser tests' own
# (nginx with HTTP/2, openssl, redis-server, notify_server with Redis), then hands over to
# tests/browser/cmake/run_node.cmake, which checks node, chromium and playwright-core and runs
# the script with the environment set here.
foreach(var NGINX OPENSSL REDIS_SERVER NOTIFY_REDIS DEPLOY_NGINX_DIR MAIN_CONF DEPLOY_DIR BROWSER_DIR)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "run_deploy.cmake: -D${var}=... is required")
  endif()
endforeach()
if(NOT NGINX OR NGINX MATCHES "NOTFOUND$" OR NOT EXISTS "${NGINX}")
  message(FATAL_ERROR "deploy tests: nginx not found; run scripts/deps.sh --tests (apt-get install nginx), then re-run cmake")
endif()
execute_process(COMMAND ${NGINX} -V ERROR_VARIABLE nginx_v OUTPUT_VARIABLE nginx_v_out RESULT_VARIABLE rv)
if(NOT rv EQUAL 0 OR NOT "${nginx_v}${nginx_v_out}" MATCHES "--with-http_v2_module")
  message(FATAL_ERROR "deploy tests: ${NGINX} has no HTTP/2 module (--with-http_v2_module); Debian's nginx has it")
endif()
if(NOT OPENSSL OR OPENSSL MATCHES "NOTFOUND$")
  message(FATAL_ERROR "deploy tests: openssl not found (it makes the test's certificate): apt-get install openssl")
endif()
if(NOT REDIS_SERVER OR REDIS_SERVER MATCHES "NOTFOUND$")
  message(FATAL_ERROR "deploy tests: redis-server not found; run scripts/deps.sh --tests (apt-get install redis-server)")
endif()
if(NOT NOTIFY_REDIS)
  message(FATAL_ERROR "deploy tests: notify_server is built without Redis support (ssepp::redis needs hiredis): "
                      "install libhiredis-dev (scripts/deps.sh), then re-run cmake")
endif()

set(ENV{SSEPP_NGINX} ${NGINX})
set(ENV{SSEPP_OPENSSL} ${OPENSSL})
set(ENV{SSEPP_REDIS_SERVER} ${REDIS_SERVER})
set(ENV{SSEPP_DEPLOY_NGINX_DIR} ${DEPLOY_NGINX_DIR})
set(ENV{SSEPP_DEPLOY_MAIN_CONF} ${MAIN_CONF})
set(ENV{SSEPP_DEPLOY_DIR} ${DEPLOY_DIR})
include(${BROWSER_DIR}/cmake/run_node.cmake)
