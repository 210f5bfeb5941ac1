// Fibers of the host execution layer: stacks and the jumps between them (see fiber.h).
#include "runtime/fiber.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>

#include "runtime/sanitizers.h"
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#define VAE_HX_VALGRIND 1
#endif

namespace vae::hx {

namespace {
#ifdef VAE_HX_ASAN
constexpr size_t kStackBytes = 1u << 20;  // ASan frames carry redzones
#else
constexpr size_t kStackBytes = 256u << 10;
#endif

[[maybe_unused]] const void* stack_bottom(const Fiber* f) { return f->map + (f->map_bytes - kStackBytes); }
}  // namespace

void die(const std::string& msg) {
  std::fprintf(stderr, "host execution: %s\n", msg.c_str());
  std::fflush(stderr);
  std::abort();
}

Fiber::Fiber(void (*entry)(fc::transfer_t)) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  map_bytes = kStackBytes + page;
  void* p = mmap(nullptr, map_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) die("cannot map a fiber stack");
  map = static_cast<char*>(p);
  mprotect(map, page, PROT_NONE);  // overflow faults instead of corrupting a neighbour
#ifdef VAE_HX_ASAN
  ASAN_UNPOISON_MEMORY_REGION(map + page, kStackBytes);
#endif
#ifdef VAE_HX_VALGRIND
  valgrind_id = VALGRIND_STACK_REGISTER(map + page, map + map_bytes);
#endif
  ctx = fc::make_fcontext(map + map_bytes, kStackBytes, entry);
}

Fiber::~Fiber() {
#ifdef VAE_HX_VALGRIND
  VALGRIND_STACK_DEREGISTER(valgrind_id);
#endif
#ifdef VAE_HX_ASAN
  // A fiber's last frames never return (it jumps home from inside them): their redzones stay
  // poisoned in the shadow, and whatever is mapped here next (another thread's stack and TLS)
  // would inherit them.
  ASAN_UNPOISON_MEMORY_REGION(map + (map_bytes - kStackBytes), kStackBytes);
#endif
  munmap(map, map_bytes);
}

// Every jump passes the fiber it leaves (nullptr: home), so that where it lands can store the
// context to resume that one with.
void FiberHome::landed(const fc::transfer_t& t) {
  if (Fiber* from = static_cast<Fiber*>(t.data)) {
    from->ctx = t.fctx;
  } else {
    scheduler = t.fctx;
  }
}

void FiberHome::entered(const fc::transfer_t& t) {
  landed(t);
#ifdef VAE_HX_ASAN
  // The first fiber a thread enters comes from home: learn the home stack's bounds.
  const bool learn = main_stack_bottom == nullptr;
  __sanitizer_finish_switch_fiber(nullptr, learn ? &main_stack_bottom : nullptr, learn ? &main_stack_size : nullptr);
#endif
}

void FiberHome::switch_from(Fiber* self, Fiber* to) {
#ifdef VAE_HX_ASAN
  if (to) {
    __sanitizer_start_switch_fiber(&self->asan_fake_stack, stack_bottom(to), kStackBytes);
  } else {
    __sanitizer_start_switch_fiber(&self->asan_fake_stack, main_stack_bottom, main_stack_size);
  }
#endif
  fc::transfer_t t = fc::jump_fcontext(to ? to->ctx : scheduler, self);
#ifdef VAE_HX_ASAN
  __sanitizer_finish_switch_fiber(self->asan_fake_stack, nullptr, nullptr);
#endif
  landed(t);
}

Fiber* FiberHome::enter(Fiber* f) {
#ifdef VAE_HX_ASAN
  __sanitizer_start_switch_fiber(&asan_fake_stack, stack_bottom(f), kStackBytes);
#endif
  fc::transfer_t t = fc::jump_fcontext(f->ctx, nullptr);
#ifdef VAE_HX_ASAN
  __sanitizer_finish_switch_fiber(asan_fake_stack, nullptr, nullptr);
#endif
  Fiber* back = static_cast<Fiber*>(t.data);
  back->ctx = t.fctx;
  current = nullptr;
  return back;
}

}  // namespace vae::hx
