#include "learning_curves.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <sstream>

#include "atomic_file.h"
#include "runtime/check.h"

namespace vae {

namespace fs = std::filesystem;

namespace {

// A folder's name as a person calls it ("runs/first/" is "first").
std::string folder_name(const std::string& dir) {
  const fs::path p = fs::path(dir).lexically_normal();
  const std::string name = p.filename().string();
  return name.empty() ? p.parent_path().filename().string() : name;
}

Curve read_run_curve(const std::string& dir, const std::string& label) {
  const std::string path = (fs::path(dir) / "metrics.jsonl").string();
  std::string text;
  if (!read_whole_file(path, text)) throw Error("'" + dir + "': no metrics.jsonl (not a run folder)");
  Curve c;
  c.label = label;
  std::istringstream lines(text);
  std::string line;
  for (int n = 1; std::getline(lines, line); ++n) {
    if (line.empty()) continue;
    nlohmann::json m;
    try {
      m = nlohmann::json::parse(line);
    } catch (const std::exception&) {
      throw Error(path + ":" + std::to_string(n) + ": not a JSON line");
    }
    auto number = [&](const char* key) {
      if (!m.is_object() || !m.contains(key) || !m[key].is_number())
        throw Error(path + ":" + std::to_string(n) + ": no number '" + key + "'");
      return m[key].get<double>();
    };
    c.epoch.push_back(number("epoch"));
    c.test_elbo.push_back(number("test_elbo"));
    c.train_elbo.push_back(number("train_elbo"));
  }
  if (c.epoch.empty()) throw Error(path + ": no epoch yet");
  return c;
}

std::string format_tick(double v, double step) {
  const int decimals = std::max(0, -static_cast<int>(std::floor(std::log10(step) + 1e-9)));
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, std::abs(v) < step * 1e-9 ? 0.0 : v);
  return buf;
}

// 1, 2 or 5 times a power of ten, at least x.
double nice_step(double x) {
  const double p = std::pow(10.0, std::floor(std::log10(x)));
  for (double m : {1.0, 2.0, 5.0, 10.0}) {
    if (m * p >= x * (1 - 1e-12)) return m * p;
  }
  return 10 * p;
}

}  // namespace

std::vector<Curve> read_curves(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) throw Error("'" + dir + "': no such folder");
  const fs::path sweep = fs::path(dir) / "sweep.jsonl";
  if (!fs::exists(sweep, ec)) return {read_run_curve(dir, folder_name(dir))};
  // A sweep: its models, in model order, each that has finished an epoch.
  std::string text;
  if (!read_whole_file(sweep.string(), text)) throw Error(sweep.string() + ": cannot read");
  std::vector<Curve> out;
  std::istringstream lines(text);
  std::string line;
  for (int n = 1; std::getline(lines, line); ++n) {
    nlohmann::json m;
    try {
      m = nlohmann::json::parse(line);
    } catch (const std::exception&) {
      throw Error(sweep.string() + ":" + std::to_string(n) + ": not a JSON line");
    }
    if (!m.is_object() || !m.contains("folder") || !m["folder"].is_string())
      throw Error(sweep.string() + ":" + std::to_string(n) + ": no 'folder'");
    const std::string folder = m["folder"].get<std::string>();
    const fs::path model = fs::path(dir) / folder;
    if (!fs::exists(model / "metrics.jsonl", ec)) continue;  // not an epoch yet
    out.push_back(read_run_curve(model.string(), folder_name(dir) + "/" + folder));
  }
  if (out.empty()) throw Error("'" + dir + "': a sweep whose models have no epoch yet");
  return out;
}

Rgb curve_color(size_t i) {
  static const Rgb kColors[] = {{31, 119, 180}, {255, 127, 14},  {44, 160, 44},   {214, 39, 40},  {148, 103, 189},
                                {140, 86, 75},  {227, 119, 194}, {127, 127, 127}, {188, 189, 34}, {23, 190, 207}};
  return kColors[i % 10];
}

int PlotFrame::x(double epoch) const {
  return left + static_cast<int>(std::lround((epoch - x0) / (x1 - x0) * (right - left)));
}
int PlotFrame::y(double value) const {
  return bottom - static_cast<int>(std::lround((value - y0) / (y1 - y0) * (bottom - top)));
}

PlotFrame plot_frame(const std::vector<Curve>& curves) {
  VAE_REQUIRE(!curves.empty(), "plot_frame: no curves");
  double lo = std::numeric_limits<double>::infinity(), hi = -lo, first = lo, last = -lo;
  for (const Curve& c : curves) {
    for (size_t i = 0; i < c.epoch.size(); ++i) {
      first = std::min(first, c.epoch[i]);
      last = std::max(last, c.epoch[i]);
      for (double v : {c.test_elbo[i], c.train_elbo[i]}) {
        if (std::isfinite(v)) lo = std::min(lo, v), hi = std::max(hi, v);
      }
    }
  }
  if (!(lo <= hi)) lo = -1, hi = 0;  // nothing finite to show
  PlotFrame f;
  f.left = 90, f.right = kPlotWidth - 260, f.top = 50, f.bottom = kPlotHeight - 60;
  f.x0 = first, f.x1 = last;
  if (f.x1 - f.x0 < 1) f.x0 -= 0.5, f.x1 += 0.5;
  f.y_step = nice_step(std::max(hi - lo, 1e-6 * std::max(1.0, std::abs(hi))) / 6);
  f.y0 = std::floor(lo / f.y_step) * f.y_step;
  f.y1 = std::ceil(hi / f.y_step) * f.y_step;
  if (f.y1 - f.y0 < f.y_step) f.y1 = f.y0 + f.y_step;
  return f;
}

