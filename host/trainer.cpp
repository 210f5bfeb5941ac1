#include "trainer.h"

#include <unistd.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <csignal>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <thread>

#include "atomic_file.h"
#include "png_image.h"
#include "run_folder.h"
#include "runtime/check.h"
#include "runtime/workers.h"

namespace vae {

namespace fs = std::filesystem;

namespace {

std::string data_dir(const DataOptions& o) {
  if (o.data == "fashion-mnist") {
    std::error_code ec;
    if (!fs::is_directory(kFashionMnistDir, ec)) {
      throw Error(std::string("--data fashion-mnist: ") + kFashionMnistDir +
                  " is missing (install Debian's dataset-fashion-mnist, or run cmake/setup.sh)");
    }
    return kFashionMnistDir;
  }
  std::error_code ec;
  if (!fs::is_directory(o.data, ec)) throw Error("--data: '" + o.data + "' is not a folder (or 'fashion-mnist')");
  return o.data;
}

Dataset load_split(const DataOptions& o, bool train) {
  const std::string npy = train ? o.train_npy : o.test_npy;
  Dataset d;
  if (!o.train_npy.empty() || !o.test_npy.empty()) {
    if (npy.empty()) throw Error(train ? "--train: needed with --test" : "--test: needed with --train");
    d = read_npy(npy);
  } else {
    d = read_idx_images(find_idx_file(data_dir(o), train ? "train-images-idx3-ubyte" : "t10k-images-idx3-ubyte"));
  }
  const int64_t limit = train ? o.train_limit : o.test_limit;
  if (limit > 0) d.truncate(limit);
  return d;
}

}  // namespace

Dataset load_train_data(const DataOptions& o) { return load_split(o, true); }
Dataset load_test_data(const DataOptions& o) { return load_split(o, false); }

DeviceDataset::DeviceDataset(const DeviceContext& ctx, const Dataset& d)
    : type(d.type), count(d.count), dim(d.dim()), bytes(ctx, d.bytes()) {
  bytes.upload(static_cast<const uint8_t*>(d.data()), d.bytes());
}

Trainer::Trainer(const DeviceContext& ctx, const TrainConfig& config)
    : ctx_(ctx),
      config_(config),
      vae_(ctx, config.model, std::max(config.batch_size, 64), config.samples),
      optimizer_(ctx, vae_.layout().total, config.optimizer, config.hyper),
      totals_(ctx, 3),
      train_at_(ctx, 1),
      watch_(ctx, 1) {
  vae_.params().upload(init_parameters(config.model, vae_.layout(), config.seed));
}

Trainer::~Trainer() { ctx_.ops().graph_destroy(graph_); }

void Trainer::set_process_group(ProcessGroup* pg) {
  pg_ = pg && pg->backend() != DistBackend::none ? pg : nullptr;
  if (pg_) fused_step_ = false;
}

void Trainer::set_learning_rate(float lr) {
  if (lr == optimizer_.hyper().lr) return;
  optimizer_.set_learning_rate(lr);
  ctx_.ops().graph_destroy(graph_);
  graph_ = nullptr;
}

BatchSlice Trainer::slice(int batch) const {
  return pg_ ? batch_slice(batch, pg_->rank(), pg_->size()) : BatchSlice{0, batch};
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
    VAE_REQUIRE(ckpt.epoch_totals.size() == 3, "restore: epoch totals");
    resumed_totals_ = (!pg_ || pg_->rank() == 0) ? ckpt.epoch_totals : std::vector<double>(3, 0.0);
  }
}

