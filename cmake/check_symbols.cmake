# check_symbols.cmake - fails when libkvrt's exported ABI and the committed
# list, cmake/kvrt.map, differ. Three sets must be equal:
#   listed    every name in the map's global: sections, with its stanza
#             (no wildcard allowed);
#   exported  what libkvrt.so exports (nm -D), each with its version node;
#   marked    the global, default-visibility kvrt_* definitions in the
#             objects of libkvrt.a (KVRT_EXPORT), so a function marked for
#             export but missing from the map, which the linker would hide
#             without a word, is caught too.
# Run by ctest: cmake -DMAP=... -DSHARED=... -DSTATIC=... -DNM=... -DREADELF=...
#               -P check_symbols.cmake
cmake_minimum_required(VERSION 3.20)
set(failures "")

# The output lines of a command, as a list; fails the check when it fails.
function(command_lines out_var)
  execute_process(COMMAND ${ARGN} OUTPUT_VARIABLE out RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${ARGN} failed")
  endif()
  string(REPLACE "\n" ";" lines "${out}")
  set(${out_var} "${lines}" PARENT_SCOPE)
endfunction()

# ---- listed ---------------------------------------------------------------
file(READ ${MAP} map)
string(REGEX REPLACE "/\\*([^*]|\\*+[^*/])*\\*+/" "" map "${map}") # comments
# ';' separates CMake list elements: make the map's own separators newlines.
string(REPLACE ";" "\n" map "${map}")
string(REGEX MATCHALL "[A-Za-z0-9_.]+[ \t\n]*{[^}]*}" stanzas "${map}")
set(listed "")
foreach(stanza ${stanzas})
  string(REGEX MATCH "^[A-Za-z0-9_.]+" node "${stanza}")
  string(REGEX MATCH "global:([^}]*)" globals "${stanza}")
  string(REGEX REPLACE "local:.*$" "" globals "${CMAKE_MATCH_1}")
  string(REGEX MATCHALL "[^ \t\n]+" names "${globals}")
  foreach(name ${names})
    if(name MATCHES "[*?]")
      list(APPEND failures "${MAP}: wildcard '${name}' in ${node}: list every symbol by name")
    else()
      list(APPEND listed "${name}@${node}")
    endif()
  endforeach()
endforeach()

# ---- exported ----------------------------------------------------------------
command_lines(lines ${NM} -D --defined-only ${SHARED})
set(exported "")
foreach(line ${lines})
  # "<address> <type> <name>@@<node>"; type A lines are the version nodes.
  if(line MATCHES "^[0-9a-f]+ ([A-Za-z]) ([^@ ]+)@@?([^ ]+)$" AND NOT CMAKE_MATCH_1 STREQUAL "A")
    list(APPEND exported "${CMAKE_MATCH_2}@${CMAKE_MATCH_3}")
  elseif(line MATCHES "^[0-9a-f]+ ([A-Za-z]) ([^@ ]+)$" AND NOT CMAKE_MATCH_1 STREQUAL "A")
    list(APPEND exported "${CMAKE_MATCH_2}@(no version)")
  endif()
endforeach()

# ---- marked ------------------------------------------------------------------
command_lines(lines ${READELF} -sW ${STATIC})
set(marked "")
foreach(line ${lines})
  # Num: Value Size Type Bind Vis Ndx Name
  if(line MATCHES "^ *[0-9]+: [0-9a-f]+ +[0-9]+ [A-Z]+ +GLOBAL +DEFAULT +[0-9]+ (kvrt_[A-Za-z0-9_]+)$")
    list(APPEND marked "${CMAKE_MATCH_1}")
  endif()
endforeach()
list(REMOVE_DUPLICATES marked)

# ---- compare ---------------------------------------------------------------------
set(listed_names ${listed})
list(TRANSFORM listed_names REPLACE "@.*$" "")
foreach(entry ${exported})
  if(NOT entry IN_LIST listed)
    list(APPEND failures "exported but not listed (or in another stanza): ${entry}")
  endif()
endforeach()
foreach(entry ${listed})
  if(NOT entry IN_LIST exported)
    list(APPEND failures "listed but not exported: ${entry}")
  endif()
endforeach()
foreach(name ${marked})
  if(NOT name IN_LIST listed_names)
    list(APPEND failures "KVRT_EXPORT but not in ${MAP}, so hidden: ${name}")
  endif()
endforeach()
list(LENGTH listed count)
if(count EQUAL 0)
  list(APPEND failures "${MAP} lists no symbol")
endif()
if(failures)
  list(JOIN failures "\n  " text)
  message(FATAL_ERROR "exported symbols differ from ${MAP}:\n  ${text}")
endif()
message(STATUS "${count} symbols listed, exported and marked alike")
