// The seam between cuda::backward (backward.cu, which picks the instantiation) and the explicit
// instantiations, one translation unit per (dtype, head dim) in src/cuda/instantiations/.
// Declaration only: backward.cu cannot instantiate the kernels implicitly.
#pragma once

#include <cuda_runtime_api.h>

#include "flashmask/problem.hpp"

namespace flashmask::cuda::sm80 {

// Every backward kernel of one (Element, kHeadDim): preprocess, dK/dV (with dQ by atomics unless
// deterministic), the deterministic dQ kernel or the accumulator conversion; zero-size problems
// get zero gradients. Defined in backward_host.cuh.
template <typename Element, int kHeadDim>
void run_backward(const AttentionProblem& p, bool deterministic, KeyOrder key_order, cudaStream_t stream);

}  // namespace flashmask::cuda::sm80
