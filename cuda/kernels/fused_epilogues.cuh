// The fused step's tiles (fused_tiles.cuh): what their phases share — the step's values, the
// GEMM descriptors, a block's shared memory, the tiles' columns — and the epilogues that finish a
// tile where its outputs are final: bias and activation, the optimizer's update of a weight
// gradient, the heads' z, the output layer's log p(x|z) terms, and with L = 1 the latent backward,
// their inputs loaded at once (and asked for in L1 when the tile starts). Included by
// fused_tiles.cuh only.
#pragma once

#include <cstdint>

#include "kernels/activation.cuh"
#include "kernels/dense_gemm.h"
#include "kernels/fused_step.h"
#include "kernels/latent_sample.cuh"
#include "kernels/non_finite.cuh"
#include "kernels/optimizer.cuh"
#include "kernels/reconstruction.cuh"
#include "runtime/async_copy.cuh"

namespace vae::VAE_NS {

namespace {

constexpr int kStepThreads = 256;    // 8 warps; the GEMM tile's 16 × 16 threads
constexpr int kTile = kFusedTile;    // output tiles of kTile × kTile
constexpr int kTileK = kFusedTileK;  // the K chunk staged in shared memory at a time
constexpr int kStages = 4;           // K chunks of a work item in flight at once (cp.async groups)

constexpr int kTilePad = kTile + 4;  // row stride: a multiple of 4 floats, as the warp matrix loads need

// The workspace (FusedStepArgs::workspace, fused_step_workspace_floats): a region per GEMM phase
// of the step (the split-K partial sums, then a ticket per tile of its split GEMMs), each GEMM phase's
// row flags (a counter per row block: its tiles finished there), the grid counters, then the
// reconstruction's row sums (output column tiles, L·B rows).
__device__ __forceinline__ int fused_gemm_phases(const FusedStepArgs& a) {
  return fused_step_gemm_phases(a.encoder_layers, a.decoder_layers, a.samples);
}
__device__ __forceinline__ float* fused_region(const FusedStepArgs& a, int region) {
  return a.workspace + region * fused_step_region_floats(static_cast<int>(gridDim.x));
}
__device__ __forceinline__ unsigned* fused_row_flags(const FusedStepArgs& a, int phase) {
  return reinterpret_cast<unsigned*>(fused_region(a, fused_gemm_phases(a))) +
         phase * fused_row_blocks(a.batch * a.samples);
}
__device__ __forceinline__ unsigned* fused_grid_counter(const FusedStepArgs& a, int counter) {
  return fused_row_flags(a, fused_gemm_phases(a)) + counter;
}
__device__ __forceinline__ float* fused_row_sums(const FusedStepArgs& a) {
  return reinterpret_cast<float*>(fused_grid_counter(a, kFusedGridCounters));
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
  // A weight update left for the phase after the one that computed its input gradient (backward_stack): its operands
  // are final before the phase before; only its epilogue, which changes weights that phase read, waits for it. So
  // are the rows of one carried from the phase before (carried: fused_update_rows_kept), which are carried no further.
  bool deferred = false;
  bool carried = false;
};

// The GEMMs of a phase (a layer's input gradient, the update of the layer above, and rows of an
// update carried from the phase before; or a layer's own update), the update left for the next
// phase (backward_stack) and the rows carried to it (gemm_phase).
constexpr int kMaxPhaseGemms = kFusedMaxPhaseGemms;

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
    PhaseGemm op;
    __host__ __device__ Slot() {}
  } pending, carry;  // a weight update left for the next phase, and rows of one carried to it (where the counts are 1)
  int ops_count;
  int pending_count, carry_count;
  // Counters a phase's tiles wait on or count in at (with row flags): `blocks` counters from `at`, one per row block of
  // `rows` rows (a grid counter: one, rows 0), each reaching `count` when the phase that counts there has finished
  // (in this step of the launch: the counts rise step by step).
  struct Counters {
    unsigned* at;
    int rows, blocks;
    unsigned count;
  };
  // How the phase meets the others besides grid barriers: the workspace region of its split-K sums and tickets; with
  // row flags, the counters its tiles wait on (wait: the phase before's signal; a tile of m == wait.rows rows waits at
  // its own row block's, any other (a weight update's, the decoder's with L > 1) at every one) and those its first
  // GEMM's tiles count in at once finished (signal: null where that GEMM is an update, which nothing waits on); and
  // the signal of the phase before that (before: where a deferred update's operands are final). Set by thread 0
  // (set_phase_sync in fused_step.cu).
  struct PhaseSync {
    int region;
    Counters before, wait, signal;
  } sync;
  unsigned launch_step;        // the step's number in the launch (the counts it waits for: launch_step + 1 times)
  unsigned long long wait_ns;  // thread 0's time waiting at counters this step (with timers on)
  // A GEMM phase's plan (fused_update_rows_kept, fused_split_plan): the rows its deferred update keeps, its work
  // items, and per GEMM its K slices and their chunks. Made by thread 0 in the first step of a launch, and kept: the
  // later steps run the same phases in the same order and read them back (a few dozen dependent divisions on one
  // thread, where the block waits, after every grid barrier).
  struct PhasePlan {
    int kept_rows;  // of the phase's deferred update, where the rest is carried to the next phase (else 0)
    // Where the tiles of its last round split in K (fused_remainder_split): of GEMM split_op the rows kept whole, the
    // rest the phase's last GEMM (else 0).
    int split_op, split_kept;
    int items;
    int slices[kMaxPhaseGemms];
    int chunks[kMaxPhaseGemms];
    int clusters;  // with clusters (FusedStepArgs::cluster): those a split phase takes (fused_cluster_plan), else 0
  };
  PhasePlan plan;                        // the phase's
  PhasePlan plans[kFusedMaxGemmPhases];  // the step's GEMM phases'
  int planned;                           // plans kept since the launch's start
  int phase;                             // the step's GEMM phases so far
  unsigned barriers;                     // grid barriers arrived at this step (thread 0's count)
  // A grid barrier the block arrived at and has yet to wait at (step_barrier, settle_grid_barrier): 1 or 0, thread 0's
  // token for it, and its departure's timer slot.
  int grid_owed;
  unsigned grid_token;
  int grid_slot;
  unsigned tickets;     // split-K tickets taken this step (thread 0's count)
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

// The phase's Step from what gemm_phase left in shared memory and the arguments `a`.
__device__ __forceinline__ Step shared_step(const FusedStepArgs& a, const TileShared& sh) {
  return {a, sh.step.step, sh.step.row0, sh.step.k, sh.step.x, sh.step.kl_scale};
}

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
  visit_tile_inputs(shared_step(a, sh), g, i0, jt, tid / 16, tid % 16,
                    [](int, int, int, const float* p) { prefetch_l1(p); });
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
    fused_row_sums(s.a)[static_cast<long long>(jt) * g.op.m + i0 + r] = sum;
  }
  __syncthreads();  // before the next tile's loads overwrite stage 1
}

}  // namespace

}  // namespace vae::VAE_NS
