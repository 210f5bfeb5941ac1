// The GEMM interface: cuBLASLt on the GPU, OpenBLAS on the CPU. Row-major, as PyTorch stores
// nn.Linear weights ([out, in]). The epilogues of a dense layer ride on its GEMMs (types.h):
// bias + activation on the forward GEMM, the activation derivative on the input-gradient GEMM,
// the bias gradient on the weight-gradient GEMM. On the CPU each panel of C applies them while
// it is in cache; on the GPU cuBLASLt's epilogues do what they can (bias, ReLU, the bias
// gradient) and our kernels the rest (tanh, the activation derivative).
#include <algorithm>
#include <map>
#include <vector>
#include <utility>
#include <tuple>

#include "ops.h"  // the entry points this file defines
#include "kernels/activation.cuh"

#if VAE_HOST_EXEC
#include <cblas.h>
extern "C" void openblas_set_num_threads(int);
#if VAE_WITH_ONEDNN
#include <omp.h>
#include <oneapi/dnnl/dnnl.h>
#endif
#include <cstdio>
#include <cstdlib>
#include <cstring>
#else
#include <cublasLt.h>
#endif

namespace vae {

#if VAE_HOST_EXEC
// The engine of each panel's product on the CPU, one thread each (the worker pool owns the
// cores). Chosen by measurement (bench/bench_gemm.cpp; bench/RESULTS-cpu-step.md, 2026-12-06, 2 vCPUs
// of an Intel Xeon with AVX-512): on the step's eleven GEMMs at batch 128, one thread, oneDNN
// 2.6's dnnl_sgemm runs at 153 GFLOP/s, OpenBLAS 0.3.21 (SkylakeX kernels) at 130 and BLIS 0.9
// (it picks its Haswell kernels here) at 84; at batch 4096, 152, 139 and 95. Eigen 3.4 ran at
// 0.73-0.92x oneDNN on every shape; libxsmm hands products over 64^3 to the BLAS; XNNPACK's fully
// connected operator wants constant weights. Limited to AVX2 (as
// on AMD's Zen), the trainer's panels still run 1.1x faster on oneDNN than on OpenBLAS's Haswell
// or Zen kernels. oneDNN is the default where the build has it, OpenBLAS elsewhere;
// VAE_CPU_GEMM=openblas|onednn chooses. oneDNN's JIT sgemm kernels point the stack pointer into a
// heap buffer (its issue 4845, fixed in 3.11): a signal handler run there writes its frame over
// the heap, and glibc aborted in about 1 signalled run of 30. So signal handlers run on an
// alternate stack (install_stop_signals) and the pool's helpers block asynchronous signals
// (runtime/workers.cpp); tests/test_gemm.cpp's GemmOnTheCpu test sends thousands of signals
// during products. Each call on a panel is single-threaded and its blocking fixed by the shapes:
// the same bits every run.
enum class CpuGemmEngine { openblas, onednn };
struct GemmHandle {
  CpuGemmEngine engine = CpuGemmEngine::openblas;
  std::vector<float> partials;  // the K slices' partial products after the first (CpuGemmCut::k_slices)
};

// The CPU's cut of a product (dense_gemm.h), where it has at least two panels' work.
//
// K slices where B is stored (k, n) and is the largest of the three matrices (not for a bias
// gradient, which sums over K): column panels would read B in short row segments and row panels
// would read all of it on every worker, and each leaves B's lines in both workers' caches, where
// the optimizer then writes W. K slices read contiguous blocks of B's rows, one per worker. In the
// default model's step this is the output layer's input gradient 128x400x784 (B = W stored
// (784, 400)): 299-337 -> 279-304 us, and the optimizer 256-296 -> 221-252 us (bench_step
// --kernels, six pairs alternating with column panels, 2026-12-06); `vae train --epochs 3` 0.964x
// the wall (0.934-1.003, 8 pairs). On row panels instead the GEMM took 280-285 us but the
// optimizer 310-322. Measured with 2 workers; each slice after the first writes a partial product
// of C's size that the sum reads back, so K slices only up to kMaxKSlices workers.
//
// Else by columns where op(A) and, with an epilogue, C's pass are smaller than op(B), in
// elements: without an epilogue, columns where m < n. This puts 128x400x20 (bias + ReLU) and
// 128x400x40 (ReLU derivative) on row panels: 32-34 -> 20-23 us each (four pairs alternating with
// the m < n rule); the forward GEMMs (B = W stored (n, k): column panels read whole rows of it)
// keep column panels, which rows made 1.15-1.2x slower.
constexpr int kMaxKSlices = 4;
CpuGemmCut cpu_gemm_cut(const GemmOp& op, int workers) {
  const long long mk = static_cast<long long>(op.m) * op.k, kn = static_cast<long long>(op.k) * op.n;
  const long long mn = static_cast<long long>(op.m) * op.n;
  if (!op.trans_b && !op.bias_grad && kn >= mk && kn >= mn && workers <= kMaxKSlices) return CpuGemmCut::k_slices;
  const long long c_pass = op.epilogue != Epilogue::none ? mn : 0;
  return mk + c_pass < kn ? CpuGemmCut::columns : CpuGemmCut::rows;
}
#else
// A cuBLASLt call prepared for one shape, epilogue and operand alignment: the descriptors and the
// algorithm, chosen once by the heuristics (deterministic: the same algorithm every run, so the
// same bits) and reused by every later call, CUDA-graph capture included.
struct GemmPlan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
  cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
};
struct GemmHandle {
  cublasLtHandle_t lt = nullptr;
  cudaStream_t stream = nullptr;
  bool tf32 = false;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  ReduceScratch scratch;  // for the epilogue kernels' bias sums
  std::map<std::tuple<int, int, int, int, int, int, int, int, int, int, int, int, int, int, long long, long long,
                      long long, long long>,
           GemmPlan>
      plans;
};
#endif

