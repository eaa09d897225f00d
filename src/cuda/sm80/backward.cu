// cuda::backward: checks what the kernels assume of the memory, then runs the instantiation for
// (dtype, head dim). The kernels are in backward_kernels.cuh, their host side in backward_host.cuh,
// their instantiations in src/cuda/instantiations/backward_sm80_*.cu.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <string>

#include "cuda/attention.hpp"
#include "cuda/sm80/backward_launch.cuh"
#include "flashmask/types.hpp"

namespace flashmask::cuda {

namespace {

constexpr int64_t kVectorBytes = 16;  // cp.async and the vector loads move 16-byte chunks

// The kernels move rows in 16-byte chunks: every row of every tensor must start on a 16-byte
// boundary. Refused (before anything runs) when a view is offset or strided otherwise.
// A dimension of extent 1 is never stepped over, so its stride does not matter.
void check_alignment(const Operand& t, const char* name, const int32_t (&extents)[3], int64_t element_bytes) {
    bool aligned = reinterpret_cast<std::uintptr_t>(t.data) % kVectorBytes == 0;
    for (int d = 0; d < 3; ++d) aligned = aligned && (extents[d] <= 1 || (t.stride[d] * element_bytes) % kVectorBytes == 0);
    if (!aligned)
        throw Error(ErrorCode::Unsupported, name,
                    std::string("flashmask::backward: ") + name +
                        " must start on a 16-byte boundary with strides (but the last) that are multiples of 16 "
                        "bytes on the CUDA path; given a view that is not");
}

template <typename Element>
void dispatch_head_dim(const AttentionProblem& p, bool deterministic, cudaStream_t stream) {
    switch (p.head_dim) {
        case 64: sm80::run_backward<Element, 64>(p, deterministic, stream); return;
        case 128: sm80::run_backward<Element, 128>(p, deterministic, stream); return;
        case 256: sm80::run_backward<Element, 256>(p, deterministic, stream); return;
        default:
            throw Error(ErrorCode::Unsupported, "q",
                        "flashmask::backward: head dim " + std::to_string(p.head_dim) + ", expected 64, 128 or 256");
    }
}

}  // namespace

void backward(const AttentionProblem& p, bool deterministic, cudaStream_t stream) {
    const int64_t element_bytes = 2;  // bfloat16 and float16
    const int32_t query_extents[3] = {p.batch, p.nq, p.q_heads};
    const int32_t key_extents[3] = {p.batch, p.nk, p.kv_heads};
    check_alignment(p.q, "q", query_extents, element_bytes);
    check_alignment(p.out, "out", query_extents, element_bytes);
    check_alignment(p.dout, "dout", query_extents, element_bytes);
    check_alignment(p.dq, "dq", query_extents, element_bytes);
    check_alignment(p.k, "k", key_extents, element_bytes);
    check_alignment(p.v, "v", key_extents, element_bytes);
    check_alignment(p.dk, "dk", key_extents, element_bytes);
    check_alignment(p.dv, "dv", key_extents, element_bytes);
    switch (p.dtype) {
        case DType::BFloat16: dispatch_head_dim<__nv_bfloat16>(p, deterministic, stream); return;
        case DType::Float16: dispatch_head_dim<__half>(p, deterministic, stream); return;
        default:
            throw Error(ErrorCode::Unsupported, "q",
                        std::string("flashmask::backward: dtype ") + to_string(p.dtype) +
                            " on the CUDA path, expected bfloat16 or float16");
    }
}

}  // namespace flashmask::cuda
