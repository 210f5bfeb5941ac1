// The whole training step as one cooperative kernel: batch gather → encoder → heads → ε, z, KL →
// decoder → output layer with log p(x|z) and its gradient → backward through the decoder, the
// latent stage and the encoder, each weight gradient taking its optimizer update where it is
// final (no optimizer pass). A grid-wide barrier only where a phase needs all of the one before:
// 2·(encoder + decoder layers) + 4 a step, 5 with L > 1 (FusedStepArgs::phase_ns counts them and times each
// phase), one more between the steps of a persistent launch, whose later steps save the gather's
// (their batches gathered during the step before, FusedStepArgs::x_next). Every block takes part in every
// phase: GEMM phases hand out 32×32 output tiles (a layer's input gradient shares its phase with
// the update of the layer above), split in K where tiles are fewer than blocks, the slices meeting
// at per-tile tickets instead of a barrier; row and element phases stride over the grid's threads.
// Each output is summed by one thread in a fixed order, and the ELBO totals by one block: the same
// seed gives the same bits. The element math is the composed step's (the headers it shares), and
// so are the random numbers. For the latency-bound regime (small batches), where the composed
// step is a string of small kernels; launches of many steps, captured in the trainer's CUDA graph.
#include <algorithm>

#include "ops.h"  // the entry points this file defines
#include "kernels/activation.cuh"
#include "kernels/batch.cuh"
#include "kernels/dense_gemm.h"
#include "kernels/latent_sample.cuh"
#include "kernels/non_finite.cuh"
#include "kernels/optimizer.cuh"
#include "kernels/reconstruction.cuh"
#include "kernels/ticket.cuh"
#include "runtime/async_copy.cuh"

