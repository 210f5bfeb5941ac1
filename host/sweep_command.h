// The `vae sweep` command's run: N models of one architecture trained in one process, epoch by
// epoch (every model's epoch e before any model's e + 1), each into a normal run folder
// <sweep>/model_<k>/ and each exactly the `vae train` run of its flags. Under mpirun or srun the
// ranks split the models (rank r takes models r, r + R, ...) and meet only at the end.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "train_command.h"

namespace vae {

struct SweepRun {
  std::string out_dir;  // the sweep's folder (it holds sweep.json, sweep.jsonl and model_<k>/)
  // Model k's run: its configuration and the run-level settings (alike for all), out_dir
  // <sweep>/model_<k>, resume set where that folder holds a checkpoint.
  std::vector<TrainRun> models;
  std::vector<std::vector<std::pair<std::string, std::string>>> values;  // model k's swept flags and values
  std::string plan_json;  // a new sweep: sweep.json, written by rank 0 once the models fit; empty on --resume
};

// Exit status: 0 every model trained; 3 some diverged (each stopped alone, the others went on);
// 75 / 130 stopped by a signal (every model's checkpoint written: --resume the sweep folder).
int run_sweep(const SweepRun& sweep);

// Each model's outcome, <sweep>/model_<k>/outcome.json, and the sweep's summary sweep.jsonl (one
// line per model, in model order) with the table it prints.
constexpr const char* kOutcomeFile = "outcome.json";

}  // namespace vae
