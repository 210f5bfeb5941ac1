// `vae train`'s flags: registered, checked (presets, --hidden, --train with --test, nothing that
// --resume would ignore) and parsed into a TrainRun once; train_command.cpp runs it.
#include <algorithm>
#include <sstream>

#include "commands.h"
#include "train_command.h"

namespace vae {
namespace {

std::vector<int> parse_hidden(const std::string& s) {
  std::vector<int> out;
  if (s.empty() || s == "none") return out;
  std::stringstream ss(s);
  std::string item;
  const auto bad = [&] {
    return CLI::ValidationError("--hidden", "expected positive sizes like 400 or 500,500, got '" + s + "'");
  };
  if (s.back() == ',') throw bad();  // getline would drop the empty size after it
  while (std::getline(ss, item, ',')) {
    size_t used = 0;
    int v = 0;
    try {
      v = std::stoi(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != item.size() || v <= 0) throw bad();
    out.push_back(v);
  }
  return out;
}

// --step fused (true) or composed (false).
bool parse_step(const std::string& s) {
  if (s != "fused" && s != "composed") throw Error("--step: expected auto, fused or composed, got '" + s + "'");
  return s == "fused";
}

class TrainCommand : public Command {
 public:
  void add(CLI::App& app) override {
    cmd_ = app.add_subcommand("train", "train a VAE by minibatch SGVB; writes metrics, checkpoints and images");
    add_data_flags(cmd_, run_.data, true);
    cmd_->add_option("--out", run_.out_dir,
                     "output folder (default runs/<timestamp>; on --resume, the checkpoint's folder)");
    cmd_->add_option("--epochs", run_.config.epochs, "epochs to train in all")
        ->check(positive_number())
        ->capture_default_str();
    cmd_->add_option("--batch-size", run_.config.batch_size,
                     "datapoints per step over all ranks (the global batch; each rank takes its share)")
        ->check(CLI::Range(1, 1 << 16))
        ->capture_default_str();
    cmd_->add_option("--lr", run_.config.hyper.lr, "learning rate")->check(positive_number())->capture_default_str();
    cmd_->add_option("--optimizer", optimizer_, "adam, adagrad (the paper's) or sgd (with momentum)")
        ->check(CLI::IsMember({"adam", "adagrad", "sgd"}))
        ->capture_default_str();
    cmd_->add_option("--momentum", run_.config.hyper.momentum, "SGD momentum")
        ->check(CLI::Range(0.0, 1.0))
        ->capture_default_str();
    cmd_->add_option("--weight-decay", run_.config.hyper.weight_decay, "L2 weight decay added to the gradient")
        ->check(non_negative_number())
        ->capture_default_str();
    cmd_->add_option("--seed", run_.config.seed, "seed of initialisation, shuffling and noise")
        ->check(non_negative_integer())
        ->capture_default_str();
    cmd_->add_option(
            "--hidden", hidden_,
            "hidden layer sizes of the encoder (the decoder mirrors them), e.g. 400 or 500,500; none for no hidden "
            "layer")
        ->capture_default_str();
    cmd_->add_option("--activation", activation_, "relu or tanh")
        ->check(CLI::IsMember({"relu", "tanh"}))
        ->capture_default_str();
    cmd_->add_option("--latent", run_.config.model.latent, "latent dimensions")
        ->check(CLI::Range(1, kMaxLatent))
        ->capture_default_str();
    cmd_->add_option("--decoder", decoder_, "bernoulli or gaussian")
        ->check(CLI::IsMember({"bernoulli", "gaussian"}))
        ->capture_default_str();
    cmd_->add_option("--samples", run_.config.samples, "L, samples of z per datapoint")
        ->check(CLI::Range(1, 1024))
        ->capture_default_str();
    cmd_->add_option("--binarize", binarize_, "none, static (threshold at 0.5) or dynamic (resampled every step)")
        ->check(CLI::IsMember({"none", "static", "dynamic"}))
        ->capture_default_str();
    cmd_->add_option(
            "--estimator", estimator_,
            "the KL term: analytic (closed form, the paper's estimator B) or monte-carlo (log q(z|x) - log p(z) "
            "at the drawn z, estimator A)")
        ->check(CLI::IsMember({"analytic", "monte-carlo"}))
        ->capture_default_str();
    cmd_->add_option("--gradient", gradient_,
                     "the encoder's gradient of the KL term: standard, or dreg (the path derivative alone, q's "
                     "parameters held fixed inside log q: 'sticking the landing'; needs --estimator monte-carlo)")
        ->check(CLI::IsMember({"standard", "dreg"}))
        ->capture_default_str();
    cmd_->add_option("--objective", objective_,
                     "what training maximises: elbo (the paper's, over --samples draws) or iwae (Burda et al.'s "
                     "importance-weighted bound over --k draws)")
        ->check(CLI::IsMember({"elbo", "iwae"}))
        ->capture_default_str();
    cmd_->add_option("--k", run_.config.k, "K, the importance samples per datapoint of --objective iwae")
        ->check(CLI::Range(1, 1024))
        ->capture_default_str();
    cmd_->add_option("--kl-weight", run_.config.kl.weight,
                     "beta: the KL term's weight in the loss (the reported ELBO keeps 1)")
        ->check(non_negative_number())
        ->capture_default_str();
    cmd_->add_option("--kl-warmup", run_.config.kl.warmup, "steps over which beta ramps linearly from 0 (0: none)")
        ->check(non_negative_number())
        ->capture_default_str();
    cmd_->add_option("--lr-schedule", lr_schedule_,
                     "constant, or iwae: Burda et al.'s lr * 10^(-i/7) for 3^i epochs, i = 0..7")
        ->check(CLI::IsMember({"constant", "iwae"}))
        ->capture_default_str();
    cmd_->add_option("--preset", preset_,
                     "defaults of a paper's setting, under any flag given: aevb (Kingma & Welling 2013, MNIST) or iwae "
                     "(Burda et al. 2015, one stochastic layer); see the README")
        ->check(CLI::IsMember({"aevb", "iwae"}));
    cmd_->add_flag("--tf32", run_.config.tf32, "let cuBLAS use TF32 tensor cores (GPU only)");
    cmd_->add_flag("--no-graph", no_graph_, "launch the step's kernels one by one instead of replaying a CUDA graph");
    cmd_->add_option("--step", step_,
                     "fused: each training step as one cooperative kernel; composed: GEMMs and kernels; auto: the "
                     "trainer's rule")
        ->check(CLI::IsMember({"auto", "fused", "composed"}))
        ->capture_default_str();
    cmd_->add_flag("--no-tensorboard", no_tensorboard_,
                   "write no TensorBoard event file (events.out.tfevents.*) into the run folder");
    cmd_->add_option("--log-every", run_.log_every,
                     "steps between the event file's step-level scalars (running train ELBO, KL, beta, lr, "
                     "samples/s; 0: none)")
        ->check(non_negative_number())
        ->capture_default_str();
    cmd_->add_flag("--detect-anomaly", run_.detect_anomaly,
                   "check for a non-finite loss or gradient after every step (by default every 50 steps and at the end "
                   "of each epoch)");
    cmd_->add_option("--resume", run_.resume,
                     "continue from a checkpoint file, or from a run folder (its newest checkpoint that loads)")
        ->check(CLI::ExistingPath);
    cmd_->add_option("--checkpoint-every", run_.checkpoint_every,
                     "also write a checkpoint every N steps (0: only at the end of each epoch)")
        ->check(non_negative_number())
        ->capture_default_str();
    cmd_->add_option("--keep", run_.keep, "checkpoints kept in the run folder's checkpoints/ (the newest ones)")
        ->check(positive_number())
        ->capture_default_str();
    cmd_->add_option("--dist-backend", dist_backend_,
                     "data parallel over the ranks mpirun or srun started: auto (nccl on the GPU, mpi on the CPU, none "
                     "for one process), nccl, mpi or none")
        ->check(CLI::IsMember({"auto", "nccl", "mpi", "none"}))
        ->capture_default_str();
    cmd_->footer(
        "Exit status: 0 done; 1 error; 2 bad flags; 3 training diverged (non-finite loss or gradient); 75 preempted by "
        "SIGUSR1 or SIGTERM (checkpoint written: run again with --resume); 130 interrupted by SIGINT (checkpoint "
        "written).");
    cmd_->add_flag("--quiet", run_.quiet, "print nothing but errors");
    add_device_flag(cmd_, device_);
  }

  void check() override {
    apply_preset();
    run_.config.model.hidden = parse_hidden(hidden_);
    if (!run_.data.test_npy.empty() && run_.data.train_npy.empty())
      throw CLI::ValidationError("--test", "needs --train as well");
    if (!run_.data.train_npy.empty() && run_.data.test_npy.empty())
      throw CLI::ValidationError("--train", "needs --test as well");
    if (objective_ == "iwae") {
      // The bound weighs log p(x|z) + log p(z) − log q(z|x) as one: no β, and its own K draws.
      if (run_.config.kl.weight != 1.f || run_.config.kl.warmup != 0)
        throw CLI::ValidationError(
            cmd_->count("--kl-weight") ? "--kl-weight" : "--kl-warmup",
            "the IWAE bound has no KL weight (--objective iwae takes --kl-weight 1, no warm-up)");
      if (run_.config.samples != 1)
        throw CLI::ValidationError("--samples",
                                   "--objective iwae draws --k samples per datapoint; --samples is the ELBO's");
    } else if (cmd_->count("--k") > 0 && run_.config.k != 1) {
      throw CLI::ValidationError("--k", "is the IWAE bound's sample count: it needs --objective iwae");
    }
    if (gradient_ == "dreg" && estimator_ != "monte-carlo" && objective_ != "iwae")
      throw CLI::ValidationError("--gradient",
                                 "dreg differentiates log q(z|x) at the drawn z: it needs --estimator monte-carlo "
                                 "(or --objective iwae)");
    // A resumed run continues as its checkpoint was configured: refuse flags that would be ignored.
    if (!run_.resume.empty()) {
      for (const char* flag :
           {"--hidden",    "--activation", "--latent",       "--decoder",     "--samples",     "--optimizer",
            "--lr",        "--momentum",   "--weight-decay", "--batch-size",  "--seed",        "--binarize",
            "--tf32",      "--data",       "--train",        "--test",        "--train-limit", "--test-limit",
            "--estimator", "--kl-weight",  "--kl-warmup",    "--lr-schedule", "--preset",      "--gradient",
            "--objective", "--k"}) {
        if (cmd_->count(flag) > 0)
          throw CLI::ValidationError(flag, "is fixed by the checkpoint; not allowed with --resume");
      }
    }
  }

  int run() override { return run_train(finish()); }
  std::string memory_flags() const override { return "--hidden, --latent, --batch-size, --samples or --k"; }

  // The run the flags describe (after check()).
  TrainRun finish() {
    run_.config.kl.estimator = parse_estimator(estimator_);
    run_.config.kl.gradient = parse_kl_gradient(gradient_);
    run_.config.objective = parse_objective(objective_);
    run_.config.lr_schedule = parse_lr_schedule(lr_schedule_);
    run_.cuda_graph = !no_graph_;
    run_.tensorboard = !no_tensorboard_;
    run_.device = parse_device(device_);
    run_.dist_backend = parse_dist_backend(dist_backend_);
    if (step_ != "auto") run_.fused_step = parse_step(step_);
    run_.config.model.activation = parse_activation(activation_);
    run_.config.model.decoder = parse_decoder(decoder_);
    run_.config.optimizer = parse_optimizer(optimizer_);
    run_.config.binarize = parse_binarize(binarize_);
    return run_;
  }

 private:
  void apply_preset();

  TrainRun run_;
  std::string hidden_ = "400", activation_ = "relu", decoder_ = "bernoulli", optimizer_ = "adam", binarize_ = "none";
  std::string estimator_ = "analytic", gradient_ = "standard", lr_schedule_ = "constant", preset_;
  std::string objective_ = "elbo";
  std::string device_ = "auto", dist_backend_ = "auto", step_ = "auto";
  bool no_graph_ = false, no_tensorboard_ = false;
};

// --preset: the settings of a paper, each under the flag that would set it (a flag given wins).
//   aevb: Kingma & Welling (2013), section 5 (MNIST): one hidden layer of 500 tanh units a side,
//         Adagrad with a step size from their {0.01, 0.02, 0.1} (0.02), minibatches of M = 100,
//         L = 1, and a weight decay for their prior p(θ) = N(0, I): its gradient θ spread over the
//         N = 60 000 training images of a per-datapoint loss, 1/60 000.
//   iwae: Burda, Grosse & Salakhutdinov (2015), section 5: the one-stochastic-layer model, two
//         hidden layers of 200 tanh units a side and 50 latent units; Adam β = (0.9, 0.999),
//         ε = 1e-4, lr 1e-3 · 10^(−i/7) for 3^i epochs, i = 0 .. 7 (3280 epochs); batches of 20;
//         binarized anew each time an image is used (dynamic binarization); the IWAE objective
//         with k = 5 (--k 1: their VAE baseline, --objective elbo: the ELBO).
void TrainCommand::apply_preset() {
  if (preset_.empty()) return;
  auto unless = [&](const char* flag, auto& field, auto value) {
    if (cmd_->count(flag) == 0) field = value;
  };
  TrainConfig& c = run_.config;
  if (preset_ == "aevb") {
    unless("--activation", activation_, std::string("tanh"));
    unless("--hidden", hidden_, std::string("500"));
    unless("--optimizer", optimizer_, std::string("adagrad"));
    unless("--lr", c.hyper.lr, 0.02f);
    unless("--batch-size", c.batch_size, 100);
    unless("--samples", c.samples, 1);
    unless("--weight-decay", c.hyper.weight_decay, 1.f / 60000.f);
  } else if (preset_ == "iwae") {
    unless("--activation", activation_, std::string("tanh"));
    unless("--hidden", hidden_, std::string("200,200"));
    unless("--latent", c.model.latent, 50);
    unless("--optimizer", optimizer_, std::string("adam"));
    unless("--lr", c.hyper.lr, 1e-3f);
    c.hyper.beta1 = 0.9f;
    c.hyper.beta2 = 0.999f;
    c.hyper.eps = 1e-4f;
    unless("--lr-schedule", lr_schedule_, std::string("iwae"));
    unless("--batch-size", c.batch_size, 20);
    unless("--binarize", binarize_, std::string("dynamic"));
    unless("--epochs", c.epochs, 3280);
    unless("--samples", c.samples, 1);
    unless("--objective", objective_, std::string("iwae"));
    unless("--k", c.k, 5);
  }
}

}  // namespace

std::unique_ptr<Command> make_train_command() { return std::make_unique<TrainCommand>(); }

TrainRun parse_train_flags(const std::vector<std::string>& args) {
  CLI::App app;
  TrainCommand train;
  train.add(app);
  std::vector<std::string> reversed = {"train"};
  reversed.insert(reversed.end(), args.begin(), args.end());
  std::reverse(reversed.begin(), reversed.end());  // CLI11 takes a vector's arguments last first
  app.parse(reversed);
  train.check();
  return train.finish();
}

}  // namespace vae
