#include "reference_vae.h"

#include <cuda_runtime.h>
#include <curand_kernel.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <stdexcept>
#include <string>

#include "support.h"

namespace vae::test {

namespace {

struct Linear {
  const double* w;  // (out, in)
  const double* b;  // (out)
  double* gw;
  double* gb;
  int out, in;
};

struct Params {
  const ModelConfig& c;
  const std::vector<double>& p;
  std::vector<double>& g;
  const ReferenceLayout layout;
  Params(const ModelConfig& config, const std::vector<double>& params, std::vector<double>& grad)
      : c(config), p(params), g(grad), layout(reference_layout(config)) {
    if (params.size() != layout.total) throw std::invalid_argument("reference_vae: parameters not in reference_layout");
  }
  Linear get(const std::string& prefix) {
    const ReferenceTensor& w = layout.at(prefix + ".weight");
    const ReferenceTensor& b = layout.at(prefix + ".bias");
    return {p.data() + w.offset, p.data() + b.offset,          g.data() + w.offset,
            g.data() + b.offset, static_cast<int>(w.shape[0]), static_cast<int>(w.shape[1])};
  }
};

using Mat = std::vector<double>;

Mat forward(const Linear& l, const Mat& in, int rows) {
  Mat out(static_cast<size_t>(rows) * l.out);
  for (int r = 0; r < rows; ++r)
    for (int o = 0; o < l.out; ++o) {
      double s = l.b[o];
      for (int i = 0; i < l.in; ++i)
        s += in[static_cast<size_t>(r) * l.in + i] * l.w[static_cast<size_t>(o) * l.in + i];
      out[static_cast<size_t>(r) * l.out + o] = s;
    }
  return out;
}

// Accumulates dW, db from d_out and returns d_in.
Mat backward(const Linear& l, const Mat& in, const Mat& d_out, int rows) {
  Mat d_in(static_cast<size_t>(rows) * l.in, 0.0);
  for (int r = 0; r < rows; ++r)
    for (int o = 0; o < l.out; ++o) {
      const double d = d_out[static_cast<size_t>(r) * l.out + o];
      l.gb[o] += d;
      for (int i = 0; i < l.in; ++i) {
        l.gw[static_cast<size_t>(o) * l.in + i] += d * in[static_cast<size_t>(r) * l.in + i];
        d_in[static_cast<size_t>(r) * l.in + i] += d * l.w[static_cast<size_t>(o) * l.in + i];
      }
    }
  return d_in;
}

double act(double a, Activation f) { return f == Activation::relu ? (a > 0 ? a : 0) : std::tanh(a); }
double act_grad(double a, Activation f) {
  if (f == Activation::relu) return a > 0 ? 1 : 0;
  const double t = std::tanh(a);
  return 1 - t * t;
}
double sigmoid(double y) { return 1 / (1 + std::exp(-y)); }
double softplus(double y) { return y > 0 ? y + std::log1p(std::exp(-y)) : std::log1p(std::exp(y)); }

// The hidden layers "<prefix>.layers.{i}": inputs[i] is layer i's input (inputs.back() the
// stack's output), pre[i] its pre-activation.
struct HiddenStack {
  std::vector<Mat> inputs, pre;
};

HiddenStack hidden_forward(Params& P, const std::string& prefix, const Mat& in, int rows) {
  HiddenStack s{{in}, {}};
  for (size_t i = 0; i < P.c.hidden.size(); ++i) {
    Mat a = forward(P.get(prefix + ".layers." + std::to_string(i)), s.inputs.back(), rows);
    s.pre.push_back(a);
    for (double& v : a) v = act(v, P.c.activation);
    s.inputs.push_back(a);
  }
  return s;
}

// From dL/d(stack output) to dL/d(stack input), accumulating the layers' gradients.
Mat hidden_backward(Params& P, const std::string& prefix, const HiddenStack& s, Mat grad, int rows) {
  for (size_t i = P.c.hidden.size(); i-- > 0;) {
    for (size_t k = 0; k < grad.size(); ++k) grad[k] *= act_grad(s.pre[i][k], P.c.activation);
    grad = backward(P.get(prefix + ".layers." + std::to_string(i)), s.inputs[i], grad, rows);
  }
  return grad;
}

}  // namespace

std::vector<double> to_double(const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); }

