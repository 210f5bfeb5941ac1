// How the fused step's GEMM phases split K (fused_split_plan, fused_cluster_plan in
// cuda/kernels/fused_step.h), against every allowed split by brute force.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kernels/fused_step.h"

namespace vae {
namespace {

// How a GEMM phase splits K in one round of items (fused_split_one_round, fused_split_plan's but
// for a phase of one GEMM), against every split within its bounds (at most
// kFusedMaxSplit slices, at least kFusedMinSliceChunks chunks a slice, no more items than blocks),
// on random phases of one to three GEMMs and random ticket costs (none in a third of them): its most
// costly item (chunks, plus the ticket where split) is the cheapest any such split reaches, with
// the fewest items that reach it, and no slice is empty. Where the tiles are at least the blocks,
// one GEMM (or three) is not split, and of two only the one of the costlier tiles, by the same measure among
// its splits whose items stay within the blocks and whose rounds over the blocks do not grow.
struct SplitPlan {
  int cost = 0, items = 0;
};
SplitPlan split_outcome(const std::vector<int>& tiles, const std::vector<int>& chunks, const std::vector<int>& slices,
                        int ticket) {
  SplitPlan p;
  for (size_t o = 0; o < tiles.size(); ++o) {
    p.cost = std::max(p.cost, (chunks[o] + slices[o] - 1) / slices[o] + (slices[o] > 1 ? ticket : 0));
    p.items += slices[o] * tiles[o];
  }
  return p;
}
TEST(FusedSplitPlan, TheCostliestItemIsTheCheapestAnyAllowedSplitGives) {
  std::mt19937 rng(29);
  int split_phases = 0, ticket_phases = 0, rounds_split = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    const int count = 1 + static_cast<int>(rng() % kFusedMaxPhaseGemms), grid = 1 + static_cast<int>(rng() % 300);
    const int ticket = trial % 3 == 1 ? 0 : static_cast<int>(rng() % 30);
    std::vector<int> tiles(count), chunks(count);
    for (int o = 0; o < count; ++o) {
      tiles[o] = 1 + static_cast<int>(rng() % (trial % 3 ? 40 : 200));
      chunks[o] = 1 + static_cast<int>(rng() % 60);
    }
    int got[kFusedMaxPhaseGemms] = {};
    const int items = fused_split_one_round(tiles.data(), chunks.data(), count, grid, got, ticket);
    const std::vector<int> plan(got, got + count);
    SCOPED_TRACE("trial " + std::to_string(trial) + ", grid " + std::to_string(grid) + ", ticket " +
                 std::to_string(ticket));
    const SplitPlan outcome = split_outcome(tiles, chunks, plan, ticket);
    ASSERT_EQ(items, outcome.items);
    // Every split within the bounds, by brute force.
    const int total = std::accumulate(tiles.begin(), tiles.end(), 0);
    const int longer = count == 2 && chunks[1] > chunks[0] ? 1 : 0;
    auto rounds = [&](int n) { return (n + grid - 1) / grid; };
    SplitPlan best{1 << 30, 1 << 30};
    std::vector<int> s(count, 1);
    for (;;) {
      bool allowed = true;
      for (int o = 0; o < count; ++o)
        allowed = allowed && (s[o] == 1 || (chunks[o] + s[o] - 1) / s[o] >= kFusedMinSliceChunks);
      const SplitPlan p = split_outcome(tiles, chunks, s, ticket);
      const bool split = std::any_of(s.begin(), s.end(), [](int v) { return v > 1; });
      if (split && total >= grid) {  // the costlier GEMM of two alone, its items within the grid, no more rounds
        allowed = allowed && count == 2 && s[1 - longer] == 1 && s[longer] * tiles[longer] <= grid &&
                  rounds(p.items) <= rounds(total);
      } else if (split) {
        allowed = allowed && p.items <= grid;
      }
      if (allowed && (p.cost < best.cost || (p.cost == best.cost && p.items < best.items))) best = p;
      int o = 0;
      while (o < count && ++s[o] > kFusedMaxSplit) s[o++] = 1;
      if (o == count) break;
    }
    EXPECT_EQ(outcome.cost, best.cost);
    EXPECT_EQ(outcome.items, best.items);
    int split_tiles = 0;  // their tickets and partial sums fit the workspace's region
    for (int o = 0; o < count; ++o) {
      const int per = (chunks[o] + plan[o] - 1) / plan[o];
      EXPECT_LT((plan[o] - 1) * per, chunks[o]) << "an empty slice";
      if (plan[o] > 1) split_tiles += plan[o] * tiles[o];
      if (total >= grid && (count == 1 || o != longer)) {
        EXPECT_EQ(plan[o], 1);
      }
    }
    EXPECT_LE(split_tiles, grid);
    split_phases += items > total;
    rounds_split += items > total && total >= grid;
    ticket_phases += ticket > 0 && items > total;
  }
  EXPECT_GT(split_phases, 300);
  EXPECT_GT(ticket_phases, 100);
  EXPECT_GT(rounds_split, 30);
}

// A phase of one GEMM (fused_split_plan): its split in one round of items (fused_split_one_round)
// or, where a block's work — its rounds of items over the grid times an item's chunks and ticket —
// is less so, in at most kFusedSplitRounds rounds, against every allowed split by brute force
// (slices of at least kFusedMinSliceChunks chunks, at most kFusedMaxSplit): the least such work
// with one round's plan kept where it is as little, else the fewest slices; none empty. At batch
// 256 on 264 blocks the first encoder layer's forward (104 tiles of 25 chunks): 5 slices in two
// rounds (10 chunks a block) instead of 2 in one (13); the output layer's (200 tiles of 13) whole.
TEST(FusedSplitPlan, OneGemmTakesTwoRoundsWhereABlocksWorkIsLess) {
  std::mt19937 rng(43);
  int two_rounds = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    const int grid = 1 + static_cast<int>(rng() % 300), ticket = trial % 3 == 1 ? 0 : static_cast<int>(rng() % 6);
    const int tiles = 1 + static_cast<int>(rng() % (trial % 2 ? 40 : 300)), chunks = 1 + static_cast<int>(rng() % 60);
    SCOPED_TRACE("trial " + std::to_string(trial) + ", grid " + std::to_string(grid) + ", ticket " +
                 std::to_string(ticket) + ", " + std::to_string(tiles) + " tiles of " + std::to_string(chunks));
    auto work = [&](int s) { return (s * tiles + grid - 1) / grid * ((chunks + s - 1) / s + (s > 1 ? ticket : 0)); };
    int one = 0;
    const int one_items = fused_split_one_round(&tiles, &chunks, 1, grid, &one, ticket);
    int best = work(one), best_slices = one;
    for (int s = 2; s <= kFusedMaxSplit; ++s) {
      if ((chunks + s - 1) / s < kFusedMinSliceChunks || s * tiles > kFusedSplitRounds * grid) continue;
      if (work(s) < best) best = work(s), best_slices = s;
    }
    int got = 0;
    const int items = fused_split_plan(&tiles, &chunks, 1, grid, &got, ticket);
    EXPECT_EQ(work(got), best);
    EXPECT_EQ(got, best_slices);
    EXPECT_EQ(items, got == one ? one_items : got * tiles);
    if (got > 1) {
      EXPECT_LE(items, kFusedSplitRounds * grid) << "split items past the partial sums' region";
    }
    const int per = (chunks + got - 1) / got;
    EXPECT_LT((got - 1) * per, chunks) << "an empty slice";
    two_rounds += got > 1 && items > grid;
  }
  EXPECT_GT(two_rounds, 200);
  const int forward[2] = {104, 200}, forward_chunks[2] = {25, 13};
  int slices = 0;
  EXPECT_EQ(fused_split_plan(&forward[0], &forward_chunks[0], 1, 264, &slices, 0), 520);
  EXPECT_EQ(slices, 5);
  EXPECT_EQ(fused_split_one_round(&forward[0], &forward_chunks[0], 1, 264, &slices, 0), 208);
  EXPECT_EQ(slices, 2);
  EXPECT_EQ(fused_split_plan(&forward[1], &forward_chunks[1], 1, 264, &slices, 0), 200);
  EXPECT_EQ(slices, 1);
}

