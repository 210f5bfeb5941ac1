// Minibatch SGVB training and evaluation on a target, with the run's outputs.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "checkpoint.h"
#include "data.h"
#include "device_context.h"
#include "process_group.h"
#include "runtime/check.h"
#include "optimizer.h"
#include "vae.h"

namespace vae {

struct ElboTotals {
  double recon = 0, kl = 0;  // mean per datapoint, nats
  int64_t n = 0;
  double elbo() const { return recon - kl; }
  // The IWAE objective's bound, mean per datapoint, where the pass computed it (else the ELBO).
  double iwae = 0;
  bool has_iwae = false;
  double objective() const { return has_iwae ? iwae : elbo(); }
  // The means of device sums t = (Σ reconstruction, Σ KL, rows, Σ IWAE bound), the last one
  // where `iwae`.
  static ElboTotals from_sums(const std::vector<double>& t, bool iwae = false) {
    ElboTotals e;
    e.recon = t[0] / std::max(t[2], 1.0);
    e.kl = t[1] / std::max(t[2], 1.0);
    e.n = static_cast<int64_t>(t[2]);
    e.has_iwae = iwae && t.size() > 3;
    if (e.has_iwae) e.iwae = t[3] / std::max(t[2], 1.0);
    return e;
  }
  // Evaluation only: per latent unit j, the analytic KL averaged over the data (nats; they sum to
  // kl under the analytic estimator) and the variance over the data of its posterior mean μ_j(x).
  std::vector<double> kl_per_dimension, posterior_mean_variance;
  // Evaluation only: the mutual information I(x; z) of the test set under q (Hoffman & Johnson's
  // "ELBO surgery": the mean KL is I(x; z) + KL(q(z) ‖ p(z)), q(z) = (1/N) Σ_n q(z|x_n) the
  // aggregate posterior), estimated as the mean over the first mi_draws rows m of
  // log q(z_m|x_m) − log q(z_m) at their evaluation draws z_m, nats; NaN where not computed.
  double mutual_information = std::numeric_limits<double>::quiet_NaN();
  int mi_draws = 0;
  // Burda et al.'s active units: those whose posterior mean varies with x, Var_x(μ_j(x)) > threshold.
  int active_units(double threshold = 1e-2) const {
    int n_active = 0;
    for (double v : posterior_mean_variance) n_active += v > threshold ? 1 : 0;
    return n_active;
  }
};

// Training turned non-finite (the CLI's exit status 3): the message names the step and the term.
class Diverged : public Error {
 public:
  explicit Diverged(const std::string& what, int64_t step = -1) : Error(what), step_(step) {}
  int64_t step() const { return step_; }  // the step whose loss or gradient was not finite (-1: not known)

