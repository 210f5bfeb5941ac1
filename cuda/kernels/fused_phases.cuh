// The fused step's GEMM phases (included by fused_step.cu only): each phase's plan, made once a
// launch from fused_step.h's planners (the rows carried to the next phase, the K split in one or
// two rounds, in clusters, or of the last round), and its work items handed out over the blocks,
// each run as a tile of fused_tiles.cuh; a tile of a phase's first GEMM counting in at its row
// block's flag once done.
#pragma once

#include "kernels/fused_tiles.cuh"  // gemm_tile, idle_in_cluster, WorkItem, min_int

namespace vae::VAE_NS {

namespace {

// After it: a tile of the first GEMM, once `finished` (whole, or by the block that summed its slices), counts in at
// its row block's flag.
__device__ __forceinline__ void count_rows(TileShared& sh, int o, int tile, bool finished) {
  if (!sh.sync.signal.at || o != 0) return;
  __syncthreads();  // every thread's outputs are written (and sh.last is set)
  if (threadIdx.x == 0 && finished) count_done(sh.sync.signal.at + tile / gemm_column_tiles(sh.slots.ops[0]));
}

// The block's work item, if any, of a GEMM phase the clusters split (sh.plan.clusters of them, fused_cluster_plan):
// block r of cluster c takes slice r % slices of tile c' · per + r / slices of op o, where c' is c less the clusters
// of the ops before and per = ⌊cluster / slices⌋ tiles a cluster; the cluster's blocks meet at finish_in_cluster (or
// idle_in_cluster without an item).
// The arguments only (the step's values come from sh, shared_step): a Step by reference to this call put the caller's
// on the stack.
__device__ VAE_NOINLINE void cluster_work_item(const FusedStepArgs& a, TileShared& sh) {
  const PhaseGemm* ops = sh.slots.ops;
  const int cluster = a.cluster, rank = static_cast<int>(blockIdx.x) % cluster;
  int c = static_cast<int>(blockIdx.x) / cluster, o = 0, slices = 0, slice = 0, tile = 0;
  for (; o < sh.ops_count; ++o) {
    const int per = cluster / sh.plan.slices[o], need = (gemm_tiles(ops[o]) + per - 1) / per;
    if (c < need) {
      slices = sh.plan.slices[o];
      tile = c * per + rank / slices;
      slice = rank % slices;
      if (rank / slices >= per || tile >= gemm_tiles(ops[o])) slices = 0;
      break;
    }
    c -= need;
  }
  if (slices == 0) {
    idle_in_cluster();
    return;
  }
  const int span = sh.plan.chunks[o] * kTileK, k_begin = slice * span;
  const int k_end = min_int(k_begin + span, ops[o].op.k);
  if (threadIdx.x == 0) {
    ++sh.work_items;
    sh.work_chunks += static_cast<unsigned>((k_end - k_begin + kTileK - 1) / kTileK);
  }
  gemm_tile(a, ops[o], {tile, k_begin, k_end, slice, slices, nullptr, nullptr}, sh);
  count_rows(sh, o, tile, slice == 0);
}

// The work items of a phase in rounds (gemm_phase).
__device__ __forceinline__ void phase_rounds(const Step& s, TileShared& sh) {
  const PhaseGemm* ops = sh.slots.ops;
  const int count = sh.ops_count, items = sh.plan.items, grid = static_cast<int>(gridDim.x);
  const int* chunks = sh.plan.chunks;  // of each op's items
  // The op of item numbers first: the one of the costlier items, a split one's ticket counted (ops[0] where equal).
  // A last round's split rows (fused_remainder_split) come last: their GEMMs' items all cost the same whole.
  auto cost = [&](int o) { return chunks[o] + (sh.plan.slices[o] > 1 ? s.a.ticket_chunks : 0); };
  const int first = count > 1 && cost(1) > cost(0) ? 1 : 0;
  const TileShared::PhaseSync& sync = sh.sync;
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
      if (sl > 1) {  // tickets and partial sums for split ops only
        ticket += tl;
        offset += static_cast<long long>(sl) * ops[o].op.m * gemm_columns(ops[o].op);
      }
    }
    const int slices = sh.plan.slices[o], tl = gemm_tiles(ops[o]);
    const int slice = local / tl, tile = local % tl, per = chunks[o] * kTileK;
    const int k_begin = slice * per, k_end = k_begin + per < ops[o].op.k ? k_begin + per : ops[o].op.k;
    if (threadIdx.x == 0) {
      ++sh.work_items;
      sh.work_chunks += static_cast<unsigned>((k_end - k_begin + kTileK - 1) / kTileK);
    }
    float* region = fused_region(s.a, sync.region);
    unsigned* tickets = reinterpret_cast<unsigned*>(region + fused_step_partial_floats(grid));
    gemm_tile(s.a, ops[o], {tile, k_begin, k_end, slice, slices, region + offset, tickets + ticket + tile}, sh);
    count_rows(sh, o, tile, slices == 1 || sh.last);
  }
}