namespace VAE_NS {

namespace {
void check_gemm(const GemmOp& op) {
  VAE_REQUIRE(op.m >= 0 && op.n >= 0 && op.k >= 0, "gemm: negative size");
  VAE_REQUIRE(op.lda >= (op.trans_a ? op.m : op.k) || op.m == 0, "gemm: lda too small");
  VAE_REQUIRE(op.ldb >= (op.trans_b ? op.k : op.n) || op.k == 0, "gemm: ldb too small");
  VAE_REQUIRE(op.ldc >= op.n || op.m == 0, "gemm: ldc too small");
  VAE_REQUIRE(op.epilogue == Epilogue::none || op.beta == 0.f, "gemm: an epilogue needs beta = 0");
  VAE_REQUIRE(op.epilogue != Epilogue::bias_activation || op.bias, "gemm: bias_activation needs a bias");
  VAE_REQUIRE(!op.bias_grad || (op.trans_a && op.lda == op.m), "gemm: bias_grad needs A stored (k, m) densely");
  VAE_REQUIRE(op.epilogue != Epilogue::activation_grad || op.activation_output || op.activation == Activation::identity,
              "gemm: activation_grad needs the layer output");
  VAE_REQUIRE(op.count >= 1 && op.count <= 65535, "gemm: batch count out of range");
}
}  // namespace

#if VAE_HOST_EXEC

GemmHandle* gemm_create(cudaStream_t, bool) {
  // The host-execution worker pool owns the cores: the engine runs one thread per call and the
  // pool splits C into row panels, so BLAS threads never spin against kernel workers.
  openblas_set_num_threads(1);
  auto* h = new GemmHandle{};
  h->engine = VAE_WITH_ONEDNN ? CpuGemmEngine::onednn : CpuGemmEngine::openblas;  // see CpuGemmEngine
  if (const char* env = std::getenv("VAE_CPU_GEMM"); env && *env) {
    if (std::strcmp(env, "openblas") == 0) {
      h->engine = CpuGemmEngine::openblas;
    } else if (std::strcmp(env, "onednn") == 0 && VAE_WITH_ONEDNN) {
      h->engine = CpuGemmEngine::onednn;
    } else {
      delete h;
      throw Error(std::string("VAE_CPU_GEMM: '") + env + "' is not an engine of this build (openblas" +
                  (VAE_WITH_ONEDNN ? ", onednn)" : "; onednn needs libdnnl-dev at build time)"));
    }
  }
  return h;
}
void gemm_destroy(GemmHandle* h) noexcept { delete h; }

namespace {
// C is cut into panels, one per worker: by rows (panels of op(A)) or by columns (panels of
// op(B)), or the product into K slices. Each panel's engine call packs the whole of the operand
// that is not cut: row panels pack op(B) (k x n) twice, column panels op(A) (m x k). Column panels
// have a second cost: a panel of C is m short row segments, and an epilogue pass over them is slow
// (each worker walking 128 segments of 208 floats of a 128 x 400 C took 7.5 us alone and 13 us
// with the other worker on its half, against 3.5 us for 64 whole rows, Intel Xeon, 2 vCPUs). K
// slices: slice s multiplies op(A)'s columns and op(B)'s rows [k_s, k_s+1) into C (the first) or
// into a partial C of its own, then row panels of C add the partials in slice order and run the
// epilogue (gemm_k_slice, gemm_k_sum). See cpu_gemm_cut.
struct Panels {
  CpuGemmEngine engine;
  const GemmOp* op;
  bool by_columns;
  int per_panel;
  int count;
};

// The epilogue over the block C[r0 .. r0 + rows) x [c0 .. c0 + cols) of one panel, while it is
// in cache. One instance per activation keeps the inner loops free of branches (they vectorize),
// built for AVX-512 and AVX2 as the kernels are (this and panel_bias_grad: the step's GEMMs
// 1598-1622 us against 1647-1659 in SSE, bench_step --kernels, four alternating pairs, Intel
// Xeon, 2026-12-06).
template <Activation act>
VAE_KERNEL_CLONES void panel_epilogue(const GemmOp& op, int r0, int rows, int c0, int cols) {
  for (int i = r0; i < r0 + rows; ++i) {
    float* __restrict__ c = op.c + static_cast<size_t>(i) * op.ldc + c0;
    if (op.epilogue == Epilogue::bias_activation) {
      const float* __restrict__ bias = op.bias + c0;
      for (int j = 0; j < cols; ++j) c[j] = activate(c[j] + bias[j], act);
    } else if constexpr (act != Activation::identity) {
      const float* __restrict__ h = op.activation_output + static_cast<size_t>(i) * op.ldc + c0;
      if constexpr (act == Activation::relu) {
        for (int j = 0; j < cols; ++j) c[j] = h[j] > 0.f ? c[j] : 0.f;
      } else {
        for (int j = 0; j < cols; ++j) c[j] *= activation_grad(h[j], act);
      }
    }
  }
}

// bias_grad[i] = Σ_p A[p, i] for i in [i0, i1), each a sum in the order p = 0, 1, ...: rows of
// A added a vector of [i0, i1) at a time.
VAE_KERNEL_CLONES void panel_bias_grad(const GemmOp& op, int i0, int i1) {
  float* __restrict__ out = op.bias_grad;
  for (int i = i0; i < i1; ++i) out[i] = 0.f;
  for (int p = 0; p < op.k; ++p) {
    const float* __restrict__ a = op.a + static_cast<size_t>(p) * op.lda;
    for (int i = i0; i < i1; ++i) out[i] += a[i];
  }
}

// C (m × n) = alpha op(A) op(B) + beta C of one panel, on one thread of the engine.
void panel_product(CpuGemmEngine engine, const GemmOp& op, int m, int n, const float* a, const float* b, float* c) {
#if VAE_WITH_ONEDNN
  if (engine == CpuGemmEngine::onednn) {
    // oneDNN parallelizes with OpenMP: one thread from each pool worker (the ICV is per thread).
    thread_local const bool one_thread = (omp_set_num_threads(1), true);
    (void)one_thread;
    const dnnl_status_t st = dnnl_sgemm(op.trans_a ? 'T' : 'N', op.trans_b ? 'T' : 'N', m, n, op.k, op.alpha, a, op.lda,
                                        b, op.ldb, op.beta, c, op.ldc);
    VAE_REQUIRE(st == dnnl_success, "gemm: dnnl_sgemm failed (status " + std::to_string(static_cast<int>(st)) + ")");
    return;
  }
#else
  (void)engine;
#endif
  cblas_sgemm(CblasRowMajor, op.trans_a ? CblasTrans : CblasNoTrans, op.trans_b ? CblasTrans : CblasNoTrans, m, n, op.k,
              op.alpha, a, op.lda, b, op.ldb, op.beta, c, op.ldc);
}

// The op's epilogue, if any, over C[r0 .. r0 + rows) x [c0 .. c0 + cols).
void run_epilogue(const GemmOp& op, int r0, int rows, int c0, int cols) {
  if (op.epilogue == Epilogue::none) return;
  switch (op.activation) {
    case Activation::relu:
      panel_epilogue<Activation::relu>(op, r0, rows, c0, cols);
      break;
    case Activation::tanh:
      panel_epilogue<Activation::tanh>(op, r0, rows, c0, cols);
      break;
    default:
      panel_epilogue<Activation::identity>(op, r0, rows, c0, cols);
      break;
  }
}

void gemm_panel(int panel, void* ctx) {
  const Panels& p = *static_cast<const Panels*>(ctx);
  const GemmOp& op = *p.op;
  const int start = panel * p.per_panel;
  const float* a = op.a;
  const float* b = op.b;
  float* c = op.c;
  int m = op.m, n = op.n, r0 = 0, c0 = 0;
  if (p.by_columns) {
    n = std::min(p.per_panel, op.n - start);
    c0 = start;
    // Columns start.. of op(B): rows of B when it is transposed, columns otherwise.
    b = op.trans_b ? op.b + static_cast<size_t>(start) * op.ldb : op.b + start;
    c = op.c + start;
  } else {
    m = std::min(p.per_panel, op.m - start);
    r0 = start;
    // Rows start.. of op(A): columns of A when it is transposed, rows otherwise.
    a = op.trans_a ? op.a + start : op.a + static_cast<size_t>(start) * op.lda;
    c = op.c + static_cast<size_t>(start) * op.ldc;
  }
  panel_product(p.engine, op, m, n, a, b, c);
  run_epilogue(op, r0, m, c0, n);
  if (op.bias_grad) {  // the panel's rows of C; with column panels, an equal share of the rows
    if (p.by_columns) {
      panel_bias_grad(op, static_cast<int>(static_cast<long long>(op.m) * panel / p.count),
                      static_cast<int>(static_cast<long long>(op.m) * (panel + 1) / p.count));
    } else {
      panel_bias_grad(op, r0, r0 + m);
    }
  }
}
// K slices (CpuGemmCut::k_slices): slice s multiplies op(A)'s columns and op(B)'s rows [s·per_slice,
// (s + 1)·per_slice), the first into C (with beta), the others into partial products of their own
// (m x n, beta 0); then row panels of C add the partials in slice order (the same sum every run)
// and run the epilogue.
struct KSlices {
  CpuGemmEngine engine;
  const GemmOp* op;
  float* partials;  // (count - 1) x (m x n)
  int per_slice;    // K of a slice (the last may have less), a multiple of 16
  int count;
  int row_panels;  // of the sum
};

void gemm_k_slice(int slice, void* ctx) {
  const KSlices& p = *static_cast<const KSlices*>(ctx);
  const GemmOp& op = *p.op;
  const int k0 = slice * p.per_slice;
  GemmOp part = op;
  part.k = std::min(p.per_slice, op.k - k0);
  // Columns k0.. of op(A): rows of A when it is transposed, columns otherwise; rows k0.. of B (stored (k, n)).
  const float* a = op.trans_a ? op.a + static_cast<size_t>(k0) * op.lda : op.a + k0;
  const float* b = op.b + static_cast<size_t>(k0) * op.ldb;
  float* c = op.c;
  if (slice > 0) {
    part.beta = 0.f;
    part.ldc = op.n;
    c = p.partials + static_cast<size_t>(slice - 1) * op.m * op.n;
  }
  panel_product(p.engine, part, op.m, op.n, a, b, c);
}

// c[j] += q[j], j < n.
VAE_KERNEL_CLONES void add_row(float* __restrict__ c, const float* __restrict__ q, int n) {
  for (int j = 0; j < n; ++j) c[j] += q[j];
}

void gemm_k_sum(int panel, void* ctx) {
  const KSlices& p = *static_cast<const KSlices*>(ctx);
  const GemmOp& op = *p.op;
  const int r0 = static_cast<int>(static_cast<long long>(op.m) * panel / p.row_panels);
  const int r1 = static_cast<int>(static_cast<long long>(op.m) * (panel + 1) / p.row_panels);
  for (int i = r0; i < r1; ++i)
    for (int s = 1; s < p.count; ++s)
      add_row(op.c + static_cast<size_t>(i) * op.ldc,
              p.partials + (static_cast<size_t>(s - 1) * op.m + i) * static_cast<size_t>(op.n), op.n);
  run_epilogue(op, r0, r1 - r0, 0, op.n);
}
}  // namespace

void gemm(GemmHandle* h, const GemmOp& op) {
  check_gemm(op);
  if (op.count > 1) {  // a batch: each GEMM as a call of its own (the same panels, the same bits)
    for (int i = 0; i < op.count; ++i) gemm(h, op.item(i));
    return;
  }
  hx::count_gemm_call();
  if (op.m == 0 || op.n == 0) return;
  char name[64] = "gemm";
  if (hx::profiling()) {  // the profile's entry: the GEMM's shape, as bench_gemm names it
    std::snprintf(name, sizeof name, "gemm %dx%dx%d %s", op.m, op.n, op.k,
                  op.trans_a   ? "AT.B"
                  : op.trans_b ? "A.BT"
                               : "A.B");
  }
  // At least a quarter megaflop and 16 rows, columns (a vector width) or K per panel or slice. (A
  // megaflop left the latent layer's 2-megaflop GEMMs on one worker while the other waited: split,
  // the step's 400x20x128 took 27 us instead of 43 and 128x20x400 16 instead of 22; bench_step
  // --kernels, 2 vCPUs of an Intel Xeon, 2026-12-06, three alternating pairs.)
  const long long flops = 2ll * op.m * op.n * op.k;
  const int most = static_cast<int>(std::min<long long>(hx::workers(), std::max<long long>(1, flops / (1 << 18))));
  const CpuGemmCut cut = cpu_gemm_cut(op, hx::workers());
  if (cut == CpuGemmCut::k_slices) {
    const int want = std::min(most, std::max(1, op.k / 16));
    const int per_slice = ((op.k + want - 1) / want + 15) / 16 * 16;
    const int slices = (op.k + per_slice - 1) / per_slice;
    if (slices >= 2) {
      const size_t partial = static_cast<size_t>(op.m) * op.n;
      if (h->partials.size() < (slices - 1) * partial) h->partials.resize((slices - 1) * partial);
      KSlices p{h->engine, &op, h->partials.data(), per_slice, slices, std::min(hx::workers(), std::max(1, op.m / 16))};
      hx::run_profiled(name, [&] {
        hx::parallel_for(slices, gemm_k_slice, &p);
        hx::parallel_for(p.row_panels, gemm_k_sum, &p);
      });
      return;
    }
  }
  const bool by_columns = cut == CpuGemmCut::columns;
  const int extent = by_columns ? op.n : op.m;
  int panels = std::min(most, std::max(1, extent / 16));
  int per_panel = (extent + panels - 1) / panels;
  if (by_columns) per_panel = (per_panel + 15) / 16 * 16;  // whole vectors of C's rows per panel
  panels = (extent + per_panel - 1) / per_panel;
  Panels p{h->engine, &op, by_columns, per_panel, panels};
  hx::run_profiled(name, [&] { hx::parallel_for(panels, gemm_panel, &p); });
}

#else

namespace {

void set_attribute(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t attr, const void* v, size_t size) {
  VAE_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d, attr, v, size));
}

