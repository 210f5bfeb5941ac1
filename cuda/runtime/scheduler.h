// The host execution layer's block scheduler as its two sources share it (internal to
// cuda/runtime): each OS thread's Worker, which runs one block at a time on fibers (hostexec.cpp),
// and the state of a cooperative launch, whose grid and cluster barriers and counter waits are
// cooperative.cpp's.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "runtime/fiber.h"
#include "runtime/hostexec.h"

namespace vae::hx {

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

// The calling OS thread's Worker: for cooperative.cpp's barriers and waits (a call per thread at
// a barrier); hostexec.cpp's per-thread paths (each __syncthreads) use its thread-local directly.
Worker& this_worker();
// "kernel <name>, block (x,y,z)": the block w runs, for the errors that abort.
std::string block_name(const Worker& w);
// The fiber of the running CUDA thread; outside a kernel, aborts naming `what` that was called.
Fiber* current_fiber(const char* what);
// Runs the grid's blocks on the worker pool (every block of a cooperative launch at once, with
// `cooperative` its state) and returns once all are done.
void run_blocks(const KernelThunk& thunk, dim3 grid, dim3 block, size_t smem, CooperativeLaunch* cooperative);

}  // namespace vae::hx