// By thread 0, before the work of GEMM phase p (its GEMMs in sh.slots.ops): its plan into sh.plan,
// kept from the launch's first step or made — the rows of its deferred update (PhaseGemm::deferred,
// not rows carried from the phase before) carried to the next GEMM phase (fused_update_rows_kept:
// where they do not fit in one round; the last phase carries none), then the K split (in clusters
// where that is cheaper than whole tiles, fused_cluster_plan, else fused_split_plan, and where the
// tiles still take rounds the last round's split, fused_remainder_split, an update's rows only) —
// and those rows moved from the update into sh.carry, or into a GEMM of the phase's own after the
// others. Out of line: inlined at the step's GEMM phases, the carry spilled registers on sm_90.
__device__ VAE_NOINLINE void plan_phase(const FusedStepArgs& a, TileShared& sh, int p) {
  PhaseGemm* ops = sh.slots.ops;
  const int grid = static_cast<int>(gridDim.x);
  int count = sh.ops_count;
  const bool kept = p < sh.planned;
  if (kept) sh.plan = sh.plans[p];
  int tiles[kMaxPhaseGemms] = {}, chunks[kMaxPhaseGemms] = {};
  auto shapes = [&] {
    for (int o = 0; o < count; ++o) {
      tiles[o] = gemm_tiles(ops[o]);
      chunks[o] = (ops[o].op.k + kTileK - 1) / kTileK;
    }
  };
  int u = 0;
  while (u < count && !(ops[u].deferred && !ops[u].carried)) ++u;
  if (!kept) {
    sh.plan.kept_rows = 0;
    if (u < count && p + 1 < fused_gemm_phases(a)) {
      shapes();
      const int row_tiles = (ops[u].op.m + kTile - 1) / kTile;
      const int rows = fused_update_rows_kept(tiles, chunks, count, u, row_tiles, grid, a.ticket_chunks);
      if (rows < row_tiles) sh.plan.kept_rows = rows * kTile;
    }
  }
  if (sh.plan.kept_rows > 0) {
    const int kept_rows = sh.plan.kept_rows;
    sh.carry.op = ops[u];
    sh.carry.op.op = ops[u].op.row_range(kept_rows, ops[u].op.m - kept_rows);
    sh.carry.op.carried = true;
    sh.carry_count = 1;
    ops[u].op = ops[u].op.row_range(0, kept_rows);
  }
  // The rows of GEMM split_op past split_kept as the phase's last GEMM (planned in its last slot).
  auto split_rows = [&] {
    PhaseGemm& g = ops[sh.plan.split_op];
    const int whole = sh.plan.split_kept;
    ops[count] = g;
    ops[count].op = g.op.row_range(whole, g.op.m - whole);
    g.op = g.op.row_range(0, whole);
    sh.ops_count = ++count;
  };
  if (kept) {
    if (sh.plan.split_kept > 0) split_rows();
    return;
  }
  shapes();
  const int cluster = a.cluster;
  sh.plan.clusters =
      cluster > 1 ? fused_cluster_plan(tiles, chunks, count, grid / cluster, cluster, sh.plan.slices) : 0;
  sh.plan.split_kept = 0;
  if (sh.plan.clusters == 0) {
    sh.plan.items = fused_split_plan(tiles, chunks, count, grid, sh.plan.slices, a.ticket_chunks);
    int columns[kMaxPhaseGemms] = {}, o = 0, slices = 1;  // an update's rows may split, where nothing is split
    bool whole = true;
    for (int g = 0; g < count; ++g) whole = whole && sh.plan.slices[g] == 1;
    for (int g = 0; g < count; ++g)
      columns[g] = whole && ops[g].epilogue == TileEpilogue::update ? gemm_column_tiles(ops[g]) : 0;
    const int rows = fused_remainder_split(tiles, chunks, columns, count, grid, a.ticket_chunks, &o, &slices);
    if (rows > 0) {
      const int split = rows * columns[o];
      sh.plan.split_op = o;
      sh.plan.split_kept = (tiles[o] / columns[o] - rows) * kTile;
      sh.plan.items += (slices - 1) * split;
      sh.plan.slices[count] = slices;
      split_rows();
      shapes();
    }
  }
  for (int o = 0; o < count; ++o) sh.plan.chunks[o] = fused_slice_chunks(chunks[o], sh.plan.slices[o]);
  if (p == sh.planned && p < kFusedMaxGemmPhases) {
    sh.plans[p] = sh.plan;
    sh.planned = p + 1;
  }
}

