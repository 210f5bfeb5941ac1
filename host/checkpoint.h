// Checkpoints (safetensors): parameters under nn.Linear-style names, optimizer state as
// optimizer.<state>.<parameter> tensors, and the configuration, step, epoch and seed in
// __metadata__.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model.h"
#include "train_config.h"

namespace vae {

// 2: mid-epoch checkpoints (batch_in_epoch, epoch_totals); version 1 files still load.
constexpr int kCheckpointFormatVersion = 2;

struct Checkpoint {
  TrainConfig config;
  int64_t step = 0;                                 // optimizer steps taken
  int epoch = 0;                                    // epochs completed
  int64_t batch_in_epoch = 0;                       // steps of the unfinished epoch taken (0: none)
  std::vector<double> epoch_totals;                 // its running (Σ recon, Σ KL, n, Σ IWAE bound) over all ranks
  std::vector<float> params;                        // flat, in make_layout(config.model) order
  std::vector<std::vector<float>> optimizer_state;  // flat, one per state name
};

void save_checkpoint(const std::string& path, const Checkpoint& ckpt);
// Validates names, shapes and dtypes against the configuration it carries; throws vae::Error.
Checkpoint load_checkpoint(const std::string& path);

}  // namespace vae
