// Kernels that exercise the host execution layer, built for both targets. Each runner takes
// and returns host vectors (it allocates, copies and launches on its target).
#pragma once

#include <cstdint>
#include <vector>

#define VAE_DECLARE_HOSTEXEC_TEST_KERNELS                                                                           \
  /* per-block sums of x with a shared-memory tree and __syncthreads; blocks of `block` threads */                  \
  std::vector<float> block_sums(const std::vector<float>& x, int block);                                            \
  /* per-warp sums (shuffle reduction) and inclusive prefix sums (shuffle scan) */                                  \
  void warp_sum_and_scan(const std::vector<float>& x, int block, std::vector<float>& warp_sums,                     \
                         std::vector<float>& scan);                                                                 \
  /* per-warp ballot of x > 0 */                                                                                    \
  std::vector<unsigned> warp_ballots(const std::vector<float>& x, int block);                                       \
  /* atomics from every thread of grid x block: {count, max tid, sum as float of tid % 7} */                        \
  std::vector<long long> atomic_counts(int grid, int block);                                                        \
  /* dynamic shared memory: out[i] = x of the thread mirrored in the block */                                       \
  std::vector<float> mirror_in_block(const std::vector<float>& x, int block);                                       \
  /* per block, 1 if dynamic shared memory reads NaN before any write (host execution poisons) */                   \
  std::vector<int> shared_memory_poisoned(int grid, int block);                                                     \
  /* per block, Σ i over a 44 KB static __shared__ array s[i] = i filled by all threads */                         \
  std::vector<double> large_shared_sums(int grid, int block);                                                       \
  /* grid x block threads each passing `barriers` __syncthreads; returns per-thread counters */                     \
  std::vector<int> barrier_rounds(int grid, int block, int barriers);                                               \
  /* one thread per (row): curand_init(seed, row, offset) and n normals / raw words */                              \
  std::vector<float> philox_normals(uint64_t seed, int rows, int per_row, uint64_t offset);                         \
  std::vector<uint32_t> philox_bits(uint64_t seed, int rows, int per_row, uint64_t offset);                         \
  /* cooperative launch of grid x block threads: `rounds` times, each thread takes the value of */                  \
  /* the thread block + 1 places on (the next block's) from the last round plus 1, grid barriers */                 \
  /* between rounds (with split, in halves: x's copy + rounds appended, added to between them); */                  \
  /* returns the values; the largest cooperative grid of this kernel */                                             \
  std::vector<float> grid_barrier_rounds(const std::vector<float>& x, int grid, int block, int rounds, bool split); \
  int grid_barrier_max_blocks(int block);                                                                           \
  /* cooperative: block b waits for block b + 1's counter (count_done / wait_done), then each thread */             \
  /* takes block b + 1's value next to it plus 1 (the last block's: 1): grid − b everywhere; with */              \
  /* `unfenced` 1 the counters are raised without count_done's fence, 2 read without wait_done's */                 \
  std::vector<float> counter_chain(int grid, int block, int unfenced);                                              \
  /* cooperative, in clusters of `cluster` blocks: `rounds` times each thread takes thread t + 1's */               \
  /* value (mod block) of the next block of its cluster (mod cluster) plus 1, through distributed */                \
  /* shared memory and cluster barriers; the most clusters resident at once (0: no clusters) */                     \
  std::vector<float> cluster_rounds(const std::vector<float>& x, int grid, int cluster, int block, int rounds);     \
  int cluster_rounds_max_clusters(int block, int cluster);                                                          \
  /* kernels that must abort under host execution */                                                                \
  void divergent_barrier(int block);                                                                                \
  void warp_op_with_exited_lane();                                                                                  \
  void grid_barrier_with_exited_block();                                                                            \
  void grid_arrive_twice();                                                                                         \
  void counter_wait_with_exited_block();                                                                            \
  void cluster_barrier_with_exited_block();                                                                         \
  void grid_sync_without_cooperative_launch();

namespace vae::cpu {
VAE_DECLARE_HOSTEXEC_TEST_KERNELS
}
#if VAE_WITH_CUDA
namespace vae::gpu {
VAE_DECLARE_HOSTEXEC_TEST_KERNELS
}
#endif