Checkpoint Trainer::checkpoint() {
  check_finite();  // never a checkpoint of a diverged state (the flag is read every 50 steps)
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

const StepState* Trainer::fixed_steps(int64_t count) {
  if (fixed_at_.size() < static_cast<size_t>(count)) {
    std::vector<StepState> steps(count);
    for (int64_t b = 0; b < count; ++b) steps[b] = {static_cast<uint64_t>(b), b * config_.batch_size};
    fixed_at_ = DeviceBuffer<StepState>(ctx_, steps);
  }
  return fixed_at_.data();
}

// Composed everywhere, by measurement (bench/RESULTS.md, 2026-11-26). On the CPU the composed
// step is 32x faster (OpenBLAS against the fused kernel's tiles under host execution). On an H200
// (bench_step, fp32 µs/step, fused / composed): batch 32 187 / 205, 64 199 / 184, 128 231 / 199,
// 1024 825 / 288, and end to end at batch 128 0.106 against 0.059 s per epoch (the composed step
// replays a CUDA graph); only batch 32 favours the fused step, by 9 %, inside the noise of one
// run. Revisit when the fused kernel has faster tiles and fewer barriers.
bool fused_step_by_rule(Target, int, const ModelConfig&) { return false; }

void Trainer::queue_step(const DeviceDataset& train, int batch) {
  const auto& ops = ctx_.ops();
  const uint64_t seed = config_.seed;
  const BatchSlice s = slice(batch);
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
    optimizer_.set_fused_step_optimizer(a);
    ops.fused_step(a, ctx_.stream());
    return;
  }
  if (s.rows > 0) {  // this rank's rows; the loss is the mean over the global batch
    ops.gather_batch(train.bytes.data(), train.type, perm_.data(), s.rows, train.dim, vae_.input(),
                     config_.binarize == Binarize::dynamic, seed, RandomStream::binarize, train_at_.data(),
                     ctx_.stream());
    vae_.forward(s.rows, {seed, RandomStream::latent_noise, train_at_.data(), config_.kl.estimator}, true, batch);
    vae_.accumulate_totals(s.rows, totals_.data(), train_at_.data(), watch_.data());
    vae_.backward(s.rows, config_.kl, train_at_.data());
  } else {  // a last batch smaller than the world: this rank adds nothing
    vae_.grads().zero();
  }
  if (pg_) pg_->all_reduce_sum(vae_.grads().data(), vae_.grads().size());
  optimizer_.step(vae_.params().data(), vae_.grads().data(), train_at_.data(), batch,
                  watch_.data());  // and moves the step on
}

ElboTotals Trainer::train_epoch(const DeviceDataset& train, const std::function<bool(int64_t, int64_t)>& on_step) {
  VAE_REQUIRE(train.dim == config_.model.input_dim, "train: data dimension differs from the model's");
  const auto& ops = ctx_.ops();
  const int B = config_.batch_size;
  const int64_t batches = (train.count + B - 1) / B;
  if (perm_.size() != static_cast<size_t>(train.count)) perm_ = DeviceBuffer<int>(ctx_, train.count);
  if (graph_ && (graph_data_ != train.bytes.data() || graph_perm_ != perm_.data())) {  // captured for other buffers
    ops.graph_destroy(graph_);
    graph_ = nullptr;
  }
  // The order of an epoch depends on (seed, epoch) only, so a resumed run sees the same order.
  ops.shuffle_permutation(perm_.data(), static_cast<int>(train.count), config_.seed * 0x9E3779B97F4A7C15ull + epoch_,
                          ctx_.stream());
  VAE_REQUIRE(batch_in_epoch_ < batches, "train: the checkpoint's position is past the end of the epoch");
  const int64_t first = batch_in_epoch_;
  if (first > 0 && resumed_totals_.size() == 3) {
    totals_.upload(resumed_totals_);
  } else {
    totals_.zero();
  }
  resumed_totals_.clear();
  // The step moves the offset on by the global batch; each rank reads its slice from there.
  auto step_state = [&](int64_t b, int batch) {
    const BatchSlice s = slice(batch);
    return StepState{static_cast<uint64_t>(step_), b * B + s.begin, s.begin};
  };
  train_at_.upload({step_state(first, static_cast<int>(std::min<int64_t>(B, train.count - first * B)))});
  for (int64_t b = first; b < batches; ++b) {
    const int batch = static_cast<int>(std::min<int64_t>(B, train.count - b * B));
    if (batch != B && b > first) train_at_.upload({step_state(b, batch)});  // a partial last batch's slices
    // Capture from the second full batch on: the first runs eagerly, so that module loading,
    // kernel attributes and cuBLAS's first-call set-up happen outside the capture.
    if (batch == B && b > first && use_graph_ && !graph_ && ops.graph_begin_capture(ctx_.stream())) {
      try {
        queue_step(train, B);
      } catch (...) {  // leave the stream out of capture mode before reporting
        try {
          ops.graph_destroy(ops.graph_end_capture(ctx_.stream()));
        } catch (...) {
        }
        throw;
      }
      graph_ = ops.graph_end_capture(ctx_.stream());
      graph_data_ = train.bytes.data();
      graph_perm_ = perm_.data();
    }
    if (batch == B && graph_) {
      ops.graph_launch(graph_, ctx_.stream());
    } else {
      queue_step(train, batch);  // the partial last batch, and targets without graphs
    }
    ++step_;
    batch_in_epoch_ = b + 1;
    if ((b + 1) % check_every_ == 0 || b + 1 == batches) check_finite();
    if (b + 1 < batches && on_step && !on_step(b + 1, batches)) {
      const std::vector<double> t = totals_.download();  // this rank's, partial
      return {t[0] / std::max(t[2], 1.0), t[1] / std::max(t[2], 1.0), static_cast<int64_t>(t[2])};
    }
  }
  if (pg_) pg_->all_reduce_sum(totals_.data(), totals_.size());
  ++epoch_;
  batch_in_epoch_ = 0;
  const std::vector<double> t = totals_.download();
  if (on_step) on_step(batches, batches);
  return {t[0] / t[2], t[1] / t[2], static_cast<int64_t>(t[2])};
}

