// Shared helpers of the test suite: targets, GPU skips, seeded random data, tolerances.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "dataset.h"
#include "runtime/target.h"

namespace vae::test {

// Every target this build has; tests are instantiated for each, and GPU instances skip with
// the reason when no device is present.
std::vector<Target> all_targets();
std::string target_param_name(const ::testing::TestParamInfo<Target>& info);

#define VAE_SKIP_WITHOUT_DEVICE(target)                                     \
  do {                                                                      \
    if ((target) == ::vae::Target::cuda && !::vae::cuda_device_available()) \
      GTEST_SKIP() << "no GPU: " << ::vae::cuda_unavailable_reason();       \
  } while (0)

std::vector<float> random_uniform(size_t n, uint64_t seed, float lo = -1.f, float hi = 1.f);
// n float32 images of height × width pixels, uniform in [0, 1].
Dataset random_images(int64_t n, int height, int width, uint64_t seed);

// |a − b| <= abs + rel·|b| elementwise, with a message naming the first failing index.
::testing::AssertionResult all_near(const std::vector<float>& got, const std::vector<double>& want, double abs_tol,
                                    double rel_tol);
// Guards a comparison against a trivial reference (all zeros would let a broken kernel pass).
::testing::AssertionResult not_all_zero(const std::vector<double>& v);

}  // namespace vae::test

#include "ops.h"

namespace vae::test {

// Launch shapes the kernel tests run under: the target's default, and on the CPU also the
// GPU's shape (many blocks, 32 lanes per row) and an odd one (4 lanes per row, tiny blocks).
struct Shape {
  const char* name;
  LaunchPolicy policy;  // ignored (target default) when max_blocks == 0
};
std::vector<Shape> shapes_for(Target t);

class ScopedLaunchPolicy {
 public:
  ScopedLaunchPolicy(Target t, const Shape& s);
  ~ScopedLaunchPolicy();

 private:
  LaunchPolicy* policy_;
  LaunchPolicy saved_;
};

// Under host execution, `workers` workers (a cooperative launch's grid: one block per worker)
// until the scope ends; on the GPU nothing.
class ScopedWorkers {
 public:
  ScopedWorkers(Target t, int workers);
  ~ScopedWorkers();
  ScopedWorkers(const ScopedWorkers&) = delete;
  ScopedWorkers& operator=(const ScopedWorkers&) = delete;

 private:
  int saved_ = 0;  // 0: unchanged
};

// The vae command line, run with a shell: exit code, stdout, stderr.
struct Result {
  int code;
  std::string out, err;
};
Result run_cli(const std::string& args);

}  // namespace vae::test
