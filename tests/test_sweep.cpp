// `vae sweep`: the plan of a sweep from its flags; model k of a sweep is, bit for bit on the CPU,
// the `vae train` run of model k's flags; a signal and --resume give the uninterrupted sweep; a
// model that diverges stops alone; ranks split the models; bad input is one line and an exit
// status.
#include <signal.h>
#include <stdlib.h>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <CLI/CLI.hpp>

#include <chrono>
#include <random>
#include <thread>

#include "cli_support.h"
#include "sweep_plan.h"
#include "train_command.h"

namespace vae {
namespace {

const char* kData = "--train-limit 1300 --test-limit 150 --batch-size 50 --hidden 48 --latent 6 ";

std::vector<nlohmann::json> jsonl(const fs::path& p) {
  std::vector<nlohmann::json> out;
  std::istringstream in(slurp(p));
  for (std::string line; std::getline(in, line);) out.push_back(nlohmann::json::parse(line));
  return out;
}

Checkpoint checkpoint_of(const fs::path& run) { return load_checkpoint((run / "checkpoint.safetensors").string()); }

std::vector<std::vector<std::string>> args_of(const SweepPlan& p) {
  std::vector<std::vector<std::string>> out;
  for (const auto& m : p.models) out.push_back(m.args);
  return out;
}

TEST(SweepPlan, ProductZipAndModels) {
  // The product: the first list varies slowest; the fixed flags first; run-level flags apart.
  SweepPlan p = plan_sweep({"--hidden", "500,500", "--seed", "1..2", "--epochs", "4", "--lr=1e-3,3e-4,1e-2"}, 0, false);
  EXPECT_EQ(args_of(p), (std::vector<std::vector<std::string>>{
                            {"--hidden", "500,500", "--seed", "1", "--lr", "1e-3"},
                            {"--hidden", "500,500", "--seed", "1", "--lr", "3e-4"},
                            {"--hidden", "500,500", "--seed", "1", "--lr", "1e-2"},
                            {"--hidden", "500,500", "--seed", "2", "--lr", "1e-3"},
                            {"--hidden", "500,500", "--seed", "2", "--lr", "3e-4"},
                            {"--hidden", "500,500", "--seed", "2", "--lr", "1e-2"},
                        }));
  EXPECT_EQ(p.run_args, (std::vector<std::string>{"--epochs", "4"}));
  EXPECT_EQ(p.models[4].values, (std::vector<std::pair<std::string, std::string>>{{"--seed", "2"}, {"--lr", "3e-4"}}));
  // --zip pairs them; a list of one goes with every model.
  p = plan_sweep({"--kl-weight", "0.5,1,2", "--estimator", "monte-carlo", "--lr", "1e-3,2e-3,3e-3"}, 0, true);
  ASSERT_EQ(p.models.size(), 3u);
  EXPECT_EQ(p.models[2].args,
            (std::vector<std::string>{"--kl-weight", "2", "--estimator", "monte-carlo", "--lr", "3e-3"}));
  // --models N: seeds from --seed on.
  p = plan_sweep({"--seed", "7", "--kl-warmup", "0,100"}, 3, false);
  ASSERT_EQ(p.models.size(), 6u);
  EXPECT_EQ(p.models[5].args, (std::vector<std::string>{"--seed", "9", "--kl-warmup", "100"}));
  // The plan survives sweep.json.
  const SweepPlan back = sweep_plan_from_json(sweep_plan_json(p), "sweep.json");
  EXPECT_EQ(args_of(back), args_of(p));
  EXPECT_EQ(back.models[3].values, p.models[3].values);
  // Bad lists name their flag.
  auto error = [](const std::vector<std::string>& args, int models = 0, bool zip = false) {
    try {
      plan_sweep(args, models, zip);
    } catch (const CLI::ValidationError& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  EXPECT_NE(error({"--seed", "5..2"}).find("--seed"), std::string::npos);
  EXPECT_NE(error({"--lr", "1e-3,"}).find("--lr"), std::string::npos);
  EXPECT_NE(error({"--lr", ""}).find("--lr"), std::string::npos);
  EXPECT_NE(error({"--kl-weight", "0.5..2"}).find("range of integers"), std::string::npos);
  EXPECT_NE(error({"--latent", "8,16"}).find("--latent: takes one value"), std::string::npos);
  EXPECT_NE(error({"--batch-size", "32..64"}).find("--batch-size"), std::string::npos);
  EXPECT_NE(error({"--seed", "1,2"}, 4).find("--models"), std::string::npos);
  EXPECT_NE(error({"--lr", "1,2", "--seed", "1..3"}, 0, true).find("--zip"), std::string::npos);
  EXPECT_NE(error({"--dist-backend", "mpi"}).find("--dist-backend"), std::string::npos);
  EXPECT_NE(error({"--seed", "1..5000"}).find("--seed"), std::string::npos);
  EXPECT_EQ(error({"--hidden", "64,32", "--data", "../x..y"}), "(no error)");
}

// Three models that differ in seed, learning rate, β and its warm-up: each model's folder holds
// the checkpoint (parameters, Adam's moments, step) and the metrics of the lone `vae train` with
// its flags; sweep.jsonl has a line per model with its figures and values.
TEST(Sweep, ModelKIsTheLoneRun) {
  const fs::path dir = fresh_dir("sweep_lone");
  const std::string swept = "--seed 1..3 --lr 1e-3,2e-3,5e-4 --kl-weight 1,0.5,2 --kl-warmup 0,0,40 --zip ";
  ASSERT_EQ(run(vae_cli("sweep", std::string(kData) + swept + "--epochs 2 --device cpu --out " + (dir / "s").string()),
                (dir / "log").string()),
            0)
      << slurp(dir / "log");
  const std::vector<std::string> lone[3] = {{"--seed 1 --lr 1e-3 --kl-weight 1 --kl-warmup 0"},
                                            {"--seed 2 --lr 2e-3 --kl-weight 0.5 --kl-warmup 0"},
                                            {"--seed 3 --lr 5e-4 --kl-weight 2 --kl-warmup 40"}};
  const auto lines = jsonl(dir / "s" / "sweep.jsonl");
  ASSERT_EQ(lines.size(), 3u);
  for (int k = 0; k < 3; ++k) {
    const fs::path alone = dir / ("lone" + std::to_string(k));
    ASSERT_EQ(
        run(vae_train(std::string(kData) + lone[k][0] + " --epochs 2 --out " + alone.string()), (dir / "log").string()),
        0)
        << slurp(dir / "log");
    const fs::path model = dir / "s" / ("model_" + std::to_string(k));
    expect_identical(checkpoint_of(alone), checkpoint_of(model));
    const auto a = jsonl(alone / "metrics.jsonl"), m = jsonl(model / "metrics.jsonl");
    ASSERT_EQ(a.size(), 2u);
    ASSERT_EQ(m.size(), 2u);
    for (int e = 0; e < 2; ++e) {
      for (const char* key : {"train_elbo", "test_elbo", "kl_weight", "lr"}) EXPECT_EQ(a[e][key], m[e][key]) << key;
      EXPECT_EQ(m[e]["models"], 3);  // trained as one stack of the three
      EXPECT_EQ(a[e]["models"], 1);
    }
    EXPECT_EQ(lines[k]["model"], k);
    EXPECT_EQ(lines[k]["status"], "done");
    EXPECT_EQ(lines[k]["folder"], "model_" + std::to_string(k));
    EXPECT_EQ(lines[k]["test_elbo"], m[1]["test_elbo"]);
    EXPECT_EQ(lines[k]["train_elbo"], m[1]["train_elbo"]);
    EXPECT_EQ(lines[k]["values"]["seed"], k + 1);
  }
  EXPECT_DOUBLE_EQ(lines[2]["values"]["lr"].get<double>(), 5e-4);
  EXPECT_DOUBLE_EQ(lines[1]["hyperparameters"]["kl_weight"].get<double>(), 0.5);
  // The table, sorted by test ELBO, ends the output.
  const std::string log = slurp(dir / "log");
  EXPECT_NE(log.find("test ELBO  train ELBO"), std::string::npos) << log;
  fs::remove_all(dir);
}

// A signal at a random moment (SIGUSR1, SIGTERM, SIGINT): exit 75 or 130 with every model's
// checkpoint written; --resume of the sweep folder ends where the uninterrupted sweep ends, bit
// for bit, one metrics line per epoch and model.
TEST(Sweep, SignalThenResumeIsTheUninterruptedSweep) {
  const fs::path dir = fresh_dir("sweep_sig");
  const std::string flags = std::string(kData) + "--seed 4..6 --kl-weight 1,0.7 --epochs 3 --device cpu --quiet ";
  ASSERT_EQ(run(vae_cli("sweep", flags + "--out " + (dir / "straight").string()), (dir / "log").string()), 0)
      << slurp(dir / "log");
  std::mt19937 rng(::getpid());
  const int signals[] = {SIGUSR1, SIGTERM, SIGINT};
  int stopped = 0;
  for (int trial = 0; trial < 3; ++trial) {
    const fs::path cut = dir / ("cut" + std::to_string(trial));
    const int code = signal_after(vae_cli("sweep", flags + "--checkpoint-every 9 --out " + cut.string()),
                                  cut / ("model_" + std::to_string(trial)) / "checkpoint.safetensors", signals[trial],
                                  rng, 100, (dir / "log").string());
    const int expected = stop_status_of(signals[trial]);
    ASSERT_TRUE(code == expected || code == 0) << "exit " << code << "\n" << slurp(dir / "log");
    if (code == expected) {
      ++stopped;
      EXPECT_EQ(jsonl(cut / "sweep.jsonl").size(), 6u);
      ASSERT_EQ(run(vae_cli("sweep", "--quiet --epochs 3 --resume " + cut.string()), (dir / "log").string()), 0)
          << slurp(dir / "log");
    }
    for (int k = 0; k < 6; ++k) {
      const std::string model = "model_" + std::to_string(k);
      expect_identical(checkpoint_of(dir / "straight" / model), checkpoint_of(cut / model));
      EXPECT_EQ(metrics_lines(cut / model), 3u) << model;
    }
    const auto lines = jsonl(cut / "sweep.jsonl");
    ASSERT_EQ(lines.size(), 6u);
    for (const auto& l : lines) EXPECT_EQ(l["status"], "done");
  }
  EXPECT_GT(stopped, 0) << "every sweep ended before its signal";
  // Model-defining flags are the sweep's: refused with --resume.
  EXPECT_EQ(run(vae_cli("sweep", "--lr 1e-2 --resume " + (dir / "straight").string()), (dir / "log").string()), 2);
  fs::remove_all(dir);
}

// The model whose learning rate blows up stops alone at its first non-finite step; the others
// train on; exit status 3; sweep.jsonl says which, where and why; a resume leaves it stopped.
TEST(Sweep, ADivergedModelStopsAloneAndTheOthersGoOn) {
  const fs::path dir = fresh_dir("sweep_nan");
  const fs::path out = dir / "s";
  const std::string flags =
      std::string(kData) + "--decoder gaussian --lr 1e-3,1e5,2e-3 --device cpu --quiet --out " + out.string();
  ASSERT_EQ(run(vae_cli("sweep", flags + " --epochs 2"), (dir / "log").string()), kExitDiverged) << slurp(dir / "log");
  auto lines = jsonl(out / "sweep.jsonl");
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[0]["status"], "done");
  EXPECT_EQ(lines[2]["status"], "done");
  EXPECT_EQ(lines[1]["status"], "diverged");
  EXPECT_LT(lines[1]["step"].get<int>(), 26);  // within its first epoch (26 steps)
  EXPECT_NE(lines[1]["reason"].get<std::string>().find("not finite"), std::string::npos);
  EXPECT_EQ(metrics_lines(out / "model_0"), 2u);
  EXPECT_EQ(metrics_lines(out / "model_2"), 2u);
  EXPECT_NE(slurp(dir / "log").find("model 1 diverged"), std::string::npos);
  ASSERT_EQ(run(vae_cli("sweep", "--quiet --epochs 3 --resume " + out.string()), (dir / "log").string()),
            kExitDiverged);
  lines = jsonl(out / "sweep.jsonl");
  EXPECT_EQ(lines[1]["status"], "diverged");
  EXPECT_EQ(lines[0]["epochs"], 3);
  EXPECT_EQ(metrics_lines(out / "model_2"), 3u);
  fs::remove_all(dir);
}

// Under mpirun the ranks split the models (rank r: r, r + R, ...) and end with the one-process
// sweep's checkpoints, bit for bit, with as many CPU workers a process (the CPU's sums are
// split by worker); rank 0 writes sweep.jsonl.
TEST(Sweep, RanksSplitTheModels) {
  SKIP_WITHOUT_MPI();
  const fs::path dir = fresh_dir("sweep_mpi");
  struct OneWorker {  // for the processes this test starts
    OneWorker() { ::setenv("VAE_CPU_WORKERS", "1", 1); }
    ~OneWorker() { ::unsetenv("VAE_CPU_WORKERS"); }
  } one_worker;
  const std::string flags = std::string(kData) + "--seed 1..3 --epochs 1 --device cpu --quiet --out ";
  ASSERT_EQ(run(vae_cli("sweep", flags + (dir / "one").string()), (dir / "log").string()), 0) << slurp(dir / "log");
  std::vector<std::string> argv = vae_cli("sweep", flags + (dir / "two").string());
  ASSERT_EQ(run(mpirun(2, argv), (dir / "log").string()), 0) << slurp(dir / "log");
  for (int k = 0; k < 3; ++k) {
    const std::string model = "model_" + std::to_string(k);
    expect_identical(checkpoint_of(dir / "one" / model), checkpoint_of(dir / "two" / model));
  }
  EXPECT_EQ(jsonl(dir / "two" / "sweep.jsonl").size(), 3u);
  // Without --out the ranks could not agree on a folder.
  EXPECT_EQ(run(mpirun(2, vae_cli("sweep", std::string(kData) + "--seed 1..2 --device cpu")), (dir / "log2").string()),
            2);
  EXPECT_NE(slurp(dir / "log2").find("--out"), std::string::npos) << slurp(dir / "log2");
  fs::remove_all(dir);
}

// Bad input: one line naming the flag, exit 2 (flags) or 1 (the folder, memory); nothing written.
TEST(Sweep, BadInputIsOneLineNamingTheFlag) {
  const fs::path dir = fresh_dir("sweep_bad");
  const std::string out = " --device cpu --out " + (dir / "s").string();
  struct Case {
    std::string flags, named;
    int status;
  };
  const Case cases[] = {
      {"--seed 3..1", "--seed", 2},
      {"--lr 1e-3,,1e-4", "--lr", 2},
      {"--kl-weight", "--kl-weight", 2},
      {"--latent 8,16", "--latent", 2},
      {"--samples 1..3", "--samples", 2},
      {"--models 3 --seed 1..3", "--models", 2},
      {"--lr 1,2 --kl-weight 1,2,3 --zip", "--zip", 2},
      {"--lr 1e-3,-1", "--lr", 2},
      {"--models 4096 --hidden 2048,2048 --latent 512 --train-limit 300 --test-limit 100", "--models", 1},
  };
  for (const Case& c : cases) {
    const fs::path log = dir / "log";
    fs::remove(log);
    EXPECT_EQ(run(vae_cli("sweep", c.flags + out), log.string()), c.status) << c.flags << "\n" << slurp(log);
    const std::string text = slurp(log);
    EXPECT_NE(text.find(c.named), std::string::npos) << c.flags << "\n" << text;
    EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 1) << c.flags << "\n" << text;
    EXPECT_FALSE(fs::exists(dir / "s" / "model_0" / "checkpoint.safetensors")) << c.flags;
    fs::remove_all(dir / "s");
  }
  // --resume of a folder that holds no sweep; a new sweep into one that does.
  fs::create_directories(dir / "empty");
  EXPECT_EQ(run(vae_cli("sweep", "--resume " + (dir / "empty").string()), (dir / "log").string()), 2);
  EXPECT_NE(slurp(dir / "log").find("sweep.json"), std::string::npos) << slurp(dir / "log");
  ASSERT_EQ(run(vae_cli("sweep", std::string(kData) + "--epochs 1 --quiet --seed 1,2" + out), (dir / "log").string()),
            0)
      << slurp(dir / "log");
  EXPECT_EQ(run(vae_cli("sweep", std::string(kData) + "--epochs 1 --quiet" + out), (dir / "log2").string()), 1);
  EXPECT_NE(slurp(dir / "log2").find("already holds a sweep"), std::string::npos) << slurp(dir / "log2");
  fs::remove_all(dir);
}

}  // namespace
}  // namespace vae
