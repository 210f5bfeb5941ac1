// The host execution layer against plain loops, on odd block sizes and partial grids; the
// same kernels on the GPU when there is one.
#include <curand.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <numeric>

#include "hostexec_kernels.h"
#include "runtime/host_memory.h"
#include "runtime/hostexec.h"
#include "runtime/wmma_host.h"
#include "support.h"

namespace vae {
namespace {

using test::random_uniform;

class HostExec : public ::testing::TestWithParam<Target> {
 protected:
  void SetUp() override { VAE_SKIP_WITHOUT_DEVICE(GetParam()); }
};

const int kBlockSizes[] = {1, 7, 33, 65, 256};

TEST_P(HostExec, BlockReductionWithBarriers) {
  for (int block : kBlockSizes) {
    const size_t n = static_cast<size_t>(block) * 5 + block / 2 + 1;  // partial last block
    const auto x = random_uniform(n, 11 + block);
    const auto sums = VAE_CALL(GetParam(), block_sums, x, block);
    ASSERT_EQ(sums.size(), (n + block - 1) / block);
    for (size_t b = 0; b < sums.size(); ++b) {
      double want = 0;
      for (size_t i = b * block; i < std::min(n, (b + 1) * block); ++i) want += x[i];
      EXPECT_NEAR(sums[b], want, 1e-5 * block) << "block size " << block << ", block " << b;
    }
  }
}

TEST_P(HostExec, WarpShuffleReductionAndScan) {
  for (int block : kBlockSizes) {
    const size_t n = static_cast<size_t>(block) * 3;
    const auto x = random_uniform(n, 21 + block);
    std::vector<float> warp_sums, scan;
    VAE_CALL(GetParam(), warp_sum_and_scan, x, block, warp_sums, scan);
    for (size_t b = 0; b < 3; ++b) {
      for (int w0 = 0; w0 < block; w0 += 32) {
        const int lanes = std::min(32, block - w0);
        double run = 0;
        for (int l = 0; l < lanes; ++l) {
          const size_t i = b * block + w0 + l;
          run += x[i];
          EXPECT_NEAR(scan[i], run, 1e-5) << "block size " << block << ", element " << i;
        }
        EXPECT_NEAR(warp_sums[b * ((block + 31) / 32) + w0 / 32], run, 1e-5) << "block size " << block;
      }
    }
  }
}

TEST_P(HostExec, WarpBallot) {
  for (int block : {32, 65, 256}) {
    const auto x = random_uniform(static_cast<size_t>(block) * 2, 31 + block);
    const auto bits = VAE_CALL(GetParam(), warp_ballots, x, block);
    for (size_t b = 0; b < 2; ++b) {
      for (int w0 = 0; w0 < block; w0 += 32) {
        unsigned want = 0;
        for (int l = 0; l < std::min(32, block - w0); ++l) want |= (x[b * block + w0 + l] > 0.f ? 1u : 0u) << l;
        EXPECT_EQ(bits[b * ((block + 31) / 32) + w0 / 32], want) << "block size " << block;
      }
    }
  }
}

TEST_P(HostExec, AtomicsFromManyBlocks) {
  for (int block : kBlockSizes) {
    const int grid = 37;
    const auto got = VAE_CALL(GetParam(), atomic_counts, grid, block);
    const long long threads = 1ll * grid * block;
    long long sum = 0;
    for (long long t = 0; t < threads; ++t) sum += t % 7;
    EXPECT_EQ(got[0], threads);
    EXPECT_EQ(got[1], threads - 1);
    EXPECT_EQ(got[2], sum);  // small integers: exact in float whatever the order
  }
}

TEST_P(HostExec, DynamicSharedMemory) {
  for (int block : kBlockSizes) {
    const auto x = random_uniform(static_cast<size_t>(block) * 4, 41 + block);
    const auto out = VAE_CALL(GetParam(), mirror_in_block, x, block);
    for (size_t i = 0; i < x.size(); ++i) {
      const size_t b = i / block, t = i % block;
      EXPECT_EQ(out[i], x[b * block + (block - 1 - t)]);
    }
  }
}

// Rounds through global memory with a grid barrier between them (or the barrier in its halves, each
// thread working on its own value between them), for a grid of one block and of as many as can be
// resident (on the CPU, one per worker), blocks of odd sizes.
void expect_grid_barrier_rounds(Target t, int grid, int block) {
  const int rounds = 5, n = grid * block;
  const auto x = random_uniform(n, 11 + n);
  for (bool split : {false, true}) {
    const auto got = VAE_CALL(t, grid_barrier_rounds, x, grid, block, rounds, split);
    ASSERT_EQ(got.size(), static_cast<size_t>(split ? 2 * n : n));
    for (int i = 0; i < n; ++i) {
      float want = x[(i + static_cast<long long>(rounds) * (block + 1)) % n], mine = x[i];
      for (int r = 0; r < rounds; ++r) want += 1.f, mine += 1.f;  // as the kernel adds, in float
      ASSERT_EQ(got[i], want) << "grid " << grid << " block " << block << " thread " << i << " split " << split;
      if (split) {
        ASSERT_EQ(got[n + i], mine) << "grid " << grid << " block " << block << " thread " << i;
      }
    }
  }
}

TEST_P(HostExec, GridBarrierKeepsBlocksInStep) {
  for (int block : {1, 7, 65, 128}) {
    const int most = VAE_CALL(GetParam(), grid_barrier_max_blocks, block);
    ASSERT_GE(most, 1);
    for (int grid : {1, std::min(most, 3), std::min(most, 40)}) expect_grid_barrier_rounds(GetParam(), grid, block);
  }
}

// Blocks that wait for each other's counters (ticket.cuh: count_done, wait_done, the fused step's
// row flags) see what the counted blocks wrote, in a chain through the whole grid.
TEST_P(HostExec, CountersOrderBlocks) {
  for (int block : {1, 33, 128}) {
    const int grid = std::min(VAE_CALL(GetParam(), grid_barrier_max_blocks, block), 9);
    const auto got = VAE_CALL(GetParam(), counter_chain, grid, block, 0);
    for (int i = 0; i < grid * block; ++i)
      ASSERT_EQ(got[i], static_cast<float>(grid - i / block))
          << "grid " << grid << " block " << block << " thread " << i;
  }
}

// Clusters of 2, 3 and 4 blocks (on the GPU from sm_90) pass values around through each other's
// shared memory between the halves of cluster barriers, blocks of odd sizes: every round's value
// comes from the peer's write of that round.
TEST_P(HostExec, ClustersShareSharedMemoryBetweenBarriers) {
  const test::ScopedWorkers workers(GetParam(), 12);  // on the CPU: three clusters of four at once
  for (int cluster : {2, 3, 4}) {
    for (int block : {1, 33, 128}) {
      const int most = VAE_CALL(GetParam(), cluster_rounds_max_clusters, block, cluster);
      if (most == 0 && GetParam() == Target::cuda) GTEST_SKIP() << "this GPU has no thread-block clusters (sm_90+)";
      ASSERT_GE(most, 1) << "cluster " << cluster;
      const int grid = std::min(most, 3) * cluster, rounds = 5, n = grid * block;
      const auto x = random_uniform(n, 7 + n);
      const auto got = VAE_CALL(GetParam(), cluster_rounds, x, grid, cluster, block, rounds);
      for (int i = 0; i < n; ++i) {
        const int b = i / block, t = i % block, first = b / cluster * cluster;
        float want = x[(first + (b - first + rounds) % cluster) * block + (t + rounds) % block];
        for (int r = 0; r < rounds; ++r) want += 1.f;  // as the kernel adds, in float
        ASSERT_EQ(got[i], want) << "cluster " << cluster << " block " << block << " thread " << i;
      }
    }
  }
}

TEST_P(HostExec, ManyBarriersKeepThreadsInStep) {
  const auto counters = VAE_CALL(GetParam(), barrier_rounds, 9, 65, 10);
  for (size_t i = 0; i < counters.size(); ++i) ASSERT_EQ(counters[i], 10) << "thread " << i;
}

// Philox from a kernel against cuRAND's host generator. The host generator lays out 65536
// subsequences side by side: word (4 * 65536) * c + 4 * s + q is word q of counter c of
// subsequence s, which the device API reaches with curand_init(seed, s, 4 * c + q). Raw bits are
// identical; normals agree to the last bits: the kernels' AVX2/AVX-512 clones contract to FMA and a
// GPU uses fast intrinsics, where the host generator does neither.
TEST_P(HostExec, PhiloxMatchesCurandHostGenerator) {
  const uint64_t seed = 1234567;
  const int rows = 65, per_row = 10;  // 10: not a multiple of 4
  const uint64_t offset = 8;
  constexpr size_t kStride = 4u * 65536u;
  const size_t words = kStride * ((offset + per_row + 3) / 4 + 1);
  curandGenerator_t gen;
  ASSERT_EQ(curandCreateGeneratorHost(&gen, CURAND_RNG_PSEUDO_PHILOX4_32_10), CURAND_STATUS_SUCCESS);
  ASSERT_EQ(curandSetPseudoRandomGeneratorSeed(gen, seed), CURAND_STATUS_SUCCESS);
  std::vector<unsigned> want_bits(words);
  ASSERT_EQ(curandGenerate(gen, want_bits.data(), words), CURAND_STATUS_SUCCESS);
  std::vector<float> want_normals(words);
  ASSERT_EQ(curandSetGeneratorOffset(gen, 0), CURAND_STATUS_SUCCESS);
  ASSERT_EQ(curandGenerateNormal(gen, want_normals.data(), words, 0.f, 1.f), CURAND_STATUS_SUCCESS);
  curandDestroyGenerator(gen);
  auto host_index = [&](int r, uint64_t word) { return (word / 4) * kStride + 4u * r + word % 4; };

  const auto bits = VAE_CALL(GetParam(), philox_bits, seed, rows, per_row, offset);
  for (int r = 0; r < rows; ++r)
    for (int j = 0; j < per_row; ++j)
      ASSERT_EQ(bits[r * per_row + j], want_bits[host_index(r, offset + j)]) << "row " << r << ", word " << j;

  // Normals come four per counter: start on a counter boundary (offset 8).
  const auto normals = VAE_CALL(GetParam(), philox_normals, seed, rows, per_row, offset);
  // __sincosf's error (~4e-7) times the Box-Muller radius (up to ~5) on a GPU; FMA rounding on the CPU.
  const double tol = GetParam() == Target::cuda ? 1e-5 : 2e-6;
  for (int r = 0; r < rows; ++r)
    for (int j = 0; j < per_row; ++j) {
      const float want = want_normals[host_index(r, offset + j)];
      ASSERT_NEAR(normals[r * per_row + j], want, tol * (1 + std::fabs(want))) << "row " << r << ", normal " << j;
    }
}

// The benchmarks' cold cache (evict_caches): every live allocation keeps its bytes, and memory
// freed before it must not be touched (where free unmaps it, touching it would fault).
TEST_P(HostExec, EvictCachesKeepsTheBytesOfEveryLiveAllocation) {
  const Target t = GetParam();
  const size_t sizes[] = {1, 63, 4097, (size_t{1} << 20) + 13, (size_t{3} << 20) + 5, (size_t{5} << 20) + 3};
  std::vector<void*> bufs;
  std::vector<std::vector<unsigned char>> want;
  for (size_t i = 0; i < std::size(sizes); ++i) {
    const auto x = random_uniform(sizes[i], 40 + i);
    std::vector<unsigned char> bytes(sizes[i]);
    for (size_t j = 0; j < bytes.size(); ++j) bytes[j] = static_cast<unsigned char>(256.f * (x[j] + 1.f) / 2.f);
    bufs.push_back(VAE_CALL(t, device_alloc, sizes[i]));
    VAE_CALL(t, copy_to_device, bufs.back(), bytes.data(), bytes.size(), nullptr);
    want.push_back(std::move(bytes));
  }
  for (size_t i : {1, 4}) {  // a small one and one of several MiB, before the eviction
    VAE_CALL(t, device_free, bufs[i]);
    bufs[i] = nullptr;
  }
  VAE_CALL(t, evict_caches, nullptr);
  VAE_CALL(t, evict_caches, nullptr);  // again, with nothing cached
  VAE_CALL(t, synchronize, nullptr);
  for (size_t i = 0; i < bufs.size(); ++i) {
    if (!bufs[i]) continue;
    std::vector<unsigned char> got(sizes[i]);
    VAE_CALL(t, copy_to_host, got.data(), bufs[i], got.size(), nullptr);
    EXPECT_EQ(got, want[i]) << "allocation " << i << " of " << sizes[i] << " bytes";
    VAE_CALL(t, device_free, bufs[i]);
  }
}

INSTANTIATE_TEST_SUITE_P(Targets, HostExec, ::testing::ValuesIn(test::all_targets()), test::target_param_name);

// ---- host execution only --------------------------------------------------------------------

TEST(HostExecOnly, DynamicSharedMemoryIsPoisoned) {
  const auto poisoned = cpu::shared_memory_poisoned(5, 33);
  for (int p : poisoned) EXPECT_EQ(p, 1);
}

TEST(HostExecOnly, OneWorkerIsDeterministicAndAgreesWithMany) {
  const int before = hx::workers();
  const auto x = random_uniform(33 * 101, 5);
  hx::set_workers(1);
  const auto one = cpu::block_sums(x, 33);
  EXPECT_EQ(cpu::block_sums(x, 33), one);
  hx::set_workers(3);
  EXPECT_EQ(cpu::block_sums(x, 33), one);  // blocks are independent: same bits
  hx::set_workers(before);
}

// Worker pools come and go (the tests' grids change the worker count) while kernels keep large
// static shared memory, which host execution keeps in each worker thread's TLS: under ASan a new
// thread's stack and TLS, mapped where an old pool's fiber stacks were, must not inherit those
// fibers' stale redzones (a fiber's last frames never return; Fiber's destructor unpoisons them).
TEST(HostExecOnly, PoolsComeAndGoUnderLargeSharedMemory) {
  const int before = hx::workers();
  const double want = 11264.0 * 11263.0 / 2;
  for (int round = 0; round < 20; ++round) {
    for (int workers : {7, 2}) {
      hx::set_workers(workers);
      const auto sums = cpu::large_shared_sums(workers, 64);
      ASSERT_EQ(sums, std::vector<double>(workers, want)) << "round " << round << ", " << workers << " workers";
    }
  }
  hx::set_workers(before);
}

// The emulated cvt.rna.tf32.f32: 10 explicit mantissa bits, to nearest, ties away from zero.
TEST(HostExecOnly, Tf32RoundingKeepsTenMantissaBits) {
  using nvcuda::wmma::__float_to_tf32;
  EXPECT_EQ(__float_to_tf32(1.f + std::ldexp(1.f, -10)), 1.f + std::ldexp(1.f, -10));  // representable
  EXPECT_EQ(__float_to_tf32(1.f + std::ldexp(1.f, -12)), 1.f);                         // below half an ulp
  EXPECT_EQ(__float_to_tf32(1.f + std::ldexp(1.f, -11)), 1.f + std::ldexp(1.f, -10));  // a tie: away from zero
  EXPECT_EQ(__float_to_tf32(-(1.f + std::ldexp(1.f, -11))), -(1.f + std::ldexp(1.f, -10)));
  EXPECT_EQ(__float_to_tf32(3.f + std::ldexp(1.f, -9)), 3.f + std::ldexp(1.f, -9));
  EXPECT_TRUE(std::isinf(__float_to_tf32(INFINITY)));
  EXPECT_TRUE(std::isnan(__float_to_tf32(NAN)));
}

TEST(HostExecOnly, GridBarrierWithSeveralWorkers) {
  const int before = hx::workers();
  hx::set_workers(3);
  EXPECT_EQ(cpu::grid_barrier_max_blocks(33), 3);
  expect_grid_barrier_rounds(Target::cpu, 3, 33);
  expect_grid_barrier_rounds(Target::cpu, 2, 1);
  hx::set_workers(before);
}

// The host memory the CPU target's allocations check against (host_memory_available), on folders
// laid out as / is: MemAvailable, and below it the headroom a control group's limit leaves (its
// limit less its usage less the inactive file cache), at each level from the process's group up,
// for cgroup v2 and v1, and at the mount's root (a container's own group).
TEST(HostMemory, AvailableIsTheLeastOfMemAvailableAndEachControlGroupsHeadroom) {
  namespace fs = std::filesystem;
  const fs::path root = fs::temp_directory_path() / ("vae_host_memory_" + std::to_string(::getpid()));
  constexpr size_t MiB = size_t{1} << 20;
  auto write = [&](const std::string& path, const std::string& text) {
    fs::create_directories((root / path).parent_path());
    std::ofstream(root / path) << text;
  };
  auto reset = [&](size_t mem_available_mib, const std::string& cgroup) {
    fs::remove_all(root);
    write("proc/meminfo", "MemTotal:       99999999 kB\nMemFree:         1000 kB\nMemAvailable:   " +
                              std::to_string(mem_available_mib * 1024) + " kB\n");
    write("proc/self/cgroup", cgroup);
  };
  // No control group with a limit: MemAvailable.
  reset(5000, "0::/user.slice/session-3.scope\n");
  EXPECT_EQ(host_memory_available(root.string()), 5000 * MiB);
  // cgroup v2, a job's limit two levels above the process's group (which has none): 2048 − (700 − 300).
  reset(5000, "0::/job_17/step_0/task_3\n");
  write("sys/fs/cgroup/job_17/memory.max", std::to_string(2048 * MiB) + "\n");
  write("sys/fs/cgroup/job_17/memory.current", std::to_string(700 * MiB) + "\n");
  write("sys/fs/cgroup/job_17/memory.stat", "anon 1\nfile 2\ninactive_file " + std::to_string(300 * MiB) + "\n");
  write("sys/fs/cgroup/job_17/step_0/memory.max", "max\n");
  write("sys/fs/cgroup/job_17/step_0/memory.current", std::to_string(650 * MiB) + "\n");
  EXPECT_EQ(host_memory_available(root.string()), 1648 * MiB);
  // A tighter limit lower down wins; MemAvailable wins where it is less still.
  write("sys/fs/cgroup/job_17/step_0/task_3/memory.max", std::to_string(1000 * MiB) + "\n");
  write("sys/fs/cgroup/job_17/step_0/task_3/memory.current", std::to_string(100 * MiB) + "\n");
  EXPECT_EQ(host_memory_available(root.string()), 900 * MiB);
  write("proc/meminfo", "MemAvailable:   " + std::to_string(800 * 1024) + " kB\n");
  EXPECT_EQ(host_memory_available(root.string()), 800 * MiB);
  // cgroup v1: the memory controller's line, and a container's group at the mount's root; a usage
  // past the limit leaves nothing.
  reset(5000, "12:pids:/docker/abc\n4:cpu,memory:/docker/abc\n0::/\n");
  write("sys/fs/cgroup/memory/memory.limit_in_bytes", std::to_string(3000 * MiB) + "\n");
  write("sys/fs/cgroup/memory/memory.usage_in_bytes", std::to_string(1200 * MiB) + "\n");
  write("sys/fs/cgroup/memory/memory.stat", "cache 5\ntotal_inactive_file " + std::to_string(200 * MiB) + "\n");
  EXPECT_EQ(host_memory_available(root.string()), 2000 * MiB);
  write("sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes", "9223372036854771712\n");  // no limit
  EXPECT_EQ(host_memory_available(root.string()), 2000 * MiB);
  write("sys/fs/cgroup/memory/memory.usage_in_bytes", std::to_string(4000 * MiB) + "\n");
  EXPECT_EQ(host_memory_available(root.string()), 0u);
  fs::remove_all(root);
  // This machine's: something, and no more than MemAvailable.
  EXPECT_GT(host_memory_available(), 0u);
}

using HostExecDeathTest = ::testing::Test;

TEST(HostExecDeathTest, GridBarrierWithAnExitedBlockAborts) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        hx::set_workers(2);
        cpu::grid_barrier_with_exited_block();
      },
      "deadlock at the grid barrier at .*hostexec_kernels.cu:[0-9]+: 1 of 2 blocks arrived, 1 exited");
}

