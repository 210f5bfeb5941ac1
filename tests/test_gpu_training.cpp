// Training on the GPU: bit-identical parameters for the same seed, the CUDA graph against the
// kernels launched one by one (over a partial last batch and into the next epoch), and 200 steps
// against the CPU build of the same kernels. These skip, saying why, without a GPU.
#include <cmath>
#include <filesystem>

#include "support.h"
#include "trainer.h"

namespace vae {
namespace {

class GpuTraining : public ::testing::Test {
 protected:
  void SetUp() override {
    VAE_SKIP_WITHOUT_DEVICE(Target::cuda);
    if (!std::filesystem::is_directory(kFashionMnistDir)) FAIL() << kFashionMnistDir << " is missing";
    DataOptions d;
    d.train_limit = 200 * 128 + 37;  // 200 steps of the default batch and a partial one of 37 rows
    d.test_limit = 1000;
    train_ = load_train_data(d);
    test_ = load_test_data(d);
    config_.model.input_dim = train_.dim();
    config_.model.image_height = train_.height;
    config_.model.image_width = train_.width;
  }
  Dataset train_, test_;
  TrainConfig config_;  // the defaults: 784-400-20, Adam 1e-3, batch 128, seed 1
};

struct EpochRun {
  std::vector<float> params;
  ElboTotals train, test;
  bool graph;
};

EpochRun train_one_epoch(Target target, const TrainConfig& config, const Dataset& train, const Dataset& test,
                         bool graph, int epochs = 1) {
  DeviceContext ctx(target, false);
  Trainer t(ctx, config);
  t.set_use_graph(graph);
  const DeviceDataset tr(ctx, train), te(ctx, test);
  EpochRun r;
  for (int e = 0; e < epochs; ++e) r.train = t.train_epoch(tr);
  r.test = t.evaluate(te);
  r.params = t.checkpoint().params;
  r.graph = t.graph_in_use();
  return r;
}

TEST_F(GpuTraining, SameSeedGivesBitIdenticalParameters) {
  const EpochRun a = train_one_epoch(Target::cuda, config_, train_, test_, true);
  const EpochRun b = train_one_epoch(Target::cuda, config_, train_, test_, true);
  EXPECT_TRUE(a.graph) << "the CUDA graph was not used";
  EXPECT_EQ(a.params, b.params);
  EXPECT_EQ(a.train.elbo(), b.train.elbo());
}

// Two epochs, each ending in a partial batch: the partial step runs eagerly after the graph's
// replays (with a step state uploaded for it), and the next epoch replays the graph again.
TEST_F(GpuTraining, GraphReplayMatchesKernelsLaunchedOneByOne) {
  const EpochRun graph = train_one_epoch(Target::cuda, config_, train_, test_, true, 2);
  const EpochRun eager = train_one_epoch(Target::cuda, config_, train_, test_, false, 2);
  EXPECT_TRUE(graph.graph);
  EXPECT_FALSE(eager.graph);
  EXPECT_EQ(graph.params, eager.params);
  EXPECT_EQ(graph.train.elbo(), eager.train.elbo());
  EXPECT_EQ(graph.train.n, 200 * 128 + 37);
}

TEST_F(GpuTraining, TwoHundredStepsAgreeWithTheCpu) {
  const EpochRun gpu = train_one_epoch(Target::cuda, config_, train_, test_, true);
  const EpochRun cpu = train_one_epoch(Target::cpu, config_, train_, test_, false);
  // The same seed draws the same ε and the same batches; float rounding differs (cuBLAS against
  // OpenBLAS, fast intrinsics), so the runs drift apart a little over 200 Adam steps.
  EXPECT_NEAR(gpu.train.elbo(), cpu.train.elbo(), 0.5) << "mean train ELBO over the 200 steps";
  EXPECT_NEAR(gpu.test.elbo(), cpu.test.elbo(), 1.0) << "test ELBO after 200 steps";
  EXPECT_GT(gpu.test.elbo(), -300) << "the GPU run did not learn";
}

}  // namespace
}  // namespace vae
