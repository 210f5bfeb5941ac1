// The GEMM interface against a float64 loop, all transpose cases, odd sizes, alpha and beta.
#include "ops.h"
#include "support.h"

namespace vae {
namespace {

struct GemmCase {
  bool ta, tb;
  int m, n, k;
};

class Gemm : public ::testing::TestWithParam<Target> {
 protected:
  void SetUp() override { VAE_SKIP_WITHOUT_DEVICE(GetParam()); }
};

TEST_P(Gemm, MatchesFloat64Loop) {
#if VAE_WITH_CUDA
  const TargetOps& ops = GetParam() == Target::cuda ? gpu::target_ops() : cpu::target_ops();
#else
  const TargetOps& ops = cpu::target_ops();
#endif
  cudaStream_t stream = ops.create_stream();
  GemmHandle* handle = ops.gemm_create(stream, false);
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      // The last three are cut into panels on the CPU: by columns (m < n) and by rows, with ragged ends.
      for (auto [m, n, k] : {std::tuple{1, 1, 1},
                             {7, 5, 3},
                             {33, 65, 17},
                             {129, 20, 400},
                             {300, 784, 5},
                             {130, 517, 40},
                             {517, 130, 40}}) {
        const int lda = (ta ? m : k) + 3, ldb = (tb ? k : n) + 1, ldc = n + 2;  // padded strides
        const auto a = test::random_uniform(static_cast<size_t>(ta ? k : m) * lda, 1 + m);
        const auto b = test::random_uniform(static_cast<size_t>(tb ? n : k) * ldb, 2 + n);
        const auto c0 = test::random_uniform(static_cast<size_t>(m) * ldc, 3 + k);
        const float alpha = 0.75f, beta = -0.5f;
        std::vector<double> want(c0.begin(), c0.end());
        for (int i = 0; i < m; ++i)
          for (int j = 0; j < n; ++j) {
            double s = 0;
            for (int p = 0; p < k; ++p) {
              const double av = ta ? a[static_cast<size_t>(p) * lda + i] : a[static_cast<size_t>(i) * lda + p];
              const double bv = tb ? b[static_cast<size_t>(j) * ldb + p] : b[static_cast<size_t>(p) * ldb + j];
              s += av * bv;
            }
            want[static_cast<size_t>(i) * ldc + j] = alpha * s + beta * c0[static_cast<size_t>(i) * ldc + j];
          }
        ASSERT_TRUE(test::not_all_zero(want));
        float *da = static_cast<float*>(ops.device_alloc(a.size() * 4)),
              *db = static_cast<float*>(ops.device_alloc(b.size() * 4)),
              *dc = static_cast<float*>(ops.device_alloc(c0.size() * 4));
        ops.copy_to_device(da, a.data(), a.size() * 4, stream);
        ops.copy_to_device(db, b.data(), b.size() * 4, stream);
        ops.copy_to_device(dc, c0.data(), c0.size() * 4, stream);
        GemmOp op{ta, tb, m, n, k, alpha, da, lda, db, ldb, beta, dc, ldc};
        ops.gemm(handle, op);
        std::vector<float> got(c0.size());
        ops.copy_to_host(got.data(), dc, got.size() * 4, stream);
        ops.device_free(da);
        ops.device_free(db);
        ops.device_free(dc);
        // Padding columns of C must be untouched.
        for (int i = 0; i < m; ++i)
          for (int j = n; j < ldc; ++j) want[static_cast<size_t>(i) * ldc + j] = c0[static_cast<size_t>(i) * ldc + j];
        EXPECT_TRUE(test::all_near(got, want, 1e-5 * k, 1e-5))
            << "transA " << ta << " transB " << tb << " m " << m << " n " << n << " k " << k;
      }
    }
  }
  ops.gemm_destroy(handle);
  ops.destroy_stream(stream);
}

INSTANTIATE_TEST_SUITE_P(Targets, Gemm, ::testing::ValuesIn(test::all_targets()), test::target_param_name);

}  // namespace
}  // namespace vae
