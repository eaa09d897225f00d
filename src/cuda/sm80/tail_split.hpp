// The dK/dV grid's last, partial wave split over the SMs (TailSplit): the parts shared by host and
// device, with no CUDA runtime, so that the CPU tests check the very code the kernel and its host
// side run (tests/cpp/test_tile_order.cpp).
//
// Why. A grid of equal CTAs (the full mask: every key block meets every query block) that fills
// its last wave with only `tail` CTAs runs that wave alone: at config (a) of SPEC §6, 4096 CTAs on
// 132 SMs are 31 waves and 4 CTAs, and those 4 take as long as a whole wave, 3 % of the kernel.
// Split into `parts` CTAs each, every part looping over its share of the tiles, they fill the
// wave instead. A part adds its dK and dV into a float32 sum of the CTA it splits; the part that
// arrives last (an arrival count, one release per part) reads the sums back and stores them as an
// unsplit CTA does (sum_split_parts(), backward_kernels.cuh).
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>

#include "flashmask/problem.hpp"
#include "flashmask/tiles.hpp"

namespace flashmask::cuda::sm80 {

// Grid positions [first_cta, first_cta + split_ctas * parts) are the parts, `parts` per split
// CTA, which run the schedule positions [first_cta, first_cta + split_ctas): the grid's last.
// Non-deterministic mode only (the parts' order of addition varies).
struct TailSplit {
    int32_t first_cta = std::numeric_limits<int32_t>::max();  // none below the grid's end unless set
    int32_t parts = 1;
    float* sums = nullptr;        // [split CTA][dK, dV][kBlockN * D / kThreads values][kThreads], zeroed
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
    if (parts < 2 || grid - tail + int64_t(tail) * parts > std::numeric_limits<int32_t>::max()) return {};
    return {tail, parts};
}

// Whether every dK/dV CTA of `p` has the same work: the full mask (no index tensor, not causal),
// whose key blocks all meet every query block. With an index tensor the work per CTA lives on
// the device, and the heaviest-first order already ends the grid with its lightest CTAs (plain
// causal attention likewise, by its tie order).
inline bool dkdv_ctas_equal(const AttentionProblem& p) { return p.mask.layout == MaskLayout::None && !p.mask.causal; }

}  // namespace flashmask::cuda::sm80
