// The whole training step as one cooperative kernel: batch gather → encoder → heads → ε, z, KL →
// decoder → output layer with log p(x|z) and its gradient → backward through the decoder, the
// latent stage and the encoder, each weight gradient taking its optimizer update where it is
// final (no optimizer pass). A grid-wide barrier only where a phase needs all of the one before:
// 2·(encoder + decoder layers) + 4 a step, 5 with L > 1 (FusedStepArgs::phase_ns counts them and
// times each phase), in its two halves: a block arrives once done with the phase, and waits only
// where it next reads what the others wrote, a work item once the first K chunks of its layer's
// weights are in flight (the next phase's operands requested before the wait), a weight update
// left from the phase before (its operands final before that) after its K loop; with row flags
// (FusedStepArgs::row_flags) the phases meet at counters instead (a tile starts once the rows it reads are final, a
// weight update's epilogue once nothing reads the weights), only the gather's barrier left; one more between the steps
// of a persistent launch, whose later steps save the gather's (their batches gathered during the step before,
// FusedStepArgs::x_next). Every block takes part in every phase: GEMM phases hand out 32×32 output tiles (a layer's
// input gradient shares its phase with the update of the layer above), split in K where tiles are fewer than blocks
// (fused_split_plan), the slices meeting at per-tile tickets instead of a barrier; row and element phases stride over
// the grid's threads. Each output is summed by one thread in a fixed order, and the ELBO totals by one block: the same
// seed gives the same bits. The element math is the composed step's (the headers it shares), and so are the random
// numbers. For the latency-bound regime (small batches), where the composed step is a string of small kernels; launches
// of many steps, captured in the trainer's CUDA graph.
//
// Where a phase's tiles fill the grid, the costlier of its two GEMMs may split K too; with
// FusedStepArgs::cluster (sm_90) split tiles' slices meet in thread-block clusters, summed through
// their shared memory, instead of at tickets. Where a weight update makes its phase take two rounds
// (the output layer's beside dL/dz at batch 128), the rows that do not fit in one go to the next
// phase; in the last phase, which has no next, they split in K (fused_remainder_split).
#include <algorithm>
#include <vector>

#include "ops.h"  // the entry points this file defines
#include "kernels/batch.cuh"
#include "kernels/fused_phases.cuh"  // the GEMM phases: their plans and work items (fused_tiles.cuh: the tiles)

