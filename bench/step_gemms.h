// The GEMMs of one training step, with their shapes and transposes as the step issues them:
// what bench_step times as the step's floor and bench_gemm runs on each CPU GEMM engine.
#pragma once

#include <deque>
#include <vector>

#include "device_context.h"
#include "kernels/dense_gemm.h"
#include "model.h"
#include "vae.h"

namespace vae::bench {

// The GEMMs of one step of Vae::forward + Vae::backward (host/vae.cpp: the same dense_*_gemm
// builders, without their epilogues), on scratch buffers:
// per layer the forward product, dW, and dX for every layer but the first encoder layer (the
// data needs no gradient). rows: B for the encoder and heads, L*B for the decoder.
struct StepGemms {
  std::vector<GemmOp> ops;
  std::vector<GemmOp> with_epilogues;  // the same products with the step's epilogues (ReLU layers)
  double flops = 0;
  std::deque<DeviceBuffer<float>> scratch;  // a deque: references stay valid as it grows
};

inline StepGemms step_gemms(const DeviceContext& ctx, const ParamLayout& layout, int batch, int samples) {
  StepGemms g;
  auto add = [&](const LinearSlot& s, int rows, bool grad_in) {
    auto& in = g.scratch.emplace_back(ctx, static_cast<size_t>(rows) * s.in);
    auto& w = g.scratch.emplace_back(ctx, static_cast<size_t>(s.out) * s.in);
    auto& out = g.scratch.emplace_back(ctx, static_cast<size_t>(rows) * s.out);
    auto& dw = g.scratch.emplace_back(ctx, static_cast<size_t>(s.out) * s.in);
    auto& b = g.scratch.emplace_back(ctx, static_cast<size_t>(s.out));
    auto& db = g.scratch.emplace_back(ctx, static_cast<size_t>(s.out));
    // The products alone: no epilogues (the floor is the GEMM work).
    auto plain = [](GemmOp op) {
      op.epilogue = Epilogue::none;
      op.bias_grad = nullptr;
      return op;
    };
    g.with_epilogues.push_back(
        dense_forward_gemm(s, in.data(), w.data(), b.data(), out.data(), rows, Activation::relu));
    g.with_epilogues.push_back(dense_weight_grad_gemm(s, out.data(), in.data(), dw.data(), db.data(), rows));
    if (grad_in) {
      g.with_epilogues.push_back(
          dense_input_grad_gemm(s, out.data(), w.data(), in.data(), rows, in.data(), Activation::relu));
    }
    for (size_t i = g.ops.size(); i < g.with_epilogues.size(); ++i) g.ops.push_back(plain(g.with_epilogues[i]));
    g.flops += 2.0 * rows * s.out * s.in * (grad_in ? 3 : 2);
  };
  for (size_t i = 0; i < layout.encoder.size(); ++i) add(layout.encoder[i], batch, i > 0);
  add(layout.heads, batch, !layout.encoder.empty());
  for (const auto& s : layout.decoder) add(s, batch * samples, true);
  add(layout.output, batch * samples, true);
  return g;
}

}  // namespace vae::bench
