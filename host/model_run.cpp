#include "model_run.h"

#include <unistd.h>

#include <nlohmann/json.hpp>

#include <atomic>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <thread>
#include <vector>

#include "atomic_file.h"
#include "png_image.h"
#include "run_folder.h"
#include "runtime/check.h"
#include "runtime/workers.h"
#include "step_rule.h"

namespace vae {

namespace fs = std::filesystem;

namespace {
// Atomic (lock-free, so a handler may store it): the handler also runs on threads of OpenBLAS's
// pool, which do not block the signals, and two of them may store at once (ThreadSanitizer).
std::atomic<int> g_stop_request{0};
static_assert(std::atomic<int>::is_always_lock_free);
constexpr size_t kSignalStackBytes = 64 << 10;  // a frame with the AVX-512 state is ~3.5 KB
extern "C" void on_stop_signal(int sig) { g_stop_request.store(sig == SIGINT ? 2 : 1, std::memory_order_relaxed); }
}  // namespace

void install_stop_signals() {
  g_stop_request.store(0, std::memory_order_relaxed);
  // The handlers run on an alternate stack of this thread (the worker pool's helpers block these
  // signals: they come here, or to OpenBLAS's threads, which run no JIT code). Not on the
  // interrupted code's: oneDNN's JIT sgemm kernels (Debian 12's 2.6.3; fixed upstream in 3.11)
  // point the stack pointer into a heap buffer, and a handler frame pushed there overwrote the heap
  // (glibc aborted in a later free(); tests/test_gemm.cpp's GemmOnTheCpu test). A stack the thread
  // already has is kept (a sanitizer's: it unmaps its own).
  stack_t current{};
  if (sigaltstack(nullptr, &current) != 0 || (current.ss_flags & SS_DISABLE)) {
    // Never freed: a signal may still arrive while the process exits, after thread-local storage is gone.
    static thread_local char* const own = new char[kSignalStackBytes];
    stack_t ss{};
    ss.ss_sp = own;
    ss.ss_size = kSignalStackBytes;
    VAE_REQUIRE(sigaltstack(&ss, nullptr) == 0, "cannot set up the signal stack");
  }
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sa.sa_flags = SA_ONSTACK;
  sigemptyset(&sa.sa_mask);
  for (int sig : {SIGUSR1, SIGTERM, SIGINT}) sigaction(sig, &sa, nullptr);
}
int stop_request() { return g_stop_request.load(std::memory_order_relaxed); }

std::string timestamp() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  localtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y%m%d-%H%M%S", &tm);
  return buf;
}

RunStart resolve_start(const TrainRun& run) {
  RunStart s = load_start(run);
  if (s.resuming && s.resumed.epoch >= s.config.epochs) {
    throw Error("--resume: " + run.resume + " has already completed " + std::to_string(s.resumed.epoch) +
                (s.resumed.epoch == 1 ? " epoch" : " epochs") + "; pass --epochs above that");
  }
  return s;
}

RunStart load_start(const TrainRun& run) {
  RunStart s{run.config, {}, run.out_dir, run.data, !run.resume.empty()};
  if (run.checkpoint_every < 0) throw Error("--checkpoint-every: expected a number of steps >= 0");
  if (run.keep < 1) throw Error("--keep: expected at least 1");
  if (!s.resuming) return s;
  FoundCheckpoint found = find_checkpoint(run.resume);
  say_skipped(found);
  s.resumed = std::move(found.checkpoint);
  // The run continues as it was configured; only the epoch target comes from the flags.
  s.config = s.resumed.config;
  s.config.epochs = run.config.epochs;
  s.data = s.config.data;  // the CLI refuses data flags with --resume
  if (s.out_dir.empty()) s.out_dir = run_folder_of(found.path);
  return s;
}

std::pair<Dataset, Dataset> load_run_data(const RunStart& s) {
  Dataset train = load_train_data(s.data);
  Dataset test = load_test_data(s.data);
  if (train.dim() != test.dim()) {
    throw Error("data: train images are " + std::to_string(train.height) + "x" + std::to_string(train.width) +
                " but test images are " + std::to_string(test.height) + "x" + std::to_string(test.width));
  }
  if (s.config.binarize == Binarize::static_threshold) {
    train.binarize_threshold();
    test.binarize_threshold();
  }
  return {std::move(train), std::move(test)};
}