// The largest power of 2 (up to 256) that divides the address, and with a batch stride (floats)
// every address of the batch: the plan's alignment class.
int alignment(const void* p, long long stride = 0) {
  const auto a = reinterpret_cast<uintptr_t>(p) | static_cast<uintptr_t>(stride * sizeof(float));
  int bytes = 256;
  while (bytes > 4 && a % bytes != 0) bytes /= 2;
  return bytes;
}

// What cuBLASLt does of the op's epilogue; the rest is left to our kernels.
cublasLtEpilogue_t lt_epilogue(const GemmOp& op) {
  if (op.bias_grad) return op.epilogue == Epilogue::none ? CUBLASLT_EPILOGUE_BGRADB : CUBLASLT_EPILOGUE_DEFAULT;
  if (op.epilogue == Epilogue::bias_activation) {
    if (op.activation == Activation::relu) return CUBLASLT_EPILOGUE_RELU_BIAS;
    if (op.activation == Activation::identity) return CUBLASLT_EPILOGUE_BIAS;
  }
  return CUBLASLT_EPILOGUE_DEFAULT;
}

const void* lt_vector(const GemmOp& op, cublasLtEpilogue_t e) {
  if (e == CUBLASLT_EPILOGUE_BGRADB) return op.bias_grad;
  if (e == CUBLASLT_EPILOGUE_BIAS || e == CUBLASLT_EPILOGUE_RELU_BIAS) return op.bias;
  return nullptr;
}

