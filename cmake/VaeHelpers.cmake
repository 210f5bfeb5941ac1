# Helpers of the vae_trainer build.

# Project-wide warning and sanitizer flags (our targets only; third-party headers are SYSTEM).
function(vae_setup_warnings_and_sanitizers)
  set(warn -Wall -Wextra -Wshadow=local -Wno-unused-parameter)
  if(VAE_WERROR)
    list(APPEND warn -Werror)
  endif()
  set(VAE_CXX_WARNINGS ${warn} PARENT_SCOPE)
  if(VAE_SANITIZE)
    add_compile_options($<$<COMPILE_LANGUAGE:C,CXX>:-fsanitize=address,undefined>
                        $<$<COMPILE_LANGUAGE:C,CXX>:-fno-omit-frame-pointer>
                        $<$<COMPILE_LANGUAGE:C,CXX>:-fno-sanitize-recover=undefined>)
    add_link_options(-fsanitize=address,undefined)
  endif()
  if(VAE_TSAN)
    if(VAE_SANITIZE)
      message(FATAL_ERROR "VAE_TSAN and VAE_SANITIZE: ThreadSanitizer does not combine with AddressSanitizer")
    endif()
    # No shadow call stack (function entry and exit): a block's CUDA threads run on fibers that
    # switch stacks, which TSan would have to be told of as threads of their own (one per parked
    # thread, 256 a block: its clocks that wide made the fused step's tests 75x slower). Each OS
    # thread, one block at a time, is then one TSan thread; a report names each access's line
    # (and the functions inlined there) without its callers.
    if(CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
      set(no_entry_exit "SHELL:-mllvm -tsan-instrument-func-entry-exit=0")
    else()
      set(no_entry_exit --param=tsan-instrument-func-entry-exit=0)
    endif()
    add_compile_options($<$<COMPILE_LANGUAGE:C,CXX>:-fsanitize=thread> $<$<COMPILE_LANGUAGE:C,CXX>:-fno-omit-frame-pointer>
                        "$<$<COMPILE_LANGUAGE:C,CXX>:${no_entry_exit}>")
    add_link_options(-fsanitize=thread)
    # The kernels' target_clones resolvers run while the loader relocates, before TSan's runtime
    # is up: instrumented, they fault. One baseline clone.
    add_compile_definitions(VAE_NO_TARGET_CLONES)
  endif()
endfunction()

function(vae_target_warnings target)
  target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:${VAE_CXX_WARNINGS}>)
  if(VAE_WERROR)
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-Werror=all-warnings>)
  endif()
endfunction()

# The CPU half of kernel sources: each .cu is compiled by the host compiler through a one-line
# wrapper (a source file has one language per directory, so the .cu itself stays CUDA).
function(vae_host_exec_sources out_var)
  set(result)
  foreach(src IN LISTS ARGN)
    get_filename_component(abs ${src} ABSOLUTE)
    file(RELATIVE_PATH rel ${PROJECT_SOURCE_DIR} ${abs})
    string(REPLACE "/" "_" flat ${rel})
    set(wrapper ${CMAKE_CURRENT_BINARY_DIR}/host_exec/${flat}.cpp)
    file(CONFIGURE OUTPUT ${wrapper} CONTENT "// Host-execution build of ${rel}\n#include \"${abs}\"\n")
    list(APPEND result ${wrapper})
  endforeach()
  set(${out_var} ${result} PARENT_SCOPE)
endfunction()

# A GoogleTest executable registered with ctest.
function(vae_add_test name)
  add_executable(${name} ${ARGN})
  target_link_libraries(${name} PRIVATE vae_test_support)
  vae_target_warnings(${name})
  gtest_discover_tests(${name} DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 600 LABELS ${name})
endfunction()