namespace vae::VAE_NS {

namespace {

// With timers on, thread 0 of each block records the time into slot `slot` of its row.
__device__ __forceinline__ void record_time(const FusedStepArgs& a, int slot) {
  if (a.phase_ns && threadIdx.x == 0) a.phase_ns[blockIdx.x * kFusedPhaseSlots + slot] = global_timer_ns();
}

// By thread 0: with timers on, records the GEMM work the block ran in phase n (the one before
// barrier n); starts the count of the next.
__device__ __forceinline__ void record_work(const FusedStepArgs& a, TileShared& sh, unsigned n) {
  if (a.phase_ns) {
    a.phase_ns[blockIdx.x * kFusedPhaseSlots + kFusedWorkSlots + (n < kFusedMaxBarriers ? n : kFusedMaxBarriers)] =
        static_cast<unsigned long long>(sh.work_items) << 32 | sh.work_chunks;
  }
  sh.work_items = sh.work_chunks = 0;
}

// A grid barrier of the step, counted, in its halves: the block arrives here (with timers on, the
// work before it and its arrival recorded) and waits where it next reads what the others wrote
// (settle_grid_barrier): a GEMM phase's work item once its weights' first chunks are requested,
// a deferred weight update's before its epilogue (gemm_tile), the element phases at their start,
// or its next arrival.
__device__ __forceinline__ void step_barrier(const FusedStepArgs& a, TileShared& sh) {
  settle_grid_barrier(a, sh);
  __syncthreads();  // every thread has read sh.grid_owed
  if (threadIdx.x == 0) {
    const unsigned n = sh.barriers++;
    record_work(a, sh, n);
    sh.grid_slot = kFusedBarrierSlots + 2 * static_cast<int>(n < kFusedMaxBarriers ? n : kFusedMaxBarriers - 1);
    record_time(a, sh.grid_slot);
    sh.grid_owed = 1;
    sh.sync.signal.at = nullptr;  // the next phase waits for nothing before the barrier
  }
  VAE_GRID_ARRIVE(sh.grid_token);
}
// After a GEMM phase: the arrival at a grid barrier, or with row flags only a __syncthreads (every
// thread is done with the phase's descriptors before thread 0 writes the next's).
__device__ __forceinline__ void phase_sync(const FusedStepArgs& a, TileShared& sh) {
  if (a.row_flags) {
    __syncthreads();
  } else {
    step_barrier(a, sh);
  }
}
__device__ __forceinline__ void phase_end(const FusedStepArgs& a, FusedPhase p) {
  record_time(a, 1 + static_cast<int>(p));
}

// This thread's index in the grid, and the grid's threads: the first element and the stride of a
// loop that strides over the grid.
__device__ __forceinline__ long long grid_thread() {
  return static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ long long grid_threads() { return static_cast<long long>(gridDim.x) * blockDim.x; }

__device__ __forceinline__ const float* weight(const FusedStepArgs& a, const FusedLayer& l) {
  return a.params + l.weight;
}
__device__ __forceinline__ const float* bias(const FusedStepArgs& a, const FusedLayer& l) { return a.params + l.bias; }

// With row flags: grid counter k (fused_grid_counter) as something to wait for, every block of the
// launch counted in there once in each of its steps so far and in this one; and the block's count
// there, once every thread's writes are issued.
__device__ __forceinline__ TileShared::Counters grid_counter(const FusedStepArgs& a, const TileShared& sh, int k) {
  return {fused_grid_counter(a, k), 0, 1, (sh.launch_step + 1) * gridDim.x};
}
__device__ __forceinline__ void count_grid(const FusedStepArgs& a, const TileShared& sh, int k) {
  __syncthreads();
  if (threadIdx.x == 0) count_done(fused_grid_counter(a, k));
}

// By thread 0, before GEMM phase sh.phase of the step (its ops in sh.slots.ops): how it meets the others besides
// grid barriers (sh.sync). Its split-K sums in region sh.phase; with row flags, its tiles wait at the counters the
// phase before signalled (none after a grid barrier: step_barrier clears the signal), and its first GEMM's tiles
// count in at its own row flags unless that GEMM is a weight update.
__device__ void set_phase_sync(const FusedStepArgs& a, TileShared& sh) {
  TileShared::PhaseSync& y = sh.sync;
  const PhaseGemm& g = sh.slots.ops[0];
  y.region = sh.phase;
  y.before = y.wait;
  y.wait = y.signal;
  y.signal = {nullptr, 0, 0, 0};
  if (a.row_flags && g.epilogue != TileEpilogue::update) {
    y.signal = {fused_row_flags(a, sh.phase), g.op.m, fused_row_blocks(g.op.m),
                (sh.launch_step + 1) * static_cast<unsigned>(gemm_column_tiles(g))};
  }
}

// Hidden layers (activation act) from `in`, then the top layer (identity) into top.h with its
// tile epilogue (paired columns or not): the encoder with the heads on top (z drawn in their
// epilogue), or the decoder with the output layer (the reconstruction's). A grid barrier after
// each, or with row flags none (a tile waits for the rows it reads).
__device__ void forward_stack(const Step& s, const FusedLayer* layers, int count, const FusedLayer& top,
                              TileEpilogue top_epilogue, bool top_pairs, const float* in, int rows, TileShared& sh) {
  for (int l = 0; l <= count; ++l) {
    const FusedLayer& L = l < count ? layers[l] : top;
    if (threadIdx.x == 0) {
      sh.slots.ops[0] = {dense_forward_gemm(L.out, L.in, in, weight(s.a, L), bias(s.a, L), L.h, rows,
                                            l < count ? s.a.activation : Activation::identity),
                         l < count ? TileEpilogue::store : top_epilogue, l == count && top_pairs};
      sh.ops_count = 1;
      set_phase_sync(s.a, sh);
    }
    gemm_phase(s, sh);
    phase_sync(s.a, sh);
    in = L.h;
  }
}

// By thread 0, building a backward phase's GEMMs from ops[n] on: the weight update left pending by
// the phase before (backward_stack), and the rows of one it carried here (gemm_phase). Returns the
// phase's GEMMs. Every GEMM phase after a backward one is built so: nothing carried is left out.
__device__ int add_left_updates(TileShared& sh, int n) {
  if (sh.pending_count) sh.slots.ops[n++] = sh.pending.op;
  if (sh.carry_count) sh.slots.ops[n++] = sh.carry.op;
  sh.pending_count = sh.carry_count = 0;
  return n;
}

// A layer's dW and db with the optimizer's update of its parameters (input `in`, rows of them).
__device__ PhaseGemm weight_update(const FusedStepArgs& a, const FusedLayer& l, const float* in, int rows) {
  return {dense_weight_grad_gemm(l.out, l.in, l.dh, in, a.grads + l.weight, a.grads + l.bias, rows),
          TileEpilogue::update};
}

// The backward of such a stack, from the top layer (its dh filled) down to the first, a phase per
// layer: the gradient of the layer's input (it reads W) — through the activation of the layer
// below, or into bottom_grad for the stack's input `bottom`, with bottom_epilogue — beside the
// update left pending by the layer above (sh.pending), which then leaves this layer's update
// pending: a layer's parameters change only once no phase reads them any more, i.e. in the phase
// after the one that computed the gradient of its input (or, for the rows of it that do not fit in
// that phase's round, the phase after: gemm_phase). A layer whose input gradient is not
// needed (bottom_grad null) takes its own update in its phase too, and leaves none. After each
// phase phase_sync (a grid barrier, or with row flags none), but after the last one only with
// last_barrier; after the first one, after_first().
template <typename AfterFirst>
__device__ void backward_stack(const Step& s, const FusedLayer* layers, int count, const FusedLayer& top,
                               const float* bottom, float* bottom_grad, TileEpilogue bottom_epilogue, int rows,
                               bool last_barrier, AfterFirst&& after_first, TileShared& sh) {
  for (int l = count; l >= 0; --l) {
    const FusedLayer& L = l < count ? layers[l] : top;
    const float* below = l ? layers[l - 1].h : bottom;
    float* grad_in = l ? layers[l - 1].dh : bottom_grad;
    if (threadIdx.x == 0) {
      int n = 0;
      if (grad_in) {  // first: the next phase waits for it, nothing waits for an update within the step
        sh.slots.ops[n++] = {dense_input_grad_gemm(L.out, L.in, L.dh, weight(s.a, L), grad_in, rows,
                                                   l ? below : nullptr, s.a.activation),
                             l ? TileEpilogue::store : bottom_epilogue};
      }
      n = add_left_updates(sh, n);
      if (grad_in) {
        sh.pending.op = weight_update(s.a, L, below, rows);
        sh.pending.op.deferred = true;
        sh.pending_count = 1;
      } else {
        sh.slots.ops[n++] = weight_update(s.a, L, below, rows);
      }
      sh.ops_count = n;
      set_phase_sync(s.a, sh);
    }
    gemm_phase(s, sh);
    if (l > 0 || last_barrier) phase_sync(s.a, sh);
    if (l == count) after_first();
  }
}

// One block: totals += (Σ_r (1/L) Σ_ℓ log p, Σ_r KL, B) in float64, a fixed order (elbo_totals'); with
// row flags once every block has counted its rows' terms in.
__device__ void block_totals(const FusedStepArgs& a, uint64_t step, TileShared& sh) {
  __shared__ double partial[2][kStepThreads];
  settle_grid_barrier(a, sh);
  if (a.row_flags) {  // every block has written its rows' log p and KL (row_terms)
    if (threadIdx.x == 0) wait_counters(a, sh, grid_counter(a, sh, 0));
    __syncthreads();
  }
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

// The workspace's sync points to zero, strided over the grid's threads: each GEMM phase's split-K
// tickets (where they lie moves with the grid: an earlier launch's partial sums may lie there) and
// with row flags the row flags and the grid counters (for a step of `rows` L·B rows; they move
// with the batch). By each launch's first step, before its first grid barrier: the workspace may
// hold anything before a launch.
__device__ void clear_sync_points(const FusedStepArgs& a, int rows) {
  const long long first = grid_thread(), stride = grid_threads();
  const int grid = static_cast<int>(gridDim.x), phases = fused_gemm_phases(a);
  for (long long i = first; i < static_cast<long long>(phases) * grid; i += stride) {
    const int region = static_cast<int>(i / grid);
    reinterpret_cast<unsigned*>(fused_region(a, region) + fused_step_partial_floats(grid))[i - region * grid] = 0;
  }
  if (!a.row_flags) return;
  unsigned* flags = fused_row_flags(a, 0);
  const long long n = static_cast<long long>(phases) * fused_row_blocks(rows) + kFusedGridCounters;
  for (long long i = first; i < n; i += stride) flags[i] = 0;
}

// The batch at `at` (its rows at.offset.. of the permutation) into x (and dynamic binarization), as
// gather_batch, strided over the grid's threads; with `clear` (a launch's first step) the sync
// points too. Out of line: inlined twice into the step it spilled registers on sm_90.
__device__ VAE_NOINLINE void gather_rows(const FusedStepArgs& a, const StepState at, float* x, bool clear) {
  const long long first = grid_thread(), stride = grid_threads();
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
  if (clear) clear_sync_points(a, a.batch * a.samples);
}

// Each row's log p (its column tiles' sums in order, a thread per row) and KL (analytic, or the
// Monte-Carlo mean over the row's samples), strided over the grid's threads. With row flags, first
// until the output layer's forward has finished every row (its row flags), and the block counts in
// at grid counter 0 after (the ELBO totals wait for every block's). Out of line: inlined into the
// step it spilled registers on sm_90.
__device__ VAE_NOINLINE void row_terms(const FusedStepArgs& a, const StepState at, TileShared& sh) {
  const long long first = grid_thread(), stride = grid_threads();
  const int rows = a.batch * a.samples, J = a.latent;
  const float* row_sums = fused_row_sums(a);
  const int tiles = fused_step_output_tiles(a.dim, a.gaussian);
  settle_grid_barrier(a, sh);
  if (a.row_flags) {
    if (threadIdx.x == 0) {
      const int output = fused_forward_phases(a.encoder_layers, a.decoder_layers) - 1;
      wait_counters(a, sh,
                    {fused_row_flags(a, output), rows, fused_row_blocks(rows),
                     (sh.launch_step + 1) * static_cast<unsigned>(tiles)});
    }
    __syncthreads();
  }
  for (long long r = first; r < rows; r += stride) {
    float sum = 0.f;
    for (int t = 0; t < tiles; ++t) sum += row_sums[t * rows + r];
    a.log_prob[r] = sum;
  }
  for (long long r = first; r < a.batch; r += stride) {
    const float* mu = a.heads.h + r * 2 * J;
    a.kl[r] = a.kl_term.estimator == KlEstimator::analytic
                  ? analytic_kl_row(mu, mu + J, J)
                  : mc_kl_row(mu, mu + J, J, static_cast<int>(at.row0 + r), a.samples, a.seed,
                              RandomStream::latent_noise, at.step);
  }
  if (a.row_flags) count_grid(a, sh, 0);
}

// One training step at `at`, step `launch_step` of its launch, by every block, on the batch in x:
// gathered first (a phase and its barrier) unless `gathered` (the step before gathered it; the
// launch's first step clears the sync points there, and the row flags' counts rise from step to
// step). With next_x, the next step's batch (at `next`) is gathered into it during this step's
// last phase, which reads x but not next_x.
__device__ void train_step(const FusedStepArgs& a, const StepState& at, int launch_step, float* x, bool gathered,
                           float* next_x, const StepState& next, TileShared& sh) {
  const long long first = grid_thread(), stride = grid_threads();
  const int B = a.batch, rows = a.batch * a.samples, J = a.latent;
  const Step s{a,       at.step,
               at.row0, optimizer_scalars(a.hyper, at.step),
               x,       kl_scale_at(1.f / static_cast<float>(B), a.kl_term, &at)};
  if (threadIdx.x == 0) {
    sh.barriers = 0;
    sh.phase = 0;
    sh.tickets = 0;
    sh.work_items = sh.work_chunks = 0;
    sh.pending_count = sh.carry_count = 0;
    sh.launch_step = static_cast<unsigned>(launch_step);
    sh.wait_ns = 0;
    sh.sync.signal.at = sh.sync.wait.at = nullptr;  // a grid barrier came before (between the steps, or the start)
  }
  record_time(a, 0);

  if (!gathered) {
    gather_rows(a, at, x, launch_step == 0);
    step_barrier(s.a, sh);
  }
  phase_end(a, FusedPhase::gather);

  // Encoder and heads, with ε and z = μ + σ ε drawn in the heads' epilogue.
  forward_stack(s, a.encoder, a.encoder_layers, a.heads, TileEpilogue::latent, true, x, B, sh);
  phase_end(a, FusedPhase::encoder);

  // Decoder and output layer, with each pixel's log p(x|z) term and its gradient in the output
  // layer's epilogue (the terms of a row summed per column tile).
  forward_stack(s, a.decoder, a.decoder_layers, a.output, TileEpilogue::reconstruction, a.gaussian, a.z, rows, sh);
  phase_end(a, FusedPhase::decoder);

  // Each row's log p and KL: after the output layer's barrier, or with row flags after the block's
  // part of the output layer's backward (then its tiles need not wait for every row).
  if (!a.row_flags) row_terms(a, at, sh);
  // The backward of the output layer and the decoder, the output layer's update beside the
  // decoder's last input gradient. With one sample a row the latent backward runs in the epilogue
  // of the GEMM that computes dL/dz.
  const bool latent_in_epilogue = a.samples == 1;
  backward_stack(
      s, a.decoder, a.decoder_layers, a.output, a.z, a.d_z,
      latent_in_epilogue ? TileEpilogue::latent_grad : TileEpilogue::store, rows, true,
      [&] {
        if (a.row_flags) row_terms(a, at, sh);
      },
      sh);
  phase_end(a, FusedPhase::decoder_backward);

  // The ELBO totals, by the last block: the next phase's work items go to the first blocks, and it has fewer
  // items than blocks at the batches where a step is short (at batch 128 on 264 blocks, 78), so the last block is
  // idle there (block 0 added the totals to a work item of its own).
  if (blockIdx.x == gridDim.x - 1) block_totals(a, at.step, sh);

  // With several samples a row, the latent backward as a phase, an element per thread; the KL's
  // gradient weighted by β at this step. Beside it the update of the decoder's first layer (else
  // in the next phase). With row flags the elements wait for every row of dL/dz (a row's samples lie
  // in different row blocks), and the heads' backward waits for every block's elements (grid
  // counter 1).
  if (!latent_in_epilogue) {
    settle_grid_barrier(s.a, sh);
    if (a.row_flags) {
      if (threadIdx.x == 0) wait_counters(a, sh, sh.sync.signal);
      __syncthreads();
    }
    for (long long i = first; i < static_cast<long long>(B) * J; i += stride) {
      latent_backward_element(a.heads.h, a.z, a.d_z, a.heads.dh, static_cast<int>(i / J), static_cast<int>(i % J), B, J,
                              a.samples, s.kl_scale, a.kl_term.estimator, a.kl_term.gradient == KlGradient::dreg);
    }
    if (a.row_flags) count_grid(a, sh, 1);
    if (threadIdx.x == 0) {
      sh.ops_count = add_left_updates(sh, 0);
      set_phase_sync(s.a, sh);
    }
    gemm_phase(s, sh);
    phase_sync(s.a, sh);
    if (a.row_flags && threadIdx.x == 0) sh.sync.signal = grid_counter(a, sh, 1);
  }
  phase_end(a, FusedPhase::latent_backward);

  // Heads and encoder backward (dL/dx is not needed), the last phase with the first layer's update
  // and the one above it. No barrier after it: the next step's starts the launch's next step.
  if (next_x) gather_rows(a, next, next_x, false);
  backward_stack(
      s, a.encoder, a.encoder_layers, a.heads, x, nullptr, TileEpilogue::store, B, false, [] {}, sh);
  settle_grid_barrier(s.a, sh);  // where the block had no work item in the last phase
  phase_end(a, FusedPhase::encoder_backward);
  if (threadIdx.x == 0) record_work(a, sh, sh.barriers);  // the last phase's
  if (a.phase_ns && threadIdx.x == 0) {
    a.phase_ns[blockIdx.x * kFusedPhaseSlots + 1 + kFusedPhases] = sh.barriers;
    a.phase_ns[blockIdx.x * kFusedPhaseSlots + 2 + kFusedPhases] = sh.tickets;
    a.phase_ns[blockIdx.x * kFusedPhaseSlots + 3 + kFusedPhases] = sh.wait_ns;
  }
}

}  // namespace

// a.steps consecutive steps (full batches of one permutation) in one launch: a grid barrier
// between them (the next gather overwrites x, the next forward reads the updated parameters). The
// arguments stay in the parameter space (__grid_constant__: the phases take references to them
// without a copy into each thread's local memory).
__global__ void __launch_bounds__(kStepThreads, 2) fused_step_kernel(__grid_constant__ const FusedStepArgs a) {
  __shared__ TileShared sh;
  __shared__ StepState base;  // every block reads it before the first barrier; block 0 moves it on last
  if (threadIdx.x == 0) {
    base = *a.at;
    sh.planned = 0;
    sh.grid_owed = 0;
  }
  __syncthreads();
  if (a.cluster > 1) VAE_CLUSTER_ARRIVE();  // as a phase the clusters split leaves it (finish_in_cluster)
  // With x_next, the batches alternate between a.x and x_next, each gathered during the step before.
  auto batch = [&](int i) { return i % 2 == 0 || !a.x_next ? a.x : a.x_next; };
  auto state = [&](int i) {
    return StepState{base.step + i, base.offset + static_cast<long long>(i) * a.batch, base.row0};
  };
  for (int i = 0; i < a.steps; ++i) {
    if (i > 0) VAE_GRID_SYNC();
    const bool ahead = a.x_next && i + 1 < a.steps;
    train_step(a, state(i), i, batch(i), a.x_next && i > 0, ahead ? batch(i + 1) : nullptr, state(i + 1), sh);
  }
  if (a.cluster > 1) VAE_CLUSTER_WAIT();  // no block leaves while a peer may read its shared memory
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    a.at->step = base.step + a.steps;
    a.at->offset = base.offset + static_cast<long long>(a.steps) * a.batch;
  }
}

// The dynamic shared memory of a launch in clusters: a tile's sums, for the cluster's peers.
constexpr size_t kFusedExchangeBytes = sizeof(float) * kTile * kTile;

int fused_step_cluster_grid(int cluster) {
  if (cluster <= 1) return fused_step_grid();
  VAE_REQUIRE(cluster <= kFusedMaxCluster, "fused_step_cluster_grid: a cluster of 1 to 8 blocks");
  auto most = [](int c) {
    const int clusters = cooperative_max_clusters(fused_step_kernel, kStepThreads, kFusedExchangeBytes, c);
    return std::min(clusters, fused_step_grid() / c) * c;
  };
#if VAE_HOST_EXEC
  return most(cluster);  // tests change the worker count
#else
  static const std::vector<int> grids = [&] {  // found once per run, as fused_step_grid
    std::vector<int> g(kFusedMaxCluster + 1, 0);
    for (int c = 2; c <= kFusedMaxCluster; ++c) g[c] = most(c);
    return g;
  }();
  return grids[cluster];
#endif
}

int fused_step_variant_grid(const FusedVariant& v) {
  const int cluster = std::max(1, v.cluster), most = fused_step_cluster_grid(cluster);
  if (!v.half_grid) return most;
  const int half = fused_step_half_grid(most) / cluster * cluster;
  return half > 0 ? half : most;
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
  VAE_REQUIRE(args.ticket_chunks >= 0, "fused_step: a negative ticket cost");
  VAE_REQUIRE(args.cluster >= 1 && args.cluster <= kFusedMaxCluster, "fused_step: a cluster of 1 to 8 blocks");
  const int most = fused_step_cluster_grid(args.cluster), grid = args.grid > 0 ? args.grid : most;
  VAE_REQUIRE(most > 0, "fused_step: clusters of that many blocks do not fit this device (sm_90 or newer)");
  VAE_REQUIRE(grid <= most, "fused_step: more blocks than can be resident at once");
  VAE_REQUIRE(grid % args.cluster == 0, "fused_step: a grid that is not whole clusters");
  VAE_REQUIRE(args.workspace && args.workspace_floats >=
                                    fused_step_workspace_floats(
                                        grid, args.batch * args.samples, args.dim, args.gaussian,
                                        fused_step_gemm_phases(args.encoder_layers, args.decoder_layers, args.samples)),
              "fused_step: the workspace is smaller than the grid, the model and the batch need");
  if (args.cluster > 1) {
    VAE_LAUNCH_COOPERATIVE_CLUSTERS(fused_step_kernel, grid, args.cluster, kStepThreads, kFusedExchangeBytes, stream,
                                    args);
  } else {
    VAE_LAUNCH_COOPERATIVE(fused_step_kernel, grid, kStepThreads, 0, stream, args);
  }
}

}  // namespace vae::VAE_NS
