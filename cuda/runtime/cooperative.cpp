// Host execution layer: cooperative launches (every block resident at once, one per worker), their
// grid barriers, whole or in halves, counter waits (ticket.cuh's wait_done) and thread-block
// clusters (barriers, each block's shared memory mapped into its peers'); what is stuck aborts
// naming the block and the barrier's file and line. Blocks run as hostexec.cpp's scheduler runs them.
#include "runtime/scheduler.h"

#include <chrono>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "runtime/hostexec.h"

namespace vae::hx {

namespace {

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
    die(block_name(this_worker()) + ": divergent grid barrier: this block arrives at " + file + ":" +
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
      die(block_name(this_worker()) + ": deadlock at the grid barrier at " + file + ":" + std::to_string(line) + ": " +
          std::to_string(c.arrived) + " of " + std::to_string(c.blocks) + " blocks arrived, " + std::to_string(exited) +
          " exited without reaching it");
    }
  }
}

}  // namespace

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
  count_kernel_launch();
  CooperativeLaunch c;
  c.blocks = static_cast<unsigned>(blocks);
  c.cluster = cluster;
  c.smem.assign(blocks, nullptr);
  c.cluster_arrived.assign(blocks / cluster, 0);
  c.cluster_generation = std::make_unique<std::atomic<unsigned>[]>(blocks / cluster);
  run_blocks(thunk, grid, block, dynamic_smem_bytes, &c);
  return cudaSuccess;
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
      die(block_name(this_worker()) + ": deadlock at " + what() + ", and every block waits or has exited");
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
  Worker& w = this_worker();
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
  Worker& w = this_worker();
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
  Worker& w = this_worker();
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
  Worker& w = this_worker();
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
  Worker& w = this_worker();
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
  Worker& w = this_worker();
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
  Worker& w = this_worker();
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

}  // namespace vae::hx
