// The GEMM interface: cuBLAS on the GPU, OpenBLAS on the CPU. Row-major, as PyTorch stores
// nn.Linear weights ([out, in]).
#include "runtime/compat.cuh"

#if VAE_HOST_EXEC
#include <cblas.h>
extern "C" void openblas_set_num_threads(int);
#else
#include <cublas_v2.h>
#endif

namespace vae {

#if VAE_HOST_EXEC
struct GemmHandle {};
#else
struct GemmHandle {
  cublasHandle_t cublas = nullptr;
  void* workspace = nullptr;
};
#endif

namespace VAE_NS {

namespace {
void check_gemm(const GemmOp& op) {
  VAE_REQUIRE(op.m >= 0 && op.n >= 0 && op.k >= 0, "gemm: negative size");
  VAE_REQUIRE(op.lda >= (op.trans_a ? op.m : op.k) || op.m == 0, "gemm: lda too small");
  VAE_REQUIRE(op.ldb >= (op.trans_b ? op.k : op.n) || op.k == 0, "gemm: ldb too small");
  VAE_REQUIRE(op.ldc >= op.n || op.m == 0, "gemm: ldc too small");
}
}  // namespace

#if VAE_HOST_EXEC

GemmHandle* gemm_create(cudaStream_t, bool) {
  // The host-execution worker pool owns the cores: OpenBLAS runs one thread per call and the
  // pool splits C into row panels, so BLAS threads never spin against kernel workers.
  openblas_set_num_threads(1);
  return new GemmHandle{};
}
void gemm_destroy(GemmHandle* h) noexcept { delete h; }

namespace {
struct Panels {
  const GemmOp* op;
  int rows_per_panel;
};
void gemm_panel(int i, void* ctx) {
  const Panels& p = *static_cast<const Panels*>(ctx);
  const GemmOp& op = *p.op;
  const int m0 = i * p.rows_per_panel;
  const int m = std::min(p.rows_per_panel, op.m - m0);
  // Rows m0.. of op(A): row offset in A, or column offset when A is transposed.
  const float* a = op.trans_a ? op.a + m0 : op.a + static_cast<size_t>(m0) * op.lda;
  cblas_sgemm(CblasRowMajor, op.trans_a ? CblasTrans : CblasNoTrans, op.trans_b ? CblasTrans : CblasNoTrans, m, op.n,
              op.k, op.alpha, a, op.lda, op.b, op.ldb, op.beta, op.c + static_cast<size_t>(m0) * op.ldc, op.ldc);
}
}  // namespace

void gemm(GemmHandle*, const GemmOp& op) {
  check_gemm(op);
  if (op.m == 0 || op.n == 0) return;
  const long long flops = 2ll * op.m * op.n * op.k;
  int panels = std::min<long long>(hx::workers(), std::max<long long>(1, flops / (1 << 20)));
  panels = std::min(panels, std::max(1, op.m / 16));
  Panels p{&op, static_cast<int>((op.m + panels - 1) / panels)};
  panels = (op.m + p.rows_per_panel - 1) / p.rows_per_panel;
  hx::parallel_for(panels, gemm_panel, &p);
}

#else

GemmHandle* gemm_create(cudaStream_t stream, bool tf32) {
  auto* h = new GemmHandle{};
  try {
    VAE_CUBLAS_CHECK(cublasCreate(&h->cublas));
    VAE_CUBLAS_CHECK(cublasSetStream(h->cublas, stream));
    // A workspace of our own keeps cuBLAS from allocating during CUDA-graph capture.
    constexpr size_t kWorkspace = 32u << 20;
    VAE_CUDA_CHECK(cudaMalloc(&h->workspace, kWorkspace));
    VAE_CUBLAS_CHECK(cublasSetWorkspace(h->cublas, h->workspace, kWorkspace));
    VAE_CUBLAS_CHECK(cublasSetMathMode(h->cublas, tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
  } catch (...) {
    gemm_destroy(h);
    throw;
  }
  return h;
}
void gemm_destroy(GemmHandle* h) noexcept {
  if (!h) return;
  if (h->cublas) cublasDestroy(h->cublas);
  if (h->workspace) cudaFree(h->workspace);
  delete h;
}

void gemm(GemmHandle* h, const GemmOp& op) {
  check_gemm(op);
  if (op.m == 0 || op.n == 0) return;
  // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands.
  VAE_CUBLAS_CHECK(cublasSgemm(h->cublas, op.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                               op.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, op.n, op.m, op.k, &op.alpha, op.b, op.ldb, op.a,
                               op.lda, &op.beta, op.c, op.ldc));
}

#endif

}  // namespace VAE_NS
}  // namespace vae
