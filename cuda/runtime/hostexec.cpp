// Host execution layer: the block scheduler (a block's CUDA threads on fibers, fiber.h), block,
// grid and warp barriers, warp exchange and kernel launches (blocks run on the worker pool of
// workers.cpp).
#include "runtime/hostexec.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "runtime/fiber.h"

namespace vae::hx {

namespace {

// Per OS thread: the scheduler of the block it is running.
struct Worker : FiberHome {
  std::vector<std::unique_ptr<Fiber>> fibers;
  std::vector<Fiber*> idle;

  const KernelThunk* thunk = nullptr;
  unsigned nthreads = 0;
  unsigned next_unstarted = 0;
  unsigned exited = 0;
  std::vector<Fiber*> ready;  // FIFO: ready[ready_head..]
  size_t ready_head = 0;
  std::vector<Fiber*> block_waiting;
  std::vector<std::vector<Fiber*>> warp_waiting;
  std::vector<unsigned char> thread_exited;
  std::vector<unsigned> warp_ops;        // per thread: warp exchanges done (buffer parity)
  std::vector<uint64_t> warp_values[2];  // per thread: value offered to the warp
  std::vector<unsigned char> smem;
  size_t smem_bytes = 0;                            // the running block's dynamic shared memory
  struct CooperativeLaunch* cooperative = nullptr;  // set while running a block of one
  bool cluster_arrived = false;                     // the block arrived at its cluster's barrier, not yet waited
  bool grid_arrived = false;                        // the block arrived at a grid barrier (grid_arrive), not yet waited
  unsigned grid_target = 0;                         // the generation of the grid barrier it waits for
  unsigned cluster_target = 0;                      // the generation of the cluster's barrier it waits for
#ifdef VAE_HX_TSAN
  std::vector<TsanFences> tsan_fences;  // per thread of the running block
#endif
};

// The blocks of a cooperative launch, all resident at once (each on its own worker), and the
// grid barrier they share: blocks arrive, the last releases the generation. A block that exits
// while others wait at a barrier is a deadlock, reported with the barrier's file and line.
struct CooperativeLaunch {
  unsigned blocks = 0;
  std::mutex m;  // guards the barrier's site while blocks arrive
  unsigned arrived = 0;
  const char* site_file = nullptr;
  int site_line = 0;
  std::atomic<unsigned> generation{0};
  // The deadlock checks' counts, relaxed: they order nothing between blocks (a block's data reaches
  // another only through a barrier or a counter the kernel waits at; a TSan build would otherwise
  // see the blocks synchronize here, and a kernel's missing fence would go unseen).
  std::atomic<unsigned> exited{0};
  std::atomic<unsigned> waiting{0};   // blocks arrived at the current barrier (for the deadlock checks)
  std::atomic<unsigned> counting{0};  // blocks waiting for a counter (wait_count) or at a cluster barrier
  // Thread-block clusters of `cluster` consecutive blocks: each block's dynamic shared memory, and
  // per cluster the blocks arrived at its barrier and the barrier's generation (guarded by m).
  unsigned cluster = 1;
  std::vector<unsigned char*> smem;
  std::vector<unsigned> cluster_arrived;
  std::unique_ptr<std::atomic<unsigned>[]> cluster_generation;
};

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

std::string block_name(const Worker& w) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "kernel %s, block (%u,%u,%u)", w.thunk ? w.thunk->name : "?", tls_block_idx.x,
                tls_block_idx.y, tls_block_idx.z);
  return buf;
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

// A turn of a wait loop: a pause for its first 4096 spins, then the core yielded (true: the
// caller's deadlock check may follow).
inline bool spin_turn(int spins) {
  if (spins < 4096) {
#if defined(__x86_64__)
    __builtin_ia32_pause();
#endif
    return false;
  }
  std::this_thread::yield();
  return true;
}

// Thread 0's arrival at the launch's grid barrier, under c.m: at the same site as the other blocks'
// (else it aborts); the last block's releases the barrier's generation (and returns true).
bool arrive_at_grid(CooperativeLaunch& c, const char* file, int line) {
  if (c.arrived == 0) {
    c.site_file = file;
    c.site_line = line;
  } else if (c.site_line != line || std::strcmp(c.site_file, file) != 0) {
    die(block_name(tls_worker) + ": divergent grid barrier: this block arrives at " + file + ":" +
        std::to_string(line) + ", another at " + c.site_file + ":" + std::to_string(c.site_line));
  }
  if (++c.arrived < c.blocks) return false;
  c.arrived = 0;
  c.waiting.store(0, std::memory_order_relaxed);
  c.generation.fetch_add(1, std::memory_order_acq_rel);
  return true;
}

// Thread 0 of a block at a grid barrier, its block's other threads parked at the block barrier
// that follows: arrive, then wait (spinning, then yielding the core) for the last block.
void grid_arrive_and_wait(CooperativeLaunch& c, const char* file, int line) {
  const unsigned gen = c.generation.load(std::memory_order_acquire);
  {
    std::lock_guard<std::mutex> lk(c.m);
    if (arrive_at_grid(c, file, line)) return;
    c.waiting.fetch_add(1, std::memory_order_relaxed);
  }
  for (int spins = 0; c.generation.load(std::memory_order_acquire) == gen; ++spins) {
    if (!spin_turn(spins)) continue;
    const unsigned exited = c.exited.load(std::memory_order_relaxed);
    std::lock_guard<std::mutex> lk(c.m);
    if (c.generation.load(std::memory_order_acquire) == gen && exited > 0 && c.arrived + exited >= c.blocks) {
      die(block_name(tls_worker) + ": deadlock at the grid barrier at " + file + ":" + std::to_string(line) + ": " +
          std::to_string(c.arrived) + " of " + std::to_string(c.blocks) + " blocks arrived, " + std::to_string(exited) +
          " exited without reaching it");
    }
  }
}

Fiber* current_fiber(const char* what) {
  Fiber* f = tls_worker.current;
  if (!f) die(std::string(what) + " called outside a kernel");
  return f;
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

cudaError_t launch(const KernelThunk& thunk, dim3 grid, dim3 block, size_t dynamic_smem_bytes) {
  count_kernel_launch();
  const unsigned long long threads = 1ull * block.x * block.y * block.z;
  if (threads == 0 || threads > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 ||
      grid.z > 65535) {
    return cudaErrorInvalidConfiguration;
  }
  if (dynamic_smem_bytes > (227u << 10)) return cudaErrorInvalidValue;
  if (tls_worker.thunk) die("kernel launch from inside a kernel is not supported");
  LaunchJob job{&thunk, grid, block, dynamic_smem_bytes};
  const unsigned long long blocks = 1ull * grid.x * grid.y * grid.z;
  run_profiled(thunk.name, [&] { parallel_for(static_cast<int>(blocks), run_block_job, &job); });
  return cudaSuccess;
}

cudaError_t launch_cooperative(const KernelThunk& thunk, dim3 grid, dim3 block, size_t dynamic_smem_bytes,
                               unsigned cluster) {
  const unsigned long long blocks = 1ull * grid.x * grid.y * grid.z;
  if (blocks > static_cast<unsigned long long>(workers())) return cudaErrorCooperativeLaunchTooLarge;
  const unsigned long long threads = 1ull * block.x * block.y * block.z;
  if (threads == 0 || threads > 1024 || block.z > 64 || blocks == 0) return cudaErrorInvalidConfiguration;
  if (cluster == 0 || (cluster > 1 && (grid.y != 1 || grid.z != 1 || grid.x % cluster != 0))) {
    return cudaErrorInvalidClusterSize;
  }
  if (dynamic_smem_bytes > (227u << 10)) return cudaErrorInvalidValue;
  if (tls_worker.thunk) die("kernel launch from inside a kernel is not supported");
  count_kernel_launch();
  CooperativeLaunch c;
  c.blocks = static_cast<unsigned>(blocks);
  c.cluster = cluster;
  c.smem.assign(blocks, nullptr);
  c.cluster_arrived.assign(blocks / cluster, 0);
  c.cluster_generation = std::make_unique<std::atomic<unsigned>[]>(blocks / cluster);
  LaunchJob job{&thunk, grid, block, dynamic_smem_bytes, &c};
  run_profiled(thunk.name, [&] { parallel_for(static_cast<int>(blocks), run_block_job, &job); });
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

namespace {

// By thread 0 of a block of a cooperative launch: spins until done() (a counter reached, a cluster
// barrier passed). A deadlock: every block waiting (here, at a grid barrier) or exited, and nothing
// moving for a while (a block that was just counted in may not have noticed yet): aborts with
// what() said.
template <typename Done, typename What>
void wait_until(CooperativeLaunch& c, Done&& done, What&& what) {
  if (done()) return;
  c.counting.fetch_add(1, std::memory_order_relaxed);
  std::chrono::steady_clock::time_point stuck_since{};
  bool stuck = false;
  for (int spins = 0; !done(); ++spins) {
    if (!spin_turn(spins)) continue;
    const unsigned idle = c.exited.load(std::memory_order_relaxed) + c.waiting.load(std::memory_order_relaxed) +
                          c.counting.load(std::memory_order_relaxed);
    if (idle < c.blocks) {
      stuck = false;
    } else if (!stuck) {
      stuck = true;
      stuck_since = std::chrono::steady_clock::now();
    } else if (std::chrono::steady_clock::now() - stuck_since > std::chrono::seconds(2)) {
      die(block_name(tls_worker) + ": deadlock at " + what() + ", and every block waits or has exited");
    }
  }
  c.counting.fetch_sub(1, std::memory_order_relaxed);
}

// The running block's launch, which `what` (a cluster barrier, a map of shared memory) needs to be in clusters.
CooperativeLaunch& cluster_launch(Worker& w, const std::string& what) {
  if (!w.cooperative || w.cooperative->cluster < 2)
    die(block_name(w) + ": " + what + " in a kernel not launched in clusters");
  return *w.cooperative;
}
std::string site(const char* what, const char* file, int line) {
  return std::string(what) + " at " + file + ":" + std::to_string(line);
}

}  // namespace

void wait_count(const unsigned* counter, unsigned count) {
  Worker& w = tls_worker;
  if (!w.cooperative) die(block_name(w) + ": a wait for a counter in a kernel not launched cooperatively");
  // Relaxed, as the GPU's volatile reads: what the counted blocks wrote is ordered by the fence
  // that follows the wait (wait_done), not by the wait itself.
  wait_until(
      *w.cooperative, [&] { return __atomic_load_n(counter, __ATOMIC_RELAXED) >= count; },
      [&] {
        return "a wait for a counter: it is at " + std::to_string(__atomic_load_n(counter, __ATOMIC_RELAXED)) + " of " +
               std::to_string(count);
      });
  tsan_atomic_read(counter);
}

void cluster_arrive(const char* file, int line) {
  Worker& w = tls_worker;
  Fiber* self = current_fiber("cluster arrive");
  CooperativeLaunch& c = cluster_launch(w, site("a cluster barrier", file, line));
  sync_block(file, line);  // every thread of the block has arrived
  if (self->tid != 0) return;
  if (w.cluster_arrived) {
    die(block_name(w) + ": arrives at its cluster's barrier at " + file + ":" + std::to_string(line) +
        " twice without a wait");
  }
  const unsigned k = tls_block_idx.x / c.cluster;
  std::lock_guard<std::mutex> lk(c.m);
  w.cluster_target = c.cluster_generation[k].load(std::memory_order_acquire) + 1;
  w.cluster_arrived = true;
  if (++c.cluster_arrived[k] == c.cluster) {
    c.cluster_arrived[k] = 0;
    c.cluster_generation[k].fetch_add(1, std::memory_order_acq_rel);
  }
}

void cluster_wait(const char* file, int line) {
  Worker& w = tls_worker;
  Fiber* self = current_fiber("cluster wait");
  CooperativeLaunch& c = cluster_launch(w, site("a cluster barrier", file, line));
  if (self->tid == 0) {
    if (!w.cluster_arrived) {
      die(block_name(w) + ": waits at its cluster's barrier at " + file + ":" + std::to_string(line) +
          " without an arrival");
    }
    const std::atomic<unsigned>& generation = c.cluster_generation[tls_block_idx.x / c.cluster];
    const unsigned target = w.cluster_target;
    wait_until(
        c, [&] { return static_cast<int>(generation.load(std::memory_order_acquire) - target) >= 0; },
        [&] { return site("the cluster barrier", file, line); });
    w.cluster_arrived = false;
  }
  sync_block(file, line);  // and the block's threads leave once thread 0 has seen the cluster arrive
}

void* cluster_peer_shared(const void* p, unsigned rank) {
  Worker& w = tls_worker;
  CooperativeLaunch& c = cluster_launch(w, "a map of shared memory");
  const unsigned char* base = w.smem.data();
  const unsigned char* q = static_cast<const unsigned char*>(p);
  if (!w.smem_bytes || q < base || q >= base + w.smem_bytes) {
    die(block_name(w) + ": maps an address outside its dynamic shared memory to a peer's");
  }
  if (rank >= c.cluster)
    die(block_name(w) + ": maps to block " + std::to_string(rank) + " of a cluster of " + std::to_string(c.cluster));
  return c.smem[tls_block_idx.x / c.cluster * c.cluster + rank] + (q - base);
}

void sync_grid(const char* file, int line) {
  Worker& w = tls_worker;
  Fiber* self = current_fiber("grid sync");
  if (!w.cooperative) {
    die(block_name(w) + ": grid sync at " + file + ":" + std::to_string(line) +
        " in a kernel not launched cooperatively");
  }
  sync_block(file, line);  // the whole block is here
  if (self->tid == 0) {
    if (w.grid_arrived)
      die(block_name(w) + ": " + site("a grid sync", file, line) + " before the wait of a grid barrier it arrived at");
    grid_arrive_and_wait(*w.cooperative, file, line);
  }
  sync_block(file, line);  // and leaves when thread 0 has seen every block arrive
}

void grid_arrive(const char* file, int line) {
  Worker& w = tls_worker;
  Fiber* self = current_fiber("grid arrive");
  if (!w.cooperative)
    die(block_name(w) + ": " + site("a grid barrier", file, line) + " in a kernel not launched cooperatively");
  sync_block(file, line);  // every thread of the block has arrived
  if (self->tid != 0) return;
  if (w.grid_arrived)
    die(block_name(w) + ": arrives at " + site("the grid barrier", file, line) + " twice without a wait");
  CooperativeLaunch& c = *w.cooperative;
  std::lock_guard<std::mutex> lk(c.m);
  w.grid_target = c.generation.load(std::memory_order_acquire) + 1;
  w.grid_arrived = true;
  arrive_at_grid(c, file, line);
}

void grid_wait(const char* file, int line) {
  Worker& w = tls_worker;
  Fiber* self = current_fiber("grid wait");
  if (self->tid == 0) {
    if (!w.grid_arrived)
      die(block_name(w) + ": waits at " + site("the grid barrier", file, line) + " without an arrival");
    const unsigned target = w.grid_target;
    const CooperativeLaunch& c = *w.cooperative;
    wait_until(
        *w.cooperative, [&] { return static_cast<int>(c.generation.load(std::memory_order_acquire) - target) >= 0; },
        [&] { return site("the grid barrier", file, line); });
    w.grid_arrived = false;
  }
  sync_block(file, line);  // and the block's threads leave once thread 0 has seen every block arrive
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
