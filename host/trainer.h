// Minibatch SGVB training and evaluation on a target, with the run's outputs.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "checkpoint.h"
#include "dataset.h"
#include "device_context.h"
#include "vae.h"

namespace vae {

constexpr const char* kFashionMnistDir = "/usr/share/datasets/fashion-mnist";
Dataset load_train_data(const DataOptions& o);
Dataset load_test_data(const DataOptions& o);

struct ElboTotals {
  double recon = 0, kl = 0;  // mean per datapoint, nats
  int64_t n = 0;
  double elbo() const { return recon - kl; }
};

// A dataset resident in target memory.
struct DeviceDataset {
  DeviceDataset(const DeviceContext& ctx, const Dataset& d);
  PixelType type;
  int64_t count;
  int dim;
  DeviceBuffer<uint8_t> bytes;
};

class Trainer {
 public:
  Trainer(const DeviceContext& ctx, const TrainConfig& config);
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;
  // Full batches replay one captured CUDA graph of the whole step where the target has graphs
  // (the GPU); off, the same kernels are launched one by one.
  void set_use_graph(bool on) { use_graph_ = on; }
  // The encoder through the fused kernel (see Vae::set_fused_encoder).
  void set_fused_encoder(bool on) { vae_.set_fused_encoder(on); }
  bool graph_in_use() const { return graph_ != nullptr; }
  // Continues from a checkpoint of the same configuration.
  void restore(const Checkpoint& ckpt);
  Checkpoint checkpoint() const;

  // One epoch over `train` (shuffled by seed and epoch); `on_batch(done, total)` after each step.
  ElboTotals train_epoch(const DeviceDataset& train, const std::function<void(int64_t, int64_t)>& on_batch = {});
  // Test-set ELBO with fixed noise: the same checkpoint gives the same number every time.
  ElboTotals evaluate(const DeviceDataset& test);
  // Images as values in [0, 1]: 64 decoder means of prior samples; the first n test images
  // followed by their reconstructions.
  std::vector<float> prior_samples(int n);
  std::vector<float> reconstructions(const DeviceDataset& test, int n);

  int epoch() const { return epoch_; }
  int64_t step() const { return step_; }
  const TrainConfig& config() const { return config_; }
  Vae& model() { return vae_; }

 private:
  const DeviceContext& ctx_;
  TrainConfig config_;
  Vae vae_;
  Optimizer optimizer_;
  // Queues one whole training step of `batch` rows at train_at_ (no host synchronisation).
  void queue_step(const DeviceDataset& train, int batch);
  // A StepState array in device memory: entry b is {b, b * batch_size}, for fixed-noise passes.
  const StepState* fixed_steps(int64_t count);

  DeviceBuffer<double> totals_;
  DeviceBuffer<int> perm_;
  DeviceBuffer<StepState> train_at_, fixed_at_;
  int64_t step_ = 0;
  int epoch_ = 0;
  bool use_graph_ = true;
  StepGraph* graph_ = nullptr;
  const void* graph_data_ = nullptr;  // the buffers the graph was captured for
  const int* graph_perm_ = nullptr;
};

// The `vae train` command: everything a run writes goes under options.out_dir.
struct TrainRun {
  TrainConfig config;
  DataOptions data;
  std::string out_dir;  // empty: runs/<timestamp>, or the checkpoint's folder on --resume
  std::string resume;
  std::string device = "auto";
  bool quiet = false;
  bool cuda_graph = true;  // --no-graph turns it off
  bool fused_encoder = false;
};
int run_train(const TrainRun& run);

}  // namespace vae
