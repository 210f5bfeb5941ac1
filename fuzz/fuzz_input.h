// The fuzzers' way into the readers: the input as a file (an anonymous in-memory file, reached by
// its /proc path), as the trainer's readers take paths. A reader may reject an input only with
// vae::Error (a one-line message naming the file); anything else — a crash, a sanitizer report,
// another exception, an allocation past libFuzzer's limit — is a finding.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "runtime/check.h"

namespace vae::fuzz {

inline std::string as_file(const uint8_t* data, size_t size) {
  static const int fd = [] {
    const int f = memfd_create("vae-fuzz-input", 0);
    if (f < 0) std::abort();
    return f;
  }();
  if (ftruncate(fd, 0) != 0 || pwrite(fd, data, size, 0) != static_cast<ssize_t>(size)) std::abort();
  return "/proc/self/fd/" + std::to_string(fd);
}

template <typename F>
void expect_clean_rejection(F read) {
  try {
    read();
  } catch (const vae::Error& e) {
    const std::string msg = e.what();
    if (msg.find('\n') != std::string::npos || msg.find("/proc/self/fd/") == std::string::npos) {
      std::fprintf(stderr, "error message not one line naming the file: %s\n", msg.c_str());
      std::abort();
    }
  }
}

}  // namespace vae::fuzz
