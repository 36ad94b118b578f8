cmake_minimum_required(VERSION 3.25)
# Runs at install time (install(CODE)): configure BB_IN with the prefix of
# this install and install it into BB_DEST. BB_DIRS holds NAME=dir pairs
# (relative to the prefix, or absolute); each becomes @NAME@, absolute.
foreach(pair IN LISTS BB_DIRS)
  string(REGEX MATCH "^([A-Z_]+)=(.*)$" _ "${pair}")
  set(dir "${CMAKE_MATCH_2}")
  if(NOT IS_ABSOLUTE "${dir}")
    set(dir "${CMAKE_INSTALL_PREFIX}/${dir}")
  endif()
  set(${CMAKE_MATCH_1} "${dir}")
endforeach()
configure_file("${BB_IN}" "${BB_OUT}" @ONLY)
if(IS_ABSOLUTE "${BB_DEST}")
  set(dest "${BB_DEST}")
else()
  set(dest "${CMAKE_INSTALL_PREFIX}/${BB_DEST}")
endif()
file(INSTALL "${BB_OUT}" DESTINATION "${dest}")
