// Pictures of a model: `vae sample` (decoder means of prior samples) and `vae reconstruct` (test
// images above their reconstructions), as PNG grids.
#include <algorithm>
#include <cmath>
#include <cstdio>

#include "commands.h"
#include "png_image.h"

namespace vae {
namespace {

class SampleCommand : public ModelCommand {
 public:
  void add(CLI::App& app) override {
    cmd_ = app.add_subcommand("sample", "decoder means of samples from the prior, as a PNG grid");
    add_model_flags();
    cmd_->add_option("--n", n_, "number of samples")->check(CLI::Range(1, 4096))->capture_default_str();
    cmd_->add_option("--out", out_, "output .png")->required()->check(png_file_name());
    cmd_->add_option("--seed", seed_, "noise seed (default: the checkpoint's)")->check(non_negative_integer());
  }

  int run() override {
    Checkpoint ckpt = checkpoint();
    if (cmd_->count("--seed")) ckpt.config.seed = seed_;
    DeviceContext ctx(resolve_target(device_), ckpt.config.tf32);
    Trainer trainer(ctx, ckpt.config);
    trainer.restore(ckpt);
    const int cols = static_cast<int>(std::ceil(std::sqrt(static_cast<double>(n_))));
    write_png_grid(out_, trainer.prior_samples(n_), n_, ckpt.config.model.image_height, ckpt.config.model.image_width,
                   cols);
    std::printf("wrote %s\n", out_.c_str());
    return 0;
  }

 private:
  std::string out_;
  int n_ = 64;
  uint64_t seed_ = 0;
};

class ReconstructCommand : public ModelCommand {
 public:
  void add(CLI::App& app) override {
    cmd_ = app.add_subcommand("reconstruct", "the first test images above their reconstructions, as a PNG");
    add_model_flags();
    cmd_->add_option("--out", out_, "output .png")->required()->check(png_file_name());
    cmd_->add_option("--n", n_, "number of test images")->check(CLI::Range(1, 64))->capture_default_str();
    add_data_flags(cmd_, flags_, false);
  }

  int run() override {
    Loaded l = load();
    const Dataset test = test_set(l, flags_);
    const DeviceDataset test_dev(*l.ctx, test);
    const int n = static_cast<int>(std::min<int64_t>(n_, test.count));
    write_png_grid(out_, l.trainer->reconstructions(test_dev, n), 2 * n, l.ckpt.config.model.image_height,
                   l.ckpt.config.model.image_width, n);
    std::printf("wrote %s\n", out_.c_str());
    return 0;
  }

 private:
  std::string out_;
  int n_ = 8;
  DataOptions flags_;
};

}  // namespace

std::vector<std::unique_ptr<Command>> make_image_commands() {
  std::vector<std::unique_ptr<Command>> c;
  c.push_back(std::make_unique<SampleCommand>());
  c.push_back(std::make_unique<ReconstructCommand>());
  return c;
}

}  // namespace vae
