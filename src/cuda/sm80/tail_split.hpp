// A grid's last, partial wave split over the SMs (TailSplit): the parts shared by host and
// device, with no CUDA runtime, so that the CPU tests check the very code the kernels and their
// host side run (tests/cpp/test_tile_order.cpp).
//
// Why. A grid of equal CTAs (the full mask: every key block meets every query block) that fills
// its last wave with only `tail` CTAs runs that wave for a whole CTA's time however few they are:
// at config (a) of SPEC §6 the dK/dV grid is 4096 CTAs on 132 SMs, 31 waves and 4 CTAs, whose 4
// take as long as a whole wave (3 % of the kernel); the forward's is 4096 CTAs on 264 slots, 15
// waves and 136 CTAs. Split into `parts` CTAs each, every part looping over its share of the
// CTA's tiles, they fill the last wave instead.
//   * dK/dV (plan_tail_split()): a part adds its dK and dV into a float32 sum of the CTA it
//     splits; the part that arrives last (an arrival count, one release per part) reads the sums
//     back and stores them as an unsplit CTA does (sum_split_parts(), backward_kernels.cuh).
//   * forward (plan_forward_tail_split()): parts split the key blocks; each stores its
//     unnormalised O, row maxima and row sums, and the last to arrive merges them in part order,
//     as one pass over all the keys would have (merge_split_parts(), forward_kernel.cuh).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>

#include "flashmask/problem.hpp"
#include "flashmask/tiles.hpp"

namespace flashmask::cuda::sm80 {

// Grid positions [first_cta, first_cta + split_ctas * parts) are the parts, `parts` per split
// CTA, which run the schedule positions [first_cta, first_cta + split_ctas): the grid's last.
// The dK/dV kernel's split is for its non-deterministic mode only (the parts' order of addition
// varies); the forward merges its parts in a fixed order, so its results do not depend on which
// part arrives last.
struct TailSplit {
    int32_t first_cta = std::numeric_limits<int32_t>::max();  // none below the grid's end unless set
    int32_t parts = 1;
    // The parts' float32 results: dK/dV [split CTA][dK, dV][kBlockN * D / kThreads values][kThreads],
    // zeroed; forward [split CTA][part][ForwardSplitLayout's float4 values][kThreads], written whole.
    float* sums = nullptr;
    int32_t* arrivals = nullptr;  // [split CTA], zeroed

    FM_HOST_DEVICE bool is_part(int32_t cta) const { return cta >= first_cta; }
    // For a part (is_part()): the split CTA it belongs to, counted from first_cta, and its part.
    FM_HOST_DEVICE int32_t split_index(int32_t cta) const { return (cta - first_cta) / parts; }
    FM_HOST_DEVICE int32_t part(int32_t cta) const { return (cta - first_cta) % parts; }
    // The schedule position a grid position runs.
    FM_HOST_DEVICE int32_t schedule_position(int32_t cta) const {
        return is_part(cta) ? first_cta + split_index(cta) : cta;
    }
};

#if defined(__CUDACC__)
// A part of split CTA `split_cta` whose results are written (every thread's stores or reductions
// issued): counts its arrival, one release per part (thread 0's fence after the barrier covers
// the whole CTA's writes). Returns true, in every thread, in the part that arrives last, after an
// acquire: the other parts' results may then be read (through L2: __ldcg). `last_part` is a
// shared-memory word. Called by every thread.
__device__ __forceinline__ bool arrive_last_part(const TailSplit& split, int32_t split_cta, int32_t& last_part) {
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence();
        last_part = atomicAdd(split.arrivals + split_cta, 1) == split.parts - 1;
    }
    __syncthreads();
    if (!last_part) return false;
    __threadfence();
    return true;
}
#endif

// Part `part` of `parts` of a CTA's `tiles` tiles (in the CTA's own order): [begin, end), within
// int32 as tiles is. Consecutive parts tile [0, tiles) exactly; none is empty when parts <= tiles.
struct PartTiles {
    int32_t begin, end;
};
FM_HOST_DEVICE PartTiles part_tiles(int32_t tiles, int32_t part, int32_t parts) {
    return {int32_t(int64_t(tiles) * part / parts), int32_t(int64_t(tiles) * (part + 1) / parts)};
}

// How many of the grid's last CTAs to split, and into how many parts each: none unless the last
// wave holds at most 1 / kTailSplitMaxFill of the slots; then parts fill the wave (split_ctas x
// parts <= slots), at most one per tile.
struct TailPlan {
    int32_t split_ctas = 0, parts = 1;

