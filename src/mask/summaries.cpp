// Host block summaries, tile counts and visible pairs: all O(B * Hm * Nk) reads of the mask
// through column_intervals(), plus O(tiles) classification.
#include <algorithm>

#include "flashmask/mask.hpp"
#include "mask/mask_checks.hpp"

namespace flashmask {

using mask_detail::refuse;

namespace {

void check_block(int32_t block, const char* argument, const char* where) {
    if (block < 1) refuse(argument, std::string(where) + ": " + argument + " must be at least 1, got " + std::to_string(block));
}

void check_count(int32_t count, const char* argument, const char* where) {
    if (count < 0) refuse(argument, std::string(where) + ": " + argument + " must be >= 0, got " + std::to_string(count));
}

TileCounts& operator+=(TileCounts& a, const TileCounts& b) {
    a.skipped += b.skipped;
    a.partial += b.partial;
    a.full += b.full;
    return a;
}

TileCounts operator*(const TileCounts& a, int64_t times) { return {a.skipped * times, a.partial * times, a.full * times}; }

// The summaries of the key blocks of one (batch, mask head), in key order.
std::vector<BlockSummary> summaries_of(const MaskView& mask, int32_t batch, int32_t head, int32_t block_n) {
    std::vector<BlockSummary> summaries;
    // 64-bit so that stepping past a key count near 2^31 cannot overflow.
    for (int64_t first = 0; first < mask.nk; first += block_n) {
        const int64_t end = first + block_n < mask.nk ? first + block_n : mask.nk;
        summaries.push_back(summarize_columns(mask, batch, head, int32_t(first), int32_t(end)));
    }
    return summaries;
}

// Query heads that share a mask head see the same mask, so a per-(batch, query head) total is
// computed once per mask head, `per_mask_head(batch, mask_head)`, and counted once for each
// query head that mask head serves: O(B * Hm) calls, not O(B * Hq).
template <class Value, class Compute>
Value sum_over_query_heads(const MaskView& mask, int32_t batch, int32_t q_heads, Compute per_mask_head) {
    Value total{};
    const int64_t group = mask.query_heads_per_mask_head;
    for (int32_t b = 0; b < batch; ++b)
        for (int64_t first = 0; first < q_heads; first += group)
            total += per_mask_head(b, mask.mask_head(int32_t(first))) * std::min<int64_t>(group, q_heads - first);
    return total;
}

}  // namespace

std::vector<BlockSummary> block_summaries(const MaskView& mask, int32_t batch, int32_t mask_heads, int32_t block_n) {
    check_count(batch, "batch", "block_summaries");
    check_count(mask_heads, "mask_heads", "block_summaries");
    check_block(block_n, "block_n", "block_summaries");
    std::vector<BlockSummary> summaries;
    summaries.reserve(std::size_t(batch) * mask_heads * ceil_div(mask.nk, block_n));
    for (int32_t b = 0; b < batch; ++b)
        for (int32_t m = 0; m < mask_heads; ++m) {
            const std::vector<BlockSummary> head = summaries_of(mask, b, m, block_n);
            summaries.insert(summaries.end(), head.begin(), head.end());
        }
    return summaries;
}

TileCounts count_tiles(const MaskView& mask, int32_t batch, int32_t q_heads, int32_t block_m, int32_t block_n) {
    check_count(batch, "batch", "count_tiles");
    check_count(q_heads, "q_heads", "count_tiles");
    check_block(block_m, "block_m", "count_tiles");
    check_block(block_n, "block_n", "count_tiles");
    const int32_t q_blocks = ceil_div(mask.nq, block_m);
    return sum_over_query_heads<TileCounts>(mask, batch, q_heads, [&](int32_t b, int32_t m) {
        const std::vector<BlockSummary> summaries = summaries_of(mask, b, m, block_n);
        TileCounts counts;
        for (int32_t qb = 0; qb < q_blocks; ++qb) {
            const int32_t row_begin = qb * block_m;
            const int32_t row_end = mask.nq - row_begin < block_m ? mask.nq : row_begin + block_m;  // no overflow
            for (const BlockSummary& s : summaries) {
                switch (classify(s, row_begin, row_end)) {
                    case TileKind::Skipped: ++counts.skipped; break;
                    case TileKind::Partial: ++counts.partial; break;
                    case TileKind::Full: ++counts.full; break;
                }
            }
        }
        return counts;
    });
}

int64_t visible_pairs(const MaskView& mask, int32_t batch, int32_t q_heads) {
    check_count(batch, "batch", "visible_pairs");
    check_count(q_heads, "q_heads", "visible_pairs");
    return sum_over_query_heads<int64_t>(mask, batch, q_heads, [&](int32_t b, int32_t m) {
        int64_t pairs = 0;
        for (int32_t j = 0; j < mask.nk; ++j) pairs += column_intervals(mask, b, m, j).visible_rows(mask.nq);
        return pairs;
    });
}

}  // namespace flashmask
