// Host execution layer: the block scheduler (a block's CUDA threads on fibers, fiber.h), block and
// warp barriers, warp exchange and kernel launches (blocks run on the worker pool of workers.cpp).
// Cooperative launches' grid and cluster barriers and counter waits: cooperative.cpp.
#include "runtime/hostexec.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "runtime/fiber.h"
#include "runtime/scheduler.h"

namespace vae::hx {

namespace {

thread_local Worker tls_worker;

inline void set_thread(unsigned tid) {
#ifdef VAE_HX_TSAN
  tls_tsan_fences = &tls_worker.tsan_fences[tid];
#endif
  const dim3& b = tls_block_dim;
  if (b.y == 1 && b.z == 1) {  // the common 1-D block: no divisions
    tls_thread_idx = {tid, 0, 0};
    return;
  }
  tls_thread_idx.x = tid % b.x;
  tls_thread_idx.y = (tid / b.x) % b.y;
  tls_thread_idx.z = tid / (b.x * b.y);
}

// Makes `next` the running fiber; a fiber resumed at a barrier gets its thread's indices back
// (a fiber starting a new thread sets them itself).
inline void prepare_resume(Worker& w, Fiber* next) {
  w.current = next;
  if (next->state != FiberState::finished && next->state != FiberState::running) set_thread(next->tid);
  next->state = FiberState::running;
}

void fiber_main(fc::transfer_t t) {
  Worker& w = tls_worker;
  w.entered(t);
  Fiber* self = w.current;
  for (;;) {
    // Lazy: run not-yet-started threads to completion on this stack until one waits.
    while (w.next_unstarted < w.nthreads) {
      const unsigned tid = w.next_unstarted++;
      self->tid = tid;
      set_thread(tid);
      w.thunk->fn(w.thunk->args);
      w.thread_exited[tid] = 1;
      ++w.exited;
    }
#ifdef VAE_HX_TSAN
    tls_tsan_fences = nullptr;
#endif
    self->state = FiberState::finished;
    w.switch_from(self, nullptr);
  }
}

// Runs fiber f (and whatever it switches to) until a fiber comes back to the scheduler; returns
// that fiber, whose state says why.
Fiber* resume(Worker& w, Fiber* f) {
  prepare_resume(w, f);
  return w.enter(f);
}

Fiber* idle_fiber(Worker& w) {
  if (!w.idle.empty()) {
    Fiber* f = w.idle.back();
    w.idle.pop_back();
    return f;
  }
  w.fibers.push_back(std::make_unique<Fiber>(fiber_main));
  return w.fibers.back().get();
}

Fiber* pop_ready(Worker& w) {
  Fiber* f = w.ready[w.ready_head++];
  if (w.ready_head == w.ready.size()) {
    w.ready.clear();
    w.ready_head = 0;
  }
  return f;
}

unsigned warp_lanes_present(const Worker& w, unsigned warp) {
  const unsigned lanes = std::min(32u, w.nthreads - warp * 32u);
  return lanes == 32u ? 0xffffffffu : ((1u << lanes) - 1u);
}

// A fiber arrived at a warp barrier: release the lanes of its mask once all are there.
void warp_arrive(Worker& w, Fiber* f) {
  const unsigned warp = f->tid / 32u;
  auto& waiting = w.warp_waiting[warp];
  waiting.push_back(f);
  const unsigned need = f->warp_mask & warp_lanes_present(w, warp);
  unsigned have = 0;
  for (Fiber* g : waiting)
    if (g->warp_mask == f->warp_mask) have |= 1u << (g->tid % 32u);
  if ((have & need) != need) {
    for (unsigned lane = 0; lane < 32; ++lane) {
      const unsigned tid = warp * 32u + lane;
      if ((need >> lane & 1u) && w.thread_exited[tid]) {
        die(block_name(w) + ": warp operation with mask 0x" + std::to_string(f->warp_mask) + " waits for thread " +
            std::to_string(tid) + ", which has exited");
      }
    }
    return;
  }
  std::vector<Fiber*> rest;
  for (Fiber* g : waiting) {
    if (g->warp_mask == f->warp_mask)
      w.ready.push_back(g);
    else
      rest.push_back(g);
  }
  waiting.swap(rest);
}

void release_block_barrier(Worker& w) {
  const Fiber* first = w.block_waiting.front();
  for (const Fiber* f : w.block_waiting) {
    if (f->site_line != first->site_line ||
        (f->site_file != first->site_file && std::strcmp(f->site_file, first->site_file) != 0)) {
      die(block_name(w) + ": divergent __syncthreads: thread " + std::to_string(first->tid) + " waits at " +
          first->site_file + ":" + std::to_string(first->site_line) + ", thread " + std::to_string(f->tid) + " at " +
          f->site_file + ":" + std::to_string(f->site_line));
    }
  }
  for (Fiber* f : w.block_waiting) w.ready.push_back(f);
  w.block_waiting.clear();
}

[[noreturn]] void deadlock(Worker& w) {
  std::string msg = block_name(w) + ": deadlock (divergent barrier): ";
  msg += std::to_string(w.block_waiting.size()) + " thread(s) wait at __syncthreads";
  if (!w.block_waiting.empty()) {
    msg += std::string(" (") + w.block_waiting.front()->site_file + ":" +
           std::to_string(w.block_waiting.front()->site_line) + ")";
  }
  size_t at_warp = 0;
  for (auto& v : w.warp_waiting) at_warp += v.size();
  msg += ", " + std::to_string(at_warp) + " at warp operations, " + std::to_string(w.exited) + " of " +
         std::to_string(w.nthreads) + " exited";
  die(msg);
}

void run_block(Worker& w, const KernelThunk& thunk, unsigned nthreads, size_t smem_bytes) {
  w.thunk = &thunk;
  w.nthreads = nthreads;
  w.next_unstarted = 0;
  w.exited = 0;
  w.ready.clear();
  w.ready_head = 0;
  w.block_waiting.clear();
  w.warp_waiting.assign((nthreads + 31) / 32, {});
  w.thread_exited.assign(nthreads, 0);
  w.warp_ops.assign(nthreads, 0);
  w.warp_values[0].resize(nthreads);
  w.warp_values[1].resize(nthreads);
#ifdef VAE_HX_TSAN
  w.tsan_fences.assign(nthreads, {});
#endif
  if (smem_bytes) {
    if (w.smem.size() < smem_bytes) w.smem.resize(smem_bytes);
    std::memset(w.smem.data(), 0xff, smem_bytes);  // NaN in every float: reads before writes show
  }
  w.smem_bytes = smem_bytes;
  w.cluster_arrived = false;
  w.grid_arrived = false;
  if (w.cooperative) {
    const dim3 b = tls_block_idx, g = tls_grid_dim;
    w.cooperative->smem[b.x + g.x * (b.y + g.y * b.z)] = smem_bytes ? w.smem.data() : nullptr;
  }
  for (;;) {
    Fiber* f = nullptr;
    if (w.ready_head < w.ready.size()) {
      f = pop_ready(w);
    } else if (w.next_unstarted < w.nthreads) {
      f = idle_fiber(w);
    } else if (!w.block_waiting.empty() && w.block_waiting.size() == w.nthreads - w.exited) {
      release_block_barrier(w);
      continue;
    } else {
      bool waiting = !w.block_waiting.empty();
      for (auto& v : w.warp_waiting) waiting = waiting || !v.empty();
      if (waiting) deadlock(w);
      break;
    }
    f = resume(w, f);
    switch (f->state) {
      case FiberState::finished:
        w.idle.push_back(f);
        break;
      case FiberState::at_block_barrier:
        w.block_waiting.push_back(f);
        break;
      case FiberState::at_warp_barrier:
        warp_arrive(w, f);
        break;
      case FiberState::running:
        die("fiber returned while running");
    }
  }
  w.thunk = nullptr;
}

struct LaunchJob {
  const KernelThunk* thunk;
  dim3 grid, block;
  size_t smem;
  CooperativeLaunch* cooperative = nullptr;
};

void run_block_job(int index, void* ctx) {
  const LaunchJob& job = *static_cast<const LaunchJob*>(ctx);
  const unsigned i = static_cast<unsigned>(index);
  tls_grid_dim = job.grid;
  tls_block_dim = job.block;
  tls_block_idx.x = i % job.grid.x;
  tls_block_idx.y = (i / job.grid.x) % job.grid.y;
  tls_block_idx.z = i / (job.grid.x * job.grid.y);
  tls_worker.cooperative = job.cooperative;
  run_block(tls_worker, *job.thunk, job.block.x * job.block.y * job.block.z, job.smem);
  tls_worker.cooperative = nullptr;
  if (job.cooperative) job.cooperative->exited.fetch_add(1, std::memory_order_relaxed);
}

void wait_warp(Worker& w, Fiber* self, unsigned mask) {
  const unsigned lane = self->tid % 32u;
  const unsigned need = mask & warp_lanes_present(w, self->tid / 32u);
  if (need == (1u << lane)) return;  // alone in its mask: nothing to wait for
  self->warp_mask = mask;
  self->state = FiberState::at_warp_barrier;
  w.switch_from(self, nullptr);
}

}  // namespace

Worker& this_worker() { return tls_worker; }

std::string block_name(const Worker& w) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "kernel %s, block (%u,%u,%u)", w.thunk ? w.thunk->name : "?", tls_block_idx.x,
                tls_block_idx.y, tls_block_idx.z);
  return buf;
}

