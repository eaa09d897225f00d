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
#include "cuda/common/compressible_scratch.hpp"
#include "cuda/common/key_order.cuh"
#include "cuda/common/shared_memory.hpp"
#include "cuda/common/tile_scheduler.cuh"
#include "cuda/common/workspace.cuh"
#include "cuda/sm80/backward_kernels.cuh"
#include "cuda/sm80/backward_launch.cuh"
#include "cuda/sm80/kernel_operand.cuh"
#include "cuda/sm80/small_backward.cuh"

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
void run_backward(const AttentionProblem& p, bool deterministic, KeyOrder key_order, cudaStream_t stream) {
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
    if (uses_small_backward(p)) {
        // Tiny problems in float32 without tensor cores (small_backward.cuh): within SPEC §5 where
        // a few rows over few keys carry the whole error, and deterministic by construction.
        run_small_backward<Element, kHeadDim>(p, stream);
        return;
    }
    // Every refusal (shared memory, occupancy, grid and tile counts) before the first work queued
    // on the stream, as in the forward: a refused call leaves no copies, scratch or kernels behind.
    // The dK/dV kernel is planned first and needs the more shared memory, so a device short of
    // it refuses the call for shared memory before any other reason, deterministic or not.
    static_assert(DqSmem<Element, kHeadDim>::kBytes <= DkDvSmem<Element, kHeadDim>::kBytes,
                  "the dK/dV kernel's shared-memory refusal covers the dQ kernel's");
    // Heaviest key blocks first for dK/dV; heaviest query blocks first for the deterministic dQ.
    constexpr int kDkDvSmemBytes = DkDvSmem<Element, kHeadDim>::kBytes;
    const auto dkdv = plan_scheduled_launch<DkDvT>(deterministic ? backward_dkdv_kernel<Element, kHeadDim, false, false>
                                                                 : backward_dkdv_kernel<Element, kHeadDim, true, false>,
                                                   kDkDvSmemBytes, p, TileAxis::KeyBlocks, "backward",
                                                   "backward_dkdv_kernel");
    // Its sorted-key variant: the same threads and shared memory, so the same grid and occupancy.
    const auto sorted_dkdv = deterministic ? backward_dkdv_kernel<Element, kHeadDim, false, true>
                                           : backward_dkdv_kernel<Element, kHeadDim, true, true>;
    allow_shared_memory(sorted_dkdv, kDkDvSmemBytes);
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

    // Scratch: LSE * log2 e and Di per padded row, and the dQ accumulator when not deterministic,
    // then the sums and arrival counts of the split CTAs (TailSplit) when the grid is split.
    BackwardScratch scratch;
    scratch.padded_nq = int32_t(ceil_div(int64_t{p.nq}, int64_t{kScratchRowAlignment}) * kScratchRowAlignment);
    const std::size_t rows = std::size_t(p.batch) * p.q_heads * scratch.padded_nq;
    const std::size_t accumulator_floats = deterministic ? 0 : rows * kHeadDim;
    const int64_t tiles_per_dkdv_cta = int64_t(p.q_heads / p.kv_heads) * ceil_div(int64_t{p.nq}, int64_t{DkDvT::kBlockM});
    const TailPlan tail = !deterministic && ctas_have_equal_work(p)
                              ? plan_tail_split(int64_t{dkdv.grid}, dkdv.shape.cta_slots, tiles_per_dkdv_cta)
                              : TailPlan{};
    const std::size_t split_floats = std::size_t(tail.split_ctas) * 2 * DkDvT::kBlockN * kHeadDim;
    // The dQ accumulator in the device's compressible buffer where there is one (its zeroing and
    // first reads move fewer bytes: compressible_scratch.hpp), else with the rest of the scratch.
    const CompressibleScratch compressible = CompressibleScratch::lease(accumulator_floats * sizeof(float), stream);
    const std::size_t inline_accumulator_floats = compressible ? 0 : accumulator_floats;
    DeviceScratch memory((2 * rows + inline_accumulator_floats + tail.scratch_floats(split_floats)) * sizeof(float),
                         stream);
    scratch.lse_log2 = memory.as<float>();
    scratch.di = scratch.lse_log2 + rows;
    // The dQ accumulator is zeroed by backward_preprocess_kernel.
    if (!deterministic) scratch.dq_accum = compressible ? compressible.as<float>() : scratch.di + rows;
    if (tail.split_ctas > 0) {
        scratch.split = tail.split(int64_t{dkdv.grid}, scratch.di + rows + inline_accumulator_floats, split_floats);
        FM_CUDA_CHECK(cudaMemsetAsync(scratch.split.sums, 0, tail.scratch_floats(split_floats) * sizeof(float), stream));
    }
    const unsigned dkdv_grid = unsigned(tail.launched_grid(int64_t{dkdv.grid}));

    constexpr int kRowsPerPreprocessBlock = kPreprocessThreads / (kHeadDim / kChunkElements);
    backward_preprocess_kernel<Element, kHeadDim>
        <<<unsigned(ceil_div(int64_t(rows), int64_t{kRowsPerPreprocessBlock})), kPreprocessThreads, 0, stream>>>(
            kernel_problem, scratch);
    check_launch("flashmask backward: backward_preprocess_kernel");

    {
        // In the sorted key order (key_order.cuh) the kernel sees the permuted mask and loads and
        // stores its key block through the order; the dQ accumulator's rows are queries, unmoved.
        const KeyOrderedTiles tiles(p, key_order, dkdv.shape, DkDvT::kBlockN, stream);
        if (tiles.natural_runs()) {
            dkdv.kernel<<<dkdv_grid, DkDvT::kThreads, dkdv.smem_bytes, stream>>>(
                kernel_problem, tiles.natural_table(), tiles.natural_schedule(), scratch, KeyOrderView{},
                tiles.natural_condition());
            check_launch("flashmask backward: backward_dkdv_kernel");
        }
        if (tiles.sorted_runs()) {
            AttentionProblem sorted_problem = kernel_problem;
            sorted_problem.mask = tiles.sorted_mask();
            sorted_dkdv<<<dkdv_grid, DkDvT::kThreads, dkdv.smem_bytes, stream>>>(
                sorted_problem, tiles.sorted_table(), tiles.sorted_schedule(), scratch, tiles.sorted_order(),
                tiles.sorted_condition());
            check_launch("flashmask backward: backward_dkdv_kernel (sorted keys)");
        }
    }

    if (dq_launch) {
        const BlockSummaries summaries(p.mask, p.batch, p.q_heads, DqT::kBlockN, stream);
        const TileScheduler tiles(p.mask, dq_launch->shape, summaries.table(), stream);
        dq_launch->kernel<<<dq_launch->grid, DqT::kThreads, dq_launch->smem_bytes, stream>>>(
            kernel_problem, summaries.table(), tiles.schedule(), scratch);
        check_launch("flashmask backward: backward_dq_kernel");
    } else {
        const int64_t threads = dq_convert_threads<kHeadDim>(int64_t(rows));
        backward_dq_convert_kernel<Element, kHeadDim>
            <<<unsigned(ceil_div(threads, int64_t{kElementwiseThreads})), kElementwiseThreads, 0, stream>>>(
                kernel_problem, scratch);
        check_launch("flashmask backward: backward_dq_convert_kernel");
    }
    for (const KernelOperand* gradient : {&dq, &dk, &dv}) gradient->copy_out();
}

}  // namespace flashmask::cuda::sm80
