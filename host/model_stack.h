// vae sweep's batched step (issue 19): the models of a sweep, one shape, trained in lockstep by
// one step for all of them. Their parameters, gradients and optimizer state lie in one flat
// buffer each, (models, parameters); every GEMM is one strided-batched call over the models,
// every kernel one launch with the model as blockIdx.z (kernels/types.h: Models), the optimizer
// one launch, and full batches replay one CUDA graph of the whole step. Each model keeps its own
// shuffle, noise, step state, sums and divergence watch, keyed and computed as its lone run's:
// on the CPU model k's parameters after an epoch are bit for bit those of `vae train` with its
// flags (the same GEMM panels, the same grids per model).
//
// The models' Trainers stay the owners of everything else (evaluation, checkpoints, restore): the
// stack copies their state in at the start of an epoch and back at its end, and a trainer that is
// attached reads its running sums, gradient norm and divergence watch here (Trainer::attach).
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "trainer.h"

namespace vae {

class ModelStack {
 public:
  // The trainers, all of one shape: the model, batch size, draws, objective, optimizer kind and
  // binarization (the hyperparameters that change no shape may differ: seed, learning rate and
  // its schedule, KL weight, warm-up, estimator, gradient, momentum, weight decay). They must
  // outlive the stack; each is attached to its slot until the stack is destroyed.
  ModelStack(const DeviceContext& ctx, const std::vector<Trainer*>& trainers);
  ~ModelStack();
  ModelStack(const ModelStack&) = delete;
  ModelStack& operator=(const ModelStack&) = delete;
  // The shape-changing settings of two configurations differ (what a stack cannot hold): the first
  // such flag's name, or "".
  static std::string shape_difference(const TrainConfig& a, const TrainConfig& b);

  int size() const { return static_cast<int>(trainers_.size()); }
  // One epoch of every model (or the rest of an unfinished one), all at the same position. After
  // each step on_step(done, total) may return false to stop there: the trainers then hold the
  // state after that step (an unfinished epoch, as Trainer::train_epoch leaves it). A model whose
  // loss or gradient turns non-finite goes on in the stack (the models do not touch each other)
  // but is reported once, at the check that finds it: diverged(k) then holds the reason, and its
  // trainer keeps the state (and position) it had at the start of that epoch for good (its slot
  // computes on in later epochs, unreported). Returns each model's epoch totals.
  std::vector<ElboTotals> train_epoch(const DeviceDataset& train,
                                      const std::function<bool(int64_t, int64_t)>& on_step = {});
  // The reason model k diverged (Trainer::check_finite's), or null while it trains.
  const Diverged* diverged(int k) const { return diverged_[k].get(); }
  // Model k diverged as its caller found (a checkpoint between the stack's checks refused it).
  void diverge(int k, const Diverged& d);
  bool graph_in_use() const { return graph_ != nullptr; }

  // ---- what an attached trainer reads (Trainer's methods of the same names) ----
  std::vector<double> totals(int k) const;  // the epoch's running sums (4)
  double gradient_norm(int k);              // of the last step's gradient
  double update_norm(int k);                // of the last step's update
  NonFinite watch(int k) const;
  // Model k's parameters and optimizer state into its trainer (its checkpoint is then current).
  void copy_out(int k);

 private:
  void copy_state(int k, bool into_stack);
  void queue_step(const DeviceDataset& train, int batch);
  void check_finite();  // every model's watch; marks the ones newly diverged

  const DeviceContext& ctx_;
  std::vector<Trainer*> trainers_;
  TrainConfig config_;  // the first model's: the shape
  Vae vae_;
  Optimizer optimizer_;
  DeviceBuffer<ModelScalars> scalars_;  // (models)
  DeviceBuffer<double> totals_;         // (models, 4)
  DeviceBuffer<double> grad_square_sum_;
  DeviceBuffer<int> perm_;            // (models, N)
  DeviceBuffer<StepState> train_at_;  // (models)
  DeviceBuffer<NonFinite> watch_;     // (models)
  std::vector<std::unique_ptr<Diverged>> diverged_;
  int64_t epoch_start_step_ = 0, epoch_start_batch_ = 0;  // where the epoch in training began
  StepGraph* graph_ = nullptr;
  const void* graph_data_ = nullptr;
};

}  // namespace vae
