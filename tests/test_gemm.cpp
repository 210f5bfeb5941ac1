// The GEMM interface against a float64 loop, all transpose cases, odd sizes, alpha and beta.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <thread>

#include "model_run.h"  // install_stop_signals
#include "ops.h"
#include "support.h"
#include "vae.h"

namespace vae {
namespace {

struct GemmCase {
  bool ta, tb;
  int m, n, k;
};

float* upload_floats(Target target, cudaStream_t stream, const std::vector<float>& v) {
  auto* p = static_cast<float*>(VAE_CALL(target, device_alloc, v.size() * 4));
  VAE_CALL(target, copy_to_device, p, v.data(), v.size() * 4, stream);
  return p;
}
std::vector<float> download_floats(Target target, cudaStream_t stream, const float* p, size_t n) {
  std::vector<float> v(n);
  VAE_CALL(target, copy_to_host, v.data(), p, n * 4, stream);
  return v;
}

class Gemm : public ::testing::TestWithParam<Target> {
 protected:
  void SetUp() override { VAE_SKIP_WITHOUT_DEVICE(GetParam()); }
};

TEST_P(Gemm, MatchesFloat64Loop) {
  const Target target = GetParam();
  cudaStream_t stream = VAE_CALL(target, create_stream);
  GemmHandle* handle = VAE_CALL(target, gemm_create, stream, false);
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      // The last four are cut into panels on the CPU: by columns (m < n) and by rows, with ragged
      // ends, and (op(B) stored (k, n) and the largest) into K slices.
      for (auto [m, n, k] : {std::tuple{1, 1, 1},
                             {7, 5, 3},
                             {33, 65, 17},
                             {129, 20, 400},
                             {300, 784, 5},
                             {130, 517, 40},
                             {517, 130, 40},
                             {37, 301, 523}}) {
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
        float *da = static_cast<float*>(VAE_CALL(target, device_alloc, a.size() * 4)),
              *db = static_cast<float*>(VAE_CALL(target, device_alloc, b.size() * 4)),
              *dc = static_cast<float*>(VAE_CALL(target, device_alloc, c0.size() * 4));
        VAE_CALL(target, copy_to_device, da, a.data(), a.size() * 4, stream);
        VAE_CALL(target, copy_to_device, db, b.data(), b.size() * 4, stream);
        VAE_CALL(target, copy_to_device, dc, c0.data(), c0.size() * 4, stream);
        GemmOp op{ta, tb, m, n, k, alpha, da, lda, db, ldb, beta, dc, ldc};
        VAE_CALL(target, gemm, handle, op);
        std::vector<float> got(c0.size());
        VAE_CALL(target, copy_to_host, got.data(), dc, got.size() * 4, stream);
        VAE_CALL(target, device_free, da);
        VAE_CALL(target, device_free, db);
        VAE_CALL(target, device_free, dc);
        // Padding columns of C must be untouched.
        for (int i = 0; i < m; ++i)
          for (int j = n; j < ldc; ++j) want[static_cast<size_t>(i) * ldc + j] = c0[static_cast<size_t>(i) * ldc + j];
        EXPECT_TRUE(test::all_near(got, want, 1e-5 * k, 1e-5))
            << "transA " << ta << " transB " << tb << " m " << m << " n " << n << " k " << k;
      }
    }
  }
  VAE_CALL(target, gemm_destroy, handle);
  VAE_CALL(target, destroy_stream, stream);
}

// The epilogues of a dense layer's three GEMMs (forward: bias + activation; input gradient:
// the activation derivative; weight gradient: the bias gradient), against float64 loops, for
// every activation, on odd sizes cut into row and column panels and K slices on the CPU.
TEST_P(Gemm, EpiloguesMatchFloat64Loops) {
  const Target target = GetParam();
  cudaStream_t stream = VAE_CALL(target, create_stream);
  GemmHandle* handle = VAE_CALL(target, gemm_create, stream, false);
  auto upload = [&](const std::vector<float>& v) { return upload_floats(target, stream, v); };
  auto download = [&](const float* p, size_t n) { return download_floats(target, stream, p, n); };
  for (auto [rows, out, in] :
       {std::tuple{7, 5, 3}, {129, 33, 20}, {517, 130, 40}, {300, 784, 17}, {33, 40, 400}, {37, 523, 301}})
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
      VAE_CALL(target, gemm, handle, dense_forward_gemm(s, dx, dw, db, y, rows, act));
      VAE_CALL(target, gemm, handle, dense_weight_grad_gemm(s, dg, dx, gw, gb, rows));
      VAE_CALL(target, gemm, handle, dense_input_grad_gemm(s, dg, dw, gx, rows, dh, act));
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
      for (float* p : {dx, dw, db, dg, dh, y, gw, gb, gx}) VAE_CALL(target, device_free, p);
    }
  VAE_CALL(target, gemm_destroy, handle);
  VAE_CALL(target, destroy_stream, stream);
}