TEST(HostExecDeathTest, GridArrivalTwiceWithoutAWaitAborts) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        hx::set_workers(2);
        cpu::grid_arrive_twice();
      },
      "arrives at the grid barrier at .*hostexec_kernels.cu:[0-9]+ twice without a wait");
}

TEST(HostExecDeathTest, CounterWaitWithAnExitedBlockAborts) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        hx::set_workers(2);
        cpu::counter_wait_with_exited_block();
      },
      "block \\(0,0,0\\): deadlock at a wait for a counter: it is at 0 of 1, and every block waits or has exited");
}

// ThreadSanitizer is told what the GPU's fences order (hostexec.h): the counter chain is clean,
// and the same chain with either fence left out (count_done's before the count, wait_done's after
// the wait) is a race that it reports, though the values come out right on x86. A TSan build only
// (cmake/test.sh builds one for the tests of kernels whose blocks share data).
TEST(HostExecDeathTest, ThreadSanitizerSeesACounterWithoutItsFence) {
#ifndef VAE_HX_TSAN
  GTEST_SKIP() << "not a ThreadSanitizer build (VAE_TSAN=ON)";
#else
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const auto chain = [](int unfenced) {
    hx::set_workers(5);
    const std::vector<float> got = cpu::counter_chain(5, 33, unfenced);
    for (int i = 0; i < 5 * 33; ++i)
      if (got[i] != static_cast<float>(5 - i / 33)) std::exit(1);
    std::exit(0);  // through TSan's exit handler: 66 after a report
  };
  EXPECT_EXIT(chain(0), ::testing::ExitedWithCode(0), "");
  EXPECT_EXIT(chain(1), ::testing::ExitedWithCode(66), "WARNING: ThreadSanitizer: data race");
  EXPECT_EXIT(chain(2), ::testing::ExitedWithCode(66), "WARNING: ThreadSanitizer: data race");
#endif
}

TEST(HostExecDeathTest, ClusterBarrierWithAnExitedBlockAborts) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        hx::set_workers(2);
        cpu::cluster_barrier_with_exited_block();
      },
      "block \\(0,0,0\\): deadlock at the cluster barrier at .*hostexec_kernels.cu:[0-9]+, and every block waits or "
      "has exited");
}

TEST(HostExecDeathTest, GridSyncWithoutCooperativeLaunchAborts) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(cpu::grid_sync_without_cooperative_launch(), "not launched cooperatively");
}

TEST(HostExecDeathTest, DivergentBarrierAborts) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(cpu::divergent_barrier(8), "divergent __syncthreads");
}

TEST(HostExecDeathTest, WarpOperationWaitingForExitedLaneAborts) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(cpu::warp_op_with_exited_lane(), "has exited");
}

}  // namespace
}  // namespace vae
