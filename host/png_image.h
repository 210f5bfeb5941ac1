// Image grids as 8-bit grayscale PNG through libpng.
#pragma once

#include <string>
#include <vector>

namespace vae {

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