// A strided batch of the three GEMMs over 3 models (vae sweep's batched step: activations a
// padded stride apart, each model's weights and biases in its own parameter block, the bias
// gradient and dW into its own gradient block), each item against its float64 loops: on the GPU
// one cuBLASLt call with batch strides (and our epilogue kernels with a model index), on the CPU
// a call per item.
TEST_P(Gemm, StridedBatchesMatchFloat64LoopsPerItem) {
  const Target target = GetParam();
  cudaStream_t stream = VAE_CALL(target, create_stream);
  GemmHandle* handle = VAE_CALL(target, gemm_create, stream, false);
  auto upload = [&](const std::vector<float>& v) { return upload_floats(target, stream, v); };
  auto download = [&](const float* p, size_t n) { return download_floats(target, stream, p, n); };
  constexpr int M = 3;
  for (auto [rows, out, in] : {std::tuple{13, 33, 20}, {129, 40, 400}, {7, 5, 3}})
    for (Activation act : {Activation::identity, Activation::relu, Activation::tanh}) {
      SCOPED_TRACE(std::to_string(rows) + "x" + std::to_string(out) + "x" + std::to_string(in) + " act " +
                   std::to_string(int(act)));
      // Strides: the rows of a model's activations padded (a row capacity), its parameters a block.
      const long long sx = (rows + 3LL) * in, sy = (rows + 3LL) * out, P = 1LL * out * in + out + 7;
      const auto x = test::random_uniform(M * sx, rows + in, -1, 1);
      const auto params = test::random_uniform(M * P, out + in, -1, 1);
      const auto g = test::random_uniform(M * sy, rows + out + 1, -1, 1);
      auto h = test::random_uniform(M * sx, rows * 3 + in, -1, 1);
      if (act == Activation::relu)
        for (auto& v : h) v = std::max(v, 0.f);
      float *dx = upload(x), *dp = upload(params), *dg = upload(g), *dh = upload(h);
      float* y = upload(std::vector<float>(M * sy, 9.f));
      float* grads = upload(std::vector<float>(M * P, 9.f));
      float* gx = upload(std::vector<float>(M * sx, 9.f));
      const LinearSlot s{0, static_cast<size_t>(out) * in, out, in};
      auto batched = [&](GemmOp op, long long stride_a, long long stride_b, long long stride_c) {
        op.count = M;
        op.stride_a = stride_a, op.stride_b = stride_b, op.stride_c = stride_c, op.stride_bias = P;
        VAE_CALL(target, gemm, handle, op);
      };
      batched(dense_forward_gemm(s, dx, dp, dp + s.bias, y, rows, act), sx, P, sy);
      batched(dense_weight_grad_gemm(s, dg, dx, grads, grads + s.bias, rows), sy, sx, P);
      batched(dense_input_grad_gemm(s, dg, dp, gx, rows, dh, act), sy, P, sx);
      const auto got_y = download(y, M * sy), got_grads = download(grads, M * P), got_gx = download(gx, M * sx);
      for (int m = 0; m < M; ++m) {
        SCOPED_TRACE("model " + std::to_string(m));
        const float *xm = x.data() + m * sx, *wm = params.data() + m * P, *bm = wm + s.bias, *gm = g.data() + m * sy,
                    *hm = h.data() + m * sx;
        std::vector<double> want_y(static_cast<size_t>(rows) * out), want_gw(static_cast<size_t>(out) * in, 0.0),
            want_gb(out, 0.0), want_gx(static_cast<size_t>(rows) * in, 0.0);
        for (int r = 0; r < rows; ++r)
          for (int o = 0; o < out; ++o) {
            double a = bm[o];
            for (int i = 0; i < in; ++i) a += double(xm[r * in + i]) * wm[o * in + i];
            want_y[r * out + o] = act == Activation::relu   ? std::max(a, 0.0)
                                  : act == Activation::tanh ? std::tanh(a)
                                                            : a;
            const double gv = gm[r * out + o];
            want_gb[o] += gv;
            for (int i = 0; i < in; ++i) {
              want_gw[o * in + i] += gv * xm[r * in + i];
              want_gx[r * in + i] += gv * wm[o * in + i];
            }
          }
        for (size_t i = 0; i < want_gx.size(); ++i) {
          const double hv = hm[i];
          want_gx[i] *= act == Activation::relu ? (hv > 0 ? 1.0 : 0.0) : act == Activation::tanh ? 1 - hv * hv : 1.0;
        }
        ASSERT_TRUE(test::not_all_zero(want_gb));
        const double tol = 1e-5 * std::max(in, rows);
        auto part = [](const std::vector<float>& v, long long at, size_t n) {
          return std::vector<float>(v.begin() + at, v.begin() + at + static_cast<long long>(n));
        };
        EXPECT_TRUE(test::all_near(part(got_y, m * sy, want_y.size()), want_y, tol, 1e-5)) << "forward";
        EXPECT_TRUE(test::all_near(part(got_grads, m * P, want_gw.size()), want_gw, tol, 1e-5)) << "weight gradient";
        EXPECT_TRUE(test::all_near(part(got_grads, m * P + s.bias, out), want_gb, tol, 1e-5)) << "bias gradient";
        EXPECT_TRUE(test::all_near(part(got_gx, m * sx, want_gx.size()), want_gx, tol, 1e-5)) << "input gradient";
        // Past each item: the padding rows and the rest of the parameter block untouched.
        EXPECT_EQ(got_y[m * sy + rows * out], 9.f);
        EXPECT_EQ(got_grads[m * P + s.bias + out], 9.f);
        EXPECT_EQ(got_gx[m * sx + rows * in], 9.f);
      }
      for (float* p : {dx, dp, dg, dh, y, grads, gx}) VAE_CALL(target, device_free, p);
    }
  VAE_CALL(target, gemm_destroy, handle);
  VAE_CALL(target, destroy_stream, stream);
}

