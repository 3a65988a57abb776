# check_boundaries.cmake - fails when a subsystem's sources can see more
# than the build boundaries allow (docs/architecture.md, "Boundaries"):
#   1. every compile line of runtime/<sub>/ and kernels/ must name no
#      include folder but include/, its own view (${VIEWS}/<sub>) and
#      folders inside its own subsystem;
#   2. no source of a subsystem may reach out of its folder by a relative
#      path (#include "../other/..."; "../x.h" within the subsystem is fine).
#   3. the view really hides: a header of a subsystem above (or an
#      unexported one below) does not compile from a subsystem's view.
# Run by ctest: cmake -DSOURCE_DIR=... -DBINARY_DIR=... -P check_boundaries.cmake
cmake_minimum_required(VERSION 3.20)
set(views ${BINARY_DIR}/include-views)
file(READ ${BINARY_DIR}/compile_commands.json db)
string(JSON count LENGTH "${db}")
math(EXPR last "${count} - 1")
set(failures "")
set(checked 0)
foreach(i RANGE ${last})
  string(JSON file GET "${db}" ${i} file)
  string(JSON command GET "${db}" ${i} command)
  if(file MATCHES "^${SOURCE_DIR}/runtime/([a-z_]+)/")
    set(sub ${CMAKE_MATCH_1})
    set(own ${SOURCE_DIR}/runtime/${sub})
  elseif(file MATCHES "^${SOURCE_DIR}/kernels/")
    set(sub kernels)
    set(own ${SOURCE_DIR}/kernels)
  else()
    continue()
  endif()
  math(EXPR checked "${checked} + 1")
  string(REGEX MATCHALL "(-I|-isystem )[^ ]+" dirs "${command}")
  foreach(flag ${dirs})
    string(REGEX REPLACE "^(-I|-isystem )" "" dir "${flag}")
    if(dir STREQUAL "${SOURCE_DIR}/include" OR dir STREQUAL "${views}/${sub}"
       OR dir MATCHES "^${own}(/|$)" OR NOT dir MATCHES "^${SOURCE_DIR}")
      continue()
    endif()
    list(APPEND failures "${file}: include folder ${dir} lies outside its subsystem")
  endforeach()
endforeach()
if(checked EQUAL 0)
  message(FATAL_ERROR "no runtime source in ${BINARY_DIR}/compile_commands.json")
endif()

file(GLOB_RECURSE sources ${SOURCE_DIR}/runtime/*.[ch] ${SOURCE_DIR}/kernels/*.[ch]
     ${SOURCE_DIR}/kernels/*.cu ${SOURCE_DIR}/kernels/*.cuh)
foreach(path ${sources})
  if(path MATCHES "^${SOURCE_DIR}/runtime/([a-z_]+)/")
    set(own ${SOURCE_DIR}/runtime/${CMAKE_MATCH_1})
  else()
    set(own ${SOURCE_DIR}/kernels)
  endif()
  get_filename_component(here ${path} DIRECTORY)
  file(STRINGS ${path} lines REGEX "^[ \t]*#[ \t]*include[ \t]*\"[^\"]*\\.\\./")
  foreach(line ${lines})
    string(REGEX REPLACE "^[^\"]*\"([^\"]*)\".*$" "\\1" target "${line}")
    get_filename_component(resolved ${here}/${target} ABSOLUTE)
    if(NOT resolved MATCHES "^${own}/")
      list(APPEND failures "${path}: reaches another folder by a relative path: ${line}")
    endif()
  endforeach()
endforeach()

# The view of cache sees kv's pool_internal.h but not kv's pool_types.h,
# and nothing of sched, which sits above it.
set(probe ${BINARY_DIR}/boundary_probe.c)
foreach(case "kv/pool_internal.h;0" "kv/pool_types.h;1" "sched/sched_internal.h;1"
             "cache/cache_internal.h;0")
  list(GET case 0 header)
  list(GET case 1 must_fail)
  file(WRITE ${probe} "#include \"${header}\"\nint kvrt_boundary_probe;\n")
  execute_process(COMMAND ${C_COMPILER} -std=c11 -D_GNU_SOURCE -fsyntax-only
                          -I${SOURCE_DIR}/include -I${views}/cache ${probe}
                  RESULT_VARIABLE rc OUTPUT_QUIET ERROR_QUIET)
  if(must_fail AND rc EQUAL 0)
    list(APPEND failures "runtime/cache can include ${header}")
  elseif(NOT must_fail AND NOT rc EQUAL 0)
    list(APPEND failures "runtime/cache cannot include ${header}")
  endif()
endforeach()
file(REMOVE ${probe})

if(failures)
  list(JOIN failures "\n  " text)
  message(FATAL_ERROR "build boundaries broken:\n  ${text}")
endif()
message(STATUS "build boundaries hold for ${checked} compiled sources")
