#include "data.h"

#include <filesystem>

#include "runtime/check.h"

namespace vae {

namespace fs = std::filesystem;

namespace {

std::string data_dir(const DataOptions& o) {
  if (o.data == "fashion-mnist") {
    std::error_code ec;
    if (!fs::is_directory(kFashionMnistDir, ec)) {
      throw Error(std::string("--data fashion-mnist: ") + kFashionMnistDir +
                  " is missing (install Debian's dataset-fashion-mnist, or run cmake/setup.sh)");
    }
    return kFashionMnistDir;
  }
  std::error_code ec;
  if (!fs::is_directory(o.data, ec)) throw Error("--data: '" + o.data + "' is not a folder (or 'fashion-mnist')");
  return o.data;
}

Dataset load_split(const DataOptions& o, bool train) {
  const std::string npy = train ? o.train_npy : o.test_npy;
  const int64_t limit = train ? o.train_limit : o.test_limit;
  Dataset d;
  if (!o.train_npy.empty() || !o.test_npy.empty()) {
    if (npy.empty()) throw Error(train ? "--train: needed with --test" : "--test: needed with --train");
    d = read_npy(npy);
  } else {  // with a limit, only the images it keeps are read
    d = read_idx_images(find_idx_file(data_dir(o), train ? "train-images-idx3-ubyte" : "t10k-images-idx3-ubyte"),
                        limit);
  }
  if (limit > 0) d.truncate(limit);
  return d;
}

}  // namespace

Dataset load_train_data(const DataOptions& o) { return load_split(o, true); }
Dataset load_test_data(const DataOptions& o) { return load_split(o, false); }

DeviceDataset::DeviceDataset(const DeviceContext& ctx, const Dataset& d)
    : type(d.type), count(d.count), dim(d.dim()), bytes(ctx, d.bytes()) {
  bytes.upload(static_cast<const uint8_t*>(d.data()), d.bytes());
}

Dataset load_eval_data(const DataOptions& d, const TrainConfig& config) {
  Dataset test = d.test_npy.empty() ? load_test_data(d) : read_npy(d.test_npy);
  if (d.test_limit > 0) test.truncate(d.test_limit);
  if (test.dim() != config.model.input_dim) {
    throw Error(test.source + ": images have " + std::to_string(test.dim()) + " pixels but the model takes " +
                std::to_string(config.model.input_dim));
  }
  if (config.binarize == Binarize::static_threshold) test.binarize_threshold();
  return test;
}

}  // namespace vae
