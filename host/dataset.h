// Data sets: MNIST-format IDX files (optionally .gz) and NPY arrays, held as uint8 or float32
// rows of D pixels in [0, 1] after scaling.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/types.h"

namespace vae {

struct Dataset {
  std::string source;  // file it came from, for messages
  PixelType type = PixelType::u8;
  int64_t count = 0;          // N
  int height = 0, width = 0;  // image shape; D = height * width
  std::vector<uint8_t> u8;    // (N, D) when type == u8
  std::vector<float> f32;     // (N, D) when type == f32, values in [0, 1]
  int dim() const { return height * width; }
  const void* data() const { return type == PixelType::u8 ? static_cast<const void*>(u8.data()) : f32.data(); }
  size_t bytes() const { return type == PixelType::u8 ? u8.size() : f32.size() * sizeof(float); }
  // Keeps the first n rows (n <= count).
  void truncate(int64_t n);
  // Static binarization: pixel >= ½ becomes 1, else 0 (a fixed data set, as in the literature).
  void binarize_threshold();
};

// Reads a whole file, decompressing it when it starts with the gzip magic. Throws vae::Error.
std::vector<uint8_t> read_file_maybe_gz(const std::string& path);

// IDX (MNIST format): magic 0x00000803 (uint8, rank 3); sizes checked against the length. With
// max_images > 0, only the first max_images images are read (a short file is still an error, but
// what follows them is not read, nor the gzip trailer's checksum).
Dataset read_idx_images(const std::string& path, int64_t max_images = 0);
void write_idx_images(const std::string& path, const Dataset& d);  // uint8 only, uncompressed

// NPY: uint8 ('|u1') or float32 ('<f4'), C order, 2-D (N, D) or 3-D (N, H, W).
Dataset read_npy(const std::string& path);
void write_npy(const std::string& path, const Dataset& d);

// A float32 matrix (N, K) in NPY, of any finite values: latent codes for `vae decode`, and what
// `vae encode` writes.
struct FloatMatrix {
  std::string source;
  int64_t rows = 0;
  int cols = 0;
  std::vector<float> values;  // (rows, cols), C order
};
FloatMatrix read_npy_matrix(const std::string& path);  // throws vae::Error naming the file
void write_npy_matrix(const std::string& path, const FloatMatrix& m);

// A folder with train-images-idx3-ubyte and t10k-images-idx3-ubyte, each optionally .gz.
std::string find_idx_file(const std::string& dir, const std::string& stem);

}  // namespace vae
