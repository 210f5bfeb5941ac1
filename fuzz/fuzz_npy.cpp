// NPY arrays (uint8 or float32, rank 2 or 3) as images, and as float32 matrices (latent codes).
#include "dataset.h"
#include "fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = vae::fuzz::as_file(data, size);
  vae::fuzz::expect_clean_rejection([&] { vae::read_npy(path); });
  vae::fuzz::expect_clean_rejection([&] { vae::read_npy_matrix(path); });
  return 0;
}
