// The CUDA path as the API layer sees it. Arguments arrive validated and resolved (problem.hpp);
// these functions pick the kernel for (architecture, dtype, head dim), build the per-call block
// summaries on the device, and launch on `stream`. Every CUDA failure is thrown as
// Error(CudaError) with CUDA's message (common/check.hpp). Host-only header: no device code.
#pragma once

#include <cuda_runtime_api.h>

#include "flashmask/problem.hpp"

namespace flashmask::cuda {

// Writes p.out and p.lse. p.dtype is BFloat16 or Float16, p.head_dim == p.value_dim in {64, 128, 256}.
// key_order: the order the kernels read the keys in (types.hpp, common/key_order.cuh).
void forward(const AttentionProblem& p, KeyOrder key_order, cudaStream_t stream);

// Only what forward() queues before its kernel, from the mask alone (no tensor is read): block
// summaries, tile order and, from 16K keys under KeyOrder::Automatic, the key order's sort and
// comparison. The benchmark times it as the per-call preprocessing (bench/bench_attention.py).
void forward_preprocessing(const AttentionProblem& p, KeyOrder key_order, cudaStream_t stream);

// Reads p.q, k, v, out, lse, dout; writes p.dq, dk, dv. `deterministic`: identical bits on every
// run (no floating-point atomics whose order varies).
void backward(const AttentionProblem& p, bool deterministic, KeyOrder key_order, cudaStream_t stream);

// Whether (dtype, head_dim, value_dim) has a kernel; the API refuses the rest with Unsupported
// before anything runs.
bool supports(DType dtype, int32_t head_dim, int32_t value_dim);

}  // namespace flashmask::cuda
