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

// Whether the sorted order can pay at all, from counts made before any sort: least_pairs is at
// most the pairs of the tiles the sorted order will compute (OrderTotals::least_pairs,
// tile_scheduler.cuh: in each key window, the keys each query block sees, packed into whole key
// blocks, or at least the visible pairs), natural_tile_pairs the natural order's computed tiles
// times block_m x block_n. When even that least count is above sorted_order_pays()'s fraction of
// the natural tiles, the sort, its summaries and tile order are not worth running, and the
// choice is the same without them. At 32K (seed 121) share_question's least count is 0.997 of its
// natural tiles, random eviction's 0.81 (bench/NOTES.md, session 19). In double: the products of
// 64-bit counts may not fit 64 bits, and the bound only has to be right away from equality.
FM_HOST_DEVICE bool sorted_order_may_pay(unsigned long long least_pairs, unsigned long long natural_tile_pairs) {
    return double(least_pairs) * double(kSortedWorkDenominator) <=
           double(natural_tile_pairs) * double(kSortedWorkNumerator);
}

// The device counters of one KeyOrder::Automatic choice (WorkComparison, key_order.cuh), added up
// by the tile-order kernels of both orders, in this order.
enum WorkCounter : int {
    kNaturalTiles,         // the natural order's computed tiles
    kSortedTiles,          // the sorted order's computed tiles
    kLeastSortedPairs,     // at most the pairs of the sorted order's tiles (OrderTotals::least_pairs)
    kNaturalTilePairs,     // kNaturalTiles x block_m x block_n
    kWorkCounters
};

FM_HOST_DEVICE bool sorted_order_chosen(const unsigned long long* counters) {
    return sorted_order_may_pay(counters[kLeastSortedPairs], counters[kNaturalTilePairs]) &&
           sorted_order_pays(counters[kNaturalTiles], counters[kSortedTiles]);
}

// Whether a launch queued for one of the two orders runs: unconditionally (`work` null), or when
// the device's comparison chose its order. Read once per CTA, before any other work.
struct LaunchCondition {
    const unsigned long long* work = nullptr;  // kWorkCounters counters (WorkComparison)
    bool if_sorted = false;

    FM_HOST_DEVICE bool holds() const { return work == nullptr || sorted_order_chosen(work) == if_sorted; }
    // For the kernels that build the sorted order (sort, summaries, tile order), which run before
    // its tiles are counted: whether it may still be chosen. Once the natural order's kernel has
    // counted, only sorted_order_may_pay() can rule it out.
    FM_HOST_DEVICE bool sorted_order_possible() const {
        return work == nullptr || sorted_order_may_pay(work[kLeastSortedPairs], work[kNaturalTilePairs]);
    }
};

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
