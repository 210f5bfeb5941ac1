// A target chosen at run time (calls go to it by name: VAE_CALL(ctx.target(), fn, ...), cuda/ops.h),
// its compute stream and GEMM handle, and device buffers that free themselves.
#pragma once

#include <atomic>
#include <cstddef>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "ops.h"
#include "runtime/target.h"

namespace vae {

class DeviceContext {
 public:
  DeviceContext(Target target, bool tf32);
  ~DeviceContext();
  DeviceContext(const DeviceContext&) = delete;
  DeviceContext& operator=(const DeviceContext&) = delete;

  Target target() const { return target_; }
  cudaStream_t stream() const { return stream_; }
  GemmHandle* gemm() const { return gemm_; }
  bool tf32() const { return tf32_; }
  // "cpu (2 workers)" or the GPU's name with its architecture ("NVIDIA H200 (sm_90)").
  const std::string& description() const { return description_; }
  // "cpu" or the GPU's name ("NVIDIA H200"): what the step rule's table is keyed by (host/step_rule.h).
  const std::string& card() const { return card_; }
  void synchronize() const { VAE_CALL(target_, synchronize, stream_); }
  // Bytes held by the DeviceBuffers made on this context (what a model costs: vae sweep's check).
  long long allocated_bytes() const { return allocated_.load(); }
  void count_allocation(long long bytes) const { allocated_ += bytes; }

 private:
  Target target_;
  cudaStream_t stream_ = nullptr;
  GemmHandle* gemm_ = nullptr;
  bool tf32_;
  std::string description_, card_;
  mutable std::atomic<long long> allocated_{0};
};

// The work `queue` queues on the context's stream, captured as a CUDA graph (replayed with
// graph_launch): the graph, or null where the target has none (then nothing was queued). The
// stream leaves capture mode whatever queue throws.
StepGraph* capture_graph(const DeviceContext& ctx, const std::function<void()>& queue);

// Owns count elements of T in the target's memory.
template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceContext& ctx, size_t count) : ctx_(&ctx), count_(count) {
    data_ = static_cast<T*>(VAE_CALL(ctx.target(), device_alloc, count * sizeof(T)));
    ctx.count_allocation(static_cast<long long>(count * sizeof(T)));
    if (count) VAE_CALL(ctx.target(), fill_zero, data_, count * sizeof(T), ctx.stream());
  }
  DeviceBuffer(const DeviceContext& ctx, const std::vector<T>& host) : DeviceBuffer(ctx, host.size()) { upload(host); }
  ~DeviceBuffer() { reset(); }
  DeviceBuffer(DeviceBuffer&& o) noexcept { *this = std::move(o); }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      reset();
      ctx_ = o.ctx_;
      data_ = o.data_;
      count_ = o.count_;
      o.data_ = nullptr;
      o.count_ = 0;
    }
    return *this;
  }

  T* data() const { return data_; }
  size_t size() const { return count_; }
  void upload(const std::vector<T>& host) { upload(host.data(), host.size()); }
  void upload(const T* host, size_t count) {
    if (count > count_) throw std::length_error("DeviceBuffer::upload: too many elements");
    VAE_CALL(ctx_->target(), copy_to_device, data_, host, count * sizeof(T), ctx_->stream());
  }
  std::vector<T> download() const {
    std::vector<T> host(count_);
    VAE_CALL(ctx_->target(), copy_to_host, host.data(), data_, count_ * sizeof(T), ctx_->stream());
    return host;
  }
  void zero() { VAE_CALL(ctx_->target(), fill_zero, data_, count_ * sizeof(T), ctx_->stream()); }

 private:
  void reset() {
    if (data_) {
      VAE_CALL(ctx_->target(), device_free, data_);
      ctx_->count_allocation(-static_cast<long long>(count_ * sizeof(T)));
    }
    data_ = nullptr;
    count_ = 0;
  }
  const DeviceContext* ctx_ = nullptr;
  T* data_ = nullptr;
  size_t count_ = 0;
};

}  // namespace vae
