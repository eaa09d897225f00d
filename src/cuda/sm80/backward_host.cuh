// Host side of the sm80 backward for one (Element, kHeadDim): scratch, block summaries, launches.
// Included only by the instantiation units (src/cuda/instantiations/backward_sm80_*.cu).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "cuda/common/check.hpp"
#include "cuda/common/shared_memory.hpp"
#include "cuda/common/workspace.cuh"
#include "cuda/sm80/backward_kernels.cuh"
#include "cuda/sm80/backward_launch.cuh"

namespace flashmask::cuda::sm80 {

namespace backward_detail {

inline int64_t blocks_for(int64_t work, int64_t per_block) { return (work + per_block - 1) / per_block; }

// Grid dimensions y and z hold (heads x splits) and the batch; CUDA allows 65535 in each.
constexpr int64_t kMaxGridYZ = 65535;

inline void check_grid(int64_t y, int64_t z) {
    if (y > kMaxGridYZ || z > kMaxGridYZ)
        throw Error(ErrorCode::Unsupported, "q",
                    "flashmask::backward: heads x column splits = " + std::to_string(y) + " and batch = " +
                        std::to_string(z) + " must each be at most 65535 on the CUDA path");
}

template <typename Element, int kHeadDim>
void zero_gradient(const Operand& t, int32_t batches, int32_t rows, int32_t heads, cudaStream_t stream) {
    const int64_t chunks = int64_t(batches) * rows * heads * (kHeadDim / kChunkElements);
    if (chunks == 0) return;
    zero_gradient_kernel<Element, kHeadDim>
        <<<unsigned(blocks_for(chunks, kElementwiseThreads)), kElementwiseThreads, 0, stream>>>(t, batches, rows, heads);
    check_launch("flashmask backward: zero_gradient_kernel");
}

}  // namespace backward_detail

template <typename Element, int kHeadDim>
void run_backward(const AttentionProblem& p, bool deterministic, cudaStream_t stream) {
    using namespace backward_detail;
    using DkDvT = DkDv<kHeadDim>;
    using DqT = Dq<kHeadDim>;
    if (p.batch == 0 || p.q_heads == 0) return;  // every tensor is empty
    if (p.nq == 0 || p.nk == 0) {
        // No query sees a key (or there is none): the gradients that exist are zero.
        if (p.nq == 0) {
            zero_gradient<Element, kHeadDim>(p.dk, p.batch, p.nk, p.kv_heads, stream);
            zero_gradient<Element, kHeadDim>(p.dv, p.batch, p.nk, p.kv_heads, stream);
        }
        if (p.nk == 0) zero_gradient<Element, kHeadDim>(p.dq, p.batch, p.nq, p.q_heads, stream);
        return;
    }
    check_grid(int64_t(p.kv_heads) * DkDvT::kColSplits, p.batch);
    check_grid(int64_t(p.q_heads) * DqT::kColSplits, p.batch);
    check_shared_memory("backward", DkDvSmem<Element, kHeadDim>::kBytes, "backward_dkdv_kernel");
    if (deterministic) check_shared_memory("backward", DqSmem<Element, kHeadDim>::kBytes, "backward_dq_kernel");

    // Scratch: LSE * log2 e and Di per padded row, and the dQ accumulator when not deterministic.
    BackwardScratch scratch;
    scratch.padded_nq = int32_t(blocks_for(p.nq, kScratchRowAlignment) * kScratchRowAlignment);
    const std::size_t rows = std::size_t(p.batch) * p.q_heads * scratch.padded_nq;
    const std::size_t accumulator_floats = deterministic ? 0 : rows * kHeadDim;
    DeviceScratch memory((2 * rows + accumulator_floats) * sizeof(float), stream);
    scratch.lse_log2 = memory.as<float>();
    scratch.di = scratch.lse_log2 + rows;
    if (!deterministic) {
        scratch.dq_accum = scratch.di + rows;
        FM_CUDA_CHECK(cudaMemsetAsync(scratch.dq_accum, 0, accumulator_floats * sizeof(float), stream));
    }

    constexpr int kRowsPerPreprocessBlock = kPreprocessThreads / (kHeadDim / kChunkElements);
    backward_preprocess_kernel<Element, kHeadDim>
        <<<unsigned(blocks_for(int64_t(rows), kRowsPerPreprocessBlock)), kPreprocessThreads, 0, stream>>>(p, scratch);
    check_launch("flashmask backward: backward_preprocess_kernel");

    {
        const BlockSummaries summaries(p.mask, p.batch, p.q_heads, DkDvT::kBlockN, stream);
        constexpr int kSmem = DkDvSmem<Element, kHeadDim>::kBytes;
        const dim3 grid(unsigned(ceil_div(p.nk, DkDvT::kBlockN)), unsigned(p.kv_heads * DkDvT::kColSplits),
                        unsigned(p.batch));
        if (deterministic) {
            auto kernel = backward_dkdv_kernel<Element, kHeadDim, false>;
            allow_shared_memory(kernel, kSmem);
            kernel<<<grid, DkDvT::kThreads, kSmem, stream>>>(p, summaries.table(), scratch);
        } else {
            auto kernel = backward_dkdv_kernel<Element, kHeadDim, true>;
            allow_shared_memory(kernel, kSmem);
            kernel<<<grid, DkDvT::kThreads, kSmem, stream>>>(p, summaries.table(), scratch);
        }
        check_launch("flashmask backward: backward_dkdv_kernel");
    }

    if (deterministic) {
        const BlockSummaries summaries(p.mask, p.batch, p.q_heads, DqT::kBlockN, stream);
        constexpr int kSmem = DqSmem<Element, kHeadDim>::kBytes;
        const dim3 grid(unsigned(ceil_div(p.nq, DqT::kBlockM)), unsigned(p.q_heads * DqT::kColSplits),
                        unsigned(p.batch));
        auto kernel = backward_dq_kernel<Element, kHeadDim>;
        allow_shared_memory(kernel, kSmem);
        kernel<<<grid, DqT::kThreads, kSmem, stream>>>(p, summaries.table(), scratch);
        check_launch("flashmask backward: backward_dq_kernel");
    } else {
        const int64_t chunks = int64_t(p.batch) * p.q_heads * p.nq * (kHeadDim / kChunkElements);
        backward_dq_convert_kernel<Element, kHeadDim>
            <<<unsigned(blocks_for(chunks, kElementwiseThreads)), kElementwiseThreads, 0, stream>>>(p, scratch);
        check_launch("flashmask backward: backward_dq_convert_kernel");
    }
}

}  // namespace flashmask::cuda::sm80
