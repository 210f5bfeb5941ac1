// The fused step's GEMM phases (included by fused_step.cu only): its 32 × 32 output tiles, their
// K chunks staged through shared memory with loads in flight, FFMA or tensor-core (TF32, 3xTF32)
// products, split-K slices that meet at per-tile tickets, and the epilogues that finish a tile
// where its outputs are final: bias and activation, the optimizer's update of a weight gradient,
// the heads' z, the output layer's log p(x|z) terms, and with L = 1 the latent backward.
#pragma once

#include <cstdint>
#include <type_traits>

#include "kernels/activation.cuh"
#include "kernels/dense_gemm.h"
#include "kernels/fused_step.h"
#include "kernels/latent_sample.cuh"
#include "kernels/non_finite.cuh"
#include "kernels/optimizer.cuh"
#include "kernels/reconstruction.cuh"
#include "kernels/ticket.cuh"
#include "runtime/async_copy.cuh"

namespace vae::VAE_NS {

namespace {

constexpr int kStepThreads = 256;    // 8 warps; the GEMM tile's 16 × 16 threads
constexpr int kTile = kFusedTile;    // output tiles of kTile × kTile
constexpr int kTileK = kFusedTileK;  // the K chunk staged in shared memory at a time
constexpr int kStages = 4;           // K chunks of a work item in flight at once (cp.async groups)

constexpr int kTilePad = kTile + 4;  // row stride: a multiple of 4 floats, as the warp matrix loads need

// The workspace (FusedStepArgs::workspace, fused_step_workspace_floats): the split-K partial sums,
// a ticket per tile of a phase, then the reconstruction's row sums (output column tiles, L·B rows).
__device__ __forceinline__ unsigned* fused_tickets(float* workspace, int grid) {
  return reinterpret_cast<unsigned*>(workspace + fused_step_partial_floats(grid));
}
__device__ __forceinline__ float* fused_row_sums(float* workspace, int grid) {
  return workspace + fused_step_partial_floats(grid) + grid;
}

// What every phase of one step shares: the arguments, the step and the optimizer's scalars at it.
struct Step {
  const FusedStepArgs& a;
  uint64_t step;
  long long row0;  // the batch's first row in the epoch (keys the noise)
  OptimizerScalars k;
  const float* x;  // (B, dim): the step's batch (a.x, or a.x_next in a persistent launch's odd steps)
  float kl_scale;  // the KL gradient's weight at this step (kl_scale_at)
};

// What a GEMM tile does with its final outputs besides storing them (and their GemmOp epilogue).
enum class TileEpilogue {
  store,           // nothing more
  update,          // a weight gradient (C and the bias gradient in a.grads): each entry's optimizer update
  latent,          // the encoder's heads: each row's z_j for every sample, from μ_j and log σ²_j
  reconstruction,  // the output layer: each pixel's log p(x|z) term and its gradient, the row's terms summed
  latent_grad,     // dL/dz with one sample a row (L = 1): each row's dμ_j and dlog σ²_j into heads.dh
};

// A GEMM of a phase. With pairs (n = 2P columns: the heads' μ | log σ², the Gaussian output's mean
// | log variance), a tile holds 16 column pairs (j, P + j), thread column tx the first of a pair
// and tx + 16 the second.
struct PhaseGemm {
  GemmOp op;
  TileEpilogue epilogue = TileEpilogue::store;
  bool pairs = false;
};

// The GEMMs of a phase (at most two: a layer's input gradient and the update of the layer above,
// or a layer's own update) and the update left for the next phase (backward_stack).
constexpr int kMaxPhaseGemms = 2;

// A block's shared memory. The phase's GEMM descriptors live here, written by thread 0 between
// phases (its threads read them from here, not from copies of their own: a descriptor per thread
// was ~0.7 KB of local memory per thread on sm_90).
struct TileShared {
  // Stage s holds one K chunk of each operand, in the layout a_k_fast and b_k_fast give it (32 lines of 32 floats).
  // After the K loop, stage g of a holds K group g's sums of the tile (gemm_tile).
  alignas(32) float a[kStages][kTileK][kTilePad];
  alignas(32) float b[kStages][kTileK][kTilePad];
  // A __shared__ variable takes no dynamic initialization: the descriptors (PhaseGemm has default
  // member initializers) sit in a union whose constructor does nothing; thread 0 assigns them.
  union Slots {
    PhaseGemm ops[kMaxPhaseGemms];  // the phase's GEMMs (gemm_phase), ops_count of them
    __host__ __device__ Slots() {}
  } slots;
  union Slot {
    PhaseGemm op;  // a weight update left for the next phase, when pending_count is 1
    __host__ __device__ Slot() {}
  } pending;
  int ops_count;
  int pending_count;
  // A GEMM phase's plan (fused_split_plan): its work items, and per GEMM its K slices and their
  // chunks. Made by thread 0 in the first step of a launch, and kept: the later steps run the same
  // phases in the same order and read them back (a few dozen dependent divisions on one thread, where
  // the block waits, after every grid barrier).
  struct PhasePlan {
    int items;
    int slices[kMaxPhaseGemms];
    int chunks[kMaxPhaseGemms];
  };
  PhasePlan plan;                      // the phase's
  PhasePlan plans[kFusedMaxBarriers];  // the step's phases' (at most one more than its barriers, less the gather)
  int planned;                         // plans kept since the launch's start
  int phase;                           // the step's GEMM phases so far
  unsigned barriers;                   // grid barriers passed this step (thread 0's count)
  unsigned tickets;                    // split-K tickets taken this step (thread 0's count)
  unsigned work_items;  // GEMM work items and their K chunks run since the last barrier (thread 0's count)
  unsigned work_chunks;
  unsigned last;  // this block arrived last at a split tile's ticket
  // The phase's Step but its arguments, for its tiles' epilogues: read from here after the K loop, not held in
  // each thread's registers through it. (Not the arguments: under host execution they are each thread's own.)
  struct StepValues {
    uint64_t step;
    long long row0;
    OptimizerScalars k;
    const float* x;
    float kl_scale;
  } step;
};

// The optimizer's update of flat parameter i from its gradient (checked for a non-finite value),
// its parameter and state as loaded (load_tile_inputs): the new ones stored.
__device__ __forceinline__ void apply_update(const Step& s, long long i, float grad, const float (&in)[3]) {
  const FusedStepArgs& a = s.a;
  if (a.watch && !finite_bits(grad)) record_non_finite(a.watch, s.step, NonFiniteTerm::gradient, i);
  float p = in[0], s1 = in[1], s2 = in[2];
  switch (a.optimizer) {
    case OptimizerKind::adam:
      optimizer_update<OptimizerKind::adam>(a.hyper, s.k, grad, p, s1, s2);
      a.state2[i] = s2;
      break;
    case OptimizerKind::adagrad:
      optimizer_update<OptimizerKind::adagrad>(a.hyper, s.k, grad, p, s1, s2);
      break;
    case OptimizerKind::sgd:
      optimizer_update<OptimizerKind::sgd>(a.hyper, s.k, grad, p, s1, s2);
      break;
  }
  a.params[i] = p;
  a.state1[i] = s1;
}

// C's columns, and one more for a bias gradient: a column of ones in op(B), whose output column
// is Σ_p op(A)[i, p], taken from the tile's own sums.
__device__ __forceinline__ int gemm_columns(const GemmOp& op) { return op.n + (op.bias_grad ? 1 : 0); }
__device__ __forceinline__ int gemm_column_tiles(const PhaseGemm& g) {
  return g.pairs ? (g.op.n / 2 + kTile / 2 - 1) / (kTile / 2) : (gemm_columns(g.op) + kTile - 1) / kTile;
}
__device__ __forceinline__ int gemm_tiles(const PhaseGemm& g) {
  return ((g.op.m + kTile - 1) / kTile) * gemm_column_tiles(g);
}
// The column of C at column c of column tile jt; gemm_columns for none (past the last pair).
__device__ __forceinline__ int tile_column(const PhaseGemm& g, int jt, int c) {
  if (!g.pairs) return jt * kTile + c;
  const int half = g.op.n / 2, j = jt * (kTile / 2) + c % (kTile / 2);
  return j >= half ? g.op.n : c < kTile / 2 ? j : half + j;
}

// What a tile's epilogue reads besides its sums, for each of a thread's four outputs (rows i0 +
// ty + {0, 16}, tile columns tx + {0, 16}): the bias (bias_activation) or the activation output
// (activation_grad) in [0]; for an update the parameter and its optimizer state in [0], [1], [2]
// (the op has no epilogue of its own); for the reconstruction the pixel x in [1] (the mean's column
// of a Gaussian pair); for latent_grad μ, log σ² and z in [0], [1], [2]. All loaded at once, with
// no store between them (one memory round trip where loads between stores made one per output),
// and before a split tile's ticket, so that they arrive while it is taken.
struct TileInputs {
  float v[2][2][3];
};
// Visits the address of each of those inputs: f(u, w, slot, address) for in.v[u][w][slot].
template <typename Visit>
__device__ __forceinline__ void visit_tile_inputs(const Step& s, const PhaseGemm& g, int i0, int jt, int ty, int tx,
                                                  Visit&& f) {
  const GemmOp& op = g.op;
  const FusedStepArgs& a = s.a;
  const int cols = gemm_columns(op);
  VAE_UNROLL
  for (int u = 0; u < 2; ++u) {
    VAE_UNROLL
    for (int w = 0; w < 2; ++w) {
      const int i = i0 + ty + 16 * u, j = tile_column(g, jt, tx + 16 * w);
      if (i >= op.m || j >= cols) continue;
      const long long at = static_cast<long long>(i) * op.ldc + j;
      if (j < op.n && op.epilogue == Epilogue::bias_activation) f(u, w, 0, op.bias + j);
      if (j < op.n && op.epilogue == Epilogue::activation_grad) f(u, w, 0, op.activation_output + at);
      if (g.epilogue == TileEpilogue::update) {
        const long long e = (j < op.n ? op.c + at : op.bias_grad + i) - a.grads;
        f(u, w, 0, a.params + e);
        f(u, w, 1, a.state1 + e);
        if (a.optimizer == OptimizerKind::adam) f(u, w, 2, a.state2 + e);
      } else if (g.epilogue == TileEpilogue::reconstruction && (!g.pairs || w == 0)) {
        f(u, w, 1, s.x + static_cast<long long>(i % a.batch) * a.dim + j);
      } else if (g.epilogue == TileEpilogue::latent_grad) {  // one sample a row: z at (i, j)
        const long long row = static_cast<long long>(i) * 2 * a.latent;
        f(u, w, 0, a.heads.h + row + j);
        f(u, w, 1, a.heads.h + row + a.latent + j);
        f(u, w, 2, a.z + static_cast<long long>(i) * a.latent + j);
      }
    }
  }
}
__device__ __forceinline__ void load_tile_inputs(const Step& s, const PhaseGemm& g, int i0, int jt, int ty, int tx,
                                                 TileInputs& in) {
  VAE_UNROLL
  for (int u = 0; u < 2; ++u) {
    VAE_UNROLL
    for (int w = 0; w < 2; ++w) in.v[u][w][0] = in.v[u][w][1] = in.v[u][w][2] = 0.f;
  }
  visit_tile_inputs(s, g, i0, jt, ty, tx, [&](int u, int w, int slot, const float* p) { in.v[u][w][slot] = *p; });
}

// Asks for a thread's tile inputs in L1 (prefetch_l1). Out of line: inlined, their addresses were
// kept in registers through the K loop for the loads after it, and spilled.
__device__ VAE_NOINLINE void prefetch_tile_inputs(const FusedStepArgs& a, const PhaseGemm& g, int i0, int jt,
                                                  const TileShared& sh) {
  const int tid = static_cast<int>(threadIdx.x);
  visit_tile_inputs(Step{a, sh.step.step, sh.step.row0, sh.step.k, sh.step.x, sh.step.kl_scale}, g, i0, jt, tid / 16,
                    tid % 16, [](int, int, int, const float* p) { prefetch_l1(p); });
}

// C[i, j] from its sum acc and inputs `in` (load_tile_inputs): the epilogue, or for the extra
// column, the bias gradient; then a weight gradient's update. Returns what it stored (0 where it
// stored nothing).
__device__ __forceinline__ float store_output(const Step& s, const PhaseGemm& g, int i, int j, float acc,
                                              const float (&in)[3]) {
  const GemmOp& op = g.op;
  float* out = nullptr;
  float stored = 0.f;
  if (j < op.n) {
    float v = op.alpha * acc;
    if (op.epilogue == Epilogue::bias_activation) {
      v = activate(v + in[0], op.activation);
    } else if (op.epilogue == Epilogue::activation_grad) {
      const float h = in[0];
      v = op.activation == Activation::relu ? (h > 0.f ? v : 0.f) : v * activation_grad(h, op.activation);
    }
    out = op.c + static_cast<long long>(i) * op.ldc + j;
    *out = stored = v;
  } else if (j == op.n && op.bias_grad) {
    out = op.bias_grad + i;
    *out = stored = acc;
  }
  if (out && g.epilogue == TileEpilogue::update) apply_update(s, out - s.a.grads, stored, in);
  return stored;
}

// The heads' epilogue for row i, latent column j (μ, log σ² as stored): z_j of each of the row's samples.
__device__ __forceinline__ void draw_latent(const Step& s, int i, int j, float mu, float logvar) {
  const FusedStepArgs& a = s.a;
  const int row = static_cast<int>(s.row0) + i;
  for (int sample = 0; sample < a.samples; ++sample) {
    a.z[(static_cast<long long>(sample) * a.batch + i) * a.latent + j] = sample_latent_element(
        mu, logvar, a.latent, row, sample, a.samples, a.seed, RandomStream::latent_noise, s.step, j);
  }
}

// The output layer's epilogue for row i (of L·B), pixel column j, from the row's outputs there as
// stored (o: the Bernoulli logit, or the Gaussian's mean and log variance, at dim + j) and the
// pixel x: the term of log p(x|z) and, into output.dh, its gradient. The composed step's
// functions, on values (one pixel at d = 0 of rows one pixel wide).
__device__ __forceinline__ float reconstruction_term(const Step& s, int i, int j, const float (&o)[2], float x) {
  const FusedStepArgs& a = s.a;
  const float grad_scale = 1.f / static_cast<float>(a.batch * a.samples);
  float* g = a.output.dh + static_cast<long long>(i) * (a.gaussian ? 2 * a.dim : a.dim);
  float grad[2];
  if (!a.gaussian) {
    const float term = bernoulli_term<true>(o, &x, grad, 0, grad_scale);
    g[j] = grad[0];
    return term;
  }
  const float term = gaussian_term<true>(o, &x, grad, 0, 1, grad_scale);
  g[j] = grad[0];
  g[a.dim + j] = grad[1];
  return term;
}

// With one sample a row (latent_grad), dμ_j and dlog σ²_j of row i into heads.dh from dz = dL/dz_j
// as stored and in = (μ_j, log σ²_j, z_j): the composed step's latent_backward_element, on values
// (a batch of one row, one latent dimension).
__device__ __forceinline__ void latent_grad_element(const Step& s, int i, int j, float dz, const float (&in)[3]) {
  const FusedStepArgs& a = s.a;
  const float heads[2] = {in[0], in[1]}, z = in[2];
  float grad[2];
  latent_backward_element(heads, &z, &dz, grad, 0, 0, 1, 1, 1, s.kl_scale, a.kl_term.estimator,
                          a.kl_term.gradient == KlGradient::dreg);
  const long long row = static_cast<long long>(i) * 2 * a.latent;
  a.heads.dh[row + j] = grad[0];
  a.heads.dh[row + a.latent + j] = grad[1];
}

// A thread's four outputs of a tile, rows i0 + ty + {0, 16}, tile columns tx + {0, 16} of column
// tile jt, final: stored with their epilogue (its inputs in `in`). For the output layer, each
// row's terms of the tile summed in a fixed order (the thread's columns, then the 16 threads of the
// row through shared memory) into the workspace's row sums (column tile jt of (column tiles,
// rows)). By every thread of the block.
__device__ __forceinline__ void store_tile_outputs(const Step& s, const PhaseGemm& g, int i0, int jt, int ty, int tx,
                                                   const float (&v)[2][2], const TileInputs& in, TileShared& sh) {
  const int cols = gemm_columns(g.op);
  float row_terms[2] = {0.f, 0.f};
  VAE_UNROLL
  for (int u = 0; u < 2; ++u) {
    const int i = i0 + ty + 16 * u;
    if (i >= g.op.m) continue;
    float stored[2];
    VAE_UNROLL
    for (int w = 0; w < 2; ++w) {
      const int j = tile_column(g, jt, tx + 16 * w);
      stored[w] = j < cols ? store_output(s, g, i, j, v[u][w], in.v[u][w]) : 0.f;
    }
    const int j = tile_column(g, jt, tx);
    if (g.epilogue == TileEpilogue::latent && j < cols) draw_latent(s, i, j, stored[0], stored[1]);
    if (g.epilogue == TileEpilogue::latent_grad) {
      VAE_UNROLL
      for (int w = 0; w < 2; ++w) {
        const int jw = tile_column(g, jt, tx + 16 * w);
        if (jw < cols) latent_grad_element(s, i, jw, stored[w], in.v[u][w]);
      }
    }
    if (g.epilogue == TileEpilogue::reconstruction) {
      for (int w = 0; w < (g.pairs ? 1 : 2); ++w) {
        const int jw = tile_column(g, jt, tx + 16 * w);
        const float o[2] = {stored[w], stored[1]};  // a pair's mean and log variance (o[1] unused for Bernoulli)
        if (jw < cols) row_terms[u] += reconstruction_term(s, i, jw, o, in.v[u][w][1]);
      }
    }
  }
  if (g.epilogue != TileEpilogue::reconstruction) return;  // uniform over the block
  // Stage 1 is free once the K loop is done (its last __syncthreads is behind us).
  for (int u = 0; u < 2; ++u) sh.a[1][ty + 16 * u][tx] = row_terms[u];
  __syncthreads();
  const int r = static_cast<int>(threadIdx.x);
  if (r < kTile && i0 + r < g.op.m) {
    float sum = 0.f;
    for (int t = 0; t < 16; ++t) sum += sh.a[1][r][t];
    fused_row_sums(s.a.workspace, gridDim.x)[static_cast<long long>(jt) * g.op.m + i0 + r] = sum;
  }
  __syncthreads();  // before the next tile's loads overwrite stage 1
}

#if VAE_HAS_TF32_MMA
// 3xTF32's operand split: hi = tf32(x) in place, lo = tf32(x − hi) (x − hi is exact in fp32).
template <typename Fragment>
__device__ __forceinline__ void split_tf32(Fragment& hi, Fragment& lo) {
  for (int e = 0; e < hi.num_elements; ++e) {
    const float x = hi.x[e], h = nvcuda::wmma::__float_to_tf32(x);
    hi.x[e] = h;
    lo.x[e] = nvcuda::wmma::__float_to_tf32(x - h);
  }
}
#endif

// Four consecutive floats of an operand line into shared memory (16-byte aligned): src[0 ..
// count) and zeros after (count may be ≤ 0: all zeros, src not read). One 16-byte copy where all
// four are in and src is aligned (the default model's shapes); else a float at a time.
__device__ __forceinline__ void stage_four(float* dst, const float* src, int count) {
  if (count >= 4 && (reinterpret_cast<uintptr_t>(src) & 15) == 0) {
    async_copy_float4(dst, src);
  } else if (count <= 0) {
    *reinterpret_cast<float4*>(dst) = make_float4(0.f, 0.f, 0.f, 0.f);  // no copy of this stage writes here
  } else {
    for (int t = 0; t < 4; ++t) async_copy_float(dst + t, t < count ? src + t : src, t < count);
  }
}
__device__ __forceinline__ int min_int(int x, int y) { return x < y ? x : y; }

// How a stage holds a chunk of each operand: along the direction its rows are contiguous in
// memory, so that each thread's four floats are one copy. A: K-fast (row-major A, the forward's
// and the input gradient's activations: a[s][i][p] = op(A)[i0 + i, k0 + p]) or M-fast (trans_a, the
// weight gradient's gᵀ: a[s][p][i]). B: K-fast (trans_b, the forward's Wᵀ: b[s][j][p] =
// op(B)[k0 + p, tile column j]) or N-fast (b[s][p][j]).
__device__ __forceinline__ bool a_k_fast(const GemmOp& op) { return !op.trans_a; }
__device__ __forceinline__ bool b_k_fast(const GemmOp& op) { return op.trans_b; }

// Requests K chunk [k0, k0 + kTileK) ∩ [k0, k_end) of the tile at (i0, column tile jt) into stage
// `stage`, laid out as a_k_fast and b_k_fast say: zeros outside the matrices, ones in a bias
// gradient's extra column. Thread t copies floats 4 (t % 8) .. + 3 of line t / 8 of each operand
// (eight threads a 128-byte line).
__device__ __forceinline__ void stage_chunk(const PhaseGemm& g, int i0, int jt, int k0, int k_end, int stage,
                                            TileShared& sh) {
  const GemmOp& op = g.op;
  const int line = static_cast<int>(threadIdx.x) / 8, seg = 4 * (static_cast<int>(threadIdx.x) % 8);
  if (a_k_fast(op)) {  // line: row i0 + line; seg: K steps
    const int i = i0 + line, p = k0 + seg, count = i < op.m ? min_int(k_end - p, 4) : 0;
    stage_four(&sh.a[stage][line][seg], count > 0 ? op.a + static_cast<long long>(i) * op.lda + p : op.a, count);
  } else {  // line: K step k0 + line; seg: rows
    const int p = k0 + line, i = i0 + seg, count = p < k_end ? min_int(op.m - i, 4) : 0;
    stage_four(&sh.a[stage][line][seg], count > 0 ? op.a + static_cast<long long>(p) * op.lda + i : op.a, count);
  }
  float* dst = &sh.b[stage][line][seg];
  if (b_k_fast(op)) {  // line: tile column `line`; seg: K steps
    const int j = tile_column(g, jt, line), p = k0 + seg;
    if (j == op.n && op.bias_grad) {
      for (int t = 0; t < 4; ++t) dst[t] = p + t < k_end ? 1.f : 0.f;
    } else {
      const int count = j < op.n ? min_int(k_end - p, 4) : 0;
      stage_four(dst, count > 0 ? op.b + static_cast<long long>(j) * op.ldb + p : op.b, count);
    }
    return;
  }
  // line: K step k0 + line; seg: tile columns, contiguous in B unless paired or at the bias gradient's column.
  const int p = k0 + line, j = tile_column(g, jt, seg);
  if (!g.pairs && !(op.bias_grad && j <= op.n && op.n < j + 4)) {
    const int count = p < k_end ? min_int(op.n - j, 4) : 0;
    stage_four(dst, count > 0 ? op.b + static_cast<long long>(p) * op.ldb + j : op.b, count);
    return;
  }
  for (int t = 0; t < 4; ++t) {
    const int jc = tile_column(g, jt, seg + t);
    if (p < k_end && jc < op.n) {
      async_copy_float(dst + t, op.b + static_cast<long long>(p) * op.ldb + jc, true);
    } else {
      dst[t] = p < k_end && jc == op.n && op.bias_grad ? 1.f : 0.f;
    }
  }
}

#if VAE_HAS_TF32_MMA
// A fragment layout as a value (wmma's layout types are incomplete under host execution), for
// gemm_tile's choice of a K loop.
template <typename Layout>
struct LayoutTag {
  using type = Layout;
};
// The tensor cores' part of a chunk in stage st for warp (wi, wj, k_half) (gemm_tile), the
// operands' fragments loaded in their stage layouts (LayoutA: row_major where A is K-fast;
// LayoutB: col_major where B is K-fast).
template <typename LayoutA, typename LayoutB, typename Accumulator>
__device__ __forceinline__ void mma_chunk(FusedMath math, const TileShared& sh, int st, int wi, int wj, int k_half,
                                          Accumulator& cf) {
  namespace wmma = nvcuda::wmma;
  constexpr bool a_k = std::is_same_v<LayoutA, wmma::row_major>, b_k = std::is_same_v<LayoutB, wmma::col_major>;
  for (int k8 = 8 * k_half; k8 < kTileK; k8 += 16) {
    wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, LayoutA> fa, fa_lo;
    wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, LayoutB> fb, fb_lo;
    wmma::load_matrix_sync(fa, a_k ? &sh.a[st][wi * 16][k8] : &sh.a[st][k8][wi * 16], kTilePad);
    wmma::load_matrix_sync(fb, b_k ? &sh.b[st][wj * 16][k8] : &sh.b[st][k8][wj * 16], kTilePad);
    if (math == FusedMath::tf32x3) {  // the small products first, then the large one
      split_tf32(fa, fa_lo);
      split_tf32(fb, fb_lo);
      wmma::mma_sync(cf, fa_lo, fb, cf);
      wmma::mma_sync(cf, fa, fb_lo, cf);
    } else {
      for (int e = 0; e < fa.num_elements; ++e) fa.x[e] = wmma::__float_to_tf32(fa.x[e]);
      for (int e = 0; e < fb.num_elements; ++e) fb.x[e] = wmma::__float_to_tf32(fb.x[e]);
    }
    wmma::mma_sync(cf, fa, fb, cf);
  }
}
#endif

// A work item of a GEMM phase: tile `tile` of the op over K in [k_begin, k_end), slice `slice` of
// `slices`; a split tile's partial sums (slices, m, columns) and its ticket.
struct WorkItem {
  int tile, k_begin, k_end, slice, slices;
  float* partials;
  unsigned* ticket;
};

// The K loop of a work item: its chunks through a ring of kStages stages, the chunks of the next
// kStages − 1 steps requested before the wait for the current one (a short work item has all its
// loads in flight at once), then body(stage) on each chunk once every thread's copies have landed.
template <typename Body>
__device__ __forceinline__ void k_loop(const PhaseGemm& g, int i0, int jt, int k_begin, int k_end, TileShared& sh,
                                       Body&& body) {
  const int chunks = (k_end - k_begin + kTileK - 1) / kTileK;
  for (int c = 0; c < kStages - 1; ++c) {
    if (c < chunks) stage_chunk(g, i0, jt, k_begin + c * kTileK, k_end, c, sh);
    async_commit();
  }
  for (int c = 0; c < chunks; ++c) {
    const int ahead = c + kStages - 1;  // into the stage chunk c − 1 left (every thread is past it)
    if (ahead < chunks) stage_chunk(g, i0, jt, k_begin + ahead * kTileK, k_end, ahead % kStages, sh);
    async_commit();
    async_wait<kStages - 1>();  // chunk c's group has landed
    __syncthreads();
    body(c % kStages);
    __syncthreads();
  }
}

// One kTile × kTile tile of C over K in [k_begin, k_end), its chunks through k_loop. Every thread
// works on every chunk, over a part of its K steps: with FusedMath::ffma the block's 256 threads
// are kFfmaGroups groups of 8 × 8, each group over a quarter of the chunk's K steps, each thread
// summing a 4 × 4 block of outputs (16 FFMA per K step from 2 to 8 shared-memory loads, by the
// stages' layouts, where a 2 × 2 block per thread over all K steps loaded a float per FFMA); on
// the tensor cores (tf32, tf32x3) each warp takes a 16 × 16 quarter of the tile and half of the
// chunk's K steps (fp32 sums). The groups' sums meet, in group order, through shared memory at
// thread (ty, tx) of 16 × 16, which owns rows i0 + ty + {0, 16} and tile columns tx + {0, 16}
// (tile_column). Then, for a whole-K item, the epilogue. A split-K item (slices > 1) writes its
// raw sums into its slice of the partial sums and takes a ticket: the block that arrives last sums
// the tile's slices in slice order and runs the epilogue (deterministic, no atomics on the data, no
// grid barrier). Out of line: inlined into the step it spilled registers on sm_90 under the
// two-blocks-per-SM bound. The work item comes by value, the step's scalars from shared memory
// after the K loop (held through it, they cost registers the loop needs; by reference to a
// caller's copy they sat in local memory).
constexpr int kFfmaGroups = kStepThreads / 64;  // FFMA: 8 × 8 threads a group, 4 × 4 outputs a thread
static_assert(kFfmaGroups * 64 == kStepThreads && kFfmaGroups <= kStages && kTileK % kFfmaGroups == 0 && kTile == 32,
              "the FFMA groups' sums meet in the stages of a");
__device__ VAE_NOINLINE void gemm_tile(const FusedStepArgs& a, const PhaseGemm& g, const WorkItem item,
                                       TileShared& sh) {
  const int tile = item.tile, k_begin = item.k_begin, k_end = item.k_end, slice = item.slice, slices = item.slices;
  namespace wmma = nvcuda::wmma;
  const GemmOp& op = g.op;
  const FusedMath math = a.math;
  const int cols = gemm_columns(op);
  const int tiles_n = gemm_column_tiles(g);
  const int i0 = (tile / tiles_n) * kTile, jt = tile % tiles_n;
  const int tid = static_cast<int>(threadIdx.x);
  const int ty = tid / 16, tx = tid % 16;
  // FFMA: group kg's K steps in each chunk, and its thread's 4 × 4 block: rows 4 gy + p where A is M-fast (one
  // four-float load), gy + 8 p where it is K-fast (four loads, no bank conflict); columns alike with gx and B.
  const int kg = tid / 64, gy = (tid % 64) / 8, gx = tid % 8;
  const bool a_k = a_k_fast(op), b_k = b_k_fast(op);  // the stages' layouts (stage_chunk)
  // The epilogue's inputs asked for in L1 now, so that a whole-K item's loads of them after its K
  // loop hit there (a split item loads them before its ticket). Nothing writes them in this phase
  // but this item's epilogue, and no fence comes before it.
  prefetch_tile_inputs(a, g, i0, jt, sh);
  int groups;  // whose sums meet in sh.a[0 .. groups)
#if VAE_HAS_TF32_MMA
  if (math != FusedMath::ffma) {
    // Warp w takes the 16 × 16 quarter (wi, wj) = ((w % 4) / 2, w % 2) of the tile over the K steps
    // of 8 numbered w / 4 (mod 2) in each chunk: all eight warps on the tensor cores.
    const int warp = tid / 32, wi = (warp % 4) / 2, wj = warp % 2, k_half = warp / 4;
    wmma::fragment<wmma::accumulator, 16, 16, 8, float> cf;
    wmma::fill_fragment(cf, 0.f);
    // A K loop per pair of layouts (one loop choosing among the four per chunk spilled registers on sm_90).
    auto loop = [&](auto layout_a, auto layout_b) {
      using LayoutA = typename decltype(layout_a)::type;
      using LayoutB = typename decltype(layout_b)::type;
      k_loop(g, i0, jt, k_begin, k_end, sh,
             [&](int st) { mma_chunk<LayoutA, LayoutB>(math, sh, st, wi, wj, k_half, cf); });
    };
    const LayoutTag<wmma::row_major> row_major;
    const LayoutTag<wmma::col_major> col_major;
    if (a_k) {
      if (b_k) {
        loop(row_major, col_major);
      } else {
        loop(row_major, row_major);
      }
    } else if (b_k) {
      loop(col_major, col_major);
    } else {
      loop(col_major, row_major);
    }
    wmma::store_matrix_sync(&sh.a[k_half][wi * 16][wj * 16], cf, kTilePad, wmma::mem_row_major);
    groups = 2;
  } else
#endif
  {
    (void)math;  // no TF32 tensor cores before sm_80: FFMA
    constexpr int kGroupK = kTileK / kFfmaGroups;
    float part[4][4] = {};
    k_loop(g, i0, jt, k_begin, k_end, sh, [&](int st) {
      VAE_UNROLL
      for (int kk = kg * kGroupK; kk < (kg + 1) * kGroupK; ++kk) {
        float ar[4], br[4];
        if (a_k) {
          for (int p = 0; p < 4; ++p) ar[p] = sh.a[st][gy + 8 * p][kk];
        } else {
          const float4 v = *reinterpret_cast<const float4*>(&sh.a[st][kk][4 * gy]);
          ar[0] = v.x, ar[1] = v.y, ar[2] = v.z, ar[3] = v.w;
        }
        if (b_k) {
          for (int q = 0; q < 4; ++q) br[q] = sh.b[st][gx + 8 * q][kk];
        } else {
          const float4 v = *reinterpret_cast<const float4*>(&sh.b[st][kk][4 * gx]);
          br[0] = v.x, br[1] = v.y, br[2] = v.z, br[3] = v.w;
        }
        VAE_UNROLL
        for (int p = 0; p < 4; ++p) {
          VAE_UNROLL
          for (int q = 0; q < 4; ++q) part[p][q] += ar[p] * br[q];
        }
      }
    });
    // The groups' sums, through shared memory (group g's C row-major in stage g of a), to the owners.
    VAE_UNROLL
    for (int p = 0; p < 4; ++p) {
      VAE_UNROLL
      for (int q = 0; q < 4; ++q) sh.a[kg][a_k ? gy + 8 * p : 4 * gy + p][b_k ? gx + 8 * q : 4 * gx + q] = part[p][q];
    }
    groups = kFfmaGroups;
  }
  __syncthreads();
  float acc[2][2];
  VAE_UNROLL
  for (int u = 0; u < 2; ++u) {
    VAE_UNROLL
    for (int w = 0; w < 2; ++w) {
      float sum = sh.a[0][ty + 16 * u][tx + 16 * w];
      for (int h = 1; h < groups; ++h) sum += sh.a[h][ty + 16 * u][tx + 16 * w];
      acc[u][w] = sum;
    }
  }
  __syncthreads();  // before the next tile's loads overwrite them
  const Step s{a, sh.step.step, sh.step.row0, sh.step.k, sh.step.x, sh.step.kl_scale};
  TileInputs in;  // requested now: a split tile's arrive while its ticket is taken
  load_tile_inputs(s, g, i0, jt, ty, tx, in);
  if (slices == 1) {
    store_tile_outputs(s, g, i0, jt, ty, tx, acc, in, sh);
    return;
  }
  const long long n = static_cast<long long>(op.m) * cols;
  for (int u = 0; u < 2; ++u)
    for (int w = 0; w < 2; ++w) {
      const int i = i0 + ty + 16 * u, j = tile_column(g, jt, tx + 16 * w);
      if (i < op.m && j < cols) item.partials[slice * n + static_cast<long long>(i) * cols + j] = acc[u][w];
    }
  __threadfence();  // this thread's sums are visible before the block's arrival is
  __syncthreads();
  if (tid == 0) {
    sh.last = arrives_last(item.ticket, static_cast<unsigned>(slices)) ? 1u : 0u;
    ++sh.tickets;
  }
  __syncthreads();
  if (!sh.last) return;  // uniform over the block
  __threadfence();       // the other slices' sums, made visible before their arrivals, are read after ours
  float sum[2][2] = {};
  for (int u = 0; u < 2; ++u)
    for (int w = 0; w < 2; ++w) {
      const int i = i0 + ty + 16 * u, j = tile_column(g, jt, tx + 16 * w);
      if (i >= op.m || j >= cols) continue;
      const long long e = static_cast<long long>(i) * cols + j;
      for (int sl = 0; sl < slices; ++sl) sum[u][w] += load_global_coherent(item.partials + sl * n + e);
    }
  store_tile_outputs(s, g, i0, jt, ty, tx, sum, in, sh);
}

// The work items of the phase's independent GEMMs (sh.slots.ops, written by thread 0 before the
// call): their tiles, split in K by fused_split_plan, numbered op by op with the GEMM of the longest
// items first, handed out over the grid's blocks in rounds, every other round in reverse block order
// (a block with a long item of the first round gets a short one of the second, if any). No grid
// barrier inside: split tiles meet at their tickets (gemm_tile). The workspace holds the split ops'
// partial sums (fused_step_partial_floats), then one ticket per tile of the phase (split only where
// the tiles are fewer than the blocks).
__device__ void gemm_phase(const Step& s, TileShared& sh) {
  const PhaseGemm* ops = sh.slots.ops;
  if (threadIdx.x == 0) {
    const int p = sh.phase++;
    if (p < sh.planned) {
      sh.plan = sh.plans[p];
    } else {
      int tiles[kMaxPhaseGemms] = {}, chunks[kMaxPhaseGemms] = {};
      for (int o = 0; o < sh.ops_count; ++o) {
        tiles[o] = gemm_tiles(ops[o]);
        chunks[o] = (ops[o].op.k + kTileK - 1) / kTileK;
      }
      sh.plan.items = fused_split_plan(tiles, chunks, sh.ops_count, static_cast<int>(gridDim.x), sh.plan.slices);
      for (int o = 0; o < sh.ops_count; ++o) sh.plan.chunks[o] = fused_slice_chunks(chunks[o], sh.plan.slices[o]);
      if (p == sh.planned && p < kFusedMaxBarriers) {
        sh.plans[p] = sh.plan;
        sh.planned = p + 1;
      }
    }
    sh.step = {s.step, s.row0, s.k, s.x, s.kl_scale};
  }
  __syncthreads();  // thread 0's descriptors, plan and step are visible
  const int count = sh.ops_count, items = sh.plan.items, grid = static_cast<int>(gridDim.x);
  const int* chunks = sh.plan.chunks;  // of each op's items
  // The op of item numbers first: the one of the longer items (ops[0] where equal).
  const int first = count > 1 && chunks[1] > chunks[0] ? 1 : 0;
  unsigned* tickets = fused_tickets(s.a.workspace, grid);
  for (int round = 0;; ++round) {
    const int b = static_cast<int>(blockIdx.x);
    const int t = round * grid + (round % 2 ? grid - 1 - b : b);
    if (t >= items) break;  // the next round's numbers are larger still
    int local = t, ticket = 0;
    long long offset = 0;  // the op's partial sums in the workspace
    int o = first;
    for (int n = 0;; ++n, o = (first + n) % count) {
      const int sl = sh.plan.slices[o], tl = gemm_tiles(ops[o]);
      if (local < sl * tl) break;
      local -= sl * tl;
      ticket += tl;
      if (sl > 1) offset += static_cast<long long>(sl) * ops[o].op.m * gemm_columns(ops[o].op);
    }
    const int slices = sh.plan.slices[o], tl = gemm_tiles(ops[o]);
    const int slice = local / tl, tile = local % tl, per = chunks[o] * kTileK;
    const int k_begin = slice * per, k_end = k_begin + per < ops[o].op.k ? k_begin + per : ops[o].op.k;
    if (threadIdx.x == 0) {
      ++sh.work_items;
      sh.work_chunks += static_cast<unsigned>((k_end - k_begin + kTileK - 1) / kTileK);
    }
    gemm_tile(s.a, ops[o], {tile, k_begin, k_end, slice, slices, s.a.workspace + offset, tickets + ticket + tile}, sh);
  }
}

}  // namespace

}  // namespace vae::VAE_NS
