// PLACEHOLDER until the sm80 backward kernels land (issue #3, backward helper replaces this file).
#include "cuda/attention.hpp"
#include "flashmask/types.hpp"

namespace flashmask::cuda {

void backward(const AttentionProblem&, bool, cudaStream_t) {
    throw Error(ErrorCode::Unsupported, "q", "flashmask::backward: the CUDA backward kernels are not built yet");
}

}  // namespace flashmask::cuda