// The rows of a deferred weight update its phase keeps (fused_update_rows_kept), the rest carried
// to the next phase: all where the phase fits whole in one round over the grid (fused_split_one_round's
// items at most the blocks) with no item costlier than the update's whole tiles or the other GEMMs'
// costliest item planned without it in one round, or not even with one row of the update's tiles; else the most
// rows with which it fits so, found by trying every count, on random phases of one to three GEMMs
// (fewer rows kept than that fit so would not be found). And the
// default model's dL/dz phase at batch 128 on an H100's or H200's 264 blocks: dz's 4 tiles of 13 K
// chunks beside the output layer's update (784 × 401: 25 rows of 13 tiles, 4 chunks) keeps 19
// rows and fits one round; so does the next phase with the 6 rows carried to it.
TEST(FusedUpdateRowsKept, TheMostRowsWithWhichThePhaseFitsInOneRound) {
  std::mt19937 rng(37);
  int carried = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    const int count = 1 + static_cast<int>(rng() % kFusedMaxPhaseGemms), grid = 1 + static_cast<int>(rng() % 300);
    const int ticket = trial % 3 == 1 ? 0 : static_cast<int>(rng() % 30);
    int tiles[kFusedMaxPhaseGemms] = {}, chunks[kFusedMaxPhaseGemms] = {};
    for (int o = 0; o < count; ++o) {
      tiles[o] = 1 + static_cast<int>(rng() % (trial % 3 ? 40 : 200));
      chunks[o] = 1 + static_cast<int>(rng() % 60);
    }
    const int u = static_cast<int>(rng() % count), row_tiles = 1 + static_cast<int>(rng() % 40);
    const int columns = 1 + static_cast<int>(rng() % 20);
    tiles[u] = row_tiles * columns;
    SCOPED_TRACE("trial " + std::to_string(trial) + ", grid " + std::to_string(grid) + ", ticket " +
                 std::to_string(ticket));
    // The costliest item of the ops' plan in one round (fused_split_one_round), and its items.
    auto plan_cost = [&](const std::vector<int>& t, const std::vector<int>& c, int* items) {
      int slices[kFusedMaxPhaseGemms] = {};
      *items = fused_split_one_round(t.data(), c.data(), static_cast<int>(t.size()), grid, slices, ticket);
      int cost = 0;
      for (size_t o = 0; o < t.size(); ++o) {
        cost = std::max(cost, (c[o] + slices[o] - 1) / slices[o] + (slices[o] > 1 ? ticket : 0));
      }
      return cost;
    };
    std::vector<int> other_tiles, other_chunks;
    for (int o = 0; o < count; ++o) {
      if (o == u) continue;
      other_tiles.push_back(tiles[o]);
      other_chunks.push_back(chunks[o]);
    }
    int items = 0, alone[kFusedMaxPhaseGemms] = {};  // the others split on their own in one round
    fused_split_one_round(other_tiles.data(), other_chunks.data(), static_cast<int>(other_tiles.size()), grid, alone,
                          ticket);
    int bound = chunks[u];
    for (size_t o = 0; o < other_tiles.size(); ++o) {
      bound = std::max(bound, (other_chunks[o] + alone[o] - 1) / alone[o] + (alone[o] > 1 ? ticket : 0));
    }
    auto fits = [&](int rows) {
      std::vector<int> t(tiles, tiles + count);
      t[u] = rows * columns;
      const int cost = plan_cost(t, std::vector<int>(chunks, chunks + count), &items);
      return items > 0 && items <= grid && cost <= bound;
    };
    int want = row_tiles;
    if (!fits(row_tiles)) {
      for (int r = row_tiles - 1; r >= 1; --r) {
        if (fits(r)) {
          want = r;
          break;
        }
      }
    }
    const int kept = fused_update_rows_kept(tiles, chunks, count, u, row_tiles, grid, ticket);
    EXPECT_EQ(kept, want);
    carried += kept < row_tiles;
  }
  EXPECT_GT(carried, 300);

  const int grid = 264, dz[2] = {4, 325}, dz_chunks[2] = {13, 4};
  EXPECT_EQ(fused_update_rows_kept(dz, dz_chunks, 2, 1, 25, grid, 0), 19);
  int slices[kFusedMaxPhaseGemms] = {};
  const int kept[2] = {4, 19 * 13};
  EXPECT_LE(fused_split_one_round(kept, dz_chunks, 2, grid, slices, 0), grid);
  // The heads' input gradient (4 × 13 tiles of 2 chunks), the decoder layer's update (13 × 1 of 4), the rows carried.
  const int next[3] = {52, 13, 6 * 13}, next_chunks[3] = {2, 4, 4};
  EXPECT_LE(fused_split_one_round(next, next_chunks, 3, grid, slices, 0), grid);
}

