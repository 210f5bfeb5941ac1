// The `vae train` command: data, device, ranks, the epoch loop, its outputs (metrics, images,
// checkpoints) and its stops (signals, divergence), with their exit statuses.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "trainer.h"

namespace vae {

// The `vae train` command: everything a run writes goes under the run folder (out_dir, or
// runs/<timestamp>).
// Exit statuses of `vae train` beyond 0 (done), 1 (error) and 2 (bad flags).
constexpr int kExitDiverged = 3;
constexpr int kExitPreempted = 75;     // EX_TEMPFAIL: SIGUSR1 or SIGTERM; checkpoint written, resume
constexpr int kExitInterrupted = 130;  // SIGINT; checkpoint written

struct TrainRun {
  TrainConfig config;
  DataOptions data;
  std::string out_dir;                      // empty: runs/<timestamp>, or the checkpoint's folder on --resume
  std::string resume;                       // a checkpoint file or a run folder (its newest checkpoint that loads)
  int64_t checkpoint_every = 0;             // steps between checkpoints; 0: at the end of each epoch only
  int keep = 3;                             // step checkpoints kept in checkpoints/
  std::optional<DistBackend> dist_backend;  // --dist-backend; nullopt: auto
  std::optional<Target> device;             // --device; nullopt: auto (the GPU when usable)
  bool quiet = false;
  bool cuda_graph = true;          // --no-graph turns it off
  std::optional<bool> fused_step;  // --step fused (true) or composed (false); nullopt: auto, the rule
  bool detect_anomaly = false;     // check for non-finite values every step (else every 50)
  bool tensorboard = true;         // TensorBoard event files in the run folder (--no-tensorboard: none)
  int log_every = 50;              // steps between the step-level scalars of the event file (0: none)
};
int run_train(const TrainRun& run);

}  // namespace vae