Canvas::Canvas(int w, int h) : width(w), height(h), rgb(static_cast<size_t>(w) * h * 3, 255) {}

void Canvas::set(int x, int y, Rgb c) {
  if (x < 0 || y < 0 || x >= width || y >= height) return;
  std::copy(c.begin(), c.end(), rgb.begin() + (static_cast<size_t>(y) * width + x) * 3);
}

Rgb Canvas::at(int x, int y) const {
  const size_t i = (static_cast<size_t>(y) * width + x) * 3;
  return {rgb[i], rgb[i + 1], rgb[i + 2]};
}

void Canvas::line(int x0, int y0, int x1, int y1, Rgb c, bool dashed) {
  // Bresenham, each point a 2×2 block.
  const int dx = std::abs(x1 - x0), dy = -std::abs(y1 - y0), sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1;
  int err = dx + dy;
  for (int i = 0;; ++i) {
    if (!dashed || i % 14 < 8) {
      for (int ox = 0; ox < 2; ++ox)
        for (int oy = 0; oy < 2; ++oy) set(x0 + ox, y0 + oy, c);
    }
    if (x0 == x1 && y0 == y1) break;
    const int e2 = 2 * err;
    if (e2 >= dy) err += dy, x0 += sx;
    if (e2 <= dx) err += dx, y0 += sy;
  }
}

int Canvas::text(int x, int y, const std::string& s, const ConsoleFont& font, Rgb c) {
  int cx = x;
  for (unsigned char ch : s) {
    for (int gy = 0; gy < font.height; ++gy)
      for (int gx = 0; gx < font.width; ++gx)
        if (font.pixel(ch, gx, gy)) set(cx + gx, y + gy, c);
    cx += font.width;
  }
  return cx - x;
}

Canvas draw_learning_curves(const std::vector<Curve>& curves, const ConsoleFont& font) {
  const PlotFrame f = plot_frame(curves);
  Canvas cv(kPlotWidth, kPlotHeight);
  const Rgb black{0, 0, 0}, grid{225, 225, 225};
  const int fh = font.height, fw = font.width;
  // Grid lines and tick labels: y at every step, x at whole epochs (every k-th where many).
  for (double v = f.y0; v <= f.y1 + f.y_step * 1e-6; v += f.y_step) {
    const int py = f.y(v);
    for (int px = f.left; px <= f.right; ++px) cv.set(px, py, grid);
    const std::string label = format_tick(v, f.y_step);
    cv.text(f.left - 8 - static_cast<int>(label.size()) * fw, py - fh / 2, label, font, black);
  }
  const int first = static_cast<int>(std::ceil(f.x0)), last = static_cast<int>(std::floor(f.x1));
  const int every = std::max(1, (last - first + 1 + 9) / 10);
  for (int e = first; e <= last; e += every) {
    const int px = f.x(e);
    for (int py = f.top; py <= f.bottom; ++py) cv.set(px, py, grid);
    const std::string label = std::to_string(e);
    cv.text(px - static_cast<int>(label.size()) * fw / 2, f.bottom + 8, label, font, black);
  }
  cv.line(f.left, f.bottom, f.right, f.bottom, black);
  cv.line(f.left, f.top, f.left, f.bottom, black);
  const std::string xlabel = "epoch", title = "ELBO per datapoint (nats): test solid, train dashed";
  cv.text((f.left + f.right - static_cast<int>(xlabel.size()) * fw) / 2, f.bottom + 12 + fh, xlabel, font, black);
  cv.text(f.left, f.top - 12 - fh, title, font, black);
  // The curves: train (dashed) under test (solid, a square at each epoch).
  for (size_t i = 0; i < curves.size(); ++i) {
    const Curve& c = curves[i];
    for (const bool test : {false, true}) {
      const std::vector<double>& v = test ? c.test_elbo : c.train_elbo;
      for (size_t k = 0; k + 1 < v.size(); ++k) {
        if (std::isfinite(v[k]) && std::isfinite(v[k + 1]))
          cv.line(f.x(c.epoch[k]), f.y(v[k]), f.x(c.epoch[k + 1]), f.y(v[k + 1]), curve_color(i), !test);
      }
    }
    for (size_t k = 0; k < c.epoch.size(); ++k) {
      if (!std::isfinite(c.test_elbo[k])) continue;
      const int px = f.x(c.epoch[k]), py = f.y(c.test_elbo[k]);
      for (int ox = -3; ox <= 3; ++ox)
        for (int oy = -3; oy <= 3; ++oy) cv.set(px + ox, py + oy, curve_color(i));
    }
  }
  // The legend: a line of the run's colour and its name, as many as fit.
  const int lx = f.right + 20, rows = (f.bottom - f.top) / (fh + 4);
  for (size_t i = 0; i < curves.size(); ++i) {
    const int ly = f.top + static_cast<int>(i) * (fh + 4);
    if (static_cast<int>(i) == rows - 1 && curves.size() > static_cast<size_t>(rows)) {
      cv.text(lx, ly, "+" + std::to_string(curves.size() - i) + " more", font, black);
      break;
    }
    cv.line(lx, ly + fh / 2, lx + 24, ly + fh / 2, curve_color(i));
    std::string name = curves[i].label;
    const size_t most = static_cast<size_t>((kPlotWidth - lx - 34) / fw);
    if (name.size() > most) name = name.substr(0, most - 2) + "..";
    cv.text(lx + 32, ly, name, font, black);
  }
  return cv;
}

}  // namespace vae