void reference_optimizer_step(OptimizerKind kind, const OptimizerHyper& h, uint64_t t, const std::vector<double>& grad,
                              std::vector<double>& p, std::vector<double>& s1, std::vector<double>& s2) {
  const double b1 = h.beta1, b2 = h.beta2, lr = h.lr, eps = h.eps;
  for (size_t i = 0; i < p.size(); ++i) {
    const double g = grad[i] + double(h.weight_decay) * p[i];
    if (kind == OptimizerKind::adam) {
      s1[i] = b1 * s1[i] + (1 - b1) * g;
      s2[i] = b2 * s2[i] + (1 - b2) * g * g;
      const double m_hat = s1[i] / (1 - std::pow(b1, double(t))), v_hat = s2[i] / (1 - std::pow(b2, double(t)));
      p[i] -= lr * m_hat / (std::sqrt(v_hat) + eps);
    } else if (kind == OptimizerKind::adagrad) {
      s1[i] += g * g;
      p[i] -= lr * g / (std::sqrt(s1[i]) + eps);
    } else {
      s1[i] = double(h.momentum) * s1[i] + g;
      p[i] -= lr * s1[i];
    }
  }
}

OptimizerHyper tested_hyper(OptimizerKind kind) {
  OptimizerHyper h;
  h.weight_decay = 0.01f;
  if (kind == OptimizerKind::sgd) {
    h.lr = 0.05f;
    h.momentum = 0.9f;
  } else {
    h.lr = 0.01f;
    h.eps = 1e-2f;
  }
  return h;
}

const ReferenceTensor& ReferenceLayout::at(const std::string& name) const {
  for (const auto& t : tensors)
    if (t.name == name) return t;
  throw std::out_of_range("reference layout: no tensor " + name);
}

// From the architecture as the README states it: the encoder's hidden layers, the μ and log σ²
// heads, the decoder's hidden layers (the encoder's sizes reversed), the output layer (and the
// Gaussian decoder's log-variance output).
ReferenceLayout reference_layout(const ModelConfig& c) {
  ReferenceLayout L;
  auto linear = [&](const std::string& name, int out, int in) {
    L.tensors.push_back({name + ".weight", {out, in}, L.total});
    L.total += static_cast<size_t>(out) * in;
    L.tensors.push_back({name + ".bias", {out}, L.total});
    L.total += out;
  };
  const int H = static_cast<int>(c.hidden.size());
  int in = c.input_dim;
  for (int i = 0; i < H; ++i) {
    linear("encoder.layers." + std::to_string(i), c.hidden[i], in);
    in = c.hidden[i];
  }
  linear("encoder.mu", c.latent, in);
  linear("encoder.logvar", c.latent, in);
  in = c.latent;
  for (int i = 0; i < H; ++i) {
    linear("decoder.layers." + std::to_string(i), c.hidden[H - 1 - i], in);
    in = c.hidden[H - 1 - i];
  }
  linear("decoder.out", c.input_dim, in);
  if (c.decoder == DecoderKind::gaussian) linear("decoder.out_logvar", c.input_dim, in);
  return L;
}

ModelConfig small_config(DecoderKind dec, Activation act, std::vector<int> hidden, int latent, int dim) {
  ModelConfig c;
  c.input_dim = dim;
  c.image_height = 1;
  c.image_width = dim;
  c.hidden = std::move(hidden);
  c.latent = latent;
  c.activation = act;
  c.decoder = dec;
  return c;
}

std::vector<double> reference_parameters(const ReferenceLayout& ref, uint64_t seed) {
  std::mt19937_64 rng(seed ^ 0x5DEECE66Dull);
  std::vector<double> p(ref.total);
  for (const auto& t : ref.tensors) {
    const ReferenceTensor& w = ref.at(t.name.substr(0, t.name.rfind('.')) + ".weight");
    const double bound = 1 / std::sqrt(static_cast<double>(w.shape[1]));
    std::uniform_real_distribution<double> u(-bound, bound);
    for (size_t i = 0; i < t.count(); ++i) p[t.offset + i] = static_cast<float>(u(rng));  // float-representable
  }
  return p;
}

namespace {

// The code's tensor of each reference tensor, checked: same names both ways, same shapes, inside
// the buffer, no two overlapping.
std::vector<const NamedTensor*> match_tensors(const ParamLayout& code, const ReferenceLayout& ref) {
  if (code.tensors.size() != ref.tensors.size()) {
    throw std::runtime_error("layout: the code has " + std::to_string(code.tensors.size()) +
                             " tensors, the reference " + std::to_string(ref.tensors.size()));
  }
  std::vector<const NamedTensor*> m;
  std::vector<std::pair<size_t, size_t>> spans;
  for (const auto& r : ref.tensors) {
    const NamedTensor* found = nullptr;
    for (const auto& t : code.tensors)
      if (t.name == r.name) found = &t;
    if (!found) throw std::runtime_error("layout: the code has no tensor " + r.name);
    if (found->shape != r.shape) throw std::runtime_error("layout: " + r.name + " has another shape in the code");
    if (found->offset + found->count() > code.total)
      throw std::runtime_error("layout: " + r.name + " is out of the buffer");
    spans.push_back({found->offset, found->offset + found->count()});
    m.push_back(found);
  }
  std::sort(spans.begin(), spans.end());
  for (size_t i = 1; i < spans.size(); ++i)
    if (spans[i].first < spans[i - 1].second) throw std::runtime_error("layout: two tensors overlap in the code");
  return m;
}

}  // namespace

