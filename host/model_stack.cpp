#include "model_stack.h"

#include <algorithm>

#include "runtime/check.h"

namespace vae {

namespace {
const TrainConfig& first_config(const std::vector<Trainer*>& trainers) {
  VAE_REQUIRE(!trainers.empty(), "ModelStack: no models");
  return trainers.front()->config();
}
}  // namespace

std::string ModelStack::shape_difference(const TrainConfig& a, const TrainConfig& b) {
  const ModelConfig &x = a.model, &y = b.model;
  if (x.input_dim != y.input_dim || x.hidden != y.hidden) return "--hidden";
  if (x.latent != y.latent) return "--latent";
  if (x.activation != y.activation) return "--activation";
  if (x.decoder != y.decoder) return "--decoder";
  if (a.batch_size != b.batch_size) return "--batch-size";
  if (a.objective != b.objective || a.draws() != b.draws())
    return a.objective != b.objective ? "--objective" : "--samples";
  if (a.optimizer != b.optimizer) return "--optimizer";
  if (a.binarize != b.binarize) return "--binarize";
  return "";
}

ModelStack::ModelStack(const DeviceContext& ctx, const std::vector<Trainer*>& trainers)
    : ctx_(ctx),
      trainers_(trainers),
      config_(first_config(trainers)),
      vae_(ctx, config_.model, config_.batch_size, config_.draws(), static_cast<int>(trainers.size())),
      optimizer_(ctx, vae_.layout().total, config_.optimizer, config_.hyper, static_cast<int>(trainers.size())),
      scalars_(ctx, trainers.size()),
      totals_(ctx, 4 * trainers.size()),
      grad_square_sum_(ctx, 1),
      train_at_(ctx, trainers.size()),
      watch_(ctx, trainers.size()),
      diverged_(trainers.size()) {
  for (size_t k = 0; k < trainers_.size(); ++k) {  // their positions: train_epoch checks them
    const Trainer& t = *trainers_[k];
    const std::string differs = shape_difference(config_, t.config());
    VAE_REQUIRE(differs.empty(), "ModelStack: model " + std::to_string(k) + " differs in " + differs);
    VAE_REQUIRE(!t.pg_ && !t.stack_, "ModelStack: a model of a process group or of another stack");
  }
  for (size_t k = 0; k < trainers_.size(); ++k) trainers_[k]->attach(this, static_cast<int>(k));
  vae_.set_iwae(config_.objective == Objective::iwae);
  vae_.set_model_scalars(scalars_.data());
  optimizer_.set_model_scalars(scalars_.data());
}

ModelStack::~ModelStack() {
  for (Trainer* t : trainers_) t->attach(nullptr, 0);
  VAE_CALL(ctx_.target(), graph_destroy, graph_);
}

// Model k's parameters and optimizer state between its trainer and its slot of the stack.
void ModelStack::copy_state(int k, bool into_stack) {
  Trainer& t = *trainers_[k];
  const size_t P = vae_.layout().total;
  auto copy = [&](float* slot, float* own) {
    VAE_CALL(ctx_.target(), copy_on_device, into_stack ? slot + k * P : own, into_stack ? own : slot + k * P,
             P * sizeof(float), ctx_.stream());
  };
  copy(vae_.params().data(), t.vae_.params().data());
  for (size_t s = 0; s < optimizer_state_names(config_.optimizer).size(); ++s) {
    copy(optimizer_.state(s).data(), t.optimizer_.state(s).data());
  }
}

void ModelStack::copy_out(int k) {
  if (!diverged_[k]) copy_state(k, false);  // a diverged model's trainer keeps the epoch's start
}

std::vector<double> ModelStack::totals(int k) const {
  const std::vector<double> all = totals_.download();
  return std::vector<double>(all.begin() + 4 * k, all.begin() + 4 * k + 4);
}

double ModelStack::gradient_norm(int k) { return last_step_gradient_norm(vae_, k, grad_square_sum_); }

double ModelStack::update_norm(int k) {
  const Trainer& t = *trainers_[k];  // its hyperparameters: the epoch's learning rate, as the step took it
  return last_step_update_norm(vae_, optimizer_, t.step(), t.optimizer_.hyper(), k, grad_square_sum_);
}

NonFinite ModelStack::watch(int k) const { return watch_.download()[k]; }

// One step of every model (no host synchronisation): the lone trainer's composed step, each
// launch over the models.
void ModelStack::queue_step(const DeviceDataset& train, int batch) {
  const Target target = ctx_.target();
  const int M = size();
  const Models models{M, config_.batch_size, train.count, scalars_.data()};
  VAE_CALL(target, gather_batch, train.bytes.data(), train.type, perm_.data(), batch, train.dim, vae_.input(),
           config_.binarize == Binarize::dynamic, config_.seed, RandomStream::binarize, train_at_.data(), ctx_.stream(),
           models);
  const Vae::Pass pass =
      vae_.forward(batch, {config_.seed, RandomStream::latent_noise, train_at_.data(), config_.kl.estimator}, true);
  vae_.accumulate_totals(batch, totals_.data(), train_at_.data(), watch_.data());
  vae_.backward(pass, config_.kl, train_at_.data());
  optimizer_.step(vae_.params().data(), vae_.grads().data(), train_at_.data(), batch, watch_.data());
}

void ModelStack::diverge(int k, const Diverged& d) {
  if (diverged_[k]) return;
  diverged_[k] = std::make_unique<Diverged>(d);
  trainers_[k]->step_ = epoch_start_step_;  // its trainer's position: the epoch's start
  trainers_[k]->batch_in_epoch_ = epoch_start_batch_;
}

void ModelStack::check_finite() {
  for (int k = 0; k < size(); ++k) {
    if (diverged_[k]) continue;
    try {
      trainers_[k]->check_finite();  // reads watch(k)
    } catch (const Diverged& d) {
      diverge(k, d);
    }
  }
}

std::vector<ElboTotals> ModelStack::train_epoch(const DeviceDataset& train,
                                                const std::function<bool(int64_t, int64_t)>& on_step) {
  VAE_REQUIRE(train.dim == config_.model.input_dim, "train: data dimension differs from the model's");
  const Target target = ctx_.target();
  const int M = size(), B = config_.batch_size;
  // The position is the models' still training (a diverged one keeps its epoch-start state).
  int lead_index = 0;
  while (lead_index + 1 < M && diverged_[lead_index]) ++lead_index;
  const Trainer& lead = *trainers_[lead_index];
  const int64_t batches = (train.count + B - 1) / B, first = lead.batch_in_epoch();
  VAE_REQUIRE(first < batches, "train: the checkpoint's position is past the end of the epoch");
  if (perm_.size() != static_cast<size_t>(M) * train.count) {
    perm_ = DeviceBuffer<int>(ctx_, static_cast<size_t>(M) * train.count);
  }
  if (graph_ && graph_data_ != train.bytes.data()) {
    VAE_CALL(target, graph_destroy, graph_);
    graph_ = nullptr;
  }
  // Each model's shuffle, scalars, sums, step state and state, as its lone trainer has them.
  std::vector<ModelScalars> scalars(M);
  std::vector<double> totals(4 * static_cast<size_t>(M), 0.0);
  std::vector<StepState> at(M);
  for (int k = 0; k < M; ++k) {
    Trainer& t = *trainers_[k];
    VAE_REQUIRE(
        diverged_[k] || (t.epoch() == lead.epoch() && t.batch_in_epoch() == first && t.step() == lead.step()),
        "ModelStack: model " + std::to_string(k) + " is at another position than model " + std::to_string(lead_index));
    VAE_CALL(target, shuffle_permutation, perm_.data() + static_cast<size_t>(k) * train.count,
             static_cast<int>(train.count), epoch_shuffle_key(t.config().seed, t.epoch()), ctx_.stream());
    scalars[k] = {t.config().seed, t.config().kl, t.optimizer_.hyper()};
    if (first > 0 && t.resumed_totals_.size() == 4) std::copy_n(t.resumed_totals_.begin(), 4, totals.begin() + 4 * k);
    t.resumed_totals_.clear();
    at[k] = {static_cast<uint64_t>(t.step()), first * B, 0};
    copy_state(k, true);
  }
  scalars_.upload(scalars);
  totals_.upload(totals);
  train_at_.upload(at);
  watch_.zero();
  int64_t step = lead.step();
  epoch_start_step_ = step;
  epoch_start_batch_ = first;
  for (int64_t b = first; b < batches; ++b) {
    const int batch = static_cast<int>(std::min<int64_t>(B, train.count - b * B));
    if (batch != B && b > first) {  // a partial last batch: the step states as they stand
      for (int k = 0; k < M; ++k) at[k] = {static_cast<uint64_t>(step), b * B, 0};
      train_at_.upload(at);
    }
    // As the lone trainer: capture from the second full batch on, then replay.
    if (batch == B && b > first && lead.use_graph_ && !graph_) {
      graph_ = capture_graph(ctx_, [&] { queue_step(train, batch); });
      graph_data_ = train.bytes.data();
    }
    if (batch == B && graph_) {
      VAE_CALL(target, graph_launch, graph_, ctx_.stream());
    } else {
      queue_step(train, batch);
    }
    ++step;
    for (int k = 0; k < M; ++k) {
      if (diverged_[k]) continue;
      trainers_[k]->step_ = step;
      trainers_[k]->batch_in_epoch_ = b + 1;
    }
    if ((b + 1) % lead.check_every_ == 0 || b + 1 == batches) check_finite();
    if (b + 1 < batches && on_step && !on_step(b + 1, batches)) {
      for (int k = 0; k < M; ++k) copy_out(k);  // an unfinished epoch, as the trainers leave one
      std::vector<ElboTotals> out;
      for (int k = 0; k < M; ++k) out.push_back(ElboTotals::from_sums(this->totals(k), vae_.iwae()));
      return out;
    }
  }
  std::vector<ElboTotals> out;
  const std::vector<double> sums = totals_.download();
  for (int k = 0; k < M; ++k) {
    copy_out(k);
    Trainer& t = *trainers_[k];
    if (!diverged_[k]) {
      ++t.epoch_;
      t.batch_in_epoch_ = 0;
    }
    out.push_back(
        ElboTotals::from_sums(std::vector<double>(sums.begin() + 4 * k, sums.begin() + 4 * k + 4), vae_.iwae()));
  }
  if (on_step) on_step(batches, batches);
  return out;
}

}  // namespace vae
