// The fused step's GEMM phases (included by fused_step.cu only): its 32 × 32 output tiles, their
// K chunks staged through shared memory with loads in flight, FFMA or tensor-core (TF32, 3xTF32)
// products, split-K slices that meet at per-tile tickets; each tile finished by its epilogue
// (fused_epilogues.cuh).
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
