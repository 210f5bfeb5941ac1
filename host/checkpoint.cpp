#include "checkpoint.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>

#include "named_enum.h"
#include "runtime/check.h"
#include "safetensors.h"
#include "model.h"

namespace vae {

using nlohmann::json;

void save_checkpoint(const std::string& path, const Checkpoint& ckpt) {
  const ParamLayout layout = make_layout(ckpt.config.model);
  VAE_REQUIRE(ckpt.params.size() == layout.total, "checkpoint: parameter count");
  const auto names = optimizer_state_names(ckpt.config.optimizer);
  VAE_REQUIRE(ckpt.optimizer_state.size() == names.size(), "checkpoint: optimizer state count");
  SafeTensorsFile f;
  f.metadata = {{"format", "vae-trainer"},
                {"format_version", std::to_string(kCheckpointFormatVersion)},
                {"config", config_to_json(ckpt.config)},
                {"step", std::to_string(ckpt.step)},
                {"epoch", std::to_string(ckpt.epoch)},
                {"seed", std::to_string(ckpt.config.seed)}};
  if (ckpt.batch_in_epoch > 0) {
    VAE_REQUIRE(ckpt.epoch_totals.size() == 3 || ckpt.epoch_totals.size() == 4, "checkpoint: epoch totals");
    f.metadata["batch_in_epoch"] = std::to_string(ckpt.batch_in_epoch);
    f.metadata["epoch_totals"] = json(ckpt.epoch_totals).dump();  // doubles round-trip exactly
  }
  auto slice = [](const std::vector<float>& flat, const NamedTensor& t) {
    return SafeTensor{t.shape, std::vector<float>(flat.begin() + t.offset, flat.begin() + t.offset + t.count())};
  };
  for (const auto& t : layout.tensors) f.tensors.emplace_back(t.name, slice(ckpt.params, t));
  for (size_t s = 0; s < names.size(); ++s) {
    VAE_REQUIRE(ckpt.optimizer_state[s].size() == layout.total, "checkpoint: optimizer state size");
    for (const auto& t : layout.tensors) {
      f.tensors.emplace_back("optimizer." + names[s] + "." + t.name, slice(ckpt.optimizer_state[s], t));
    }
  }
  write_safetensors(path, f);
}

Checkpoint load_checkpoint(const std::string& path) {
  const SafeTensorsFile f = read_safetensors(path);
  auto meta = [&](const char* key) -> const std::string& {
    auto it = f.metadata.find(key);
    if (it == f.metadata.end()) throw Error(path + ": not a vae-trainer checkpoint (no '" + key + "' in __metadata__)");
    return it->second;
  };
  if (meta("format") != "vae-trainer") throw Error(path + ": __metadata__ format is not vae-trainer");
  if (meta("format_version") != "1" && meta("format_version") != std::to_string(kCheckpointFormatVersion)) {
    throw Error(path + ": checkpoint format version " + meta("format_version") + " is not supported (expected " +
                std::to_string(kCheckpointFormatVersion) + ")");
  }
  Checkpoint ckpt;
  ckpt.config = config_from_json(meta("config"), path);
  try {
    ckpt.step = std::stoll(meta("step"));
    ckpt.epoch = std::stoi(meta("epoch"));
  } catch (const std::logic_error&) {
    throw Error(path + ": __metadata__ step or epoch is not a number");
  }
  if (f.metadata.count("batch_in_epoch")) {
    try {
      ckpt.batch_in_epoch = std::stoll(meta("batch_in_epoch"));
      ckpt.epoch_totals = json::parse(meta("epoch_totals")).get<std::vector<double>>();
    } catch (const std::exception&) {
      throw Error(path + ": __metadata__ batch_in_epoch or epoch_totals is malformed");
    }
    if (ckpt.batch_in_epoch < 0 || (ckpt.epoch_totals.size() != 3 && ckpt.epoch_totals.size() != 4))
      throw Error(path + ": __metadata__ batch_in_epoch or epoch_totals is out of range");
  }
  const ParamLayout layout = make_layout(ckpt.config.model);
  auto read_flat = [&](const std::string& prefix) {
    std::vector<float> flat(layout.total);
    for (const auto& t : layout.tensors) {
      const std::string name = prefix + t.name;
      const SafeTensor* st = f.find(name);
      if (!st) throw Error(path + ": missing tensor '" + name + "'");
      if (st->shape != t.shape) {
        std::string want, got;
        for (auto d : t.shape) want += (want.empty() ? "" : ",") + std::to_string(d);
        for (auto d : st->shape) got += (got.empty() ? "" : ",") + std::to_string(d);
        throw Error(path + ": tensor '" + name + "' has shape [" + got + "], expected [" + want + "]");
      }
      std::copy(st->data.begin(), st->data.end(), flat.begin() + t.offset);
    }
    return flat;
  };
  ckpt.params = read_flat("");
  const auto names = optimizer_state_names(ckpt.config.optimizer);
  for (const auto& n : names) ckpt.optimizer_state.push_back(read_flat("optimizer." + n + "."));
  const size_t expected = layout.tensors.size() * (1 + names.size());
  if (f.tensors.size() != expected) {
    for (const auto& [name, t] : f.tensors) {
      bool known = false;
      for (const auto& lt : layout.tensors) {
        known = known || name == lt.name;
        for (const auto& n : names) known = known || name == "optimizer." + n + "." + lt.name;
      }
      if (!known) throw Error(path + ": unexpected tensor '" + printable(name) + "'");
    }
  }
  return ckpt;
}

}  // namespace vae