// x rounded to TF32 (10 explicit mantissa bits), to nearest.
std::vector<float> tf32_rounded(std::vector<float> v) {
  for (float& x : v) {
    uint32_t u;
    std::memcpy(&u, &x, 4);
    u = (u + 0x1000u) & 0xFFFFE000u;
    std::memcpy(&x, &u, 4);
  }
  return v;
}

// With tf32 = true (--tf32) cuBLASLt may round the inputs to TF32 (10-bit mantissa) on the tensor
// cores: every element within TF32's bound, (2⁻⁹ + k·2⁻²³)·Σ_p |α a_ip b_pj| (both inputs rounded
// or truncated, float sums), and visibly not fp32 (some element off by more than 2⁻¹⁶ of that
// sum, where the fp32 handle stays under 2⁻¹⁸), through a plain GEMM and the forward epilogue. On
// the CPU, TF32 is a GPU option: the handle computes exactly what the fp32 one does.
TEST_P(Gemm, Tf32IsTf32OnTheGpuAndFp32OnTheCpu) {
  const Target target = GetParam();
  cudaStream_t stream = VAE_CALL(target, create_stream);
  GemmHandle* handles[2] = {VAE_CALL(target, gemm_create, stream, false), VAE_CALL(target, gemm_create, stream, true)};
  auto upload = [&](const std::vector<float>& v) {
    auto* p = static_cast<float*>(VAE_CALL(target, device_alloc, v.size() * 4));
    VAE_CALL(target, copy_to_device, p, v.data(), v.size() * 4, stream);
    return p;
  };
  double worst[2] = {0, 0};  // the largest error over Σ|α a b| of any element, fp32 and TF32
  double emulated = 0;       // the same of TF32-rounded inputs through the fp32 GEMM (CPU)
  for (auto [ta, tb, m, n, k] : {std::tuple{false, false, 129, 65, 400},
                                 {true, false, 33, 517, 40},
                                 {false, true, 300, 20, 784},
                                 {true, true, 64, 64, 64}})
    for (bool epilogue : {false, true}) {
      if (epilogue && (ta || !tb)) continue;  // the forward epilogue is a row-major x Wᵀ
      SCOPED_TRACE(std::to_string(m) + "x" + std::to_string(n) + "x" + std::to_string(k) + (ta ? " Aᵀ" : "") +
                   (tb ? " Bᵀ" : "") + (epilogue ? " bias+tanh" : ""));
      const int lda = ta ? m : k, ldb = tb ? k : n;
      const auto a = test::random_uniform(static_cast<size_t>(ta ? k : m) * lda, 11 + m, -2, 2);
      const auto b = test::random_uniform(static_cast<size_t>(tb ? n : k) * ldb, 12 + n, -2, 2);
      const auto bias = test::random_uniform(n, 13, -1, 1);
      const float alpha = epilogue ? 1.f : 0.75f;
      std::vector<double> want(static_cast<size_t>(m) * n), mass(want.size());
      for (int i = 0; i < m; ++i)
        for (int j = 0; j < n; ++j) {
          double sum = 0, abs_sum = 0;
          for (int p = 0; p < k; ++p) {
            const double av = ta ? a[static_cast<size_t>(p) * lda + i] : a[static_cast<size_t>(i) * lda + p];
            const double bv = tb ? b[static_cast<size_t>(j) * ldb + p] : b[static_cast<size_t>(p) * ldb + j];
            sum += av * bv;
            abs_sum += std::fabs(av * bv);
          }
          want[static_cast<size_t>(i) * n + j] = epilogue ? std::tanh(sum + bias[j]) : alpha * sum;
          mass[static_cast<size_t>(i) * n + j] = alpha * abs_sum;  // tanh is 1-Lipschitz
        }
      float *da = upload(a), *db = upload(b), *dbias = upload(bias);
      std::vector<float> got[2];
      for (int tf32 = 0; tf32 < 2; ++tf32) {
        float* dc = upload(std::vector<float>(want.size(), 9.f));
        GemmOp op{ta, tb, m, n, k, alpha, da, lda, db, ldb, 0.f, dc, n};
        if (epilogue) op = dense_forward_gemm(n, k, da, db, dbias, dc, m, Activation::tanh);
        VAE_CALL(target, gemm, handles[tf32], op);
        got[tf32].resize(want.size());
        VAE_CALL(target, copy_to_host, got[tf32].data(), dc, want.size() * 4, stream);
        VAE_CALL(target, device_free, dc);
        for (size_t e = 0; e < want.size(); ++e) {
          const double err = std::fabs(got[tf32][e] - want[e]);
          worst[tf32] = std::max(worst[tf32], err / mass[e]);
          ASSERT_LE(err, (std::ldexp(1.0, -9) + k * std::ldexp(1.0, -23)) * mass[e] + 1e-7)
              << (tf32 ? "TF32" : "fp32") << " element " << e;
        }
      }
      if (target == Target::cpu) {
        EXPECT_EQ(got[0], got[1]) << "TF32 is a GPU option: the CPU computes fp32";
        // The thresholds themselves: fp32 GEMMs of TF32-rounded inputs (what the tensor cores
        // multiply) are within the bound and visibly off fp32, so the GPU half can fail.
        float *ra = upload(tf32_rounded(a)), *rb = upload(tf32_rounded(b)),
              *dc = upload(std::vector<float>(want.size(), 9.f));
        GemmOp op{ta, tb, m, n, k, alpha, ra, lda, rb, ldb, 0.f, dc, n};
        if (epilogue) op = dense_forward_gemm(n, k, ra, rb, dbias, dc, m, Activation::tanh);
        VAE_CALL(target, gemm, handles[0], op);
        std::vector<float> rounded(want.size());
        VAE_CALL(target, copy_to_host, rounded.data(), dc, want.size() * 4, stream);
        for (size_t e = 0; e < want.size(); ++e) {
          const double err = std::fabs(rounded[e] - want[e]);
          emulated = std::max(emulated, err / mass[e]);
          ASSERT_LE(err, (std::ldexp(1.0, -9) + k * std::ldexp(1.0, -23)) * mass[e] + 1e-7) << "emulated TF32";
        }
        for (float* p : {ra, rb, dc}) VAE_CALL(target, device_free, p);
      }
      for (float* p : {da, db, dbias}) VAE_CALL(target, device_free, p);
    }
  EXPECT_LT(worst[0], std::ldexp(1.0, -18)) << "fp32";
  if (target == Target::cuda) {
    EXPECT_GT(worst[1], std::ldexp(1.0, -16)) << "the TF32 handle computed in fp32";
  } else {
    EXPECT_GT(emulated, std::ldexp(1.0, -16)) << "TF32-rounded inputs";
  }
  for (GemmHandle* h : handles) VAE_CALL(target, gemm_destroy, h);
  VAE_CALL(target, destroy_stream, stream);
}

