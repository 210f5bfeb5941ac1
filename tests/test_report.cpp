// vae report: the PSF console-font reader against font files built here byte by byte (PSF 1
// and 2, with and without a Unicode table) and Debian's Unifont; the learning-curve picture
// (every test ELBO point at its place in its run's colour, the axes' round ticks); the command
// on run and sweep folders, and its one-line errors.
#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <tuple>

#include "cli_support.h"
#include "learning_curves.h"
#include "runtime/check.h"
#include "support.h"

namespace vae {
namespace {

namespace fs = std::filesystem;

void write_bytes(const fs::path& p, const std::vector<uint8_t>& b) {
  std::ofstream(p, std::ios::binary).write(reinterpret_cast<const char*>(b.data()), static_cast<long>(b.size()));
}
void put32(std::vector<uint8_t>& b, uint32_t v) {
  for (int i = 0; i < 4; ++i) b.push_back(static_cast<uint8_t>(v >> (8 * i)));
}

TEST(ConsoleFont, ReadsPsf2WithItsUnicodeTable) {
  const fs::path dir = fresh_dir("psf2");
  // 3 glyphs of 10 × 3 pixels (2 bytes a row): glyph g's row y is the bytes (g·16 + y, 0x80).
  std::vector<uint8_t> b;
  for (uint32_t v : {0x864AB572u, 0u, 32u, 1u, 3u, 6u, 3u, 10u}) put32(b, v);
  for (int g = 0; g < 3; ++g)
    for (int y = 0; y < 3; ++y) b.insert(b.end(), {static_cast<uint8_t>(g * 16 + y), 0x80});
  // Glyph 0: '?'; glyph 1: 'x' and U+00E9 (two UTF-8 bytes), then a sequence; glyph 2: U+20AC.
  b.insert(b.end(), {'?', 0xFF, 'x', 0xC3, 0xA9, 0xFE, 'e', 0xFF, 0xE2, 0x82, 0xAC, 0xFF});
  write_bytes(dir / "f.psf", b);
  const ConsoleFont f = read_console_font((dir / "f.psf").string());
  EXPECT_EQ(f.width, 10);
  EXPECT_EQ(f.height, 3);
  EXPECT_EQ(f.glyph_of.at('x'), 1);
  EXPECT_EQ(f.glyph_of.at(0xE9), 1);
  EXPECT_EQ(f.glyph_of.at(0x20AC), 2);
  EXPECT_EQ(f.glyph_of.count('e'), 0u);  // only inside a sequence
  for (int y = 0; y < 3; ++y)
    for (int x = 0; x < 10; ++x) {
      const int row = x < 8 ? (16 + y) >> (7 - x) & 1 : x == 8;  // glyph 1, row y
      EXPECT_EQ(f.pixel('x', x, y), row != 0) << x << "," << y;
      EXPECT_EQ(f.pixel(0x1F600, x, y), f.pixel('?', x, y));  // a missing code point draws '?'
    }
  fs::remove_all(dir);
}

TEST(ConsoleFont, ReadsPsf1WithoutATableAndRefusesOtherFiles) {
  const fs::path dir = fresh_dir("psf1");
  std::vector<uint8_t> b = {0x36, 0x04, 0x00, 5};  // 256 glyphs of 8 × 5, no table
  for (int g = 0; g < 256; ++g)
    for (int y = 0; y < 5; ++y) b.push_back(static_cast<uint8_t>(g ^ (y * 37)));
  write_bytes(dir / "f.psf", b);
  const ConsoleFont f = read_console_font((dir / "f.psf").string());
  EXPECT_EQ(f.width, 8);
  EXPECT_EQ(f.height, 5);
  for (int y = 0; y < 5; ++y)
    for (int x = 0; x < 8; ++x) EXPECT_EQ(f.pixel('A', x, y), ((('A' ^ (y * 37)) >> (7 - x)) & 1) != 0);
  b.resize(200);  // truncated glyphs
  write_bytes(dir / "short.psf", b);
  write_bytes(dir / "text.psf", {'h', 'e', 'l', 'l', 'o'});
  for (const char* name : {"short.psf", "text.psf", "missing.psf"}) {
    const std::string path = (dir / name).string();
    try {
      read_console_font(path);
      ADD_FAILURE() << name << " was read";
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()).find(path), 0u) << e.what();  // names the file first
    }
  }
  fs::remove_all(dir);
}

