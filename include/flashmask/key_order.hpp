// The sorted key order (KeyOrder, types.hpp): its rule, shared by the CUDA path's sort
// (src/cuda/common/key_order.cu) and its host twin, sorted_key_order() (mask.hpp), which the
// tests, tile_counts with a sorted order and bench/work_efficiency.py use.
//
// The keys of each (batch, mask head) are sorted inside windows of kKeyOrderWindow consecutive
// keys by their canonical intervals (column_intervals(), tiles.hpp), compared as the tuple
// (lower start, lower end, upper end, upper start, key). Lower interval first: random
// eviction's evicted keys share lower starts; then keys in order of their upper end keep a
// causal diagonal's blocks as they were. The key breaks ties, so the order is total: every
// sort gives the same one. The sorted problem's mask is the permuted intervals as a non-causal
// C = 4 index tensor (LTS, LTE, UTS, UTE per key), the causal diagonal inside each column's
// upper interval.
#pragma once

#include <cstdint>

#include "flashmask/tiles.hpp"

namespace flashmask {

// A window is one CTA's sort on the GPU (in registers, and 40 KB of shared memory), a whole
// number of every kernel's key blocks (64 and 128). Measured on random eviction (bench/NOTES.md,
// session 6): windows of 1024 and 2048 equal at 32K, 1024 better at 8K (0.84 against 0.78 of the
// full mask's rate).
constexpr int32_t kKeyOrderWindow = 1024;

// The index tensor of a sorted problem has this many slots per key (non-causal C = 4).
constexpr int32_t kSortedMaskSlots = 4;

// One key in the sort.
struct KeyOrderItem {
    int32_t lower_start, lower_end, upper_end, upper_start, key;

    FM_HOST_DEVICE static KeyOrderItem of(const ColumnIntervals& c, int32_t key) {
        return {c.lower_start, c.lower_end, c.upper_end, c.upper_start, key};
    }
    // A position past Nk in the last window: sorts after every real key.
    FM_HOST_DEVICE static KeyOrderItem past_end(int32_t key) {
        constexpr int32_t kPast = INT32_MAX;
        return {kPast, kPast, kPast, kPast, key};
    }
    FM_HOST_DEVICE bool before(const KeyOrderItem& o) const {
        if (lower_start != o.lower_start) return lower_start < o.lower_start;
        if (lower_end != o.lower_end) return lower_end < o.lower_end;
        if (upper_end != o.upper_end) return upper_end < o.upper_end;
        if (upper_start != o.upper_start) return upper_start < o.upper_start;
        return key < o.key;
    }
    // The key's C = 4 slots in the sorted problem's index tensor: LTS, LTE, UTS, UTE.
    FM_HOST_DEVICE void write_slots(int32_t* slots) const {
        slots[0] = lower_start;
        slots[1] = lower_end;
        slots[2] = upper_start;
        slots[3] = upper_end;
    }
};

// The sorted problem's mask: `indices` [batch, mask_heads, Nk, kSortedMaskSlots] (contiguous)
// read as a non-causal C = 4 mask, with `original`'s Nq, Nk and query heads per mask head.
FM_HOST_DEVICE MaskView sorted_mask_view(const MaskView& original, const int32_t* indices, int32_t mask_heads) {
    MaskView view = original;
    view.indices = indices;
    view.layout = MaskLayout::LowerUpperBounded;
    view.causal = false;  // the diagonal is in each column's upper interval
    view.stride_slot = 1;
    view.stride_column = kSortedMaskSlots;
    view.stride_head = int64_t(original.nk) * kSortedMaskSlots;
    view.stride_batch = int64_t(mask_heads) * view.stride_head;
    return view;
}

}  // namespace flashmask
