#include "runtime/host_memory.h"

#include <algorithm>
#include <fstream>
#include <limits>

#include <unistd.h>

namespace vae {

namespace {

constexpr size_t kUnlimited = std::numeric_limits<size_t>::max();

// The number a file holds; false where it is missing or holds none ("max": no limit).
bool read_number(const std::string& path, size_t& value) {
  std::ifstream f(path);
  std::string word;
  if (!(f >> word) || word.empty() || word.find_first_not_of("0123456789") != std::string::npos) return false;
  try {
    value = std::stoull(word);
  } catch (const std::exception&) {
    return false;
  }
  return true;
}

// A "key value" line's value in a file such as memory.stat (0 where there is none).
size_t read_key(const std::string& path, const std::string& key) {
  std::ifstream f(path);
  std::string k;
  size_t v = 0;
  while (f >> k >> v) {
    if (k == key) return v;
  }
  return 0;
}

// What is left under the limit of the group in `dir` (kUnlimited where it has none).
size_t headroom(const std::string& dir, const char* limit_file, const char* usage_file, const char* inactive_key) {
  size_t limit = 0, usage = 0;
  if (!read_number(dir + "/" + limit_file, limit) || limit >= (size_t{1} << 62)) return kUnlimited;
  if (!read_number(dir + "/" + usage_file, usage)) usage = 0;
  const size_t inactive = std::min(usage, read_key(dir + "/memory.stat", inactive_key));
  usage -= inactive;
  return usage >= limit ? 0 : limit - usage;
}

// The least headroom from `mount` + `path` up to `mount`.
size_t least_headroom(const std::string& mount, std::string path, const char* limit_file, const char* usage_file,
                      const char* inactive_key) {
  size_t least = headroom(mount, limit_file, usage_file, inactive_key);
  while (!path.empty() && path != "/") {
    least = std::min(least, headroom(mount + path, limit_file, usage_file, inactive_key));
    const size_t slash = path.find_last_of('/');
    path = slash == std::string::npos ? "" : path.substr(0, slash);
  }
  return least;
}

}  // namespace

size_t host_memory_available(const std::string& root) {
  size_t available = kUnlimited;
  {
    std::ifstream meminfo(root + "/proc/meminfo");
    std::string key;
    size_t kb = 0;
    while (meminfo >> key >> kb) {
      if (key == "MemAvailable:") {
        available = kb * 1024;
        break;
      }
      meminfo.ignore(256, '\n');
    }
  }
  if (available == kUnlimited) {
    const long pages = sysconf(_SC_AVPHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    if (pages > 0 && page > 0) available = static_cast<size_t>(pages) * static_cast<size_t>(page);
  }
  // /proc/self/cgroup: "0::/path" (v2), "N:controllers:/path" (v1; the memory controller's).
  std::ifstream groups(root + "/proc/self/cgroup");
  std::string line;
  while (std::getline(groups, line)) {
    const size_t a = line.find(':'), b = a == std::string::npos ? a : line.find(':', a + 1);
    if (b == std::string::npos) continue;
    const std::string controllers = line.substr(a + 1, b - a - 1), path = line.substr(b + 1);
    if (controllers.empty()) {
      available = std::min(
          available, least_headroom(root + "/sys/fs/cgroup", path, "memory.max", "memory.current", "inactive_file"));
    } else if (("," + controllers + ",").find(",memory,") != std::string::npos) {
      available = std::min(available, least_headroom(root + "/sys/fs/cgroup/memory", path, "memory.limit_in_bytes",
                                                     "memory.usage_in_bytes", "total_inactive_file"));
    }
  }
  return available == kUnlimited ? 0 : available;
}

}  // namespace vae
