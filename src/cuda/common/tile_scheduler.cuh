// The heaviest-first CTA order of one call on the device (the order itself, and why, is
// tile_order.hpp). A kernel launched with batch * heads * blocks CTAs along one axis takes a
// TileSchedule and maps its blockIdx.x through TileSchedule::at().
//
// Cost: one launch of order_batches * order_heads CTAs (one per mask head, or per KV head on the
// key-block axis; one in all without an index tensor), each doing blocks x other_blocks classify()
// calls on 32-byte summaries it reads from L2 (O(B * Hm * query blocks * key blocks) in all, Hm ->
// Hq for the key-block axis) plus a counting sort of its blocks. No launch at all without an index
// tensor: full and plain causal attention keep the tie order, which is already sorted.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "cuda/common/check.hpp"
#include "cuda/common/tile_order.hpp"
#include "cuda/common/workspace.cuh"

namespace flashmask::cuda {

// For every (order batch, order head) of `shape`: writes each block's work into `work` and the
// blocks heaviest first into `order`, both [order batches, order heads, blocks] in device memory.
// `summaries` is the call's table at the key-block granularity `shape` was made for. Runs the
// sort for any mask layout (the host class below skips it when no index tensor makes it moot).
void compute_tile_order(const TileOrderShape& shape, const SummaryTable& summaries, int32_t* order, int32_t* work,
                        cudaStream_t stream);

// The order of one call, built on `stream` into scratch memory owned by this object (stream
// ordered and legal inside CUDA graph capture, as BlockSummaries). Keep it alive until the kernel
// that reads schedule() has been queued.
class TileScheduler {
public:
    // heads of the CTAs: q_heads (QueryBlocks) or kv_heads (KeyBlocks). block_m: the kernel's
    // query rows per block; the key-block granularity is the summaries' (table.block_n), which
    // must be the kernel's too.
    TileScheduler(const MaskView& mask, int32_t batch, int32_t q_heads, int32_t kv_heads, TileAxis axis,
                  int32_t block_m, const SummaryTable& summaries, cudaStream_t stream)
        : shape_(make_tile_order_shape(mask, batch, q_heads, kv_heads, axis, block_m, summaries.block_n)),
          sorted_(mask.layout != MaskLayout::None && shape_.ctas() > 0),
          scratch_(sorted_ ? 2 * sizeof(int32_t) * std::size_t(shape_.order_pairs()) * shape_.blocks : 0, stream) {
        if (sorted_) compute_tile_order(shape_, summaries, order(), work(), stream);
        schedule_ = make_tile_schedule(shape_, sorted_ ? order() : nullptr);
    }

    const TileSchedule& schedule() const { return schedule_; }
    const TileOrderShape& shape() const { return shape_; }
    // [order batches, order heads, blocks] device arrays; null when no sort ran (no index tensor).
    int32_t* order() const { return sorted_ ? scratch_.as<int32_t>() : nullptr; }
    int32_t* work() const { return sorted_ ? scratch_.as<int32_t>() + shape_.order_pairs() * shape_.blocks : nullptr; }

private:
    TileOrderShape shape_;
    bool sorted_;
    DeviceScratch scratch_;
    TileSchedule schedule_;
};

}  // namespace flashmask::cuda
