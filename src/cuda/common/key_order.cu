// The key-order kernels (key_order.cuh): the window sort and the gather of K / V.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>

#include "cuda/common/device.hpp"
#include "cuda/common/key_order.cuh"
#include "cuda/common/warp.hpp"

namespace flashmask::cuda {
namespace {

// The sort's layout: warp w holds the window's items [w * kWarpItems, (w + 1) * kWarpItems) in
// registers, lane l items l and kWarpSize + l of them (item[0], item[1]). A bitonic step of stride
// kWarpSize is then a compare inside the thread and one below it a shuffle with lane ^ stride:
// only strides of kWarpItems and more go through shared memory, one barrier each.
constexpr int kItemsPerLane = 2;
constexpr int kWarpItems = kItemsPerLane * kWarpSize;
constexpr int kSortThreads = kKeyOrderWindow / kItemsPerLane;
static_assert(kKeyOrderWindow % kWarpItems == 0, "a window is whole warps' runs of items");
static_assert(kItemsPerLane == 2, "the step of stride kWarpSize compares a thread's item[0] with its item[1]");
constexpr int kGatherThreads = 256;
// The gather's grid: one full wave (every SM filled to 2048 threads), grid-stride beyond. Under
// KeyOrder::Automatic the gather is queued even when the natural order runs, and then every CTA
// only reads the comparison and returns: a grid of one wave keeps that to one round of CTAs per
// SM, where a CTA per 256 chunks would be 62 rounds at 32K.
constexpr int kGatherCtasPerSm = 2048 / kGatherThreads;
constexpr int kGatherChunkBytes = 16;  // one int4 per thread and step

// The bitonic compare-exchange of the items at `index` and `index ^ stride`, seen from `index`:
// its thread keeps its own side of the pair, its partner computes the other side alike. Inside
// a run of `size` the pairs ascend when the run's bit is 0. Both sides agree on the exchange:
// before() is a total order (the key is unique), and the only items that compare equal, past-end
// positions clamped to one key, are identical.
__device__ __forceinline__ KeyOrderItem keep_side(const KeyOrderItem& mine, const KeyOrderItem& other, int index,
                                                  int stride, int size) {
    const bool keeps_lower = ((index & stride) == 0) == ((index & size) == 0);
    return other.before(mine) == keeps_lower ? other : mine;
}

__device__ __forceinline__ KeyOrderItem shuffle_xor(const KeyOrderItem& item, int lane_mask) {
    return {__shfl_xor_sync(kFullWarpMask, item.lower_start, lane_mask),
            __shfl_xor_sync(kFullWarpMask, item.lower_end, lane_mask),
            __shfl_xor_sync(kFullWarpMask, item.upper_end, lane_mask),
            __shfl_xor_sync(kFullWarpMask, item.upper_start, lane_mask),
            __shfl_xor_sync(kFullWarpMask, item.key, lane_mask)};
}

// One CTA per (batch, mask head, window), 1-D grid in that order, by the rule of
// flashmask/key_order.hpp. Positions past Nk sort last and are not written.
//
// A bitonic sort in the register layout above: the same network, compare-exchanges and
// directions as a plain one, so the same order. Of its 55 steps the 45 with a stride below
// kWarpItems run in registers (kWarpSize: in the thread; smaller: __shfl_xor_sync), the other 10
// exchange through shared memory, one __syncthreads each. There each thread keeps its own side
// of every pair (keep_side()): a step writes the thread's items and reads their partners. The
// steps alternate between two buffers: with one, a warp could overwrite items that a slower warp
// has yet to read as partners, and each step would need a second barrier. It was one pair per
// thread in shared memory with a barrier after each of the 55 steps: 24 us for 32 CTAs at 32K on
// an H100, latency-bound by the barriers and the shared-memory round trips.
__global__ void __launch_bounds__(kSortThreads)
sort_keys_kernel(const MaskView mask, const int32_t mask_heads, const int32_t windows, int32_t* order, int32_t* bounds,
                 const LaunchCondition condition) {
    if (!condition.sorted_order_possible()) return;
    // 40 KB. Items are 5 words, odd: a warp's 32 consecutive items fall on 32 distinct banks.
    __shared__ KeyOrderItem exchanged[2][kKeyOrderWindow];
    const int32_t window = int32_t(blockIdx.x % unsigned(windows));
    const int32_t pair = int32_t(blockIdx.x / unsigned(windows));
    const int32_t head = pair % mask_heads, batch = pair / mask_heads;
    const int64_t first = int64_t(window) * kKeyOrderWindow;
    const int thread = int(threadIdx.x), warp = thread / kWarpSize, lane = thread % kWarpSize;
    int index[kItemsPerLane];  // in the window, ascending with r
    KeyOrderItem item[kItemsPerLane];

#pragma unroll
    for (int r = 0; r < kItemsPerLane; ++r) {
        index[r] = warp * kWarpItems + r * kWarpSize + lane;
        const int64_t key = first + index[r];
        item[r] = key < mask.nk ? KeyOrderItem::of(column_intervals(mask, batch, head, int32_t(key)), int32_t(key))
                                : KeyOrderItem::past_end(int32_t(min(key, int64_t(INT32_MAX))));
    }

    int buffer = 0;
#pragma unroll
    for (int size = 2; size <= kKeyOrderWindow; size *= 2) {
#pragma unroll
        for (int stride = size / 2; stride >= kWarpItems; stride /= 2) {
#pragma unroll
            for (int r = 0; r < kItemsPerLane; ++r) exchanged[buffer][index[r]] = item[r];
            __syncthreads();
#pragma unroll
            for (int r = 0; r < kItemsPerLane; ++r) {
                const KeyOrderItem partner = exchanged[buffer][index[r] ^ stride];
                item[r] = keep_side(item[r], partner, index[r], stride, size);
            }
            buffer ^= 1;
        }
        if (size >= kWarpItems) {  // stride kWarpSize: item[0] and item[1] are the pair
            const bool ascending = (index[0] & size) == 0;
            if (item[1].before(item[0]) == ascending) {
                const KeyOrderItem was_first = item[0];
                item[0] = item[1];
                item[1] = was_first;
            }
        }
#pragma unroll
        for (int stride = min(size / 2, kWarpSize / 2); stride > 0; stride /= 2) {
#pragma unroll
            for (int r = 0; r < kItemsPerLane; ++r)
                item[r] = keep_side(item[r], shuffle_xor(item[r], stride), index[r], stride, size);
        }
    }

    const int64_t pair_first = int64_t(pair) * mask.nk;
#pragma unroll
    for (int r = 0; r < kItemsPerLane; ++r) {
        const int64_t position = first + index[r];
        if (position >= mask.nk) break;  // positions ascend with r
        order[pair_first + position] = item[r].key;
        item[r].write_slots(bounds + (pair_first + position) * kSortedMaskSlots);
    }
}

// 16-byte chunks of rows [batch, Nk, heads]: chunk c of destination row (b, j, h) is chunk c of
// source row (b, order(b, mask head of h)[j], h).
__global__ void gather_keys_kernel(const Operand source, const Operand destination, const int32_t element_bytes,
                                   const int32_t chunks_per_row, const int32_t nk, const int32_t heads,
                                   const int32_t q_heads_per_kv_head, const int32_t query_heads_per_mask_head,
                                   const KeyOrderView order, const LaunchCondition condition, const int64_t chunks) {
    if (!condition.holds()) return;
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < chunks; i += int64_t(gridDim.x) * blockDim.x) {
        const int64_t row = i / chunks_per_row;
        const int32_t chunk = int32_t(i % chunks_per_row);
        const int32_t head = int32_t(row % heads);
        const int32_t position = int32_t(row / heads % nk);
        const int32_t batch = int32_t(row / heads / nk);
        const int32_t mask_head = head * q_heads_per_kv_head / query_heads_per_mask_head;
        const int32_t key = order.keys(batch, mask_head)[position];
        const char* from = static_cast<const char*>(source.data) +
                           (batch * source.stride[0] + key * source.stride[1] + head * source.stride[2]) * element_bytes;
        char* to = static_cast<char*>(destination.data) +
                   (batch * destination.stride[0] + position * destination.stride[1] + head * destination.stride[2]) *
                       element_bytes;
        reinterpret_cast<int4*>(to)[chunk] = reinterpret_cast<const int4*>(from)[chunk];
    }
}

}  // namespace

