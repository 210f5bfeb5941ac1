// safetensors: 8-byte little-endian header length, a JSON header naming each tensor's dtype,
// shape and byte range, then the data. Only F32 tensors are written or accepted.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace vae {

struct SafeTensor {
  std::vector<int64_t> shape;
  std::vector<float> data;
};

struct SafeTensorsFile {
  std::map<std::string, std::string> metadata;              // "__metadata__": string to string
  std::vector<std::pair<std::string, SafeTensor>> tensors;  // in file order
  const SafeTensor* find(const std::string& name) const;
};

// Serializes and writes atomically (temp file, fsync, rename).
void write_safetensors(const std::string& path, const SafeTensorsFile& f);
// Throws vae::Error naming the file and the problem: bad header, dtype, shape, range, truncation.
SafeTensorsFile read_safetensors(const std::string& path);

}  // namespace vae
