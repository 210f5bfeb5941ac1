#include "sweep_command.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>

#include "atomic_file.h"
#include "model_run.h"
#include "model_stack.h"
#include "runtime/check.h"

namespace vae {

namespace fs = std::filesystem;

namespace {

// One model of this rank: its run (none before it starts, or when it was done or diverged already).
struct SweepSlot {
  int index = 0;
  const TrainRun* run = nullptr;
  RunStart start;
  std::unique_ptr<ModelRun> model;
  bool done = false;  // trained all its epochs, or diverged (its outcome.json says which)
};

std::string outcome_path(const TrainRun& run) { return (fs::path(run.out_dir) / kOutcomeFile).string(); }

nlohmann::json read_json_file(const std::string& path) {
  std::string text;
  if (!read_whole_file(path, text)) return nullptr;
  try {
    return nlohmann::json::parse(text);
  } catch (const std::exception&) {
    return nullptr;  // a sweep.jsonl line then says "unfinished"
  }
}

void write_outcome(const SweepSlot& s, nlohmann::json outcome) {
  outcome["model"] = s.index;
  write_file_atomically(outcome_path(*s.run), outcome.dump() + "\n");
}

// A float as its shortest decimal (1e-3, not 0.0010000000474974513).
double decimal(float v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.7g", static_cast<double>(v));
  return std::strtod(buf, nullptr);
}
// A swept value as JSON: a number where it reads as one, else the text.
nlohmann::json value_json(const std::string& v) {
  char* end = nullptr;
  const long long i = std::strtoll(v.c_str(), &end, 10);
  if (!v.empty() && end && *end == '\0') return i;
  const double d = std::strtod(v.c_str(), &end);
  return !v.empty() && end && *end == '\0' ? nlohmann::json(d) : nlohmann::json(v);
}

// The model's hyperparameters as sweep.jsonl records them (whatever the sweep varied).
nlohmann::json hyperparameters(const TrainConfig& c) {
  return {{"seed", c.seed},
          {"lr", decimal(c.hyper.lr)},
          {"momentum", decimal(c.hyper.momentum)},
          {"weight_decay", decimal(c.hyper.weight_decay)},
          {"lr_schedule", lr_schedule_name(c.lr_schedule)},
          {"kl_weight", decimal(c.kl.weight)},
          {"kl_warmup", c.kl.warmup},
          {"estimator", estimator_name(c.kl.estimator)},
          {"gradient", kl_gradient_name(c.kl.gradient)}};
}

// This rank's models, their data and folders; each model's epoch e before any model's e + 1.
// Returns 0, kExitDiverged when a model diverged, or the stop status of a signal.
int train_models(const SweepRun& sweep, const World& world, Target target) {
  const TrainRun& common = sweep.models.front();
  std::vector<SweepSlot> slots;
  bool diverged = false;  // a model of this rank diverged (now or before a resume)
  for (size_t k = static_cast<size_t>(world.rank); k < sweep.models.size(); k += world.size) {
    SweepSlot s;
    s.index = static_cast<int>(k);
    s.run = &sweep.models[k];
    const nlohmann::json outcome = read_json_file(outcome_path(*s.run));
    if (outcome.is_object() && outcome.value("status", "") == "diverged") {  // it stopped alone, for good
      diverged = true;
      continue;
    }
    s.start = load_start(*s.run);
    if (s.start.resuming && s.start.resumed.epoch >= s.start.config.epochs) continue;  // trained already
    slots.push_back(std::move(s));
  }
  // The plan, once the models are known to fit (rank 0; a new sweep).
  auto write_plan = [&] {
    if (world.rank != 0 || sweep.plan_json.empty()) return;
    std::error_code ec;
    fs::create_directories(sweep.out_dir, ec);
    if (ec || !fs::is_directory(sweep.out_dir)) throw Error("--out: cannot create folder '" + sweep.out_dir + "'");
    write_file_atomically((fs::path(sweep.out_dir) / "sweep.json").string(), sweep.plan_json);
  };
  if (slots.empty()) {
    write_plan();
    return diverged ? kExitDiverged : 0;
  }

  // The data once for all (a sweep is one data set), then the models; the first model's buffers
  // say whether the others fit, before any folder is made.
  auto [train, test] = load_run_data(slots.front().start);
  for (SweepSlot& s : slots) {
    fit_to_data(s.start, train);
    prepare_run_folder(s.start.out_dir, s.start.resuming, false);
  }
  DeviceContext ctx(target, slots.front().start.config.tf32);
  const DeviceDataset train_dev(ctx, train), test_dev(ctx, test);
  ProcessGroup alone(World{}, DistBackend::none, target);  // each model trains on its own
  for (size_t i = 0; i < slots.size(); ++i) {
    const long long before = ctx.allocated_bytes();
    slots[i].model = std::make_unique<ModelRun>(ctx, *slots[i].run, std::move(slots[i].start), alone);
    if (i > 0) continue;
    // A model's cost: its trainer, and its share of the stack (the batched step's buffers and its
    // permutation), measured on a stack of one.
    long long each = ctx.allocated_bytes() - before;
    {
      const long long stack_before = ctx.allocated_bytes();
      ModelStack one(ctx, {&slots[0].model->trainer()});
      each += ctx.allocated_bytes() - stack_before + static_cast<long long>(train.count * sizeof(int));
    }
    const long long rest = each * static_cast<long long>(slots.size()) - (ctx.allocated_bytes() - before);
    const long long available = static_cast<long long>(VAE_CALL(target, memory_available));
    if (rest > available) {
      throw Error("--models: the sweep's " + std::to_string(slots.size()) + " models (on this rank) of " +
                  std::to_string(each >> 20) + " MiB each do not fit the " + std::to_string(available >> 20) +
                  " MiB left on " + ctx.description() + ": at most " +
                  std::to_string(1 + available / std::max(each, 1ll)) + " fit (fewer --models, values, or more ranks)");
    }
  }
  write_plan();
  for (SweepSlot& s : slots) {
    std::string dir = s.model->out_dir();
    prepare_run_folder(dir, true, true);
    fs::remove(outcome_path(*s.run));  // it trains again: its outcome is to come
  }

  const int epochs = common.config.epochs;
  const int total = static_cast<int>(sweep.models.size());
  Progress progress(!common.quiet);
  int status = diverged ? kExitDiverged : 0;
  std::vector<std::pair<double, int>> test_elbo;  // the epoch's, per model that trained it
  auto diverge = [&](SweepSlot& s, const Diverged& d) {
    progress.clear();
    std::fprintf(stderr, "vae sweep: model %d diverged: %s\n", s.index, d.what());
    const Trainer& trainer = s.model->trainer();
    write_outcome(s, {{"status", "diverged"},
                      {"step", d.step() >= 0 ? d.step() : trainer.step()},
                      {"epochs", trainer.epoch()},
                      {"reason", d.what()}});
    s.done = true;
    status = kExitDiverged;
  };
  auto finish = [&](SweepSlot& s, const ModelRun::Epoch& e) {  // an epoch's end: its outcome when the last
    test_elbo.emplace_back(e.test.elbo(), s.index);
    const Trainer& trainer = s.model->trainer();
    if (!s.model->finished()) return;
    write_outcome(s, {{"status", "done"},
                      {"step", trainer.step()},
                      {"epochs", trainer.epoch()},
                      {"train_elbo", e.train.elbo()},
                      {"test_elbo", e.test.elbo()},
                      {"test_recon", e.test.recon},
                      {"test_kl", e.test.kl},
                      {"active_units", e.test.active_units()}});
    s.done = true;
  };
  for (int epoch = 1; epoch <= epochs; ++epoch) {
    const std::string label = "epoch " + std::to_string(epoch) + "/" + std::to_string(epochs);
    test_elbo.clear();
    const auto t0 = std::chrono::steady_clock::now();
    // The models at one position train the epoch as one stack; a model behind them (a sweep
    // killed while it wrote the models' checkpoints one after another) trains it alone.
    std::vector<SweepSlot*> group;
    for (SweepSlot& s : slots) {
      if (s.done || s.model->trainer().epoch() >= epoch) continue;
      const Trainer& t = s.model->trainer();
      const bool with_group = group.empty() || (t.step() == group.front()->model->trainer().step() &&
                                                t.batch_in_epoch() == group.front()->model->trainer().batch_in_epoch());
      if (with_group) {
        group.push_back(&s);
        continue;
      }
      if (const int request = stop_request()) return stop_status(request);  // every model's checkpoint is written
      try {
        const ModelRun::Epoch e =
            s.model->train_epoch(train_dev, test_dev, progress,
                                 label + " model " + std::to_string(s.index + 1) + "/" + std::to_string(total));
        if (e.stop) return stop_status(e.stop);  // its checkpoint is written, and every other's
        finish(s, e);
      } catch (const Diverged& d) {
        diverge(s, d);
      }
    }
    if (!group.empty()) {
      if (const int request = stop_request()) return stop_status(request);
      std::vector<Trainer*> trainers;
      for (SweepSlot* s : group) trainers.push_back(&s->model->trainer());
      ModelStack stack(ctx, trainers);
      std::vector<ModelRun::Epoch> es(group.size());
      for (SweepSlot* s : group) s->model->begin_epoch();
      progress.start();
      const std::string what = label + " " + std::to_string(group.size()) + " models";
      const int B = common.config.batch_size;
      const std::vector<ElboTotals> sums = stack.train_epoch(train_dev, [&](int64_t done, int64_t steps) {
        progress.update(what, done, steps,
                        std::min<int64_t>(done * B, train_dev.count) * static_cast<int64_t>(group.size()));
        bool go = true;
        for (size_t i = 0; i < group.size(); ++i) {
          if (stack.diverged(static_cast<int>(i))) continue;
          try {
            go = group[i]->model->after_step(done, steps, es[i]) && go;
          } catch (const Diverged& d) {  // met by its checkpoint before the stack's next check
            stack.diverge(static_cast<int>(i), d);
          }
        }
        return go;
      });
      int stop = 0;
      for (size_t i = 0; i < group.size(); ++i) {
        if (const Diverged* d = stack.diverged(static_cast<int>(i))) {
          diverge(*group[i], *d);
          continue;
        }
        stop = std::max(stop, es[i].stop);
        es[i].train = sums[i];
      }
      for (size_t i = 0; i < group.size(); ++i) {
        SweepSlot& s = *group[i];
        if (s.done) continue;
        try {
          const ModelRun::Epoch e = s.model->end_epoch(es[i], test_dev, progress);  // a stop: its checkpoint
          if (!stop) finish(s, e);
        } catch (const Diverged& d) {
          diverge(s, d);
        }
      }
      if (stop) return stop_status(stop);  // every model's checkpoint is written
    }
    for (SweepSlot& s : slots) {
      if (s.done && s.model && !s.model->finished()) s.model.reset();  // a diverged model's buffers back
    }
    if (test_elbo.empty() || common.quiet) continue;
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::sort(test_elbo.rbegin(), test_elbo.rend());
    const double median = test_elbo.size() % 2
                              ? test_elbo[test_elbo.size() / 2].first
                              : (test_elbo[test_elbo.size() / 2 - 1].first + test_elbo[test_elbo.size() / 2].first) / 2;
    std::printf("epoch %d/%d  %zu of %d models  test ELBO best %.2f (model %d)  median %.2f  %.2f s%s\n", epoch, epochs,
                test_elbo.size(), total, test_elbo.front().first, test_elbo.front().second, median, seconds,
                world.size > 1 ? (" (rank " + std::to_string(world.rank) + ")").c_str() : "");
    std::fflush(stdout);
  }
  return status;
}

// sweep.jsonl from the models' outcomes, and the table sorted by test ELBO.
void summarize(const SweepRun& sweep, bool print) {
  std::string lines;
  std::vector<std::pair<nlohmann::json, std::string>> rows;  // each line, and its swept flags for the table
  for (size_t k = 0; k < sweep.models.size(); ++k) {
    const TrainRun& run = sweep.models[k];
    nlohmann::json line = read_json_file(outcome_path(run));
    if (!line.is_object()) line = {{"model", k}, {"status", "unfinished"}};
    line["folder"] = fs::path(run.out_dir).filename().string();
    nlohmann::json values = nlohmann::json::object();
    std::string flags;
    for (const auto& [flag, v] : sweep.values[k]) {
      values[flag.substr(2)] = value_json(v);
      flags += (flags.empty() ? "" : "  ") + flag + " " + v;
    }
    line["values"] = values;
    line["hyperparameters"] = hyperparameters(run.config);
    lines += line.dump() + "\n";
    rows.emplace_back(line, flags);
  }
  write_file_atomically((fs::path(sweep.out_dir) / "sweep.jsonl").string(), lines);
  if (!print) return;
  auto elbo = [](const nlohmann::json& r) { return r.value("test_elbo", -1e300); };
  std::stable_sort(rows.begin(), rows.end(),
                   [&](const auto& a, const auto& b) { return elbo(a.first) > elbo(b.first); });
  std::printf("\n%5s  %10s  %10s  %-9s  %s\n", "model", "test ELBO", "train ELBO", "status", "values");
  for (const auto& [r, flags] : rows) {
    const std::string status = r.value("status", "");
    if (status == "done") {
      std::printf("%5d  %10.2f  %10.2f  %-9s  %s\n", r["model"].get<int>(), elbo(r), r.value("train_elbo", 0.0),
                  status.c_str(), flags.c_str());
    } else {
      std::printf("%5d  %10s  %10s  %-9s  %s\n", r["model"].get<int>(), "-", "-", status.c_str(), flags.c_str());
    }
  }
  std::printf("sweep in %s: sweep.jsonl, model_<k>/ (run folders)\n", sweep.out_dir.c_str());
  std::fflush(stdout);
}

}  // namespace

int run_sweep(const SweepRun& sweep) {
  // From the start: a signal while the data loads stops the sweep after its first step.
  install_stop_signals();
  VAE_REQUIRE(!sweep.models.empty() && sweep.values.size() == sweep.models.size(), "run_sweep: no models");
  const TrainRun& common = sweep.models.front();
  const World world = world_from_environment();
  const Target target = place_rank(world, common.device);
  // The ranks meet only on the host, at the end (MPI's barrier; the models sum nothing).
  ProcessGroup ranks(world, world.size > 1 ? DistBackend::mpi : DistBackend::none, Target::cpu);
  int status = 0;
  try {
    status = train_models(sweep, world, target);
  } catch (const std::exception& e) {
    if (ranks.size() > 1) {  // the others would wait at the end: end them all
      std::fprintf(stderr, "vae: rank %d: %s\n", ranks.rank(), e.what());
      std::fflush(stderr);
      ranks.abort_all(1);
    }
    throw;
  }
  status = ranks.agree_max(status);  // a signal's 75 or 130 above a divergence's 3
  if (ranks.rank() == 0) {
    summarize(sweep, !common.quiet);
    if (status == kExitPreempted || status == kExitInterrupted) {
      if (!common.quiet)
        std::printf("stopped: every model's checkpoint is written; continue with --resume %s\n", sweep.out_dir.c_str());
    }
  }
  return status;
}

}  // namespace vae