std::vector<double> to_reference(const ParamLayout& code, const std::vector<float>& flat, const ReferenceLayout& ref) {
  if (flat.size() != code.total) throw std::runtime_error("layout: the flat buffer is not the layout's size");
  const auto m = match_tensors(code, ref);
  std::vector<double> v(ref.total);
  for (size_t k = 0; k < ref.tensors.size(); ++k)
    std::copy_n(flat.begin() + m[k]->offset, ref.tensors[k].count(), v.begin() + ref.tensors[k].offset);
  return v;
}

std::vector<float> from_reference(const ParamLayout& code, const ReferenceLayout& ref, const std::vector<double>& v,
                                  float padding) {
  const auto m = match_tensors(code, ref);
  std::vector<float> flat(code.total, padding);
  for (size_t k = 0; k < ref.tensors.size(); ++k)
    for (size_t i = 0; i < ref.tensors[k].count(); ++i)
      flat[m[k]->offset + i] = static_cast<float>(v[ref.tensors[k].offset + i]);
  return flat;
}

void expect_tensors_near(const ParamLayout& code, const std::vector<float>& got, const ReferenceLayout& ref,
                         const std::vector<double>& want, double abs_tol, double rel_tol, const std::string& where) {
  const auto m = match_tensors(code, ref);
  for (size_t k = 0; k < ref.tensors.size(); ++k) {
    const ReferenceTensor& r = ref.tensors[k];
    const std::vector<float> g(got.begin() + m[k]->offset, got.begin() + m[k]->offset + r.count());
    const std::vector<double> w(want.begin() + r.offset, want.begin() + r.offset + r.count());
    double scale = 0;
    for (double x : w) scale = std::max(scale, std::fabs(x));
    EXPECT_TRUE(all_near(g, w, abs_tol * scale, rel_tol)) << r.name << ", " << where;
  }
}

void reference_latent(const std::vector<double>& heads, const std::vector<double>& eps, int B, int L, int J,
                      std::vector<double>& z, std::vector<double>& kl) {
  z.assign(static_cast<size_t>(L) * B * J, 0.0);
  kl.assign(B, 0.0);
  for (int r = 0; r < B; ++r) {
    double s = 0;
    for (int j = 0; j < J; ++j) {
      const double m = heads[static_cast<size_t>(r) * 2 * J + j], v = heads[static_cast<size_t>(r) * 2 * J + J + j];
      s += 1 + v - m * m - std::exp(v);
      for (int l = 0; l < L; ++l) {
        const size_t zi = (static_cast<size_t>(l) * B + r) * J + j;
        z[zi] = m + std::exp(0.5 * v) * eps[zi];
      }
    }
    kl[r] = -0.5 * s;  // KL = −½ Σ_j (1 + log σ² − μ² − σ²)
  }
}

