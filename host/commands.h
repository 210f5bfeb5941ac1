// The subcommands of `vae`, one object each: it registers its flags on the app, checks them once
// parsed (a wrong combination is a CLI::ValidationError: exit status 2), and runs. main.cpp parses
// and maps errors to exit statuses; each command's code lives in the file named beside it.
#pragma once

#include <CLI/CLI.hpp>

#include <memory>
#include <string>
#include <vector>

#include "trainer.h"  // Trainer, Checkpoint, DataOptions, DeviceContext

namespace vae {

class Command {
 public:
  virtual ~Command() = default;
  // Adds the subcommand and its flags to app.
  virtual void add(CLI::App& app) = 0;
  bool parsed() const { return cmd_ && cmd_->parsed(); }
  // After parsing: no option was given an empty value ("--train ''", an unset shell variable, would
  // otherwise read as the option's absence). Throws CLI::ValidationError naming the option.
  void check_no_empty_values() const;
  // After parsing, before run(): flag checks that CLI11 cannot express.
  virtual void check() {}
  // The command's work; returns the exit status. Errors are exceptions (vae::Error: 1, Diverged: 3).
  virtual int run() = 0;
  // The flags that make the work smaller, for the message of an allocation the device cannot take
  // (vae::OutOfMemory); empty where none does.
  virtual std::string memory_flags() const { return ""; }

 protected:
  CLI::App* cmd_ = nullptr;
};

std::unique_ptr<Command> make_train_command();                // host/train_flags.cpp (the run: train_command.cpp)
std::unique_ptr<Command> make_sweep_command();                // host/sweep_flags.cpp (the run: sweep_command.cpp)
std::unique_ptr<Command> make_eval_command();                 // host/eval_command.cpp
std::unique_ptr<Command> make_report_command();               // host/report_command.cpp
std::vector<std::unique_ptr<Command>> make_code_commands();   // encode, decode, manifold: host/code_commands.cpp
std::vector<std::unique_ptr<Command>> make_image_commands();  // sample, reconstruct: host/image_commands.cpp

// ---- shared by the commands (host/commands.cpp) ----

// `vae train ARGS` parsed and checked into its run, as the train command would run it (host/train_flags.cpp).
// Throws CLI::ParseError.
struct TrainRun;
TrainRun parse_train_flags(const std::vector<std::string>& args);

// Checks of a numeric flag with a short message ("--lr: must be positive, got 0"; CLI11's
// PositiveNumber prints the largest double in full): a finite number > 0, or >= 0.
CLI::Validator positive_number();
CLI::Validator non_negative_number();
// Digits only (a seed: "-1" would otherwise wrap around to 2^64 − 1).
CLI::Validator non_negative_integer();

// A file name's extension in lower case (".png" for "a/B.PNG").
std::string lower_extension(const std::string& path);
// An output file named *.png (what the image commands write): checked at parsing, exit 2.
CLI::Validator png_file_name();

// --device auto|cpu|cuda.
void add_device_flag(CLI::App* cmd, std::string& device);
// --data, --test, --test-limit, and with with_train --train, --train-limit.
void add_data_flags(CLI::App* cmd, DataOptions& d, bool with_train);

// A checkpoint restored into a trainer on the chosen device, for the commands that use a model.
struct Loaded {
  Checkpoint ckpt;
  std::unique_ptr<DeviceContext> ctx;
  std::unique_ptr<Trainer> trainer;
};

// A command on a trained model: --checkpoint (required) and --device.
class ModelCommand : public Command {
 protected:
  void add_model_flags();
  // The checkpoint --checkpoint names: the file, or the run folder's newest that loads.
  Checkpoint checkpoint() const;
  Loaded load() const;
  // The test images as the command's data flags (added with add_data_flags(cmd_, flags, …)) and
  // the checkpoint's configuration say: the checkpoint's data set unless --data, --test or
  // --test-limit were given.
  Dataset test_set(const Loaded& l, const DataOptions& flags) const;

  std::string checkpoint_, device_ = "auto";
};

}  // namespace vae
