#include "runtime/compat.cuh"

#include <vector>

#include "hostexec_kernels.h"
#include "kernels/ticket.cuh"  // count_done, wait_done
#include "runtime/cluster.cuh"

namespace vae::VAE_NS {

namespace {

// Device buffer of the current target holding a copy of a host vector.
template <typename T>
struct Buffer {
  T* p = nullptr;
  size_t n = 0;
  explicit Buffer(size_t count) : n(count) {
    p = static_cast<T*>(device_alloc(n * sizeof(T)));
    fill_zero(p, n * sizeof(T), nullptr);
  }
  explicit Buffer(const std::vector<T>& v) : Buffer(v.size()) { copy_to_device(p, v.data(), n * sizeof(T), nullptr); }
  ~Buffer() { device_free(p); }
  std::vector<T> host() const {
    synchronize(nullptr);
    std::vector<T> v(n);
    copy_to_host(v.data(), p, n * sizeof(T), nullptr);
    return v;
  }
};

__device__ unsigned warp_mask_of_block() {
  const unsigned warp_first = threadIdx.x & ~31u;
  const unsigned lanes = blockDim.x - warp_first < 32u ? blockDim.x - warp_first : 32u;
  return lanes == 32u ? 0xffffffffu : (1u << lanes) - 1u;
}

}  // namespace

__global__ void block_sums_kernel(const float* x, int n, float* sums) {
  __shared__ float s[1024];
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  s[threadIdx.x] = i < n ? x[i] : 0.f;
  __syncthreads();
  int width = 1;
  while (width < static_cast<int>(blockDim.x)) width *= 2;
  for (int stride = width / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < static_cast<unsigned>(stride) && threadIdx.x + stride < blockDim.x)
      s[threadIdx.x] += s[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) sums[blockIdx.x] = s[0];
}

__global__ void warp_sum_and_scan_kernel(const float* x, float* warp_sums, float* scan) {
  const unsigned mask = warp_mask_of_block();
  const int lane = threadIdx.x & 31;
  const int lanes = 32 - __clz(mask);
  const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  const float v = x[i];
  float sum = v;
  for (int off = 16; off > 0; off /= 2) {
    const float other = __shfl_down_sync(mask, sum, off);
    if (lane + off < lanes) sum += other;
  }
  float inc = v;
  for (int off = 1; off < 32; off *= 2) {
    const float other = __shfl_up_sync(mask, inc, off);
    if (lane >= off) inc += other;
  }
  scan[i] = inc;
  const float total = __shfl_sync(mask, sum, 0);
  if (lane == lanes - 1) warp_sums[blockIdx.x * ((blockDim.x + 31) / 32) + threadIdx.x / 32] = total;
}

__global__ void warp_ballots_kernel(const float* x, unsigned* out) {
  const unsigned bits =
      __ballot_sync(warp_mask_of_block(), x[static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x] > 0.f);
  if ((threadIdx.x & 31) == 0) out[blockIdx.x * ((blockDim.x + 31) / 32) + threadIdx.x / 32] = bits;
}

__global__ void atomic_counts_kernel(int* count, int* max_tid, float* sum) {
  const int tid = blockIdx.x * blockDim.x + threadIdx.x;
  atomicAdd(count, 1);
  atomicMax(max_tid, tid);
  atomicAdd(sum, static_cast<float>(tid % 7));
}

__global__ void mirror_in_block_kernel(const float* x, float* out) {
  VAE_DYNAMIC_SHARED(float, s);
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  s[threadIdx.x] = x[i];
  __syncthreads();
  out[i] = s[blockDim.x - 1 - threadIdx.x];
}

__global__ void shared_memory_poisoned_kernel(int* out) {
  VAE_DYNAMIC_SHARED(float, s);
  const float before = s[threadIdx.x];
  __syncthreads();
  s[threadIdx.x] = 1.f;
  if (threadIdx.x == 0) out[blockIdx.x] = before != before;
}

constexpr int kLargeShared = 11264;  // floats: 44 KB of static shared memory (48 KB at most; TLS on the CPU)
__global__ void large_shared_sums_kernel(double* sums) {
  __shared__ float s[kLargeShared];
  for (int i = static_cast<int>(threadIdx.x); i < kLargeShared; i += static_cast<int>(blockDim.x))
    s[i] = static_cast<float>(i);
  __syncthreads();
  if (threadIdx.x != 0) return;
  double sum = 0;
  for (int i = 0; i < kLargeShared; ++i) sum += s[i];
  sums[blockIdx.x] = sum;
}

__global__ void barrier_rounds_kernel(int* counters, int barriers) {
  __shared__ int turn[1024];
  const int t = threadIdx.x;
  int count = 0;
  for (int b = 0; b < barriers; ++b) {
    turn[t] = b;
    __syncthreads();
    // Every thread must see its neighbour in the same round: a barrier that lets one through
    // early shows here.
    count += turn[(t + 1) % blockDim.x] == b;
    __syncthreads();
  }
  counters[blockIdx.x * blockDim.x + t] = count;
}

__global__ void philox_normals_kernel(uint64_t seed, int rows, int per_row, uint64_t offset, float* out) {
  const int r = blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  curandStatePhilox4_32_10_t state;
  curand_init(seed, r, offset, &state);
  for (int j = 0; j < per_row; j += 4) {
    const float4 v = curand_normal4(&state);
    const float e[4] = {v.x, v.y, v.z, v.w};
    for (int q = 0; q < 4 && j + q < per_row; ++q) out[static_cast<long long>(r) * per_row + j + q] = e[q];
  }
}

__global__ void philox_bits_kernel(uint64_t seed, int rows, int per_row, uint64_t offset, uint32_t* out) {
  const int r = blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  curandStatePhilox4_32_10_t state;
  curand_init(seed, r, offset, &state);
  for (int j = 0; j < per_row; ++j) out[static_cast<long long>(r) * per_row + j] = curand(&state);
}

// Double-buffered rounds through global memory: a grid barrier that lets a block through early
// shows as a value from the wrong round.
// With `split`, the barrier in its halves, and between them each thread adds 1 to a value of its
// own (`own`, which no other thread reads).
__global__ void grid_barrier_rounds_kernel(float* a, float* b, float* own, int rounds, bool split) {
  __shared__ unsigned token;
  const int n = static_cast<int>(gridDim.x * blockDim.x);
  const int t = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  const int from = (t + static_cast<int>(blockDim.x) + 1) % n;
  for (int r = 0; r < rounds; ++r) {
    const float* in = r % 2 ? b : a;
    float* out = r % 2 ? a : b;
    out[t] = in[from] + 1.f;
    if (split) {
      VAE_GRID_ARRIVE(token);
      own[t] += 1.f;
      VAE_GRID_WAIT(token);
    } else {
      VAE_GRID_SYNC();
    }
  }
}

// The blocks in reverse order through counters (the workers start them in order, so most wait).
// unfenced: 1 counts without the fence before (a release no more), 2 waits without the one after.
__global__ void counter_chain_kernel(float* out, unsigned* counters, int unfenced) {
  const unsigned b = blockIdx.x, n = blockDim.x, t = threadIdx.x;
  const bool last = b + 1 == gridDim.x;
  if (!last) {
    if (t == 0 && unfenced == 2) wait_reached(&counters[b + 1], 1);
    if (t == 0 && unfenced != 2) wait_done(&counters[b + 1], 1);
    __syncthreads();
  }
  out[b * n + t] = (last ? 0.f : out[(b + 1) * n + (t + 1) % n]) + 1.f;
  __syncthreads();
  if (t == 0 && unfenced == 1) atomicAdd(&counters[b], 1u);
  if (t == 0 && unfenced != 1) count_done(&counters[b]);
}

__global__ void counter_wait_with_exited_block_kernel(unsigned* counter) {
  if (blockIdx.x == 1) return;  // without counting in
  if (threadIdx.x == 0) wait_done(counter, 1);
  __syncthreads();
}

// Clusters of `cluster` blocks, `rounds` rounds: each thread puts its value in the block's dynamic
// shared memory, and after the cluster's barrier takes the value of thread t + 1 (mod the block) of
// the next block of the cluster (mod the cluster) there, plus 1. The barrier's halves apart: a
// block waits for every reader of the round before before it writes again.
__global__ void cluster_rounds_kernel(float* values, unsigned cluster, int rounds) {
  VAE_DYNAMIC_SHARED(float, buf);
  const unsigned t = threadIdx.x, n = blockDim.x, rank = blockIdx.x % cluster;
  float v = values[blockIdx.x * n + t];
  VAE_CLUSTER_ARRIVE();  // "the readers of round −1 are done"
  for (int r = 0; r < rounds; ++r) {
    VAE_CLUSTER_WAIT();  // every reader of the last round is done
    buf[t] = v;
    VAE_CLUSTER_ARRIVE();
    VAE_CLUSTER_WAIT();  // every block has written
    v = cluster_peer(buf, (rank + 1) % cluster)[(t + 1) % n] + 1.f;
    VAE_CLUSTER_ARRIVE();
  }
  VAE_CLUSTER_WAIT();  // no block leaves while a peer may read its shared memory
  values[blockIdx.x * n + t] = v;
}

__global__ void cluster_barrier_with_exited_block_kernel(unsigned exiting_block) {
  if (blockIdx.x == exiting_block) return;  // without arriving
  VAE_CLUSTER_ARRIVE();
  VAE_CLUSTER_WAIT();
}

__global__ void grid_barrier_with_exited_block_kernel(unsigned exiting_block) {
  if (blockIdx.x == exiting_block) return;
  VAE_GRID_SYNC();
}

__global__ void grid_arrivals_kernel(int arrivals) {
  __shared__ unsigned token;
  for (int i = 0; i < arrivals; ++i) VAE_GRID_ARRIVE(token);
  VAE_GRID_WAIT(token);
}

__global__ void divergent_barrier_kernel(int split) {
  if (static_cast<int>(threadIdx.x) < split) {
    __syncthreads();
  } else {
    __syncthreads();
  }
}

__global__ void warp_op_with_exited_lane_kernel(int exiting_lane) {
  if (static_cast<int>(threadIdx.x) == exiting_lane) return;
  __syncwarp(0xffffffffu);
}

std::vector<float> block_sums(const std::vector<float>& x, int block) {
  const int grid = static_cast<int>(ceil_div(static_cast<long long>(x.size()), block));
  Buffer<float> in(x), sums(grid);
  VAE_LAUNCH(block_sums_kernel, grid, block, 0, nullptr, in.p, static_cast<int>(x.size()), sums.p);
  return sums.host();
}

void warp_sum_and_scan(const std::vector<float>& x, int block, std::vector<float>& warp_sums,
                       std::vector<float>& scan) {
  const int grid = static_cast<int>(x.size() / block);
  Buffer<float> in(x), sums(static_cast<size_t>(grid) * ((block + 31) / 32)), sc(x.size());
  VAE_LAUNCH(warp_sum_and_scan_kernel, grid, block, 0, nullptr, in.p, sums.p, sc.p);
  warp_sums = sums.host();
  scan = sc.host();
}

std::vector<unsigned> warp_ballots(const std::vector<float>& x, int block) {
  const int grid = static_cast<int>(x.size() / block);
  Buffer<float> in(x);
  Buffer<unsigned> out(static_cast<size_t>(grid) * ((block + 31) / 32));
  VAE_LAUNCH(warp_ballots_kernel, grid, block, 0, nullptr, in.p, out.p);
  return out.host();
}

std::vector<double> large_shared_sums(int grid, int block) {
  Buffer<double> sums(grid);
  VAE_LAUNCH(large_shared_sums_kernel, grid, block, 0, nullptr, sums.p);
  return sums.host();
}

std::vector<long long> atomic_counts(int grid, int block) {
  Buffer<int> count(1), max_tid(1);
  Buffer<float> sum(1);
  VAE_LAUNCH(atomic_counts_kernel, grid, block, 0, nullptr, count.p, max_tid.p, sum.p);
  return {count.host()[0], max_tid.host()[0], static_cast<long long>(sum.host()[0])};
}

std::vector<float> mirror_in_block(const std::vector<float>& x, int block) {
  const int grid = static_cast<int>(x.size() / block);
  Buffer<float> in(x), out(x.size());
  VAE_LAUNCH(mirror_in_block_kernel, grid, block, block * sizeof(float), nullptr, in.p, out.p);
  return out.host();
}

std::vector<int> shared_memory_poisoned(int grid, int block) {
  Buffer<int> out(grid);
  VAE_LAUNCH(shared_memory_poisoned_kernel, grid, block, block * sizeof(float), nullptr, out.p);
  return out.host();
}

std::vector<int> barrier_rounds(int grid, int block, int barriers) {
  Buffer<int> counters(static_cast<size_t>(grid) * block);
  VAE_LAUNCH(barrier_rounds_kernel, grid, block, 0, nullptr, counters.p, barriers);
  return counters.host();
}

std::vector<float> philox_normals(uint64_t seed, int rows, int per_row, uint64_t offset) {
  Buffer<float> out(static_cast<size_t>(rows) * per_row);
  VAE_LAUNCH(philox_normals_kernel, static_cast<int>(ceil_div(rows, 64)), 64, 0, nullptr, seed, rows, per_row, offset,
             out.p);
  return out.host();
}

std::vector<uint32_t> philox_bits(uint64_t seed, int rows, int per_row, uint64_t offset) {
  Buffer<uint32_t> out(static_cast<size_t>(rows) * per_row);
  VAE_LAUNCH(philox_bits_kernel, static_cast<int>(ceil_div(rows, 64)), 64, 0, nullptr, seed, rows, per_row, offset,
             out.p);
  return out.host();
}

std::vector<float> grid_barrier_rounds(const std::vector<float>& x, int grid, int block, int rounds, bool split) {
  Buffer<float> a(x), b(x), own(x);
  VAE_LAUNCH_COOPERATIVE(grid_barrier_rounds_kernel, grid, block, 0, nullptr, a.p, b.p, own.p, rounds, split);
  std::vector<float> values = rounds % 2 ? b.host() : a.host();
  if (split) {  // each thread's own value after it, which took `rounds` additions
    const std::vector<float> mine = own.host();
    values.insert(values.end(), mine.begin(), mine.end());
  }
  return values;
}

int grid_barrier_max_blocks(int block) { return cooperative_max_blocks(grid_barrier_rounds_kernel, block, 0); }

std::vector<float> counter_chain(int grid, int block, int unfenced) {
  Buffer<float> out(static_cast<size_t>(grid) * block);
  Buffer<unsigned> counters(static_cast<size_t>(grid));
  VAE_LAUNCH_COOPERATIVE(counter_chain_kernel, grid, block, 0, nullptr, out.p, counters.p, unfenced);
  return out.host();
}

void counter_wait_with_exited_block() {
  Buffer<unsigned> counter(1);
  VAE_LAUNCH_COOPERATIVE(counter_wait_with_exited_block_kernel, 2, 5, 0, nullptr, counter.p);
  synchronize(nullptr);
}

std::vector<float> cluster_rounds(const std::vector<float>& x, int grid, int cluster, int block, int rounds) {
  Buffer<float> values(x);
  VAE_LAUNCH_COOPERATIVE_CLUSTERS(cluster_rounds_kernel, grid, cluster, block, block * sizeof(float), nullptr, values.p,
                                  static_cast<unsigned>(cluster), rounds);
  return values.host();
}

int cluster_rounds_max_clusters(int block, int cluster) {
  return cooperative_max_clusters(cluster_rounds_kernel, block, block * sizeof(float), cluster);
}

void cluster_barrier_with_exited_block() {
  VAE_LAUNCH_COOPERATIVE_CLUSTERS(cluster_barrier_with_exited_block_kernel, 2, 2, 3, 0, nullptr, 1u);
  synchronize(nullptr);
}

void grid_barrier_with_exited_block() {
  VAE_LAUNCH_COOPERATIVE(grid_barrier_with_exited_block_kernel, 2, 7, 0, nullptr, 1u);
  synchronize(nullptr);
}

void grid_arrive_twice() {
  VAE_LAUNCH_COOPERATIVE(grid_arrivals_kernel, 2, 5, 0, nullptr, 2);
  synchronize(nullptr);
}

void grid_sync_without_cooperative_launch() {
  VAE_LAUNCH(grid_barrier_with_exited_block_kernel, 1, 4, 0, nullptr, 5u);
  synchronize(nullptr);
}

void divergent_barrier(int block) {
  VAE_LAUNCH(divergent_barrier_kernel, 1, block, 0, nullptr, 3);
  synchronize(nullptr);
}

void warp_op_with_exited_lane() {
  VAE_LAUNCH(warp_op_with_exited_lane_kernel, 1, 32, 0, nullptr, 5);
  synchronize(nullptr);
}

}  // namespace vae::VAE_NS
