// The three GEMMs of a dense layer (out, in) with their epilogues, built in one place for the
// composed step (host/vae.cpp) and the fused step kernel. Row-major; W is (out, in) as in
// nn.Linear:
//   forward       y (rows, out)  = act(x (rows, in) · Wᵀ + b)
//   weight grad   dW (out, in)   = gᵀ (out, rows) · x (rows, in),   db = Σ_rows g
//   input grad    dX (rows, in)  = g (rows, out) · W (out, in) ⊙ act'(h_in)
// g (rows, out) is dL/d(pre-activation) of the layer; h_in (rows, in) is the output of the layer
// below when that is a hidden layer with activation act_in (its input-grad GEMM then yields that
// layer's g), null for the identity (z, x).
#pragma once

#include <cuda_runtime.h>

#include "kernels/types.h"

namespace vae {

__host__ __device__ inline GemmOp dense_forward_gemm(int out, int in, const float* x, const float* w, const float* b,
                                                     float* y, int rows, Activation act) {
  GemmOp op;
  op.trans_b = true;
  op.m = rows, op.n = out, op.k = in;
  op.a = x, op.lda = in;
  op.b = w, op.ldb = in;
  op.c = y, op.ldc = out;
  op.epilogue = Epilogue::bias_activation;
  op.bias = b;
  op.activation = act;
  return op;
}

__host__ __device__ inline GemmOp dense_weight_grad_gemm(int out, int in, const float* g, const float* x, float* dw,
                                                         float* db, int rows) {
  GemmOp op;
  op.trans_a = true;
  op.m = out, op.n = in, op.k = rows;
  op.a = g, op.lda = out;
  op.b = x, op.ldb = in;
  op.c = dw, op.ldc = in;
  op.bias_grad = db;
  return op;
}

__host__ __device__ inline GemmOp dense_input_grad_gemm(int out, int in, const float* g, const float* w, float* dx,
                                                        int rows, const float* h_in, Activation act_in) {
  GemmOp op;
  op.m = rows, op.n = in, op.k = out;
  op.a = g, op.lda = out;
  op.b = w, op.ldb = in;
  op.c = dx, op.ldc = in;
  if (h_in && act_in != Activation::identity) {
    op.epilogue = Epilogue::activation_grad;
    op.activation = act_in;
    op.activation_output = h_in;
  }
  return op;
}

}  // namespace vae
