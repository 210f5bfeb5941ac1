// Which sanitizer the host execution layer is built under (GCC's and Clang's spellings), and its
// interface: VAE_HX_ASAN (AddressSanitizer: fiber stacks, fiber.cpp) and VAE_HX_TSAN
// (ThreadSanitizer: fibers, and the GPU's fences and atomics, hostexec.h).
#pragma once

#if defined(__SANITIZE_ADDRESS__)
#define VAE_HX_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define VAE_HX_ASAN 1
#endif
#endif

#if defined(__SANITIZE_THREAD__)
#define VAE_HX_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define VAE_HX_TSAN 1
#endif
#endif

#ifdef VAE_HX_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif
#ifdef VAE_HX_TSAN
#include <sanitizer/tsan_interface.h>
#endif
