// Writes that never leave a partial file where a good one was: temp file, fsync, rename.
#pragma once

#include <string>

namespace vae {

// Writes bytes to path through a temporary file in the same folder, fsynced, then renamed over
// path, and the folder fsynced. On any failure the previous file is intact, the temporary file
// removed, and the Error names the path, the stage and the system's reason.
void write_file_atomically(const std::string& path, const std::string& bytes);

// Appends a line to a small text file (metrics.jsonl) the same way: the old lines and the new one
// are written to a temporary file that replaces the old, so a failed write never leaves half a line.
void append_line_atomically(const std::string& path, const std::string& line);

// The whole of a file into text; false (text untouched) when it cannot be opened.
bool read_whole_file(const std::string& path, std::string& text);

// For tests: the next write_file_atomically of a path ending in path_suffix fails at `stage` with
// errno `error`, as if that system call had failed.
enum class WriteStage { open, write, fsync, rename };
void inject_write_failure(WriteStage stage, int error, const std::string& path_suffix);

}  // namespace vae
