// The GEMM interface against a float64 loop, all transpose cases, odd sizes, alpha and beta.
#include <algorithm>
#include <cmath>

#include "ops.h"
#include "support.h"
#include "vae.h"

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

// The epilogues of a dense layer's three GEMMs (forward: bias + activation; input gradient:
// the activation derivative; weight gradient: the bias gradient), against float64 loops, for
// every activation, on odd sizes cut into row and column panels on the CPU.
TEST_P(Gemm, EpiloguesMatchFloat64Loops) {
  const TargetOps& ops = test::ops_of(GetParam());
  cudaStream_t stream = ops.create_stream();
  GemmHandle* handle = ops.gemm_create(stream, false);
  auto upload = [&](const std::vector<float>& v) {
    auto* p = static_cast<float*>(ops.device_alloc(v.size() * 4));
    ops.copy_to_device(p, v.data(), v.size() * 4, stream);
    return p;
  };
  auto download = [&](const float* p, size_t n) {
    std::vector<float> v(n);
    ops.copy_to_host(v.data(), p, n * 4, stream);
    return v;
  };
  for (auto [rows, out, in] : {std::tuple{7, 5, 3}, {129, 33, 20}, {517, 130, 40}, {300, 784, 17}, {33, 40, 400}})
    for (Activation act : {Activation::identity, Activation::relu, Activation::tanh}) {
      SCOPED_TRACE(std::to_string(rows) + "x" + std::to_string(out) + "x" + std::to_string(in) + " act " +
                   std::to_string(int(act)));
      const auto x = test::random_uniform(static_cast<size_t>(rows) * in, rows + in, -1, 1);
      const auto w = test::random_uniform(static_cast<size_t>(out) * in, out + in, -1, 1);
      const auto b = test::random_uniform(out, out, -1, 1);
      const auto g = test::random_uniform(static_cast<size_t>(rows) * out, rows + out + 1, -1, 1);
      auto h = test::random_uniform(static_cast<size_t>(rows) * in, rows * 3 + in, -1, 1);  // the layer below's output
      if (act == Activation::relu)
        for (auto& v : h) v = std::max(v, 0.f);
      float *dx = upload(x), *dw = upload(w), *db = upload(b), *dg = upload(g), *dh = upload(h);
      float* y = upload(std::vector<float>(static_cast<size_t>(rows) * out, 9.f));
      float* gw = upload(std::vector<float>(static_cast<size_t>(out) * in, 9.f));
      float* gb = upload(std::vector<float>(out, 9.f));
      float* gx = upload(std::vector<float>(static_cast<size_t>(rows) * in, 9.f));
      const LinearSlot s{0, 0, out, in};
      ops.gemm(handle, dense_forward_gemm(s, dx, dw, db, y, rows, act));
      ops.gemm(handle, dense_weight_grad_gemm(s, dg, dx, gw, gb, rows));
      ops.gemm(handle, dense_input_grad_gemm(s, dg, dw, gx, rows, dh, act));
      auto f = [&](double a) {
        return act == Activation::relu ? std::max(a, 0.0) : act == Activation::tanh ? std::tanh(a) : a;
      };
      auto df = [&](double hv) {
        return act == Activation::relu ? (hv > 0 ? 1.0 : 0.0) : act == Activation::tanh ? 1 - hv * hv : 1.0;
      };
      std::vector<double> want_y(static_cast<size_t>(rows) * out), want_gw(static_cast<size_t>(out) * in, 0.0),
          want_gb(out, 0.0), want_gx(static_cast<size_t>(rows) * in, 0.0);
      for (int r = 0; r < rows; ++r)
        for (int o = 0; o < out; ++o) {
          double a = b[o];
          for (int i = 0; i < in; ++i) a += double(x[r * in + i]) * w[o * in + i];
          want_y[r * out + o] = f(a);
          const double gv = g[r * out + o];
          want_gb[o] += gv;
          for (int i = 0; i < in; ++i) {
            want_gw[o * in + i] += gv * x[r * in + i];
            want_gx[r * in + i] += gv * w[o * in + i];
          }
        }
      for (size_t i = 0; i < want_gx.size(); ++i) want_gx[i] *= df(h[i]);
      ASSERT_TRUE(test::not_all_zero(want_gb));
      const double tol = 1e-5 * std::max(in, rows);
      EXPECT_TRUE(test::all_near(download(y, want_y.size()), want_y, tol, 1e-5)) << "forward";
      EXPECT_TRUE(test::all_near(download(gw, want_gw.size()), want_gw, tol, 1e-5)) << "weight gradient";
      EXPECT_TRUE(test::all_near(download(gb, want_gb.size()), want_gb, tol, 1e-5)) << "bias gradient";
      EXPECT_TRUE(test::all_near(download(gx, want_gx.size()), want_gx, tol, 1e-5)) << "input gradient";
      for (float* p : {dx, dw, db, dg, dh, y, gw, gb, gx}) ops.device_free(p);
    }
  ops.gemm_destroy(handle);
  ops.destroy_stream(stream);
}

INSTANTIATE_TEST_SUITE_P(Targets, Gemm, ::testing::ValuesIn(test::all_targets()), test::target_param_name);

}  // namespace
}  // namespace vae
