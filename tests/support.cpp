#include "support.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "runtime/workers.h"

namespace vae::test {

std::vector<Target> all_targets() {
#if VAE_WITH_CUDA
  return {Target::cpu, Target::cuda};
#else
  return {Target::cpu};
#endif
}

std::string target_param_name(const ::testing::TestParamInfo<Target>& info) { return target_name(info.param); }

std::vector<float> random_uniform(size_t n, uint64_t seed, float lo, float hi) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

Dataset random_images(int64_t n, int height, int width, uint64_t seed) {
  Dataset d;
  d.type = PixelType::f32;
  d.count = n;
  d.height = height;
  d.width = width;
  d.f32 = random_uniform(static_cast<size_t>(n) * height * width, seed, 0, 1);
  return d;
}

::testing::AssertionResult all_near(const std::vector<float>& got, const std::vector<double>& want, double abs_tol,
                                    double rel_tol) {
  if (got.size() != want.size()) {
    return ::testing::AssertionFailure() << "size " << got.size() << " != " << want.size();
  }
  size_t bad = 0, first = 0;
  double worst = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::fabs(static_cast<double>(got[i]) - want[i]);
    const double tol = abs_tol + rel_tol * std::fabs(want[i]);
    if (!(err <= tol)) {
      if (bad++ == 0) first = i;
      worst = std::max(worst, err);
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << bad << " of " << got.size() << " elements differ; first at " << first
                                       << ": got " << got[first] << ", want " << want[first] << " (worst error "
                                       << worst << ")";
}

::testing::AssertionResult not_all_zero(const std::vector<double>& v) {
  for (double x : v)
    if (x != 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "reference is all zeros";
}

}  // namespace vae::test

namespace vae::test {

std::vector<Shape> shapes_for(Target t) {
  if (t == Target::cuda) return {{"default", {0, 0, 0, 0, 0, 0}}};
  return {{"default", {0, 0, 0, 0, 0, 0}}, {"gpu_like", {64, 1, 32, 256, 8, 256}}, {"odd", {5, 3, 4, 64, 3, 7}}};
}

ScopedLaunchPolicy::ScopedLaunchPolicy(Target t, const Shape& s)
    : policy_(&VAE_CALL(t, launch_policy)), saved_(*policy_) {
  if (s.policy.max_blocks > 0) *policy_ = s.policy;
}

ScopedLaunchPolicy::~ScopedLaunchPolicy() { *policy_ = saved_; }

ScopedWorkers::ScopedWorkers(Target t, int workers) {
  if (t != Target::cpu) return;
  saved_ = hx::workers();
  hx::set_workers(workers);
}

ScopedWorkers::~ScopedWorkers() {
  if (saved_ > 0) hx::set_workers(saved_);
}

Result run_cli(const std::string& args) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path();
  const std::string out = (dir / ("vae_cli_out_" + std::to_string(::getpid()))).string();
  const std::string err = (dir / ("vae_cli_err_" + std::to_string(::getpid()))).string();
  const int status = std::system((std::string(VAE_CLI_PATH) + " " + args + " >" + out + " 2>" + err).c_str());
  auto slurp = [](const std::string& p) {
    std::ifstream f(p);
    return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  };
  Result r{WIFEXITED(status) ? WEXITSTATUS(status) : -1, slurp(out), slurp(err)};
  fs::remove(out);
  fs::remove(err);
  return r;
}

}  // namespace vae::test
