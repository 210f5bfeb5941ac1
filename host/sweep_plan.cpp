#include "sweep_plan.h"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <set>

#include "runtime/check.h"

namespace vae {

namespace {

const std::set<std::string>& sweepable() {
  static const std::set<std::string> s = {"--seed",     "--lr",       "--kl-weight",   "--kl-warmup",   "--estimator",
                                          "--gradient", "--momentum", "--lr-schedule", "--weight-decay"};
  return s;
}
// Flags whose value is never a list, where a comma or ".." can only be a list by mistake (--hidden's
// commas are its layers; --data, --train and --test are paths).
const std::set<std::string>& single_valued() {
  static const std::set<std::string> s = {
      "--latent",   "--decoder", "--batch-size",  "--samples",    "--activation", "--optimizer",
      "--binarize", "--preset",  "--train-limit", "--test-limit", "--epochs",     "--checkpoint-every",
      "--keep",     "--step",    "--device",      "--objective",  "--k"};
  return s;
}
const std::set<std::string>& flags_without_value() {
  static const std::set<std::string> s = {"--tf32", "--no-graph", "--detect-anomaly", "--quiet", "--no-tensorboard"};
  return s;
}

std::string sweepable_list() {
  std::string out;
  for (const auto& f : sweepable()) out += (out.empty() ? "" : ", ") + f;
  return out;
}

bool parse_integer(const std::string& s, long long& v) {
  if (s.empty()) return false;
  size_t used = 0;
  try {
    v = std::stoll(s, &used);
  } catch (const std::exception&) {
    return false;
  }
  return used == s.size();
}

struct Axis {
  std::string flag;
  std::vector<std::string> values;
};

}  // namespace

bool sweepable_flag(const std::string& flag) { return sweepable().count(flag) > 0; }
bool run_level_flag(const std::string& flag) {
  static const std::set<std::string> s = {
      "--epochs", "--checkpoint-every", "--keep",           "--device",    "--quiet",
      "--step",   "--no-graph",         "--detect-anomaly", "--log-every", "--no-tensorboard"};
  return s.count(flag) > 0;
}

std::vector<std::string> expand_values(const std::string& flag, const std::string& text) {
  const size_t dots = text.find("..");
  if (dots != std::string::npos) {
    long long a = 0, b = 0;
    if (!parse_integer(text.substr(0, dots), a) || !parse_integer(text.substr(dots + 2), b) || a > b)
      throw CLI::ValidationError(flag, "expected a range of integers a..b with a <= b, got '" + text + "'");
    if (b - a >= kMaxSweepModels)
      throw CLI::ValidationError(
          flag, "the range '" + text + "' holds more than " + std::to_string(kMaxSweepModels) + " values");
    std::vector<std::string> out;
    for (long long v = a; v <= b; ++v) out.push_back(std::to_string(v));
    return out;
  }
  std::vector<std::string> out;
  size_t start = 0;
  for (;;) {
    const size_t comma = text.find(',', start);
    const std::string item = text.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    if (item.empty())
      throw CLI::ValidationError(flag,
                                 "expected a value or a list like 1e-3,3e-4 (no empty items), got '" + text + "'");
    out.push_back(item);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

SweepPlan plan_sweep(const std::vector<std::string>& args, int models, bool zip) {
  SweepPlan plan;
  std::vector<std::string> fixed;
  std::vector<Axis> axes;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& token = args[i];
    if (token.rfind("--", 0) != 0) {
      throw CLI::ValidationError(token, "unexpected argument (vae sweep takes flags only; see vae sweep --help)");
    }
    const size_t eq = token.find('=');
    const std::string flag = token.substr(0, eq);
    std::vector<std::string> tokens = {flag};
    std::string value;
    const bool has_value = !flags_without_value().count(flag);
    if (has_value) {
      if (eq != std::string::npos) {
        value = token.substr(eq + 1);
      } else if (i + 1 < args.size() && args[i + 1].rfind("--", 0) != 0) {
        value = args[++i];
      } else {
        throw CLI::ValidationError(flag, "expects a value");
      }
      tokens.push_back(value);
    }
    if (flag == "--dist-backend") {
      throw CLI::ValidationError(flag, "a sweep's ranks train models of their own and sum nothing: not allowed");
    }
    if (flag == "--resume" || flag == "--out") throw CLI::ValidationError(flag, "given twice");
    if (sweepable().count(flag)) {
      if (std::any_of(axes.begin(), axes.end(), [&](const Axis& a) { return a.flag == flag; }))
        throw CLI::ValidationError(flag, "given twice: give its values as one list");
      axes.push_back({flag, expand_values(flag, value)});
      continue;
    }
    if (single_valued().count(flag) &&
        (value.find(',') != std::string::npos || value.find("..") != std::string::npos)) {
      throw CLI::ValidationError(flag, "takes one value in a sweep ('" + value +
                                           "'): a sweep is one architecture; lists are for " + sweepable_list());
    }
    auto& into = run_level_flag(flag) ? plan.run_args : fixed;
    into.insert(into.end(), tokens.begin(), tokens.end());
  }
  if (models > 0) {
    auto seed = std::find_if(axes.begin(), axes.end(), [](const Axis& a) { return a.flag == "--seed"; });
    long long first = 1;
    if (seed != axes.end()) {
      if (seed->values.size() != 1 || !parse_integer(seed->values[0], first))
        throw CLI::ValidationError("--models",
                                   "gives the seeds (--seed, --seed + 1, ...): --seed then takes one integer");
      axes.erase(seed);
    }
    Axis a{"--seed", {}};
    for (int k = 0; k < models; ++k) a.values.push_back(std::to_string(first + k));
    axes.insert(axes.begin(), a);
  }

  // The models: the product (the first flag varies slowest), or the element-wise pairing.
  size_t count = 1;
  if (zip) {
    for (const Axis& a : axes) {
      if (a.values.size() == 1) continue;
      if (count != 1 && a.values.size() != count)
        throw CLI::ValidationError(a.flag, "--zip pairs the lists element-wise: this one has " +
                                               std::to_string(a.values.size()) + " values, another " +
                                               std::to_string(count));
      count = a.values.size();
    }
  } else {
    for (const Axis& a : axes) {
      count *= a.values.size();
      if (count > static_cast<size_t>(kMaxSweepModels))
        throw CLI::ValidationError(a.flag,
                                   "the sweep would train more than " + std::to_string(kMaxSweepModels) + " models");
    }
  }
  for (size_t k = 0; k < count; ++k) {
    SweepModel m;
    m.index = static_cast<int>(k);
    m.args = fixed;
    size_t rest = k;
    std::vector<size_t> pick(axes.size());
    for (size_t a = axes.size(); a-- > 0;) {  // the last axis varies fastest
      const size_t n = axes[a].values.size();
      pick[a] = zip ? (n == 1 ? 0 : k) : rest % n;
      if (!zip) rest /= n;
    }
    for (size_t a = 0; a < axes.size(); ++a) {
      const std::string& v = axes[a].values[pick[a]];
      m.args.push_back(axes[a].flag);
      m.args.push_back(v);
      m.values.emplace_back(axes[a].flag, v);
    }
    plan.models.push_back(std::move(m));
  }
  return plan;
}

std::string sweep_plan_json(const SweepPlan& plan) {
  nlohmann::json models = nlohmann::json::array();
  for (const SweepModel& m : plan.models) {
    nlohmann::json values = nlohmann::json::array();  // [flag, value] pairs, in flag order
    for (const auto& [flag, v] : m.values) values.push_back({flag, v});
    models.push_back({{"model", m.index}, {"args", m.args}, {"values", values}});
  }
  return nlohmann::json{{"format", "vae sweep 1"}, {"models", models}}.dump(1) + "\n";
}

SweepPlan sweep_plan_from_json(const std::string& text, const std::string& source) {
  SweepPlan plan;
  try {
    const nlohmann::json j = nlohmann::json::parse(text);
    if (j.at("format") != "vae sweep 1") throw Error("unknown format");
    for (const auto& m : j.at("models")) {
      SweepModel s;
      s.index = m.at("model").get<int>();
      s.args = m.at("args").get<std::vector<std::string>>();
      for (const auto& pair : m.at("values"))
        s.values.emplace_back(pair.at(0).get<std::string>(), pair.at(1).get<std::string>());
      if (s.index != static_cast<int>(plan.models.size())) throw Error("models out of order");
      plan.models.push_back(std::move(s));
    }
  } catch (const std::exception& e) {
    throw Error(source + ": not a sweep plan (" + e.what() + ")");
  }
  if (plan.models.empty()) throw Error(source + ": not a sweep plan (no models)");
  return plan;
}

}  // namespace vae
