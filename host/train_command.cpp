#include "train_command.h"

#include <unistd.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <csignal>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <thread>

#include "atomic_file.h"
#include "png_image.h"
#include "run_folder.h"
#include "runtime/check.h"
#include "runtime/workers.h"

namespace vae {

namespace fs = std::filesystem;

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

// What a run starts from: the flags' configuration, or a checkpoint's with the flags' epoch target.
struct RunStart {
  TrainConfig config;
  Checkpoint resumed;  // with --resume
  std::string out_dir;
  DataOptions data;  // a resumed run reads the data its checkpoint recorded
};

RunStart resolve_start(const TrainRun& run) {
  RunStart s{run.config, {}, run.out_dir, run.data};
  if (run.checkpoint_every < 0) throw Error("--checkpoint-every: expected a number of steps >= 0");
  if (run.keep < 1) throw Error("--keep: expected at least 1");
  if (run.resume.empty()) return s;
  FoundCheckpoint found = find_checkpoint(run.resume);
  for (const auto& why : found.skipped) std::fprintf(stderr, "vae: skipping %s\n", why.c_str());
  s.resumed = std::move(found.checkpoint);
  // The run continues as it was configured; only the epoch target comes from the flags.
  s.config = s.resumed.config;
  s.config.epochs = run.config.epochs;
  s.data = s.config.data;  // the CLI refuses data flags with --resume
  if (s.out_dir.empty()) s.out_dir = run_folder_of(found.path);
  if (s.resumed.epoch >= s.config.epochs) {
    throw Error("--resume: " + found.path + " has already completed " + std::to_string(s.resumed.epoch) +
                " epochs; pass --epochs above that");
  }
  return s;
}

// The training and test images of a run, checked against each other (and a resumed model), the
// model's input shape taken from them on a new run, binarized as configured.
std::pair<Dataset, Dataset> load_run_data(RunStart& s, bool resuming) {
  Dataset train = load_train_data(s.data);
  Dataset test = load_test_data(s.data);
  if (train.dim() != test.dim()) {
    throw Error("data: train images are " + std::to_string(train.height) + "x" + std::to_string(train.width) +
                " but test images are " + std::to_string(test.height) + "x" + std::to_string(test.width));
  }
  if (!resuming) {
    s.config.model.input_dim = train.dim();
    s.config.model.image_height = train.height;
    s.config.model.image_width = train.width;
    s.config.data = s.data;
  } else if (s.config.model.input_dim != train.dim()) {
    throw Error("--resume: the checkpoint's model takes " + std::to_string(s.config.model.input_dim) +
                " inputs but the data has " + std::to_string(train.dim()));
  }
  if (s.config.binarize == Binarize::static_threshold) {
    train.binarize_threshold();
    test.binarize_threshold();
  }
  return {std::move(train), std::move(test)};
}

// The run folder: runs/<timestamp> unless given; a new run refuses one that holds a run; rank 0
// creates it.
void prepare_run_folder(std::string& out_dir, bool resuming, bool root) {
  if (out_dir.empty()) out_dir = "runs/" + timestamp();
  if (!resuming) {
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
}

// An epoch's outputs (rank 0): its metrics line, then prior samples and reconstructions.
void write_epoch_outputs(const std::string& out_dir, const std::string& metrics_path, int epoch, double seconds,
                         const ElboTotals& tr, const ElboTotals& te, Trainer& trainer, const DeviceContext& ctx,
                         const ProcessGroup& pg, const DeviceDataset& test_dev) {
  const TrainConfig& config = trainer.config();
  nlohmann::json m = {{"epoch", epoch},
                      {"step", trainer.step()},
                      {"train_elbo", tr.elbo()},
                      {"train_recon", tr.recon},
                      {"train_kl", tr.kl},
                      {"test_elbo", te.elbo()},
                      {"test_recon", te.recon},
                      {"test_kl", te.kl},
                      {"active_units", te.active_units()},
                      {"kl_per_dimension", te.kl_per_dimension},
                      {"epoch_seconds", seconds},
                      {"samples_per_second", tr.n / seconds},
                      {"device", ctx.description()},
                      {"tf32", ctx.tf32()},
                      {"cuda_graph", trainer.graph_in_use()},
                      {"step_kernel", trainer.fused_step() ? "fused" : "composed"},
                      {"ranks", pg.size()},
                      {"estimator", estimator_name(config.kl.estimator)},
                      {"gradient", kl_gradient_name(config.kl.gradient)},
                      {"kl_weight", kl_weight_at(config.kl, trainer.step())},
                      {"lr", learning_rate_at(config, epoch - 1)}};
  append_line_atomically(metrics_path, m.dump());
  const int H = config.model.image_height, W = config.model.image_width;
  write_png_grid((fs::path(out_dir) / ("samples_" + std::to_string(epoch) + ".png")).string(),
                 trainer.prior_samples(64), 64, H, W, 8);
  const int n = static_cast<int>(std::min<int64_t>(8, test_dev.count));
  write_png_grid((fs::path(out_dir) / ("reconstructions_" + std::to_string(epoch) + ".png")).string(),
                 trainer.reconstructions(test_dev, n), 2 * n, H, W, n);
}

// The target of this rank: its GPU (local rank modulo the node's GPUs), or on the CPU its share of
// the node's cores (unless VAE_CPU_WORKERS says how many each rank takes). The global batch must
// divide evenly among the ranks.
Target place_rank(const World& world, const TrainRun& run, const TrainConfig& config) {
  if (config.batch_size % world.size != 0) {
    throw Error("--batch-size " + std::to_string(config.batch_size) +
                " is the global batch: it must divide evenly among the " + std::to_string(world.size) + " ranks");
  }
  const Target target = resolve_target(run.device);
  if (target == Target::cuda) select_cuda_device(world.local_rank);
  if (target == Target::cpu && world.local_size > 1 && !std::getenv("VAE_CPU_WORKERS")) {
    hx::set_workers(std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / world.local_size));
  }
  return target;
}

}  // namespace

