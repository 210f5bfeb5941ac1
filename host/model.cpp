#include "model.h"

#include <cmath>
#include <random>

#include "named_enum.h"
#include "runtime/check.h"

namespace vae {

// The hidden layers' activations a model may name (the identity serves only the output layers).
constexpr Named<Activation> kActivationNames[] = {{Activation::relu, "relu"}, {Activation::tanh, "tanh"}};
constexpr Named<DecoderKind> kDecoderNames[] = {{DecoderKind::bernoulli, "bernoulli"},
                                                {DecoderKind::gaussian, "gaussian"}};

const char* activation_name(Activation a) {
  return a == Activation::identity ? "identity" : name_of(kActivationNames, a);
}
Activation parse_activation(const std::string& s) { return parse_named(kActivationNames, s, "--activation"); }

const char* decoder_name(DecoderKind d) { return name_of(kDecoderNames, d); }
DecoderKind parse_decoder(const std::string& s) { return parse_named(kDecoderNames, s, "--decoder"); }

size_t NamedTensor::count() const {
  size_t n = 1;
  for (int64_t d : shape) n *= static_cast<size_t>(d);
  return n;
}

ParamLayout make_layout(const ModelConfig& c) {
  VAE_REQUIRE(c.input_dim > 0 && c.latent > 0, "model: input and latent sizes must be positive");
  for (int h : c.hidden) VAE_REQUIRE(h > 0, "model: hidden sizes must be positive");
  ParamLayout L;
  // Every weight and bias starts on a 256-byte boundary (the zero padding between them is never
  // read): GEMM kernels with epilogues and vector loads want aligned operands.
  constexpr size_t kAlign = 64;
  auto aligned = [&](size_t n) { return (n + kAlign - 1) / kAlign * kAlign; };
  auto linear = [&](int out, int in) {
    const size_t weight = aligned(L.total), bias = aligned(weight + static_cast<size_t>(out) * in);
    L.total = bias + out;
    return LinearSlot{weight, bias, out, in};
  };
  auto add = [&](const std::string& name, std::vector<int64_t> shape, size_t offset) {
    L.tensors.push_back({name, std::move(shape), offset});
  };
  int in = c.input_dim;
  for (size_t i = 0; i < c.hidden.size(); ++i) {
    L.encoder.push_back(linear(c.hidden[i], in));
    add("encoder.layers." + std::to_string(i) + ".weight", {c.hidden[i], in}, L.encoder.back().weight);
    add("encoder.layers." + std::to_string(i) + ".bias", {c.hidden[i]}, L.encoder.back().bias);
    in = c.hidden[i];
  }
  const int J = c.latent;
  L.heads = linear(2 * J, in);
  add("encoder.mu.weight", {J, in}, L.heads.weight);
  add("encoder.mu.bias", {J}, L.heads.bias);
  add("encoder.logvar.weight", {J, in}, L.heads.weight + static_cast<size_t>(J) * in);
  add("encoder.logvar.bias", {J}, L.heads.bias + J);
  in = J;
  for (size_t i = 0; i < c.hidden.size(); ++i) {
    const int h = c.hidden[c.hidden.size() - 1 - i];
    L.decoder.push_back(linear(h, in));
    add("decoder.layers." + std::to_string(i) + ".weight", {h, in}, L.decoder.back().weight);
    add("decoder.layers." + std::to_string(i) + ".bias", {h}, L.decoder.back().bias);
    in = h;
  }
  const int D = c.input_dim;
  const bool gaussian = c.decoder == DecoderKind::gaussian;
  L.output = linear(gaussian ? 2 * D : D, in);
  add("decoder.out.weight", {D, in}, L.output.weight);
  add("decoder.out.bias", {D}, L.output.bias);
  if (gaussian) {
    add("decoder.out_logvar.weight", {D, in}, L.output.weight + static_cast<size_t>(D) * in);
    add("decoder.out_logvar.bias", {D}, L.output.bias + D);
  }
  return L;
}

std::vector<float> init_parameters(const ModelConfig& c, const ParamLayout& layout, uint64_t seed) {
  std::vector<float> p(layout.total);
  std::mt19937_64 rng(seed);
  auto fill = [&](const LinearSlot& s) {
    const float bound = 1.f / std::sqrt(static_cast<float>(s.in));
    std::uniform_real_distribution<float> u(-bound, bound);
    for (size_t i = 0; i < static_cast<size_t>(s.out) * s.in; ++i) p[s.weight + i] = u(rng);
    for (int i = 0; i < s.out; ++i) p[s.bias + i] = u(rng);
  };
  for (const auto& s : layout.encoder) fill(s);
  fill(layout.heads);
  for (const auto& s : layout.decoder) fill(s);
  fill(layout.output);
  (void)c;
  return p;
}

constexpr Named<OptimizerKind> kOptimizerNames[] = {
    {OptimizerKind::adam, "adam"}, {OptimizerKind::adagrad, "adagrad"}, {OptimizerKind::sgd, "sgd"}};

const char* optimizer_name(OptimizerKind k) { return name_of(kOptimizerNames, k); }
OptimizerKind parse_optimizer(const std::string& s) { return parse_named(kOptimizerNames, s, "--optimizer"); }

std::vector<std::string> optimizer_state_names(OptimizerKind kind) {
  switch (kind) {
    case OptimizerKind::adam:
      return {"exp_avg", "exp_avg_sq"};
    case OptimizerKind::adagrad:
      return {"sum"};
    default:
      return {"momentum_buffer"};
  }
}

}  // namespace vae
