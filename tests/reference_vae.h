// A float64 reference VAE in plain loops: the ELBO of a batch and the gradient of
// loss = −(1/B) Σ_r ELBO_r with respect to every parameter. The reference keeps its parameters in
// a layout of its own, written from the checkpoint's tensor names and shapes alone (not from
// make_layout); the fast code's flat buffer is read into it, and compared with it, by name.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/types.h"
#include "model.h"

namespace vae::test {

// The model's tensors as PyTorch names them (nn.Linear: weight [out, in], bias [out]), in data-flow
// order, packed densely with no padding.
struct ReferenceTensor {
  std::string name;
  std::vector<int64_t> shape;
  size_t offset = 0;
  size_t count() const { return static_cast<size_t>(shape[0]) * (shape.size() > 1 ? shape[1] : 1); }
};
struct ReferenceLayout {
  std::vector<ReferenceTensor> tensors;
  size_t total = 0;
  const ReferenceTensor& at(const std::string& name) const;  // throws std::out_of_range
};
ReferenceLayout reference_layout(const ModelConfig& c);
// A model of `dim` inputs (an image of one row) for the tests' small cases.
ModelConfig small_config(DecoderKind dec, Activation act, std::vector<int> hidden, int latent, int dim);

// Random parameters in the reference layout: each tensor ~ U(−1/√in, 1/√in), as nn.Linear's
// default, from a seeded generator of the tests' own.
std::vector<double> reference_parameters(const ReferenceLayout& ref, uint64_t seed);
// The fast code's flat buffer, read by tensor name into the reference layout. Throws
// std::runtime_error when the code's tensors are not the reference's (a name missing or extra, a
// shape, a tensor out of the buffer or overlapping another).
std::vector<double> to_reference(const ParamLayout& code, const std::vector<float>& flat, const ReferenceLayout& ref);
// Reference-layout values into a flat buffer of the fast code's layout, by tensor name; the
// padding between tensors holds `padding`.
std::vector<float> from_reference(const ParamLayout& code, const ReferenceLayout& ref, const std::vector<double>& v,
                                  float padding = 0.f);
// Every tensor of the fast code's flat buffer `got` against the reference-layout values `want`:
// |got − want| <= abs·max|want| + rel·|want| (abs is relative to the tensor's largest value, so
// that elements that cancel to near zero are held to the tensor's scale), a failure per tensor,
// naming it.
void expect_tensors_near(const ParamLayout& code, const std::vector<float>& got, const ReferenceLayout& ref,
                         const std::vector<double>& want, double abs_tol, double rel_tol, const std::string& where);

struct ReferenceResult {
  std::vector<double> log_prob;  // (L*B): log p(x_r | z_ℓr), sample-major
  std::vector<double> kl;        // (B): analytic, or the mean over ℓ of log q(z_ℓr|x) − log p(z_ℓr)
  std::vector<double> elbo;      // (B): mean_ℓ log p − KL
  std::vector<double> iwae;      // with iwae (B): log (1/K) Σ_k w_k, log w = log p(x|z) + log p(z) − log q(z|x)
  std::vector<double> weights;   // with iwae (K*B): w̃_k = w_k / Σ w, sample-major
  std::vector<double> heads, z;  // (B, 2J) μ | log σ², and (L*B, J) the draws
  double loss = 0;               // −mean_r (mean_ℓ log p − β KL), or −mean_r IWAE_r: what the gradient is of
  std::vector<double> grad;      // in the reference layout, as the parameters
};

// params: in reference_layout(c); x: (B, D) in [0, 1]; eps: (L*B, J) sample-major. kl: the estimator and β = weight ·
// min(1, step / warmup). With iwae, the loss is the importance-weighted bound's over the L = K draws (kl.weight 1, no
// warm-up: the KL term is its log p(z) − log q(z|x)), and kl.gradient dreg gives the encoder Tucker et al.'s doubly
// reparameterized gradient: Σ_k w̃_k² ∂log w_k/∂z_k ∂z_k/∂φ with q's parameters fixed inside log q.
ReferenceResult reference_vae(const ModelConfig& c, const std::vector<double>& params, const std::vector<double>& x,
                              int batch, int samples, const std::vector<double>& eps, bool with_grad = true,
                              const KlTerm& kl = {}, uint64_t step = 0, bool iwae = false);

// ε as the latent kernel draws it: Philox4x32-10 keyed by curand_init(seed, (step << 3) | stream,
// (r * L + ℓ) * round_up(J, 4)), four normals per draw. The contract, written out independently.
std::vector<double> reference_noise(uint64_t seed, RandomStream stream, uint64_t step, int batch, int samples,
                                    int latent);

// The latent stage alone: heads (B, 2J) = μ | log σ², eps (L*B, J) → z (L*B, J), KL (B).
void reference_latent(const std::vector<double>& heads, const std::vector<double>& eps, int batch, int samples,
                      int latent, std::vector<double>& z, std::vector<double>& kl);

// The optimizers as torch.optim defines them, in float64, over the reference layout: p, and the
// state s1 (Adam's m, Adagrad's Σ g², SGD's velocity) and s2 (Adam's v), at step t (from 1).
void reference_optimizer_step(OptimizerKind kind, const OptimizerHyper& h, uint64_t t, const std::vector<double>& grad,
                              std::vector<double>& p, std::vector<double>& s1, std::vector<double>& s2);

// Hyperparameters under which each optimizer's update shows the gradient's scale and its own
// arithmetic: ε of the order of the smaller gradients (Adam and Adagrad are Lipschitz in g there,
// so float and double agree to ~1e-6, and a gradient off by a factor moves the update), weight
// decay on.
OptimizerHyper tested_hyper(OptimizerKind kind);

std::vector<double> to_double(const std::vector<float>& v);

}  // namespace vae::test
