// Every sm80 backward kernel of (bf16, D = 64): one translation unit per (dtype, head dim).
#include "cuda/sm80/backward_host.cuh"

namespace flashmask::cuda::sm80 {
template void run_backward<__nv_bfloat16, 64>(const AttentionProblem&, bool, KeyOrder, cudaStream_t);
}  // namespace flashmask::cuda::sm80
