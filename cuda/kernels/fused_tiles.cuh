// The fused step's GEMM tiles (included by fused_phases.cuh only): a work item's 32 × 32 output
// tile, its K chunks staged through shared memory with loads in flight, FFMA or tensor-core (TF32,
// 3xTF32) products, split-K slices that meet at per-tile tickets or in a thread-block cluster, the
// waits before a tile reads what other blocks wrote; each tile finished by its epilogue
// (fused_epilogues.cuh). How a phase's tiles are planned and handed out: fused_phases.cuh.
#pragma once

#include <cstdint>
#include <type_traits>

#include "kernels/fused_epilogues.cuh"  // Step, PhaseGemm, TileShared, the tiles' columns and epilogues
#include "kernels/ticket.cuh"
#include "runtime/async_copy.cuh"
#include "runtime/cluster.cuh"

namespace vae::VAE_NS {

namespace {

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
// (eight threads a 128-byte line). stage_a and stage_b: one operand's part.
__device__ __forceinline__ void stage_a(const PhaseGemm& g, int i0, int k0, int k_end, int stage, TileShared& sh) {
  const GemmOp& op = g.op;
  const int line = static_cast<int>(threadIdx.x) / 8, seg = 4 * (static_cast<int>(threadIdx.x) % 8);
  if (a_k_fast(op)) {  // line: row i0 + line; seg: K steps
    const int i = i0 + line, p = k0 + seg, count = i < op.m ? min_int(k_end - p, 4) : 0;
    stage_four(&sh.a[stage][line][seg], count > 0 ? op.a + static_cast<long long>(i) * op.lda + p : op.a, count);
  } else {  // line: K step k0 + line; seg: rows
    const int p = k0 + line, i = i0 + seg, count = p < k_end ? min_int(op.m - i, 4) : 0;
    stage_four(&sh.a[stage][line][seg], count > 0 ? op.a + static_cast<long long>(p) * op.lda + i : op.a, count);
  }
}
__device__ __forceinline__ void stage_b(const PhaseGemm& g, int jt, int k0, int k_end, int stage, TileShared& sh) {
  const GemmOp& op = g.op;
  const int line = static_cast<int>(threadIdx.x) / 8, seg = 4 * (static_cast<int>(threadIdx.x) % 8);
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
// `slices`; a split tile's partial sums (slices, m, columns) and its ticket, or with clusters
// (FusedStepArgs::cluster, a phase the clusters split) neither: its slices meet in the cluster.
struct WorkItem {
  int tile, k_begin, k_end, slice, slices;
  float* partials;
  unsigned* ticket;
};

// The K loop of a work item: its chunks through a ring of kStages stages, the chunks of the next
// kStages − 1 steps requested before the wait for the current one (a short work item has all its
// loads in flight at once), then body(stage) on each chunk once every thread's copies have landed.
// Where B's first chunks are in flight already (b_staged: gemm_tile requested them before its wait
// for A), its prologue requests A's.
template <typename Body>
__device__ __forceinline__ void k_loop(const PhaseGemm& g, int i0, int jt, int k_begin, int k_end, bool b_staged,
                                       TileShared& sh, Body&& body) {
  const int chunks = (k_end - k_begin + kTileK - 1) / kTileK;
  for (int c = 0; c < kStages - 1; ++c) {
    if (c < chunks) {
      stage_a(g, i0, k_begin + c * kTileK, k_end, c, sh);
      if (!b_staged) stage_b(g, jt, k_begin + c * kTileK, k_end, c, sh);
    }
    async_commit();  // B's chunks requested before: in the first group
  }
  for (int c = 0; c < chunks; ++c) {
    const int ahead = c + kStages - 1;  // into the stage chunk c − 1 left (every thread is past it)
    if (ahead < chunks) {
      stage_a(g, i0, k_begin + ahead * kTileK, k_end, ahead % kStages, sh);
      stage_b(g, jt, k_begin + ahead * kTileK, k_end, ahead % kStages, sh);
    }
    async_commit();
    async_wait<kStages - 1>();  // chunk c's group has landed
    __syncthreads();
    body(c % kStages);
    __syncthreads();
  }
}

// The cluster's part of a GEMM phase the clusters split (fused_cluster_plan), by every block of the
// grid (one work item or none: `slices` 0), the halves of two cluster barriers: (wait: every reader
// of the last such phase is done) each slice's sums into the block's exchange buffer (the dynamic
// shared memory), (arrive, wait: every block's are there) the block of a split tile's slice 0 sums
// the slices in slice order from its peers' buffers, as the tickets' last block does from the
// workspace (the same bits for the same slices), (arrive: the readers are done) and runs the
// epilogue; a whole tile's block runs it on its own sums. The kernel arrives once before its
// first step and waits once after its last (no block leaves while a peer may read its buffer).
__device__ __forceinline__ void finish_in_cluster(const Step& s, const PhaseGemm& g, int i0, int jt, int ty, int tx,
                                                  const float (&acc)[2][2], const TileInputs& in, int slice, int slices,
                                                  TileShared& sh) {
  VAE_DYNAMIC_SHARED(float, exchange);  // kTile × kTile sums
  VAE_CLUSTER_WAIT();
  if (slices > 1) {
    for (int u = 0; u < 2; ++u)
      for (int w = 0; w < 2; ++w) exchange[(ty + 16 * u) * kTile + tx + 16 * w] = acc[u][w];
    if (threadIdx.x == 0) ++sh.tickets;
  }
  VAE_CLUSTER_ARRIVE();
  VAE_CLUSTER_WAIT();
  float out[2][2];
  for (int u = 0; u < 2; ++u)
    for (int w = 0; w < 2; ++w) out[u][w] = slices == 1 ? acc[u][w] : 0.f;
  if (slices > 1 && slice == 0) {
    const unsigned first = blockIdx.x % static_cast<unsigned>(s.a.cluster);  // slice 0's block: this one
    for (int sl = 0; sl < slices; ++sl) {
      const float* peer = cluster_peer(exchange, first + static_cast<unsigned>(sl));
      for (int u = 0; u < 2; ++u)
        for (int w = 0; w < 2; ++w) out[u][w] += peer[(ty + 16 * u) * kTile + tx + 16 * w];
    }
  }
  VAE_CLUSTER_ARRIVE();  // done reading: the epilogue after it
  if (slices == 1 || slice == 0) store_tile_outputs(s, g, i0, jt, ty, tx, out, in, sh);
}
// A block without a work item in such a phase: the same barriers.
__device__ VAE_NOINLINE void idle_in_cluster() {
  VAE_CLUSTER_WAIT();
  VAE_CLUSTER_ARRIVE();
  VAE_CLUSTER_WAIT();
  VAE_CLUSTER_ARRIVE();
}

// By thread 0: waits until counter `only` of c (or, with only < 0, every one of them) has reached its count; with
// timers on, adds the time it waited to sh.wait_ns. What the counted blocks wrote is then visible to the block's
// threads after a __syncthreads.
__device__ void wait_counters(const FusedStepArgs& a, TileShared& sh, const TileShared::Counters& c, int only = -1) {
  const unsigned long long start = a.phase_ns ? global_timer_ns() : 0;
  for (int r = only < 0 ? 0 : only; r < (only < 0 ? c.blocks : only + 1); ++r) wait_reached(c.at + r, c.count);
  __threadfence();  // once, after the last
  if (a.phase_ns) sh.wait_ns += global_timer_ns() - start;
}

// By every thread: where the block arrived at a grid barrier (step_barrier in fused_step.cu) and has
// not waited there yet, it waits now (before it reads what other blocks wrote before the barrier,
// or arrives at the next); with timers on, its departure recorded.
__device__ __forceinline__ void settle_grid_barrier(const FusedStepArgs& a, TileShared& sh) {
  if (!sh.grid_owed) return;  // the same for every thread: thread 0 wrote it before a __syncthreads
  __syncthreads();            // every thread has read it
  if (threadIdx.x == 0) sh.grid_owed = 0;
  VAE_GRID_WAIT(sh.grid_token);
  if (a.phase_ns && threadIdx.x == 0) a.phase_ns[blockIdx.x * kFusedPhaseSlots + sh.grid_slot + 1] = global_timer_ns();
}

// Before a work item of GEMM g of the phase on tile `tile` reads A: the grid barrier before, or
// with row flags (sh.sync) a tile of the rows the phase before counts at waits for them, any other
// for all.
__device__ __forceinline__ void wait_for_inputs(const FusedStepArgs& a, TileShared& sh, const PhaseGemm& g, int tile) {
  settle_grid_barrier(a, sh);
  const TileShared::PhaseSync& sync = sh.sync;
  if (!sync.wait.at) return;
  const bool rows = g.epilogue != TileEpilogue::update && g.op.m == sync.wait.rows;
  if (threadIdx.x == 0) wait_counters(a, sh, sync.wait, rows ? tile / gemm_column_tiles(g) : -1);
  __syncthreads();
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
// grid barrier); in a phase the clusters split (an item without a ticket), finish_in_cluster
// instead. Out of line: inlined into the step it spilled registers on sm_90 under the
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
  const bool a_k = a_k_fast(op), b_k = b_k_fast(op);  // the stages' layouts (stage_a, stage_b)
  // Where B is final before the wait for what A reads (the grid barrier before, or with row flags
  // the rows), its first chunks are requested before it: in flight during it. So are a layer's
  // weights (a forward's or an input gradient's B: no block writes them before every reader of them
  // is done), and with grid barriers a weight update's input (written in the forward). A deferred
  // update's operands (PhaseGemm::deferred) are final before the phase before: its K loop runs
  // before the wait (with row flags after one at the phase before that's counters), which only its
  // epilogue needs (it changes weights the phase before read).
  const bool b_staged = g.epilogue != TileEpilogue::update || !a.row_flags;
  if (b_staged) {
    for (int c = 0; c < kStages - 1 && k_begin + c * kTileK < k_end; ++c) {
      stage_b(g, jt, k_begin + c * kTileK, k_end, c, sh);
    }
  }
  const bool wait_late = g.deferred;
  if (!wait_late) {
    wait_for_inputs(a, sh, g, tile);
  } else if (sh.sync.before.at) {
    if (threadIdx.x == 0) wait_counters(a, sh, sh.sync.before);
    __syncthreads();
  }
  // The epilogue's inputs asked for in L1 now, so that a whole-K item's loads of them after its K
  // loop hit there (a split item loads them before its ticket). Nothing writes them in this phase
  // but this item's epilogue, and no fence comes before it (a deferred update's: its weights and
  // their optimizer state, last written in the step before).
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
      k_loop(g, i0, jt, k_begin, k_end, b_staged, sh,
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
    k_loop(g, i0, jt, k_begin, k_end, b_staged, sh, [&](int st) {
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
  if (wait_late) wait_for_inputs(a, sh, g, tile);
  const Step s = shared_step(a, sh);
  TileInputs in;  // requested now: a split tile's arrive while its ticket is taken
  load_tile_inputs(s, g, i0, jt, ty, tx, in);
  if (!item.ticket) {
    finish_in_cluster(s, g, i0, jt, ty, tx, acc, in, slice, slices, sh);
    return;
  }
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
  if (!sh.last) return;  // uniform over the block: the other slices' sums are visible (arrives_last)
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

}  // namespace

}  // namespace vae::VAE_NS