void destroy_plan(GemmPlan& p) noexcept {
  if (p.desc) cublasLtMatmulDescDestroy(p.desc);
  if (p.a) cublasLtMatrixLayoutDestroy(p.a);
  if (p.b) cublasLtMatrixLayoutDestroy(p.b);
  if (p.c) cublasLtMatrixLayoutDestroy(p.c);
  p = GemmPlan{};
}

// Row-major C = op(A) op(B) is column-major Cᵀ = op(B)ᵀ op(A)ᵀ: cuBLASLt's A is our B and its B
// our A; its (m, n) our (n, m). Our bias (n) is then its bias over D's rows, and our bias
// gradient (m, a sum of op(A) over k) its BGRADB (a sum of its B over k, one per column of D).
// Returns false when the heuristics offer no algorithm for the epilogue.
bool make_plan(GemmHandle* h, const GemmOp& op, cublasLtEpilogue_t epilogue, GemmPlan& plan) {
  VAE_CUBLAS_CHECK(
      cublasLtMatmulDescCreate(&plan.desc, h->tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t ta = op.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, tb = op.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  set_attribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta));
  set_attribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb));
  set_attribute(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue));
  const void* vec = lt_vector(op, epilogue);  // the heuristics read its alignment
  set_attribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &vec, sizeof(vec));
  plan.epilogue = epilogue;
  // Column-major shapes: its A is (n x k) or, transposed, (k x n); its B (k x m) or (m x k).
  VAE_CUBLAS_CHECK(
      cublasLtMatrixLayoutCreate(&plan.a, CUDA_R_32F, op.trans_b ? op.k : op.n, op.trans_b ? op.n : op.k, op.ldb));
  VAE_CUBLAS_CHECK(
      cublasLtMatrixLayoutCreate(&plan.b, CUDA_R_32F, op.trans_a ? op.m : op.k, op.trans_a ? op.k : op.m, op.lda));
  VAE_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.c, CUDA_R_32F, op.n, op.m, op.ldc));
  if (op.count > 1) {  // a strided batch: every layout its count and stride, the vector its stride
    const int32_t count = op.count;
    const int64_t sa = op.stride_b, sb = op.stride_a, sc = op.stride_c, sv = op.stride_bias;
    for (auto [layout, stride] : {std::pair{plan.a, sa}, std::pair{plan.b, sb}, std::pair{plan.c, sc}}) {
      VAE_CUBLAS_CHECK(
          cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count)));
      VAE_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride,
                                                        sizeof(stride)));
    }
    set_attribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE, &sv, sizeof(sv));
  }

  cublasLtMatmulPreference_t pref = nullptr;
  VAE_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  try {
    const uint64_t ws = h->workspace_bytes;
    VAE_CUBLAS_CHECK(
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
    // Every split-K reduction scheme is allowed: each adds the parts in a fixed order (the same
    // bits every run). Limiting them to NONE|INPLACE, to save the separate reduce kernel, made the
    // heuristics pick serial in-place split-K for the thin GEMMs of batch 128 on an H200
    // (128x40x400: 120 us instead of ~6; the epoch 3.2x slower; bench/RESULTS.md, 2026-11-26).
    const uint32_t align_a = alignment(op.b, op.stride_b), align_b = alignment(op.a, op.stride_a),
                   align_c = alignment(op.c, op.stride_c);
    VAE_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a,
                                                          sizeof(align_a)));
    VAE_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b,
                                                          sizeof(align_b)));
    VAE_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_c,
                                                          sizeof(align_c)));
    VAE_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_c,
                                                          sizeof(align_c)));
    const cublasStatus_t st =
        cublasLtMatmulAlgoGetHeuristic(h->lt, plan.desc, plan.a, plan.b, plan.c, plan.c, pref, 1, &result, &found);
    if (st != CUBLAS_STATUS_SUCCESS && st != CUBLAS_STATUS_NOT_SUPPORTED) VAE_CUBLAS_CHECK(st);
  } catch (...) {
    cublasLtMatmulPreferenceDestroy(pref);
    destroy_plan(plan);
    throw;
  }
  cublasLtMatmulPreferenceDestroy(pref);
  if (found < 1 || result.state != CUBLAS_STATUS_SUCCESS) {
    destroy_plan(plan);
    return false;
  }
  plan.algo = result.algo;
  return true;
}

