// The latent codes of the paper's learned-manifold figure (Fig. 4): a grid of Gaussian quantiles.
#pragma once

#include <vector>

namespace vae {

// The inverse of the standard normal CDF, Φ⁻¹(p) for p in (0, 1), to double precision.
double normal_quantile(double p);
// The paper's Fig. 4 grid: codes (grid², J), row-major over the image (row i, column j), latent
// dimension dim_x from Φ⁻¹((j + ½)/grid) left to right and dim_y from Φ⁻¹((i + ½)/grid) top to
// bottom, the others 0. With dim_x == dim_y (a one-dimensional latent space): Φ⁻¹ of grid²
// evenly spaced quantiles, row by row.
std::vector<float> manifold_codes(int latent, int grid, int dim_x, int dim_y);

}  // namespace vae
