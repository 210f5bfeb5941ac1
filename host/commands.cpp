#include "commands.h"

#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <system_error>

#include "run_folder.h"

namespace vae {

namespace {
CLI::Validator number_check(const char* name, bool allow_zero) {
  return CLI::Validator(
      [allow_zero](std::string& text) -> std::string {
        double v = 0;
        if (!CLI::detail::lexical_cast(text, v)) return "expected a number, got '" + text + "'";
        if (std::isfinite(v) && (v > 0 || (allow_zero && v == 0))) return {};
        return std::string(allow_zero ? "must be a finite number >= 0" : "must be a finite number > 0") + ", got " +
               text;
      },
      name);
}
}  // namespace

void Command::check_no_empty_values() const {
  for (const CLI::Option* o : cmd_->get_options()) {
    if (o->get_type_size() == 0 || o->count() == 0) continue;  // a flag without a value, or not given
    for (const std::string& value : o->results())
      if (value.empty()) throw CLI::ValidationError(o->get_name(), "empty value");
  }
}

CLI::Validator positive_number() { return number_check("POSITIVE", false); }
CLI::Validator non_negative_number() { return number_check("NONNEGATIVE", true); }
CLI::Validator non_negative_integer() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        if (text.empty() || text.find_first_not_of("0123456789") != std::string::npos)
          return "must be an integer >= 0, got '" + text + "'";
        // CLI11 would saturate a larger value to 2^64 - 1 without a word.
        uint64_t value = 0;
        const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
        return ec == std::errc() && end == text.data() + text.size()
                   ? std::string()
                   : "must be an integer below 2^64, got '" + text + "'";
      },
      "NONNEGATIVE");
}

void add_device_flag(CLI::App* cmd, std::string& device) {
  cmd->add_option("--device", device, "auto (GPU when present), cpu or cuda")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}))
      ->capture_default_str();
}

void add_data_flags(CLI::App* cmd, DataOptions& d, bool with_train) {
  cmd->add_option("--data", d.data,
                  "fashion-mnist (Debian's dataset-fashion-mnist) or a folder of MNIST-format IDX files");
  if (with_train) {
    cmd->add_option("--train", d.train_npy,
                    "training images as .npy (uint8 0-255, or float32, float64 or bool in [0,1]; (N,D) or (N,H,W))");
    cmd->add_option("--train-limit", d.train_limit, "use only the first N training images")->check(positive_number());
  }
  cmd->add_option("--test", d.test_npy, "test images as .npy");
  cmd->add_option("--test-limit", d.test_limit, "use only the first N test images")->check(positive_number());
}

std::string lower_extension(const std::string& path) {
  std::string ext = std::filesystem::path(path).extension().string();
  for (char& c : ext) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return ext;
}

CLI::Validator png_file_name() {
  return CLI::Validator(
      [](std::string& value) {
        return lower_extension(value) == ".png" ? std::string() : "expected a .png file name, got '" + value + "'";
      },
      "PNG");
}

void ModelCommand::add_model_flags() {
  cmd_->add_option("--checkpoint", checkpoint_,
                   "a checkpoint (.safetensors), or a run folder: its newest checkpoint that loads")
      ->required()
      ->check(CLI::ExistingPath);
  add_device_flag(cmd_, device_);
}

Checkpoint ModelCommand::checkpoint() const {
  FoundCheckpoint found = find_checkpoint(checkpoint_, "--checkpoint");
  say_skipped(found);
  return std::move(found.checkpoint);
}

Loaded ModelCommand::load() const {
  Loaded l;
  l.ckpt = checkpoint();
  l.ctx = std::make_unique<DeviceContext>(resolve_target(device_), l.ckpt.config.tf32);
  l.trainer = std::make_unique<Trainer>(*l.ctx, l.ckpt.config);
  l.trainer->restore(l.ckpt);
  return l;
}

Dataset ModelCommand::test_set(const Loaded& l, const DataOptions& flags) const {
  DataOptions d = l.ckpt.config.data;
  if (cmd_->count("--data") > 0) {
    d.data = flags.data;
    d.train_npy = d.test_npy = "";
  }
  if (cmd_->count("--test") > 0) d.test_npy = flags.test_npy;
  if (cmd_->count("--test-limit") > 0) d.test_limit = flags.test_limit;
  return load_eval_data(d, l.ckpt.config);
}

}  // namespace vae
