// Image grids as 8-bit grayscale PNG through libpng.
#pragma once

#include <string>
#include <vector>

namespace vae {

// images: count × (height × width) values in [0, 1], tiled `columns` per row with a 1-pixel gap.
void write_png_grid(const std::string& path, const std::vector<float>& images, int count, int height, int width,
                    int columns);

}  // namespace vae
