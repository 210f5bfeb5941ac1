// `vae sweep`'s plan: the models of a sweep from the flags of `vae train`, where the flags that do
// not change a tensor's shape take lists (1e-3,3e-4) or integer ranges (1..8). The sweep is the
// product of the lists (or with zip their element-wise pairing); each model is a `vae train` run
// with one value of each. Kept as sweep.json in the sweep's folder, so that --resume rebuilds it.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace vae {

// The flags a sweep may vary, and those it must not (a sweep is one architecture, one data set
// and one kind of optimizer state); the run-level flags, which a resumed sweep may set anew.
bool sweepable_flag(const std::string& flag);
bool run_level_flag(const std::string& flag);

// A flag's value list: "a,b,c", or "a..b" for the integers a to b. Throws CLI::ValidationError
// naming the flag when the list is empty or malformed, or a range is not of integers a <= b.
std::vector<std::string> expand_values(const std::string& flag, const std::string& text);

struct SweepModel {
  int index = 0;
  std::vector<std::string> args;                            // its `vae train` flags (not the run-level ones)
  std::vector<std::pair<std::string, std::string>> values;  // the swept flags' values, in flag order
};

// The models of `vae sweep ARGS` (the train flags as given, in order): the product of the lists,
// or with zip their element-wise pairing (lists of one value go with every model); models > 0 adds
// seeds seed .. seed + models - 1 (then --seed takes one value). Run-level flags are left out of
// each model's args and returned in run_args. Throws CLI::ValidationError naming the flag.
struct SweepPlan {
  std::vector<SweepModel> models;
  std::vector<std::string> run_args;
};
SweepPlan plan_sweep(const std::vector<std::string>& args, int models, bool zip);

// sweep.json: the models' flags (the run-level ones are given again on --resume).
std::string sweep_plan_json(const SweepPlan& plan);
SweepPlan sweep_plan_from_json(const std::string& text, const std::string& source);  // throws vae::Error

constexpr int kMaxSweepModels = 4096;

}  // namespace vae
