// Host side of the sm80 backward for one (Element, kHeadDim): scratch, block summaries, launches.
// Included only by the instantiation units (src/cuda/instantiations/backward_sm80_*.cu).
// Operands whose rows are off 16-byte addresses run through contiguous copies (KernelOperand,
// kernel_operand.cuh), as in the forward.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <limits>
#include <initializer_list>
#include <string>

#include "cuda/common/check.hpp"
#include "cuda/common/shared_memory.hpp"
#include "cuda/common/tile_scheduler.cuh"
#include "cuda/common/workspace.cuh"
#include "cuda/sm80/backward_kernels.cuh"
#include "cuda/sm80/backward_launch.cuh"
#include "cuda/sm80/kernel_operand.cuh"

namespace flashmask::cuda::sm80 {

namespace backward_detail {

// CTAs of a scheduled kernel: one per (batch, head, block) of its schedule and column split, in
// grid dimension x (at most 2^31 - 1; the schedule has checked its own count).
inline unsigned scheduled_ctas(const TileScheduler& tiles, int column_splits, const char* kernel) {
    const int64_t ctas = tiles.shape().ctas() * column_splits;
    if (ctas > std::numeric_limits<int32_t>::max())
        throw Error(ErrorCode::Unsupported, "q",
                    std::string("flashmask::backward: ") + kernel + " needs " + std::to_string(ctas) +
                        " CTAs (blocks x heads x batch x column splits), more than the grid's 2^31 - 1");
    return unsigned(ctas);
}

// zero_gradient_kernel stores 16-byte chunks: a gradient with rows off 16-byte addresses is
// zeroed in its contiguous copy, which is then copied out.
template <typename Element, int kHeadDim>
void zero_gradient(const Operand& t, int32_t batches, int32_t rows, int32_t heads, cudaStream_t stream) {
    const int64_t chunks = int64_t(batches) * rows * heads * (kHeadDim / kChunkElements);
    if (chunks == 0) return;
    const KernelOperand gradient(t, batches, rows, heads, kHeadDim, stream);
    zero_gradient_kernel<Element, kHeadDim>
        <<<unsigned(ceil_div(chunks, int64_t{kElementwiseThreads})), kElementwiseThreads, 0, stream>>>(
            gradient.operand(), batches, rows, heads);
    check_launch("flashmask backward: zero_gradient_kernel");
    gradient.copy_out();
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
    check_shared_memory("backward", DkDvSmem<Element, kHeadDim>::kBytes, "backward_dkdv_kernel");
    if (deterministic) check_shared_memory("backward", DqSmem<Element, kHeadDim>::kBytes, "backward_dq_kernel");

    // The kernels read q, k, v, out, dout and write dq, dk, dv in 16-byte chunks; lse is read one
    // float at a time with its own strides and needs no copy.
    const KernelOperand q(p.q, p.batch, p.nq, p.q_heads, p.head_dim, stream);
    const KernelOperand k(p.k, p.batch, p.nk, p.kv_heads, p.head_dim, stream);
    const KernelOperand v(p.v, p.batch, p.nk, p.kv_heads, p.value_dim, stream);
    const KernelOperand out(p.out, p.batch, p.nq, p.q_heads, p.value_dim, stream);
    const KernelOperand dout(p.dout, p.batch, p.nq, p.q_heads, p.value_dim, stream);
    const KernelOperand dq(p.dq, p.batch, p.nq, p.q_heads, p.head_dim, stream);
    const KernelOperand dk(p.dk, p.batch, p.nk, p.kv_heads, p.head_dim, stream);
    const KernelOperand dv(p.dv, p.batch, p.nk, p.kv_heads, p.value_dim, stream);
    for (const KernelOperand* input : {&q, &k, &v, &out, &dout}) input->copy_in();
    AttentionProblem kernel_problem = p;
    kernel_problem.q = q.operand();
    kernel_problem.k = k.operand();
    kernel_problem.v = v.operand();
    kernel_problem.out = out.operand();
    kernel_problem.dout = dout.operand();
    kernel_problem.dq = dq.operand();
    kernel_problem.dk = dk.operand();
    kernel_problem.dv = dv.operand();

    // Scratch: LSE * log2 e and Di per padded row, and the dQ accumulator when not deterministic.
    BackwardScratch scratch;
    scratch.padded_nq = int32_t(ceil_div(int64_t{p.nq}, int64_t{kScratchRowAlignment}) * kScratchRowAlignment);
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
        <<<unsigned(ceil_div(int64_t(rows), int64_t{kRowsPerPreprocessBlock})), kPreprocessThreads, 0, stream>>>(
            kernel_problem, scratch);
    check_launch("flashmask backward: backward_preprocess_kernel");

    {
        const BlockSummaries summaries(p.mask, p.batch, p.q_heads, DkDvT::kBlockN, stream);
        constexpr int kSmem = DkDvSmem<Element, kHeadDim>::kBytes;
        auto kernel = deterministic ? backward_dkdv_kernel<Element, kHeadDim, false>
                                    : backward_dkdv_kernel<Element, kHeadDim, true>;
        allow_shared_memory(kernel, kSmem);
        // Heaviest key blocks first, work counted with the kernel's kBlockM x kBlockN tiles.
        const TileScheduler tiles(p.mask, p.batch, p.q_heads, p.kv_heads, TileAxis::KeyBlocks, DkDvT::kBlockM,
                                  summaries.table(),
                                  resident_block_slots(kernel, DkDvT::kThreads, kSmem, DkDvT::kColSplits), stream);
        const unsigned grid = scheduled_ctas(tiles, DkDvT::kColSplits, "backward_dkdv_kernel");
        kernel<<<grid, DkDvT::kThreads, kSmem, stream>>>(kernel_problem, summaries.table(), tiles.schedule(), scratch);
        check_launch("flashmask backward: backward_dkdv_kernel");
    }

    if (deterministic) {
        const BlockSummaries summaries(p.mask, p.batch, p.q_heads, DqT::kBlockN, stream);
        constexpr int kSmem = DqSmem<Element, kHeadDim>::kBytes;
        auto kernel = backward_dq_kernel<Element, kHeadDim>;
        allow_shared_memory(kernel, kSmem);
        const TileScheduler tiles(p.mask, p.batch, p.q_heads, p.kv_heads, TileAxis::QueryBlocks, DqT::kBlockM,
                                  summaries.table(), resident_block_slots(kernel, DqT::kThreads, kSmem, DqT::kColSplits),
                                  stream);
        const unsigned grid = scheduled_ctas(tiles, DqT::kColSplits, "backward_dq_kernel");
        kernel<<<grid, DqT::kThreads, kSmem, stream>>>(kernel_problem, summaries.table(), tiles.schedule(), scratch);
        check_launch("flashmask backward: backward_dq_kernel");
    } else {
        const int64_t chunks = int64_t(p.batch) * p.q_heads * p.nq * (kHeadDim / kChunkElements);
        backward_dq_convert_kernel<Element, kHeadDim>
            <<<unsigned(ceil_div(chunks, int64_t{kElementwiseThreads})), kElementwiseThreads, 0, stream>>>(
                kernel_problem, scratch);
        check_launch("flashmask backward: backward_dq_convert_kernel");
    }
    for (const KernelOperand* gradient : {&dq, &dk, &dv}) gradient->copy_out();
}

}  // namespace flashmask::cuda::sm80
