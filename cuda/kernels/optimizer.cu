// One optimizer launch over the flat parameter buffer: Adam (default), Adagrad (the paper's
// choice) or SGD with momentum, each with an L2 weight-decay term added to the gradient.
#include <algorithm>

#include "ops.h"  // the entry points this file defines
#include "kernels/models.cuh"
#include "kernels/non_finite.cuh"
#include "kernels/optimizer.cuh"
#include "kernels/ticket.cuh"

namespace vae::VAE_NS {

// params, grads, state1, state2 are (n). Adam: state1 = m, state2 = v. Adagrad: state1 = Σ g².
// SGD: state1 = velocity. A template per kind keeps the element loop free of branches. The step
// t = at->step + 1 counts from 1. With advance_batch > 0 the block that finishes last (its
// ticket) then moves the step on: at->step += 1, at->offset += advance_batch, the end of a
// training step without a kernel of its own.
template <OptimizerKind kind>
__global__ void optimizer_step_kernel(OptimizerHyper h, float* __restrict__ params, const float* __restrict__ grads,
                                      float* __restrict__ state1, float* __restrict__ state2, long long n,
                                      StepState* __restrict__ at, int advance_batch, unsigned* __restrict__ ticket,
                                      NonFinite* __restrict__ watch, Models ms) {
  // Model blockIdx.z's parameters, state, step, ticket, watch and scalars (types.h: Models).
  params = model_part(params, n);
  grads = model_part(grads, n);
  state1 = model_part(state1, n);
  state2 = model_part(state2, n);
  at = model_part(at, 1);
  ticket = model_part(ticket, 1);
  watch = model_part(watch, 1);
  h = model_hyper(ms, h);
  const uint64_t step = at->step;
  const OptimizerScalars k = optimizer_scalars(h, step);
  // The largest exponent field of the thread's gradients: a max, which the host compiler
  // vectorizes with the update (a bool AND kept the loop scalar: 4x the time on the CPU).
  uint32_t top = 0;
  VAE_ELEMENT_LOOP(i, n) {
    const uint32_t e = exponent_bits(grads[i]);
    top = top > e ? top : e;
    optimizer_element<kind>(h, k, params, grads, state1, state2, i);
  }
  if (top == kNonFiniteExponent && watch) {  // rare: find the first one
    VAE_ELEMENT_LOOP(i, n) {
      if (!finite_bits(grads[i])) {
        record_non_finite(watch, step, NonFiniteTerm::gradient, i);
        break;
      }
    }
  }
  if (advance_batch <= 0) return;  // uniform over the grid
  __syncthreads();                 // every thread of this block has read at->step
  if (threadIdx.x != 0 || !arrives_last(ticket, gridDim.x)) return;
  at->step += 1;
  at->offset += advance_batch;
}

// out[0] = Σ_i value(i)² in float64 (the gradient's or the update's squared norm, for the logs).
// Two stages in a fixed order, as elbo_totals': each block's threads sum strided elements, the
// block adds them in shared memory and writes its sum to scratch; the block that arrives last adds
// the blocks' sums in block order. The same inputs and grid give the same bits on every run.
template <typename Value>
__device__ __forceinline__ void square_sum_of(const Value& value, long long n, double* __restrict__ out,
                                              ReduceScratch scratch) {
  VAE_DYNAMIC_SHARED(double, partial);  // (blockDim.x)
  double sum = 0;
  const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
  for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const double v = value(i);
    sum += v * v;
  }
  partial[threadIdx.x] = sum;
  __syncthreads();
  for (unsigned half = blockDim.x / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x != 0) return;
  if (gridDim.x == 1) {
    out[0] = partial[0];
    return;
  }
  volatile double* block_sums = reinterpret_cast<double*>(scratch.partial);  // (gridDim.x)
  block_sums[blockIdx.x] = partial[0];
  if (!arrives_last(&scratch.tickets[0], gridDim.x)) return;
  double total = 0;
  for (unsigned b = 0; b < gridDim.x; ++b) total += block_sums[b];
  out[0] = total;
}

__global__ void square_sum_kernel(const float* __restrict__ x, long long n, double* __restrict__ out,
                                  ReduceScratch scratch) {
  square_sum_of([&](long long i) { return x[i]; }, n, out, scratch);
}

