// cuda::backward: runs the instantiation for (dtype, head dim). The kernels are in
// backward_kernels.cuh; their host side, which also copies views with rows off 16-byte addresses
// through scratch, in backward_host.cuh; their instantiations in
// src/cuda/instantiations/backward_sm80_*.cu.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <string>

#include "cuda/attention.hpp"
#include "cuda/sm80/backward_launch.cuh"
#include "flashmask/types.hpp"

namespace flashmask::cuda {

namespace {

template <typename Element>
void dispatch_head_dim(const AttentionProblem& p, bool deterministic, KeyOrder key_order, cudaStream_t stream) {
    switch (p.head_dim) {
        case 64: sm80::run_backward<Element, 64>(p, deterministic, key_order, stream); return;
        case 128: sm80::run_backward<Element, 128>(p, deterministic, key_order, stream); return;
        case 256: sm80::run_backward<Element, 256>(p, deterministic, key_order, stream); return;
        default:
            throw Error(ErrorCode::Unsupported, "q",
                        "flashmask::backward: head dim " + std::to_string(p.head_dim) + ", expected 64, 128 or 256");
    }
}

}  // namespace

void backward(const AttentionProblem& p, bool deterministic, KeyOrder key_order, cudaStream_t stream) {
    switch (p.dtype) {
        case DType::BFloat16: dispatch_head_dim<__nv_bfloat16>(p, deterministic, key_order, stream); return;
        case DType::Float16: dispatch_head_dim<__half>(p, deterministic, key_order, stream); return;
        default:
            throw Error(ErrorCode::Unsupported, "q",
                        std::string("flashmask::backward: dtype ") + to_string(p.dtype) +
                            " on the CUDA path, expected bfloat16 or float16");
    }
}

}  // namespace flashmask::cuda
