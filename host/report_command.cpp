// `vae report`: the learning curves of runs (test and train ELBO against epoch) as one PNG, for a
// person without TensorBoard at hand (host/learning_curves.h draws it).
#include <cstdio>

#include "atomic_file.h"
#include "commands.h"
#include "learning_curves.h"
#include "png_image.h"

namespace vae {
namespace {

class ReportCommand : public Command {
 public:
  void add(CLI::App& app) override {
    cmd_ = app.add_subcommand("report",
                              "the learning curves of runs (test and train ELBO against epoch, a colour per run) as "
                              "a PNG");
    cmd_->add_option("runs", runs_, "run folders (a sweep's folder stands for its models)")->required();
    cmd_->add_option("--out", out_, "the PNG to write")->capture_default_str()->check(png_file_name());
  }

  int run() override {
    std::vector<Curve> curves;
    for (const std::string& dir : runs_) {
      for (Curve& c : read_curves(dir)) curves.push_back(std::move(c));
    }
    const std::string font_path = default_console_font_path();
    ConsoleFont font;
    try {
      font = read_console_font(font_path);
    } catch (const Error& e) {
      throw Error(std::string(e.what()) +
                  "; vae report draws its text with a console font: install Debian's psf-unifont, or set VAE_FONT "
                  "to a PSF file");
    }
    const Canvas canvas = draw_learning_curves(curves, font);
    write_file_atomically(out_, encode_png(canvas.rgb.data(), canvas.width, canvas.height, true));
    std::printf("%s: the learning curves of %zu run%s\n", out_.c_str(), curves.size(), curves.size() == 1 ? "" : "s");
    return 0;
  }

 private:
  std::vector<std::string> runs_;
  std::string out_ = "learning_curves.png";
};

}  // namespace

std::unique_ptr<Command> make_report_command() { return std::make_unique<ReportCommand>(); }

}  // namespace vae
