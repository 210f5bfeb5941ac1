// The rule `vae train --step auto` follows: the fused step kernel (and which variant of it) or the
// composed step, for this card, precision and batch size, from a table of measurements
// (step_rule_table.inc) that bench/step_rule.py writes from a `bench_step --sweep --json 1` run.
#pragma once

#include <string>
#include <vector>

#include "kernels/fused_step.h"  // FusedVariant

namespace vae {

// One measured (card, precision, batch) of the table: the step the sweep found fastest (the fused
// step only where it beat the composed step by the margin bench/step_rule.py names), with the
// fused variant (tiles, grid, split-K ticket, row flags, cluster), both steps' µs a step, and the run it came from.
struct StepRuleEntry {
  const char* card;       // the device's name ("NVIDIA H200"), or "cpu"
  const char* precision;  // "fp32" or "tf32"
  int batch;
  const char* step;              // "fused" or "composed"
  const char* fused_math;        // the fused step's tiles: "ffma", "tf32" or "3xtf32" ("" with composed)
  bool half_grid;                // the fused step on half its grid (one block per SM)
  int ticket_chunks;             // its split-K ticket's cost in K chunks (FusedVariant::ticket_chunks)
  bool row_flags;                // its phases meeting at row flags (FusedVariant::row_flags)
  int cluster;                   // its blocks a thread-block cluster (FusedVariant::cluster; 1: none)
  double fused_us, composed_us;  // the fastest fused variant's and the composed step's µs a step
  const char* date;
  const char* commit;
};

// What the rule chose, and why in words (the metrics' "step_rule").
struct StepChoice {
  bool fused = false;
  FusedVariant variant;  // with fused
  std::string why;
};

// The table's entries of this card and precision, the one of the largest batch at most `batch`
// (the smallest batch's below them all); without any, the composed step.
StepChoice step_by_rule(const std::vector<StepRuleEntry>& table, const std::string& card, bool tf32, int batch);

// The measured table (step_rule_table.inc).
const std::vector<StepRuleEntry>& step_rule_table();

}  // namespace vae
