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
  gtest_discover_tests(${name} DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 600)
endfunction()
