#include "trainer.h"

#include <algorithm>

#include "model_stack.h"
#include "runtime/check.h"

namespace vae {

Trainer::Trainer(const DeviceContext& ctx, const TrainConfig& config)
    : ctx_(ctx),
      config_(config),
      vae_(ctx, config.model, eval_rows(), config.draws()),  // config_ is set first
      optimizer_(ctx, vae_.layout().total, config.optimizer, config.hyper),
      totals_(ctx, 4),
      grad_square_sum_(ctx, 1),
      train_at_(ctx, 1),
      watch_(ctx, 1) {
  vae_.params().upload(init_parameters(config.model, vae_.layout(), config.seed));
  vae_.set_iwae(config.objective == Objective::iwae);
}

Trainer::~Trainer() { VAE_CALL(ctx_.target(), graph_destroy, graph_); }

void Trainer::set_process_group(ProcessGroup* pg) {
  pg_ = pg && pg->backend() != DistBackend::none ? pg : nullptr;
  if (pg_) fused_step_ = false;
}

void Trainer::set_learning_rate(float lr) {
  if (lr == optimizer_.hyper().lr) return;
  optimizer_.set_learning_rate(lr);
  VAE_CALL(ctx_.target(), graph_destroy, graph_);
  graph_ = nullptr;
}

bool Trainer::graph_in_use() const { return stack_ ? stack_->graph_in_use() : graph_ != nullptr; }

int Trainer::stacked_models() const { return stack_ ? stack_->size() : 1; }

void Trainer::attach(ModelStack* stack, int slot) {
  stack_ = stack;
  stack_slot_ = slot;
}

ElboTotals Trainer::epoch_totals_so_far() {
  return ElboTotals::from_sums(stack_ ? stack_->totals(stack_slot_) : totals_.download(), vae_.iwae());
}

double last_step_gradient_norm(Vae& vae, int model, DeviceBuffer<double>& out) {
  vae.gradient_square_sum(out.data(), model);
  return std::sqrt(out.download()[0]);
}

double last_step_update_norm(Vae& vae, const Optimizer& optimizer, int64_t steps, const OptimizerHyper& hyper,
                             int model, DeviceBuffer<double>& out) {
  if (steps == 0) return 0;
  optimizer.update_square_sum(vae.params().data(), vae.grads().data(), static_cast<uint64_t>(steps - 1), out.data(),
                              vae.reduce_scratch(), model, &hyper);
  return std::sqrt(out.download()[0]);
}

double Trainer::last_gradient_norm() {
  return stack_ ? stack_->gradient_norm(stack_slot_) : last_step_gradient_norm(vae_, 0, grad_square_sum_);
}

double Trainer::last_update_norm() {
  return stack_ ? stack_->update_norm(stack_slot_)
                : last_step_update_norm(vae_, optimizer_, step_, optimizer_.hyper(), 0, grad_square_sum_);
}

Trainer::StepRows Trainer::step_rows(int64_t batch_index, int64_t rows_left) const {
  const int B = config_.batch_size;
  const int global = static_cast<int>(std::min<int64_t>(B, rows_left));
  return {global, batch_index * B, pg_ ? batch_slice(global, pg_->rank(), pg_->size()) : BatchSlice{0, global}};
}

void Trainer::restore(const Checkpoint& ckpt) {
  VAE_REQUIRE(ckpt.params.size() == vae_.layout().total, "restore: parameter count");
  vae_.params().upload(ckpt.params);
  for (size_t s = 0; s < ckpt.optimizer_state.size(); ++s) optimizer_.state(s).upload(ckpt.optimizer_state[s]);
  step_ = ckpt.step;
  epoch_ = ckpt.epoch;
  batch_in_epoch_ = ckpt.batch_in_epoch;
  resumed_totals_.clear();
  if (batch_in_epoch_ > 0) {  // the totals so far are the ranks' sum: rank 0 carries them on
    VAE_REQUIRE(ckpt.epoch_totals.size() == 3 || ckpt.epoch_totals.size() == 4, "restore: epoch totals");
    resumed_totals_ = (!pg_ || pg_->rank() == 0) ? ckpt.epoch_totals : std::vector<double>(4, 0.0);
    resumed_totals_.resize(4, 0.0);  // a checkpoint from before the objective's sum: an ELBO run's
  }
}

Checkpoint Trainer::checkpoint() {
  check_finite();  // never a checkpoint of a diverged state (the flag is read every 50 steps)
  if (stack_) {    // the model's state and sums are the stack's
    stack_->copy_out(stack_slot_);
    if (batch_in_epoch_ > 0) totals_.upload(stack_->totals(stack_slot_));
  }
  Checkpoint c;
  c.config = config_;
  c.step = step_;
  c.epoch = epoch_;
  c.batch_in_epoch = batch_in_epoch_;
  if (batch_in_epoch_ > 0) {
    DeviceBuffer<double> sums(ctx_, totals_.download());
    if (pg_) pg_->all_reduce_sum(sums.data(), sums.size());
    c.epoch_totals = sums.download();
  }
  c.params = vae_.params().download();
  for (size_t s = 0; s < optimizer_state_names(config_.optimizer).size(); ++s) {
    c.optimizer_state.push_back(optimizer_.state(s).download());
  }
  return c;
}

const StepState* Trainer::eval_steps(int64_t chunks) {
  if (eval_at_.size() < static_cast<size_t>(chunks)) {
    std::vector<StepState> steps(chunks);
    for (int64_t c = 0; c < chunks; ++c) steps[c] = {0, c * eval_rows(), c * eval_rows()};
    eval_at_ = DeviceBuffer<StepState>(ctx_, steps);
  }
  return eval_at_.data();
}

void Trainer::gather_eval_rows(const DeviceDataset& d, int rows, const StepState* at, float* x) {
  VAE_CALL(ctx_.target(), gather_batch, d.bytes.data(), d.type, nullptr, rows, d.dim, x,
           config_.binarize == Binarize::dynamic, config_.seed, RandomStream::eval_binarize, at, ctx_.stream());
}

int Trainer::fused_launch_steps(int64_t b, int64_t full_batches) const {
  int64_t k = std::min<int64_t>(full_batches - b, fused_launch_most_);
  k = std::min<int64_t>(k, check_every_ - b % check_every_);  // the divergence check comes after the launch
  if (step_boundary_ > 0) k = std::min<int64_t>(k, step_boundary_ - step_ % step_boundary_);
  return static_cast<int>(std::max<int64_t>(k, 1));
}

void Trainer::queue_step(const DeviceDataset& train, const StepRows& rows, int steps) {
  const Target target = ctx_.target();
  const uint64_t seed = config_.seed;
  const int batch = rows.global;
  const BatchSlice& s = rows.rank;
  if (fused_step_) {  // the same step in one launch (a data-parallel run could not all-reduce inside it)
    FusedStepArgs a = vae_.fused_step_args(batch);
    a.data = train.bytes.data();
    a.type = train.type;
    a.perm = perm_.data();
    a.binarize = config_.binarize == Binarize::dynamic;
    a.seed = seed;
    a.at = train_at_.data();
    a.totals = totals_.data();
    a.watch = watch_.data();
    a.kl_term = config_.kl;
    a.steps = steps;
    optimizer_.set_fused_step_optimizer(a);
    VAE_CALL(target, fused_step, a, ctx_.stream());
    return;
  }
  if (s.rows > 0) {  // this rank's rows; the loss is the mean over the global batch
    VAE_CALL(target, gather_batch, train.bytes.data(), train.type, perm_.data(), s.rows, train.dim, vae_.input(),
             config_.binarize == Binarize::dynamic, seed, RandomStream::binarize, train_at_.data(), ctx_.stream());
    const Vae::Pass pass =
        vae_.forward(s.rows, {seed, RandomStream::latent_noise, train_at_.data(), config_.kl.estimator}, true, batch);
    vae_.accumulate_totals(s.rows, totals_.data(), train_at_.data(), watch_.data());
    vae_.backward(pass, config_.kl, train_at_.data());
  } else {  // a last batch smaller than the world: this rank adds nothing
    vae_.grads().zero();
  }
  if (pg_) pg_->all_reduce_sum(vae_.grads().data(), vae_.grads().size());
  optimizer_.step(vae_.params().data(), vae_.grads().data(), train_at_.data(), batch,
                  watch_.data());  // and moves the step on
}

ElboTotals Trainer::train_epoch(const DeviceDataset& train, const std::function<bool(int64_t, int64_t)>& on_step) {
  VAE_REQUIRE(!stack_, "train: the model is trained by its stack");
  VAE_REQUIRE(train.dim == config_.model.input_dim, "train: data dimension differs from the model's");
  const Target target = ctx_.target();
  const int B = config_.batch_size;
  const int64_t batches = (train.count + B - 1) / B;
  if (perm_.size() != static_cast<size_t>(train.count)) perm_ = DeviceBuffer<int>(ctx_, train.count);
  if (graph_ && (graph_data_ != train.bytes.data() || graph_perm_ != perm_.data())) {  // captured for other buffers
    VAE_CALL(target, graph_destroy, graph_);
    graph_ = nullptr;
  }
  VAE_CALL(target, shuffle_permutation, perm_.data(), static_cast<int>(train.count),
           epoch_shuffle_key(config_.seed, epoch_), ctx_.stream());
  VAE_REQUIRE(batch_in_epoch_ < batches, "train: the checkpoint's position is past the end of the epoch");
  const int64_t first = batch_in_epoch_;
  if (first > 0 && resumed_totals_.size() == 4) {
    totals_.upload(resumed_totals_);
  } else {
    totals_.zero();
  }
  resumed_totals_.clear();
  // The step moves the offset on by the global batch; each rank reads its slice from there.
  train_at_.upload({step_rows(first, train.count - first * B).state(static_cast<uint64_t>(step_))});
  const int64_t full_batches = train.count / B;
  for (int64_t b = first; b < batches;) {
    const StepRows rows = step_rows(b, train.count - b * B);
    const int batch = rows.global;
    if (batch != B && b > first)
      train_at_.upload({rows.state(static_cast<uint64_t>(step_))});  // a partial batch's slices
    // The fused step: the full batches up to the next check in one persistent launch.
    const int steps = fused_step_ && batch == B ? fused_launch_steps(b, full_batches) : 1;
    // Capture from the second full batch on: the first runs eagerly, so that module loading,
    // kernel attributes and cuBLAS's first-call set-up happen outside the capture.
    if (batch == B && steps == 1 && b > first && use_graph_ && !graph_) {
      graph_ = capture_graph(ctx_, [&] { queue_step(train, rows); });
      graph_data_ = train.bytes.data();
      graph_perm_ = perm_.data();
    }
    if (steps > 1) {
      queue_step(train, rows, steps);  // one launch: no graph needed
    } else if (batch == B && graph_) {
      VAE_CALL(target, graph_launch, graph_, ctx_.stream());
    } else {
      queue_step(train, rows);  // the partial last batch, and targets without graphs
    }
    step_ += steps;
    b += steps;
    batch_in_epoch_ = b;
    if (b % check_every_ == 0 || b == batches) check_finite();
    if (b < batches && on_step && !on_step(b, batches)) {
      return ElboTotals::from_sums(totals_.download(), vae_.iwae());  // this rank's, partial
    }
  }
  if (pg_) pg_->all_reduce_sum(totals_.data(), totals_.size());
  ++epoch_;
  batch_in_epoch_ = 0;
  const ElboTotals out = ElboTotals::from_sums(totals_.download(), vae_.iwae());
  if (on_step) on_step(batches, batches);
  return out;
}

void Trainer::check_finite() {
  const NonFinite w = stack_ ? stack_->watch(stack_slot_) : watch_.download()[0];
  const bool here = w.step != 0;
  if (!(pg_ ? pg_->agree_max(here ? 1 : 0) != 0 : here)) return;
  if (!here) throw Diverged("training diverged on another rank (its message names the step and the term)");
  std::string what;
  switch (static_cast<NonFiniteTerm>(w.term)) {
    case NonFiniteTerm::reconstruction:
      what = "the reconstruction term log p(x|z) of batch row " + std::to_string(w.index);
      break;
    case NonFiniteTerm::kl:
      what = "the KL term of batch row " + std::to_string(w.index);
      break;
    default: {
      what = "a gradient (element " + std::to_string(w.index) + " of the flat buffer)";
      for (const auto& t : vae_.layout().tensors) {
        const auto i = static_cast<size_t>(w.index);
        if (i >= t.offset && i < t.offset + t.count()) {
          what = "the gradient of " + t.name + " (element " + std::to_string(i - t.offset) + ")";
        }
      }
    }
  }
  throw Diverged("training diverged at step " + std::to_string(w.step) + ": " + what +
                     " is not finite (NaN or infinite); " + divergence_advice(config_.model),
                 static_cast<int64_t>(w.step));
}

std::string divergence_advice(const ModelConfig& model) {
  return std::string("try a lower --lr") +
         (model.decoder == DecoderKind::gaussian
              ? ", or --decoder bernoulli: a Gaussian density grows without bound on pixels that are constant"
              : "");
}

ElboTotals Trainer::evaluate(const DeviceDataset& test, std::vector<float>* heads, int mi_draws) {
  VAE_REQUIRE(test.dim == config_.model.input_dim, "eval: data dimension differs from the model's");
  const int E = eval_rows();
  const int64_t chunks = (test.count + E - 1) / E;
  const StepState* at = eval_steps(chunks);
  const int J = config_.model.latent;
  const int draws = static_cast<int>(std::clamp<int64_t>(mi_draws, 0, test.count));
  DeviceBuffer<double> latent_sums(ctx_, 3 * static_cast<size_t>(J));
  // Every row's heads (the aggregate posterior, the histograms) and the first draws' z.
  DeviceBuffer<float> all_heads(ctx_, static_cast<size_t>(test.count) * 2 * J), first_z(ctx_, draws * size_t(J));
  totals_.zero();
  for (int64_t c = 0; c < chunks; ++c) {
    const int rows = static_cast<int>(std::min<int64_t>(E, test.count - c * E));
    gather_eval_rows(test, rows, at + c, vae_.input());
    vae_.forward(rows, {config_.seed, RandomStream::eval_noise, at + c}, false);
    vae_.accumulate_totals(rows, totals_.data());
    VAE_CALL(ctx_.target(), latent_statistics, vae_.heads().data(), rows, J, latent_sums.data(), ctx_.stream());
    VAE_CALL(ctx_.target(), copy_on_device, all_heads.data() + c * E * 2 * J, vae_.heads().data(),
             static_cast<size_t>(rows) * 2 * J * sizeof(float), ctx_.stream());
    const int64_t z_rows = std::clamp<int64_t>(draws - c * E, 0, rows);  // sample 0 of each: z's first rows
    if (z_rows > 0) {
      VAE_CALL(ctx_.target(), copy_on_device, first_z.data() + c * E * J, vae_.z().data(),
               static_cast<size_t>(z_rows) * J * sizeof(float), ctx_.stream());
    }
  }
  DeviceBuffer<double> aggregate(ctx_, draws), own(ctx_, draws);
  if (draws > 0) {
    VAE_CALL(ctx_.target(), aggregate_posterior, all_heads.data(), first_z.data(), static_cast<int>(test.count), J,
             draws, aggregate.data(), own.data(), ctx_.stream());
  }
  if (heads) *heads = all_heads.download();
  const std::vector<double> sums = latent_sums.download();
  ElboTotals out = ElboTotals::from_sums(totals_.download(), vae_.iwae());
  if (draws > 0) {
    const std::vector<double> a = aggregate.download(), o = own.download();
    double mi = 0;
    for (int m = 0; m < draws; ++m) mi += (o[m] - a[m]) / draws;
    out.mutual_information = mi;
    out.mi_draws = draws;
  }
  const double n = static_cast<double>(out.n);
  for (int j = 0; j < J; ++j) {
    const double mean = sums[j] / n;
    out.posterior_mean_variance.push_back(std::max(0.0, sums[J + j] / n - mean * mean));
    out.kl_per_dimension.push_back(sums[2 * J + j] / n);
  }
  return out;
}

std::vector<float> Trainer::prior_samples(int n) {
  VAE_REQUIRE(n > 0, "prior_samples: count out of range");
  const int J = config_.model.latent, E = eval_rows();
  const int64_t chunks = (n + E - 1) / E;
  const StepState* at = eval_steps(chunks);
  DeviceBuffer<float> zero_heads(ctx_, static_cast<size_t>(E) * 2 * J), z(ctx_, static_cast<size_t>(E) * J),
      kl(ctx_, E), mean(ctx_, static_cast<size_t>(n) * config_.model.input_dim);
  for (int64_t c = 0; c < chunks; ++c) {
    const int rows = static_cast<int>(std::min<int64_t>(E, n - c * E));
    // μ = 0, log σ² = 0: the latent kernel then draws z ~ N(0, I), the prior.
    VAE_CALL(ctx_.target(), latent_forward, zero_heads.data(), z.data(), kl.data(), rows, J, 1, config_.seed,
             RandomStream::prior, at + c, KlEstimator::analytic, ctx_.stream());
    vae_.decode_mean(z.data(), rows, mean.data() + c * E * config_.model.input_dim);
  }
  return mean.download();
}

std::vector<float> Trainer::reconstructions(const DeviceDataset& test, int n) {
  n = static_cast<int>(std::min<int64_t>(n, test.count));
  VAE_REQUIRE(n > 0 && n <= eval_rows(), "reconstructions: count out of range");
  const size_t D = config_.model.input_dim;
  const StepState* at = eval_steps(1);  // the first test rows, drawn as evaluate() draws them
  gather_eval_rows(test, n, at, vae_.input());
  vae_.forward(n, {config_.seed, RandomStream::eval_noise, at}, false);
  std::vector<float> images(2 * n * D);
  VAE_CALL(ctx_.target(), copy_to_host, images.data(), vae_.input(), n * D * sizeof(float), ctx_.stream());
  DeviceBuffer<float> mean(ctx_, n * D);
  vae_.reconstruction_mean(n, mean.data());
  const std::vector<float> rec = mean.download();
  std::copy(rec.begin(), rec.end(), images.begin() + n * D);
  return images;
}

}  // namespace vae