// The work items of the phase's independent GEMMs (sh.slots.ops, written by thread 0 before the
// call): their tiles, split in K by fused_split_plan (in one round of items over the grid, or a
// phase of one GEMM in two where that is less work a block), numbered op by op with the GEMM of
// the costliest items first, handed out over the grid's blocks in rounds, every other round in
// reverse block order (a block with a long item of the first round gets a short one of the second,
// if any). No grid barrier inside: split tiles meet at their tickets (gemm_tile). The phase's
// workspace region (sh.sync.region) holds the split ops' partial sums (fused_step_partial_floats),
// then one ticket per tile of a split op (at most the blocks: fused_split_plan). With row flags
// (sh.sync) a tile first waits until the rows it reads are final in the phase before (a weight
// update's: until that phase has finished), and a tile of the first GEMM, once finished (whole, or
// by the last of its slices), counts in at its row block's flag. Where a weight update left from
// the phase before (PhaseGemm::deferred) makes the phase take more than one round, its rows that do
// not fit in one (fused_update_rows_kept) are carried to the next GEMM phase (sh.carry: its builder
// adds them; plan_phase); where the tiles still take rounds (the last phase, which carries none),
// the rows of an update's tiles past the last whole round split in K as a GEMM of their own,
// numbered last (fused_remainder_split). With clusters (FusedStepArgs::cluster) a phase splits K
// within clusters, in one round (fused_cluster_plan, cluster_work_item), where that is cheaper
// than whole tiles; else as without clusters (a phase whose tiles fill the grid).
__device__ void gemm_phase(const Step& s, TileShared& sh) {
  if (threadIdx.x == 0) {
    plan_phase(s.a, sh, sh.phase++);
    sh.step = {s.step, s.row0, s.k, s.x, s.kl_scale};
  }
  __syncthreads();  // thread 0's descriptors, plan and step are visible
  if (sh.plan.clusters > 0) {
    cluster_work_item(s.a, sh);
  } else {
    phase_rounds(s, sh);
  }
  if (s.a.phase_ns && threadIdx.x == 0) {  // the block is done with the phase
    s.a.phase_ns[blockIdx.x * kFusedPhaseSlots + kFusedGemmSlots + min_int(sh.phase, kFusedMaxGemmPhases) - 1] =
        global_timer_ns();
  }
}

}  // namespace

}  // namespace vae::VAE_NS