GemmPlan& plan_for(GemmHandle* h, const GemmOp& op) {
  const cublasLtEpilogue_t wanted = lt_epilogue(op);
  const auto key =
      std::make_tuple(int(op.trans_a), int(op.trans_b), op.m, op.n, op.k, op.lda, op.ldb, op.ldc, int(wanted),
                      alignment(op.a, op.stride_a), alignment(op.b, op.stride_b), alignment(op.c, op.stride_c),
                      lt_vector(op, wanted) ? alignment(lt_vector(op, wanted), op.stride_bias) : 0, op.count,
                      op.stride_a, op.stride_b, op.stride_c, op.stride_bias);
  auto it = h->plans.find(key);
  if (it != h->plans.end()) return it->second;
  GemmPlan plan;
  // Where cuBLASLt has no algorithm for the epilogue, a plain GEMM and our kernels do it all.
  if (!make_plan(h, op, wanted, plan) && !make_plan(h, op, CUBLASLT_EPILOGUE_DEFAULT, plan)) {
    throw Error("gemm: cuBLASLt offers no algorithm for a " + std::to_string(op.m) + "x" + std::to_string(op.n) + "x" +
                std::to_string(op.k) + " fp32 GEMM");
  }
  return h->plans.emplace(key, plan).first->second;
}

}  // namespace