TEST(ConsoleFont, DebiansUnifontHasAsciiGlyphs) {
  const ConsoleFont f = read_console_font(default_console_font_path());
  EXPECT_EQ(f.width, 8);
  EXPECT_EQ(f.height, 16);
  for (char c = '!'; c <= '~'; ++c) {
    int set = 0;
    for (int y = 0; y < f.height; ++y)
      for (int x = 0; x < f.width; ++x) set += f.pixel(static_cast<unsigned char>(c), x, y);
    EXPECT_GT(set, 0) << c;
  }
}

Curve curve(const std::string& label, int epochs, double start, double rise) {
  Curve c;
  c.label = label;
  for (int e = 1; e <= epochs; ++e) {
    c.epoch.push_back(e);
    c.test_elbo.push_back(start + rise * std::log(static_cast<double>(e)));
    c.train_elbo.push_back(start - 3 + rise * std::log(e + 0.5));
  }
  return c;
}

TEST(LearningCurves, EachTestPointIsDrawnWhereTheFrameSaysInItsColour) {
  const std::vector<Curve> curves = {curve("first", 7, -263.7, 9.3), curve("second", 5, -251.2, 4.1),
                                     curve("third", 9, -270.9, 15.5)};
  const PlotFrame f = plot_frame(curves);
  // Round ticks that hold every value.
  const double mantissa = f.y_step / std::pow(10.0, std::floor(std::log10(f.y_step)));
  EXPECT_TRUE(std::abs(mantissa - 1) < 1e-9 || std::abs(mantissa - 2) < 1e-9 || std::abs(mantissa - 5) < 1e-9)
      << f.y_step;
  EXPECT_NEAR(std::remainder(f.y0, f.y_step), 0, 1e-9);
  EXPECT_EQ(f.x0, 1);
  EXPECT_EQ(f.x1, 9);
  const Canvas cv = draw_learning_curves(curves, read_console_font(default_console_font_path()));
  ASSERT_EQ(cv.width, kPlotWidth);
  ASSERT_EQ(cv.height, kPlotHeight);
  for (size_t i = 0; i < curves.size(); ++i) {
    for (size_t k = 0; k < curves[i].epoch.size(); ++k) {
      const double v = curves[i].test_elbo[k], tr = curves[i].train_elbo[k];
      EXPECT_LE(f.y0, std::min(v, tr));
      EXPECT_GE(f.y1, std::max(v, tr));
      const int x = f.x(curves[i].epoch[k]), y = f.y(v);
      EXPECT_GE(x, f.left);
      EXPECT_LE(x, f.right);
      EXPECT_GE(y, f.top);
      EXPECT_LE(y, f.bottom);
      EXPECT_EQ(cv.at(x, y), curve_color(i)) << curves[i].label << " epoch " << k + 1;
    }
  }
  // The axes in black, the legend's names in text (black pixels right of the plot).
  EXPECT_EQ(cv.at(f.left, f.bottom), (Rgb{0, 0, 0}));
  int legend_ink = 0;
  for (int y = f.top; y < f.top + 60; ++y)
    for (int x = f.right + 52; x < kPlotWidth; ++x) legend_ink += cv.at(x, y) == Rgb{0, 0, 0};
  EXPECT_GT(legend_ink, 50);
}

