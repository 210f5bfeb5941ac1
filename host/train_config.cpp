#include "train_config.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>

#include "named_enum.h"
#include "runtime/check.h"

namespace vae {

using nlohmann::json;

constexpr Named<Binarize> kBinarizeNames[] = {
    {Binarize::none, "none"}, {Binarize::static_threshold, "static"}, {Binarize::dynamic, "dynamic"}};

const char* binarize_name(Binarize b) { return name_of(kBinarizeNames, b); }
Binarize parse_binarize(const std::string& s) { return parse_named(kBinarizeNames, s, "--binarize"); }

constexpr Named<KlEstimator> kEstimatorNames[] = {{KlEstimator::analytic, "analytic"},
                                                  {KlEstimator::monte_carlo, "monte-carlo"}};
const char* estimator_name(KlEstimator e) { return name_of(kEstimatorNames, e); }
KlEstimator parse_estimator(const std::string& s) { return parse_named(kEstimatorNames, s, "--estimator"); }

constexpr Named<KlGradient> kKlGradientNames[] = {{KlGradient::standard, "standard"}, {KlGradient::dreg, "dreg"}};
const char* kl_gradient_name(KlGradient g) { return name_of(kKlGradientNames, g); }
KlGradient parse_kl_gradient(const std::string& s) { return parse_named(kKlGradientNames, s, "--gradient"); }

constexpr Named<Objective> kObjectiveNames[] = {{Objective::elbo, "elbo"}, {Objective::iwae, "iwae"}};
const char* objective_name(Objective o) { return name_of(kObjectiveNames, o); }
Objective parse_objective(const std::string& s) { return parse_named(kObjectiveNames, s, "--objective"); }

constexpr Named<LrSchedule> kLrScheduleNames[] = {{LrSchedule::constant, "constant"}, {LrSchedule::iwae, "iwae"}};
const char* lr_schedule_name(LrSchedule s) { return name_of(kLrScheduleNames, s); }
LrSchedule parse_lr_schedule(const std::string& s) { return parse_named(kLrScheduleNames, s, "--lr-schedule"); }

float learning_rate_at(const TrainConfig& c, int epoch) {
  if (c.lr_schedule == LrSchedule::constant) return c.hyper.lr;
  int stage = 0;
  for (long long end = 1, len = 1; stage < 7 && epoch >= end; ++stage) {  // stage i spans 3^i epochs
    len *= 3;
    end += len;
  }
  return static_cast<float>(c.hyper.lr * std::pow(10.0, -stage / 7.0));
}

double kl_weight_at(const KlTerm& kl, int64_t step) {
  const double ramp = kl.warmup > 0 ? std::min(1.0, static_cast<double>(step) / static_cast<double>(kl.warmup)) : 1.0;
  return kl.weight * ramp;
}

std::string DataOptions::describe() const {
  std::string s = train_npy.empty() && test_npy.empty() ? data : train_npy + ", " + test_npy;
  if (train_limit > 0 || test_limit > 0) {
    s += " (first " + (train_limit > 0 ? std::to_string(train_limit) : std::string("all")) + " / " +
         (test_limit > 0 ? std::to_string(test_limit) : std::string("all")) + " images)";
  }
  return s;
}

std::string config_to_json(const TrainConfig& c) {
  json j = {
      {"input_dim", c.model.input_dim},
      {"image_height", c.model.image_height},
      {"image_width", c.model.image_width},
      {"hidden", c.model.hidden},
      {"latent", c.model.latent},
      {"activation", activation_name(c.model.activation)},
      {"decoder", decoder_name(c.model.decoder)},
      {"samples", c.samples},
      {"objective", objective_name(c.objective)},
      {"k", c.k},
      {"optimizer", optimizer_name(c.optimizer)},
      {"lr", c.hyper.lr},
      {"beta1", c.hyper.beta1},
      {"beta2", c.hyper.beta2},
      {"eps", c.hyper.eps},
      {"momentum", c.hyper.momentum},
      {"weight_decay", c.hyper.weight_decay},
      {"batch_size", c.batch_size},
      {"epochs", c.epochs},
      {"seed", c.seed},
      {"binarize", binarize_name(c.binarize)},
      {"estimator", estimator_name(c.kl.estimator)},
      {"gradient", kl_gradient_name(c.kl.gradient)},
      {"kl_weight", c.kl.weight},
      {"kl_warmup", c.kl.warmup},
      {"lr_schedule", lr_schedule_name(c.lr_schedule)},
      {"tf32", c.tf32},
      {"data",
       {{"source", c.data.data},
        {"train_npy", c.data.train_npy},
        {"test_npy", c.data.test_npy},
        {"train_limit", c.data.train_limit},
        {"test_limit", c.data.test_limit}}},
  };
  return j.dump();
}

TrainConfig config_from_json(const std::string& text, const std::string& source) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw Error(source + ": config is not valid JSON (" + e.what() + ")");
  }
  TrainConfig c;
  try {
    c.model.input_dim = j.at("input_dim").get<int>();
    c.model.image_height = j.at("image_height").get<int>();
    c.model.image_width = j.at("image_width").get<int>();
    c.model.hidden = j.at("hidden").get<std::vector<int>>();
    c.model.latent = j.at("latent").get<int>();
    c.model.activation = parse_activation(j.at("activation").get<std::string>());
    c.model.decoder = parse_decoder(j.at("decoder").get<std::string>());
    c.samples = j.at("samples").get<int>();
    c.objective = parse_objective(j.value("objective", std::string("elbo")));
    c.k = j.value("k", 1);
    c.optimizer = parse_optimizer(j.at("optimizer").get<std::string>());
    c.hyper.lr = j.at("lr").get<float>();
    c.hyper.beta1 = j.at("beta1").get<float>();
    c.hyper.beta2 = j.at("beta2").get<float>();
    c.hyper.eps = j.at("eps").get<float>();
    c.hyper.momentum = j.at("momentum").get<float>();
    c.hyper.weight_decay = j.at("weight_decay").get<float>();
    c.batch_size = j.at("batch_size").get<int>();
    c.epochs = j.at("epochs").get<int>();
    c.seed = j.at("seed").get<uint64_t>();
    c.binarize = parse_binarize(j.at("binarize").get<std::string>());
    c.tf32 = j.value("tf32", false);
    c.kl.estimator = parse_estimator(j.value("estimator", std::string("analytic")));
    c.kl.gradient = parse_kl_gradient(j.value("gradient", std::string("standard")));
    c.kl.weight = j.value("kl_weight", 1.f);
    c.kl.warmup = j.value("kl_warmup", int64_t{0});
    c.lr_schedule = parse_lr_schedule(j.value("lr_schedule", std::string("constant")));
    const auto& d = j.at("data");
    c.data.data = d.at("source").get<std::string>();
    c.data.train_npy = d.at("train_npy").get<std::string>();
    c.data.test_npy = d.at("test_npy").get<std::string>();
    c.data.train_limit = d.at("train_limit").get<int64_t>();
    c.data.test_limit = d.at("test_limit").get<int64_t>();
  } catch (const json::exception& e) {
    throw Error(source + ": config: " + e.what());
  } catch (const Error& e) {
    throw Error(source + ": config: " + e.what());
  }
  if (c.model.input_dim <= 0 || c.model.latent <= 0 || c.samples <= 0 || c.k <= 0 || c.batch_size <= 0 ||
      static_cast<int64_t>(c.model.image_height) * c.model.image_width != c.model.input_dim) {
    throw Error(source + ": config has inconsistent sizes");
  }
  for (int h : c.model.hidden)
    if (h <= 0) throw Error(source + ": config has a non-positive hidden size");
  if (c.model.latent > kMaxLatent) {
    throw Error(source + ": config has " + std::to_string(c.model.latent) + " latent dimensions, more than " +
                std::to_string(kMaxLatent));
  }
  if (!(c.kl.weight >= 0.f) || c.kl.warmup < 0) throw Error(source + ": config has a negative kl_weight or kl_warmup");
  return c;
}

}  // namespace vae
