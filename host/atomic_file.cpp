#include "atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <mutex>
#include <optional>

#include "runtime/check.h"

namespace vae {

namespace {

struct InjectedFailure {
  WriteStage stage;
  int error;
  std::string suffix;
};
std::mutex injected_m;
std::optional<InjectedFailure> injected;

// The error the test hook makes this stage of this write fail with (once), or 0.
int injected_error(WriteStage stage, const std::string& path) {
  std::lock_guard<std::mutex> lk(injected_m);
  if (!injected || injected->stage != stage || path.size() < injected->suffix.size() ||
      path.compare(path.size() - injected->suffix.size(), std::string::npos, injected->suffix) != 0) {
    return 0;
  }
  const int error = injected->error;
  injected.reset();
  return error;
}

}  // namespace

void inject_write_failure(WriteStage stage, int error, const std::string& path_suffix) {
  std::lock_guard<std::mutex> lk(injected_m);
  injected = InjectedFailure{stage, error, path_suffix};
}

void write_file_atomically(const std::string& path, const std::string& bytes) {
  const std::string tmp = path + ".tmp." + std::to_string(getpid());
  auto fail = [&](const char* what, int error, int fd) {
    if (fd >= 0) ::close(fd);
    ::unlink(tmp.c_str());
    throw Error(path + ": " + what + " failed (" + std::strerror(error) + ")");
  };
  if (const int e = injected_error(WriteStage::open, path)) fail("open", e, -1);
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail("open", errno, -1);
  // An injected write failure strikes after half the bytes, as a disk that fills up would.
  const int write_error = injected_error(WriteStage::write, path);
  const size_t limit = write_error ? bytes.size() / 2 : bytes.size();
  for (size_t done = 0; done < limit;) {
    const ssize_t n = ::write(fd, bytes.data() + done, limit - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail("write", errno, fd);
    done += static_cast<size_t>(n);
  }
  if (write_error) fail("write", write_error, fd);
  if (const int e = injected_error(WriteStage::fsync, path)) fail("fsync", e, fd);
  if (::fsync(fd) != 0) fail("fsync", errno, fd);
  if (::close(fd) != 0) fail("close", errno, -1);
  if (const int e = injected_error(WriteStage::rename, path)) fail("rename", e, -1);
  if (std::rename(tmp.c_str(), path.c_str()) != 0) fail("rename", errno, -1);
  // Make the rename itself durable.
  const std::string dir = std::filesystem::path(path).parent_path().string();
  const int dfd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

bool read_whole_file(const std::string& path, std::string& text) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  return true;
}

void append_line_atomically(const std::string& path, const std::string& line) {
  std::string text;
  std::error_code ec;
  if (std::filesystem::exists(path, ec)) {
    if (!read_whole_file(path, text)) throw Error(path + ": cannot read (" + std::strerror(errno) + ")");
    if (!text.empty() && text.back() != '\n') text += '\n';
  }
  write_file_atomically(path, text + line + "\n");
}

}  // namespace vae
