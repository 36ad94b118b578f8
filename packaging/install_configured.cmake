cmake_minimum_required(VERSION 3.25)
# Runs at install time (install(CODE)), so that the prefix is this install's
# (--prefix) and not the configure's: configure BB_IN with that prefix and
# install it into BB_DEST, and install BB_CONF (the configuration the unit
# starts with) into SYSCONFDIR. BB_DIRS holds NAME=dir pairs (relative to the
# prefix, or absolute); each becomes @NAME@, absolute, and @NAME_CMD@ and
# @NAME_ARG@, the same escaped for a quoted command and a quoted argument of
# a systemd command line.
foreach(pair IN LISTS BB_DIRS)
  string(REGEX MATCH "^([A-Z_]+)=(.*)$" _ "${pair}")
  set(name "${CMAKE_MATCH_1}")
  set(dir "${CMAKE_MATCH_2}")
  # GNUInstallDirs' rule, which it applies only to a prefix given at
  # configure time: the system prefixes keep their configuration in /etc.
  if(name STREQUAL "SYSCONFDIR" AND dir STREQUAL "etc")
    if(CMAKE_INSTALL_PREFIX MATCHES "^/(usr/?)?$")
      set(dir "/etc")
    elseif(CMAKE_INSTALL_PREFIX MATCHES "^/opt/.")
      set(dir "/etc${CMAKE_INSTALL_PREFIX}")
    endif()
  endif()
  if(NOT IS_ABSOLUTE "${dir}")
    set(dir "${CMAKE_INSTALL_PREFIX}/${dir}")
  endif()
  string(REGEX REPLACE "/+$" "" dir "${dir}")
  set(${name} "${dir}")
  # A systemd command line splits words at blanks and unescapes backslashes,
  # in quotes too; it expands % specifiers everywhere, and $VARIABLES in the
  # arguments only (checked with systemd-analyze verify, systemd 252).
  string(REPLACE "\\" "\\\\" q "${dir}")
  string(REPLACE "\"" "\\\"" q "${q}")
  string(REPLACE "%" "%%" q "${q}")
  set(${name}_CMD "${q}")
  string(REPLACE "$" "$$" q "${q}")
  set(${name}_ARG "${q}")
endforeach()
configure_file("${BB_IN}" "${BB_OUT}" @ONLY)
if(IS_ABSOLUTE "${BB_DEST}")
  set(dest "${BB_DEST}")
else()
  set(dest "${CMAKE_INSTALL_PREFIX}/${BB_DEST}")
endif()
file(INSTALL "${BB_OUT}" DESTINATION "${dest}")
if(BB_CONF)
  file(INSTALL "${BB_CONF}" DESTINATION "${SYSCONFDIR}")
endif()
