#include "fused_timers.h"

#include <algorithm>
#include <cstdio>
#include <numeric>
#include <string>

#include "bench_timer.h"  // median

namespace vae::bench {

void add_fused_times(const std::vector<unsigned long long>& ns, int grid, FusedTimes& t) {
  t.grid = grid;
  long long tickets = 0;
  for (int b = 0; b < grid; ++b) {
    const unsigned long long* row = ns.data() + static_cast<size_t>(b) * kFusedPhaseSlots;
    for (int p = 0; p < kFusedPhases; ++p)
      t.fused_phase_us[p].push_back(1e-3 * static_cast<double>(row[1 + p] - row[p]));
    t.fused_sum_us.push_back(1e-3 * static_cast<double>(row[kFusedPhases] - row[0]));
    t.wait_us.push_back(1e-3 * static_cast<double>(row[3 + kFusedPhases]));
    const auto barriers = static_cast<unsigned>(row[1 + kFusedPhases]);
    if (b == 0 && t.barriers == 0) t.barriers = barriers;
    t.barriers_agree = t.barriers_agree && barriers == t.barriers;
    tickets += static_cast<long long>(row[2 + kFusedPhases]);
  }
  if (t.tickets < 0) t.tickets = tickets;
  t.tickets_agree = t.tickets_agree && tickets == t.tickets;
  // Barrier i: the blocks leave barrier i − 1 (or start), work, arrive at i, leave it; the phase
  // after the last barrier ends where each block is done.
  const int barriers = std::min(static_cast<int>(ns[1 + kFusedPhases]), kFusedMaxBarriers);
  if (t.sync.empty()) t.sync.resize(barriers + 1);
  if (static_cast<int>(t.sync.size()) != barriers + 1) return;  // counted apart (barriers_agree)
  auto slot = [&](int b, int k) { return ns[static_cast<size_t>(b) * kFusedPhaseSlots + k]; };
  auto leave = [&](int b, int i) { return i < 0 ? slot(b, 0) : slot(b, kFusedBarrierSlots + 2 * i + 1); };
  auto arrive = [&](int b, int i) {
    return i < barriers ? slot(b, kFusedBarrierSlots + 2 * i) : slot(b, kFusedPhases);
  };
  for (int i = 0; i <= barriers; ++i) {
    unsigned long long last_before = 0, last_arrival = 0, last_leave = 0;
    std::vector<double> work(grid);
    for (int b = 0; b < grid; ++b) {
      last_before = std::max(last_before, leave(b, i - 1));
      last_arrival = std::max(last_arrival, arrive(b, i));
      last_leave = std::max(last_leave, i < barriers ? leave(b, i) : arrive(b, i));
      work[b] = 1e-3 * static_cast<double>(arrive(b, i) - leave(b, i - 1));
    }
    FusedTimes::Sync& s = t.sync[i];
    s.items = s.chunks_max = 0;  // the same every step
    for (int b = 0; b < grid; ++b) {
      const unsigned long long ran = slot(b, kFusedWorkSlots + i);
      s.items += ran >> 32;
      s.chunks_max = std::max(s.chunks_max, ran & 0xffffffffull);
    }
    s.span.push_back(1e-3 * static_cast<double>(last_leave - last_before));
    s.work_max.push_back(*std::max_element(work.begin(), work.end()));
    s.work_median.push_back(median(work));
    s.barrier.push_back(1e-3 * static_cast<double>(last_leave - last_arrival));
  }
  unsigned long long start = ~0ull;
  for (int b = 0; b < grid; ++b) start = std::min(start, slot(b, 0));
  t.gemm_done_last.resize(kBenchGemmPhases);
  t.gemm_done_median.resize(kBenchGemmPhases);
  for (int p = 0; p < kBenchGemmPhases; ++p) {
    std::vector<double> done(grid);
    for (int b = 0; b < grid; ++b) done[b] = 1e-3 * static_cast<double>(slot(b, kFusedGemmSlots + p) - start);
    t.gemm_done_last[p].push_back(*std::max_element(done.begin(), done.end()));
    t.gemm_done_median[p].push_back(median(done));
  }
  for (int b = 0; b < grid; ++b) {
    std::vector<unsigned long long> stamps{slot(b, 0)};
    for (int i = 0; i < barriers; ++i) stamps.insert(stamps.end(), {arrive(b, i), leave(b, i)});
    stamps.push_back(slot(b, kFusedPhases));
    for (size_t k = 1; k < stamps.size(); ++k) {
      const unsigned long long d = stamps[k] - stamps[k - 1];
      if (stamps[k] > stamps[k - 1] && (t.tick_ns == 0 || d < t.tick_ns)) t.tick_ns = d;
    }
  }
}

void print_fused_times(const FusedTimes& t, double wall_us, bool gathers, bool row_flags) {
  std::printf("\nfused step phases (us; over %zu block-steps, thread 0 of each block at each phase's end):\n",
              t.fused_sum_us.size());
  std::printf("%-18s %10s %10s %8s\n", "phase", "median", "max", "share");
  double sum = 0;
  for (int p = 0; p < kFusedPhases; ++p) {
    const double m = median(t.fused_phase_us[p]);
    sum += m;
    std::printf("%-18s %10.2f %10.2f %7.1f%%\n", fused_phase_name(p), m,
                *std::max_element(t.fused_phase_us[p].begin(), t.fused_phase_us[p].end()), 100 * m / wall_us);
  }
  std::printf("%-18s %10.2f  (a block's start to its end: median %.2f; the step's wall time %.2f, %.2f outside)\n",
              "sum of medians", sum, median(t.fused_sum_us), wall_us, wall_us - sum);
  std::printf("blocks: %d (bench/fused_plan --grid %d: the plan of the GEMM phases' items and chunks)\n", t.grid,
              t.grid);
  std::printf("grid barriers a step: %u%s\n", t.barriers, t.barriers_agree ? "" : " (NOT the same on every block)");
  std::printf("split-K tickets a step: %lld over the blocks (K slices meeting at per-tile tickets)%s\n", t.tickets,
              t.tickets_agree ? "" : " (NOT the same every step)");
  if (row_flags) {
    std::printf("waits at row flags and counters a step: median %.2f us, max %.2f us over the blocks\n",
                median(t.wait_us), *std::max_element(t.wait_us.begin(), t.wait_us.end()));
  }
  if (t.sync.empty()) return;
  std::printf(
      "\nsync points (us, means over the timed steps, which a coarse clock's ticks do not bias; span: from the "
      "last block's\ndeparture from the barrier before (or the start) to the last one's from this one; work: a "
      "block's time\nbetween them, median and max over the blocks; barrier: from the last arrival to the last "
      "departure;\nitems: the GEMM work items (tiles or K slices of tiles) over the blocks; chunks: the most K chunks "
      "of 32 a "
      "block ran):\n");
  std::printf("%-28s %9s %9s %9s %9s %6s %6s\n", "grid barrier after", "span", "work med", "work max", "barrier",
              "items", "chunks");
  double sums[4] = {};
  const int layers = kBenchLayers;
  auto mean = [](const std::vector<double>& v) { return std::accumulate(v.begin(), v.end(), 0.0) / v.size(); };
  for (size_t i = 0; i < t.sync.size(); ++i) {
    const FusedTimes::Sync& s = t.sync[i];
    const std::string name = i + 1 < t.sync.size()
                                 ? fused_barrier_name(static_cast<int>(i), layers, layers, 1, gathers, row_flags)
                                 : "(the last phase, to the end)";
    const double v[4] = {mean(s.span), mean(s.work_median), mean(s.work_max), mean(s.barrier)};
    for (int k = 0; k < 4; ++k) sums[k] += v[k];
    std::printf("%-28s %9.2f %9.2f %9.2f %9.2f %6llu %6llu\n", name.c_str(), v[0], v[1], v[2], v[3], s.items,
                s.chunks_max);
  }
  std::printf("%-28s %9.2f %9.2f %9.2f %9.2f\n", "sum", sums[0], sums[1], sums[2], sums[3]);
  // Where the phases end (with row flags they overlap: no barrier shows it).
  std::printf(
      "\nGEMM phases (us from the step's start, the first block's, to when the last block and the median block "
      "were done\nwith their work items there; means over the timed steps):\n");
  std::printf("%-28s %9s %9s\n", "GEMM phase", "last", "median");
  for (int p = 0; p < kBenchGemmPhases; ++p) {
    std::printf("%-28s %9.2f %9.2f\n", fused_gemm_phase_name(p, layers, layers, 1).c_str(), mean(t.gemm_done_last[p]),
                mean(t.gemm_done_median[p]));
  }
  std::printf("timer: the smallest step between two stamps of a block was %llu ns (its resolution is at most that)\n",
              t.tick_ns);
}

}  // namespace vae::bench
