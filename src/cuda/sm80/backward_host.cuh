// Host side of the sm80 backward for one (Element, kHeadDim): scratch, block summaries, launches.
// Included only by the instantiation units (src/cuda/instantiations/backward_sm80_*.cu).
// Operands whose rows are off 16-byte addresses run through contiguous copies (KernelOperand,
// kernel_operand.cuh), as in the forward.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <optional>
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
    // Every refusal (shared memory, occupancy, grid and tile counts) before the first work queued
    // on the stream, as in the forward: a refused call leaves no copies, scratch or kernels behind.
    // The dK/dV kernel is planned first and needs the more shared memory, so a device short of
    // it refuses the call for shared memory before any other reason, deterministic or not.
    static_assert(DqSmem<Element, kHeadDim>::kBytes <= DkDvSmem<Element, kHeadDim>::kBytes,
                  "the dK/dV kernel's shared-memory refusal covers the dQ kernel's");
    // Heaviest key blocks first for dK/dV; heaviest query blocks first for the deterministic dQ.
    const auto dkdv = plan_scheduled_launch<DkDvT>(deterministic ? backward_dkdv_kernel<Element, kHeadDim, false>
                                                                 : backward_dkdv_kernel<Element, kHeadDim, true>,
                                                   DkDvSmem<Element, kHeadDim>::kBytes, p, TileAxis::KeyBlocks,
                                                   "backward", "backward_dkdv_kernel");
    std::optional<ScheduledLaunch<decltype(&backward_dq_kernel<Element, kHeadDim>)>> dq_launch;
    if (deterministic)
        dq_launch = plan_scheduled_launch<DqT>(backward_dq_kernel<Element, kHeadDim>, DqSmem<Element, kHeadDim>::kBytes,
                                               p, TileAxis::QueryBlocks, "backward", "backward_dq_kernel");

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
        const TileScheduler tiles(p.mask, dkdv.shape, summaries.table(), stream);
        dkdv.kernel<<<dkdv.grid, DkDvT::kThreads, dkdv.smem_bytes, stream>>>(kernel_problem, summaries.table(),
                                                                             tiles.schedule(), scratch);
        check_launch("flashmask backward: backward_dkdv_kernel");
    }

    if (dq_launch) {
        const BlockSummaries summaries(p.mask, p.batch, p.q_heads, DqT::kBlockN, stream);
        const TileScheduler tiles(p.mask, dq_launch->shape, summaries.table(), stream);
        dq_launch->kernel<<<dq_launch->grid, DqT::kThreads, dq_launch->smem_bytes, stream>>>(
            kernel_problem, summaries.table(), tiles.schedule(), scratch);
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