void fit_to_data(RunStart& s, const Dataset& train) {
  if (!s.resuming) {
    s.config.model.input_dim = train.dim();
    s.config.model.image_height = train.height;
    s.config.model.image_width = train.width;
    s.config.data = s.data;
  } else if (s.config.model.input_dim != train.dim()) {
    throw Error("--resume: the checkpoint's model takes " + std::to_string(s.config.model.input_dim) +
                " inputs but the data has " + std::to_string(train.dim()));
  }
}

void prepare_run_folder(std::string& out_dir, bool resuming, bool create) {
  if (out_dir.empty()) out_dir = "runs/" + timestamp();
  if (!resuming) {
    for (const char* f : {"checkpoint.safetensors", "metrics.jsonl"}) {
      if (fs::exists(fs::path(out_dir) / f)) {
        throw Error("--out: '" + out_dir + "' already holds a run (" + f +
                    "); continue it with --resume or choose another --out");
      }
    }
  }
  if (create) {
    std::error_code ec;
    fs::create_directories(out_dir, ec);
    if (ec || !fs::is_directory(out_dir)) throw Error("--out: cannot create folder '" + out_dir + "'");
  }
}

Target place_rank(const World& world, const std::optional<Target>& device) {
  const Target target = resolve_target(device);
  if (target == Target::cuda) select_cuda_device(world.local_rank);
  if (target == Target::cpu && world.local_size > 1 && !hx::workers_set_by_environment()) {
    hx::set_workers(std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / world.local_size));
  }
  return target;
}

Progress::Progress(bool enabled) : enabled_(enabled && isatty(fileno(stderr))) {}
void Progress::start() { start_ = last_ = std::chrono::steady_clock::now(); }
void Progress::update(const std::string& what, int64_t done, int64_t total, int64_t samples) {
  if (!enabled_) return;
  const auto now = std::chrono::steady_clock::now();
  if (done != total && now - last_ < std::chrono::milliseconds(200)) return;
  last_ = now;
  const double secs = std::chrono::duration<double>(now - start_).count();
  const int width = 30, filled = static_cast<int>(width * done / std::max<int64_t>(total, 1));
  std::fprintf(stderr, "\r%s [%s%s] %lld/%lld  %.0f samples/s ", what.c_str(), std::string(filled, '=').c_str(),
               std::string(width - filled, ' ').c_str(), static_cast<long long>(done), static_cast<long long>(total),
               samples / std::max(secs, 1e-9));
  std::fflush(stderr);
}
void Progress::clear() {
  if (enabled_) std::fprintf(stderr, "\r%*s\r", 110, "");
}

ModelRun::ModelRun(const DeviceContext& ctx, const TrainRun& run, RunStart start, ProcessGroup& pg)
    : ctx_(ctx), run_(run), start_(std::move(start)), pg_(pg), trainer_(ctx, start_.config) {
  trainer_.set_process_group(&pg_);
  trainer_.set_use_graph(run.cuda_graph);
  if (run.detect_anomaly) trainer_.set_divergence_check_every(1);
  // --step fused|composed, or auto: the rule's table (host/step_rule.h), measured per card, precision and batch.
  bool fused = false;
  if (run.fused_step) {
    fused = *run.fused_step;
    step_rule_ = fused ? "--step fused" : "--step composed";
  } else {
    const StepChoice c = step_by_rule(step_rule_table(), ctx.card(), ctx.tf32(), start_.config.batch_size);
    fused = c.fused;
    if (fused) trainer_.set_fused_variant(c.variant);
    step_rule_ = c.why;
  }
  trainer_.set_fused_step(fused);
  step_rule_fused_ = fused;
  trainer_.set_fused_launch_steps(50, run.checkpoint_every);  // persistent launches end at the checkpoints
  if (start_.resuming) trainer_.restore(start_.resumed);
  metrics_path_ = (fs::path(start_.out_dir) / "metrics.jsonl").string();
  // One metrics line per completed epoch: a run resumed from an older checkpoint repeats the epochs after it.
  if (pg_.rank() == 0 && start_.resuming) keep_metrics_through_epoch(metrics_path_, start_.resumed.epoch);
}

