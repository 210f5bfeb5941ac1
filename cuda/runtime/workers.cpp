// The CPU target's worker pool: the threads that run kernel blocks and GEMM panels.
#include "runtime/workers.h"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <map>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <thread>
#include <string>
#include <vector>

#if defined(__x86_64__)
#include <xmmintrin.h>
#endif
#include <signal.h>

#include "runtime/check.h"  // Error

namespace vae::hx {

namespace {

// Launches come in bursts: a helper spins this many pauses (tens of µs) before it sleeps.
constexpr int kSpinBeforeSleep = 20000;

// Denormal floats cost ~100 cycles each on x86 (Adam's second moments drift into that range and
// slowed epochs by a third); GPUs handle them at full speed. Kernels and CPU GEMMs run with
// flush-to-zero and denormals-are-zero, the calling thread's mode restored afterwards.
class FlushDenormals {
 public:
#if defined(__x86_64__)
  FlushDenormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | 0x8040u); }
  ~FlushDenormals() { _mm_setcsr(saved_); }

 private:
  unsigned saved_;
#endif
};

// Asynchronous signals (a stop request, a profiler's timer) are the business of the thread that
// runs the host code and the pool's first worker: a helper blocks them, so the kernel delivers
// them there, where install_stop_signals (host/model_run.cpp) set up a stack for the handlers.
// Run on a helper inside a CPU GEMM, a handler could land on a stack that is not one: oneDNN's JIT
// sgemm points the stack pointer into a heap buffer (see install_stop_signals). Faults stay
// unblocked: they are the faulting thread's, and a sanitizer's report needs them.
void block_async_signals() {
  sigset_t set;
  sigfillset(&set);
  for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGSYS, SIGABRT}) sigdelset(&set, sig);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

struct Job {
  int n = 0;
  void (*fn)(int, void*) = nullptr;
  void* ctx = nullptr;
};

class Pool {
 public:
  explicit Pool(int workers) : workers_(workers < 1 ? 1 : workers) {
    for (int i = 1; i < workers_; ++i) threads_.emplace_back([this] { helper(); });
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> lk(m_);
      stop_ = true;
      generation_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }
  int workers() const { return workers_; }

  void run(int n, void (*fn)(int, void*), void* ctx) {
    FlushDenormals ftz;
    if (n <= 1 || workers_ == 1) {
      for (int i = 0; i < n; ++i) fn(i, ctx);
      return;
    }
    std::lock_guard<std::mutex> serial(launch_m_);
    job_ = Job{n, fn, ctx};
    next_.store(0, std::memory_order_relaxed);
    pending_.store(workers_ - 1, std::memory_order_relaxed);
    {
      std::lock_guard<std::mutex> lk(m_);
      generation_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    work();
    for (int spins = 0; pending_.load(std::memory_order_acquire) > 0; ++spins) {
      if (spins > 4096) std::this_thread::yield();
    }
  }

 private:
  void work() {
    for (int i; (i = next_.fetch_add(1, std::memory_order_relaxed)) < job_.n;) job_.fn(i, job_.ctx);
  }
  void helper() {
    block_async_signals();
    FlushDenormals ftz;
    uint64_t seen = 0;
    for (;;) {
      // Spin briefly (launches come in bursts), then sleep.
      for (int spins = 0; generation_.load(std::memory_order_acquire) == seen; ++spins) {
        if (spins < kSpinBeforeSleep) {
#if defined(__x86_64__)
          __builtin_ia32_pause();
#endif
          continue;
        }
        std::unique_lock<std::mutex> lk(m_);
        cv_.wait(lk, [&] { return generation_.load(std::memory_order_acquire) != seen; });
      }
      seen = generation_.load(std::memory_order_acquire);
      if (stop_) return;
      work();
      pending_.fetch_sub(1, std::memory_order_release);
    }
  }

  int workers_;
  std::vector<std::thread> threads_;
  std::mutex m_, launch_m_;
  std::condition_variable cv_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> next_{0};
  std::atomic<int> pending_{0};
  Job job_;
  bool stop_ = false;
};

// VAE_CPU_WORKERS, or null where it is unset or empty.
const char* workers_variable() {
  const char* env = std::getenv("VAE_CPU_WORKERS");
  return env && *env ? env : nullptr;
}

// VAE_CPU_WORKERS, where it is set: a count of 1 to kMaxWorkers, digits only (a typo is an error,
// not the default).
constexpr long kMaxWorkers = 1024;
int default_workers() {
  if (const char* env = workers_variable()) {
    char* end = nullptr;
    const long n = std::strtol(env, &end, 10);
    if (!std::isdigit(static_cast<unsigned char>(env[0])) || *end || n < 1 || n > kMaxWorkers) {
      throw Error(std::string("VAE_CPU_WORKERS: '") + env + "' is not a worker count (1 to " +
                  std::to_string(kMaxWorkers) + ")");
    }
    return static_cast<int>(n);
  }
  const unsigned hc = std::thread::hardware_concurrency();
  return hc ? static_cast<int>(hc) : 1;
}

std::unique_ptr<Pool>& pool() {
  static std::unique_ptr<Pool> p = std::make_unique<Pool>(default_workers());
  return p;
}

std::atomic<unsigned long long> kernel_launches{0}, gemm_calls{0};

}  // namespace

int workers() { return pool()->workers(); }
bool workers_set_by_environment() { return workers_variable() != nullptr; }

void set_workers(int n) {
  auto& p = pool();
  if (p->workers() == n) return;
  p.reset();
  p = std::make_unique<Pool>(n);
}

void parallel_for(int n, void (*fn)(int, void*), void* ctx) { pool()->run(n, fn, ctx); }

WorkCounts work_counts() { return {kernel_launches.load(), gemm_calls.load()}; }
void count_kernel_launch() { kernel_launches.fetch_add(1, std::memory_order_relaxed); }
void count_gemm_call() { gemm_calls.fetch_add(1, std::memory_order_relaxed); }

namespace {
std::atomic<bool> profiling_on{false};
std::map<std::string, ProfileEntry>& profile_entries() {
  static std::map<std::string, ProfileEntry> entries;
  return entries;
}
}  // namespace

void set_profiling(bool on) { profiling_on.store(on); }
bool profiling() { return profiling_on.load(std::memory_order_relaxed); }
void add_to_profile(const char* name, double seconds) {
  ProfileEntry& e = profile_entries()[name];
  e.name = name;
  e.seconds += seconds;
  ++e.calls;
}
std::vector<ProfileEntry> profile() {
  std::vector<ProfileEntry> out;
  for (const auto& [name, e] : profile_entries()) out.push_back(e);
  std::sort(out.begin(), out.end(), [](const ProfileEntry& a, const ProfileEntry& b) { return a.seconds > b.seconds; });
  return out;
}
void clear_profile() { profile_entries().clear(); }

}  // namespace vae::hx
