// Checkpoints: the safetensors container, its JSON header, the config inside its metadata and the
// tensors the config's model needs.
#include "checkpoint.h"
#include "fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = vae::fuzz::as_file(data, size);
  vae::fuzz::expect_clean_rejection([&] { vae::load_checkpoint(path); });
  return 0;
}
