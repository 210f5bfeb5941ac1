// `vae sweep`'s flags: its own (--out, --resume, --models, --zip), then the flags of `vae train`,
// where those that do not change a tensor's shape take lists or ranges (host/sweep_plan.h). Each
// model's flags are parsed and checked by `vae train`'s own parser before anything trains;
// sweep_command.cpp runs the sweep.
#include <filesystem>

#include "model_run.h"  // timestamp
#include "atomic_file.h"
#include "commands.h"
#include "sweep_command.h"
#include "sweep_plan.h"
#include "world.h"

namespace vae {
namespace {

namespace fs = std::filesystem;

bool holds_checkpoint(const std::string& dir) {
  std::error_code ec;
  if (fs::exists(fs::path(dir) / "checkpoint.safetensors", ec)) return true;
  return fs::is_directory(fs::path(dir) / "checkpoints", ec) && !fs::is_empty(fs::path(dir) / "checkpoints", ec);
}

std::string read_text(const std::string& path) {
  std::string text;
  if (!read_whole_file(path, text)) throw Error("cannot read " + path + " (is it a sweep's folder?)");
  return text;
}

class SweepCommand : public Command {
 public:
  void add(CLI::App& app) override {
    cmd_ = app.add_subcommand(
        "sweep",
        "train many models of one architecture in one process: the flags of vae train, where those that keep the "
        "model's shape take lists (--lr 1e-3,3e-4) or integer ranges (--seed 1..8); the sweep is their product");
    cmd_->allow_extras();
    cmd_->add_option("--out", out_, "the sweep's folder (default runs/sweep-<timestamp>): model_<k>/, sweep.jsonl");
    cmd_->add_option("--resume", resume_,
                     "continue a sweep from its folder: each model from its newest checkpoint (with --epochs and the "
                     "run-level flags only)")
        ->check(CLI::ExistingDirectory);
    cmd_->add_option("--models", models_, "N models that differ only in seed: --seed, --seed + 1, ...")
        ->check(CLI::Range(1, kMaxSweepModels));
    cmd_->add_flag("--zip", zip_, "pair the lists element-wise (lists of one value go with every model)");
    cmd_->footer(
        "Lists: --seed, --lr, --kl-weight, --kl-warmup, --estimator, --gradient, --weight-decay, --momentum, "
        "--lr-schedule. Every other flag of vae train takes one value. Under mpirun or srun the ranks split the models "
        "(rank r trains models r, r + R, ...). Exit status: 0 done; 1 error; 2 bad flags; 3 some model diverged (it "
        "stopped alone; sweep.jsonl says where); 75 preempted by SIGUSR1 or SIGTERM, 130 interrupted by SIGINT (every "
        "model's checkpoint written: --resume the sweep's folder).");
  }

  void check() override {
    const std::vector<std::string> args = cmd_->remaining();
    SweepPlan plan;
    std::vector<std::string> run_args;
    if (!resume_.empty()) {
      for (const char* flag : {"--out", "--models", "--zip"})
        if (cmd_->count(flag) > 0) throw CLI::ValidationError(flag, "is fixed by the sweep; not allowed with --resume");
      for (const auto& a : args) {
        const std::string flag = a.substr(0, a.find('='));
        if (flag.rfind("--", 0) == 0 && !run_level_flag(flag))
          throw CLI::ValidationError(flag, "is fixed by the sweep; not allowed with --resume");
      }
      run_args = args;
      out_ = resume_;
      const std::string path = (fs::path(out_) / "sweep.json").string();
      try {
        plan = sweep_plan_from_json(read_text(path), path);
      } catch (const Error& e) {
        throw CLI::ValidationError("--resume", e.what());
      }
    } else {
      plan = plan_sweep(args, models_, zip_);
      run_args = plan.run_args;
      if (out_.empty() && world_from_environment().size > 1)
        throw CLI::ValidationError("--out", "needed with several ranks: each writes its models' folders under it");
      if (out_.empty()) out_ = "runs/sweep-" + timestamp();
    }
    plan_ = plan;
    // Every model's flags through vae train's parser: a bad value stops the sweep before it starts.
    sweep_.out_dir = out_;
    for (const SweepModel& m : plan.models) {
      std::vector<std::string> model_args = m.args;
      model_args.insert(model_args.end(), run_args.begin(), run_args.end());
      TrainRun run = parse_train_flags(model_args);
      run.out_dir = (fs::path(out_) / ("model_" + std::to_string(m.index))).string();
      if (!resume_.empty() && holds_checkpoint(run.out_dir)) run.resume = run.out_dir;
      sweep_.models.push_back(std::move(run));
      sweep_.values.push_back(m.values);
    }
  }

  std::string memory_flags() const override {
    return "--hidden, --latent, --batch-size, --samples or --k, or fewer models (--models, the lists)";
  }

  int run() override {
    if (resume_.empty() && world_from_environment().rank == 0) {  // the plan is rank 0's to write
      const fs::path plan_path = fs::path(out_) / "sweep.json";
      if (fs::exists(plan_path))
        throw Error("--out: '" + out_ +
                    "' already holds a sweep (sweep.json); continue it with --resume or choose "
                    "another --out");
    }
    if (resume_.empty()) sweep_.plan_json = sweep_plan_json(plan_);
    return run_sweep(sweep_);
  }

 private:
  std::string out_, resume_;
  int models_ = 0;
  bool zip_ = false;
  SweepPlan plan_;
  SweepRun sweep_;
};

}  // namespace

std::unique_ptr<Command> make_sweep_command() { return std::make_unique<SweepCommand>(); }

}  // namespace vae