    // The grid of `grid` CTAs as launched: each split CTA as its parts.
    int64_t launched_grid(int64_t grid) const { return grid - split_ctas + int64_t(split_ctas) * parts; }
    // Floats of scratch the split takes: its parts' `sum_floats`, then one arrival count per split CTA.
    std::size_t scratch_floats(std::size_t sum_floats) const { return sum_floats + std::size_t(split_ctas); }
    // The kernel's view of this plan on `grid` CTAs, its scratch_floats(sum_floats) floats at
    // `scratch`; no split (TailSplit{}) without split CTAs.
    TailSplit split(int64_t grid, float* scratch, std::size_t sum_floats) const {
        static_assert(sizeof(int32_t) == sizeof(float), "the arrival counts take float slots of the scratch");
        if (split_ctas == 0) return {};
        return {int32_t(grid - split_ctas), parts, scratch, reinterpret_cast<int32_t*>(scratch + sum_floats)};
    }
};
inline constexpr int32_t kTailSplitMaxFill = 4;

// `grid` CTAs of `tiles_per_cta` tiles each on `slots` resident CTAs. Only for grids of equal CTAs
// (the caller's test), so that the tail is known on the host and is the grid's last CTAs.
inline TailPlan plan_tail_split(int64_t grid, int32_t slots, int64_t tiles_per_cta) {
    if (slots < 2 || grid <= 0) return {};
    const int32_t tail = int32_t(grid % slots);
    if (tail == 0 || int64_t(tail) * kTailSplitMaxFill > slots) return {};
    const int32_t parts = int32_t(std::min<int64_t>(slots / tail, tiles_per_cta));
    // The parts' grid must still fit grid dimension x.
    const TailPlan plan{tail, parts};
    if (parts < 2 || plan.launched_grid(grid) > std::numeric_limits<int32_t>::max()) return {};
    return plan;
}

// The forward's split (plan_forward_tail_split()): parts of the key blocks, at most
// kForwardTailMaxParts of them, since every part stores (and the last reads back) a whole
// float32 O of its CTA, 64 KB at D = 128 against the 4 MB of K and V the CTA reads at 8K; and
// only where the split takes at least kForwardTailMinSaving of a CTA's time off the last wave.
inline constexpr int32_t kForwardTailMaxParts = 4;
inline constexpr double kForwardTailMinSaving = 0.25;

// The time the last wave takes, in CTA times, when its `tail` CTAs (of `slots`) run as `parts`
// parts each of 1 / parts of the work: the rounds of parts over the slots.
inline double tail_wave_time(int32_t tail, int32_t slots, int32_t parts) {
    const int64_t rounds = (int64_t(tail) * parts + slots - 1) / slots;
    return double(rounds) / parts;
}

// `grid` CTAs of `key_blocks` key blocks each on `slots` resident CTAs (only for grids of equal
// CTAs, the caller's test). With 136 of 264 slots (SPEC §6 at both sizes, D = 128) whole CTAs
// keep the wave a CTA's time; in thirds, 408 parts run in two rounds of a third: 2/3 of it.
inline TailPlan plan_forward_tail_split(int64_t grid, int32_t slots, int32_t key_blocks) {
    if (slots < 2 || grid <= 0 || key_blocks < 2) return {};
    const int32_t tail = int32_t(grid % slots);
    if (tail == 0) return {};
    int32_t best_parts = 1;
    double best_time = 1.0;
    for (int32_t parts = 2; parts <= std::min(kForwardTailMaxParts, key_blocks); ++parts) {
        const double time = tail_wave_time(tail, slots, parts);
        if (time < best_time) best_time = time, best_parts = parts;  // ties (exact: 1/2 = 2/4) keep fewer parts
    }
    const TailPlan plan{tail, best_parts};
    if (best_parts < 2 || best_time > 1.0 - kForwardTailMinSaving) return {};
    if (plan.launched_grid(grid) > std::numeric_limits<int32_t>::max()) return {};
    return plan;
}

// Whether every CTA of `p`'s forward and dK/dV grids has the same work: the full mask (no index
// tensor, not causal), whose query blocks all meet every key block (a ragged last block's CTA has
// fewer rows or keys, not fewer tiles). With an index tensor the work per CTA lives on the device,
// and the heaviest-first order already ends the grid with its lightest CTAs (plain causal
// attention likewise, by its tie order).
inline bool ctas_have_equal_work(const AttentionProblem& p) {
    return p.mask.layout == MaskLayout::None && !p.mask.causal;
}

}  // namespace flashmask::cuda::sm80
