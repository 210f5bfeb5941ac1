// The part of CUDA's warp matrix API (nvcuda::wmma, TF32 16×16×8) that kernels use, under host
// execution. On a GPU a fragment is spread over the 32 lanes of a warp; here every lane holds the
// whole tile and computes the whole product (the CPU target runs this for testing, not speed), so
// loads, products and stores give what the warp as a whole gives. Products of TF32-rounded
// inputs are accumulated in float, as the tensor cores do (in another order).
#pragma once

#if defined(__CUDACC__)
#error "wmma_host.h is for the host compiler"
#endif

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace nvcuda::wmma {

struct row_major;
struct col_major;
struct matrix_a;
struct matrix_b;
struct accumulator;
namespace precision {
struct tf32;
}
enum layout_t { mem_row_major, mem_col_major };

// Rounds to TF32 (10 explicit mantissa bits), to nearest with ties away from zero, as
// cvt.rna.tf32.f32 does; the result is a float whose low 13 mantissa bits are zero.
inline float __float_to_tf32(float in) {
  uint32_t bits;
  std::memcpy(&bits, &in, sizeof bits);
  if ((bits & 0x7f800000u) != 0x7f800000u) bits = (bits + 0x1000u) & 0xffffe000u;  // finite values only
  float out;
  std::memcpy(&out, &bits, sizeof out);
  return out;
}

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment;

// matrix_a is M × K, matrix_b K × N, the accumulator M × N; x holds the tile row-major.
template <typename Layout>
struct fragment<matrix_a, 16, 16, 8, precision::tf32, Layout> {
  static constexpr int rows = 16, cols = 8, num_elements = 128;
  float x[num_elements];
};
template <typename Layout>
struct fragment<matrix_b, 16, 16, 8, precision::tf32, Layout> {
  static constexpr int rows = 8, cols = 16, num_elements = 128;
  float x[num_elements];
};
template <>
struct fragment<accumulator, 16, 16, 8, float, void> {
  static constexpr int rows = 16, cols = 16, num_elements = 256;
  float x[num_elements];
};

template <typename Use, typename Layout>
inline void load_matrix_sync(fragment<Use, 16, 16, 8, precision::tf32, Layout>& f, const float* p, unsigned ldm) {
  using F = fragment<Use, 16, 16, 8, precision::tf32, Layout>;
  constexpr bool row = std::is_same<Layout, row_major>::value;
  for (int r = 0; r < F::rows; ++r)
    for (int c = 0; c < F::cols; ++c) f.x[r * F::cols + c] = row ? p[r * ldm + c] : p[c * ldm + r];
}

inline void fill_fragment(fragment<accumulator, 16, 16, 8, float>& f, float v) {
  for (float& e : f.x) e = v;
}

template <typename LayoutA, typename LayoutB>
inline void mma_sync(fragment<accumulator, 16, 16, 8, float>& d,
                     const fragment<matrix_a, 16, 16, 8, precision::tf32, LayoutA>& a,
                     const fragment<matrix_b, 16, 16, 8, precision::tf32, LayoutB>& b,
                     const fragment<accumulator, 16, 16, 8, float>& c) {
  float out[256];
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) {
      float s = c.x[i * 16 + j];
      for (int k = 0; k < 8; ++k) s += a.x[i * 8 + k] * b.x[k * 16 + j];
      out[i * 16 + j] = s;
    }
  std::memcpy(d.x, out, sizeof out);
}

inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 8, float>& f, unsigned ldm,
                              layout_t layout) {
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c) {
      (layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.x[r * 16 + c];
    }
}

}  // namespace nvcuda::wmma
