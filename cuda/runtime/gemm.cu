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
// C is cut into panels, one per worker: by rows (panels of op(A)) or by columns (panels of
// op(B)). Each panel's OpenBLAS call packs the whole of the operand that is not cut, so the cut
// goes through the dimension that leaves the smaller operand to be packed twice: rows when
// op(B) (k x n) is the smaller, columns when op(A) (m x k) is.
struct Panels {
  const GemmOp* op;
  bool by_columns;
  int per_panel;
};

void gemm_panel(int i, void* ctx) {
  const Panels& p = *static_cast<const Panels*>(ctx);
  const GemmOp& op = *p.op;
  const int start = i * p.per_panel;
  const float* a = op.a;
  const float* b = op.b;
  float* c = op.c;
  int m = op.m, n = op.n;
  if (p.by_columns) {
    n = std::min(p.per_panel, op.n - start);
    // Columns start.. of op(B): rows of B when it is transposed, columns otherwise.
    b = op.trans_b ? op.b + static_cast<size_t>(start) * op.ldb : op.b + start;
    c = op.c + start;
  } else {
    m = std::min(p.per_panel, op.m - start);
    // Rows start.. of op(A): columns of A when it is transposed, rows otherwise.
    a = op.trans_a ? op.a + start : op.a + static_cast<size_t>(start) * op.lda;
    c = op.c + static_cast<size_t>(start) * op.ldc;
  }
  cblas_sgemm(CblasRowMajor, op.trans_a ? CblasTrans : CblasNoTrans, op.trans_b ? CblasTrans : CblasNoTrans, m, n, op.k,
              op.alpha, a, op.lda, b, op.ldb, op.beta, c, op.ldc);
}
}  // namespace

void gemm(GemmHandle*, const GemmOp& op) {
  check_gemm(op);
  if (op.m == 0 || op.n == 0) return;
  const long long flops = 2ll * op.m * op.n * op.k;
  const bool by_columns = op.m < op.n;
  const int extent = by_columns ? op.n : op.m;
  // At least a megaflop and 16 rows or columns (a vector width) per panel.
  int panels = static_cast<int>(std::min<long long>(hx::workers(), std::max<long long>(1, flops / (1 << 20))));
  panels = std::min(panels, std::max(1, extent / 16));
  int per_panel = (extent + panels - 1) / panels;
  if (by_columns) per_panel = (per_panel + 15) / 16 * 16;  // whole vectors of C's rows per panel
  Panels p{&op, by_columns, per_panel};
  panels = (extent + per_panel - 1) / per_panel;
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
