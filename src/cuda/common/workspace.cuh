// Per-call device scratch memory and the block-summary table that every CUDA kernel reads.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "cuda/common/block_summaries.cuh"
#include "cuda/common/check.hpp"
#include "flashmask/tiles.hpp"

namespace flashmask::cuda {

// Set (to anything but "0") in the environment before the first CUDA call, every DeviceScratch
// is filled with 0xFF bytes (float NaN, int32 -1) when allocated: scratch that a kernel reads
// before anything wrote it then shows in the results, instead of passing on memory that happened
// to be zero. The GPU tests set it (tests/gpu); a memset per allocation, for debugging only. Read
// once per process, so that calls do not look the environment up each time.
inline constexpr const char* kPoisonScratchVariable = "FLASHMASK_POISON_SCRATCH";
inline bool poison_scratch() {
    static const bool poison = [] {
        const char* value = std::getenv(kPoisonScratchVariable);
        return value != nullptr && std::strcmp(value, "0") != 0;
    }();
    return poison;
}
inline constexpr int kPoisonByte = 0xFF;

// Stream-ordered scratch (cudaMallocAsync / cudaFreeAsync): no device-wide synchronisation, and
// legal inside CUDA graph capture. Freed on the same stream when it goes out of scope, so work
// already queued on the stream finishes with it first.
class DeviceScratch {
public:
    DeviceScratch(std::size_t bytes, cudaStream_t stream) : stream_(stream) {
        if (bytes == 0) return;
        FM_CUDA_CHECK(cudaMallocAsync(&data_, bytes, stream));
        if (poison_scratch()) FM_CUDA_CHECK(cudaMemsetAsync(data_, kPoisonByte, bytes, stream));
    }
    ~DeviceScratch() {
        if (data_ != nullptr) (void)cudaFreeAsync(data_, stream_);  // a destructor cannot throw
    }
    DeviceScratch(const DeviceScratch&) = delete;
    DeviceScratch& operator=(const DeviceScratch&) = delete;

    template <typename T> T* as() const { return static_cast<T*>(data_); }

private:
    void* data_ = nullptr;
    cudaStream_t stream_;
};

// Where kernels find the summary of (batch, query head, key block). With no index tensor the
// mask is the same for every batch and head, so one row of summaries serves all (zero strides).
struct SummaryTable {
    const BlockSummary* summaries = nullptr;
    int64_t stride_batch = 0, stride_mask_head = 0;
    int32_t block_n = 0, blocks = 0;

    __device__ __forceinline__ const BlockSummary& at(const MaskView& mask, int32_t batch, int32_t query_head,
                                                       int32_t kv_block) const {
        return summaries[batch * stride_batch + mask.mask_head(query_head) * stride_mask_head + kv_block];
    }
};

// A summary read through the read-only data cache: kernels that read the same summary once per
// tile keep it in L1 instead of waiting on L2 each time. The table is never written while a
// kernel reads it, and its entries are 32 bytes at a 256-byte aligned allocation (two 16-byte loads).
// (Device code only: the host-compiled bindings include this header too.)
#if defined(__CUDACC__)
static_assert(sizeof(BlockSummary) == 2 * sizeof(int4), "a summary is two 16-byte loads");
__device__ __forceinline__ BlockSummary read_only_summary(const BlockSummary* summary) {
    const int4 low = __ldg(reinterpret_cast<const int4*>(summary));
    const int4 high = __ldg(reinterpret_cast<const int4*>(summary) + 1);
    return {low.x, low.y, low.z, low.w, high.x, high.y, high.z, high.w};
}
#endif

// The summaries of one call at key-block granularity block_n, computed on `stream` into scratch
// memory owned by this object.
class BlockSummaries {
public:
    // fill: SummaryFill::Kernel computes them now (a launch on `stream`); SummaryFill::ByTileOrder
    // only allocates the table, which the order kernel of the same call fills (writable(),
    // SummariesToCompute in tile_scheduler.cuh) before any kernel reads it. condition: see
    // compute_block_summaries().
    enum class SummaryFill { Kernel, ByTileOrder };

    BlockSummaries(const MaskView& mask, int32_t batch, int32_t q_heads, int32_t block_n, cudaStream_t stream,
                   SummaryFill fill = SummaryFill::Kernel, const LaunchCondition& condition = {})
        : batches_(mask.layout == MaskLayout::None ? 1 : batch),
          mask_heads_(mask.layout == MaskLayout::None ? 1 : q_heads / mask.query_heads_per_mask_head),
          blocks_(ceil_div(mask.nk, block_n)),
          scratch_(sizeof(BlockSummary) * std::size_t(batches_) * mask_heads_ * blocks_, stream) {
        if (fill == SummaryFill::Kernel)
            compute_block_summaries(mask, batches_, mask_heads_, block_n, scratch_.as<BlockSummary>(), stream,
                                    condition);
        table_.summaries = scratch_.as<BlockSummary>();
        table_.stride_mask_head = mask.layout == MaskLayout::None ? 0 : blocks_;
        table_.stride_batch = mask.layout == MaskLayout::None ? 0 : int64_t(mask_heads_) * blocks_;
        table_.block_n = block_n;
        table_.blocks = blocks_;
    }
    const SummaryTable& table() const { return table_; }
    // Where an order kernel writes the summaries of a SummaryFill::ByTileOrder table.
    BlockSummary* writable() const { return scratch_.as<BlockSummary>(); }

private:
    int32_t batches_, mask_heads_, blocks_;
    DeviceScratch scratch_;
    SummaryTable table_;
};

}  // namespace flashmask::cuda
