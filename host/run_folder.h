// A run folder's checkpoints and metrics, kept so that a run killed at any moment resumes:
//   checkpoint.safetensors              the newest complete checkpoint
//   checkpoints/step_<N>.safetensors    the newest --keep checkpoints, by step
//   metrics.jsonl                       one line per completed epoch
// Every file is written whole to a temporary file, fsynced and renamed (atomic_file.h).
#pragma once

#include <string>
#include <vector>

#include "checkpoint.h"

namespace vae {

// Writes checkpoints/step_<step>.safetensors, then checkpoint.safetensors, then removes the
// step files beyond the newest `keep`.
void save_run_checkpoint(const std::string& run_dir, const Checkpoint& ckpt, int keep);

struct FoundCheckpoint {
  Checkpoint checkpoint;
  std::string path;
  std::vector<std::string> skipped;  // "PATH: why" for each newer file that did not load
};
// --resume PATH (or another command's `flag`, --checkpoint): a checkpoint file, or a run folder
// (then the newest checkpoint of it that loads, by step). Throws vae::Error when none loads,
// naming the flag and each file tried.
FoundCheckpoint find_checkpoint(const std::string& path, const std::string& flag = "--resume");
// Names on stderr each newer checkpoint file that did not load ("vae: skipping PATH: why").
void say_skipped(const FoundCheckpoint& found);
// The run folder a checkpoint file belongs to (its folder, or above checkpoints/).
std::string run_folder_of(const std::string& checkpoint_path);

// Keeps the lines of metrics.jsonl of epochs up to `epochs` (a resumed run repeats the epochs
// after its checkpoint, and each epoch has one line). No file: nothing to do.
void keep_metrics_through_epoch(const std::string& metrics_path, int epochs);

}  // namespace vae