void Trainer::check_finite() {
  const NonFinite w = watch_.download()[0];
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
                 " is not finite (NaN or infinite); try a lower --lr" +
                 (config_.model.decoder == DecoderKind::gaussian
                      ? ", or --decoder bernoulli: a Gaussian density grows without bound on pixels that are constant"
                      : ""));
}

ElboTotals Trainer::evaluate(const DeviceDataset& test) {
  VAE_REQUIRE(test.dim == config_.model.input_dim, "eval: data dimension differs from the model's");
  const auto& ops = ctx_.ops();
  const int B = config_.batch_size;
  const int64_t batches = (test.count + B - 1) / B;
  const StepState* at = fixed_steps(batches);
  totals_.zero();
  for (int64_t b = 0; b < batches; ++b) {
    const int batch = static_cast<int>(std::min<int64_t>(B, test.count - b * B));
    ops.gather_batch(test.bytes.data(), test.type, nullptr, batch, test.dim, vae_.input(),
                     config_.binarize == Binarize::dynamic, config_.seed, RandomStream::eval_binarize, at + b,
                     ctx_.stream());
    vae_.forward(batch, {config_.seed, RandomStream::eval_noise, at + b}, false);
    vae_.accumulate_totals(batch, totals_.data());
  }
  const std::vector<double> t = totals_.download();
  return {t[0] / t[2], t[1] / t[2], static_cast<int64_t>(t[2])};
}

std::vector<float> Trainer::prior_samples(int n) {
  VAE_REQUIRE(n > 0 && n <= vae_.max_batch(), "prior_samples: count out of range");
  const int J = config_.model.latent;
  DeviceBuffer<float> zero_heads(ctx_, static_cast<size_t>(n) * 2 * J), z(ctx_, static_cast<size_t>(n) * J),
      kl(ctx_, n), mean(ctx_, static_cast<size_t>(n) * config_.model.input_dim);
  // μ = 0, log σ² = 0: the latent kernel then draws z ~ N(0, I), the prior.
  ctx_.ops().latent_forward(zero_heads.data(), z.data(), kl.data(), n, J, 1, config_.seed, RandomStream::prior,
                            fixed_steps(1), KlEstimator::analytic, ctx_.stream());
  vae_.decode_mean(z.data(), n, mean.data());
  return mean.download();
}

std::vector<float> Trainer::reconstructions(const DeviceDataset& test, int n) {
  n = static_cast<int>(std::min<int64_t>(n, test.count));
  VAE_REQUIRE(n > 0 && n <= vae_.max_batch(), "reconstructions: count out of range");
  const size_t D = config_.model.input_dim;
  const StepState* at = fixed_steps(1);  // the first test batch, drawn as evaluate() draws it
  ctx_.ops().gather_batch(test.bytes.data(), test.type, nullptr, n, test.dim, vae_.input(),
                          config_.binarize == Binarize::dynamic, config_.seed, RandomStream::eval_binarize, at,
                          ctx_.stream());
  vae_.forward(n, {config_.seed, RandomStream::eval_noise, at}, false);
  std::vector<float> images(2 * n * D);
  ctx_.ops().copy_to_host(images.data(), vae_.input(), n * D * sizeof(float), ctx_.stream());
  DeviceBuffer<float> mean(ctx_, n * D);
  vae_.reconstruction_mean(n, mean.data());
  const std::vector<float> rec = mean.download();
  std::copy(rec.begin(), rec.end(), images.begin() + n * D);
  return images;
}

