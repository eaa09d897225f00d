// cuda::forward and cuda::supports: pick the sm80 forward instantiation for (dtype, head dim).
// The kernels themselves are compiled once each in src/cuda/instantiations/forward_sm80_*.cu.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <string>

#include "cuda/attention.hpp"
#include "cuda/sm80/forward_traits.hpp"
#include "flashmask/types.hpp"

namespace flashmask::cuda {
namespace {

template <typename Element>
void forward_for_dtype(const AttentionProblem& p, KeyOrder key_order, cudaStream_t stream, sm80::ForwardPart part) {
    switch (p.head_dim) {
        case 64: sm80::launch_forward<Element, 64>(p, key_order, stream, part); return;
        case 128: sm80::launch_forward<Element, 128>(p, key_order, stream, part); return;
        case 256: sm80::launch_forward<Element, 256>(p, key_order, stream, part); return;
        default: break;
    }
    throw Error(ErrorCode::Unsupported, "q",
                "flashmask::forward: head dim D = " + std::to_string(p.head_dim) +
                    ", the CUDA kernels support D in {64, 128, 256}");
}

void forward_part(const AttentionProblem& p, KeyOrder key_order, cudaStream_t stream, sm80::ForwardPart part) {
    if (p.dtype == DType::BFloat16) return forward_for_dtype<__nv_bfloat16>(p, key_order, stream, part);
    if (p.dtype == DType::Float16) return forward_for_dtype<__half>(p, key_order, stream, part);
    throw Error(ErrorCode::Unsupported, "q",
                std::string("flashmask::forward: dtype ") + to_string(p.dtype) +
                    ", the CUDA kernels support bfloat16 and float16");
}

}  // namespace

bool supports(DType dtype, int32_t head_dim, int32_t value_dim) {
    return (dtype == DType::BFloat16 || dtype == DType::Float16) && head_dim == value_dim &&
           (head_dim == 64 || head_dim == 128 || head_dim == 256);
}

void forward(const AttentionProblem& p, KeyOrder key_order, cudaStream_t stream) {
    forward_part(p, key_order, stream, sm80::ForwardPart::Attention);
}

void forward_preprocessing(const AttentionProblem& p, KeyOrder key_order, cudaStream_t stream) {
    forward_part(p, key_order, stream, sm80::ForwardPart::PreprocessingOnly);
}

}  // namespace flashmask::cuda
