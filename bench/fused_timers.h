// The fused step's timers inside its kernel (FusedStepArgs::phase_ns, fused_step.h's slots): read
// step by step and printed as bench_step --phases' tables of phases, sync points and GEMM phases.
#pragma once

#include <vector>

#include "kernels/fused_step.h"

namespace vae::bench {

// The timers of the timed steps: one entry per block and step, or per step.
struct FusedTimes {
  std::vector<double> fused_phase_us[kFusedPhases];  // one entry per block and step
  std::vector<double> fused_sum_us;                  // per block and step: its start to its end
  std::vector<double> wait_us;                       // per block and step: its waits at row flags and counters
  unsigned barriers = 0;                             // grid barriers a step (every block the same)
  bool barriers_agree = true;
  long long tickets = -1;  // split-K tickets a step, over the blocks (-1: none read yet)
  bool tickets_agree = true;
  // Per grid barrier of the step (and last, the phase that ends it), one entry per timed step.
  struct Sync {
    std::vector<double> span, work_median, work_max, barrier;
    unsigned long long items = 0, chunks_max = 0;  // the GEMM work items over the blocks; the most K chunks a block ran
  };
  std::vector<Sync> sync;
  // Per GEMM phase of the step, one entry per timed step: when the last block and the median block
  // were done with their work items there, from the step's start (the first block's).
  std::vector<std::vector<double>> gemm_done_last, gemm_done_median;
  unsigned long long tick_ns = 0;  // the smallest positive step between two stamps of a block
  int grid = 0;                    // the launches' blocks
};
// The benchmark's model (bench_step): one hidden layer a side, L = 1.
constexpr int kBenchLayers = 1;
constexpr int kBenchGemmPhases = fused_step_gemm_phases(kBenchLayers, kBenchLayers, 1);

// Reads one step's timers (grid blocks of kFusedPhaseSlots) into t.
void add_fused_times(const std::vector<unsigned long long>& ns, int grid, FusedTimes& t);

// Prints the tables: the fused step's phases (median and largest over blocks and steps, and their
// sum against the step's wall time, wall_us), its barriers, tickets and (with row_flags) waits at
// counters, its sync points (the steps gathered their batches where `gathers`) and GEMM phases.
void print_fused_times(const FusedTimes& t, double wall_us, bool gathers, bool row_flags);

}  // namespace vae::bench