GemmHandle* gemm_create(cudaStream_t stream, bool tf32) {
  auto* h = new GemmHandle{};
  try {
    h->stream = stream;
    h->tf32 = tf32;
    VAE_CUBLAS_CHECK(cublasLtCreate(&h->lt));
    // A workspace of our own keeps cuBLASLt from allocating during CUDA-graph capture.
    h->workspace_bytes = 32u << 20;
    VAE_CUDA_CHECK(cudaMalloc(&h->workspace, h->workspace_bytes));
    VAE_CUDA_CHECK(cudaMalloc(&h->scratch.tickets, kReduceTickets * sizeof(unsigned)));
    VAE_CUDA_CHECK(cudaMemset(h->scratch.tickets, 0, kReduceTickets * sizeof(unsigned)));
    VAE_CUDA_CHECK(cudaMalloc(&h->scratch.partial, kReducePartialFloats * sizeof(float)));
  } catch (...) {
    gemm_destroy(h);
    throw;
  }
  return h;
}

void gemm_destroy(GemmHandle* h) noexcept {
  if (!h) return;
  for (auto& [key, plan] : h->plans) destroy_plan(plan);
  if (h->lt) cublasLtDestroy(h->lt);
  if (h->workspace) cudaFree(h->workspace);
  if (h->scratch.tickets) cudaFree(h->scratch.tickets);
  if (h->scratch.partial) cudaFree(h->scratch.partial);
  delete h;
}