void write_metrics(const fs::path& dir, const Curve& c) {
  fs::create_directories(dir);
  std::ofstream m(dir / "metrics.jsonl");
  for (size_t k = 0; k < c.epoch.size(); ++k) {
    m << "{\"epoch\":" << c.epoch[k] << ",\"test_elbo\":" << c.test_elbo[k] << ",\"train_elbo\":" << c.train_elbo[k]
      << ",\"device\":\"cpu\"}\n";
  }
}

// The PNG's width, height and colour type from its IHDR chunk.
std::tuple<int, int, int> png_header(const fs::path& p) {
  const std::string b = slurp(p);
  if (b.size() < 26 || b.compare(1, 3, "PNG") != 0) return {0, 0, -1};
  auto be32 = [&](size_t at) {
    return (static_cast<uint8_t>(b[at]) << 24) | (static_cast<uint8_t>(b[at + 1]) << 16) |
           (static_cast<uint8_t>(b[at + 2]) << 8) | static_cast<uint8_t>(b[at + 3]);
  };
  return {be32(16), be32(20), static_cast<uint8_t>(b[25])};
}

TEST(Report, DrawsRunsAndSweepsAndRefusesWhatIsNotARun) {
  const fs::path dir = fresh_dir("report");
  write_metrics(dir / "a", curve("a", 4, -260, 8));
  write_metrics(dir / "s" / "model_0", curve("m0", 3, -255, 5));
  write_metrics(dir / "s" / "model_1", curve("m1", 3, -258, 6));
  std::ofstream(dir / "s" / "sweep.jsonl")
      << "{\"model\":0,\"folder\":\"model_0\"}\n{\"model\":1,\"folder\":\"model_1\"}\n"
         "{\"model\":2,\"folder\":\"model_2\"}\n";  // model 2: no epoch yet
  const fs::path out = dir / "curves.png";
  test::Result r =
      test::run_cli("report " + (dir / "a").string() + " " + (dir / "s").string() + " --out " + out.string());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("3 runs"), std::string::npos) << r.out;
  EXPECT_EQ(png_header(out), std::make_tuple(kPlotWidth, kPlotHeight, 2));  // RGB
  const std::string good = slurp(out);
  // Bad input: one line naming the folder or the file and line, exit 1, the old picture kept.
  fs::create_directories(dir / "empty");
  std::ofstream(dir / "bad.jsonl");
  fs::create_directories(dir / "bad");
  std::ofstream(dir / "bad" / "metrics.jsonl") << "{\"epoch\":1,\"test_elbo\":-250,\"train_elbo\":-251}\nnot json\n";
  for (const auto& [arg, names] : {std::pair{(dir / "empty").string(), std::string("no metrics.jsonl")},
                                   {(dir / "nowhere").string(), std::string("no such folder")},
                                   {(dir / "bad").string(), (dir / "bad" / "metrics.jsonl").string() + ":2"}}) {
    r = test::run_cli("report " + (dir / "a").string() + " " + arg + " --out " + out.string());
    EXPECT_EQ(r.code, 1) << arg;
    EXPECT_NE(r.err.find(names), std::string::npos) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_EQ(slurp(out), good);
  }
  EXPECT_EQ(test::run_cli("report --out " + out.string()).code, 2);  // no run folder
  // Without the font: a line that says what to install.
  const std::string env = "VAE_FONT=" + (dir / "nofont.psf").string() + " ";
  const int status = std::system((env + VAE_CLI_PATH + std::string(" report ") + (dir / "a").string() + " --out " +
                                  (dir / "x.png").string() + " 2>" + (dir / "err").string())
                                     .c_str());
  EXPECT_EQ(WEXITSTATUS(status), 1);
  EXPECT_NE(slurp(dir / "err").find("psf-unifont"), std::string::npos) << slurp(dir / "err");
  EXPECT_FALSE(fs::exists(dir / "x.png"));
  fs::remove_all(dir);
}

}  // namespace
}  // namespace vae
