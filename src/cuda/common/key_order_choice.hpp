// Which key order a CUDA call uses (key_order.cuh): the rule, without the CUDA runtime, so that
// the CPU tests check the very code the CUDA path runs (as tile_order.hpp does for the tile order).
#pragma once

#include <cstdint>

#include "flashmask/config.hpp"
#include "flashmask/problem.hpp"
#include "flashmask/types.hpp"

namespace flashmask::cuda {

// KeyOrder::Automatic sorts from this many keys on: the sort, the second summaries and tile order
// and the launches of the order not chosen cost a call's forward of the order of 0.1 ms
// (bench/NOTES.md, session 7: share_question at 32K, 1.76 -> 1.88-1.94 ms; ~20 us predicted),
// which at 8K would be ~20 % of a sparse mask's forward (share_question: 0.57 ms).
constexpr int32_t kAutomaticKeyOrderMinKeys = 16384;

// The sorted order is chosen when its computed tiles are at most this fraction of the natural
// order's: below that the gather of K and V (forward) and the second summaries do not pay.
constexpr unsigned long long kSortedWorkNumerator = 9, kSortedWorkDenominator = 10;

FM_HOST_DEVICE bool sorted_order_pays(unsigned long long natural_tiles, unsigned long long sorted_tiles) {
    return sorted_tiles * kSortedWorkDenominator <= natural_tiles * kSortedWorkNumerator;
}

// Which order one call uses.
enum class KeyOrderUse { Natural, Sorted, Chosen /* on the device, by WorkComparison */ };

inline int32_t mask_heads_of(const AttentionProblem& p) { return p.q_heads / p.mask.query_heads_per_mask_head; }

inline KeyOrderUse key_order_use(const AttentionProblem& p, KeyOrder option) {
    const int32_t mask_heads = mask_heads_of(p);
    const bool possible = p.mask.layout != MaskLayout::None && p.nk > 0 && p.nq > 0 &&
                          (mask_heads == 1 || mask_heads == p.kv_heads);
    if (!possible || option == KeyOrder::Natural) return KeyOrderUse::Natural;
    if (option == KeyOrder::Sorted) return KeyOrderUse::Sorted;
    return p.nk >= kAutomaticKeyOrderMinKeys ? KeyOrderUse::Chosen : KeyOrderUse::Natural;
}

}  // namespace flashmask::cuda