// Stop signals (SIGUSR1, as a cluster's preemption sends them) arriving by the thousand while the
// worker pool's threads are inside the CPU engine's products: each is recorded and nothing else
// changes. Every product stays bit-identical to the first of its shape, which matches a float64
// loop, and the heap stays intact (a corrupted heap aborts the process in a later free()). Why:
// oneDNN's JIT sgemm kernels (Debian 12's 2.6.3; fixed upstream in 3.11) point the stack pointer
// into a heap buffer, and a handler that ran on that stack wrote its frame over the heap — glibc
// aborted in about 1 of 30 signalled runs. Twice: the signals taken by the thread that calls the
// products (the kernel's first choice: its handlers run on their own stack), then with that thread
// blocking them for a while, so that the kernel looks for another thread (the pool's helpers block
// them too: a thread that runs no product takes them, or they wait). 0.8 s each (the abort came
// after a few dozen signals).
TEST(GemmOnTheCpu, StopSignalsDuringTheProductsChangeNothing) {
  const Target target = Target::cpu;
  cudaStream_t stream = VAE_CALL(target, create_stream);
  GemmHandle* handle = VAE_CALL(target, gemm_create, stream, false);
  struct Product {
    bool ta, tb;
    int m, n, k;
    std::vector<float> a, b;
    std::vector<double> want;
    std::vector<float> first;
  };
  std::vector<Product> products;
  for (auto [ta, tb, m, n, k] : {std::tuple{false, false, 129, 401, 785},
                                 {false, true, 129, 785, 401},
                                 {true, false, 401, 785, 129},
                                 {false, false, 517, 41, 401}}) {
    Product p{ta,
              tb,
              m,
              n,
              k,
              test::random_uniform(static_cast<size_t>(m) * k, 5 + m),
              test::random_uniform(static_cast<size_t>(k) * n, 6 + n),
              std::vector<double>(static_cast<size_t>(m) * n),
              {}};
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < n; ++j) {
        double s = 0;
        for (int q = 0; q < k; ++q) {
          s += static_cast<double>(ta ? p.a[static_cast<size_t>(q) * m + i] : p.a[static_cast<size_t>(i) * k + q]) *
               (tb ? p.b[static_cast<size_t>(j) * k + q] : p.b[static_cast<size_t>(q) * n + j]);
        }
        p.want[static_cast<size_t>(i) * n + j] = s;
      }
    products.push_back(std::move(p));
  }
  sigset_t usr1;
  sigemptyset(&usr1);
  sigaddset(&usr1, SIGUSR1);
  for (bool caller_blocks : {false, true}) {
    install_stop_signals();  // clears the request
    std::atomic<bool> done{false};
    std::atomic<long> sent{0};
    std::thread sender([&] {
      pthread_sigmask(SIG_BLOCK, &usr1, nullptr);  // not for this thread
      while (!done.load()) {
        kill(getpid(), SIGUSR1);
        sent.fetch_add(1);
        std::this_thread::sleep_for(std::chrono::microseconds(20));
      }
    });
    if (caller_blocks) pthread_sigmask(SIG_BLOCK, &usr1, nullptr);
    int rounds = 0;
    bool same = true;
    const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(800);
    for (; std::chrono::steady_clock::now() < until; ++rounds) {
      for (Product& p : products) {
        // Fresh device buffers each time: the heap is in use around the products.
        float* da = upload_floats(target, stream, p.a);
        float* db = upload_floats(target, stream, p.b);
        auto* dc = static_cast<float*>(VAE_CALL(target, device_alloc, p.want.size() * 4));
        GemmOp op{p.ta, p.tb, p.m, p.n, p.k, 1.f, da, p.ta ? p.m : p.k, db, p.tb ? p.k : p.n, 0.f, dc, p.n};
        VAE_CALL(target, gemm, handle, op);
        std::vector<float> got = download_floats(target, stream, dc, p.want.size());
        for (float* q : {da, db, dc}) VAE_CALL(target, device_free, q);
        if (p.first.empty()) {
          ASSERT_TRUE(test::all_near(got, p.want, 1e-5 * p.k, 1e-5)) << "m " << p.m << " n " << p.n << " k " << p.k;
          p.first = std::move(got);
        } else {
          same = same && got == p.first;
        }
      }
    }
    done = true;
    sender.join();
    if (caller_blocks) pthread_sigmask(SIG_UNBLOCK, &usr1, nullptr);  // a waiting signal is taken here
    EXPECT_TRUE(same) << "a product changed while signals arrived";
    EXPECT_EQ(stop_request(), 1) << sent.load() << " SIGUSR1 sent, none recorded";
    EXPECT_GT(rounds, 1);
  }
  VAE_CALL(target, gemm_destroy, handle);
  VAE_CALL(target, destroy_stream, stream);
}

