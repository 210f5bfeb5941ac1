// The whole training step as one cooperative kernel: batch gather → encoder → heads → ε, z, KL →
// decoder → output layer with log p(x|z) and its gradient → backward through the decoder, the
// latent stage and the encoder → the optimizer update, with a grid-wide barrier only where data
// dependence demands one (2·(encoder + decoder layers) + 8 of them, and one more per GEMM phase
// that splits K; FusedStepArgs::phase_ns counts them and times each phase). Every block takes part in
// every phase: GEMM phases hand out 32×32 output tiles (a layer's weight- and input-gradient
// GEMMs share one phase), row and element phases stride over the grid's threads. Each output is
// summed by one thread in a fixed order, and the ELBO totals by one block: the same seed gives
// the same bits. The element math is the composed step's (the headers it shares), and so are
// the random numbers. For the latency-bound regime (small batches), where the composed step is
// a string of small kernels; one launch per step, captured in the trainer's CUDA graph.
#include <algorithm>

#include "ops.h"  // the entry points this file defines
#include "kernels/activation.cuh"
#include "kernels/batch.cuh"
#include "kernels/dense_gemm.h"
#include "kernels/latent_sample.cuh"
#include "kernels/non_finite.cuh"
#include "kernels/optimizer.cuh"
#include "kernels/reconstruction.cuh"

