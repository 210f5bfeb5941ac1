// Plain types shared by kernels, launchers and host code.
#pragma once

#include <cstdint>

namespace vae {

enum class Activation : int { identity = 0, relu = 1, tanh = 2 };

enum class PixelType : int { u8 = 0, f32 = 1 };

enum class OptimizerKind : int { adam = 0, adagrad = 1, sgd = 2 };

// The KL term of the training loss. analytic: the closed form of KL(q(z|x) || N(0, I)) (the
// paper's estimator B); monte_carlo: log q(z|x) − log p(z) at the drawn z, averaged over the L
// samples (estimator A). Its gradient is scaled by weight · min(1, step / warmup) (β and its
// linear warm-up; warmup 0: none); the reported KL is never scaled.
enum class KlEstimator : int { analytic = 0, monte_carlo = 1 };
// The Gaussian decoder's floor on log σ², in nats: the variance of the rounding error of 8-bit
// pixels, (1/255)²/12. Its log variance is v = floor + softplus(raw − floor), so that a pixel that
// is constant over the data cannot drive v (and the density) without bound, and the gradient
// never vanishes outright.
constexpr float kGaussianMinLogVar = -13.567435f;  // −2 ln 255 − ln 12

// The encoder's gradient of the Monte-Carlo KL term: standard (reparameterised through z and
// through q's parameters inside log q), or dreg, the path derivative alone (q's parameters held
// fixed inside log q: Roeder et al.'s "sticking the landing", Tucker et al.'s DReG at one sample).
enum class KlGradient : int { standard, dreg };

struct KlTerm {
  KlEstimator estimator = KlEstimator::analytic;
  float weight = 1.f;
  int64_t warmup = 0;                          // steps
  KlGradient gradient = KlGradient::standard;  // dreg: with the Monte-Carlo estimator only
};

struct OptimizerHyper {
  float lr = 1e-3f;
  float beta1 = 0.9f;      // Adam
  float beta2 = 0.999f;    // Adam
  float eps = 1e-8f;       // Adam, Adagrad
  float momentum = 0.9f;   // SGD
  float weight_decay = 0;  // L2 term added to the gradient, as torch.optim does
};

// Independent Philox streams, so that no two uses of the seed share numbers (at most 8).
enum class RandomStream : uint64_t {
  latent_noise = 0,
  binarize = 1,
  eval_noise = 2,
  eval_binarize = 3,
  prior = 4,
  importance = 5  // the K draws per test datapoint of the importance-weighted estimate
};

// Where a pass stands, in device memory: kernels read the step (random-number key, Adam's bias
// correction) and the batch offset from here, so one captured CUDA graph serves every step;
// the optimizer moves it on at the end of a training step.
struct StepState {
  uint64_t step = 0;   // optimizer steps taken before this one
  int64_t offset = 0;  // first row of this batch in the (permuted) data set
  // Data parallel: this rank's first row within the global batch. Random draws are keyed by the
  // global row (row0 + r), so R ranks of B/R rows draw what one process of B rows draws.
  int64_t row0 = 0;
};

// The guard against divergence: where a training step first met a non-finite value. Zero while
// everything is finite; the trainer reads it every few steps (a cheap on-device flag).
enum class NonFiniteTerm : unsigned { none = 0, reconstruction = 1, kl = 2, gradient = 3 };
struct NonFinite {
  unsigned long long step = 0;  // the training step (at->step + 1, counting from 1); 0: none yet
  unsigned term = 0;            // NonFiniteTerm
  long long index = 0;          // the batch row (loss terms) or the element of the flat gradient buffer
};

// Several models of one shape in one launch: vae sweep's batched step (host/model_stack.h)
// trains `count` models at once, blockIdx.z the model. Model m's buffers follow model m − 1's:
// a buffer of rows of width w (data rows: x, heads, KL) at m · rows · w, a buffer of sample rows
// (z, decoder outputs, log p) at m · samples · rows · w; its StepState at at + m, its sums at
// totals + 4m, its watch at watch + m, its permutation at perm + m · perm_stride, its flat
// parameters (and their gradients and optimizer state) at m · n. Its seed, KL term and optimizer
// scalars are each[m] where `each` is given, else the launch's own arguments. The default, one
// model, is every other launch: blockIdx.z is then 0 and no offset applies.
struct ModelScalars {
  uint64_t seed = 1;
  KlTerm kl;
  OptimizerHyper hyper;
};
struct Models {
  int count = 1;
  long long rows = 0;                  // the row capacity of each model's buffers
  long long perm_stride = 0;           // gather_batch: the length of each model's permutation
  const ModelScalars* each = nullptr;  // device memory (count), or null
};

// Scratch of the two-stage reductions (the column sums of the dense backward, the ELBO totals):
// blocks write partial sums, and a ticket per reduction elects the block that finishes last,
// which adds the partials in a fixed order. The sums are deterministic (no float atomics) and a
// reduction needs one launch. Tickets are zero between launches (the last block resets its own);
// the owner allocates the scratch zeroed, once, and one stream uses it at a time.
constexpr int kReduceTickets = 1024;
constexpr int kReducePartialFloats = 1 << 17;
struct ReduceScratch {
  unsigned* tickets = nullptr;  // (kReduceTickets), zero
  float* partial = nullptr;     // (kReducePartialFloats), 16-byte aligned
};

}  // namespace vae
