// The sm80 forward kernel for __half, head dim 256: one explicit instantiation per unit keeps
// each nvcc run short (see src/cuda/sm80/forward_kernel.cuh).
#include "cuda/sm80/forward_kernel.cuh"

namespace flashmask::cuda::sm80 {
template void launch_forward<__half, 256>(const AttentionProblem&, KeyOrder, cudaStream_t, ForwardPart);
}  // namespace flashmask::cuda::sm80