int run_train(const TrainRun& run) {
  // From the start: a signal while the data loads stops the run after its first step.
  const StopSignals signals;
  RunStart start = resolve_start(run);
  TrainConfig& config = start.config;
  const Checkpoint& resumed = start.resumed;
  std::string& out_dir = start.out_dir;
  const DataOptions& data = start.data;
  const bool resuming = !run.resume.empty();

  // Which rank this is, its GPU, and the collectives (before any device context exists).
  const World world = world_from_environment();
  const Target target = place_rank(world, run, config);
  ProcessGroup pg(world, run.dist_backend, target);
  const bool root = pg.rank() == 0;
  try {
    auto [train, test] = load_run_data(start, resuming);
    prepare_run_folder(out_dir, resuming, root);

    DeviceContext ctx(target, config.tf32);
    pg.bind(ctx);
    Trainer trainer(ctx, config);
    trainer.set_process_group(&pg);
    trainer.set_use_graph(run.cuda_graph);
    if (run.detect_anomaly) trainer.set_divergence_check_every(1);
    trainer.set_fused_step(run.fused_step.value_or(fused_step_by_rule(target, config.batch_size, config.model)));
    trainer.set_fused_launch_steps(50, run.checkpoint_every);  // persistent launches end at the checkpoints
    if (resuming) trainer.restore(resumed);
    const DeviceDataset train_dev(ctx, train), test_dev(ctx, test);
    if (!run.quiet && root) print_banner(config, train, data, ctx, pg);

    const std::string metrics_path = (fs::path(out_dir) / "metrics.jsonl").string();
    // One metrics line per completed epoch: a run resumed from an older checkpoint repeats the epochs after it.
    if (root && resuming) keep_metrics_through_epoch(metrics_path, resumed.epoch);

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
        throw Diverged("training diverged in epoch " + std::to_string(epoch) + " (its ELBO is not finite); " +
                       divergence_advice(config.model));
      }
      // The metrics line first, then the checkpoint: a run killed between the two resumes from the
      // older checkpoint, which drops this line and trains the epoch again.
      if (root) write_epoch_outputs(out_dir, metrics_path, epoch, seconds, tr, te, trainer, ctx, pg, test_dev);
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
