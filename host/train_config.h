// A training run's configuration: the model, the optimizer and its schedule, the batch, the KL
// term, the data. Recorded as JSON in every checkpoint (config_to_json), so that a resumed run
// and `vae eval` see the same.
#pragma once

#include <cstdint>
#include <string>

#include "model.h"

namespace vae {

enum class Binarize { none, static_threshold, dynamic };

// The learning rate by epoch. constant: --lr throughout. iwae: Burda et al.'s schedule, --lr ·
// 10^(−i/7) for 3^i epochs, i = 0 .. 7 (3280 epochs in all), then the last rate.
enum class LrSchedule { constant, iwae };
// What training maximises: the ELBO (its L samples averaged), or Burda et al.'s importance-
// weighted bound log (1/K) Σ_k p(x, z_k) / q(z_k|x) over K samples (k in TrainConfig).
enum class Objective { elbo, iwae };
const char* objective_name(Objective o);
Objective parse_objective(const std::string& s);
const char* lr_schedule_name(LrSchedule s);
LrSchedule parse_lr_schedule(const std::string& s);
const char* binarize_name(Binarize b);
Binarize parse_binarize(const std::string& s);
const char* estimator_name(KlEstimator e);
const char* kl_gradient_name(KlGradient g);
KlGradient parse_kl_gradient(const std::string& s);
KlEstimator parse_estimator(const std::string& s);  // analytic | monte-carlo; throws vae::Error
// β at a step: weight · min(1, step / warmup), the value the KL gradient is scaled by.
double kl_weight_at(const KlTerm& kl, int64_t step);
struct TrainConfig;
float learning_rate_at(const TrainConfig& c, int epoch);  // epoch counts from 0

// Where data comes from: --data fashion-mnist|DIR, or --train X.npy --test Y.npy; recorded in
// the checkpoint, so that a resumed run and `vae eval` see the same data.
struct DataOptions {
  std::string data = "fashion-mnist";
  std::string train_npy, test_npy;
  int64_t train_limit = 0, test_limit = 0;  // keep only the first N rows (0: all)
  std::string describe() const;             // for messages
};

struct TrainConfig {
  ModelConfig model;
  int samples = 1;  // L (the ELBO's)
  Objective objective = Objective::elbo;
  int k = 1;  // K, the IWAE objective's importance samples per datapoint
  // z draws per datapoint of a training pass: K for the IWAE objective, else L.
  int draws() const { return objective == Objective::iwae ? k : samples; }
  OptimizerKind optimizer = OptimizerKind::adam;
  OptimizerHyper hyper;
  int batch_size = 128;
  int epochs = 10;
  uint64_t seed = 1;
  Binarize binarize = Binarize::none;
  KlTerm kl;  // estimator (analytic: B, monte-carlo: A), β and its warm-up
  LrSchedule lr_schedule = LrSchedule::constant;
  bool tf32 = false;
  DataOptions data;
};

std::string config_to_json(const TrainConfig& c);
TrainConfig config_from_json(const std::string& json_text, const std::string& source);

}  // namespace vae
