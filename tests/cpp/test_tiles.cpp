// The tile classification (SPEC §4) against the dense mask, exhaustively: every tile of every
// catalogue mask and of hostile random masks, both C values of each causal setting, sizes that
// are not multiples of the block, Nq != Nk. Plus count_tiles() and visible_pairs().
#include <cstdio>
#include <cstring>
#include <map>
#include <type_traits>

#include "test_cpu_common.hpp"
#include "test_mask_util.hpp"
#include "test_util.hpp"

namespace flashmask {
namespace {

using testing::IndexTensor;
using testing::spec_dense;
using testing::test_rng;
using testing::VisibleCounter;

const int32_t kSizes[] = {1, 17, 100, 257};
const int32_t kBlocks[] = {16, 32, 64};

// Per-tile tallies: how tiles were classified, and how many Partial tiles were in fact uniform.
struct Tally {
    int64_t skipped = 0, partial = 0, full = 0;
    int64_t partial_all_masked = 0, partial_all_visible = 0;
    int64_t inexact() const { return partial_all_masked + partial_all_visible; }
};

// Classifies every tile of one (batch, mask head) and checks it against the dense truth.
// Soundness is asserted (fatally: callers stop on HasFatalFailure()); exactness is tallied.
void check_every_tile(const MaskView& view, int32_t b, int32_t m, const std::vector<uint8_t>& truth, int32_t block_m,
                      int32_t block_n, const std::string& what, Tally& tally) {
    const VisibleCounter counter(truth, view.nq, view.nk);
    const std::vector<BlockSummary> summaries = block_summaries(view, b + 1, m + 1, block_n);
    const int32_t kv_blocks = ceil_div(view.nk, block_n);
    for (int32_t row = 0; row < view.nq; row += block_m) {
        const int32_t row_end = std::min(view.nq, row + block_m);
        for (int32_t kb = 0; kb < kv_blocks; ++kb) {
            const int32_t col = kb * block_n, col_end = std::min(view.nk, col + block_n);
            // The summaries are laid out [B, Hm, kv_blocks]; ours is the last (b, m) entry.
            const BlockSummary& s = summaries[(std::size_t(b) * (m + 1) + m) * kv_blocks + kb];
            const int64_t visible = counter.count(row, row_end, col, col_end);
            const int64_t area = int64_t(row_end - row) * (col_end - col);
            const TileKind kind = classify(s, row, row_end);
            if (kind == TileKind::Skipped) {
                ++tally.skipped;
                ASSERT_EQ(visible, 0) << what << ": tile rows [" << row << ", " << row_end << ") keys [" << col << ", "
                                      << col_end << ") classified Skipped but has visible elements";
            } else if (kind == TileKind::Full) {
                ++tally.full;
                ASSERT_EQ(visible, area) << what << ": tile rows [" << row << ", " << row_end << ") keys [" << col
                                         << ", " << col_end << ") classified Full but has masked elements";
            } else {
                ++tally.partial;
                tally.partial_all_masked += visible == 0;
                tally.partial_all_visible += visible == area;
            }
        }
    }
}

Tally check_every_tile(const MaskView& view, int32_t b, int32_t m, const std::vector<uint8_t>& truth, int32_t block_m,
                       int32_t block_n, const std::string& what) {
    Tally tally;
    check_every_tile(view, b, m, truth, block_m, block_n, what, tally);
    return tally;
}

Tally check_every_tile_of(const MaskSpec& m, int32_t block_m, int32_t block_n, const std::string& what) {
    return check_every_tile(m.mask_view(), 0, 0, spec_dense(m), block_m, block_n, what);
}

std::string sizes_string(int64_t nq, int64_t nk, int32_t block_m, int32_t block_n) {
    return " Nq=" + std::to_string(nq) + " Nk=" + std::to_string(nk) + " blocks " + std::to_string(block_m) + "x" +
           std::to_string(block_n);
}

TEST(TileClassification, SoundOnEveryCatalogueMaskInBothLayouts) {
    auto rng = test_rng();
    std::map<std::string, Tally> totals;
    for (int32_t n : kSizes) {
        const uint64_t seed = rng();
        for (const std::string& name : catalogue_names()) {
            const MaskSpec mask = catalogue_mask(name, n, seed);
            // Both C values of the mask's causal setting (full and causal: none and the widest).
            std::vector<MaskSpec> forms = {mask, testing::widen(mask)};
            if (!mask.has_indices()) {
                const std::vector<uint8_t> dense = to_dense(mask);
                forms = {mask, from_dense(dense.data(), n, n, mask.causal, mask.causal ? 1 : 2),
                         from_dense(dense.data(), n, n, mask.causal, mask.causal ? 2 : 4)};
            }
            for (const MaskSpec& form : forms)
                for (int32_t block_m : kBlocks)
                    for (int32_t block_n : kBlocks) {
                        const Tally t = check_every_tile_of(form, block_m, block_n,
                                                            name + " C=" + std::to_string(form.slots) +
                                                                sizes_string(n, n, block_m, block_n) + " seed " +
                                                                std::to_string(seed));
                        if (::testing::Test::HasFatalFailure()) return;
                        Tally& total = totals[name];
                        total.skipped += t.skipped;
                        total.partial += t.partial;
                        total.full += t.full;
                        total.partial_all_masked += t.partial_all_masked;
                        total.partial_all_visible += t.partial_all_visible;
                    }
        }
    }
    // Not an assertion: where the min/max classification is conservative, and by how much. What
    // remains is inherent to summarising two intervals by their bounds: a tile masked partly by
    // one interval and partly by the other (e.g. QK-sparse on the diagonal of a dropped span,
    // where causal hides [0, j) and the span hides [j, end)) is called Partial.
    for (const auto& [name, t] : totals)
        std::printf("  %-22s skipped %6lld partial %6lld full %6lld | partial but uniform: %lld masked, %lld visible\n",
                    name.c_str(), (long long)t.skipped, (long long)t.partial, (long long)t.full,
                    (long long)t.partial_all_masked, (long long)t.partial_all_visible);
}

// The catalogue masks of Nq != Nk that the attention tests run (the bottom-right window of the
// square mask, catalogue_test_mask()), each mask head its own draw, in both C values of their
// causal setting, with the CPU path's blocks and larger ones.
TEST(TileClassification, SoundOnCatalogueMasksOfUnequalLengths) {
    auto rng = test_rng();
    const int32_t extents[][2] = {{17, 100}, {100, 17}, {150, 257}, {257, 150}};
    constexpr int32_t kMaskHeads = 2;
    for (const auto& [nq, nk] : extents)
        for (const std::string& name : catalogue_names()) {
            const testing::AttentionSizes sizes{1, nq, nk, kMaskHeads, kMaskHeads, 64, 64};
            testing::TestMask mask = testing::catalogue_test_mask(name, sizes, kMaskHeads, rng);
            for (int32_t m = 0; m < kMaskHeads; ++m) {
                // One mask head as a MaskSpec, so that it can be widened to the larger C.
                MaskSpec spec = MaskSpec::zeros(mask.causal, nq, nk, mask.indices ? int32_t(mask.indices->slots) : 0);
                for (int32_t j = 0; j < nk; ++j)
                    for (int32_t slot = 0; slot < spec.slots; ++slot)
                        spec.indices[std::size_t(j) * spec.slots + slot] = mask.indices->at(0, m, j, slot);
                for (const MaskSpec& form : {spec, testing::widen(spec)})
                    for (int32_t block_m : {16, 64, 128})
                        for (int32_t block_n : {32, 64, 128}) {
                            check_every_tile_of(form, block_m, block_n,
                                                name + " C=" + std::to_string(form.slots) + " mask head " +
                                                    std::to_string(m) + sizes_string(nq, nk, block_m, block_n));
                            if (::testing::Test::HasFatalFailure()) return;
                        }
            }
        }
}

TEST(TileClassification, SoundOnHostileMasks) {
    auto rng = test_rng();
    for (const auto& [causal, slots] : testing::kIndexLayouts)
        for (int32_t nq : kSizes)
            for (int32_t nk : kSizes) {
                IndexTensor t(1, 2, nk, slots, rng);
                testing::fill_hostile(t, nq, rng);
                const MaskView view = make_mask_view(t.view(), causal, nq, nk, 2);
                for (int32_t m = 0; m < 2; ++m) {
                    const std::vector<uint8_t> truth = spec_dense(&t, 0, m, causal, nq, nk);
                    for (int32_t block_m : kBlocks)
                        for (int32_t block_n : kBlocks) {
                            check_every_tile(view, 0, m, truth, block_m, block_n,
                                             std::string("hostile causal=") + (causal ? "1" : "0") +
                                                 " C=" + std::to_string(slots) + sizes_string(nq, nk, block_m, block_n));
                            if (::testing::Test::HasFatalFailure()) return;
                        }
                }
            }
}

TEST(TileClassification, SoundWithoutIndicesAndForWindows) {
    // Plain causal, full, and window_size masks, where Nq != Nk moves the diagonal.
    auto rng = test_rng();
    std::uniform_int_distribution<int64_t> side(-1, 80);
    for (int32_t nq : kSizes)
        for (int32_t nk : kSizes)
            for (bool causal : {true, false}) {
                const MaskView plain = make_mask_view(std::nullopt, causal, nq, nk, 1);
                const MaskSpec window = window_mask(nq, nk, side(rng), side(rng), causal);
                for (int32_t block_m : kBlocks)
                    for (int32_t block_n : kBlocks) {
                        const std::string sizes = sizes_string(nq, nk, block_m, block_n);
                        const Tally p = check_every_tile(plain, 0, 0, spec_dense(nullptr, 0, 0, causal, nq, nk), block_m,
                                                         block_n, std::string(causal ? "causal" : "full") + sizes);
                        if (::testing::Test::HasFatalFailure()) return;
                        EXPECT_EQ(p.inexact(), 0) << sizes;
                        check_every_tile_of(window, block_m, block_n, "window" + sizes);
                        if (::testing::Test::HasFatalFailure()) return;
                        check_every_tile_of(testing::widen(window), block_m, block_n, "widened window" + sizes);
                        if (::testing::Test::HasFatalFailure()) return;
                    }
            }
}

TEST(TileClassification, ExactForSingleIntervalMasks) {
    // Causal, sliding window and causal document: each column masks [0, j) and one suffix, and
    // the visible rows of neighbouring columns overlap, so a tile is uniform only when the
    // min/max summaries prove it: no Partial tile may be uniform.
    auto rng = test_rng();
    for (int32_t n : kSizes)
        for (int trial = 0; trial < 3; ++trial) {
            const uint64_t seed = rng();
            for (const char* name : {"causal", "sliding_window", "causal_document"}) {
                const MaskSpec mask = catalogue_mask(name, n, seed);
                for (const MaskSpec& form : {mask, testing::widen(mask)})
                    for (int32_t block_m : kBlocks)
                        for (int32_t block_n : kBlocks) {
                            const std::string what = std::string(name) + " C=" + std::to_string(form.slots) +
                                                     sizes_string(n, n, block_m, block_n) + " seed " + std::to_string(seed);
                            const Tally t = check_every_tile_of(form, block_m, block_n, what);
                            if (::testing::Test::HasFatalFailure()) return;
                            EXPECT_EQ(t.inexact(), 0) << what;
                        }
            }
        }
    // And with random window sizes and document lengths, not only the catalogue's.
    std::uniform_int_distribution<int64_t> window(1, 300), length(1, 90);
    for (int trial = 0; trial < 20; ++trial) {
        std::vector<int64_t> lengths;
        int64_t total = 0;
        while (total < 257) total += lengths.emplace_back(length(rng));
        const int64_t w = window(rng);
        for (const MaskSpec& mask : {sliding_window_mask(257, w), causal_document_mask(lengths)})
            for (int32_t block : kBlocks) {
                const Tally t = check_every_tile_of(mask, block, block, "random single-interval");
                if (::testing::Test::HasFatalFailure()) return;
                EXPECT_EQ(t.inexact(), 0) << "window " << w;
            }
    }
}

TEST(TileClassification, EdgeCases) {
    BlockSummary none = BlockSummary::empty();
    EXPECT_EQ(classify(none, 0, 16), TileKind::Skipped);  // a block without columns
    const MaskSpec m = causal_document_mask({5, 5});
    const BlockSummary s = summarize_columns(m.mask_view(), 0, 0, 0, 10);
    EXPECT_EQ(classify(s, 4, 4), TileKind::Skipped);  // no rows
    // Folding columns one by one and merging the summaries of two halves agree.
    BlockSummary left = summarize_columns(m.mask_view(), 0, 0, 0, 3), right = summarize_columns(m.mask_view(), 0, 0, 3, 10);
    left.merge(right);
    EXPECT_EQ(std::memcmp(&left, &s, sizeof s), 0);
    EXPECT_EQ(ceil_div(INT32_MAX, 128), INT32_MAX / 128 + 1);
    EXPECT_EQ(ceil_div(256, 128), 2);
    EXPECT_EQ(ceil_div(0, 128), 0);
    // The int64_t instance, for element counts past 2^31 (the backward's grid sizes).
    constexpr int64_t kPastInt32 = int64_t{INT32_MAX} * 3;
    static_assert(std::is_same_v<decltype(ceil_div(kPastInt32, int64_t{256})), int64_t>);
    EXPECT_EQ(ceil_div(kPastInt32, int64_t{256}), kPastInt32 / 256 + 1);
    EXPECT_EQ(ceil_div(INT64_MAX, int64_t{128}), INT64_MAX / 128 + 1);
    EXPECT_EQ(ceil_div(int64_t{1} << 40, int64_t{256}), int64_t{1} << 32);
}

// -------------------------------------------------------------------------------------------
// count_tiles() and visible_pairs()
// -------------------------------------------------------------------------------------------

TEST(TileCounts, AgreeWithPerTileClassification) {
    auto rng = test_rng();
    constexpr int32_t kBatch = 2, kQueryHeads = 4;
    for (const auto& [causal, slots] : testing::kMaskForms)
        for (int32_t mask_heads : {1, 2, 4})
            for (int32_t nq : {17, 100})
                for (int32_t nk : {1, 100}) {
                    std::optional<IndexTensor> t;
                    if (slots) {
                        t.emplace(kBatch, mask_heads, nk, slots, rng);
                        testing::fill_valid(*t, nq, rng);
                    }
                    const MaskView view = make_mask_view(t ? std::optional(t->view()) : std::nullopt, causal, nq, nk,
                                                         kQueryHeads);
                    const int32_t heads = t ? mask_heads : 1;
                    for (int32_t block_m : {16, 64})
                        for (int32_t block_n : {32, 64}) {
                            TileCounts expected;
                            int64_t pairs = 0;
                            const std::vector<BlockSummary> summaries = block_summaries(view, kBatch, heads, block_n);
                            const int32_t kv_blocks = ceil_div(nk, block_n);
                            ASSERT_EQ(summaries.size(), std::size_t(kBatch * heads * kv_blocks));
                            for (int32_t b = 0; b < kBatch; ++b)
                                for (int32_t h = 0; h < kQueryHeads; ++h) {
                                    const int32_t m = view.mask_head(h);
                                    for (int32_t row = 0; row < nq; row += block_m)
                                        for (int32_t kb = 0; kb < kv_blocks; ++kb) {
                                            const BlockSummary& s = summaries[(std::size_t(b) * heads + m) * kv_blocks + kb];
                                            switch (classify(s, row, std::min(nq, row + block_m))) {
                                                case TileKind::Skipped: ++expected.skipped; break;
                                                case TileKind::Partial: ++expected.partial; break;
                                                case TileKind::Full: ++expected.full; break;
                                            }
                                        }
                                    const std::vector<uint8_t> dense = spec_dense(t ? &*t : nullptr, b, m, causal, nq, nk);
                                    for (uint8_t v : dense) pairs += v;
                                }
                            const TileCounts counts = count_tiles(view, kBatch, kQueryHeads, block_m, block_n);
                            EXPECT_EQ(counts.skipped, expected.skipped);
                            EXPECT_EQ(counts.partial, expected.partial);
                            EXPECT_EQ(counts.full, expected.full);
                            EXPECT_EQ(counts.total(), int64_t(kBatch) * kQueryHeads * ceil_div(nq, block_m) * kv_blocks);
                            EXPECT_EQ(visible_pairs(view, kBatch, kQueryHeads), pairs);
                        }
                }
}

TEST(TileCounts, VisiblePairsOfHostileMasksMatchTheDenseCount) {
    auto rng = test_rng();
    for (const auto& [causal, slots] : testing::kIndexLayouts)
        for (int32_t nq : kSizes)
            for (int32_t nk : kSizes) {
                IndexTensor t(2, 1, nk, slots, rng);
                testing::fill_hostile(t, nq, rng);
                const MaskView view = make_mask_view(t.view(), causal, nq, nk, 3);
                int64_t pairs = 0;
                for (int32_t b = 0; b < 2; ++b)
                    for (uint8_t v : spec_dense(&t, b, 0, causal, nq, nk)) pairs += v;
                EXPECT_EQ(visible_pairs(view, 2, 3), 3 * pairs);
            }
}

TEST(TileCounts, RefuseBadBlocks) {
    const MaskSpec m = causal_mask(10);
    EXPECT_THROW(count_tiles(m.mask_view(), 1, 1, 0, 16), Error);
    EXPECT_THROW(count_tiles(m.mask_view(), 1, 1, 16, -1), Error);
    EXPECT_THROW(block_summaries(m.mask_view(), 1, 1, 0), Error);
    EXPECT_THROW(visible_pairs(m.mask_view(), -1, 1), Error);
}

}  // namespace
}  // namespace flashmask
