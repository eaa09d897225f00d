// Every sm80 backward kernel of (fp16, D = 64): one translation unit per (dtype, head dim).
#include "cuda/sm80/backward_host.cuh"

namespace flashmask::cuda::sm80 {
template void run_backward<__half, 64>(const AttentionProblem&, bool, KeyOrder, cudaStream_t);
}  // namespace flashmask::cuda::sm80
