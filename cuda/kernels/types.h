// Plain types shared by kernels, launchers and host code.
#pragma once

#include <cstdint>

namespace vae {

enum class Activation : int { identity = 0, relu = 1, tanh = 2 };

enum class PixelType : int { u8 = 0, f32 = 1 };

enum class OptimizerKind : int { adam = 0, adagrad = 1, sgd = 2 };

struct OptimizerHyper {
  float lr = 1e-3f;
  float beta1 = 0.9f;      // Adam
  float beta2 = 0.999f;    // Adam
  float eps = 1e-8f;       // Adam, Adagrad
  float momentum = 0.9f;   // SGD
  float weight_decay = 0;  // L2 term added to the gradient, as torch.optim does
};

// Independent Philox streams, so that no two uses of the seed share numbers (at most 8).
enum class RandomStream : uint64_t { latent_noise = 0, binarize = 1, eval_noise = 2, eval_binarize = 3, prior = 4 };

// Where a pass stands, in device memory: kernels read the step (random-number key, Adam's bias
// correction) and the batch offset from here, so one captured CUDA graph serves every step;
// advance_step moves it on at the end of a training step.
struct StepState {
  uint64_t step = 0;   // optimizer steps taken before this one
  int64_t offset = 0;  // first row of this batch in the (permuted) data set
};

// The fused encoder's inputs and outputs (cuda/kernels/encoder_fused.cu); device pointers.
constexpr int kMaxFusedLayers = 4;
struct FusedEncoderArgs {
  const float* x = nullptr;  // (B, D)
  int batch = 0, input_dim = 0;
  int hidden_layers = 0;  // at most kMaxFusedLayers
  int width[kMaxFusedLayers] = {};
  const float* weight[kMaxFusedLayers] = {};  // (width[l], previous width), nn.Linear layout
  const float* bias[kMaxFusedLayers] = {};
  float* hidden[kMaxFusedLayers] = {};  // (B, width[l]) post-activation, for the backward pass
  Activation activation = Activation::relu;
  const float* heads_weight = nullptr;  // (2J, last width): μ rows, then log σ² rows
  const float* heads_bias = nullptr;    // (2J)
  float* heads = nullptr;               // (B, 2J)
  int latent = 0, samples = 1;
  float* z = nullptr;   // (L*B, J)
  float* kl = nullptr;  // (B)
  uint64_t seed = 0;
  RandomStream stream = RandomStream::latent_noise;
  const StepState* at = nullptr;
};

// Row-major GEMM: C[m,n] = alpha * op(A)[m,k] * op(B)[k,n] + beta * C.
struct GemmOp {
  bool trans_a = false, trans_b = false;
  int m = 0, n = 0, k = 0;
  float alpha = 1.f;
  const float* a = nullptr;
  int lda = 0;
  const float* b = nullptr;
  int ldb = 0;
  float beta = 0.f;
  float* c = nullptr;
  int ldc = 0;
};

}  // namespace vae
