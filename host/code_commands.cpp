// The codes themselves: `vae encode` (q(z|x) of images), `vae decode` (decoder means of given
// codes) and `vae manifold` (the paper's Fig. 4: a grid of Gaussian quantiles, decoded).
#include <cmath>
#include <cstdio>
#include <sstream>

#include "commands.h"
#include "manifold.h"
#include "png_image.h"

namespace vae {
namespace {

class EncodeCommand : public ModelCommand {
 public:
  void add(CLI::App& app) override {
    cmd_ = app.add_subcommand("encode", "q(z|x) of every test (or training) image: mu | log sigma^2 as an NPY");
    add_model_flags();
    cmd_->add_option("--out", out_,
                     "output .npy: float32 (N, 2J), mu in the first J columns, log sigma^2 in the last J")
        ->required();
    add_data_flags(cmd_, flags_, true);
  }

  int run() override {
    Loaded l = load();
    Dataset data;
    if (cmd_->count("--train") > 0) {  // an NPY of images to encode
      DataOptions d;
      d.test_npy = flags_.train_npy;
      d.test_limit = flags_.train_limit;
      data = load_eval_data(d, l.ckpt.config);
    } else {  // the test images (the checkpoint's, or --data / --test)
      data = test_set(l, flags_);
    }
    const DeviceDataset dev(*l.ctx, data);
    FloatMatrix codes;
    codes.rows = data.count;
    codes.cols = 2 * l.ckpt.config.model.latent;
    codes.values = l.trainer->encode(dev);
    write_npy_matrix(out_, codes);
    std::printf("wrote %s: (%lld, %d) float32, mu | log sigma^2\n", out_.c_str(), static_cast<long long>(codes.rows),
                codes.cols);
    return 0;
  }

 private:
  std::string out_;
  DataOptions flags_;
};

class DecodeCommand : public ModelCommand {
 public:
  void add(CLI::App& app) override {
    cmd_ = app.add_subcommand("decode", "decoder means of given latent codes, as an NPY or a PNG grid");
    add_model_flags();
    cmd_->add_option("--latents", latents_, "codes: float32 or float64 .npy of shape (N, J)")
        ->required()
        ->check(CLI::ExistingFile);
    cmd_->add_option("--out", out_, "output: F.npy (float32 (N, D)) or F.png (an image grid)")->required();
  }

  int run() override {
    Loaded l = load();
    const FloatMatrix z = read_npy_matrix(latents_);
    const int J = l.ckpt.config.model.latent;
    if (z.cols != J) {
      throw Error(latents_ + ": codes have " + std::to_string(z.cols) + " columns but the model's latent space has " +
                  std::to_string(J) + " dimensions");
    }
    const bool png = lower_extension(out_) == ".png";
    if (!png && lower_extension(out_) != ".npy")
      throw CLI::ValidationError("--out", "expected a .npy or .png file name, got '" + out_ + "'");
    const std::vector<float> means = l.trainer->decode(z.values);
    const int H = l.ckpt.config.model.image_height, W = l.ckpt.config.model.image_width;
    if (png) {
      const int n = static_cast<int>(z.rows);
      write_png_grid(out_, means, n, H, W, static_cast<int>(std::ceil(std::sqrt(static_cast<double>(n)))));
    } else {
      write_npy_matrix(out_, FloatMatrix{"", z.rows, l.ckpt.config.model.input_dim, means});
    }
    std::printf("wrote %s\n", out_.c_str());
    return 0;
  }

 private:
  std::string latents_, out_;
};

class ManifoldCommand : public ModelCommand {
 public:
  void add(CLI::App& app) override {
    cmd_ = app.add_subcommand(
        "manifold",
        "the learned manifold (the paper's Fig. 4): a grid of codes through the inverse Gaussian CDF, decoded");
    add_model_flags();
    cmd_->add_option("--out", out_, "output .png")->required()->check(png_file_name());
    cmd_->add_option("--grid", grid_, "tiles per side")->check(CLI::Range(1, 200))->capture_default_str();
    cmd_->add_option("--dims", dims_, "the two latent dimensions swept, as i,j (default 0,1; 0,0 for a 1-D latent)");
  }

  int run() override {
    Loaded l = load();
    const int J = l.ckpt.config.model.latent;
    int dx = 0, dy = J > 1 ? 1 : 0;
    if (!dims_.empty()) {
      char comma = 0;
      std::istringstream in(dims_);
      if (!(in >> dx >> comma >> dy) || comma != ',' || !in.eof() || dx < 0 || dy < 0 || dx >= J || dy >= J ||
          (dx == dy && J > 1)) {
        throw CLI::ValidationError("--dims", "expected two different latent dimensions i,j below " + std::to_string(J) +
                                                 ", got '" + dims_ + "'");
      }
    }
    const std::vector<float> means = l.trainer->decode(manifold_codes(J, grid_, dx, dy));
    write_png_grid(out_, means, grid_ * grid_, l.ckpt.config.model.image_height, l.ckpt.config.model.image_width,
                   grid_);
    std::printf("wrote %s: %dx%d tiles over latent dimensions %d (across) and %d (down)\n", out_.c_str(), grid_, grid_,
                dx, dy);
    return 0;
  }

 private:
  std::string out_, dims_;
  int grid_ = 20;
};

}  // namespace

std::vector<std::unique_ptr<Command>> make_code_commands() {
  std::vector<std::unique_ptr<Command>> c;
  c.push_back(std::make_unique<EncodeCommand>());
  c.push_back(std::make_unique<DecodeCommand>());
  c.push_back(std::make_unique<ManifoldCommand>());
  return c;
}

}  // namespace vae
