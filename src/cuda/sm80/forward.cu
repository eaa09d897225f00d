// PLACEHOLDER until the sm80 forward kernel lands (issue #3, forward helper replaces this file).
#include "cuda/attention.hpp"
#include "flashmask/types.hpp"

namespace flashmask::cuda {

bool supports(DType dtype, int32_t head_dim, int32_t value_dim) {
    return (dtype == DType::BFloat16 || dtype == DType::Float16) && head_dim == value_dim &&
           (head_dim == 64 || head_dim == 128 || head_dim == 256);
}

void forward(const AttentionProblem&, cudaStream_t) {
    throw Error(ErrorCode::Unsupported, "q", "flashmask::forward: the CUDA forward kernel is not built yet");
}

}  // namespace flashmask::cuda
