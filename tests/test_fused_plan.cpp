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

// How a GEMM phase splits K (fused_split_plan), against every split within its bounds (at most
// kFusedMaxSplit slices, at least kFusedMinSliceChunks chunks a slice, no more items than blocks),
// on random phases of one and two GEMMs and random ticket costs (none in a third of them): its most
// costly item (chunks, plus the ticket where split) is the cheapest any such split reaches, with
// the fewest items that reach it, and no slice is empty. Where the tiles are at least the blocks,
// one GEMM is not split, and of two only the one of the costlier tiles, by the same measure among
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
    const int count = 1 + static_cast<int>(rng() % 2), grid = 1 + static_cast<int>(rng() % 300);
    const int ticket = trial % 3 == 1 ? 0 : static_cast<int>(rng() % 30);
    std::vector<int> tiles(count), chunks(count);
    for (int o = 0; o < count; ++o) {
      tiles[o] = 1 + static_cast<int>(rng() % (trial % 3 ? 40 : 200));
      chunks[o] = 1 + static_cast<int>(rng() % 60);
    }
    int got[2] = {0, 0};
    const int items = fused_split_plan(tiles.data(), chunks.data(), count, grid, got, ticket);
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

// In thread-block clusters (FusedStepArgs::cluster) a phase splits K only within clusters, in one
// round: the costliest item is the cheapest any allowed split gives — each op's slices at most the
// cluster's blocks, a slice at least kFusedMinSliceChunks chunks, the ops' clusters (⌈tiles /
// ⌊cluster / slices⌋⌉ each) at most the grid's — with the fewest clusters at that cost; nothing
// split (0) where no split is cheaper than whole tiles. By brute force, clusters of 2 to 8.
TEST(FusedClusterPlan, TheCostliestItemIsTheCheapestAnyAllowedSplitGives) {
  std::mt19937 rng(31);
  int split_phases = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    const int count = 1 + static_cast<int>(rng() % 2), cluster = 2 + static_cast<int>(rng() % 7);
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
    int got[2] = {0, 0};
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
