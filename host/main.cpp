// The `vae` command line: train, eval, sample, reconstruct, encode, decode, manifold.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <sstream>

#include "png_image.h"
#include "blas_core.h"
#include "runtime/check.h"
#include "manifold.h"
#include "train_command.h"

namespace {

using namespace vae;

std::vector<int> parse_hidden(const std::string& s) {
  std::vector<int> out;
  if (s.empty() || s == "none") return out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    size_t used = 0;
    int v = 0;
    try {
      v = std::stoi(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != item.size() || v <= 0)
      throw CLI::ValidationError("--hidden", "expected positive sizes like 400 or 500,500, got '" + s + "'");
    out.push_back(v);
  }
  return out;
}

// --preset: the settings of a paper, each under the flag that would set it (a flag given wins).
//   aevb: Kingma & Welling (2013), section 5 (MNIST): one hidden layer of 500 tanh units a side,
//         Adagrad with a step size from their {0.01, 0.02, 0.1} (0.02), minibatches of M = 100,
//         L = 1, and a weight decay for their prior p(θ) = N(0, I): its gradient θ spread over the
//         N = 60 000 training images of a per-datapoint loss, 1/60 000.
//   iwae: Burda, Grosse & Salakhutdinov (2015), section 5: the one-stochastic-layer model, two
//         hidden layers of 200 tanh units a side and 50 latent units; Adam β = (0.9, 0.999),
//         ε = 1e-4, lr 1e-3 · 10^(−i/7) for 3^i epochs, i = 0 .. 7 (3280 epochs); batches of 20;
//         binarized anew each time an image is used (dynamic binarization).
void apply_preset(const std::string& preset, CLI::App* train, TrainRun& run, std::string& hidden,
                  std::string& activation, std::string& optimizer, std::string& binarize, std::string& lr_schedule) {
  if (preset.empty()) return;
  auto unless = [&](const char* flag, auto& field, auto value) {
    if (train->count(flag) == 0) field = value;
  };
  TrainConfig& c = run.config;
  if (preset == "aevb") {
    unless("--activation", activation, std::string("tanh"));
    unless("--hidden", hidden, std::string("500"));
    unless("--optimizer", optimizer, std::string("adagrad"));
    unless("--lr", c.hyper.lr, 0.02f);
    unless("--batch-size", c.batch_size, 100);
    unless("--samples", c.samples, 1);
    unless("--weight-decay", c.hyper.weight_decay, 1.f / 60000.f);
  } else if (preset == "iwae") {
    unless("--activation", activation, std::string("tanh"));
    unless("--hidden", hidden, std::string("200,200"));
    unless("--latent", c.model.latent, 50);
    unless("--optimizer", optimizer, std::string("adam"));
    unless("--lr", c.hyper.lr, 1e-3f);
    c.hyper.beta1 = 0.9f;
    c.hyper.beta2 = 0.999f;
    c.hyper.eps = 1e-4f;
    unless("--lr-schedule", lr_schedule, std::string("iwae"));
    unless("--batch-size", c.batch_size, 20);
    unless("--binarize", binarize, std::string("dynamic"));
    unless("--epochs", c.epochs, 3280);
    unless("--samples", c.samples, 1);
  }
}

struct Common {
  std::string device = "auto";
};

void add_device(CLI::App* app, Common& c) {
  app->add_option("--device", c.device, "auto (GPU when present), cpu or cuda")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}))
      ->capture_default_str();
}

void add_data(CLI::App* app, DataOptions& d, bool with_train) {
  app->add_option("--data", d.data,
                  "fashion-mnist (Debian's dataset-fashion-mnist) or a folder of MNIST-format IDX files");
  if (with_train) {
    app->add_option("--train", d.train_npy, "training images as .npy (uint8 or float32 in [0,1]; (N,D) or (N,H,W))");
    app->add_option("--train-limit", d.train_limit, "use only the first N training images")->check(CLI::PositiveNumber);
  }
  app->add_option("--test", d.test_npy, "test images as .npy");
  app->add_option("--test-limit", d.test_limit, "use only the first N test images")->check(CLI::PositiveNumber);
}

