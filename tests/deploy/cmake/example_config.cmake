# deploy/nginx/ssepp.conf (the readable example) must be deploy/nginx/ssepp.conf.template with
# the example values below, so that what the deployment test runs and what a reader copies do
# not drift apart. On a mismatch, the expected file is written next to the build's output.
if(NOT DEFINED DEPLOY_NGINX_DIR)
  message(FATAL_ERROR "example_config.cmake: -DDEPLOY_NGINX_DIR=... is required")
endif()
set(values
  SSEPP_LISTEN 443
  SSEPP_SERVER_NAME notify.example.com
  SSEPP_CERT /etc/ssl/certs/notify.example.com.pem
  SSEPP_KEY /etc/ssl/private/notify.example.com.key
  SSEPP_NODE_A 127.0.0.1:8081
  SSEPP_NODE_B 127.0.0.1:8082)
file(READ ${DEPLOY_NGINX_DIR}/ssepp.conf.template text)
while(values)
  list(POP_FRONT values name value)
  string(FIND "${text}" "\${${name}}" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "deploy.example_config: the template has no \${${name}}")
  endif()
  string(REPLACE "\${${name}}" "${value}" text "${text}")
endwhile()
if(text MATCHES "\\\${SSEPP_[A-Z0-9_]+}")
  message(FATAL_ERROR "deploy.example_config: the template has a placeholder without an example value: ${CMAKE_MATCH_0}")
endif()
file(READ ${DEPLOY_NGINX_DIR}/ssepp.conf example)
if(NOT example STREQUAL text)
  file(WRITE ${CMAKE_CURRENT_BINARY_DIR}/ssepp.conf.expected "${text}")
  message(FATAL_ERROR "deploy.example_config: deploy/nginx/ssepp.conf differs from the template filled with the "
                      "example values; the expected file is ${CMAKE_CURRENT_BINARY_DIR}/ssepp.conf.expected")
endif()
message(STATUS "deploy/nginx/ssepp.conf is the template with the example values")