// ---- the train command ----------------------------------------------------------------------

namespace {

std::string timestamp() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  localtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y%m%d-%H%M%S", &tm);
  return buf;
}

class Progress {
 public:
  explicit Progress(bool enabled) : enabled_(enabled && isatty(fileno(stderr))) {}
  void update(int epoch, int epochs, int64_t done, int64_t total, int64_t samples) {
    if (!enabled_) return;
    const auto now = std::chrono::steady_clock::now();
    if (done != total && now - last_ < std::chrono::milliseconds(200)) return;
    last_ = now;
    const double secs = std::chrono::duration<double>(now - start_).count();
    const int width = 30, filled = static_cast<int>(width * done / std::max<int64_t>(total, 1));
    std::fprintf(stderr, "\repoch %d/%d [%s%s] %lld/%lld  %.0f samples/s ", epoch, epochs,
                 std::string(filled, '=').c_str(), std::string(width - filled, ' ').c_str(),
                 static_cast<long long>(done), static_cast<long long>(total), samples / std::max(secs, 1e-9));
    std::fflush(stderr);
  }
  void start() { start_ = last_ = std::chrono::steady_clock::now(); }
  void clear() {
    if (enabled_) std::fprintf(stderr, "\r%*s\r", 90, "");
  }

 private:
  bool enabled_;
  std::chrono::steady_clock::time_point start_, last_;
};

}  // namespace

namespace {

// The signal that asks the run to stop: 1 preempt (SIGUSR1, SIGTERM), 2 interrupt (SIGINT).
volatile std::sig_atomic_t g_stop_request = 0;
extern "C" void on_stop_signal(int sig) { g_stop_request = sig == SIGINT ? 2 : 1; }

class StopSignals {  // handlers for the run's lifetime
 public:
  StopSignals() {
    g_stop_request = 0;
    struct sigaction sa {};
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    for (int i = 0; i < 3; ++i) sigaction(kSignals[i], &sa, &old_[i]);
  }
  ~StopSignals() {
    for (int i = 0; i < 3; ++i) sigaction(kSignals[i], &old_[i], nullptr);
  }

 private:
  static constexpr int kSignals[3] = {SIGUSR1, SIGTERM, SIGINT};
  struct sigaction old_[3]{};
};

void print_banner(const TrainConfig& config, const Dataset& train, const DataOptions& data, const DeviceContext& ctx,
                  const ProcessGroup& pg) {
  std::string h;
  for (int x : config.model.hidden) h += (h.empty() ? "" : "-") + std::to_string(x);
  const std::string ranks = pg.description();
  std::printf("training %d-%s-%d VAE (%s, %s decoder, L=%d) on %lld images from %s; device %s%s\n",
              config.model.input_dim, h.empty() ? "0" : h.c_str(), config.model.latent,
              activation_name(config.model.activation), decoder_name(config.model.decoder), config.samples,
              static_cast<long long>(train.count), data.describe().c_str(), ctx.description().c_str(),
              ranks.empty() ? "" : ("; " + ranks).c_str());
  std::fflush(stdout);
}

}  // namespace

