// The CPU GEMM engines on the training step's shapes (issue 22): Debian's OpenBLAS (the kernel
// set OPENBLAS_CORETYPE names, or the one it picks), BLIS (libblis-dev; its kernels chosen at run
// time for the CPU), oneDNN's dnnl_sgemm (libdnnl-dev; JIT kernels), each with one thread (as the
// trainer's worker pool calls it, a panel of C per worker) and with the machine's threads over
// the whole product; and the trainer's own GEMM path (the pool's panels of single-threaded
// calls) with each engine it can choose. Each engine's product is checked against a float64 loop first: an engine that
// computes wrong results on this CPU says so and is not timed. GFLOP/s, the median of repeats
// with the inputs in cache (as in a step, where each GEMM reads what the one before it wrote).
//   bench_gemm [--batches 128,4096] [--reps 30] [--json 1]
// BLIS is loaded with dlopen (its CBLAS symbols would otherwise shadow OpenBLAS's).
#include <dlfcn.h>
#include <unistd.h>
#include <omp.h>

#include <oneapi/dnnl/dnnl.h>

#include <cblas.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <utility>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "bench_timer.h"
#include "blas_core.h"
#include "fma_peak.h"
#include "runtime/workers.h"
#include "step_gemms.h"

extern "C" void openblas_set_num_threads(int);
extern "C" char* openblas_get_corename(void);

using namespace vae;