// Where a phase's whole tiles take rounds and the last is partly empty, its tiles split in K
// (fused_remainder_split): the last rows of one GEMM's tiles a GEMM of their own, numbered after
// the others as phase_rounds numbers them and handed out over the blocks as it does (rounds, every
// other one in reverse block order), block by block: the costliest block (its items' chunks, and a
// ticket per split item) costs at most ⌊N / grid⌋·c + ⌈c / slices⌉ + ticket, less than without the
// split, and no other split of an allowed GEMM's last rows (any rows, at least one kept, 2 to
// kFusedMaxSplit slices of at least kFusedMinSliceChunks chunks, the split items within the
// blocks: their partial sums and tickets fit the phase's region) gives a cheaper costliest block,
// nor fewer split items at its cost; where it splits nothing, none of them is cheaper than no
// split. On random phases of one or two GEMMs of the same chunks (some of three, or of different
// chunks, split nothing), and the step's last phase at batch 128 on 264 blocks: the heads' update
// (26 tiles) and the first encoder layer's (13 rows of 25 tiles), 4 chunks: 4 of its rows in 2
// slices, 6 chunk-times instead of 8.
// The costliest block of a phase whose GEMMs (items, each item's cost) are numbered in this order.
int rounds_cost(const std::vector<std::pair<int, int>>& numbered, int grid) {
  std::vector<int> block(grid, 0);
  int n = 0;
  for (const auto& [items, cost] : numbered)
    for (int i = 0; i < items; ++i, ++n) {
      const int round = n / grid, at = n % grid;
      block[round % 2 ? grid - 1 - at : at] += cost;
    }
  return *std::max_element(block.begin(), block.end());
}
TEST(FusedRemainderSplit, TheLastRoundsTilesSplitWhereThatMakesTheCostliestBlockCheaper) {
  std::mt19937 rng(41);
  int split_phases = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    const int count = trial % 10 == 0 ? 3 : 1 + static_cast<int>(rng() % 2), grid = 1 + static_cast<int>(rng() % 300);
    const int ticket = trial % 3 == 1 ? 0 : static_cast<int>(rng() % 4);
    const int every = 1 + static_cast<int>(rng() % 40);
    int tiles[kFusedMaxPhaseGemms] = {}, chunks[kFusedMaxPhaseGemms] = {}, columns[kFusedMaxPhaseGemms] = {};
    for (int o = 0; o < count; ++o) {
      columns[o] = rng() % 4 == 0 ? 0 : 1 + static_cast<int>(rng() % 30);
      tiles[o] = (1 + static_cast<int>(rng() % 20)) * std::max(columns[o], 1);
      chunks[o] = trial % 7 == 0 ? 1 + static_cast<int>(rng() % 40) : every;
    }
    const int c = chunks[0];
    SCOPED_TRACE("trial " + std::to_string(trial) + ", grid " + std::to_string(grid) + ", ticket " +
                 std::to_string(ticket));
    int op = -1, slices = 0;
    const int rows = fused_remainder_split(tiles, chunks, columns, count, grid, ticket, &op, &slices);
    const bool same = std::all_of(chunks, chunks + count, [&](int k) { return k == chunks[0]; });
    const int total = std::accumulate(tiles, tiles + count, 0);
    if (count == kFusedMaxPhaseGemms || !same) {
      EXPECT_EQ(rows, 0);
      continue;
    }
    // The phase's numbering (phase_rounds): its GEMMs in order, the split rows last.
    auto cost_of = [&](int o, int r, int s) {
      std::vector<std::pair<int, int>> numbered;
      for (int g = 0; g < count; ++g) numbered.emplace_back(tiles[g] - (g == o ? r * columns[g] : 0), c);
      if (r > 0) numbered.emplace_back(s * r * columns[o], (c + s - 1) / s + ticket);
      return rounds_cost(numbered, grid);
    };
    const int whole = cost_of(-1, 0, 1);
    int best = whole, best_items = 0;
    for (int o = 0; o < count; ++o) {
      if (columns[o] == 0) continue;
      for (int r = 1; r < tiles[o] / columns[o]; ++r)
        for (int s = 2; s <= kFusedMaxSplit; ++s) {
          if ((c + s - 1) / s < kFusedMinSliceChunks || s * r * columns[o] > grid) continue;
          const int cost = cost_of(o, r, s), items = s * r * columns[o];
          if (cost < best || (cost == best && best_items > 0 && items < best_items)) best = cost, best_items = items;
        }
    }
    if (rows == 0) {
      EXPECT_EQ(best, whole) << "a split of the last rows was cheaper";
      continue;
    }
    ++split_phases;
    ASSERT_TRUE(op >= 0 && op < count && columns[op] > 0);
    EXPECT_LT(rows, tiles[op] / columns[op]) << "the GEMM kept no row";
    const int per = (c + slices - 1) / slices, items = slices * rows * columns[op];
    EXPECT_GE(per, kFusedMinSliceChunks);
    EXPECT_LT((slices - 1) * per, c) << "an empty slice";
    EXPECT_LE(slices, kFusedMaxSplit);
    EXPECT_LE(items, grid);
    const int cost = cost_of(op, rows, slices);
    EXPECT_LE(cost, total / grid * c + per + ticket);
    EXPECT_LT(cost, whole);
    EXPECT_EQ(cost, best);
    EXPECT_EQ(items, best_items);
  }
  EXPECT_GT(split_phases, 300);

  const int last[2] = {26, 325}, last_chunks[2] = {4, 4}, columns[2] = {13, 25};
  int op = -1, slices = 0;
  EXPECT_EQ(fused_remainder_split(last, last_chunks, columns, 2, 264, 0, &op, &slices), 4);
  EXPECT_EQ(op, 1);
  EXPECT_EQ(slices, 2);
  EXPECT_EQ(rounds_cost({{26, 4}, {225, 4}, {200, 2}}, 264), 6);
  EXPECT_EQ(rounds_cost({{26, 4}, {325, 4}}, 264), 8);
  EXPECT_EQ(fused_remainder_split(last, last_chunks, columns, 2, 264, 2, &op, &slices), 0) << "a ticket of 2 chunks";
}