// The last update's squared norm, Σ_i last_update(i)², over the state after it.
template <OptimizerKind kind>
__global__ void update_square_sum_kernel(OptimizerHyper h, OptimizerScalars k, const float* __restrict__ params,
                                         const float* __restrict__ grads, const float* __restrict__ state1,
                                         const float* __restrict__ state2, long long n, double* __restrict__ out,
                                         ReduceScratch scratch) {
  square_sum_of([&](long long i) { return last_update<kind>(h, k, params, grads, state1, state2, i); }, n, out,
                scratch);
}

namespace {
// The blocks of a square sum over n elements of `threads` threads: at least 4 elements a thread,
// within the launch policy's cap and the scratch (a double per block).
int square_sum_blocks(long long n, int threads) {
  const int most = std::min(launch_policy().max_blocks, kReducePartialFloats / 2);
  return static_cast<int>(std::clamp<long long>(ceil_div(n, 4ll * threads), 1, most));
}
}  // namespace

void square_sum(const float* x, long long n, double* out, ReduceScratch scratch, cudaStream_t stream) {
  VAE_REQUIRE(n >= 0, "square_sum: bad size");
  const int threads = launch_policy().reduce_threads, blocks = square_sum_blocks(n, threads);
  if (blocks > 1) VAE_REQUIRE(scratch.tickets && scratch.partial, "square_sum: no scratch");
  VAE_LAUNCH(square_sum_kernel, blocks, threads, threads * sizeof(double), stream, x, n, out, scratch);
}

void update_square_sum(OptimizerKind kind, const OptimizerHyper& hyper, uint64_t step, const float* params,
                       const float* grads, const float* state1, const float* state2, long long n, double* out,
                       ReduceScratch scratch, cudaStream_t stream) {
  VAE_REQUIRE(n >= 0, "update_square_sum: bad size");
  const int threads = launch_policy().reduce_threads, blocks = square_sum_blocks(n, threads);
  if (blocks > 1) VAE_REQUIRE(scratch.tickets && scratch.partial, "update_square_sum: no scratch");
  const size_t smem = threads * sizeof(double);
  const OptimizerScalars k = optimizer_scalars(hyper, step);  // as the update formed them
  switch (kind) {
    case OptimizerKind::adam:
      VAE_LAUNCH(update_square_sum_kernel<OptimizerKind::adam>, blocks, threads, smem, stream, hyper, k, params, grads,
                 state1, state2, n, out, scratch);
      break;
    case OptimizerKind::adagrad:
      VAE_LAUNCH(update_square_sum_kernel<OptimizerKind::adagrad>, blocks, threads, smem, stream, hyper, k, params,
                 grads, state1, state2, n, out, scratch);
      break;
    case OptimizerKind::sgd:
      VAE_LAUNCH(update_square_sum_kernel<OptimizerKind::sgd>, blocks, threads, smem, stream, hyper, k, params, grads,
                 state1, state2, n, out, scratch);
      break;
  }
}

void optimizer_step(OptimizerKind kind, const OptimizerHyper& hyper, float* params, const float* grads, float* state1,
                    float* state2, long long n, StepState* at, int advance_batch, unsigned* ticket, NonFinite* watch,
                    cudaStream_t stream, Models ms) {
  VAE_REQUIRE(advance_batch <= 0 || ticket, "optimizer_step: advancing the step needs a ticket");
  require_models(ms, 0, "optimizer_step");
  if (n == 0 && advance_batch <= 0) return;
  // The barrier before the step moves on makes a block's threads fibers under host execution:
  // there, one thread per block (the policy's element_threads) costs none.
  const int block = launch_policy().element_threads;
  const dim3 grid = model_grid(elementwise_grid(n > 0 ? n : 1, block), ms);
  switch (kind) {
    case OptimizerKind::adam:
      VAE_LAUNCH(optimizer_step_kernel<OptimizerKind::adam>, grid, block, 0, stream, hyper, params, grads, state1,
                 state2, n, at, advance_batch, ticket, watch, ms);
      break;
    case OptimizerKind::adagrad:
      VAE_LAUNCH(optimizer_step_kernel<OptimizerKind::adagrad>, grid, block, 0, stream, hyper, params, grads, state1,
                 state2, n, at, advance_batch, ticket, watch, ms);
      break;
    case OptimizerKind::sgd:
      VAE_LAUNCH(optimizer_step_kernel<OptimizerKind::sgd>, grid, block, 0, stream, hyper, params, grads, state1,
                 state2, n, at, advance_batch, ticket, watch, ms);
      break;
  }
}

}  // namespace vae::VAE_NS