void gemm(GemmHandle* h, const GemmOp& op) {
  check_gemm(op);
  if (op.m == 0 || op.n == 0) return;
  VAE_REQUIRE(op.k > 0, "gemm: k must be positive on the GPU");
  GemmPlan& plan = plan_for(h, op);
  const void* vec = lt_vector(op, plan.epilogue);
  set_attribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &vec, sizeof(vec));
  VAE_CUBLAS_CHECK(cublasLtMatmul(h->lt, plan.desc, &op.alpha, op.b, plan.a, op.a, plan.b, &op.beta, op.c, plan.c, op.c,
                                  plan.c, &plan.algo, h->workspace, h->workspace_bytes, h->stream));
  // What cuBLASLt left of the epilogue: our kernels, over C as a whole.
  const bool lt_forward = plan.epilogue == CUBLASLT_EPILOGUE_BIAS || plan.epilogue == CUBLASLT_EPILOGUE_RELU_BIAS;
  if (op.epilogue == Epilogue::bias_activation && !lt_forward) {
    VAE_REQUIRE(op.ldc == op.n, "gemm: the bias_activation kernel needs ldc == n");
    dense_bias_activation_forward(op.c, op.bias, op.m, op.n, op.activation, h->stream, op.count, op.stride_c,
                                  op.stride_bias);
  }
  if (op.epilogue == Epilogue::activation_grad && op.activation != Activation::identity) {
    VAE_REQUIRE(op.ldc == op.n, "gemm: the activation_grad kernel needs ldc == n");
    dense_activation_backward(op.c, op.activation_output, nullptr, op.m, op.n, op.activation, h->scratch, h->stream,
                              op.count, op.stride_c);
  }
  if (op.bias_grad && plan.epilogue != CUBLASLT_EPILOGUE_BGRADB) {
    // The identity's backward only reads its gradient: the column sums of A (k, m).
    dense_activation_backward(const_cast<float*>(op.a), nullptr, op.bias_grad, op.k, op.m, Activation::identity,
                              h->scratch, h->stream, op.count, op.stride_a, op.stride_bias);
  }
}

#endif

}  // namespace VAE_NS
}  // namespace vae
