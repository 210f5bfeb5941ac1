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

// What a GEMM does to its product P = alpha op(A) op(B) before C is written (beta must be 0
// with any but none):
//   bias_activation   C = act(P + bias), bias (n)                 the forward of a dense layer
//   activation_grad   C = P ⊙ act'(h), h (m, n) with stride ldc   the backward into a hidden
//                     layer: dL/d(pre-activation) from dL/d(output) and the output h = act(a)
enum class Epilogue : int { none = 0, bias_activation = 1, activation_grad = 2 };

// Row-major GEMM: C[m,n] = alpha * op(A)[m,k] * op(B)[k,n] + beta * C, then the epilogue; and,
// independently of it, bias_grad (m) = Σ_p op(A)[i, p]: the bias gradient that rides on the
// weight-gradient GEMM dW = gᵀ X (op(A) = gᵀ; A = g must be stored (k, m) densely).
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
  Epilogue epilogue = Epilogue::none;
  Activation activation = Activation::identity;
  const float* bias = nullptr;               // bias_activation: (n), or null for none
  const float* activation_output = nullptr;  // activation_grad: h (m, n), stride ldc
  float* bias_grad = nullptr;                // (m), or null
  // A strided batch of `count` GEMMs of this shape (vae sweep's models): GEMM i reads and writes
  // a + i·stride_a, b + i·stride_b, c + i·stride_c (activation_output at c's offsets) and
  // bias or bias_grad + i·stride_bias. Each is the GEMM count 1 would compute (the same bits on
  // the CPU).
  int count = 1;
  long long stride_a = 0, stride_b = 0, stride_c = 0, stride_bias = 0;
  // GEMM i of the batch, as an op of its own.
  __host__ __device__ GemmOp item(int i) const {
    GemmOp op = *this;
    op.count = 1;
    op.a += i * stride_a;
    op.b += i * stride_b;
    op.c += i * stride_c;
    if (op.activation_output) op.activation_output += i * stride_c;
    if (op.bias) op.bias += i * stride_bias;
    if (op.bias_grad) op.bias_grad += i * stride_bias;
    return op;
  }
  // Rows [r0, r0 + rows) of C (of a single GEMM) as an op of its own: the same sums for those rows,
  // from A's rows (op(A)'s) and into C's, h's and the bias gradient's from r0.
  __host__ __device__ GemmOp row_range(int r0, int rows) const {
    GemmOp op = *this;
    op.m = rows;
    op.a += trans_a ? r0 : static_cast<long long>(r0) * lda;
    op.c += static_cast<long long>(r0) * ldc;
    if (op.activation_output) op.activation_output += static_cast<long long>(r0) * ldc;
    if (op.bias_grad) op.bias_grad += r0;
    return op;
  }
};

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

// How the CPU target splits a product with work for more than one of its `workers` (dense_gemm.cu
// says why, with its figures): into row panels of C, column panels, or K slices whose partial
// products are added in slice order. Defined by the CPU half only.
enum class CpuGemmCut { rows, columns, k_slices };
CpuGemmCut cpu_gemm_cut(const GemmOp& op, int workers);

}  // namespace vae
