// Fibers of the host execution layer (internal to its scheduler, hostexec.cpp): a stack with a
// guard page and the jumps between stacks (Boost.Context), told to AddressSanitizer and Valgrind.
// hostexec.cpp runs a block's CUDA threads on them; this file knows nothing of blocks.
#pragma once

#include <boost/context/detail/fcontext.hpp>

#include <cstddef>
#include <string>

namespace vae::hx {

namespace fc = boost::context::detail;

// Aborts the process with "host execution: <msg>" (a broken kernel cannot be recovered from).
[[noreturn]] void die(const std::string& msg);

enum class FiberState { running, finished, at_block_barrier, at_warp_barrier };

// One stack that runs CUDA threads of the current block one after another; it is parked
// (kept by its thread) when that thread waits at a barrier.
struct Fiber {
  fc::fcontext_t ctx = nullptr;
  char* map = nullptr;  // mmap base: guard page, then the stack
  size_t map_bytes = 0;
  void* asan_fake_stack = nullptr;
  unsigned valgrind_id = 0;
  unsigned tid = 0;
  FiberState state = FiberState::running;
  const char* site_file = nullptr;
  int site_line = 0;
  unsigned warp_mask = 0;

  // A fresh stack whose first resume enters entry (which starts with FiberHome::entered).
  explicit Fiber(void (*entry)(fc::transfer_t));
  ~Fiber();
  Fiber(const Fiber&) = delete;
  Fiber& operator=(const Fiber&) = delete;
};

// An OS thread's own stack, which its fibers jump back to (the scheduler runs there).
struct FiberHome {
  fc::fcontext_t scheduler = nullptr;
  void* asan_fake_stack = nullptr;
  const void* main_stack_bottom = nullptr;
  size_t main_stack_size = 0;
  Fiber* current = nullptr;

  // First thing a fiber's entry function does, with the transfer it was entered with.
  void entered(const fc::transfer_t& t);
  // Jumps from the home stack into fiber f; returns the fiber that jumps back home.
  Fiber* enter(Fiber* f);
  // Jumps from fiber self to fiber to, or home when to is null; returns when self is resumed.
  void switch_from(Fiber* self, Fiber* to);

 private:
  void landed(const fc::transfer_t& t);
};

}  // namespace vae::hx
