// Where a run's images come from (DataOptions: --data fashion-mnist|DIR, or --train/--test NPY
// files), loaded into a Dataset, and a Dataset resident on the target (DeviceDataset).
#pragma once

#include <cstdint>

#include "dataset.h"         // Dataset, the IDX and NPY readers
#include "device_context.h"  // DeviceContext, DeviceBuffer
#include "train_config.h"    // DataOptions, TrainConfig

namespace vae {

constexpr const char* kFashionMnistDir = "/usr/share/datasets/fashion-mnist";
Dataset load_train_data(const DataOptions& o);
Dataset load_test_data(const DataOptions& o);

// The test images of `vae eval`, `encode` and `reconstruct`: d's test set (its NPY file or the
// folder's), its first d.test_limit rows, checked against the model's input size and binarized
// as the run was (static threshold). Throws vae::Error naming the file.
Dataset load_eval_data(const DataOptions& d, const TrainConfig& config);

// A dataset resident in target memory.
struct DeviceDataset {
  DeviceDataset(const DeviceContext& ctx, const Dataset& d);
  PixelType type;
  int64_t count;
  int dim;
  DeviceBuffer<uint8_t> bytes;
};

}  // namespace vae
