// vae report's picture: the learning curves of runs (test and train ELBO against epoch, a colour
// per run) drawn into an RGB canvas with a console font and encoded as PNG through libpng.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "console_font.h"

namespace vae {

// One run's figures, from its metrics.jsonl (one line per epoch).
struct Curve {
  std::string label;  // the run folder's name
  std::vector<double> epoch, test_elbo, train_elbo;
};
// The run folder's curve; a sweep folder (sweep.jsonl) gives each model folder's. Throws
// vae::Error naming the folder or the file and line.
std::vector<Curve> read_curves(const std::string& dir);

using Rgb = std::array<uint8_t, 3>;
// The colour of run i (matplotlib's ten, then again).
Rgb curve_color(size_t i);

// Where the plot puts a point: the axes' ranges (the data's, widened to round ticks) and the
// plotting area's pixels.
struct PlotFrame {
  double x0 = 0, x1 = 1, y0 = 0, y1 = 1, y_step = 1;  // the axes, and the value between y ticks
  int left = 0, right = 0, top = 0, bottom = 0;       // the area, in pixels
  int x(double epoch) const;
  int y(double value) const;
};
constexpr int kPlotWidth = 960, kPlotHeight = 600;
PlotFrame plot_frame(const std::vector<Curve>& curves);

struct Canvas {
  int width, height;
  std::vector<uint8_t> rgb;  // (height, width, 3), white at first
  Canvas(int w, int h);
  void set(int x, int y, Rgb c);
  Rgb at(int x, int y) const;
  // A line, 2 pixels wide; dashed: 8 on, 6 off.
  void line(int x0, int y0, int x1, int y1, Rgb c, bool dashed = false);
  // Text with its top-left corner at (x, y); returns its width in pixels.
  int text(int x, int y, const std::string& s, const ConsoleFont& font, Rgb c);
};

// The whole picture: axes with ticks and labels, each run's test ELBO (solid, square markers)
// and train ELBO (dashed), a legend of the runs. Returns the canvas (kPlotWidth × kPlotHeight).
Canvas draw_learning_curves(const std::vector<Curve>& curves, const ConsoleFont& font);

}  // namespace vae
