# cmake -DIN=page.in -DOUT=page [-DKEYS=keys.roff] -DVERSION=x.y.z -P gen_man.cmake
cmake_minimum_required(VERSION 3.25)
# @VERSION@ becomes the version; a line @KEYS@ becomes the contents of KEYS.
file(READ "${IN}" text)
string(REPLACE "@VERSION@" "${VERSION}" text "${text}")
if(DEFINED KEYS)
  file(READ "${KEYS}" keys)
  string(REPLACE "@KEYS@\n" "${keys}" text "${text}")
endif()
if(text MATCHES "@[A-Z]+@")
  message(FATAL_ERROR "${IN}: unreplaced ${CMAKE_MATCH_0}")
endif()
file(WRITE "${OUT}" "${text}")
