// IDX images, plain or gzip (zlib tells them apart by their magic).
#include "dataset.h"
#include "fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = vae::fuzz::as_file(data, size);
  vae::fuzz::expect_clean_rejection([&] { vae::read_idx_images(path); });
  vae::fuzz::expect_clean_rejection([&] { vae::read_idx_images(path, 2); });  // a limit: only its images read
  return 0;
}