std::string ModelRun::step_rule() const {
  if (step_rule_fused_ && !trainer_.fused_step())
    return "composed: outside the fused step's limits (hidden layers, ranks, objective, a stack of models); " +
           step_rule_;
  return step_rule_;
}

void ModelRun::open_events() {
  // A new event file per (re)start; on resume TensorBoard drops what the older files hold from
  // the resumed step on.
  if (pg_.rank() == 0 && run_.tensorboard && !events_) {
    events_ = std::make_unique<EventWriter>(start_.out_dir, start_.resuming ? start_.resumed.step + 1 : -1);
  }
}

void ModelRun::log_step(double samples_per_second) {
  const int64_t step = trainer_.step();
  if (!events_ || run_.log_every <= 0 || step / run_.log_every == logged_at_ / run_.log_every) return;
  logged_at_ = step;
  const ElboTotals t = trainer_.epoch_totals_so_far();
  const TrainConfig& c = start_.config;
  events_->scalar("step/train_elbo", step, t.elbo());
  events_->scalar("step/train_recon", step, t.recon);
  events_->scalar("step/train_kl", step, t.kl);
  if (t.has_iwae) events_->scalar("step/train_objective", step, t.iwae);
  events_->scalar("step/grad_norm", step, trainer_.last_gradient_norm());
  events_->scalar("step/update_norm", step, trainer_.last_update_norm());
  events_->scalar("step/kl_weight", step, kl_weight_at(c.kl, step));
  events_->scalar("step/lr", step, learning_rate_at(c, trainer_.epoch()));
  events_->scalar("step/samples_per_second", step, samples_per_second);
}

void ModelRun::save() {
  Checkpoint c = trainer_.checkpoint();  // collective
  std::string failure;
  if (pg_.rank() == 0) {
    try {
      save_run_checkpoint(start_.out_dir, c, run_.keep);
    } catch (const std::exception& e) {
      failure = e.what();
    }
  }
  if (pg_.agree_max(failure.empty() ? 0 : 1) != 0) {
    throw Error(failure.empty() ? "rank 0 failed to write a checkpoint (see its message)" : failure);
  }
}

void ModelRun::begin_epoch() {
  trainer_.set_learning_rate(learning_rate_at(start_.config, trainer_.epoch()));
  open_events();
  epoch_start_ = std::chrono::steady_clock::now();
  first_batch_ = trainer_.batch_in_epoch();
}

bool ModelRun::after_step(int64_t done, int64_t total, Epoch& e) {
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - epoch_start_).count();
  log_step(static_cast<double>(done - first_batch_) * start_.config.batch_size / std::max(secs, 1e-9));
  if (done == total) return true;  // the epoch's end: decided after its outputs
  e.stop = pg_.agree_max(stop_request());
  if (e.stop) return false;
  if (run_.checkpoint_every > 0 && trainer_.step() % run_.checkpoint_every == 0) save();
  return true;
}

ModelRun::Epoch ModelRun::end_epoch(Epoch e, const DeviceDataset& test, Progress& progress) {
  const TrainConfig& config = start_.config;
  if (trainer_.batch_in_epoch() > 0) {  // stopped by a signal
    progress.clear();
    save();
    return e;
  }
  const int epoch = trainer_.epoch();
  e.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - epoch_start_).count();
  std::vector<float> heads;  // q(z|x) over the test set, for the event file's histograms
  e.test = trainer_.evaluate(test, events_ ? &heads : nullptr);
  progress.clear();
  if (!std::isfinite(e.train.elbo()) || !std::isfinite(e.test.elbo())) {
    throw Diverged("training diverged in epoch " + std::to_string(epoch) + " (its ELBO is not finite); " +
                       divergence_advice(config.model),
                   trainer_.step());
  }
  // The metrics line first, then the checkpoint: a run killed between the two resumes from the
  // older checkpoint, which drops this line and trains the epoch again.
  if (pg_.rank() == 0) write_epoch_outputs(epoch, e, test, heads);
  save();
  return e;
}

