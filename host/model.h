// The VAE's architecture, its parameters' layout in one flat buffer, and their initialisation.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/types.h"

namespace vae {

enum class DecoderKind { bernoulli, gaussian };

// The most latent dimensions a model may have (--latent, and a checkpoint's config): the
// evaluation's aggregate posterior holds a row's 1/σ² in float64 in 32 KB of shared memory.
constexpr int kMaxLatent = 4096;

struct ModelConfig {
  int input_dim = 784;
  int image_height = 28, image_width = 28;  // for image outputs only
  std::vector<int> hidden{400};             // encoder hidden sizes; the decoder mirrors them
  int latent = 20;                          // 1..kMaxLatent
  Activation activation = Activation::relu;
  DecoderKind decoder = DecoderKind::bernoulli;
};

const char* activation_name(Activation a);
Activation parse_activation(const std::string& s);  // throws vae::Error
const char* decoder_name(DecoderKind d);
DecoderKind parse_decoder(const std::string& s);
const char* optimizer_name(OptimizerKind k);
OptimizerKind parse_optimizer(const std::string& s);
// State tensor names, as PyTorch's optimizers name them: exp_avg, exp_avg_sq / sum / momentum_buffer.
std::vector<std::string> optimizer_state_names(OptimizerKind k);

// A fully connected layer y = x Wᵀ + b in the flat buffer: W is [out, in] as in nn.Linear.
struct LinearSlot {
  size_t weight = 0, bias = 0;  // element offsets
  int out = 0, in = 0;
};

// A named tensor of the checkpoint and where it lives in the flat buffer.
struct NamedTensor {
  std::string name;
  std::vector<int64_t> shape;
  size_t offset = 0;
  size_t count() const;
};

// Layers in data-flow order. The μ and log σ² heads are one [2J, H] GEMM (their rows sit
// side by side in the buffer), as are the Gaussian decoder's mean and log-variance outputs.
struct ParamLayout {
  std::vector<LinearSlot> encoder;   // hidden layers
  LinearSlot heads;                  // out = 2 * latent
  std::vector<LinearSlot> decoder;   // hidden layers
  LinearSlot output;                 // out = D (Bernoulli) or 2D (Gaussian)
  std::vector<NamedTensor> tensors;  // checkpoint names, in checkpoint order
  size_t total = 0;
};

ParamLayout make_layout(const ModelConfig& c);

// nn.Linear's default: W and b ~ U(−1/√in, 1/√in), from a seeded generator.
std::vector<float> init_parameters(const ModelConfig& c, const ParamLayout& layout, uint64_t seed);

}  // namespace vae