Fiber* current_fiber(const char* what) {
  Fiber* f = tls_worker.current;
  if (!f) die(std::string(what) + " called outside a kernel");
  return f;
}

void run_blocks(const KernelThunk& thunk, dim3 grid, dim3 block, size_t smem, CooperativeLaunch* cooperative) {
  if (tls_worker.thunk) die("kernel launch from inside a kernel is not supported");
  LaunchJob job{&thunk, grid, block, smem, cooperative};
  const unsigned long long blocks = 1ull * grid.x * grid.y * grid.z;
  run_profiled(thunk.name, [&] { parallel_for(static_cast<int>(blocks), run_block_job, &job); });
}

cudaError_t launch(const KernelThunk& thunk, dim3 grid, dim3 block, size_t dynamic_smem_bytes) {
  count_kernel_launch();
  const unsigned long long threads = 1ull * block.x * block.y * block.z;
  if (threads == 0 || threads > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 ||
      grid.z > 65535) {
    return cudaErrorInvalidConfiguration;
  }
  if (dynamic_smem_bytes > (227u << 10)) return cudaErrorInvalidValue;
  run_blocks(thunk, grid, block, dynamic_smem_bytes, nullptr);
  return cudaSuccess;
}

void* dynamic_shared() { return tls_worker.smem.data(); }

