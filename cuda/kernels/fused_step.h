// The arguments of the fused step kernel (cuda/kernels/fused_step.cu).
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "kernels/types.h"  // PixelType, StepState, Activation, NonFinite, OptimizerKind, OptimizerHyper

namespace vae {

// The whole training step as one cooperative kernel (cuda/kernels/fused_step.cu): the model's
// layers, buffers and optimizer, all in device memory. Layer l's parameters are at
// params + weight (out, in) and params + bias (out); its gradients at the same offsets of grads.
constexpr int kMaxStepLayers = 4;    // hidden layers per side
constexpr int kFusedMaxCluster = 8;  // blocks a thread-block cluster (the portable most)
// How the GEMM tiles multiply: fp32 FFMA; TF32 tensor cores (--tf32); or fp32 accuracy on the
// tensor cores from three TF32 products (each operand split into a TF32 high part and the TF32
// rounding of the rest: a_hi b_hi + a_hi b_lo + a_lo b_hi, as CUTLASS's 3xTF32). The tensor-core
// kinds need sm_80 or newer (FFMA before; emulated under host execution).
enum class FusedMath : int { ffma = 0, tf32 = 1, tf32x3 = 2 };
inline const char* fused_math_name(FusedMath m) {
  return m == FusedMath::tf32 ? "tf32" : m == FusedMath::tf32x3 ? "3xtf32" : "ffma";
}
// The FusedMath of that name into *m; false (and *m as it was) for any other name.
inline bool fused_math_from_name(const char* name, FusedMath* m) {
  for (const FusedMath k : {FusedMath::ffma, FusedMath::tf32, FusedMath::tf32x3}) {
    if (std::string(name) == fused_math_name(k)) {
      *m = k;
      return true;
    }
  }
  return false;
}
struct FusedLayer {
  int in = 0, out = 0;
  long long weight = 0, bias = 0;
  float* h = nullptr;   // (rows, out): the output (post-activation)
  float* dh = nullptr;  // (rows, out): dL/d(pre-activation)
};
struct FusedStepArgs {
  // Data: (N, dim) pixels, the permutation (or null), rows at->offset .. of it; dynamic
  // binarization keyed like gather_batch's.
  const void* data = nullptr;
  PixelType type = PixelType::u8;
  const int* perm = nullptr;
  bool binarize = false;
  uint64_t seed = 0;
  StepState* at = nullptr;  // read at the start, advanced at the end
  int steps = 1;            // consecutive full batches trained in the one launch (persistent)
  int grid = 0;             // blocks of the launch, at most fused_step_grid() (0: that many)
  // Model.
  int batch = 0, dim = 0, latent = 0, samples = 1;
  KlTerm kl_term;         // the KL's estimator, and its weight β with the warm-up (at at->step) in the gradient
  bool gaussian = false;  // decoder: Gaussian (out has 2D columns) or Bernoulli
  Activation activation = Activation::relu;
  int encoder_layers = 0, decoder_layers = 0;
  // heads.h holds μ | log σ² (B, 2J), heads.dh their gradient; output.h the decoder output
  // (L·B, D or 2D), output.dh its gradient.
  FusedLayer encoder[kMaxStepLayers], heads, decoder[kMaxStepLayers], output;
  float* params = nullptr;
  float* grads = nullptr;
  float* x = nullptr;          // (B, dim)
  float* x_next = nullptr;     // (B, dim), or null: in a launch of several steps, the batches alternate between x and
                               // x_next, each gathered during the last phase of the step before (no gather phase and
                               // barrier of its own)
  float* z = nullptr;          // (L·B, J)
  float* d_z = nullptr;        // (L·B, J)
  float* kl = nullptr;         // (B)
  float* log_prob = nullptr;   // (L·B); output.h holds the decoder output, output.dh its gradient
  double* totals = nullptr;    // += (Σ recon, Σ KL, B), as elbo_totals
  NonFinite* watch = nullptr;  // the first non-finite loss term or gradient, or null
  FusedMath math = FusedMath::ffma;  // the GEMM tiles' arithmetic
  int ticket_chunks = 0;             // a split-K ticket's cost in K chunks, for fused_split_plan (FusedVariant)
  // Every GEMM phase meets the phase before at counters in the workspace instead of a grid barrier
  // (FusedVariant::row_flags): a tile of a layer's forward or input gradient starts once the phase
  // before has finished the rows it reads (their row block's counter), a weight update once that
  // phase has finished (every row block's: no phase reads the weights any more), the ELBO totals
  // once every block has summed its rows' log p and KL. A grid barrier only after a gather and
  // between the steps of a launch. The same sums in the same order: the same bits.
  bool row_flags = false;
  // Blocks in thread-block clusters of this many (FusedVariant::cluster; sm_90, or host execution):
  // a split tile's K slices lie in one cluster and meet in distributed shared memory (its partial
  // sums summed by the block of slice 0, from its peers' shared memory, after a cluster barrier),
  // not at tickets in the workspace (fused_cluster_plan; a phase it does not split is planned as
  // without clusters). 1: no clusters. The grid a multiple of it.
  int cluster = 1;             // at most kFusedMaxCluster
  float* workspace = nullptr;  // fused_step_workspace_floats(fused_step_grid(), L·B, dim, gaussian, GEMM phases):
                               // anything at first (a launch clears its tickets and flags)
  long long workspace_floats = 0;
  // The optimizer, applied to each weight and bias where its gradient is final (its state at the
  // same offsets of the flat buffer as the parameters).
  OptimizerKind optimizer = OptimizerKind::adam;
  OptimizerHyper hyper;
  float* state1 = nullptr;
  float* state2 = nullptr;
  // Phase timers: (grid, kFusedPhaseSlots) written by thread 0 of each block, or null (off: one
  // untaken branch per phase).
  unsigned long long* phase_ns = nullptr;
};

// Half of a fused step grid of `grid` blocks (one block per SM where the full grid has two): the
// variant bench_step --sweep calls "half", which the step rule may choose.
constexpr int fused_step_half_grid(int grid) { return grid / 2 > 1 ? grid / 2 : 1; }

// A variant of the fused step: what bench_step --sweep times beside the defaults, and the step rule
// (host/step_rule.h) picks per card, precision and batch. The defaults: the context's tiles (FFMA,
// or TF32 with --tf32), the whole grid, every split-K split that shortens a phase.
struct FusedVariant {
  FusedMath math = FusedMath::ffma;  // FusedStepArgs::math
  bool half_grid = false;            // on fused_step_half_grid blocks (FusedStepArgs::grid)
  int ticket_chunks = 0;             // FusedStepArgs::ticket_chunks (fused_split_plan)
  bool row_flags = false;            // FusedStepArgs::row_flags
  int cluster = 1;                   // FusedStepArgs::cluster (the grid: the most whole clusters resident at once)
};
// Its name in the step rule's words: "ffma", "3xtf32 half grid", "tf32 ticket 12 row flags cluster 4".
inline std::string fused_variant_name(const FusedVariant& v) {
  return std::string(fused_math_name(v.math)) + (v.half_grid ? " half grid" : "") +
         (v.ticket_chunks > 0 ? " ticket " + std::to_string(v.ticket_chunks) : "") + (v.row_flags ? " row flags" : "") +
         (v.cluster > 1 ? " cluster " + std::to_string(v.cluster) : "");
}

// The fused step's phases in order, for its timers (FusedStepArgs::phase_ns).
enum class FusedPhase : int {
  gather,            // the batch (and dynamic binarization), unless the step before gathered it
  encoder,           // the encoder's layers and the heads, with ε and z in the heads' epilogue
  decoder,           // the decoder's layers and the output layer, with log p(x|z)'s terms and gradient
  decoder_backward,  // log p and KL per row, the output layer's and the decoder's backward (and updates but the first)
  latent_backward,   // the ELBO totals; with L > 1 dμ, dlog σ² and the decoder's first layer's update (L = 1: in
                     // the decoder backward's last GEMM epilogue, and the update in the next phase)
  encoder_backward,  // the heads' and the encoder's backward and updates (no barrier after it)
};
constexpr int kFusedPhases = 6;
inline const char* fused_phase_name(int p) {
  static const char* const names[kFusedPhases] = {"gather",           "encoder",         "decoder",
                                                  "decoder backward", "latent backward", "encoder backward"};
  return p >= 0 && p < kFusedPhases ? names[p] : "?";
}
// The GEMM phases of one fused step: each layer's forward (the encoder's, the heads, the decoder's,
// the output layer), each backward phase from the output layer's down to the heads' and the
// encoder's (a layer's input gradient, beside the update of the layer above; the first encoder
// layer's update last), with L > 1 the latent backward's (the decoder's first layer's update).
constexpr int fused_step_gemm_phases(int encoder_layers, int decoder_layers, int samples) {
  return 2 * (encoder_layers + decoder_layers) + 4 + (samples > 1 ? 1 : 0);
}
// The forward's GEMM phases, the first of the step's (the output layer's the last of them).
constexpr int fused_forward_phases(int encoder_layers, int decoder_layers) {
  return encoder_layers + decoder_layers + 2;
}
// The grid barriers of one fused step of a model with these hidden layers and L samples, its batch
// gathered in a phase of its own: one after each GEMM phase but the last; one fewer for a step
// whose batch the step before gathered (FusedStepArgs::x_next), and one between the steps of a
// launch. With row flags the phases meet at counters: only the gather's barrier is left.
constexpr int fused_step_barriers(int encoder_layers, int decoder_layers, int samples, bool row_flags = false) {
  return row_flags ? 1 : fused_step_gemm_phases(encoder_layers, decoder_layers, samples);
}
constexpr int kFusedMaxBarriers = fused_step_barriers(kMaxStepLayers, kMaxStepLayers, 2);
constexpr int kFusedMaxGemmPhases = fused_step_gemm_phases(kMaxStepLayers, kMaxStepLayers, 2);

// Timer slots per block (of the launch's last step): [0] the start, [1 + p] the end of phase p (when the block arrives
// at the grid barrier that closes it; the last phase's when the block is done), in ns of a clock all blocks share; [1 +
// kFusedPhases] the grid barriers the block arrived at in the step; [2 + kFusedPhases] the split-K tickets it took (one
// per K slice it computed: the step's other sync points, summed over the blocks); [3 + kFusedPhases] the ns it waited
// at row flags and counters (FusedStepArgs::row_flags); then for each grid barrier i of the
// step, the time the block arrived at it ([kFusedBarrierSlots + 2i]) and the time it left ([kFusedBarrierSlots + 2i
// + 1]: once it had waited there, which it does where it next needs the other blocks' results: a work item's wait
// comes after its weights' first chunks are requested, a deferred weight update's after its K loop); then for each
// phase i between them (i = 0 before the first barrier, i = the barriers' count after the last) the GEMM work the block
// ran in it: its work items << 32 | their K chunks ([kFusedWorkSlots + i]); then for each GEMM phase p of the step
// (fused_gemm_phase_name), the time the block was done with its work items there ([kFusedGemmSlots + p]).
constexpr int kFusedBarrierSlots = kFusedPhases + 4;
constexpr int kFusedWorkSlots = kFusedBarrierSlots + 2 * kFusedMaxBarriers;
constexpr int kFusedGemmSlots = kFusedWorkSlots + kFusedMaxBarriers + 1;
constexpr int kFusedPhaseSlots = kFusedGemmSlots + kFusedMaxGemmPhases;

// What the step has computed when it reaches grid barrier i (fused_step_barriers of them), in
// order: the gather (where the step gathers its batch), each GEMM phase but the last
// (fused_step_gemm_phases: each layer's forward, "encoder 1" .. "output", then "output backward",
// the decoder's layers' backward, with L > 1 "latent backward", "heads backward", the encoder's
// layers' backward but the first's); the last phase (the first encoder layer's update, or without
// encoder layers the heads') ends the step without a barrier. With row flags only the gather.
// Empty past the last.
inline std::string fused_barrier_name(int i, int encoder_layers, int decoder_layers, int samples, bool gathers,
                                      bool row_flags = false) {
  std::vector<std::string> names;
  if (gathers) names.push_back("gather");
  if (!row_flags) {
    for (int l = 1; l <= encoder_layers; ++l) names.push_back("encoder " + std::to_string(l));
    names.push_back("heads");
    for (int l = 1; l <= decoder_layers; ++l) names.push_back("decoder " + std::to_string(l));
    names.push_back("output");
    names.push_back("output backward");
    for (int l = decoder_layers; l >= 1; --l) names.push_back("decoder " + std::to_string(l) + " backward");
    if (samples > 1) names.push_back("latent backward");
    if (encoder_layers > 0) names.push_back("heads backward");  // without, the heads' backward is the last phase
    for (int l = encoder_layers; l >= 2; --l) names.push_back("encoder " + std::to_string(l) + " backward");
  }
  return i >= 0 && i < static_cast<int>(names.size()) ? names[i] : std::string();
}
// GEMM phase p of the step (fused_step_gemm_phases of them): as the grid barrier after it, and the
// last "encoder 1 backward" ("heads backward" without encoder layers). Empty past the last.
inline std::string fused_gemm_phase_name(int p, int encoder_layers, int decoder_layers, int samples) {
  const int last = fused_step_gemm_phases(encoder_layers, decoder_layers, samples) - 1;
  if (p == last) return encoder_layers > 0 ? "encoder 1 backward" : "heads backward";
  return p >= 0 && p < last ? fused_barrier_name(p, encoder_layers, decoder_layers, samples, false) : std::string();
}

// The fused step's GEMM tiles (kFusedTile × kFusedTile outputs) and its workspace for a grid of
// `grid` blocks (see gemm_phase and store_tile_outputs in fused_step.cu): the split-K partial sums,
// one ticket per tile of a phase (zero between uses), and the reconstruction's row sums per column
// tile of the output layer (its tiles hold kFusedTile columns, or the Gaussian's kFusedTile / 2
// pairs of mean and log variance) for `rows` (L·B) rows.
constexpr int kFusedTile = 32;
constexpr int kFusedTileK = 32;  // the K chunk a tile stages in shared memory at a time

// How a GEMM phase of `count` independent ops (op o: tiles[o] output tiles, each over chunks[o] K
// chunks) splits K: slices[o] K slices of ⌈chunks[o] / slices[o]⌉ chunks each, a work item per
// slice of a tile. A split tile's slices meet at a ticket (partial sums out, a fence, an atomic,
// the partials back in), which costs the slice that finishes the tile about `ticket_chunks` chunks'
// time (FusedVariant::ticket_chunks ≥ 0; 0: free). An item's cost is its chunks, plus that if its
// tile is split. Where the phase has fewer tiles than the grid has blocks, its most costly item is
// made as cheap as a split can make it while every item keeps a block of its own (each block runs
// one item), a tile has at most kFusedMaxSplit slices and a slice at least kFusedMinSliceChunks
// chunks, with the fewest items at that cost: an op whose tiles cost no more whole stays whole, the
// others take the fewest slices that reach it (none empty). Where the tiles fill the grid and the
// phase has two GEMMs (a layer's input gradient beside the update of the layer above: the backward
// at small batches, 4 tiles of 13 chunks beside 325 of 4 at batch 128), the one of the costlier
// tiles alone may split (fused_split_longer): into the fewest slices that make its items as cheap
// as a split can, down to the other's chunks, as long as its items stay within the grid and the
// rounds of items over the grid do not grow. Otherwise, or where no split is cheaper than none,
// nothing is split: the blocks take the tiles whole, round after round. A phase of one GEMM (a
// layer's forward or input gradient alone) may instead take two rounds of items where a block's
// work is less so (fused_split_rounds). The same on every block (shapes, grid and ticket only): a
// binary search over the cost, a few divisions. Returns the work items (at most kFusedSplitRounds
// times the blocks where split).
constexpr int kFusedMaxSplit = 16;
constexpr int kFusedMinSliceChunks = 2;
constexpr int fused_slice_chunks(int chunks, int slices) { return (chunks + slices - 1) / slices; }
// The least cost in [lo, hi] at which fits(cost) holds, fits holding from some cost on: hi where no
// lower cost fits (hi itself not tried). A binary search, a few divisions on one thread.
template <typename Fits>
constexpr int fused_least_cost(int lo, int hi, Fits&& fits) {
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (fits(mid)) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  return hi;
}
// The items of a split whose items cost at most `cost`, or 0 where the bounds forbid it.
constexpr int fused_split_items(const int* tiles, const int* chunks, int count, int cost, int ticket_chunks,
                                int* slices) {
  const int per = cost - ticket_chunks;  // a split item's chunks
  int items = 0;
  for (int o = 0; o < count; ++o) {
    slices[o] = chunks[o] <= cost            ? 1
                : per < kFusedMinSliceChunks ? kFusedMaxSplit + 1
                                             : fused_slice_chunks(chunks[o], per);
    if (slices[o] > kFusedMaxSplit) return 0;
    items += slices[o] * tiles[o];
  }
  return items;
}
// Tiles that fill the grid, two GEMMs (`items` of them, whole): the split of the costlier one that
// fused_split_plan describes, or none (its items and slices as they are).
constexpr int fused_split_longer(const int* tiles, const int* chunks, int grid, int ticket_chunks, int* slices,
                                 int items) {
  const int l = chunks[1] > chunks[0] ? 1 : 0, other = 1 - l, rounds = (items + grid - 1) / grid;
  int best = chunks[l], best_slices = 1;
  for (int s = 2; s <= kFusedMaxSplit; ++s) {
    const int per = fused_slice_chunks(chunks[l], s), split_items = s * tiles[l] + tiles[other];
    if (per < kFusedMinSliceChunks || s * tiles[l] > grid || (split_items + grid - 1) / grid > rounds) break;
    const int cost = per + ticket_chunks > chunks[other] ? per + ticket_chunks : chunks[other];
    if (cost < best) best = cost, best_slices = s;
  }
  slices[l] = best_slices;
  return items + (best_slices - 1) * tiles[l];
}
// Where a phase is one GEMM, a split into more items than blocks: a block's work is then its rounds
// of items over the grid times an item's cost (the items are alike, handed out in rounds). The
// fewest slices (each at least kFusedMinSliceChunks chunks, at most kFusedMaxSplit) whose items
// take at most kFusedSplitRounds rounds and make a block's work less than the one-round plan's
// (slices[0], `items` of them) — at batch 256 the first encoder layer's forward, 104 tiles of 25
// chunks on 264 blocks: 5 slices of 5 chunks in two rounds (10) instead of 2 of 13 in one (13) —
// or that plan. Returns the items.
constexpr int kFusedSplitRounds = 2;
constexpr int fused_split_rounds(int tiles, int chunks, int grid, int ticket_chunks, int* slices, int items) {
  auto work = [&](int s, int n) {
    return (n + grid - 1) / grid * (fused_slice_chunks(chunks, s) + (s > 1 ? ticket_chunks : 0));
  };
  int best = work(slices[0], items), best_slices = slices[0], best_items = items;
  for (int s = 2; s <= kFusedMaxSplit; ++s) {
    const int n = s * tiles;
    if (fused_slice_chunks(chunks, s) < kFusedMinSliceChunks || n > kFusedSplitRounds * grid) break;
    if (work(s, n) < best) best = work(s, n), best_slices = s, best_items = n;  // the fewest slices for its chunks
  }
  slices[0] = best_slices;
  return best_items;
}
// fused_split_plan with every split's items within the blocks (one round of them).
constexpr int fused_split_one_round(const int* tiles, const int* chunks, int count, int grid, int* slices,
                                    int ticket_chunks = 0) {
  int longest = 1, total = 0;
  for (int o = 0; o < count; ++o) {
    longest = chunks[o] > longest ? chunks[o] : longest;
    total += tiles[o];
  }
  // No split where the tiles fill the grid: the least cost lies in [lo, longest] (longest: no split).
  const int lo = total >= grid ? longest : kFusedMinSliceChunks + ticket_chunks;
  const int cost = fused_least_cost(lo, longest, [&](int c) {
    const int items = fused_split_items(tiles, chunks, count, c, ticket_chunks, slices);
    return items > 0 && items <= grid;
  });
  const int items = fused_split_items(tiles, chunks, count, cost, ticket_chunks, slices);
  return total >= grid && count == 2 ? fused_split_longer(tiles, chunks, grid, ticket_chunks, slices, items) : items;
}
constexpr int fused_split_plan(const int* tiles, const int* chunks, int count, int grid, int* slices,
                               int ticket_chunks = 0) {
  const int items = fused_split_one_round(tiles, chunks, count, grid, slices, ticket_chunks);
  return count == 1 ? fused_split_rounds(tiles[0], chunks[0], grid, ticket_chunks, slices, items) : items;
}

// The GEMMs of a fused step's phase: a layer's input gradient, the update left from the phase
// before, and rows of one carried from the phase before that (fused_update_rows_kept).
constexpr int kFusedMaxPhaseGemms = 3;
// The costliest item of a phase split so (fused_split_plan's slices): its chunks, and the ticket where it is split.
constexpr int fused_plan_cost(const int* chunks, const int* slices, int count, int ticket_chunks) {
  int cost = 0;
  for (int o = 0; o < count; ++o) {
    const int c = fused_slice_chunks(chunks[o], slices[o]) + (slices[o] > 1 ? ticket_chunks : 0);
    cost = c > cost ? c : cost;
  }
  return cost;
}
// A weight update left for the phase after the one that read its weights last (the output layer's
// beside dL/dz, 325 tiles of 4 K chunks at batch 128) may make that phase take two rounds of work
// items over the grid where the next phase takes a fraction of one. Its rows are independent and
// its operands stay final: those that do not fit in one round are carried to the next GEMM phase
// of the step (gemm_phase). Of op u (tiles[u]: row_tiles rows of tiles) of the phase's `count` (as
// fused_split_plan's), the rows of tiles kept: the most with which the phase fits in one round
// (fused_split_one_round) with no item costlier than the update's whole tiles or the other GEMMs'
// costliest item split on their own so (so the others still split: dz's 13 chunks into 4 slices
// beside 19 rows of the update at batch 128, not whole beside 20) — all of them where the whole
// phase fits so, or not even one row does (then nothing is carried). A binary search.
constexpr int fused_update_rows_kept(const int* tiles, const int* chunks, int count, int u, int row_tiles, int grid,
                                     int ticket_chunks) {
  int t[kFusedMaxPhaseGemms] = {}, c[kFusedMaxPhaseGemms] = {}, slices[kFusedMaxPhaseGemms] = {};
  int others = 0;  // the other GEMMs, in t and c
  for (int o = 0; o < count; ++o) {
    if (o == u) continue;
    t[others] = tiles[o];
    c[others++] = chunks[o];
  }
  int bound = chunks[u];
  if (others > 0) {
    fused_split_one_round(t, c, others, grid, slices, ticket_chunks);
    const int alone = fused_plan_cost(c, slices, others, ticket_chunks);
    bound = alone > bound ? alone : bound;
  }
  for (int o = 0; o < count; ++o) t[o] = tiles[o];  // the phase, in its order
  const int columns = tiles[u] / row_tiles;
  auto fits = [&](int rows) {
    t[u] = rows * columns;
    const int items = fused_split_one_round(t, chunks, count, grid, slices, ticket_chunks);
    return items > 0 && items <= grid && fused_plan_cost(chunks, slices, count, ticket_chunks) <= bound;
  };
  if (row_tiles <= 1 || fits(row_tiles) || !fits(1)) return row_tiles;
  int lo = 1, hi = row_tiles - 1;  // fits(lo); the answer in [lo, hi]
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (fits(mid)) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

// Where a phase's whole tiles take more than one round over the grid and the last round is partly
// empty (the step's last phase at batch 128: the first encoder layer's update and the heads', 351
// tiles of 4 K chunks on 264 blocks, 87 of them in a second round: 8 chunk-times), and nothing
// later in the step can take its rows (the last phase carries none), the last round's tiles are
// split in K instead: the last rows of tiles of one of its GEMMs (rows of an update are
// independent, GemmOp::row_range) become a GEMM of their own, split into the fewest slices that
// make their items as cheap as slices can while the split items stay within the blocks (each at
// least kFusedMinSliceChunks chunks, at most kFusedMaxSplit slices). Numbered after the whole
// tiles (phase_rounds), the split items go to the blocks the whole tiles leave idle in their last
// round and then, in reverse order, to those with the fewest whole tiles: no block takes more than
// ⌊N / grid⌋ whole tiles and one split item, or one whole tile fewer and two — the phase costs
// ⌊N / grid⌋·c + ⌈c / slices⌉ + ticket instead of (⌊N / grid⌋ + 1)·c (N tiles of c chunks; 6 instead
// of 8 at batch 128: 4 rows of the first layer's update, 100 tiles, in 2 slices). Only where every
// GEMM of the phase has the same chunks (then fused_split_plan splits none of tiles that fill the
// grid), one more GEMM fits the phase (kFusedMaxPhaseGemms), and a split item is cheaper than a
// whole tile. Of the GEMMs whose rows may split (row_columns[o]: its tiles a row; 0: its rows may
// not), the one whose fewest rows that cover the last round's tiles give the cheapest items, then
// the fewest of them (the lowest index where equal); the GEMM keeps a row at least. Returns the
// rows of tiles split, 0 for none; their GEMM into *op and their slices into *slices.
constexpr int fused_remainder_split(const int* tiles, const int* chunks, const int* row_columns, int count, int grid,
                                    int ticket_chunks, int* op, int* slices) {
  if (count >= kFusedMaxPhaseGemms) return 0;
  int total = 0;
  for (int o = 0; o < count; ++o) {
    if (chunks[o] != chunks[0]) return 0;
    total += tiles[o];
  }
  const int c = chunks[0], rounds = total / grid, left = total - rounds * grid;
  if (rounds < 1 || left == 0) return 0;
  int best_rows = 0, best_cost = c, best_items = 0;  // a split item must cost less than a whole tile
  for (int o = 0; o < count; ++o) {
    if (row_columns[o] <= 0) continue;
    const int rows = (left + row_columns[o] - 1) / row_columns[o], split = rows * row_columns[o];
    if (rows >= tiles[o] / row_columns[o]) continue;  // the GEMM keeps a row
    const int most = grid / split < kFusedMaxSplit ? grid / split : kFusedMaxSplit;
    if (most < 2) continue;
    // The cheapest slice most slices allow, no thinner than kFusedMinSliceChunks; the fewest slices that reach it.
    const int least = fused_slice_chunks(c, most);
    const int per = least > kFusedMinSliceChunks ? least : kFusedMinSliceChunks, s = fused_slice_chunks(c, per);
    if (s < 2) continue;
    const int cost = fused_slice_chunks(c, s) + ticket_chunks;
    if (cost < best_cost || (best_rows > 0 && cost == best_cost && s * split < best_items)) {
      best_rows = rows, best_cost = cost, best_items = s * split;
      *op = o;
      *slices = s;
    }
  }
  return best_rows;
}

// With thread-block clusters of `cluster` blocks (FusedStepArgs::cluster), `clusters` of them: a
// phase splits K only within clusters, in one round. Op o's tiles take slices[o] ≤ cluster slices
// each, ⌊cluster / slices[o]⌋ tiles a cluster (a tile's slices on consecutive blocks of one
// cluster), the ops' clusters one after the other. The least cost (an item's chunks) for which the
// ops' clusters fit, with a slice at least kFusedMinSliceChunks chunks, an op whose tiles cost no
// more whole staying whole, the others taking the fewest slices that reach it. Returns the clusters
// the split takes, or 0 where nothing is split (the tiles fill more than one round, or no split is
// cheaper): then the phase is planned as without clusters (fused_split_plan: whole tiles in rounds,
// or where the tiles fill the grid its costlier GEMM split at tickets).
constexpr int fused_cluster_items(const int* tiles, const int* chunks, int count, int cluster, int cost, int* slices) {
  int used = 0;
  for (int o = 0; o < count; ++o) {
    slices[o] = chunks[o] <= cost ? 1 : fused_slice_chunks(chunks[o], cost);
    if (slices[o] > cluster) return 0;
    const int per = cluster / slices[o];
    used += (tiles[o] + per - 1) / per;
  }
  return used;
}
constexpr int fused_cluster_plan(const int* tiles, const int* chunks, int count, int clusters, int cluster,
                                 int* slices) {
  int longest = 1;
  for (int o = 0; o < count; ++o) longest = chunks[o] > longest ? chunks[o] : longest;
  // Where the tiles take more than one round even whole, the least cost is longest (no split).
  const int whole = fused_cluster_items(tiles, chunks, count, cluster, longest, slices);
  const int lo = whole == 0 || whole > clusters ? longest : kFusedMinSliceChunks;
  const int cost = fused_least_cost(lo, longest, [&](int c) {
    const int used = fused_cluster_items(tiles, chunks, count, cluster, c, slices);
    return used > 0 && used <= clusters;
  });
  const int used = fused_cluster_items(tiles, chunks, count, cluster, cost, slices);
  bool split = false;
  for (int o = 0; o < count; ++o) split = split || slices[o] > 1;
  if (split && used > 0 && used <= clusters) return used;
  for (int o = 0; o < count; ++o) slices[o] = 1;
  return 0;
}

// The split-K partial sums of a phase: Σ slices · m · columns ≤ Σ slices · tiles · kFusedTile² over
// the split GEMMs, at most kFusedSplitRounds · grid · kFusedTile² (the split items take at most that
// many rounds over the grid: fused_split_plan, fused_remainder_split), and a ticket per tile of a
// split GEMM (at most the blocks: a split tile has two slices at least). A region
// holds them and the phase's tickets; each GEMM phase of the step has one of its own (with row
// flags several run at once).
constexpr long long fused_step_partial_floats(int grid) {
  return 1ll * kFusedSplitRounds * grid * kFusedTile * kFusedTile;
}
constexpr long long fused_step_region_floats(int grid) { return fused_step_partial_floats(grid) + grid; }
constexpr int fused_step_output_tiles(int dim, bool gaussian) {
  return gaussian ? (dim + kFusedTile / 2 - 1) / (kFusedTile / 2) : (dim + kFusedTile - 1) / kFusedTile;
}
// The row blocks of `rows` rows: each GEMM phase's row flags, a counter per block of kFusedTile rows.
constexpr int fused_row_blocks(int rows) { return (rows + kFusedTile - 1) / kFusedTile; }
// With row flags, counters every block counts in at once a step: its rows' log p and KL summed (the
// ELBO totals wait for them), with L > 1 its part of the latent backward (the heads' backward waits).
constexpr int kFusedGridCounters = 2;
// The GEMM phases' regions and row flags, the grid counters, and the reconstruction's row sums for
// L·B rows.
inline long long fused_step_workspace_floats(int grid, int rows, int dim, bool gaussian, int gemm_phases) {
  return gemm_phases * (fused_step_region_floats(grid) + fused_row_blocks(rows)) + kFusedGridCounters +
         static_cast<long long>(fused_step_output_tiles(dim, gaussian)) * rows;
}

}  // namespace vae