 private:
  int64_t step_;
};
// The advice that ends a divergence message: "try a lower --lr" (and for the Gaussian decoder why
// --decoder bernoulli may do).
std::string divergence_advice(const ModelConfig& model);

class ModelStack;

// The L2 norms of the last step of model `model` (of vae's models): of its gradient, and of its
// update, which the optimizer's state after the step implies (`steps` steps taken, the last with
// `hyper`; 0 before the first). Queued into out (one double) on the device, then read: a host
// synchronisation. Trainer's and ModelStack's logged norms.
double last_step_gradient_norm(Vae& vae, int model, DeviceBuffer<double>& out);
double last_step_update_norm(Vae& vae, const Optimizer& optimizer, int64_t steps, const OptimizerHyper& hyper,
                             int model, DeviceBuffer<double>& out);

// The key of epoch `epoch`'s shuffle of the training rows: the order depends on (seed, epoch) only,
// so a resumed run sees the same order.
inline uint64_t epoch_shuffle_key(uint64_t seed, int epoch) { return seed * 0x9E3779B97F4A7C15ull + epoch; }

class Trainer {
 public:
  Trainer(const DeviceContext& ctx, const TrainConfig& config);
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;
  // Full batches replay one captured CUDA graph of the whole step where the target has graphs
  // (the GPU); off, the same kernels are launched one by one.
  void set_use_graph(bool on) { use_graph_ = on; }
  // Full training steps as one cooperative kernel (fused) or as the composed string of GEMMs and
  // kernels; the fused step where the model fits it (Vae::fused_step_fits), else composed.
  void set_fused_step(bool on) {
    fused_step_ = on && vae_.fused_step_fits() && !pg_ && config_.objective == Objective::elbo;
  }
  // Data parallel: this trainer is one rank of pg. Each step takes the rank's slice of the
  // global batch (config().batch_size rows) and sums the gradients over the ranks before the
  // optimizer; epoch totals are summed too. The fused step is then off (one kernel could not
  // all-reduce inside it). pg must outlive the trainer.
  void set_process_group(ProcessGroup* pg);
  // The guard against divergence: every step records the first non-finite log p, KL or gradient
  // on the device; train_epoch reads that flag every `steps` steps (1: every step, as
  // --detect-anomaly) and at the end of each epoch, and throws Diverged naming the step where it
  // appeared and the term.
  void set_divergence_check_every(int steps) { check_every_ = steps < 1 ? 1 : steps; }
  // The fused step is persistent: one launch trains consecutive full batches, up to `most` of them
  // (default 50), ending where the divergence check is due and at multiples of `boundary` global
  // steps (0: none; the caller's checkpoint interval). train_epoch's on_step then comes after each
  // launch. The same bits as one launch per step.
  void set_fused_launch_steps(int most, int64_t boundary = 0) {
    fused_launch_most_ = most < 1 ? 1 : most;
    step_boundary_ = boundary < 0 ? 0 : boundary;
  }
  bool fused_step() const { return fused_step_ && !stack_; }
  // The fused step's variant (Vae::set_fused_variant), as `--step auto`'s rule chose it.
  void set_fused_variant(const FusedVariant& v) { vae_.set_fused_variant(v); }
  bool graph_in_use() const;
  // vae sweep's batched step (host/model_stack.h): while attached, the stack trains this model
  // (its slot of the stack's buffers) and the trainer reads its running sums, gradient norm and
  // divergence watch there; checkpoint() takes the model's state from the stack first. The stack
  // attaches and detaches (null) its trainers itself.
  void attach(ModelStack* stack, int slot);
  // The models the training step trains at once: the attached stack's, else 1.
  int stacked_models() const;
  // The optimizer's learning rate from now on (a schedule's step): the CUDA graph holds it, so a
  // change captures the step again.
  void set_learning_rate(float lr);
  // Continues from a checkpoint of the same configuration, mid-epoch ones included.
  void restore(const Checkpoint& ckpt);
  // What exact resumption needs; with a process group every rank must call it (the epoch's
  // running totals are summed over the ranks). Throws Diverged if a step since the last check
  // met a non-finite value.
  Checkpoint checkpoint();

  // One epoch over `train` (shuffled by seed and epoch), or the rest of an unfinished one. After
  // each step on_step(done, total) may return false to stop there: the epoch then stays
  // unfinished (epoch() unchanged, batch_in_epoch() > 0) and the totals returned are partial.
  ElboTotals train_epoch(const DeviceDataset& train, const std::function<bool(int64_t, int64_t)>& on_step = {});
  // The unfinished epoch's running means on this rank (a host synchronisation): what the epoch's
  // ElboTotals would be if it ended now, without the other ranks' rows.
  ElboTotals epoch_totals_so_far();
  // The L2 norm of the last step's gradient of the loss (of its global batch, summed over the
  // ranks; before the optimizer's weight decay): the gradient buffer holds it until the next
  // step, so the norm is taken on the device when asked (no work in the step), and reading it
  // synchronises.
  double last_gradient_norm();
  // The L2 norm of the last step's update of the parameters, ‖Δθ‖, as the optimizer's state
  // after it implies (Optimizer::update_square_sum), taken on the device when asked, as the
  // gradient's; 0 before the first step.
  double last_update_norm();
  // Evaluation passes take eval_rows() rows at a time, whatever the training batch: their noise
  // (binarization, z) is keyed by the row's place in the data set, so the figures do not depend
  // on the chunking, and the model's buffers hold max(training batch, eval rows) rows.
  static constexpr int kEvalRows = 256;
  int eval_rows() const { return std::max(config_.batch_size, kEvalRows); }
  // Test-set ELBO with fixed noise: the same checkpoint gives the same number every time; the
  // latent diagnostics, the mutual information from the first mi_draws rows' draws (at most all).
  // With heads, also q(z|x) of every row as the evaluation saw it: (N, 2J), μ | log σ².
  static constexpr int kMiDraws = 256;
  ElboTotals evaluate(const DeviceDataset& test, std::vector<float>* heads = nullptr, int mi_draws = kMiDraws);
  // Images as values in [0, 1]: decoder means of n prior samples (sample i keyed by i); the first
  // n test images (n <= eval_rows()) followed by their reconstructions.
  std::vector<float> prior_samples(int n);
  std::vector<float> reconstructions(const DeviceDataset& test, int n);

