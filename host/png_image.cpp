#include "png_image.h"

#include <png.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "atomic_file.h"
#include "runtime/check.h"

namespace vae {

namespace {
void append_bytes(png_structp png, png_bytep data, png_size_t n) {
  static_cast<std::string*>(png_get_io_ptr(png))->append(reinterpret_cast<const char*>(data), n);
}
void flush_nothing(png_structp) {}
}  // namespace

std::string encode_png(const unsigned char* pixels, int width, int height, bool rgb) {
  VAE_REQUIRE(width > 0 && height > 0, "png: empty image");
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png ? png_create_info_struct(png) : nullptr;
  if (!png || !info) {
    png_destroy_write_struct(&png, &info);
    throw Error("libpng could not start");
  }
  std::string out;
  const size_t row = static_cast<size_t>(width) * (rgb ? 3 : 1);
  std::vector<png_bytep> row_ptrs(height);
  for (int y = 0; y < height; ++y) row_ptrs[y] = const_cast<png_bytep>(pixels + static_cast<size_t>(y) * row);
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    throw Error("libpng failed to encode the image");
  }
  png_set_write_fn(png, &out, append_bytes, flush_nothing);
  png_set_IHDR(png, info, width, height, 8, rgb ? PNG_COLOR_TYPE_RGB : PNG_COLOR_TYPE_GRAY, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  png_write_image(png, row_ptrs.data());
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  return out;
}

PngGrid encode_png_grid(const std::vector<float>& images, int count, int height, int width, int columns) {
  VAE_REQUIRE(count > 0 && columns > 0, "png grid: empty");
  VAE_REQUIRE(images.size() >= static_cast<size_t>(count) * height * width, "png grid: too few pixels");
  const int rows = (count + columns - 1) / columns, gap = 1;
  const int W = columns * (width + gap) + gap, H = rows * (height + gap) + gap;
  std::vector<png_byte> pixels(static_cast<size_t>(W) * H, 64);  // dark grey frame
  for (int i = 0; i < count; ++i) {
    const int oy = gap + (i / columns) * (height + gap), ox = gap + (i % columns) * (width + gap);
    for (int y = 0; y < height; ++y)
      for (int x = 0; x < width; ++x) {
        const float v = std::clamp(images[(static_cast<size_t>(i) * height + y) * width + x], 0.f, 1.f);
        pixels[static_cast<size_t>(oy + y) * W + ox + x] = static_cast<png_byte>(std::lround(v * 255.f));
      }
  }
  return {encode_png(pixels.data(), W, H, false), W, H};
}

PngGrid write_png_grid(const std::string& path, const std::vector<float>& images, int count, int height, int width,
                       int columns) {
  PngGrid g;
  try {
    g = encode_png_grid(images, count, height, width, columns);
  } catch (const Error& e) {
    throw Error(path + ": " + e.what());
  }
  write_file_atomically(path, g.bytes);
  return g;
}

}  // namespace vae
