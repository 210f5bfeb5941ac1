// The fused step's work plan, phase by phase, without running it: the GEMMs of each phase as the
// kernel builds them for the benchmark's model (one hidden layer a side, L = 1, Bernoulli), planned
// by the kernel's own planners (cuda/kernels/fused_step.h: the carried rows, the K split, the last
// round's split), their work items handed out over the blocks as phase_rounds does (rounds, every
// other one in reverse block order). Per phase: the items, the most K chunks one block runs (the
// column bench_step --phases measures beside each phase's time), and that block's cost with a
// ticket per split item; per batch their sum, the step's chunk-times. What a chunk and a ticket
// cost is for a GPU to say; this says how evenly the plan spreads the work. The phases' GEMMs and
// the hand-out are written here again (the planners are the kernel's own): the test
// Bench.FusedPlanIsWhatTheKernelRuns holds them to what the kernel's timers count on 7 CPU blocks.
//
//   fused_plan [--grid 264] [--ticket 0] [--batches 32,64,128,256,512,1024] [--dim 784] [--hidden 400]
//              [--latent 20] [--verbose]
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/fused_step.h"

namespace {

using namespace vae;

struct Gemm {
  int m, n, k;
  bool bias;      // a weight update: a bias-gradient column, and an update's epilogue (its rows may split)
  bool pairs;     // the heads' forward: μ and log σ² paired in a tile
  bool deferred;  // left from the phase before (its rows may be carried to the next phase)
  bool carried;   // rows carried from the phase before
};
int column_tiles(const Gemm& g) {
  return g.pairs ? (g.n / 2 + kFusedTile / 2 - 1) / (kFusedTile / 2) : (g.n + g.bias + kFusedTile - 1) / kFusedTile;
}
int row_tiles(const Gemm& g) { return (g.m + kFusedTile - 1) / kFusedTile; }
int tiles(const Gemm& g) { return row_tiles(g) * column_tiles(g); }
int chunks(const Gemm& g) { return (g.k + kFusedTileK - 1) / kFusedTileK; }

struct PhaseOutcome {
  int items = 0, chunks = 0, cost = 0;  // over the blocks; the most chunks a block runs; the most it costs
  std::string gemms;                    // each GEMM as tiles × chunks / slices
};

// One GEMM phase as plan_phase plans it (the carry into *carry, unless the phase is the last) and
// phase_rounds hands it out.
PhaseOutcome plan(std::vector<Gemm> ops, bool last, int grid, int ticket, Gemm* carry) {
  int count = static_cast<int>(ops.size());
  int t[kFusedMaxPhaseGemms] = {}, c[kFusedMaxPhaseGemms] = {}, slices[kFusedMaxPhaseGemms] = {};
  auto shapes = [&] {
    for (int o = 0; o < count; ++o) t[o] = tiles(ops[o]), c[o] = chunks(ops[o]);
  };
  shapes();
  int u = 0;
  while (u < count && !(ops[u].deferred && !ops[u].carried)) ++u;
  if (u < count && !last) {
    const int rows = fused_update_rows_kept(t, c, count, u, row_tiles(ops[u]), grid, ticket);
    if (rows < row_tiles(ops[u])) {
      *carry = ops[u];
      carry->m = ops[u].m - rows * kFusedTile;
      carry->carried = true;
      ops[u].m = rows * kFusedTile;
    }
  }
  shapes();
  int items = fused_split_plan(t, c, count, grid, slices, ticket);
  bool whole = true;
  for (int o = 0; o < count; ++o) whole = whole && slices[o] == 1;
  int columns[kFusedMaxPhaseGemms] = {}, op = 0, split = 1;
  for (int o = 0; o < count; ++o) columns[o] = whole && ops[o].bias ? column_tiles(ops[o]) : 0;
  const int rows = fused_remainder_split(t, c, columns, count, grid, ticket, &op, &split);
  if (rows > 0) {
    Gemm rest = ops[op];
    const int kept = (row_tiles(ops[op]) - rows) * kFusedTile;
    rest.m = ops[op].m - kept;
    ops[op].m = kept;
    ops.push_back(rest);
    items += (split - 1) * rows * columns[op];
    slices[count++] = split;
    shapes();
  }
  // phase_rounds: the op of the costlier items first (ops[0] where equal), then on in order.
  int per[kFusedMaxPhaseGemms] = {}, cost[kFusedMaxPhaseGemms] = {};
  for (int o = 0; o < count; ++o) {
    per[o] = fused_slice_chunks(c[o], slices[o]);
    cost[o] = per[o] + (slices[o] > 1 ? ticket : 0);
  }
  const int first = count > 1 && cost[1] > cost[0] ? 1 : 0;
  std::vector<int> block_chunks(grid, 0), block_cost(grid, 0);
  for (int n = 0; n < items; ++n) {
    const int round = n / grid, at = n % grid, b = round % 2 ? grid - 1 - at : at;
    int local = n, o = first;
    for (int i = 0;; ++i, o = (first + i) % count) {
      if (local < slices[o] * t[o]) break;
      local -= slices[o] * t[o];
    }
    const int slice = local / t[o];  // the last slice holds what the others leave of K
    block_chunks[b] += std::min(per[o], c[o] - slice * per[o]);
    block_cost[b] += cost[o];
  }
  PhaseOutcome out;
  out.items = items;
  out.chunks = *std::max_element(block_chunks.begin(), block_chunks.end());
  out.cost = *std::max_element(block_cost.begin(), block_cost.end());
  for (int o = 0; o < count; ++o) {
    out.gemms += (o ? " " : "") + std::to_string(t[o]) + "x" + std::to_string(c[o]) + "/" + std::to_string(slices[o]);
  }
  return out;
}

int usage(const char* why) {
  std::fprintf(stderr,
               "fused_plan: %s\nusage: fused_plan [--grid N] [--ticket N] [--batches B,B,...] [--dim N] [--hidden N] "
               "[--latent N] [--verbose]\n",
               why);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  int grid = 264, ticket = 0, dim = 784, hidden = 400, latent = 20;
  bool verbose = false;
  std::string batches = "32,64,128,256,512,1024";
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    if (k == "--verbose") {
      verbose = true;
      continue;
    }
    if (i + 1 >= argc) return usage(("a value is missing after " + k).c_str());
    const char* v = argv[++i];
    int* number = k == "--grid"     ? &grid
                  : k == "--ticket" ? &ticket
                  : k == "--dim"    ? &dim
                  : k == "--hidden" ? &hidden
                  : k == "--latent" ? &latent
                                    : nullptr;
    if (k == "--batches") {
      batches = v;
    } else if (!number) {
      return usage(("unknown flag " + k).c_str());
    } else if ((*number = std::atoi(v)) < (k == "--ticket" ? 0 : 1)) {
      return usage((k + ": '" + v + "' is out of range").c_str());
    }
  }
  std::printf("fused step plan: %d-%d-%d, L = 1, Bernoulli, %d blocks, a ticket costing %d chunks\n", dim, hidden,
              latent, grid, ticket);
  std::printf("%6s  %-20s %6s %6s %6s%s\n", "batch", "GEMM phase", "items", "chunks", "cost",
              verbose ? "  GEMMs (tiles x chunks / slices)" : "");
  std::stringstream in(batches);
  for (std::string item; std::getline(in, item, ',');) {
    const int B = std::atoi(item.c_str()), H = hidden, J = latent, D = dim;
    if (B <= 0) return usage(("--batches: '" + item + "' is not a positive integer").c_str());
    // The phases' GEMMs as train_step builds them (fused_step.cu): forward_stack twice, then backward_stack over the
    // decoder (the output layer's update left to the next phase) and over the encoder (the last phase takes the first
    // layer's own update beside the heads' left to it).
    const Gemm out_update{D, H, B, true, false, true, false}, dec_update{H, J, B, true, false, true, false},
        heads_update{2 * J, H, B, true, false, true, false}, enc_update{H, D, B, true, false, false, false};
    const std::vector<std::vector<Gemm>> phases = {
        {{B, H, D, false, false, false, false}},                  // encoder 1
        {{B, 2 * J, H, false, true, false, false}},               // heads
        {{B, H, J, false, false, false, false}},                  // decoder 1
        {{B, D, H, false, false, false, false}},                  // output
        {{B, H, D, false, false, false, false}},                  // output backward
        {{B, J, H, false, false, false, false}, out_update},      // decoder 1 backward: dz
        {{B, H, 2 * J, false, false, false, false}, dec_update},  // heads backward
        {heads_update, enc_update},                               // encoder 1 backward: the last
    };
    int sum_chunks = 0, sum_cost = 0;
    Gemm carry{};
    bool carrying = false;
    for (size_t p = 0; p < phases.size(); ++p) {
      std::vector<Gemm> ops = phases[p];
      if (carrying) {  // after the update left from the phase before (add_left_updates)
        const auto left = std::find_if(ops.begin(), ops.end(), [](const Gemm& g) { return g.deferred; });
        ops.insert(left == ops.end() ? left : left + 1, carry);
      }
      carrying = false;
      Gemm next{};
      const PhaseOutcome o = plan(ops, p + 1 == phases.size(), grid, ticket, &next);
      if (next.m > 0) carry = next, carrying = true;
      sum_chunks += o.chunks;
      sum_cost += o.cost;
      std::printf("%6d  %-20s %6d %6d %6d%s%s\n", B, fused_gemm_phase_name(static_cast<int>(p), 1, 1, 1).c_str(),
                  o.items, o.chunks, o.cost, verbose ? "  " : "", verbose ? o.gemms.c_str() : "");
    }
    std::printf("%6d  %-20s %6s %6d %6d\n", B, "sum", "", sum_chunks, sum_cost);
  }
  return 0;
}
