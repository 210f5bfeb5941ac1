#include "manifold.h"

#include <cmath>

#include "runtime/check.h"

namespace vae {

double normal_quantile(double p) {
  VAE_REQUIRE(p > 0 && p < 1, "normal_quantile: p outside (0, 1)");
  // Acklam's rational approximation (relative error below 1.2e-9), then one Halley step on
  // Φ(x) = ½ erfc(−x/√2), which brings it to double precision.
  static const double a[] = {-3.969683028665376e+01, 2.209460984245205e+02,  -2.759285104469687e+02,
                             1.383577518672690e+02,  -3.066479806614716e+01, 2.506628277459239e+00};
  static const double b[] = {-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02,
                             6.680131188771972e+01, -1.328068155288572e+01};
  static const double c[] = {-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00,
                             -2.549732539343734e+00, 4.374664141464968e+00,  2.938163982698783e+00};
  static const double d[] = {7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00,
                             3.754408661907416e+00};
  auto tail = [&](double q) {  // q = sqrt(−2 log p) of the nearer tail
    return (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
           ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
  };
  double x;
  if (p < 0.02425) {
    x = tail(std::sqrt(-2 * std::log(p)));
  } else if (p > 1 - 0.02425) {
    x = -tail(std::sqrt(-2 * std::log1p(-p)));
  } else {
    const double q = p - 0.5, r = q * q;
    x = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q /
        (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1);
  }
  const double e = 0.5 * std::erfc(-x / std::sqrt(2.0)) - p;
  const double u = e * std::sqrt(2 * M_PI) * std::exp(0.5 * x * x);
  return x - u / (1 + 0.5 * x * u);
}

std::vector<float> manifold_codes(int latent, int grid, int dim_x, int dim_y) {
  VAE_REQUIRE(grid > 0 && dim_x >= 0 && dim_x < latent && dim_y >= 0 && dim_y < latent,
              "manifold_codes: bad grid or dimensions");
  std::vector<float> z(static_cast<size_t>(grid) * grid * latent, 0.f);
  for (int i = 0; i < grid; ++i)
    for (int j = 0; j < grid; ++j) {
      float* row = z.data() + (static_cast<size_t>(i) * grid + j) * latent;
      if (dim_x == dim_y) {  // one dimension: grid² quantiles, row by row
        row[dim_x] = static_cast<float>(normal_quantile((static_cast<double>(i) * grid + j + 0.5) / (grid * grid)));
      } else {
        row[dim_x] = static_cast<float>(normal_quantile((j + 0.5) / grid));
        row[dim_y] = static_cast<float>(normal_quantile((i + 0.5) / grid));
      }
    }
  return z;
}

}  // namespace vae
