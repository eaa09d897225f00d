// The heart of FlashMask, header-only so that the CPU path, both CUDA paths and the tests call
// the very same code:
//   * MaskView        - a plain, device-copyable view of startend_row_indices + causal;
//   * column_intervals - every supported layout read as two canonical masked row intervals;
//   * BlockSummary    - per key block minima/maxima of those intervals;
//   * classify()      - a (query block x key block) tile as Skipped, Partial or Full.
//
// Canonical form. Whatever the layout (SPEC §2), column j masks the rows in
//     lower = [lower_start, lower_end)   and   upper = [upper_start, upper_end),
// with every bound clamped to [0, Nq]. `causal` is folded into `upper` (rows above the
// bottom-right aligned diagonal), which is free because causal layouts (C = 1, 2) carry no
// upper interval of their own. Empty intervals are canonicalised to [Nq, Nq) (lower) and
// [0, 0) (upper), and a column whose union covers every row to lower = upper = [0, Nq): with
// those conventions plain minima and maxima classify more tiles as skipped or full.
#pragma once

#include <cstdint>
#include <type_traits>

#include "flashmask/config.hpp"

namespace flashmask {

// startend_row_indices has C slots per column. Their meaning depends on C and causal.
enum class MaskLayout : int32_t {
    None,                 // no index tensor: full attention, or plain causal
    CausalLower,          // causal, C = 1: LTS                 -> [LTS, Nq)
    CausalLowerBounded,   // causal, C = 2: LTS, LTE            -> [LTS, LTE)
    LowerUpper,           // not causal, C = 2: LTS, UTE        -> [LTS, Nq) and [0, UTE)
    LowerUpperBounded,    // not causal, C = 4: LTS, LTE, UTS, UTE
};

// The layout for (causal, C), or None when C is not allowed with that causal setting.
FM_HOST_DEVICE MaskLayout mask_layout_for(bool causal, int64_t slots) {
    if (causal) return slots == 1 ? MaskLayout::CausalLower : slots == 2 ? MaskLayout::CausalLowerBounded : MaskLayout::None;
    return slots == 2 ? MaskLayout::LowerUpper : slots == 4 ? MaskLayout::LowerUpperBounded : MaskLayout::None;
}

// A plain view of the mask of one attention call, valid on host and device (pointer permitting).
// Arguments are validated once in the API layer; code reading a MaskView only clamps values.
struct MaskView {
    const int32_t* indices = nullptr;  // [B, Hm, Nk, C] with the strides below; null for None
    int64_t stride_batch = 0, stride_head = 0, stride_column = 0, stride_slot = 0;
    MaskLayout layout = MaskLayout::None;
    bool causal = false;
    int32_t nq = 0, nk = 0;
    int32_t query_heads_per_mask_head = 1;  // Hq / Hm: mask head m serves query heads [m*g, (m+1)*g)

    FM_HOST_DEVICE int32_t mask_head(int32_t query_head) const { return query_head / query_heads_per_mask_head; }
    // Rows above the diagonal are hidden from key j when causal: row i sees j iff j <= i + (Nk - Nq).
    FM_HOST_DEVICE int64_t diagonal_offset() const { return int64_t(nk) - int64_t(nq); }
};

struct ColumnIntervals {
    int32_t lower_start, lower_end, upper_start, upper_end;

