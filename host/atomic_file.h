// Writes that never leave a partial file where a good one was: temp file, fsync, rename.
#pragma once

#include <string>

namespace vae {

void write_file_atomically(const std::string& path, const std::string& bytes);

}  // namespace vae