void sync_block(const char* file, int line) {
  Worker& w = tls_worker;
  Fiber* self = current_fiber("__syncthreads");
  if (w.nthreads == 1) return;
  self->site_file = file;
  self->site_line = line;
  self->state = FiberState::at_block_barrier;
  // Straight on to the next fiber when one is ready or a thread has yet to start; the scheduler
  // (which also releases barriers and finds deadlocks) only when neither.
  Fiber* next = nullptr;
  if (w.ready_head < w.ready.size()) {
    next = pop_ready(w);
  } else if (w.next_unstarted < w.nthreads) {
    next = idle_fiber(w);
  }
  if (next) {
    w.block_waiting.push_back(self);
    prepare_resume(w, next);
  }
  w.switch_from(self, next);
}

void sync_warp(unsigned mask) {
  Worker& w = tls_worker;
  wait_warp(w, current_fiber("__syncwarp"), mask);
}

uint64_t warp_exchange(unsigned mask, uint64_t value, int src_lane) {
  Worker& w = tls_worker;
  Fiber* self = current_fiber("warp shuffle");
  const unsigned tid = self->tid;
  const unsigned parity = w.warp_ops[tid]++ & 1u;
  w.warp_values[parity][tid] = value;
  wait_warp(w, self, mask);
  const unsigned src = (tid & ~31u) + static_cast<unsigned>(src_lane & 31);
  return src < w.nthreads ? w.warp_values[parity][src] : value;
}

unsigned warp_ballot(unsigned mask, bool predicate) {
  Worker& w = tls_worker;
  Fiber* self = current_fiber("__ballot_sync");
  const unsigned tid = self->tid;
  const unsigned parity = w.warp_ops[tid]++ & 1u;
  w.warp_values[parity][tid] = predicate ? 1u : 0u;
  wait_warp(w, self, mask);
  const unsigned base = tid & ~31u;
  unsigned bits = 0;
  for (unsigned lane = 0; lane < 32; ++lane) {
    if ((mask >> lane & 1u) && base + lane < w.nthreads && w.warp_values[parity][base + lane]) bits |= 1u << lane;
  }
  return bits;
}

}  // namespace vae::hx