    FM_HOST_DEVICE bool masks(int32_t row) const {
        return (lower_start <= row && row < lower_end) || (upper_start <= row && row < upper_end);
    }
    // Rows of [0, nq) that see the column. Canonical intervals (column_intervals()) are clamped
    // to [0, nq) and not inverted, so each length is its end minus its start.
    FM_HOST_DEVICE int64_t visible_rows(int32_t nq) const {
        const int64_t overlap_begin = lower_start > upper_start ? lower_start : upper_start;
        const int64_t overlap_end = lower_end < upper_end ? lower_end : upper_end;
        const int64_t overlap = overlap_end > overlap_begin ? overlap_end - overlap_begin : 0;
        return int64_t(nq) - (int64_t(lower_end) - lower_start + int64_t(upper_end) - upper_start - overlap);
    }
};

FM_HOST_DEVICE int32_t clamp_row(int64_t value, int32_t nq) {
    return value < 0 ? 0 : value > nq ? nq : int32_t(value);
}

// The bounds of one column as its index tensor holds them (the layout's slots, unclamped), with
// the defaults of the slots the layout lacks: LTS, LTE, UTS, UTE.
struct ColumnSlots {
    int32_t lower_start, lower_end, upper_start, upper_end;
};

// Reads column `column` (0 <= column < Nk) of batch b and mask head m: the only step of
// column_intervals() that touches memory, apart so that a kernel can issue the loads early and
// canonicalise later (canonical_intervals()), when their latency has passed.
FM_HOST_DEVICE ColumnSlots load_column_slots(const MaskView& mask, int32_t batch, int32_t head, int32_t column) {
    const int32_t nq = mask.nq;
    ColumnSlots raw{nq, nq, 0, 0};
    if (mask.layout != MaskLayout::None) {
        const int32_t* col = mask.indices + batch * mask.stride_batch + head * mask.stride_head + column * mask.stride_column;
        const int64_t s = mask.stride_slot;
        switch (mask.layout) {
            case MaskLayout::CausalLower:        raw.lower_start = col[0]; break;
            case MaskLayout::CausalLowerBounded: raw.lower_start = col[0]; raw.lower_end = col[s]; break;
            case MaskLayout::LowerUpper:         raw.lower_start = col[0]; raw.upper_end = col[s]; break;
            case MaskLayout::LowerUpperBounded:
                raw.lower_start = col[0]; raw.lower_end = col[s]; raw.upper_start = col[2 * s]; raw.upper_end = col[3 * s];
                break;
            case MaskLayout::None: break;
        }
    }
    return raw;
}

// The canonical intervals of column `column` from its slots (load_column_slots()).
FM_HOST_DEVICE ColumnIntervals canonical_intervals(const MaskView& mask, const ColumnSlots& raw, int32_t column) {
    const int32_t nq = mask.nq;
    int64_t lts = raw.lower_start, lte = raw.lower_end, uts = raw.upper_start, ute = raw.upper_end;
    if (mask.causal) {
        uts = 0;
        ute = int64_t(column) - mask.diagonal_offset();
    }
    ColumnIntervals c{clamp_row(lts, nq), clamp_row(lte, nq), clamp_row(uts, nq), clamp_row(ute, nq)};
    if (c.lower_end <= c.lower_start) { c.lower_start = nq; c.lower_end = nq; }
    if (c.upper_end <= c.upper_start) { c.upper_start = 0; c.upper_end = 0; }
    // Does the union cover [0, Nq)? Either interval alone, or two that touch and span it.
    const bool lower_all = c.lower_start == 0 && c.lower_end == nq;
    const bool upper_all = c.upper_start == 0 && c.upper_end == nq;
    const bool joined = (c.upper_start == 0 && c.upper_end >= c.lower_start && c.lower_end == nq && c.upper_end > 0) ||
                        (c.lower_start == 0 && c.lower_end >= c.upper_start && c.upper_end == nq && c.lower_end > 0);
    if (nq > 0 && (lower_all || upper_all || joined)) {
        c.lower_start = 0; c.lower_end = nq; c.upper_start = 0; c.upper_end = nq;
    }
    return c;
}

// Canonical intervals of column `column` (0 <= column < Nk) for batch b and mask head m.
FM_HOST_DEVICE ColumnIntervals column_intervals(const MaskView& mask, int32_t batch, int32_t head, int32_t column) {
    return canonical_intervals(mask, load_column_slots(mask, batch, head, column), column);
}

// Minima and maxima of the canonical bounds over the columns of one key block, except that
// empty intervals are left out of max_lower_end and min_upper_start (the two bounds that only
// decide Full): their canonical position, [Nq, Nq) or [0, 0), says nothing about where masking
// happens, yet would stretch those bounds across every tile of the block and turn Full tiles
// Partial (e.g. QK-sparse and causal blockwise, whose empty columns sit beside bounded ones).
// Either way classify() is sound; a block with no such interval holds the fold identity.
struct BlockSummary {
    int32_t min_lower_start, max_lower_start, min_lower_end, max_lower_end;
    int32_t min_upper_start, max_upper_start, min_upper_end, max_upper_end;

