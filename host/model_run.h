// What `vae train` and `vae sweep` share: the stop signals, a run's start (its flags or its
// checkpoint), its data and folder, the target of a rank, and one model's epochs with their
// outputs and checkpoints (ModelRun). train_command.cpp drives one ModelRun over the ranks of a
// process group; sweep_command.cpp drives several, one after another within each epoch.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <utility>

#include "tensorboard.h"

#include "train_command.h"
#include "world.h"

namespace vae {

// Installs the handlers of SIGUSR1, SIGTERM (preempt) and SIGINT (interrupt) for the rest of the
// process and clears any request. They only record the request: a signal that arrives after the
// run has ended (while the process exits) changes nothing, where the default action would turn a
// finished run into a death by the signal. stop_request(): 0 none, 1 preempt, 2 interrupt.
void install_stop_signals();
int stop_request();
// The exit status of a stop request: kExitPreempted (1) or kExitInterrupted (2).
inline int stop_status(int request) { return request == 2 ? kExitInterrupted : kExitPreempted; }

// What a run starts from: the flags' configuration, or with run.resume a checkpoint's with the
// flags' epoch target (and its folder, unless run.out_dir names one).
struct RunStart {
  TrainConfig config;
  Checkpoint resumed;  // with --resume
  std::string out_dir;
  DataOptions data;  // a resumed run reads the data its checkpoint recorded
  bool resuming = false;
};
RunStart resolve_start(const TrainRun& run);
// The same, with no check that a resumed run has epochs left to train (vae sweep skips those).
RunStart load_start(const TrainRun& run);

// The training and test images of a run, checked against each other and binarized as s is
// configured; then fit_to_data takes a new run's input shape from them (or checks a resumed one's).
std::pair<Dataset, Dataset> load_run_data(const RunStart& s);
void fit_to_data(RunStart& s, const Dataset& train);

// The run folder: runs/<timestamp> unless given; a new run refuses one that holds a run; with
// `create` (rank 0) it is made.
void prepare_run_folder(std::string& out_dir, bool resuming, bool create);
std::string timestamp();  // 20261206-071500

// The target of this rank: its GPU (local rank modulo the node's GPUs), or on the CPU its share of
// the node's cores (unless VAE_CPU_WORKERS says how many each rank takes).
Target place_rank(const World& world, const std::optional<Target>& device);

// A progress line on stderr (a terminal only), at most five times a second.
class Progress {
 public:
  explicit Progress(bool enabled);
  void start();
  // `what` leads the line ("epoch 3/10", "epoch 3/10 model 5/16").
  void update(const std::string& what, int64_t done, int64_t total, int64_t samples);
  void clear();

 private:
  bool enabled_;
  std::chrono::steady_clock::time_point start_, last_;
};

// One model's run on a target: its trainer (restored from start.resumed when resuming), folder,
// metrics and checkpoints. With a process group of several ranks, every call is collective.
class ModelRun {
 public:
  ModelRun(const DeviceContext& ctx, const TrainRun& run, RunStart start, ProcessGroup& pg);
  Trainer& trainer() { return trainer_; }
  const TrainConfig& config() const { return start_.config; }
  const std::string& out_dir() const { return start_.out_dir; }
  bool finished() const { return trainer_.epoch() >= start_.config.epochs; }

  struct Epoch {
    ElboTotals train, test;
    double seconds = 0;
    int stop = 0;  // the stop request that ended the epoch early (after a checkpoint), or 0
  };
  // The next epoch (or the rest of an unfinished one), its metrics line and images, then its
  // checkpoint; a checkpoint also every run.checkpoint_every steps. A stop request (the ranks'
  // largest) seen after a step ends the epoch there with a checkpoint. Throws Diverged.
  Epoch train_epoch(const DeviceDataset& train, const DeviceDataset& test, Progress& progress,
                    const std::string& label);
  // The parts of train_epoch, for a caller that trains the steps itself (vae sweep's stack of
  // models): begin_epoch before the first step; after_step after each (the step-level scalars,
  // a stop request, --checkpoint-every), false to stop there with e.stop saying why; end_epoch
  // after the last step, or after a stop (then only the checkpoint), with e.train the epoch's
  // totals.
  void begin_epoch();
  bool after_step(int64_t done, int64_t total, Epoch& e);
  Epoch end_epoch(Epoch e, const DeviceDataset& test, Progress& progress);
  // A checkpoint of every rank's state, written by rank 0; a failed write stops every rank.
  void save();

 private:
  void write_epoch_outputs(int epoch, const Epoch& e, const DeviceDataset& test, const std::vector<float>& heads);

  void open_events();
  // The step-level scalars (rank 0's running means of the epoch so far), every run.log_every steps.
  void log_step(double samples_per_second);

  const DeviceContext& ctx_;
  const TrainRun& run_;
  RunStart start_;
  ProcessGroup& pg_;
  Trainer trainer_;
  // Why this step kernel runs (the metrics' step_rule): the rule's entry or the --step flag, and
  // where the fused step was asked for but the trainer cannot take it, that first.
  std::string step_rule() const;
  std::string step_rule_;
  bool step_rule_fused_ = false;  // the rule or --step asked for the fused step
  std::string metrics_path_;
  std::unique_ptr<EventWriter> events_;  // rank 0, unless run.tensorboard is off
  int64_t logged_at_ = -1;               // the step of the last step-level scalars
  std::chrono::steady_clock::time_point epoch_start_;
  int64_t first_batch_ = 0;  // the epoch's batch the trainer started from (a resumed one's)
};

}  // namespace vae