// In thread-block clusters (FusedStepArgs::cluster) a phase splits K only within clusters, in one
// round: the costliest item is the cheapest any allowed split gives — each op's slices at most the
// cluster's blocks, a slice at least kFusedMinSliceChunks chunks, the ops' clusters (⌈tiles /
// ⌊cluster / slices⌋⌉ each) at most the grid's — with the fewest clusters at that cost; nothing
// split (0) where no split is cheaper than whole tiles. By brute force, clusters of 2 to 8.
TEST(FusedClusterPlan, TheCostliestItemIsTheCheapestAnyAllowedSplitGives) {
  std::mt19937 rng(31);
  int split_phases = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    const int count = 1 + static_cast<int>(rng() % kFusedMaxPhaseGemms), cluster = 2 + static_cast<int>(rng() % 7);
    const int clusters = 1 + static_cast<int>(rng() % 40);
    std::vector<int> tiles(count), chunks(count);
    for (int o = 0; o < count; ++o) {
      tiles[o] = 1 + static_cast<int>(rng() % (trial % 3 ? 20 : 100));
      chunks[o] = 1 + static_cast<int>(rng() % 60);
    }
    SCOPED_TRACE("trial " + std::to_string(trial) + ", " + std::to_string(clusters) + " clusters of " +
                 std::to_string(cluster));
    struct Outcome {
      int cost, used;
    };
    auto outcome = [&](const std::vector<int>& sl) {
      Outcome r{0, 0};
      for (int o = 0; o < count; ++o) {
        r.cost = std::max(r.cost, (chunks[o] + sl[o] - 1) / sl[o]);
        const int per = cluster / sl[o];
        r.used += (tiles[o] + per - 1) / per;
      }
      return r;
    };
    int got[kFusedMaxPhaseGemms] = {};
    const int used = fused_cluster_plan(tiles.data(), chunks.data(), count, clusters, cluster, got);
    const std::vector<int> plan(got, got + count);
    const int longest = *std::max_element(chunks.begin(), chunks.end());
    Outcome best{longest, 1 << 30};  // whole tiles in rounds: always allowed
    std::vector<int> sl(count, 1);
    for (;;) {
      bool allowed = std::any_of(sl.begin(), sl.end(), [](int v) { return v > 1; });
      for (int o = 0; o < count; ++o)
        allowed = allowed && (sl[o] == 1 || (chunks[o] + sl[o] - 1) / sl[o] >= kFusedMinSliceChunks);
      const Outcome p = outcome(sl);
      if (allowed && p.used <= clusters && (p.cost < best.cost || (p.cost == best.cost && p.used < best.used))) {
        best = p;
      }
      int o = 0;
      while (o < count && ++sl[o] > cluster) sl[o++] = 1;
      if (o == count) break;
    }
    if (best.cost == longest) {
      EXPECT_EQ(used, 0);
      EXPECT_EQ(plan, std::vector<int>(count, 1));
      continue;
    }
    ++split_phases;
    const Outcome p = outcome(plan);
    EXPECT_EQ(p.cost, best.cost);
    EXPECT_EQ(used, p.used);
    EXPECT_EQ(used, best.used);
    for (int o = 0; o < count; ++o) {
      EXPECT_LE(plan[o], cluster);
      const int per = (chunks[o] + plan[o] - 1) / plan[o];
      EXPECT_LT((plan[o] - 1) * per, chunks[o]) << "an empty slice";
    }
  }
  EXPECT_GT(split_phases, 500);
}

}  // namespace
}  // namespace vae
