// How much memory the process can still take on the host: what the CPU target's allocations
// check before they take a large buffer (cuda/runtime/memory.cu), so that a model too large for
// the machine is a one-line error instead of the kernel's out-of-memory kill.
#pragma once

#include <cstddef>
#include <string>

namespace vae {

// The least of the kernel's MemAvailable (/proc/meminfo: free memory and what can be reclaimed
// without swapping) and, where the process's control group has a memory limit (a container's, a
// cluster job's: cgroup v2 memory.max or v1 memory.limit_in_bytes), what is left under it — the
// limit less the usage, less the inactive file cache the kernel reclaims first — at each level
// from the process's group up to the hierarchy's root, and at the root of the mount (a container's
// own group). `root` prefixes every path (tests give a folder laid out as / is).
size_t host_memory_available(const std::string& root = "");

// "N MiB" (rounded up), for the allocations' messages.
inline std::string mebibytes(size_t bytes) { return std::to_string((bytes + (size_t{1} << 20) - 1) >> 20) + " MiB"; }

}  // namespace vae