namespace vae::VAE_NS {

namespace {

constexpr int kStepThreads = 256;  // 8 warps; the GEMM tile's 16 × 16 threads
constexpr int kTile = 32;          // output tiles of kTile × kTile
constexpr int kTileK = 32;         // the K slice staged in shared memory at a time

constexpr int kTilePad = kTile + 4;  // row stride: a multiple of 4 floats, as the warp matrix loads need
struct TileShared {
  alignas(32) float a[kTileK][kTilePad];  // op(A) slice, transposed: a[p][i] (after a TF32 tile: C[i][j], one K half)
  alignas(32) float b[kTileK][kTilePad];  // op(B) slice: b[p][j] (after a TF32 tile: the other K half)
  unsigned barriers;                      // grid barriers passed this step (thread 0's count)
};

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

// C's columns, and one more for a bias gradient: a column of ones in op(B), whose output column
// is Σ_p op(A)[i, p], taken from the tile's own sums.
__device__ __forceinline__ int gemm_columns(const GemmOp& op) { return op.n + (op.bias_grad ? 1 : 0); }
__device__ __forceinline__ int gemm_tiles(const GemmOp& op) {
  return ((op.m + kTile - 1) / kTile) * ((gemm_columns(op) + kTile - 1) / kTile);
}

// C[i, j] = v: the epilogue, or for the extra column, the bias gradient.
__device__ __forceinline__ void store_output(const GemmOp& op, int i, int j, float acc) {
  if (j < op.n) {
    float v = op.alpha * acc;
    const long long at = static_cast<long long>(i) * op.ldc + j;
    if (op.epilogue == Epilogue::bias_activation) {
      v = activate(v + op.bias[j], op.activation);
    } else if (op.epilogue == Epilogue::activation_grad) {
      const float h = op.activation_output[at];
      v = op.activation == Activation::relu ? (h > 0.f ? v : 0.f) : v * activation_grad(h, op.activation);
    }
    op.c[at] = v;
  } else if (j == op.n && op.bias_grad) {
    op.bias_grad[i] = acc;
  }
}

// One kTile × kTile tile of C over K in [k_begin, k_end): thread (ty, tx) of 16 × 16 owns rows
// i0 + ty + {0, 16} and columns j0 + tx + {0, 16}; K in slices through shared memory. In fp32 each
// thread sums its four outputs with FFMA; with tf32, each warp takes a 16 × 16 quarter of the
// tile and half of each slice's K steps on the tensor cores (TF32 inputs, fp32 sums), and the
// two halves meet, in a fixed order, through shared memory. Then the epilogue, or, for a split-K item, the raw sums
// into partial (m, columns).
__device__ void gemm_tile(const GemmOp& op, int tile, int k_begin, int k_end, float* partial, bool tf32,
                          TileShared& sh) {
  namespace wmma = nvcuda::wmma;
  const int cols = gemm_columns(op);
  const int tiles_n = (cols + kTile - 1) / kTile;
  const int i0 = (tile / tiles_n) * kTile, j0 = (tile % tiles_n) * kTile;
  const int tid = static_cast<int>(threadIdx.x);
  const int ty = tid / 16, tx = tid % 16;
  float acc[2][2] = {};
#if VAE_HAS_TF32_MMA
  // Warp w takes the 16 × 16 quarter (wi, wj) = ((w % 4) / 2, w % 2) of the tile over the K steps
  // of 8 numbered w / 4 (mod 2) in each slice: all eight warps on the tensor cores.
  const int warp = tid / 32, wi = (warp % 4) / 2, wj = warp % 2, k_half = warp / 4;
  wmma::fragment<wmma::accumulator, 16, 16, 8, float> cf;
  if (tf32) wmma::fill_fragment(cf, 0.f);
#else
  (void)tf32;  // no TF32 tensor cores before sm_80: FFMA
#endif
  for (int k0 = k_begin; k0 < k_end; k0 += kTileK) {
    for (int e = tid; e < kTile * kTileK; e += kStepThreads) {
      // Consecutive threads along K where A is not transposed (contiguous), along i where it is.
      const int r = op.trans_a ? e % kTile : e / kTileK, kk = op.trans_a ? e / kTile : e % kTileK;
      const int i = i0 + r, p = k0 + kk;
      float av = 0.f;
      if (i < op.m && p < k_end) av = op.trans_a ? op.a[static_cast<long long>(p) * op.lda + i] : op.a[i * op.lda + p];
      sh.a[kk][r] = av;
      const int c = op.trans_b ? e / kTileK : e % kTile, q = op.trans_b ? e % kTileK : e / kTile;
      const int j = j0 + c, pb = k0 + q;
      float bv = 0.f;
      if (pb < k_end) {
        if (j < op.n) {
          bv = op.trans_b ? op.b[static_cast<long long>(j) * op.ldb + pb]
                          : op.b[static_cast<long long>(pb) * op.ldb + j];
        } else if (j == op.n && op.bias_grad) {
          bv = 1.f;
        }
      }
      sh.b[q][c] = bv;
    }
    __syncthreads();
#if VAE_HAS_TF32_MMA
    if (tf32) {
      for (int k8 = 8 * k_half; k8 < kTileK; k8 += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::col_major> fa;
        wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fb;
        wmma::load_matrix_sync(fa, &sh.a[k8][wi * 16], kTilePad);
        wmma::load_matrix_sync(fb, &sh.b[k8][wj * 16], kTilePad);
        for (int e = 0; e < fa.num_elements; ++e) fa.x[e] = wmma::__float_to_tf32(fa.x[e]);
        for (int e = 0; e < fb.num_elements; ++e) fb.x[e] = wmma::__float_to_tf32(fb.x[e]);
        wmma::mma_sync(cf, fa, fb, cf);
      }
      __syncthreads();
      continue;
    }
#endif
    for (int kk = 0; kk < kTileK; ++kk) {
      const float a0 = sh.a[kk][ty], a1 = sh.a[kk][ty + 16];
      const float b0 = sh.b[kk][tx], b1 = sh.b[kk][tx + 16];
      acc[0][0] += a0 * b0;
      acc[0][1] += a0 * b1;
      acc[1][0] += a1 * b0;
      acc[1][1] += a1 * b1;
    }
    __syncthreads();
  }
#if VAE_HAS_TF32_MMA
  if (tf32) {  // the two K halves' sums, through shared memory (C row-major over sh.a and sh.b), to the owners
    wmma::store_matrix_sync(k_half ? &sh.b[wi * 16][wj * 16] : &sh.a[wi * 16][wj * 16], cf, kTilePad,
                            wmma::mem_row_major);
    __syncthreads();
    for (int u = 0; u < 2; ++u)
      for (int w = 0; w < 2; ++w) acc[u][w] = sh.a[ty + 16 * u][tx + 16 * w] + sh.b[ty + 16 * u][tx + 16 * w];
    __syncthreads();  // before the next tile's loads overwrite it
  }
#endif
  for (int u = 0; u < 2; ++u) {
    const int i = i0 + ty + 16 * u;
    if (i >= op.m) continue;
    for (int w = 0; w < 2; ++w) {
      const int j = j0 + tx + 16 * w;
      if (j >= cols) continue;
      if (partial) {
        partial[static_cast<long long>(i) * cols + j] = acc[u][w];
      } else {
        store_output(op, i, j, acc[u][w]);
      }
    }
  }
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

// The tiles of `count` independent GEMMs, handed out over the grid's blocks; split-K where the
// tiles are too few, each slice's sums into workspace, then (after a grid barrier) each output
// the sum of its slices in slice order and its epilogue: deterministic, no atomics. The
// workspace holds Σ slices · m · columns ≤ (grid + tiles) · kTile² < 2 · grid · kTile² floats.
__device__ void gemm_phase(const GemmOp* ops, int count, float* workspace, bool tf32, TileShared& sh) {
  int total = 0;
  for (int o = 0; o < count; ++o) total += gemm_tiles(ops[o]);
  int items = 0;
  bool split = false;
  for (int o = 0; o < count; ++o) {
    const int s = split_slices(ops[o], total);
    items += s * gemm_tiles(ops[o]);
    split = split || s > 1;
  }
  for (int t = static_cast<int>(blockIdx.x); t < items; t += static_cast<int>(gridDim.x)) {
    int o = 0, local = t;
    long long offset = 0;  // this op's slices in the workspace
    for (;; ++o) {
      const int s = split_slices(ops[o], total), n = s * gemm_tiles(ops[o]);
      if (local < n) break;
      local -= n;
      if (s > 1) offset += static_cast<long long>(s) * ops[o].m * gemm_columns(ops[o]);
    }
    const GemmOp& op = ops[o];
    const int slices = split_slices(op, total), tiles = gemm_tiles(op);
    const int slice = local / tiles, tile = local % tiles;
    const int per = ((op.k + slices - 1) / slices + kTileK - 1) / kTileK * kTileK;
    const int k_begin = slice * per, k_end = k_begin + per < op.k ? k_begin + per : op.k;
    float* partial =
        slices > 1 ? workspace + offset + static_cast<long long>(slice) * op.m * gemm_columns(op) : nullptr;
    gemm_tile(op, tile, k_begin, k_end, partial, tf32, sh);
  }
  if (!split) return;  // uniform over the grid
  step_barrier(sh);
  const long long first = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
  long long offset = 0;
  for (int o = 0; o < count; ++o) {
    const GemmOp& op = ops[o];
    const int slices = split_slices(op, total), cols = gemm_columns(op);
    if (slices == 1) continue;
    const long long n = static_cast<long long>(op.m) * cols;
    for (long long e = first; e < n; e += stride) {
      float sum = 0.f;
      for (int s = 0; s < slices; ++s) sum += workspace[offset + s * n + e];
      store_output(op, static_cast<int>(e / cols), static_cast<int>(e % cols), sum);
    }
    offset += slices * n;
  }
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__device__ __forceinline__ const float* weight(const FusedStepArgs& a, const FusedLayer& l) {
  return a.params + l.weight;
}
__device__ __forceinline__ const float* bias(const FusedStepArgs& a, const FusedLayer& l) { return a.params + l.bias; }

// A layer's backward phase: dW and db, and (with grad_in) dL/d(its input), through the
// activation of the layer below when h_in is given.
__device__ void layer_backward(const FusedStepArgs& a, const FusedLayer& l, const float* in, int rows,
                               const float* h_in, float* grad_in, TileShared& sh) {
  GemmOp ops[2];
  ops[0] = dense_weight_grad_gemm(l.out, l.in, l.dh, in, a.grads + l.weight, a.grads + l.bias, rows);
  int count = 1;
  if (grad_in) ops[count++] = dense_input_grad_gemm(l.out, l.in, l.dh, weight(a, l), grad_in, rows, h_in, a.activation);
  gemm_phase(ops, count, a.workspace, a.tf32, sh);
}

// Hidden layers (activation act) from `in`, then the top layer (identity) into top.h, a grid
// barrier after each: the encoder with the heads on top, or the decoder with the output layer.
__device__ void forward_stack(const FusedStepArgs& a, const FusedLayer* layers, int count, const FusedLayer& top,
                              const float* in, int rows, TileShared& sh) {
  for (int l = 0; l <= count; ++l) {
    const FusedLayer& L = l < count ? layers[l] : top;
    const GemmOp op = dense_forward_gemm(L.out, L.in, in, weight(a, L), bias(a, L), L.h, rows,
                                         l < count ? a.activation : Activation::identity);
    gemm_phase(&op, 1, a.workspace, a.tf32, sh);
    step_barrier(sh);
    in = L.h;
  }
}

// The backward of such a stack, from the top layer (its dh filled) down to the first: each
// layer's dW, db and the gradient of its input — through the activation of the layer below, or
// into bottom_grad (null: not needed) for the stack's input `bottom`. A grid barrier after each.
__device__ void backward_stack(const FusedStepArgs& a, const FusedLayer* layers, int count, const FusedLayer& top,
                               const float* bottom, float* bottom_grad, int rows, TileShared& sh) {
  for (int l = count; l >= 0; --l) {
    const FusedLayer& L = l < count ? layers[l] : top;
    const float* below = l ? layers[l - 1].h : bottom;
    layer_backward(a, L, below, rows, l ? below : nullptr, l ? layers[l - 1].dh : bottom_grad, sh);
    step_barrier(sh);
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

template <OptimizerKind kind>
__device__ void optimizer_phase(const FusedStepArgs& a, uint64_t step, long long first, long long stride) {
  const OptimizerScalars k = optimizer_scalars(a.hyper, step);
  for (long long i = first; i < a.parameters; i += stride) {
    if (a.watch && !finite_bits(a.grads[i])) record_non_finite(a.watch, step, NonFiniteTerm::gradient, i);
    optimizer_element<kind>(a.hyper, k, a.params, a.grads, a.state1, a.state2, i);
  }
}

// One training step at `at` (its rows at->offset.. of the permutation), by every block.
__device__ void train_step(const FusedStepArgs& a, const StepState& at, TileShared& sh) {
  const long long first = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
  const int B = a.batch, rows = a.batch * a.samples, J = a.latent;
  if (threadIdx.x == 0) sh.barriers = 0;
  record_time(a, 0);

  // Batch gather (and dynamic binarization), as gather_batch.
  if (a.binarize) {
    const int groups = (a.dim + 3) / 4;
    for (long long i = first; i < static_cast<long long>(B) * groups; i += stride) {
      if (a.type == PixelType::u8) {
        binarized_group(static_cast<const uint8_t*>(a.data), a.perm, at.offset, a.dim, groups, i, a.x, a.seed,
                        RandomStream::binarize, at.step, at.row0);
      } else {
        binarized_group(static_cast<const float*>(a.data), a.perm, at.offset, a.dim, groups, i, a.x, a.seed,
                        RandomStream::binarize, at.step, at.row0);
      }
    }
  } else {
    for (long long i = first; i < static_cast<long long>(B) * a.dim; i += stride) {
      const long long r = i / a.dim, d = i - r * a.dim;
      const long long src = source_row(a.perm, at.offset, r) * a.dim + d;
      a.x[i] = a.type == PixelType::u8 ? pixel_value(static_cast<const uint8_t*>(a.data)[src])
                                       : pixel_value(static_cast<const float*>(a.data)[src]);
    }
  }
  step_barrier(sh);
  phase_end(a, FusedPhase::gather);

  // Encoder and heads.
  forward_stack(a, a.encoder, a.encoder_layers, a.heads, a.x, B, sh);
  phase_end(a, FusedPhase::encoder);

  // ε, z = μ + σ ε and the KL (analytic, or the Monte-Carlo mean over the row's samples), one
  // (row, sample) item per thread.
  for (long long t = first; t < rows; t += stride) {
    const int s = static_cast<int>(t / B), r = static_cast<int>(t % B), row = static_cast<int>(at.row0) + r;
    const float* mu = a.heads.h + static_cast<long long>(r) * 2 * J;
    const bool analytic = a.kl_term.estimator == KlEstimator::analytic;
    sample_latent(mu, mu + J, J, row, s, a.samples, a.seed, RandomStream::latent_noise, at.step, a.z + t * J,
                  analytic ? a.kl + r : nullptr);
    if (s == 0 && !analytic) {
      a.kl[r] = mc_kl_row(mu, mu + J, J, row, a.samples, a.seed, RandomStream::latent_noise, at.step);
    }
  }
  step_barrier(sh);
  phase_end(a, FusedPhase::latent);

  // Decoder and output layer.
  forward_stack(a, a.decoder, a.decoder_layers, a.output, a.z, rows, sh);
  phase_end(a, FusedPhase::decoder);

  // log p(x|z) and its gradient, a warp per (sample, row).
  {
    const float grad_scale = 1.f / static_cast<float>(rows);
    const int lane = static_cast<int>(threadIdx.x % 32);
    const long long warps = stride / 32;
    // Every lane of a warp runs the same rows: the shuffles see full warps.
    for (long long row = first / 32; row < rows; row += warps) {
      const float* xr = a.x + (row % B) * a.dim;
      const int width = a.gaussian ? 2 * a.dim : a.dim;
      const float* o = a.output.h + row * width;
      float* g = a.output.dh + row * width;
      float sum = 0.f;
      for (int d = lane; d < a.dim; d += 32) {
        sum += a.gaussian ? gaussian_term<true>(o, xr, g, d, a.dim, grad_scale)
                          : bernoulli_term<true>(o, xr, g, d, grad_scale);
      }
      sum = warp_sum(sum);
      if (lane == 0) a.log_prob[row] = sum;
    }
  }
  step_barrier(sh);
  phase_end(a, FusedPhase::reconstruction);

  // The ELBO totals (block 0), then the backward of the output layer and the decoder.
  if (blockIdx.x == 0) block_totals(a, at.step);
  backward_stack(a, a.decoder, a.decoder_layers, a.output, a.z, a.d_z, rows, sh);
  phase_end(a, FusedPhase::decoder_backward);

  // Latent stage backward, an element per thread; the KL's gradient weighted by β at this step.
  const float kl_scale = kl_scale_at(1.f / static_cast<float>(B), a.kl_term, &at);
  for (long long i = first; i < static_cast<long long>(B) * J; i += stride) {
    latent_backward_element(a.heads.h, a.z, a.d_z, a.heads.dh, static_cast<int>(i / J), static_cast<int>(i % J), B, J,
                            a.samples, kl_scale, a.kl_term.estimator, a.kl_term.gradient == KlGradient::dreg);
  }
  step_barrier(sh);
  phase_end(a, FusedPhase::latent_backward);

  // Heads and encoder backward (dL/dx is not needed).
  backward_stack(a, a.encoder, a.encoder_layers, a.heads, a.x, nullptr, B, sh);
  phase_end(a, FusedPhase::encoder_backward);

  // The optimizer over the flat buffer; then block 0 moves the step on (every block has read it).
  switch (a.optimizer) {
    case OptimizerKind::adam:
      optimizer_phase<OptimizerKind::adam>(a, at.step, first, stride);
      break;
    case OptimizerKind::adagrad:
      optimizer_phase<OptimizerKind::adagrad>(a, at.step, first, stride);
      break;
    case OptimizerKind::sgd:
      optimizer_phase<OptimizerKind::sgd>(a, at.step, first, stride);
      break;
  }
  phase_end(a, FusedPhase::optimizer);
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
  for (int i = 0; i < a.steps; ++i) {
    if (i > 0) VAE_GRID_SYNC();
    train_step(a, {base.step + i, base.offset + static_cast<long long>(i) * a.batch, base.row0}, sh);
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
  const int grid = fused_step_grid();
  VAE_REQUIRE(args.workspace && args.workspace_floats >= fused_step_workspace_floats(grid),
              "fused_step: the split-K workspace is smaller than the grid needs");
  VAE_LAUNCH_COOPERATIVE(fused_step_kernel, grid, kStepThreads, 0, stream, args);
}

}  // namespace vae::VAE_NS