namespace vae::VAE_NS {

namespace {

constexpr int kStepThreads = 256;  // 8 warps; the GEMM tile's 16 × 16 threads
constexpr int kTile = kFusedTile;  // output tiles of kTile × kTile
constexpr int kTileK = 32;         // the K chunk staged in shared memory at a time
constexpr int kStages = 4;         // K chunks of a work item in flight at once (cp.async groups)

constexpr int kTilePad = kTile + 4;  // row stride: a multiple of 4 floats, as the warp matrix loads need
struct TileShared {
  // Stage s holds one K chunk: a[s][p][i] = op(A)[i0 + i, k0 + p] (transposed), b[s][p][j] = op(B)[k0 + p, j0 + j].
  // After a TF32 tile, stages 0 of a and b hold C's two K halves.
  alignas(32) float a[kStages][kTileK][kTilePad];
  alignas(32) float b[kStages][kTileK][kTilePad];
  unsigned barriers;  // grid barriers passed this step (thread 0's count)
  unsigned last;      // this block arrived last at a split tile's ticket
};

// The workspace (FusedStepArgs::workspace, fused_step_workspace_floats): the split-K partial sums,
// a ticket per tile of a phase, then the reconstruction's row sums (output column tiles, L·B rows).
__device__ __forceinline__ unsigned* fused_tickets(float* workspace, int grid) {
  return reinterpret_cast<unsigned*>(workspace + fused_step_partial_floats(grid));
}
__device__ __forceinline__ float* fused_row_sums(float* workspace, int grid) {
  return workspace + fused_step_partial_floats(grid) + grid;
}

// A grid barrier of the step, counted for the phase timers.
__device__ __forceinline__ void step_barrier(TileShared& sh) {
  if (threadIdx.x == 0) ++sh.barriers;
  VAE_GRID_SYNC();
}

// With timers on, thread 0 of each block records the time into slot `slot` of its row.
__device__ __forceinline__ void record_time(const FusedStepArgs& a, int slot) {
  if (a.phase_ns && threadIdx.x == 0) a.phase_ns[blockIdx.x * kFusedPhaseSlots + slot] = global_timer_ns();
}
__device__ __forceinline__ void phase_end(const FusedStepArgs& a, FusedPhase p) {
  record_time(a, 1 + static_cast<int>(p));
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

// The optimizer's update of flat parameter i, its gradient just written (and checked for a non-finite value).
__device__ __forceinline__ void apply_update(const Step& s, long long i) {
  const FusedStepArgs& a = s.a;
  if (a.watch && !finite_bits(a.grads[i])) record_non_finite(a.watch, s.step, NonFiniteTerm::gradient, i);
  switch (a.optimizer) {
    case OptimizerKind::adam:
      optimizer_element<OptimizerKind::adam>(a.hyper, s.k, a.params, a.grads, a.state1, a.state2, i);
      break;
    case OptimizerKind::adagrad:
      optimizer_element<OptimizerKind::adagrad>(a.hyper, s.k, a.params, a.grads, a.state1, a.state2, i);
      break;
    case OptimizerKind::sgd:
      optimizer_element<OptimizerKind::sgd>(a.hyper, s.k, a.params, a.grads, a.state1, a.state2, i);
      break;
  }
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

// C[i, j] = v: the epilogue, or for the extra column, the bias gradient; then a weight gradient's update.
__device__ __forceinline__ float store_output(const Step& s, const PhaseGemm& g, int i, int j, float acc) {
  const GemmOp& op = g.op;
  float* out = nullptr;
  if (j < op.n) {
    float v = op.alpha * acc;
    const long long at = static_cast<long long>(i) * op.ldc + j;
    if (op.epilogue == Epilogue::bias_activation) {
      v = activate(v + op.bias[j], op.activation);
    } else if (op.epilogue == Epilogue::activation_grad) {
      const float h = op.activation_output[at];
      v = op.activation == Activation::relu ? (h > 0.f ? v : 0.f) : v * activation_grad(h, op.activation);
    }
    out = op.c + at;
    *out = v;
  } else if (j == op.n && op.bias_grad) {
    out = op.bias_grad + i;
    *out = acc;
  }
  if (out && g.epilogue == TileEpilogue::update) apply_update(s, out - s.a.grads);
  return out ? *out : 0.f;
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

// The output layer's epilogue for row i (of L·B), pixel column j (the Gaussian's mean column; its
// log variance's at dim + j), the row's outputs as stored: the term of log p(x|z) and, into
// output.dh, its gradient.
__device__ __forceinline__ float reconstruction_term(const Step& s, int i, int j) {
  const FusedStepArgs& a = s.a;
  const int width = a.gaussian ? 2 * a.dim : a.dim;
  const float grad_scale = 1.f / static_cast<float>(a.batch * a.samples);
  const float* o = a.output.h + static_cast<long long>(i) * width;
  const float* x = s.x + static_cast<long long>(i % a.batch) * a.dim;
  float* g = a.output.dh + static_cast<long long>(i) * width;
  return a.gaussian ? gaussian_term<true>(o, x, g, j, a.dim, grad_scale) : bernoulli_term<true>(o, x, g, j, grad_scale);
}

// A thread's four outputs of a tile, rows i0 + ty + {0, 16}, tile columns tx + {0, 16} of column
// tile jt, final: stored with their epilogue. For the output layer, each row's terms of the tile
// summed in a fixed order (the thread's columns, then the 16 threads of the row through shared
// memory) into the workspace's row sums (column tile jt of (column tiles, rows)). By every thread
// of the block.
__device__ __forceinline__ void store_tile_outputs(const Step& s, const PhaseGemm& g, int i0, int jt, int ty, int tx,
                                                   const float (&v)[2][2], TileShared& sh) {
  const int cols = gemm_columns(g.op);
  float row_terms[2] = {0.f, 0.f};
  for (int u = 0; u < 2; ++u) {
    const int i = i0 + ty + 16 * u;
    if (i >= g.op.m) continue;
    float stored[2];
    for (int w = 0; w < 2; ++w) {
      const int j = tile_column(g, jt, tx + 16 * w);
      stored[w] = j < cols ? store_output(s, g, i, j, v[u][w]) : 0.f;
    }
    const int j = tile_column(g, jt, tx);
    if (g.epilogue == TileEpilogue::latent && j < cols) draw_latent(s, i, j, stored[0], stored[1]);
    if (g.epilogue == TileEpilogue::latent_grad) {
      for (int w = 0; w < 2; ++w) {
        const int jw = tile_column(g, jt, tx + 16 * w);
        if (jw < cols) {
          latent_backward_element(s.a.heads.h, s.a.z, s.a.d_z, s.a.heads.dh, i, jw, s.a.batch, s.a.latent, 1,
                                  s.kl_scale, s.a.kl_term.estimator, s.a.kl_term.gradient == KlGradient::dreg);
        }
      }
    }
    if (g.epilogue == TileEpilogue::reconstruction) {
      for (int w = 0; w < (g.pairs ? 1 : 2); ++w) {
        const int jw = tile_column(g, jt, tx + 16 * w);
        if (jw < cols) row_terms[u] += reconstruction_term(s, i, jw);
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

// Requests K chunk [k0, k0 + kTileK) ∩ [k0, k_end) of the tile at (i0, j0) into stage `stage`:
// zeros outside the matrices, ones in a bias gradient's extra column. Consecutive threads along K
// where the operand is contiguous in K, along the tile's rows or columns where it is not.
__device__ __forceinline__ void stage_chunk(const PhaseGemm& g, int i0, int jt, int k0, int k_end, int stage,
                                            TileShared& sh) {
  const GemmOp& op = g.op;
  for (int e = static_cast<int>(threadIdx.x); e < kTile * kTileK; e += kStepThreads) {
    const int r = op.trans_a ? e % kTile : e / kTileK, kk = op.trans_a ? e / kTile : e % kTileK;
    const int i = i0 + r, p = k0 + kk;
    const bool a_in = i < op.m && p < k_end;
    async_copy_float(&sh.a[stage][kk][r],
                     a_in ? (op.trans_a ? op.a + static_cast<long long>(p) * op.lda + i : op.a + i * op.lda + p) : op.a,
                     a_in);
    const int c = op.trans_b ? e / kTileK : e % kTile, q = op.trans_b ? e % kTileK : e / kTile;
    const int j = tile_column(g, jt, c), pb = k0 + q;
    if (pb < k_end && j < op.n) {
      async_copy_float(
          &sh.b[stage][q][c],
          op.trans_b ? op.b + static_cast<long long>(j) * op.ldb + pb : op.b + static_cast<long long>(pb) * op.ldb + j,
          true);
    } else {
      sh.b[stage][q][c] = pb < k_end && j == op.n && op.bias_grad ? 1.f : 0.f;
    }
  }
}

// A work item of a GEMM phase: tile `tile` of the op over K in [k_begin, k_end), slice `slice` of
// `slices`; a split tile's partial sums (slices, m, columns) and its ticket.
struct WorkItem {
  int tile, k_begin, k_end, slice, slices;
  float* partials;
  unsigned* ticket;
};

// One kTile × kTile tile of C over K in [k_begin, k_end): thread (ty, tx) of 16 × 16 owns rows
// i0 + ty + {0, 16} and tile columns tx + {0, 16} (tile_column). K in chunks through a ring of
// kStages stages: the chunks of the next kStages − 1 steps requested before the wait for the
// current one (a short work item has all its loads in flight at once). With FusedMath::ffma each
// thread sums its four outputs with FFMA; on the tensor cores (tf32, tf32x3) each warp takes a
// 16 × 16 quarter of the tile and half of each chunk's K steps (fp32 sums), and the two halves
// meet, in a fixed order, through shared memory. Then, for a whole-K item, the epilogue. A split-K
// item (slices > 1) writes its raw sums into its slice of the partial sums and takes a
// ticket: the block that arrives last sums the tile's slices in slice order and runs the
// epilogue (deterministic, no atomics on the data, no grid barrier). Out of line: inlined into the
// step it spilled registers on sm_90 under the two-blocks-per-SM bound.
__device__ VAE_NOINLINE void gemm_tile(const Step& s, const PhaseGemm& g, const WorkItem& item, TileShared& sh) {
  const int tile = item.tile, k_begin = item.k_begin, k_end = item.k_end, slice = item.slice, slices = item.slices;
  namespace wmma = nvcuda::wmma;
  const GemmOp& op = g.op;
  const FusedMath math = s.a.math;
  const int cols = gemm_columns(op);
  const int tiles_n = gemm_column_tiles(g);
  const int i0 = (tile / tiles_n) * kTile, jt = tile % tiles_n;
  const int tid = static_cast<int>(threadIdx.x);
  const int ty = tid / 16, tx = tid % 16;
  float acc[2][2] = {};
#if VAE_HAS_TF32_MMA
  // Warp w takes the 16 × 16 quarter (wi, wj) = ((w % 4) / 2, w % 2) of the tile over the K steps
  // of 8 numbered w / 4 (mod 2) in each chunk: all eight warps on the tensor cores.
  const int warp = tid / 32, wi = (warp % 4) / 2, wj = warp % 2, k_half = warp / 4;
  wmma::fragment<wmma::accumulator, 16, 16, 8, float> cf;
  if (math != FusedMath::ffma) wmma::fill_fragment(cf, 0.f);
#else
  (void)math;  // no TF32 tensor cores before sm_80: FFMA
#endif
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
    const int st = c % kStages;
#if VAE_HAS_TF32_MMA
    if (math != FusedMath::ffma) {
      for (int k8 = 8 * k_half; k8 < kTileK; k8 += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::col_major> fa, fa_lo;
        wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fb, fb_lo;
        wmma::load_matrix_sync(fa, &sh.a[st][k8][wi * 16], kTilePad);
        wmma::load_matrix_sync(fb, &sh.b[st][k8][wj * 16], kTilePad);
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
      __syncthreads();
      continue;
    }
#endif
    for (int kk = 0; kk < kTileK; ++kk) {
      const float a0 = sh.a[st][kk][ty], a1 = sh.a[st][kk][ty + 16];
      const float b0 = sh.b[st][kk][tx], b1 = sh.b[st][kk][tx + 16];
      acc[0][0] += a0 * b0;
      acc[0][1] += a0 * b1;
      acc[1][0] += a1 * b0;
      acc[1][1] += a1 * b1;
    }
    __syncthreads();
  }
#if VAE_HAS_TF32_MMA
  if (math != FusedMath::ffma) {  // the two K halves' sums, through shared memory (C row-major in stage 0 of a and b),
                                  // to the owners
    wmma::store_matrix_sync(k_half ? &sh.b[0][wi * 16][wj * 16] : &sh.a[0][wi * 16][wj * 16], cf, kTilePad,
                            wmma::mem_row_major);
    __syncthreads();
    for (int u = 0; u < 2; ++u)
      for (int w = 0; w < 2; ++w) acc[u][w] = sh.a[0][ty + 16 * u][tx + 16 * w] + sh.b[0][ty + 16 * u][tx + 16 * w];
    __syncthreads();  // before the next tile's loads overwrite it
  }
#endif
  if (slices == 1) {
    store_tile_outputs(s, g, i0, jt, ty, tx, acc, sh);
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
  if (tid == 0) sh.last = arrives_last(item.ticket, static_cast<unsigned>(slices)) ? 1u : 0u;
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
  store_tile_outputs(s, g, i0, jt, ty, tx, sum, sh);
}

// K slices of an op in a phase of `total` tiles: where the phase has fewer tiles than the grid
// has blocks, each tile's K is split so that every block gets work (at least two kTileK chunks a
// slice, at most kMaxSplit slices). The same on every block: it depends on shapes and the grid.
constexpr int kMaxSplit = 16;
__device__ __forceinline__ int split_slices(const GemmOp& op, int total) {
  if (total >= static_cast<int>(gridDim.x)) return 1;
  int s = (static_cast<int>(gridDim.x) + total - 1) / total;
  const int by_k = (op.k + 2 * kTileK - 1) / (2 * kTileK);
  s = s < by_k ? s : by_k;
  s = s < kMaxSplit ? s : kMaxSplit;
  return s > 1 ? s : 1;
}

// The work items (tiles, or K slices of tiles) of `count` independent GEMMs, handed out over the
// grid's blocks, with no grid barrier inside: split tiles meet at their tickets (gemm_tile). The
// workspace holds Σ slices · m · columns ≤ (grid + tiles) · kTile² < 2 · grid · kTile² floats of
// partial sums, then one ticket per tile of the phase (split only where tiles < grid).
__device__ void gemm_phase(const Step& s, const PhaseGemm* ops, int count, TileShared& sh) {
  int total = 0;
  for (int o = 0; o < count; ++o) total += gemm_tiles(ops[o]);
  int items = 0;
  for (int o = 0; o < count; ++o) items += split_slices(ops[o].op, total) * gemm_tiles(ops[o]);
  unsigned* tickets = fused_tickets(s.a.workspace, gridDim.x);
  for (int t = static_cast<int>(blockIdx.x); t < items; t += static_cast<int>(gridDim.x)) {
    int o = 0, local = t, ticket = 0;
    long long offset = 0;  // this op's slices in the workspace
    for (;; ++o) {
      const int sl = split_slices(ops[o].op, total), tiles = gemm_tiles(ops[o]);
      if (local < sl * tiles) break;
      local -= sl * tiles;
      ticket += tiles;
      if (sl > 1) offset += static_cast<long long>(sl) * ops[o].op.m * gemm_columns(ops[o].op);
    }
    const GemmOp& op = ops[o].op;
    const int slices = split_slices(op, total), tiles = gemm_tiles(ops[o]);
    const int slice = local / tiles, tile = local % tiles;
    const int per = ((op.k + slices - 1) / slices + kTileK - 1) / kTileK * kTileK;
    const int k_begin = slice * per, k_end = k_begin + per < op.k ? k_begin + per : op.k;
    gemm_tile(s, ops[o], {tile, k_begin, k_end, slice, slices, s.a.workspace + offset, tickets + ticket + tile}, sh);
  }
}

__device__ __forceinline__ const float* weight(const FusedStepArgs& a, const FusedLayer& l) {
  return a.params + l.weight;
}
__device__ __forceinline__ const float* bias(const FusedStepArgs& a, const FusedLayer& l) { return a.params + l.bias; }

// Hidden layers (activation act) from `in`, then the top layer (identity) into top.h with its
// tile epilogue (paired columns or not), a grid barrier after each: the encoder with the heads on
// top (z drawn in their epilogue), or the decoder with the output layer (the reconstruction's).
__device__ void forward_stack(const Step& s, const FusedLayer* layers, int count, const FusedLayer& top,
                              TileEpilogue top_epilogue, bool top_pairs, const float* in, int rows, TileShared& sh) {
  for (int l = 0; l <= count; ++l) {
    const FusedLayer& L = l < count ? layers[l] : top;
    const PhaseGemm g{dense_forward_gemm(L.out, L.in, in, weight(s.a, L), bias(s.a, L), L.h, rows,
                                         l < count ? s.a.activation : Activation::identity),
                      l < count ? TileEpilogue::store : top_epilogue, l == count && top_pairs};
    gemm_phase(s, &g, 1, sh);
    step_barrier(sh);
    in = L.h;
  }
}

// A layer's dW and db with the optimizer's update of its parameters (input `in`, rows of them).
__device__ PhaseGemm weight_update(const FusedStepArgs& a, const FusedLayer& l, const float* in, int rows) {
  return {dense_weight_grad_gemm(l.out, l.in, l.dh, in, a.grads + l.weight, a.grads + l.bias, rows),
          TileEpilogue::update};
}

// The weight update left for the next phase: a layer's parameters change only once no phase reads
// them any more, i.e. in the phase after the one that computed the gradient of its input.
struct Pending {
  PhaseGemm update;
  int count = 0;  // 0 or 1
};

// The backward of such a stack, from the top layer (its dh filled) down to the first, a phase per
// layer: the gradient of the layer's input (it reads W) — through the activation of the layer
// below, or into bottom_grad for the stack's input `bottom`, with bottom_epilogue — beside the pending update of the
// layer above, which then leaves this layer's update pending. A layer whose input gradient is not
// needed (bottom_grad null) takes its own update in its phase too, and leaves none. A grid barrier
// after each phase, but after the last one only with last_barrier.
__device__ void backward_stack(const Step& s, const FusedLayer* layers, int count, const FusedLayer& top,
                               const float* bottom, float* bottom_grad, TileEpilogue bottom_epilogue, int rows,
                               Pending& pending, bool last_barrier, TileShared& sh) {
  for (int l = count; l >= 0; --l) {
    const FusedLayer& L = l < count ? layers[l] : top;
    const float* below = l ? layers[l - 1].h : bottom;
    float* grad_in = l ? layers[l - 1].dh : bottom_grad;
    PhaseGemm ops[2];
    int n = 0;
    if (grad_in) {  // first: the next phase waits for it, nothing waits for an update within the step
      ops[n++] = {
          dense_input_grad_gemm(L.out, L.in, L.dh, weight(s.a, L), grad_in, rows, l ? below : nullptr, s.a.activation),
          l ? TileEpilogue::store : bottom_epilogue};
    }
    if (pending.count) ops[n++] = pending.update;
    pending.count = 0;
    if (grad_in) {
      pending = {weight_update(s.a, L, below, rows), 1};
    } else {
      ops[n++] = weight_update(s.a, L, below, rows);
    }
    gemm_phase(s, ops, n, sh);
    if (l > 0 || last_barrier) step_barrier(sh);
  }
}

// Block 0: totals += (Σ_r (1/L) Σ_ℓ log p, Σ_r KL, B) in float64, a fixed order (elbo_totals').
__device__ void block_totals(const FusedStepArgs& a, uint64_t step) {
  __shared__ double partial[2][kStepThreads];
  double recon = 0, kl_sum = 0;
  for (int r = static_cast<int>(threadIdx.x); r < a.batch; r += kStepThreads) {
    double row = 0;
    bool finite = true;
    for (int s = 0; s < a.samples; ++s) {
      const float lp = a.log_prob[static_cast<long long>(s) * a.batch + r];
      finite = finite && finite_bits(lp);
      row += lp;
    }
    recon += row / a.samples;
    kl_sum += a.kl[r];
    if (a.watch && !(finite && finite_bits(a.kl[r]))) {
      record_non_finite(a.watch, step, finite ? NonFiniteTerm::kl : NonFiniteTerm::reconstruction, r);
    }
  }
  partial[0][threadIdx.x] = recon;
  partial[1][threadIdx.x] = kl_sum;
  __syncthreads();
  for (int half = kStepThreads / 2; half > 0; half /= 2) {
    if (static_cast<int>(threadIdx.x) < half) {
      partial[0][threadIdx.x] += partial[0][threadIdx.x + half];
      partial[1][threadIdx.x] += partial[1][threadIdx.x + half];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    a.totals[0] += partial[0][0];
    a.totals[1] += partial[1][0];
    a.totals[2] += a.batch;
  }
}

// The batch at `at` (its rows at.offset.. of the permutation) into x (and dynamic binarization), as
// gather_batch, strided over the grid's threads. Out of line: inlined twice into the step it
// spilled registers on sm_90.
__device__ VAE_NOINLINE void gather_rows(const FusedStepArgs& a, const StepState& at, float* x) {
  const long long first = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
  const int B = a.batch;
  if (a.binarize) {
    const int groups = (a.dim + 3) / 4;
    for (long long i = first; i < static_cast<long long>(B) * groups; i += stride) {
      if (a.type == PixelType::u8) {
        binarized_group(static_cast<const uint8_t*>(a.data), a.perm, at.offset, a.dim, groups, i, x, a.seed,
                        RandomStream::binarize, at.step, at.row0);
      } else {
        binarized_group(static_cast<const float*>(a.data), a.perm, at.offset, a.dim, groups, i, x, a.seed,
                        RandomStream::binarize, at.step, at.row0);
      }
    }
  } else {
    for (long long i = first; i < static_cast<long long>(B) * a.dim; i += stride) {
      const long long r = i / a.dim, d = i - r * a.dim;
      const long long src = source_row(a.perm, at.offset, r) * a.dim + d;
      x[i] = a.type == PixelType::u8 ? pixel_value(static_cast<const uint8_t*>(a.data)[src])
                                     : pixel_value(static_cast<const float*>(a.data)[src]);
    }
  }
}

// One training step at `at`, by every block, on the batch in x: gathered first (a phase and its
// barrier) unless `gathered` (the step before gathered it). With next_x, the next step's batch
// (at `next`) is gathered into it during this step's last phase, which reads x but not next_x.
__device__ void train_step(const FusedStepArgs& a, const StepState& at, float* x, bool gathered, float* next_x,
                           const StepState& next, TileShared& sh) {
  const long long first = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
  const int B = a.batch, rows = a.batch * a.samples, J = a.latent;
  const Step s{a,       at.step,
               at.row0, optimizer_scalars(a.hyper, at.step),
               x,       kl_scale_at(1.f / static_cast<float>(B), a.kl_term, &at)};
  if (threadIdx.x == 0) sh.barriers = 0;
  record_time(a, 0);

  if (!gathered) {
    gather_rows(a, at, x);
    step_barrier(sh);
  }
  phase_end(a, FusedPhase::gather);

  // Encoder and heads, with ε and z = μ + σ ε drawn in the heads' epilogue.
  forward_stack(s, a.encoder, a.encoder_layers, a.heads, TileEpilogue::latent, true, x, B, sh);
  phase_end(a, FusedPhase::encoder);

  // Decoder and output layer, with each pixel's log p(x|z) term and its gradient in the output
  // layer's epilogue (the terms of a row summed per column tile).
  forward_stack(s, a.decoder, a.decoder_layers, a.output, TileEpilogue::reconstruction, a.gaussian, a.z, rows, sh);
  phase_end(a, FusedPhase::decoder);

  // Each row's log p (its column tiles' sums in order, a thread per row) and KL (analytic, or the
  // Monte-Carlo mean over the row's samples); beside them the backward of the output layer and
  // the decoder, the output layer's update beside the decoder's last input gradient.
  {
    const float* row_sums = fused_row_sums(a.workspace, gridDim.x);
    const int tiles = fused_step_output_tiles(a.dim, a.gaussian);
    for (long long r = first; r < rows; r += stride) {
      float sum = 0.f;
      for (int t = 0; t < tiles; ++t) sum += row_sums[t * rows + r];
      a.log_prob[r] = sum;
    }
  }
  for (long long r = first; r < B; r += stride) {
    const float* mu = a.heads.h + r * 2 * J;
    a.kl[r] = a.kl_term.estimator == KlEstimator::analytic
                  ? analytic_kl_row(mu, mu + J, J)
                  : mc_kl_row(mu, mu + J, J, static_cast<int>(at.row0 + r), a.samples, a.seed,
                              RandomStream::latent_noise, at.step);
  }
  // With one sample a row the latent backward runs in the epilogue of the GEMM that computes dL/dz.
  const bool latent_in_epilogue = a.samples == 1;
  Pending pending;
  backward_stack(s, a.decoder, a.decoder_layers, a.output, a.z, a.d_z,
                 latent_in_epilogue ? TileEpilogue::latent_grad : TileEpilogue::store, rows, pending, true, sh);
  phase_end(a, FusedPhase::decoder_backward);

  // The ELBO totals (block 0).
  if (blockIdx.x == 0) block_totals(a, at.step);

  // With several samples a row, the latent backward as a phase, an element per thread; the KL's
  // gradient weighted by β at this step. Beside it the update of the decoder's first layer (else
  // in the next phase).
  if (!latent_in_epilogue) {
    for (long long i = first; i < static_cast<long long>(B) * J; i += stride) {
      latent_backward_element(a.heads.h, a.z, a.d_z, a.heads.dh, static_cast<int>(i / J), static_cast<int>(i % J), B, J,
                              a.samples, s.kl_scale, a.kl_term.estimator, a.kl_term.gradient == KlGradient::dreg);
    }
    gemm_phase(s, &pending.update, pending.count, sh);
    pending.count = 0;
    step_barrier(sh);
  }
  phase_end(a, FusedPhase::latent_backward);

  // Heads and encoder backward (dL/dx is not needed), the last phase with the first layer's update
  // and the one above it. No barrier after it: the next step's starts the launch's next step.
  if (next_x) gather_rows(a, next, next_x);
  backward_stack(s, a.encoder, a.encoder_layers, a.heads, x, nullptr, TileEpilogue::store, B, pending, false, sh);
  phase_end(a, FusedPhase::encoder_backward);
  if (a.phase_ns && threadIdx.x == 0) a.phase_ns[blockIdx.x * kFusedPhaseSlots + 1 + kFusedPhases] = sh.barriers;
}

}  // namespace

// a.steps consecutive steps (full batches of one permutation) in one launch: a grid barrier
// between them (the next gather overwrites x, the next forward reads the updated parameters).
__global__ void __launch_bounds__(kStepThreads, 2) fused_step_kernel(FusedStepArgs a) {
  __shared__ TileShared sh;
  __shared__ StepState base;  // every block reads it before the first barrier; block 0 moves it on last
  if (threadIdx.x == 0) base = *a.at;
  __syncthreads();
  // With x_next, the batches alternate between a.x and x_next, each gathered during the step before.
  float* batches[2] = {a.x, a.x_next ? a.x_next : a.x};
  auto state = [&](int i) {
    return StepState{base.step + i, base.offset + static_cast<long long>(i) * a.batch, base.row0};
  };
  for (int i = 0; i < a.steps; ++i) {
    if (i > 0) VAE_GRID_SYNC();
    const bool ahead = a.x_next && i + 1 < a.steps;
    train_step(a, state(i), batches[i % 2], a.x_next && i > 0, ahead ? batches[(i + 1) % 2] : nullptr, state(i + 1),
               sh);
  }
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    a.at->step = base.step + a.steps;
    a.at->offset = base.offset + static_cast<long long>(a.steps) * a.batch;
  }
}

int fused_step_grid() {
  // Every block resident at once: on the GPU up to two per SM (a batch-128 phase has tens of
  // tiles, split-K makes them enough, and more blocks would only make the barriers dearer), found
  // once per run; on the CPU one per worker (tests change the worker count).
#if VAE_HOST_EXEC
  return std::max(1, cooperative_max_blocks(fused_step_kernel, kStepThreads, 0));
#else
  static const int grid = [] {
    int dev = 0, sms = 1;
    VAE_CUDA_CHECK(cudaGetDevice(&dev));
    VAE_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    return std::max(1, std::min(cooperative_max_blocks(fused_step_kernel, kStepThreads, 0), 2 * sms));
  }();
  return grid;
#endif
}

void fused_step(const FusedStepArgs& args, cudaStream_t stream) {
  VAE_REQUIRE(args.encoder_layers <= kMaxStepLayers && args.decoder_layers <= kMaxStepLayers,
              "fused_step: too many hidden layers");
  VAE_REQUIRE(args.batch > 0 && args.samples > 0 && args.latent > 0 && args.steps > 0, "fused_step: bad shape");
  const int most = fused_step_grid(), grid = args.grid > 0 ? args.grid : most;
  VAE_REQUIRE(grid <= most, "fused_step: more blocks than can be resident at once");
  VAE_REQUIRE(args.workspace && args.workspace_floats >= fused_step_workspace_floats(grid, args.batch * args.samples,
                                                                                     args.dim, args.gaussian),
              "fused_step: the workspace is smaller than the grid and the batch need");
  VAE_LAUNCH_COOPERATIVE(fused_step_kernel, grid, kStepThreads, 0, stream, args);
}

}  // namespace vae::VAE_NS