struct Loaded {
  Checkpoint ckpt;
  std::unique_ptr<DeviceContext> ctx;
  std::unique_ptr<Trainer> trainer;
};

Loaded load_for_inference(const std::string& path, const std::string& device) {
  Loaded l;
  l.ckpt = load_checkpoint(path);
  l.ctx = std::make_unique<DeviceContext>(resolve_target(device), l.ckpt.config.tf32);
  l.trainer = std::make_unique<Trainer>(*l.ctx, l.ckpt.config);
  l.trainer->restore(l.ckpt);
  return l;
}

// The test data of eval and reconstruct: what the checkpoint recorded, unless flags say otherwise.
DataOptions eval_data(const CLI::App* cmd, const DataOptions& flags, const TrainConfig& config) {
  DataOptions d = config.data;
  if (cmd->count("--data") > 0) {
    d.data = flags.data;
    d.train_npy = d.test_npy = "";
  }
  if (cmd->count("--test") > 0) d.test_npy = flags.test_npy;
  if (cmd->count("--test-limit") > 0) d.test_limit = flags.test_limit;
  return d;
}

}  // namespace

int main(int argc, char** argv) {
  // OpenBLAS chose its kernels when it loaded; if it fell back to slow generic ones on a CPU it
  // does not recognise, start again with the kernel set the CPU's features allow.
  reexec_with_better_openblas_core(argv);
  CLI::App app{"vae: a CUDA-accelerated trainer for variational autoencoders (Kingma & Welling, 2013)"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "vae 0.1.0");

  // train
  TrainRun run;
  Common train_common;
  std::string hidden = "400", activation = "relu", decoder = "bernoulli", optimizer = "adam", binarize = "none";
  CLI::App* train =
      app.add_subcommand("train", "train a VAE by minibatch SGVB; writes metrics, checkpoints and images");
  add_data(train, run.data, true);
  train->add_option("--out", run.out_dir,
                    "output folder (default runs/<timestamp>; on --resume, the checkpoint's folder)");
  train->add_option("--epochs", run.config.epochs, "epochs to train in all")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  train->add_option("--batch-size", run.config.batch_size, "datapoints per minibatch")
      ->check(CLI::Range(1, 1 << 16))
      ->capture_default_str();
  train->add_option("--lr", run.config.hyper.lr, "learning rate")->check(CLI::PositiveNumber)->capture_default_str();
  train->add_option("--optimizer", optimizer, "adam, adagrad (the paper's) or sgd (with momentum)")
      ->check(CLI::IsMember({"adam", "adagrad", "sgd"}))
      ->capture_default_str();
  train->add_option("--momentum", run.config.hyper.momentum, "SGD momentum")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  train->add_option("--weight-decay", run.config.hyper.weight_decay, "L2 weight decay added to the gradient")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  train->add_option("--seed", run.config.seed, "seed of initialisation, shuffling and noise")->capture_default_str();
  train
      ->add_option("--hidden", hidden,
                   "hidden layer sizes of the encoder (the decoder mirrors them), e.g. 400 or 500,500")
      ->capture_default_str();
  train->add_option("--activation", activation, "relu or tanh")
      ->check(CLI::IsMember({"relu", "tanh"}))
      ->capture_default_str();
  train->add_option("--latent", run.config.model.latent, "latent dimensions")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  train->add_option("--decoder", decoder, "bernoulli or gaussian")
      ->check(CLI::IsMember({"bernoulli", "gaussian"}))
      ->capture_default_str();
  train->add_option("--samples", run.config.samples, "L, samples of z per datapoint")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  train->add_option("--binarize", binarize, "none, static (threshold at 0.5) or dynamic (resampled every step)")
      ->check(CLI::IsMember({"none", "static", "dynamic"}))
      ->capture_default_str();
  std::string estimator = "analytic", lr_schedule = "constant", preset;
  train
      ->add_option("--estimator", estimator,
                   "the KL term: analytic (closed form, the paper's estimator B) or monte-carlo (log q(z|x) - log p(z) "
                   "at the drawn z, estimator A)")
      ->check(CLI::IsMember({"analytic", "monte-carlo"}))
      ->capture_default_str();
  train
      ->add_option("--kl-weight", run.config.kl.weight,
                   "beta: the KL term's weight in the loss (the reported ELBO keeps 1)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  train->add_option("--kl-warmup", run.config.kl.warmup, "steps over which beta ramps linearly from 0 (0: none)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  train
      ->add_option("--lr-schedule", lr_schedule,
                   "constant, or iwae: Burda et al.'s lr * 10^(-i/7) for 3^i epochs, i = 0..7")
      ->check(CLI::IsMember({"constant", "iwae"}))
      ->capture_default_str();
  train
      ->add_option("--preset", preset,
                   "defaults of a paper's setting, under any flag given: aevb (Kingma & Welling 2013, MNIST) or iwae "
                   "(Burda et al. 2015, one stochastic layer); see the README")
      ->check(CLI::IsMember({"aevb", "iwae"}));
  train->add_flag("--tf32", run.config.tf32, "let cuBLAS use TF32 tensor cores (GPU only)");
  bool no_graph = false;
  train->add_flag("--no-graph", no_graph, "launch the step's kernels one by one instead of replaying a CUDA graph");
  train
      ->add_option("--step", run.step,
                   "fused: each training step as one cooperative kernel; composed: GEMMs and kernels; auto: the "
                   "trainer's rule")
      ->check(CLI::IsMember({"auto", "fused", "composed"}))
      ->capture_default_str();
  train->add_flag("--detect-anomaly", run.detect_anomaly,
                  "check for a non-finite loss or gradient after every step (by default every 50 steps and at the end "
                  "of each epoch)");
  train
      ->add_option("--resume", run.resume,
                   "continue from a checkpoint file, or from a run folder (its newest checkpoint that loads)")
      ->check(CLI::ExistingPath);
  train
      ->add_option("--checkpoint-every", run.checkpoint_every,
                   "also write a checkpoint every N steps (0: only at the end of each epoch)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  train->add_option("--keep", run.keep, "checkpoints kept in the run folder's checkpoints/ (the newest ones)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  train
      ->add_option("--dist-backend", run.dist_backend,
                   "data parallel over the ranks mpirun or srun started: auto (nccl on the GPU, mpi on the CPU, none "
                   "for one process), nccl, mpi or none")
      ->check(CLI::IsMember({"auto", "nccl", "mpi", "none"}))
      ->capture_default_str();
  train->footer(
      "Exit status: 0 done; 1 error; 2 bad flags; 3 training diverged (non-finite loss or gradient); 75 preempted by "
      "SIGUSR1 or SIGTERM (checkpoint written: run again with --resume); 130 interrupted by SIGINT (checkpoint "
      "written).");
  train->add_flag("--quiet", run.quiet, "print nothing but errors");
  add_device(train, train_common);

  // eval
  std::string eval_ckpt;
  DataOptions eval_flags;
  Common eval_common;
  int iw_samples = 0, iw_chunk = 0;
  CLI::App* eval = app.add_subcommand(
      "eval", "test-set ELBO of a checkpoint (and its importance-weighted log-likelihood), printed as one JSON object");
  eval->add_option("--checkpoint", eval_ckpt, "checkpoint.safetensors")->required()->check(CLI::ExistingFile);
  eval->add_option("--iw-samples", iw_samples,
                   "also estimate log p(x) with K importance samples per test image (Burda et al.; e.g. 5000)")
      ->check(CLI::Range(1, 1 << 20));
  eval->add_option(
          "--iw-chunk", iw_chunk,
          "samples per decoder pass of the estimate (default: as many as keep batch x chunk within 32768 rows)")
      ->check(CLI::PositiveNumber);
  add_data(eval, eval_flags, false);
  add_device(eval, eval_common);

  // encode
  std::string enc_ckpt, enc_out;
  DataOptions enc_flags;
  Common enc_common;
  CLI::App* enc = app.add_subcommand("encode", "q(z|x) of every test (or training) image: mu | log sigma^2 as an NPY");
  enc->add_option("--checkpoint", enc_ckpt, "checkpoint.safetensors")->required()->check(CLI::ExistingFile);
  enc->add_option("--out", enc_out,
                  "output .npy: float32 (N, 2J), mu in the first J columns, log sigma^2 in the last J")
      ->required();
  add_data(enc, enc_flags, true);
  add_device(enc, enc_common);

  // decode
  std::string dec_ckpt, dec_latents, dec_out;
  Common dec_common;
  CLI::App* dec = app.add_subcommand("decode", "decoder means of given latent codes, as an NPY or a PNG grid");
  dec->add_option("--checkpoint", dec_ckpt, "checkpoint.safetensors")->required()->check(CLI::ExistingFile);
  dec->add_option("--latents", dec_latents, "codes: float32 .npy of shape (N, J)")
      ->required()
      ->check(CLI::ExistingFile);
  dec->add_option("--out", dec_out, "output: F.npy (float32 (N, D)) or F.png (an image grid)")->required();
  add_device(dec, dec_common);

  // manifold
  std::string man_ckpt, man_out, man_dims;
  int man_grid = 20;
  Common man_common;
  CLI::App* man = app.add_subcommand(
      "manifold",
      "the learned manifold (the paper's Fig. 4): a grid of codes through the inverse Gaussian CDF, decoded");
  man->add_option("--checkpoint", man_ckpt, "checkpoint.safetensors")->required()->check(CLI::ExistingFile);
  man->add_option("--out", man_out, "output .png")->required();
  man->add_option("--grid", man_grid, "tiles per side")->check(CLI::Range(1, 200))->capture_default_str();
  man->add_option("--dims", man_dims, "the two latent dimensions swept, as i,j (default 0,1; 0,0 for a 1-D latent)");
  add_device(man, man_common);

  // sample
  std::string sample_ckpt, sample_out;
  int sample_n = 64;
  uint64_t sample_seed = 0;
  Common sample_common;
  CLI::App* sample = app.add_subcommand("sample", "decoder means of samples from the prior, as a PNG grid");
  sample->add_option("--checkpoint", sample_ckpt, "checkpoint.safetensors")->required()->check(CLI::ExistingFile);
  sample->add_option("--n", sample_n, "number of samples")->check(CLI::Range(1, 4096))->capture_default_str();
  sample->add_option("--out", sample_out, "output .png")->required();
  sample->add_option("--seed", sample_seed, "noise seed (default: the checkpoint's)");
  add_device(sample, sample_common);

  // reconstruct
  std::string rec_ckpt, rec_out;
  int rec_n = 8;
  DataOptions rec_flags;
  Common rec_common;
  CLI::App* rec = app.add_subcommand("reconstruct", "the first test images above their reconstructions, as a PNG");
  rec->add_option("--checkpoint", rec_ckpt, "checkpoint.safetensors")->required()->check(CLI::ExistingFile);
  rec->add_option("--out", rec_out, "output .png")->required();
  rec->add_option("--n", rec_n, "number of test images")->check(CLI::Range(1, 64))->capture_default_str();
  add_data(rec, rec_flags, false);
  add_device(rec, rec_common);

  try {
    app.parse(argc, argv);
    if (train->parsed()) {
      apply_preset(preset, train, run, hidden, activation, optimizer, binarize, lr_schedule);
      run.config.model.hidden = parse_hidden(hidden);
      if (!run.data.test_npy.empty() && run.data.train_npy.empty())
        throw CLI::ValidationError("--test", "needs --train as well");
      if (!run.data.train_npy.empty() && run.data.test_npy.empty())
        throw CLI::ValidationError("--train", "needs --test as well");
      // A resumed run continues as its checkpoint was configured: refuse flags that would be ignored.
      if (!run.resume.empty()) {
        for (const char* flag :
             {"--hidden",    "--activation", "--latent",       "--decoder",     "--samples",     "--optimizer",
              "--lr",        "--momentum",   "--weight-decay", "--batch-size",  "--seed",        "--binarize",
              "--tf32",      "--data",       "--train",        "--test",        "--train-limit", "--test-limit",
              "--estimator", "--kl-weight",  "--kl-warmup",    "--lr-schedule", "--preset"}) {
          if (train->count(flag) > 0)
            throw CLI::ValidationError(flag, "is fixed by the checkpoint; not allowed with --resume");
        }
      }
    }
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::string msg = e.what();
    std::fprintf(stderr, "vae: %s (see --help)\n", msg.c_str());
    return 2;
  }

  try {
    if (train->parsed()) {
      run.config.kl.estimator = parse_estimator(estimator);
      run.config.lr_schedule = parse_lr_schedule(lr_schedule);
      run.device = train_common.device;
      run.cuda_graph = !no_graph;
      run.config.model.activation = parse_activation(activation);
      run.config.model.decoder = parse_decoder(decoder);
      run.config.optimizer = parse_optimizer(optimizer);
      run.config.binarize = parse_binarize(binarize);
      return run_train(run);
    }
    if (eval->parsed()) {
      Loaded l = load_for_inference(eval_ckpt, eval_common.device);
      const Dataset test = load_eval_data(eval_data(eval, eval_flags, l.ckpt.config), l.ckpt.config);
      const DeviceDataset test_dev(*l.ctx, test);
      const ElboTotals t = l.trainer->evaluate(test_dev);
      nlohmann::json out = {{"test_elbo", t.elbo()},
                            {"test_recon", t.recon},
                            {"test_kl", t.kl},
                            {"n", t.n},
                            {"epoch", l.ckpt.epoch},
                            {"step", l.ckpt.step},
                            {"device", l.ctx->description()}};
      if (iw_samples > 0) {
        const auto t0 = std::chrono::steady_clock::now();
        const Trainer::LogLikelihood ll = l.trainer->log_likelihood(test_dev, iw_samples, iw_chunk);
        const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        out["test_log_likelihood"] = ll.mean;
        out["test_log_likelihood_stderr"] = ll.standard_error;
        out["iw_samples"] = iw_samples;
        out["iw_seconds"] = secs;
      }
      std::printf("%s\n", out.dump().c_str());
      return 0;
    }
    if (enc->parsed()) {
      Loaded l = load_for_inference(enc_ckpt, enc_common.device);
      Dataset data;
      if (enc->count("--train") > 0) {  // an NPY of images to encode
        DataOptions d;
        d.test_npy = enc_flags.train_npy;
        d.test_limit = enc_flags.train_limit;
        data = load_eval_data(d, l.ckpt.config);
      } else {  // the test images (the checkpoint's, or --data / --test)
        data = load_eval_data(eval_data(enc, enc_flags, l.ckpt.config), l.ckpt.config);
      }
      const DeviceDataset dev(*l.ctx, data);
      FloatMatrix codes;
      codes.rows = data.count;
      codes.cols = 2 * l.ckpt.config.model.latent;
      codes.values = l.trainer->encode(dev);
      write_npy_matrix(enc_out, codes);
      std::printf("wrote %s: (%lld, %d) float32, mu | log sigma^2\n", enc_out.c_str(),
                  static_cast<long long>(codes.rows), codes.cols);
      return 0;
    }
    if (dec->parsed()) {
      Loaded l = load_for_inference(dec_ckpt, dec_common.device);
      const FloatMatrix z = read_npy_matrix(dec_latents);
      const int J = l.ckpt.config.model.latent;
      if (z.cols != J) {
        throw Error(dec_latents + ": codes have " + std::to_string(z.cols) +
                    " columns but the model's latent space has " + std::to_string(J) + " dimensions");
      }
      const bool png = std::filesystem::path(dec_out).extension() == ".png";
      if (!png && std::filesystem::path(dec_out).extension() != ".npy")
        throw CLI::ValidationError("--out", "expected a .npy or .png file name, got '" + dec_out + "'");
      const std::vector<float> means = l.trainer->decode(z.values);
      const int H = l.ckpt.config.model.image_height, W = l.ckpt.config.model.image_width;
      if (png) {
        const int n = static_cast<int>(z.rows);
        write_png_grid(dec_out, means, n, H, W, static_cast<int>(std::ceil(std::sqrt(static_cast<double>(n)))));
      } else {
        write_npy_matrix(dec_out, FloatMatrix{"", z.rows, l.ckpt.config.model.input_dim, means});
      }
      std::printf("wrote %s\n", dec_out.c_str());
      return 0;
    }
    if (man->parsed()) {
      Loaded l = load_for_inference(man_ckpt, man_common.device);
      const int J = l.ckpt.config.model.latent;
      int dx = 0, dy = J > 1 ? 1 : 0;
      if (!man_dims.empty()) {
        char comma = 0;
        std::istringstream in(man_dims);
        if (!(in >> dx >> comma >> dy) || comma != ',' || !in.eof() || dx < 0 || dy < 0 || dx >= J || dy >= J ||
            (dx == dy && J > 1)) {
          throw CLI::ValidationError("--dims", "expected two different latent dimensions i,j below " +
                                                   std::to_string(J) + ", got '" + man_dims + "'");
        }
      }
      const std::vector<float> means = l.trainer->decode(manifold_codes(J, man_grid, dx, dy));
      write_png_grid(man_out, means, man_grid * man_grid, l.ckpt.config.model.image_height,
                     l.ckpt.config.model.image_width, man_grid);
      std::printf("wrote %s: %dx%d tiles over latent dimensions %d (across) and %d (down)\n", man_out.c_str(), man_grid,
                  man_grid, dx, dy);
      return 0;
    }
    if (sample->parsed()) {
      Checkpoint ckpt = load_checkpoint(sample_ckpt);
      if (sample->count("--seed")) ckpt.config.seed = sample_seed;
      ckpt.config.batch_size = std::max(ckpt.config.batch_size, sample_n);
      DeviceContext ctx(resolve_target(sample_common.device), ckpt.config.tf32);
      Trainer trainer(ctx, ckpt.config);
      trainer.restore(ckpt);
      const int cols = static_cast<int>(std::ceil(std::sqrt(static_cast<double>(sample_n))));
      write_png_grid(sample_out, trainer.prior_samples(sample_n), sample_n, ckpt.config.model.image_height,
                     ckpt.config.model.image_width, cols);
      std::printf("wrote %s\n", sample_out.c_str());
      return 0;
    }
    if (rec->parsed()) {
      Loaded l = load_for_inference(rec_ckpt, rec_common.device);
      const Dataset test = load_eval_data(eval_data(rec, rec_flags, l.ckpt.config), l.ckpt.config);
      const DeviceDataset test_dev(*l.ctx, test);
      const int n = static_cast<int>(std::min<int64_t>(rec_n, test.count));
      write_png_grid(rec_out, l.trainer->reconstructions(test_dev, n), 2 * n, l.ckpt.config.model.image_height,
                     l.ckpt.config.model.image_width, n);
      std::printf("wrote %s\n", rec_out.c_str());
      return 0;
    }
  } catch (const CLI::ParseError& e) {  // a flag's value found wrong after parsing
    std::fprintf(stderr, "vae: %s (see --help)\n", e.what());
    return 2;
  } catch (const Diverged& e) {
    std::fprintf(stderr, "vae: %s\n", e.what());
    return kExitDiverged;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "vae: %s\n", e.what());
    return 1;
  }
  return 0;
}