  // ---- evaluation beyond the ELBO (host/evaluation.cpp) ----
  // The importance-weighted estimate of log p(x) (Burda et al., 2015) per datapoint of `test`,
  // with K = samples draws z_k ~ q(z|x): log (1/K) Σ_k p(x, z_k) / q(z_k|x). The draws of a batch
  // go through the decoder `chunk` at a time (0: as many as keep batch × chunk rows within
  // kImportanceRows), folded into a running log-sum-exp; fixed noise, so a checkpoint gives the
  // same estimate every time.
  struct LogLikelihood {
    double mean = 0;            // nats per datapoint
    double standard_error = 0;  // of the mean over datapoints
    int64_t n = 0;
    std::vector<double> per_datapoint;
  };
  static constexpr int kImportanceRows = 1 << 15;
  LogLikelihood log_likelihood(const DeviceDataset& test, int samples, int chunk = 0);
  // μ | log σ² of q(z|x) for every row of data: (N, 2J).
  std::vector<float> encode(const DeviceDataset& data);
  // Decoder means (N, D) of codes z (N, J).
  std::vector<float> decode(const std::vector<float>& z);

  int epoch() const { return epoch_; }
  int64_t batch_in_epoch() const { return batch_in_epoch_; }  // steps of the unfinished epoch taken
  int64_t step() const { return step_; }
  const TrainConfig& config() const { return config_; }
  Vae& model() { return vae_; }

 private:
  friend class ModelStack;  // reads and moves on the state of the models it trains
  const DeviceContext& ctx_;
  TrainConfig config_;
  Vae vae_;
  Optimizer optimizer_;
  // One training step's rows, made once per batch in the epoch loop and passed down.
  struct StepRows {
    int global = 0;     // rows of the global batch: the loss is their mean
    int64_t first = 0;  // its first row in the epoch's permutation
    BatchSlice rank;    // this rank's rows: [rank.begin, rank.begin + rank.rows) of the global batch
    StepState state(uint64_t step) const { return {step, first + rank.begin, rank.begin}; }
  };
  StepRows step_rows(int64_t batch_index, int64_t rows_left) const;
  // Queues one whole training step at train_at_ (no host synchronisation).
  // With the fused step, `steps` consecutive full batches from rows on in the one launch.
  void queue_step(const DeviceDataset& train, const StepRows& rows, int steps = 1);
  // The fixed-noise passes' step states in device memory: entry c is {0, c * eval_rows(),
  // c * eval_rows()}, chunk c of eval_rows() rows keyed by its rows' places in the data.
  const StepState* eval_steps(int64_t chunks);
  // The rows at->offset .. of evaluation data `d` into x (rows, D), in order, binarized as the
  // run is with the evaluation's fixed noise: the input of every evaluation pass.
  void gather_eval_rows(const DeviceDataset& d, int rows, const StepState* at, float* x);

  DeviceBuffer<double> totals_;
  DeviceBuffer<double> grad_square_sum_;  // (1): ‖g‖² for last_gradient_norm
  DeviceBuffer<int> perm_;
  DeviceBuffer<StepState> train_at_, eval_at_;
  int64_t step_ = 0;
  int epoch_ = 0;
  int64_t batch_in_epoch_ = 0;
  std::vector<double> resumed_totals_;  // a mid-epoch checkpoint's totals, for this rank to start from
  ProcessGroup* pg_ = nullptr;
  bool use_graph_ = true;
  bool fused_step_ = false;
  DeviceBuffer<NonFinite> watch_;
  int check_every_ = 50;
  int fused_launch_most_ = 50;
  int64_t step_boundary_ = 0;
  // Steps the next fused launch takes from batch b on (the full batches left, within the bounds).
  int fused_launch_steps(int64_t b, int64_t full_batches) const;
  void check_finite();  // throws Diverged
  StepGraph* graph_ = nullptr;
  const void* graph_data_ = nullptr;  // the buffers the graph was captured for
  const int* graph_perm_ = nullptr;
  ModelStack* stack_ = nullptr;  // attached: the stack that trains this model, in slot stack_slot_
  int stack_slot_ = 0;
};

}  // namespace vae
