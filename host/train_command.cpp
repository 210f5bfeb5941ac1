#include "train_command.h"

#include <cstdio>

#include "model_run.h"
#include "runtime/check.h"

namespace vae {

namespace {

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
  install_stop_signals();
  RunStart start = resolve_start(run);

  // Which rank this is, its GPU, and the collectives (before any device context exists). The
  // global batch must divide evenly among the ranks.
  const World world = world_from_environment();
  if (start.config.batch_size % world.size != 0) {
    throw Error("--batch-size " + std::to_string(start.config.batch_size) +
                " is the global batch: it must divide evenly among the " + std::to_string(world.size) + " ranks");
  }
  const Target target = place_rank(world, run.device);
  ProcessGroup pg(world, run.dist_backend, target);
  const bool root = pg.rank() == 0;
  try {
    auto [train, test] = load_run_data(start);
    fit_to_data(start, train);
    prepare_run_folder(start.out_dir, start.resuming, root);

    DeviceContext ctx(target, start.config.tf32);
    pg.bind(ctx);
    const DataOptions data = start.data;
    ModelRun model(ctx, run, std::move(start), pg);
    const TrainConfig& config = model.config();
    const std::string& out_dir = model.out_dir();
    const DeviceDataset train_dev(ctx, train), test_dev(ctx, test);
    if (!run.quiet && root) print_banner(config, train, data, ctx, pg);

    auto say_stopped = [&](int request) {
      if (!root || run.quiet) return;
      std::printf("%s at step %lld: checkpoint written to %s; continue with --resume %s\n",
                  request == 2 ? "interrupted" : "preempted", static_cast<long long>(model.trainer().step()),
                  out_dir.c_str(), out_dir.c_str());
      std::fflush(stdout);
    };

    Progress progress(!run.quiet && root);
    while (!model.finished()) {
      const int epoch = model.trainer().epoch() + 1;
      const ModelRun::Epoch e = model.train_epoch(
          train_dev, test_dev, progress, "epoch " + std::to_string(epoch) + "/" + std::to_string(config.epochs));
      if (e.stop) {  // the checkpoint is written
        say_stopped(e.stop);
        return stop_status(e.stop);
      }
      if (root && !run.quiet) {
        char bound[64] = "";
        if (e.test.has_iwae) std::snprintf(bound, sizeof bound, "  test IWAE-%d %.2f", config.k, e.test.iwae);
        std::printf("epoch %d/%d  train ELBO %.2f  test ELBO %.2f (recon %.2f, KL %.2f)%s  %.2f s  %.0f samples/s\n",
                    epoch, config.epochs, e.train.elbo(), e.test.elbo(), e.test.recon, e.test.kl, bound, e.seconds,
                    e.train.n / e.seconds);
        std::fflush(stdout);
      }
      const int stop = pg.agree_max(stop_request());
      if (stop && !model.finished()) {
        say_stopped(stop);
        return stop_status(stop);
      }
    }
    if (root && !run.quiet) {
      std::printf(
          "outputs in %s: metrics.jsonl, checkpoint.safetensors (newest), checkpoints/step_<N>.safetensors, "
          "samples_<epoch>.png, reconstructions_<epoch>.png, events.out.tfevents.* (tensorboard --logdir)\n",
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