    // The identity for fold(): an empty block (no columns) classifies as Skipped.
    FM_HOST_DEVICE static BlockSummary empty() {
        constexpr int32_t lo = INT32_MIN, hi = INT32_MAX;
        return {hi, lo, hi, lo, hi, lo, hi, lo};
    }
    FM_HOST_DEVICE void fold(const ColumnIntervals& c) {
        const int32_t lower_end_if_any = c.lower_end > c.lower_start ? c.lower_end : INT32_MIN;
        const int32_t upper_start_if_any = c.upper_end > c.upper_start ? c.upper_start : INT32_MAX;
        min_lower_start = c.lower_start < min_lower_start ? c.lower_start : min_lower_start;
        max_lower_start = c.lower_start > max_lower_start ? c.lower_start : max_lower_start;
        min_lower_end = c.lower_end < min_lower_end ? c.lower_end : min_lower_end;
        max_lower_end = lower_end_if_any > max_lower_end ? lower_end_if_any : max_lower_end;
        min_upper_start = upper_start_if_any < min_upper_start ? upper_start_if_any : min_upper_start;
        max_upper_start = c.upper_start > max_upper_start ? c.upper_start : max_upper_start;
        min_upper_end = c.upper_end < min_upper_end ? c.upper_end : min_upper_end;
        max_upper_end = c.upper_end > max_upper_end ? c.upper_end : max_upper_end;
    }
    FM_HOST_DEVICE void merge(const BlockSummary& o) {
        min_lower_start = o.min_lower_start < min_lower_start ? o.min_lower_start : min_lower_start;
        max_lower_start = o.max_lower_start > max_lower_start ? o.max_lower_start : max_lower_start;
        min_lower_end = o.min_lower_end < min_lower_end ? o.min_lower_end : min_lower_end;
        max_lower_end = o.max_lower_end > max_lower_end ? o.max_lower_end : max_lower_end;
        min_upper_start = o.min_upper_start < min_upper_start ? o.min_upper_start : min_upper_start;
        max_upper_start = o.max_upper_start > max_upper_start ? o.max_upper_start : max_upper_start;
        min_upper_end = o.min_upper_end < min_upper_end ? o.min_upper_end : min_upper_end;
        max_upper_end = o.max_upper_end > max_upper_end ? o.max_upper_end : max_upper_end;
    }
};

// Summary of columns [first_column, end_column) of one (batch, mask head).
FM_HOST_DEVICE BlockSummary summarize_columns(const MaskView& mask, int32_t batch, int32_t head,
                                              int32_t first_column, int32_t end_column) {
    BlockSummary s = BlockSummary::empty();
    for (int32_t j = first_column; j < end_column; ++j) s.fold(column_intervals(mask, batch, head, j));
    return s;
}

enum class TileKind : int32_t { Skipped = 0, Partial = 1, Full = 2 };

// Classifies rows [row_begin, row_end) against the key block summarised by `s`.
// Sound by construction: Skipped only if every element is masked, Full only if none is.
// Tiles whose masked set is covered only by a mixture of intervals are called Partial,
// which costs time, never correctness.
FM_HOST_DEVICE TileKind classify(const BlockSummary& s, int32_t row_begin, int32_t row_end) {
    if (row_end <= row_begin) return TileKind::Skipped;
    if (s.min_lower_start > s.max_lower_start) return TileKind::Skipped;  // no columns
    const bool lower_covers = s.max_lower_start <= row_begin && s.min_lower_end >= row_end;
    const bool upper_covers = s.max_upper_start <= row_begin && s.min_upper_end >= row_end;
    if (lower_covers || upper_covers) return TileKind::Skipped;
    const bool lower_misses = s.min_lower_start >= row_end || s.max_lower_end <= row_begin;
    const bool upper_misses = s.min_upper_start >= row_end || s.max_upper_end <= row_begin;
    return lower_misses && upper_misses ? TileKind::Full : TileKind::Partial;
}

// min(begin + count, end) for begin, end >= 0: the end of the range of `count` rows (keys, ...)
// from `begin`, clipped to `end`. Without forming begin + count unless it is <= end: that sum
// passes INT32_MAX for begin near 2^31 (the last block of Nq = 2^31 - 1 rows) and would wrap.
// end - begin cannot overflow for operands >= 0, and stays in int32 (no 64-bit compare in the
// kernels, whose register budgets are tight).
FM_HOST_DEVICE constexpr int32_t clipped_end(int32_t begin, int32_t count, int32_t end) {
    return end - begin < count ? end : begin + count;
}

// ceil(a / b) for a >= 0, b > 0, in the operands' one integer type (int32_t for block counts,
// int64_t for element counts): mixed types do not deduce, so a caller never has a divisor or a
// count narrowed silently. Written without a + b - 1, which overflows for a near the type's maximum.
template <typename Integer>
FM_HOST_DEVICE constexpr Integer ceil_div(Integer a, Integer b) {
    static_assert(std::is_integral_v<Integer>, "ceil_div counts in integers");
    return a / b + (a % b != 0);
}

}  // namespace flashmask