// K slices (cpu_gemm_cut): the input gradient of an odd-sized layer whose W is the largest matrix
// is cut into K slices, and with 2 and 3 workers (2 and 3 slices, the last one short) its product,
// with the ReLU derivative, matches a float64 loop and repeats bit for bit; a product that
// reuses the handle's partials at another shape after it too.
TEST(GemmOnTheCpu, KSlicesMatchFloat64AndRepeatBitForBit) {
  const Target target = Target::cpu;
  cudaStream_t stream = VAE_CALL(target, create_stream);
  GemmHandle* handle = VAE_CALL(target, gemm_create, stream, false);
  const int rows = 37, out = 523, in = 301;
  const auto g = test::random_uniform(static_cast<size_t>(rows) * out, 11);
  const auto w = test::random_uniform(static_cast<size_t>(out) * in, 12);
  auto h = test::random_uniform(static_cast<size_t>(rows) * in, 13);
  for (auto& v : h) v = std::max(v, 0.f);  // a ReLU layer's output: some zeros
  std::vector<double> want(static_cast<size_t>(rows) * in, 0.0);
  for (int r = 0; r < rows; ++r)
    for (int i = 0; i < in; ++i) {
      double sum = 0;
      for (int o = 0; o < out; ++o)
        sum += double(g[static_cast<size_t>(r) * out + o]) * w[static_cast<size_t>(o) * in + i];
      want[static_cast<size_t>(r) * in + i] = h[static_cast<size_t>(r) * in + i] > 0 ? sum : 0.0;
    }
  ASSERT_TRUE(test::not_all_zero(want));
  float *dg = upload_floats(target, stream, g), *dw = upload_floats(target, stream, w),
        *dh = upload_floats(target, stream, h);
  float* dx = upload_floats(target, stream, std::vector<float>(static_cast<size_t>(rows) * in, 9.f));
  const GemmOp op = dense_input_grad_gemm(LinearSlot{0, 0, out, in}, dg, dw, dx, rows, dh, Activation::relu);
  ASSERT_EQ(cpu_gemm_cut(op, 2), CpuGemmCut::k_slices);
  ASSERT_EQ(cpu_gemm_cut(op, 3), CpuGemmCut::k_slices);
  EXPECT_NE(cpu_gemm_cut(op, 5), CpuGemmCut::k_slices);  // a partial product a slice: at most 4
  // A smaller K-sliced product on the same handle (its partials reused), run between the repeats.
  const auto a2 = test::random_uniform(17 * 200, 14), b2 = test::random_uniform(200 * 96, 15);
  float *da2 = upload_floats(target, stream, a2), *db2 = upload_floats(target, stream, b2);
  float* dc2 = upload_floats(target, stream, std::vector<float>(17 * 96, 0.f));
  const GemmOp other{false, false, 17, 96, 200, 1.f, da2, 200, db2, 96, 0.f, dc2, 96};
  ASSERT_EQ(cpu_gemm_cut(other, 2), CpuGemmCut::k_slices);
  for (int workers : {2, 3}) {
    test::ScopedWorkers scoped(target, workers);
    VAE_CALL(target, gemm, handle, op);
    const auto first = download_floats(target, stream, dx, want.size());
    EXPECT_TRUE(test::all_near(first, want, 1e-5 * out, 1e-5)) << workers << " workers";
    VAE_CALL(target, gemm, handle, other);
    std::vector<double> want2(17 * 96, 0.0);
    for (int i = 0; i < 17; ++i)
      for (int j = 0; j < 96; ++j)
        for (int p = 0; p < 200; ++p) want2[i * 96 + j] += double(a2[i * 200 + p]) * b2[p * 96 + j];
    EXPECT_TRUE(test::all_near(download_floats(target, stream, dc2, want2.size()), want2, 1e-5 * 200, 1e-5));
    VAE_CALL(target, gemm, handle, op);
    EXPECT_EQ(download_floats(target, stream, dx, want.size()), first) << workers << " workers: not the same bits";
  }
  for (float* p : {dg, dw, dh, dx, da2, db2, dc2}) VAE_CALL(target, device_free, p);
  VAE_CALL(target, gemm_destroy, handle);
  VAE_CALL(target, destroy_stream, stream);
}

INSTANTIATE_TEST_SUITE_P(Targets, Gemm, ::testing::ValuesIn(test::all_targets()), test::target_param_name);

}  // namespace
}  // namespace vae