ModelRun::Epoch ModelRun::train_epoch(const DeviceDataset& train, const DeviceDataset& test, Progress& progress,
                                      const std::string& label) {
  Epoch e;
  begin_epoch();
  progress.start();
  e.train = trainer_.train_epoch(train, [&](int64_t done, int64_t total) {
    progress.update(label, done, total, std::min<int64_t>(done * start_.config.batch_size, train.count));
    return after_step(done, total, e);
  });
  return end_epoch(e, test, progress);
}

// An epoch's outputs (rank 0): its metrics line, then prior samples and reconstructions.
void ModelRun::write_epoch_outputs(int epoch, const Epoch& e, const DeviceDataset& test,
                                   const std::vector<float>& heads) {
  const TrainConfig& config = start_.config;
  const ElboTotals &tr = e.train, &te = e.test;
  nlohmann::json m = {{"epoch", epoch},
                      {"step", trainer_.step()},
                      {"train_elbo", tr.elbo()},
                      {"train_recon", tr.recon},
                      {"train_kl", tr.kl},
                      {"test_elbo", te.elbo()},
                      {"test_recon", te.recon},
                      {"test_kl", te.kl},
                      {"active_units", te.active_units()},
                      {"mutual_information", te.mutual_information},
                      {"kl_per_dimension", te.kl_per_dimension},
                      {"epoch_seconds", e.seconds},
                      {"samples_per_second", tr.n / e.seconds},
                      {"device", ctx_.description()},
                      {"tf32", ctx_.tf32()},
                      {"cuda_graph", trainer_.graph_in_use()},
                      {"step_kernel", trainer_.fused_step() ? "fused" : "composed"},
                      {"step_rule", step_rule()},
                      {"models", trainer_.stacked_models()},
                      {"ranks", pg_.size()},
                      {"objective", objective_name(config.objective)},
                      {"k", config.objective == Objective::iwae ? config.k : 1},
                      {"train_objective", tr.objective()},
                      {"test_objective", te.objective()},
                      {"estimator", estimator_name(config.kl.estimator)},
                      {"gradient", kl_gradient_name(config.kl.gradient)},
                      {"kl_weight", kl_weight_at(config.kl, trainer_.step())},
                      {"lr", learning_rate_at(config, epoch - 1)}};
  append_line_atomically(metrics_path_, m.dump());
  const std::string& dir = start_.out_dir;
  const int H = config.model.image_height, W = config.model.image_width;
  const PngGrid samples = write_png_grid((fs::path(dir) / ("samples_" + std::to_string(epoch) + ".png")).string(),
                                         trainer_.prior_samples(64), 64, H, W, 8);
  const int n = static_cast<int>(std::min<int64_t>(8, test.count));
  const PngGrid recons =
      write_png_grid((fs::path(dir) / ("reconstructions_" + std::to_string(epoch) + ".png")).string(),
                     trainer_.reconstructions(test, n), 2 * n, H, W, n);
  if (!events_) return;
  // The same figures for TensorBoard at the epoch's last step: "epoch/<metrics key>", the two
  // images, and μ and log σ² of q(z|x) over the test set.
  const int64_t step = trainer_.step();
  for (const auto& [key, value] : m.items()) {
    if (value.is_number()) events_->scalar("epoch/" + key, step, value.get<double>());
  }
  events_->image("samples", step, samples.bytes, samples.width, samples.height);
  events_->image("reconstructions", step, recons.bytes, recons.width, recons.height);
  const size_t J = static_cast<size_t>(config.model.latent);
  std::vector<float> mu, logvar;
  mu.reserve(heads.size() / 2);
  logvar.reserve(heads.size() / 2);
  for (size_t i = 0; i < heads.size(); ++i) (i % (2 * J) < J ? mu : logvar).push_back(heads[i]);
  events_->histogram("posterior/mu", step, mu);
  events_->histogram("posterior/logvar", step, logvar);
}

}  // namespace vae