ReferenceResult reference_vae(const ModelConfig& c, const std::vector<double>& params, const std::vector<double>& x,
                              int B, int L, const std::vector<double>& eps, bool with_grad, const KlTerm& klt,
                              uint64_t step, bool iwae) {
  if (iwae && (klt.weight != 1.f || klt.warmup != 0)) throw std::invalid_argument("reference_vae: IWAE has no β");
  const bool mc = klt.estimator == KlEstimator::monte_carlo;
  const bool dreg = iwae && klt.gradient == KlGradient::dreg;
  const double beta =
      klt.weight * (klt.warmup > 0 ? std::min(1.0, static_cast<double>(step) / static_cast<double>(klt.warmup)) : 1.0);
  ReferenceResult res;
  res.grad.assign(params.size(), 0.0);
  Params P(c, params, res.grad);
  const int D = c.input_dim, J = c.latent, LB = L * B;
  const bool gaussian = c.decoder == DecoderKind::gaussian;

  // Encoder.
  const HiddenStack enc = hidden_forward(P, "encoder", x, B);
  const Linear mu_l = P.get("encoder.mu"), lv_l = P.get("encoder.logvar");
  const Mat mu = forward(mu_l, enc.inputs.back(), B), lv = forward(lv_l, enc.inputs.back(), B);

  // Latent.
  Mat heads(static_cast<size_t>(B) * 2 * J), z;
  for (int r = 0; r < B; ++r)
    for (int j = 0; j < J; ++j) {
      heads[static_cast<size_t>(r) * 2 * J + j] = mu[static_cast<size_t>(r) * J + j];
      heads[static_cast<size_t>(r) * 2 * J + J + j] = lv[static_cast<size_t>(r) * J + j];
    }
  reference_latent(heads, eps, B, L, J, z, res.kl);
  res.heads = heads;
  res.z = z;
  if (mc) {  // KL = mean_ℓ Σ_j log q(z|x) − log p(z) = mean_ℓ Σ_j −½ v − ½ ε² + ½ z²
    for (int r = 0; r < B; ++r) {
      double s = 0;
      for (int l = 0; l < L; ++l)
        for (int j = 0; j < J; ++j) {
          const size_t zi = (static_cast<size_t>(l) * B + r) * J + j;
          s += -0.5 * lv[static_cast<size_t>(r) * J + j] - 0.5 * eps[zi] * eps[zi] + 0.5 * z[zi] * z[zi];
        }
      res.kl[r] = s / L;
    }
  }

  // Decoder.
  const HiddenStack dec = hidden_forward(P, "decoder", z, LB);
  const Linear out_l = P.get("decoder.out");
  const Mat y = forward(out_l, dec.inputs.back(), LB);
  Mat yv;
  if (gaussian) yv = forward(P.get("decoder.out_logvar"), dec.inputs.back(), LB);

  // Reconstruction and ELBO. log p first: the IWAE weights need every sample's.
  const double half_log_2pi = 0.5 * std::log(2 * M_PI);
  res.log_prob.assign(LB, 0.0);
  Mat dy(static_cast<size_t>(LB) * D), dyv(gaussian ? static_cast<size_t>(LB) * D : 0);
  for (int row = 0; row < LB; ++row) {
    double s = 0;
    const int r = row % B;
    for (int d = 0; d < D; ++d) {
      const double xd = x[static_cast<size_t>(r) * D + d], yd = y[static_cast<size_t>(row) * D + d];
      if (!gaussian) {
        s += xd * yd - softplus(yd);
      } else {
        const double floor = -2 * std::log(255.0) - std::log(12.0), u = yv[static_cast<size_t>(row) * D + d] - floor;
        const double m = sigmoid(yd), v = floor + softplus(u), diff = xd - m;
        s += -half_log_2pi - 0.5 * v - 0.5 * diff * diff * std::exp(-v);
      }
    }
    res.log_prob[row] = s;
  }
  // IWAE: log w_k = log p(x|z_k) + Σ_j (−½ z² + ½ ε² + ½ log σ²), the bound log mean_k w_k (a
  // log-sum-exp about the largest), and the normalised weights.
  if (iwae) {
    res.iwae.assign(B, 0.0);
    res.weights.assign(LB, 0.0);
    for (int r = 0; r < B; ++r) {
      std::vector<double> lw(L);
      for (int l = 0; l < L; ++l) {
        lw[l] = res.log_prob[l * B + r];
        for (int j = 0; j < J; ++j) {
          const size_t zi = (static_cast<size_t>(l) * B + r) * J + j;
          lw[l] += -0.5 * z[zi] * z[zi] + 0.5 * eps[zi] * eps[zi] + 0.5 * lv[static_cast<size_t>(r) * J + j];
        }
      }
      const double top = *std::max_element(lw.begin(), lw.end());
      double sum = 0;
      for (double v : lw) sum += std::exp(v - top);
      res.iwae[r] = top + std::log(sum) - std::log(static_cast<double>(L));
      for (int l = 0; l < L; ++l) res.weights[l * B + r] = std::exp(lw[l] - top) / sum;
    }
  }
  for (int l = 0; l < L; ++l)
    for (int r = 0; r < B; ++r) {
      const int row = l * B + r;
      // d loss / d log p: 1/(L B) for the ELBO's mean, w̃/B for the bound's.
      const double scale = iwae ? res.weights[row] / B : 1.0 / LB;
      for (int d = 0; d < D; ++d) {
        const double xd = x[static_cast<size_t>(r) * D + d], yd = y[static_cast<size_t>(row) * D + d];
        if (!gaussian) {
          dy[static_cast<size_t>(row) * D + d] = -scale * (xd - sigmoid(yd));
        } else {
          // log σ² = floor + softplus(raw − floor)
          const double floor = -2 * std::log(255.0) - std::log(12.0), u = yv[static_cast<size_t>(row) * D + d] - floor;
          const double m = sigmoid(yd), v = floor + softplus(u), diff = xd - m;
          dy[static_cast<size_t>(row) * D + d] = -scale * diff * std::exp(-v) * m * (1 - m);
          dyv[static_cast<size_t>(row) * D + d] = -scale * (-0.5 + 0.5 * diff * diff * std::exp(-v)) * sigmoid(u);
        }
      }
    }
  res.elbo.assign(B, 0.0);
  for (int r = 0; r < B; ++r) {
    double m = 0;
    for (int l = 0; l < L; ++l) m += res.log_prob[l * B + r];
    res.elbo[r] = m / L - res.kl[r];
    res.loss -= (iwae ? res.iwae[r] : m / L - beta * res.kl[r]) / B;
  }
  if (!with_grad) return res;

  // Backward through the decoder.
  Mat dg = backward(out_l, dec.inputs.back(), dy, LB);
  if (gaussian) {
    const Mat dg2 = backward(P.get("decoder.out_logvar"), dec.inputs.back(), dyv, LB);
    for (size_t i = 0; i < dg.size(); ++i) dg[i] += dg2[i];
  }
  dg = hidden_backward(P, "decoder", dec, dg, LB);
  // Latent: z = μ + exp(½ v) ε, KL/B in the loss.
  Mat dmu(static_cast<size_t>(B) * J, 0.0), dlv(static_cast<size_t>(B) * J, 0.0);
  for (int r = 0; r < B; ++r)
    for (int j = 0; j < J; ++j) {
      const double m = mu[r * J + j], v = lv[r * J + j];
      // Analytic: β KL/B in closed form. Monte-Carlo: β/(B L) Σ_ℓ (−½ v − ½ ε² + ½ z²), ε fixed.
      // IWAE: −(1/B) Σ_k w̃_k (log p(z_k) − log q(z_k|x)) in place of the Monte-Carlo KL's
      // 1/(B L); with DReG, each sample's whole dz/dlog w_k weighted by w̃_k² / B instead, and
      // log q's own dependence on (μ, v) at fixed z dropped: d(log p − log q)/dz = −z + ε/σ.
      double a = mc || iwae ? 0.0 : beta * m / B;
      double b = dreg ? 0.0 : mc || iwae ? -0.5 * beta / B : beta * 0.5 * (std::exp(v) - 1) / B;
      for (int l = 0; l < L; ++l) {
        const size_t zi = (static_cast<size_t>(l) * B + r) * J + j;
        double dz = dg[zi] + (mc ? beta * z[zi] / (static_cast<double>(B) * L) : 0.0);
        if (iwae) {
          const double w = res.weights[l * B + r];
          dz = dreg ? w * dg[zi] + w * w / B * (z[zi] - eps[zi] * std::exp(-0.5 * v)) : dg[zi] + w / B * z[zi];
        }
        a += dz;
        b += dz * 0.5 * std::exp(0.5 * v) * eps[zi];
      }
      dmu[r * J + j] = a;
      dlv[r * J + j] = b;
    }
  Mat dh = backward(mu_l, enc.inputs.back(), dmu, B);
  const Mat dh2 = backward(lv_l, enc.inputs.back(), dlv, B);
  for (size_t i = 0; i < dh.size(); ++i) dh[i] += dh2[i];
  hidden_backward(P, "encoder", enc, dh, B);
  return res;
}

std::vector<double> reference_noise(uint64_t seed, RandomStream stream, uint64_t step, int batch, int samples,
                                    int latent) {
  std::vector<double> eps(static_cast<size_t>(batch) * samples * latent);
  const int padded = (latent + 3) / 4 * 4;
  for (int r = 0; r < batch; ++r)
    for (int l = 0; l < samples; ++l) {
      curandStatePhilox4_32_10_t st;
      curand_init(seed, (step << 3) | static_cast<uint64_t>(stream), static_cast<uint64_t>(r * samples + l) * padded,
                  &st);
      for (int j = 0; j < latent; j += 4) {
        const float4 v = curand_normal4(&st);
        const float e[4] = {v.x, v.y, v.z, v.w};
        for (int q = 0; q < 4 && j + q < latent; ++q) eps[(static_cast<size_t>(l) * batch + r) * latent + j + q] = e[q];
      }
    }
  return eps;
}

}  // namespace vae::test
