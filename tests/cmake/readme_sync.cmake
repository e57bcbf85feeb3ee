# Fails when README.md's copy of examples/hello/hello.cpp differs from the file.
cmake_minimum_required(VERSION 3.21)
file(READ "${SOURCE_DIR}/README.md" readme)
file(READ "${SOURCE_DIR}/examples/hello/hello.cpp" hello)
string(FIND "${readme}" "<!-- hello.cpp:begin -->\n```cpp\n${hello}```\n<!-- hello.cpp:end -->" at)
if(at EQUAL -1)
  message(FATAL_ERROR "README.md's quick start is not examples/hello/hello.cpp verbatim")
endif()