int run_train(const TrainRun& run) {
  // From the start: a signal while the data loads stops the run after its first step.
  const StopSignals signals;
  TrainConfig config = run.config;
  Checkpoint resumed;
  std::string out_dir = run.out_dir;
  if (run.checkpoint_every < 0) throw Error("--checkpoint-every: expected a number of steps >= 0");
  if (run.keep < 1) throw Error("--keep: expected at least 1");
  if (!run.resume.empty()) {
    FoundCheckpoint found = find_checkpoint(run.resume);
    for (const auto& why : found.skipped) std::fprintf(stderr, "vae: skipping %s\n", why.c_str());
    resumed = std::move(found.checkpoint);
    // The run continues as it was configured; only the epoch target comes from the flags.
    const int epochs = config.epochs;
    config = resumed.config;
    config.epochs = epochs;
    if (out_dir.empty()) out_dir = run_folder_of(found.path);
    if (resumed.epoch >= config.epochs) {
      throw Error("--resume: " + found.path + " has already completed " + std::to_string(resumed.epoch) +
                  " epochs; pass --epochs above that");
    }
  }
  // A resumed run reads the data its checkpoint recorded (the CLI refuses data flags with --resume).
  const DataOptions data = run.resume.empty() ? run.data : config.data;

  // Which rank this is, its GPU, and the collectives (before any device context exists).
  const World world = world_from_environment();
  if (config.batch_size % world.size != 0) {
    throw Error("--batch-size " + std::to_string(config.batch_size) +
                " is the global batch: it must divide evenly among the " + std::to_string(world.size) + " ranks");
  }
  const Target target = resolve_target(run.device);
  if (target == Target::cuda) select_cuda_device(world.local_rank);
  // CPU ranks on one node share its cores (unless VAE_CPU_WORKERS says how many each takes).
  if (target == Target::cpu && world.local_size > 1 && !std::getenv("VAE_CPU_WORKERS")) {
    hx::set_workers(std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / world.local_size));
  }
  ProcessGroup pg(world, run.dist_backend, target);
  const bool root = pg.rank() == 0;
  try {
    Dataset train = load_train_data(data);
    Dataset test = load_test_data(data);
    if (train.dim() != test.dim()) {
      throw Error("data: train images are " + std::to_string(train.height) + "x" + std::to_string(train.width) +
                  " but test images are " + std::to_string(test.height) + "x" + std::to_string(test.width));
    }
    if (run.resume.empty()) {
      config.model.input_dim = train.dim();
      config.model.image_height = train.height;
      config.model.image_width = train.width;
      config.data = data;
    } else if (config.model.input_dim != train.dim()) {
      throw Error("--resume: the checkpoint's model takes " + std::to_string(config.model.input_dim) +
                  " inputs but the data has " + std::to_string(train.dim()));
    }
    if (config.binarize == Binarize::static_threshold) {
      train.binarize_threshold();
      test.binarize_threshold();
    }

    if (out_dir.empty()) out_dir = "runs/" + timestamp();
    if (run.resume.empty()) {
      for (const char* f : {"checkpoint.safetensors", "metrics.jsonl"}) {
        if (fs::exists(fs::path(out_dir) / f)) {
          throw Error("--out: '" + out_dir + "' already holds a run (" + f +
                      "); continue it with --resume or choose another --out");
        }
      }
    }
    if (root) {
      std::error_code ec;
      fs::create_directories(out_dir, ec);
      if (ec || !fs::is_directory(out_dir)) throw Error("--out: cannot create folder '" + out_dir + "'");
    }

    DeviceContext ctx(target, config.tf32);
    pg.bind(ctx);
    Trainer trainer(ctx, config);
    trainer.set_process_group(&pg);
    trainer.set_use_graph(run.cuda_graph);
    if (run.detect_anomaly) trainer.set_divergence_check_every(1);
    if (run.step != "auto" && run.step != "fused" && run.step != "composed") {
      throw Error("--step: expected auto, fused or composed, got '" + run.step + "'");
    }
    trainer.set_fused_step(run.step == "fused" ||
                           (run.step == "auto" && fused_step_by_rule(target, config.batch_size, config.model)));
    if (!run.resume.empty()) trainer.restore(resumed);
    const DeviceDataset train_dev(ctx, train), test_dev(ctx, test);
    if (!run.quiet && root) print_banner(config, train, data, ctx, pg);

    const std::string metrics_path = (fs::path(out_dir) / "metrics.jsonl").string();
    // One metrics line per completed epoch: a run resumed from an older checkpoint repeats the epochs after it.
    if (root && !run.resume.empty()) keep_metrics_through_epoch(metrics_path, resumed.epoch);

    // A checkpoint of every rank's state, written by rank 0; a failed write stops every rank.
    auto save = [&] {
      Checkpoint c = trainer.checkpoint();  // collective
      std::string failure;
      if (root) {
        try {
          save_run_checkpoint(out_dir, c, run.keep);
        } catch (const std::exception& e) {
          failure = e.what();
        }
      }
      if (pg.agree_max(failure.empty() ? 0 : 1) != 0) {
        throw Error(failure.empty() ? "rank 0 failed to write a checkpoint (see its message)" : failure);
      }
    };
    auto stop_status = [](int request) { return request == 2 ? kExitInterrupted : kExitPreempted; };
    auto say_stopped = [&](int request) {
      if (!root || run.quiet) return;
      std::printf("%s at step %lld: checkpoint written to %s; continue with --resume %s\n",
                  request == 2 ? "interrupted" : "preempted", static_cast<long long>(trainer.step()), out_dir.c_str(),
                  out_dir.c_str());
      std::fflush(stdout);
    };

    Progress progress(!run.quiet && root);
    int stop_request = 0;
    while (trainer.epoch() < config.epochs) {
      const int epoch = trainer.epoch() + 1;
      trainer.set_learning_rate(learning_rate_at(config, trainer.epoch()));
      progress.start();
      const auto t0 = std::chrono::steady_clock::now();
      const ElboTotals tr = trainer.train_epoch(train_dev, [&](int64_t done, int64_t total) {
        progress.update(epoch, config.epochs, done, total, std::min<int64_t>(done * config.batch_size, train.count));
        if (done == total) return true;  // the epoch's end: decided after its outputs
        stop_request = pg.agree_max(static_cast<int>(g_stop_request));
        if (stop_request) return false;
        if (run.checkpoint_every > 0 && trainer.step() % run.checkpoint_every == 0) save();
        return true;
      });
      if (trainer.batch_in_epoch() > 0) {  // stopped by a signal
        progress.clear();
        save();
        say_stopped(stop_request);
        return stop_status(stop_request);
      }
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      const ElboTotals te = trainer.evaluate(test_dev);
      progress.clear();
      if (!std::isfinite(tr.elbo()) || !std::isfinite(te.elbo())) {
        throw Diverged(
            "training diverged in epoch " + std::to_string(epoch) + " (its ELBO is not finite); try a lower --lr" +
            (config.model.decoder == DecoderKind::gaussian
                 ? ", or --decoder bernoulli: a Gaussian density grows without bound on pixels that are constant"
                 : ""));
      }
      if (root) {
        // The metrics line first, then the checkpoint: a run killed between the two resumes from
        // the older checkpoint, which drops this line and trains the epoch again.
        nlohmann::json m = {{"epoch", epoch},
                            {"step", trainer.step()},
                            {"train_elbo", tr.elbo()},
                            {"train_recon", tr.recon},
                            {"train_kl", tr.kl},
                            {"test_elbo", te.elbo()},
                            {"test_recon", te.recon},
                            {"test_kl", te.kl},
                            {"epoch_seconds", seconds},
                            {"samples_per_second", tr.n / seconds},
                            {"device", ctx.description()},
                            {"tf32", ctx.tf32()},
                            {"cuda_graph", trainer.graph_in_use()},
                            {"step_kernel", trainer.fused_step() ? "fused" : "composed"},
                            {"ranks", pg.size()},
                            {"estimator", estimator_name(config.kl.estimator)},
                            {"kl_weight", kl_weight_at(config.kl, trainer.step())},
                            {"lr", learning_rate_at(config, epoch - 1)}};
        append_line_atomically(metrics_path, m.dump());
        const int H = config.model.image_height, W = config.model.image_width;
        write_png_grid((fs::path(out_dir) / ("samples_" + std::to_string(epoch) + ".png")).string(),
                       trainer.prior_samples(64), 64, H, W, 8);
        const int n = static_cast<int>(std::min<int64_t>(8, test.count));
        write_png_grid((fs::path(out_dir) / ("reconstructions_" + std::to_string(epoch) + ".png")).string(),
                       trainer.reconstructions(test_dev, n), 2 * n, H, W, n);
      }
      save();
      if (root && !run.quiet) {
        std::printf("epoch %d/%d  train ELBO %.2f  test ELBO %.2f (recon %.2f, KL %.2f)  %.2f s  %.0f samples/s\n",
                    epoch, config.epochs, tr.elbo(), te.elbo(), te.recon, te.kl, seconds, tr.n / seconds);
        std::fflush(stdout);
      }
      stop_request = pg.agree_max(static_cast<int>(g_stop_request));
      if (stop_request && trainer.epoch() < config.epochs) {
        say_stopped(stop_request);
        return stop_status(stop_request);
      }
    }
    if (root && !run.quiet) {
      std::printf(
          "outputs in %s: metrics.jsonl, checkpoint.safetensors (newest), checkpoints/step_<N>.safetensors, "
          "samples_<epoch>.png, reconstructions_<epoch>.png\n",
          out_dir.c_str());
    }
    return 0;
  } catch (const Diverged&) {
    throw;  // every rank reached it together
  } catch (const std::exception& e) {
    if (pg.size() > 1) {  // the others may be waiting in a collective: end them all
      std::fprintf(stderr, "vae: rank %d: %s\n", pg.rank(), e.what());
      std::fflush(stderr);
      pg.abort_all(1);
    }
    throw;
  }
}

}  // namespace vae
