// PNG through libpng: 8-bit grey or RGB pixels, and image grids.
#pragma once

#include <string>
#include <vector>

namespace vae {

// 8-bit pixels (height, width) of grey, or (height, width, 3) of RGB, as a PNG file's bytes.
std::string encode_png(const unsigned char* pixels, int width, int height, bool rgb);

// images: count × (height × width) values in [0, 1], tiled `columns` per row with a 1-pixel gap.
struct PngGrid {
  std::string bytes;  // the PNG file
  int width = 0, height = 0;
};
PngGrid encode_png_grid(const std::vector<float>& images, int count, int height, int width, int columns);
// The same, written to path (whole, atomically); returns what it wrote.
PngGrid write_png_grid(const std::string& path, const std::vector<float>& images, int count, int height, int width,
                       int columns);

}  // namespace vae