namespace {

// A row-major C (m × n) = op(A) op(B), the engine's threads set by `threads`.
struct Engine {
  std::string name;
  std::function<void(int threads)> set_threads;
  std::function<void(const GemmOp&)> run;
};

// BLIS's typed API (blis.h: trans_t, dim_t = inc_t = int64_t on LP64), row and column strides.
using BliSgemm = void (*)(int, int, int64_t, int64_t, int64_t, const float*, const float*, int64_t, int64_t,
                          const float*, int64_t, int64_t, const float*, float*, int64_t, int64_t);
constexpr int kBlisTranspose = 0x8;  // BLIS_TRANSPOSE

std::vector<Engine> engines(std::string& notes) {
  std::vector<Engine> out;
  out.push_back({std::string("openblas (") + openblas_get_corename() + ")", [](int t) { openblas_set_num_threads(t); },
                 [](const GemmOp& op) {
                   cblas_sgemm(CblasRowMajor, op.trans_a ? CblasTrans : CblasNoTrans,
                               op.trans_b ? CblasTrans : CblasNoTrans, op.m, op.n, op.k, op.alpha, op.a, op.lda, op.b,
                               op.ldb, op.beta, op.c, op.ldc);
                 }});
  void* blis = dlopen("libblis.so.4", RTLD_NOW | RTLD_LOCAL);
  if (blis) {
    auto sgemm = reinterpret_cast<BliSgemm>(dlsym(blis, "bli_sgemm"));
    auto set = reinterpret_cast<void (*)(int64_t)>(dlsym(blis, "bli_thread_set_num_threads"));
    auto arch_id = reinterpret_cast<int (*)()>(dlsym(blis, "bli_arch_query_id"));
    auto arch_name = reinterpret_cast<const char* (*)(int)>(dlsym(blis, "bli_arch_string"));
    if (sgemm && set && arch_id && arch_name) {
      out.push_back({std::string("blis (") + arch_name(arch_id()) + ")", [set](int t) { set(t); },
                     [sgemm](const GemmOp& op) {
                       // Row-major op(A) (m × k): A stored (m, lda) or, transposed, (k, lda).
                       sgemm(op.trans_a ? kBlisTranspose : 0, op.trans_b ? kBlisTranspose : 0, op.m, op.n, op.k,
                             &op.alpha, op.a, op.lda, 1, op.b, op.ldb, 1, &op.beta, op.c, op.ldc, 1);
                     }});
    }
  } else {
    notes += "blis: not loaded (" + std::string(dlerror()) + "; apt-get install libblis4-openmp)\n";
  }
  out.push_back({"onednn " + std::to_string(dnnl_version()->major) + "." + std::to_string(dnnl_version()->minor),
                 [](int t) { omp_set_num_threads(t); },
                 [](const GemmOp& op) {
                   const dnnl_status_t st = dnnl_sgemm(op.trans_a ? 'T' : 'N', op.trans_b ? 'T' : 'N', op.m, op.n, op.k,
                                                       op.alpha, op.a, op.lda, op.b, op.ldb, op.beta, op.c, op.ldc);
                   if (st != dnnl_success) throw Error("dnnl_sgemm failed: status " + std::to_string(st));
                 }});
  return out;
}

// The largest error of op's C against a float64 loop, relative to Σ_p |a||b| of its element.
double relative_error(const GemmOp& op, const std::vector<float>& a, const std::vector<float>& b,
                      const std::vector<float>& c) {
  double worst = 0;
  for (int i = 0; i < op.m; ++i)
    for (int j = 0; j < op.n; ++j) {
      double s = 0, mag = 0;
      for (int p = 0; p < op.k; ++p) {
        const double av = op.trans_a ? a[static_cast<size_t>(p) * op.lda + i] : a[static_cast<size_t>(i) * op.lda + p];
        const double bv = op.trans_b ? b[static_cast<size_t>(j) * op.ldb + p] : b[static_cast<size_t>(p) * op.ldb + j];
        s += av * bv;
        mag += std::abs(av * bv);
      }
      worst = std::max(worst, std::abs(c[static_cast<size_t>(i) * op.ldc + j] - s) / std::max(mag, 1e-30));
    }
  return worst;
}

std::string shape_name(const GemmOp& op) {
  char s[64];
  std::snprintf(s, sizeof s, "%dx%dx%d %s", op.m, op.n, op.k, op.trans_a ? "AT.B" : op.trans_b ? "A.BT" : "A.B");
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  // OpenMP's threads (oneDNN's and BLIS's with several threads) wait passively between calls:
  // spinning, they would take the cores from the columns measured after them. libgomp reads the
  // setting when it loads: set, the program starts again.
  if (!std::getenv("OMP_WAIT_POLICY")) {
    setenv("OMP_WAIT_POLICY", "passive", 1);
    execv("/proc/self/exe", argv);
  }
  reexec_with_better_openblas_core(argv);
  std::string batches = "128,4096";
  int reps = 30, json = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    if (k == "--batches") {
      batches = argv[i + 1];
    } else if (k == "--reps") {
      reps = std::atoi(argv[i + 1]);
    } else if (k == "--json") {
      json = std::atoi(argv[i + 1]);
    } else {
      std::fprintf(stderr, "bench_gemm: unknown flag %s\n", argv[i]);
      return 2;
    }
  }
  if (argc % 2 == 0 || reps < 1) {
    std::fprintf(stderr, "bench_gemm: flags take a value; --reps must be positive\n");
    return 2;
  }
  const DeviceContext ctx(Target::cpu, false);
  // The trainer's path with each engine it can choose (kernels/dense_gemm.cu: VAE_CPU_GEMM).
  std::vector<std::pair<std::string, std::unique_ptr<DeviceContext>>> trainer_paths;
  for (const char* engine : {"openblas", "onednn"}) {
    setenv("VAE_CPU_GEMM", engine, 1);
    try {
      trainer_paths.emplace_back(engine, std::make_unique<DeviceContext>(Target::cpu, false));
    } catch (const Error&) {  // not in this build
    }
  }
  unsetenv("VAE_CPU_GEMM");
  bench::Timer timer(ctx);
  timer.set_flush(false);
  const int threads = hx::workers();
  std::string notes;
  std::vector<Engine> list = engines(notes);
  std::printf("bench_gemm: the step's GEMMs (784-400-20 model, fp32), GFLOP/s; %d threads on %s\n%s", threads,
              ctx.description().c_str(), notes.c_str());
  const bench::FmaPeak fma = bench::measure_fma_peak();
  if (fma.gflops > 0) {
    std::printf("the FMA peak (%s chains without loads): %.1f GFLOP/s on %d threads, %.1f a thread\n", fma.isa,
                fma.gflops, fma.workers, fma.gflops / fma.workers);
  }
  ModelConfig mc;
  const ParamLayout layout = make_layout(mc);
  int failures = 0;
  std::stringstream in(batches);
  for (std::string item; std::getline(in, item, ',');) {
    const int batch = std::atoi(item.c_str());
    if (batch <= 0) {
      std::fprintf(stderr, "bench_gemm: --batches: '%s' is not a positive integer\n", item.c_str());
      return 2;
    }
    bench::StepGemms g = bench::step_gemms(ctx, layout, batch, 1);
    // Columns: engine e with 1 thread ("e/1") and with all ("e/N"), then the trainer's path.
    std::printf("\nbatch %d:", batch);
    for (size_t e = 0; e < list.size(); ++e) std::printf("  E%zu = %s", e + 1, list[e].name.c_str());
    std::printf("\n%-22s", "m x n x k");
    for (size_t e = 0; e < list.size(); ++e) std::printf(" %8s%zu/1 %8s%zu/%d", "E", e + 1, "E", e + 1, threads);
    for (const auto& path : trainer_paths) std::printf(" %16s", ("trainer/" + path.first).c_str());
    std::printf("\n");
    std::vector<double> total_us(2 * list.size() + trainer_paths.size(), 0.0);
    for (GemmOp op : g.ops) {
      op.beta = 0;
      const double flop = 2.0 * op.m * op.n * op.k;
      // Inputs of the op's shapes, random; C overwritten by each engine.
      const size_t a_size = static_cast<size_t>(op.trans_a ? op.k : op.m) * op.lda;
      const size_t b_size = static_cast<size_t>(op.trans_b ? op.n : op.k) * op.ldb;
      std::vector<float> a(a_size), b(b_size);
      for (size_t i = 0; i < a.size(); ++i) a[i] = std::sin(0.37 * i + 1);
      for (size_t i = 0; i < b.size(); ++i) b[i] = std::cos(0.61 * i + 2);
      std::vector<float> c(static_cast<size_t>(op.m) * op.ldc), c_out(c.size());
      op.a = a.data(), op.b = b.data(), op.c = c.data();
      std::printf("%-22s", shape_name(op).c_str());
      size_t col = 0;
      for (const Engine& e : list) {
        for (const int t : {1, threads}) {
          e.set_threads(t);
          std::fill(c.begin(), c.end(), 7.f);
          e.run(op);
          const double err = relative_error(op, a, b, c);
          if (!(err < 1e-5)) {
            std::printf(" %12s", "WRONG");
            std::fprintf(stderr, "bench_gemm: %s with %d threads computes %s wrong: relative error %.3g\n",
                         e.name.c_str(), t, shape_name(op).c_str(), err);
            ++failures;
            total_us[col++] = NAN;
            continue;
          }
          const double us = timer.median_us([&] { e.run(op); }, reps);
          total_us[col++] += us;
          std::printf(" %12.1f", flop / (us * 1e3));
          if (json) {
            std::printf("{\"batch\":%d,\"shape\":\"%s\",\"engine\":\"%s\",\"threads\":%d,\"gflops\":%.3f}\n", batch,
                        shape_name(op).c_str(), e.name.c_str(), t, flop / (us * 1e3));
          }
        }
      }
      // The trainer's paths: the pool's panels, one engine thread each.
      openblas_set_num_threads(1);
      omp_set_num_threads(1);
      for (const auto& [name, path] : trainer_paths) {
        std::fill(c_out.begin(), c_out.end(), 7.f);
        GemmOp mine = op;
        mine.c = c_out.data();
        VAE_CALL(Target::cpu, gemm, path->gemm(), mine);
        if (!(relative_error(mine, a, b, c_out) < 1e-5)) {
          std::fprintf(stderr, "bench_gemm: the trainer's %s path computes %s wrong\n", name.c_str(),
                       shape_name(op).c_str());
          ++failures;
        }
        const double us = timer.median_us([&] { VAE_CALL(Target::cpu, gemm, path->gemm(), mine); }, reps);
        total_us[col++] += us;
        std::printf(" %16.1f", flop / (us * 1e3));
      }
      std::printf("\n");
    }
    std::printf("%-22s", "all (step GFLOP/s)");
    for (size_t i = 0; i < total_us.size(); ++i)
      std::printf(i < 2 * list.size() ? " %12.1f" : " %16.1f", g.flops / (total_us[i] * 1e3));
    std::printf("\n");
  }
  return failures ? 1 : 0;
}