SortedKeys::SortedKeys(const AttentionProblem& p, const LaunchCondition& condition, cudaStream_t stream)
    : columns_(int64_t(p.batch) * mask_heads_of(p) * p.nk),
      scratch_(sizeof(int32_t) * std::size_t(columns_) * (1 + kSortedMaskSlots), stream) {
    if (p.mask.layout == MaskLayout::None)
        throw Error(ErrorCode::InvalidArgument, "startend_row_indices",
                    "flashmask key order: the mask has no index tensor; expected one to sort the keys by");
    const int32_t mask_heads = mask_heads_of(p);
    int32_t* const order = scratch_.as<int32_t>();
    int32_t* const bounds = order + columns_;

    mask_ = sorted_mask_view(p.mask, bounds, mask_heads);
    order_ = {order, int64_t(mask_heads) * p.nk, int64_t(p.nk)};
    if (columns_ == 0) return;

    const int32_t windows = ceil_div(p.nk, kKeyOrderWindow);
    const int64_t ctas = int64_t(p.batch) * mask_heads * windows;
    if (ctas > std::numeric_limits<int32_t>::max())
        throw Error(ErrorCode::Unsupported, "startend_row_indices",
                    "flashmask key order: " + std::to_string(ctas) +
                        " key windows (batch x mask heads x windows of " + std::to_string(kKeyOrderWindow) +
                        " keys), more than the grid's 2^31 - 1");
    sort_keys_kernel<<<unsigned(ctas), kSortThreads, 0, stream>>>(p.mask, mask_heads, windows, order, bounds,
                                                                   condition);
    check_launch("flashmask sort_keys_kernel");
}

void gather_keys(const Operand& source, const Operand& destination, int32_t element_bytes, int32_t row_elements,
                 const AttentionProblem& p, const KeyOrderView& order, const LaunchCondition& condition,
                 cudaStream_t stream) {
    const int32_t chunks_per_row = row_elements * element_bytes / kGatherChunkBytes;
    const int64_t chunks = int64_t(p.batch) * p.nk * p.kv_heads * chunks_per_row;
    if (chunks == 0) return;
    const unsigned ctas = unsigned(std::min<int64_t>(ceil_div(chunks, int64_t{kGatherThreads}),
                                                     int64_t(current_device_sms()) * kGatherCtasPerSm));
    gather_keys_kernel<<<ctas, kGatherThreads, 0, stream>>>(source, destination, element_bytes, chunks_per_row, p.nk,
                                                             p.kv_heads, p.q_heads / p.kv_heads,
                                                             p.mask.query_heads_per_mask_head, order, condition, chunks);
    check_launch("flashmask gather_keys_kernel");
}

}  // namespace flashmask::cuda
