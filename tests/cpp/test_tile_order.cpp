// The heaviest-first CTA order's host twin and CTA mapping (src/cuda/common/tile_order.hpp; the
// device kernel is checked against this twin in tests/gpu/test_gpu_tile_scheduler.cu):
//   * the query blocks a key block skips, found in O(1) as runs, are exactly classify()'s skips;
//   * per-block work adds up to count_tiles()'s non-skipped tiles (an independent count);
//   * every schedule is a bijection: a heavy prefix of R ranks rank-major over all (batch, head)
//     pairs, then section by section in rank-major order, heaviest first with ties in the
//     kernels' earlier order; for any R in [0, blocks];
//   * R itself: every heavy block in the prefix, no longer than that, for slot counts from 1
//     (nothing heavy) to 2^30 (nearly everything); and at the benchmark's sizes (8K and 32K) it
//     is long for causal_blockwise and 0 for the masks whose blocks are all within a section's
//     slot time (the values are printed);
//   * without an index tensor (full, plain causal) the tie order is already sorted, which is what
//     lets the device skip the sort there;
//   * work values beyond the histogram are bucketed, and shapes that do not fit int32 are refused.
#include <algorithm>
#include <iomanip>
#include <iostream>
#include <limits>
#include <string>
#include <vector>

#include "test_cpu_common.hpp"
#include "test_tile_order_util.hpp"
#include "cuda/sm80/tail_split.hpp"

namespace flashmask {
namespace {

using cuda::TileAxis;
using cuda::TileOrderShape;
using testing::AttentionSizes;
using testing::Heads;
using testing::TestMask;

// (batch, query heads, KV heads, mask heads): one and several sections, B * H not a multiple of
// kMaxHeadsPerSection (the sections of make_tile_order_shape()), GQA, mask heads 1, Hk and Hq.
constexpr Heads kHeads[] = {{1, 1, 1, 1}, {2, 6, 2, 6}, {3, 6, 2, 2}, {2, 5, 5, 1}, {1, 16, 2, 16}, {3, 3, 1, 3}};

// (query rows, keys) per tile: the forward's and deterministic dQ kernel's 128 x 64, the dK/dV
// kernel's 64 x 128, and small tiles for many blocks.
struct TileShape {
    int32_t block_m, block_n;
};
constexpr TileShape kTileShapes[] = {{128, 64}, {64, 128}, {16, 16}, {16, 32}};

// CTA slots (blocks running at once): 1 (no block is heavy), an H100 at 2 CTAs per SM, and so many
// that nearly every block with work is.
constexpr int32_t kH100Slots = 132 * 2;
constexpr int32_t kCtaSlots[] = {1, 7, kH100Slots, 1 << 30};
// The dK/dV kernel's (163 KB of shared memory at D = 128: one CTA per SM).
constexpr int32_t kH100DkDvSlots = 132;

// Section sizes at the benchmark's shapes and around them (bench/NOTES.md, sessions 10-11, 21):
// along query blocks the K / V a section's pairs stream stays within kSectionL2Bytes, along key
// blocks (dK / dV) their Q, dO and dQ accumulator within kKeyBlockSectionBytes; 1 to
// kMaxHeadsPerSection pairs.
TEST(TileOrder, SectionsKeepTheirStreamInL2) {
    constexpr int32_t kMax = cuda::kMaxHeadsPerSection;
    struct Case {
        AttentionSizes sizes;
        TileAxis axis;
        int32_t expected;
        const char* why;
    };
    const Case cases[] = {
        {{2, 8192, 8192, 32, 32, 128, 128}, TileAxis::QueryBlocks, kMax, "8K forward: K + V 4 MiB a head, 8 fit"},
        {{1, 32768, 32768, 16, 16, 128, 128}, TileAxis::QueryBlocks, 2, "32K forward: 16 MiB a head"},
        {{1, 16384, 16384, 16, 16, 128, 128}, TileAxis::QueryBlocks, 4, "16K forward: 8 MiB a head"},
        {{1, 32768, 32768, 32, 4, 128, 128}, TileAxis::QueryBlocks, kMax, "32K GQA 8: one K/V for 8 heads"},
        {{1, 32768, 32768, 32, 16, 128, 128}, TileAxis::QueryBlocks, 4, "32K GQA 2: 8 MiB a query head"},
        {{2, 8192, 8192, 32, 32, 128, 128}, TileAxis::KeyBlocks, kMax, "8K dK/dV: 8 MiB a head, 8 fit"},
        {{1, 32768, 32768, 16, 16, 128, 128}, TileAxis::KeyBlocks, 2, "32K dK/dV: 32 MiB a head"},
        {{2, 8192, 8192, 32, 4, 128, 128}, TileAxis::KeyBlocks, 5, "8K dK/dV GQA 8: 64 MiB a KV head, but two waves"},
        {{1, 1000, 1000, 4, 4, 64, 64}, TileAxis::KeyBlocks, kMax, "small dK/dV: the cap"},
        {{1, 262144, 262144, 4, 4, 256, 256}, TileAxis::QueryBlocks, 1, "past the budget: still one pair"},
        {{1, 17, 17, 3, 3, 64, 64}, TileAxis::QueryBlocks, kMax, "tiny: the cap"},
        {{1, 0, 0, 3, 3, 64, 64}, TileAxis::QueryBlocks, kMax, "nothing streamed: the cap"},
    };
    for (const Case& c : cases)
        EXPECT_EQ(testing::planned_heads_per_section(c.sizes, c.axis), c.expected)
            << c.why << " (" << c.sizes.describe() << ")";
    EXPECT_EQ(cuda::heads_per_section(cuda::kSectionL2Bytes), 1);
    EXPECT_EQ(cuda::heads_per_section(cuda::kSectionL2Bytes + 1), 1);
    EXPECT_EQ(cuda::heads_per_section(cuda::kSectionL2Bytes / 3), 3);
    EXPECT_EQ(cuda::heads_per_section(1), kMax);
    EXPECT_EQ(cuda::heads_per_section(cuda::kKeyBlockSectionBytes / 2, cuda::kKeyBlockSectionBytes), 2);
}

std::string describe(const std::string& mask, const AttentionSizes& s, int32_t mask_heads, TileAxis axis,
                     const TileShape& tile) {
    return mask + " " + s.describe() + " Hm=" + std::to_string(mask_heads) +
           (axis == TileAxis::QueryBlocks ? " query" : " key") + " blocks " + std::to_string(tile.block_m) + "x" +
           std::to_string(tile.block_n);
}

// The host twin's order for one mask, both axes, every tile shape: work against count_tiles(),
// then R and the schedule's properties for every slot count; without an index tensor also the
// null-order (tie order, R = 0) schedule.
void check_mask(TestMask& mask, const AttentionSizes& s, int32_t mask_heads) {
    const MaskView view = mask.mask_view(s);
    for (const TileShape& tile : kTileShapes)
        for (TileAxis axis : {TileAxis::QueryBlocks, TileAxis::KeyBlocks}) {
            const std::string what = describe(mask.name, s, mask_heads, axis, tile);
            TileOrderShape shape = cuda::make_tile_order_shape(view, s.batch, s.q_heads, s.kv_heads, axis, tile.block_m,
                                                               tile.block_n, kH100Slots);
            const std::vector<BlockSummary> summaries =
                block_summaries(view, shape.order_batches, shape.summary_heads, tile.block_n);
            const std::vector<int32_t> work = cuda::host_block_work(shape, summaries);
            const TileCounts counts = count_tiles(view, s.batch, s.q_heads, tile.block_m, tile.block_n);
            ASSERT_EQ(testing::total_work(shape, work), counts.partial + counts.full) << what;

            const std::vector<int32_t> order = cuda::host_tile_order(shape, work);
            for (int32_t slots : kCtaSlots) {
                shape.cta_slots = slots;  // the order does not depend on it, R does
                const std::string with_slots = what + " slots " + std::to_string(slots);
                const int32_t heavy_ranks = cuda::host_heavy_prefix_ranks(shape, work, order);
                testing::check_heavy_prefix(shape, work, order, heavy_ranks, with_slots);
                if (slots == 1) EXPECT_EQ(heavy_ranks, 0) << with_slots << ": no block outlasts a whole section";
                testing::check_schedule(shape, cuda::make_tile_schedule(shape, order.data(), &heavy_ranks), work,
                                        with_slots);
                if (::testing::Test::HasFatalFailure()) return;
            }
            if (view.layout == MaskLayout::None) {
                // The device's shortcut: no sort, the tie order, must be the sorted order itself.
                const cuda::TileSchedule unsorted = cuda::make_tile_schedule(shape, nullptr, nullptr);
                testing::check_schedule(shape, unsorted, work, what + " (tie order)");
                if (::testing::Test::HasFatalFailure()) return;
                for (int32_t position = 0; position < shape.blocks; ++position)
                    ASSERT_EQ(order[std::size_t(position)], cuda::tie_order_block(axis, shape.blocks, position))
                        << what << ": sorting moved block " << order[std::size_t(position)];
            }
        }
}

TEST(TileOrder, CatalogueMasks) {
    auto rng = testing::test_rng();
    const AttentionSizes sizes[] = {{0, 1, 1, 0, 0, 8, 8},     {0, 17, 17, 0, 0, 8, 8},   {0, 100, 257, 0, 0, 8, 8},
                                    {0, 257, 100, 0, 0, 8, 8}, {0, 1000, 1000, 0, 0, 8, 8}};
    for (const std::string& name : catalogue_names())
        for (const AttentionSizes& base : sizes)
            for (const Heads& h : kHeads) {
                const AttentionSizes s = h.applied_to(base);
                TestMask mask = testing::catalogue_test_mask(name, s, h.mask_heads, rng);
                check_mask(mask, s, mask.indices ? h.mask_heads : 1);
                if (HasFatalFailure()) return;
            }
}

TEST(TileOrder, HostileMasks) {
    auto rng = testing::test_rng();
    const AttentionSizes sizes[] = {{0, 33, 70, 0, 0, 8, 8}, {0, 300, 129, 0, 0, 8, 8}};
    for (const testing::IndexLayout& layout : testing::kIndexLayouts)
        for (const AttentionSizes& base : sizes)
            for (const Heads& h : kHeads) {
                const AttentionSizes s = h.applied_to(base);
                TestMask mask = testing::random_test_mask(layout.causal, layout.slots, true, s, h.mask_heads, rng);
                check_mask(mask, s, h.mask_heads);
                if (HasFatalFailure()) return;
            }
}

// Without an index tensor the work per block is monotone in the tie order for any Nq, Nk and
// tile shape (full: all equal; causal: query blocks gain keys downwards, key blocks lose rows
// rightwards), so the device launches no sort. Checked on more sizes than the catalogue's.
TEST(TileOrder, TieOrderIsSortedWithoutIndexTensor) {
    for (bool causal : {false, true})
        for (int32_t nq : {1, 15, 64, 129, 500})
            for (int32_t nk : {1, 16, 63, 200, 700}) {
                const AttentionSizes s{3, nq, nk, 4, 2, 8, 8};
                TestMask mask;
                mask.causal = causal;
                mask.name = causal ? "causal" : "full";
                check_mask(mask, s, 1);
                if (HasFatalFailure()) return;
            }
}

// The mapping alone, for grids of many sizes: blocks from 1 to more than a section's worth,
// (batch, head) pairs below, at and around multiples of every section size the launchers pick
// (1 to kMaxHeadsPerSection; 3 divides none of the larger pair counts), heavy prefixes of every
// length from 0 to all blocks (a sample of them for 100 blocks).
TEST(TileOrder, MappingIsBijectiveForAnyGrid) {
    constexpr int32_t kBlockM = 16, kBlockN = 16;
    for (int32_t blocks : {1, 2, 7, 8, 9, 100})
        for (int32_t batch : {1, 2, 3})
            for (int32_t heads : {1, 3, 8, 9, 17})
                for (int32_t heads_per_section : {1, 2, 3, cuda::kMaxHeadsPerSection}) {
                    const AttentionSizes s{batch, blocks * kBlockM, 3 * kBlockN, heads, 1, 8, 8};
                    TestMask mask;
                    mask.causal = true;
                    mask.name = "causal";
                    const MaskView view = mask.mask_view(s);
                    for (TileAxis axis : {TileAxis::QueryBlocks, TileAxis::KeyBlocks}) {
                        TileOrderShape shape =
                            cuda::make_tile_order_shape(view, batch, heads, 1, axis, kBlockM, kBlockN, kH100Slots);
                        shape.heads_per_section = heads_per_section;
                        const std::vector<int32_t> work =
                            cuda::host_block_work(shape, block_summaries(view, 1, 1, kBlockN));
                        const int32_t n = shape.blocks;  // query or key blocks
                        std::vector<int32_t> prefixes;
                        if (n <= 9)
                            for (int32_t r = 0; r <= n; ++r) prefixes.push_back(r);
                        else
                            prefixes = {0, 1, 7, 8, 9, n / 2, n - 1, n};
                        for (int32_t heavy_ranks : prefixes) {
                            testing::check_schedule(shape, cuda::make_tile_schedule(shape, nullptr, &heavy_ranks), work,
                                                    describe("causal", s, 1, axis, {kBlockM, kBlockN}) + " section " +
                                                        std::to_string(heads_per_section) + " R " +
                                                        std::to_string(heavy_ranks));
                            if (HasFatalFailure()) return;
                        }
                    }
                }
}

// The benchmark's masks (bench/bench_attention.py): catalogue seed 0, one mask head for all query
// heads, the same index tensor for every batch entry (null for full and plain causal).
TestMask benchmark_mask(const std::string& name, int32_t batch, int32_t n, std::mt19937_64& rng) {
    constexpr uint64_t kBenchmarkSeed = 0;
    const MaskSpec spec = catalogue_mask(name, n, kBenchmarkSeed);
    TestMask mask;
    mask.name = name;
    mask.causal = spec.causal;
    if (!spec.has_indices()) return mask;
    mask.indices.emplace(batch, 1, n, spec.slots, rng);
    for (int32_t b = 0; b < batch; ++b)
        for (int64_t j = 0; j < n; ++j)
            for (int32_t slot = 0; slot < spec.slots; ++slot)
                mask.indices->at(b, 0, j, slot) = spec.indices[std::size_t(j * spec.slots + slot)];
    return mask;
}

// R at the benchmark's sizes on an H100, printed for every catalogue mask, both axes with the
// kernels' tiles, slots and sections: the forward (and dQ) by query blocks of 128 rows, 64-key
// summaries, 264 slots; dK/dV by key blocks, query blocks of 64 rows, 128-key summaries, 132
// slots; sections as plan_scheduled_launch() sizes them. What kHeavyFraction's comment
// predicts: causal_blockwise's heavy query blocks (its last document's, ~128 key blocks against
// a slot time of ~36 at 8K) go first; masks whose every block fits in a section's slot time get
// R = 0: sliding_window (even work), prefix_lm_causal (its heaviest block, 128 key blocks at 8K,
// is under its ~133).
TEST(TileOrder, HeavyPrefixAtBenchmarkSizes) {
    auto rng = testing::test_rng();
    struct Sizes {
        int32_t batch, n, heads;
    };
    constexpr Sizes kSizes[] = {{2, 8192, 32}, {1, 32768, 16}};
    struct Axis {
        TileAxis axis;
        TileShape tile;
        int32_t cta_slots;
        const char* name;
    };
    const Axis axes[] = {{TileAxis::QueryBlocks, {128, 64}, kH100Slots, "query blocks"},
                         {TileAxis::KeyBlocks, {64, 128}, kH100DkDvSlots, "key blocks"}};
    for (const Sizes& sizes : kSizes)
        for (const std::string& name : catalogue_names()) {
            const AttentionSizes s{sizes.batch, sizes.n, sizes.n, sizes.heads, sizes.heads, 128, 128};
            TestMask mask = benchmark_mask(name, s.batch, s.nq, rng);
            const MaskView view = mask.mask_view(s);
            for (const Axis& a : axes) {
                const std::string what = describe(name, s, 1, a.axis, a.tile);
                TileOrderShape shape = cuda::make_tile_order_shape(view, s.batch, s.q_heads, s.kv_heads, a.axis,
                                                                   a.tile.block_m, a.tile.block_n, a.cta_slots);
                shape.heads_per_section = testing::planned_heads_per_section(s, a.axis);
                const std::vector<int32_t> work = cuda::host_block_work(
                    shape, block_summaries(view, shape.order_batches, shape.summary_heads, a.tile.block_n));
                const std::vector<int32_t> order = cuda::host_tile_order(shape, work);
                const int32_t heavy_ranks = cuda::host_heavy_prefix_ranks(shape, work, order);
                testing::check_heavy_prefix(shape, work, order, heavy_ranks, what);
                if (name == "causal_blockwise" && a.axis == TileAxis::QueryBlocks) EXPECT_GT(heavy_ranks, 0) << what;
                if (name == "sliding_window" || name == "prefix_lm_causal") EXPECT_EQ(heavy_ranks, 0) << what;
                int32_t heaviest = 0;
                int64_t total = 0;
                for (int32_t w : work) {
                    heaviest = std::max(heaviest, w);
                    total += w;
                }
                const double threshold = cuda::heavy_work_threshold(shape, total / shape.order_pairs());
                std::cout << "heavy prefix N=" << s.nq << " B=" << s.batch << " H=" << s.q_heads << " " << std::setw(12)
                          << a.name << " " << std::setw(22) << name << ": R = " << std::setw(3) << heavy_ranks << " of "
                          << shape.blocks << ", sections of " << shape.heads_per_section << " (heaviest block " << heaviest << " tiles, average "
                          << std::fixed << std::setprecision(1) << double(total) / double(work.size())
                          << ", threshold " << threshold << ")" << std::defaultfloat
                          << (view.layout == MaskLayout::None ? " [no index tensor: the kernels sort nothing, R = 0]" : "")
                          << "\n";
            }
        }
}

// skipped_query_blocks(), which the device's difference array and the host twin count work
// with, against classify() query block by query block: its runs hold exactly the blocks that
// classify() calls Skipped, once each (count()). Summaries with bounds drawn around every edge
// (below 0, 0, inside, Nq, past Nq, the fold identity's INT32_MIN / INT32_MAX), empty blocks, and
// sizes from one row to Nq near INT32_MAX with ragged last blocks.
TEST(TileOrder, SkippedQueryBlocksAreExactlyClassifysSkips) {
    auto rng = testing::test_rng();
    constexpr int32_t kInt32Max = std::numeric_limits<int32_t>::max();
    struct Size {
        int32_t nq, block_m;
    };
    const Size sizes[] = {{1, 1}, {1, 64}, {17, 1}, {17, 4}, {128, 64}, {129, 64}, {1000, 128},
                          {1000, 3}, {kInt32Max, 1 << 21}, {kInt32Max - 5, (1 << 21) + 1}};
    constexpr int kSummariesPerSize = 3000;
    for (const Size& size : sizes) {
        const int32_t query_blocks = ceil_div(size.nq, size.block_m);
        // A bound: an edge value, a block boundary or any row.
        auto bound = [&]() -> int32_t {
            const int32_t block = int32_t(rng() % uint64_t(query_blocks + 1));
            const int64_t boundary = std::min<int64_t>(int64_t(block) * size.block_m, size.nq);
            switch (rng() % 10) {
                case 0: return std::numeric_limits<int32_t>::min();
                case 1: return kInt32Max;
                case 2: return -1;
                case 3: return 0;
                case 4: return size.nq;
                case 5: return int32_t(std::min<int64_t>(int64_t(size.nq) + 1, kInt32Max));
                case 6: return int32_t(boundary);
                case 7: return int32_t(std::max<int64_t>(boundary - 1, 0));
                case 8: return int32_t(std::min<int64_t>(boundary + 1, size.nq));
                default: return int32_t(rng() % (uint64_t(size.nq) + 1));
            }
        };
        for (int trial = 0; trial < kSummariesPerSize; ++trial) {
            BlockSummary s = trial == 0 ? BlockSummary::empty() : BlockSummary{};
            if (trial > 0)
                s = {bound(), bound(), bound(), bound(), bound(), bound(), bound(), bound()};
            const cuda::SkippedQueryBlocks skipped = cuda::skipped_query_blocks(s, size.block_m, size.nq, query_blocks);
            int32_t classified_skipped = 0;
            for (int32_t q = 0; q < query_blocks; ++q) {
                const int32_t begin = int32_t(int64_t(q) * size.block_m);
                const int32_t end = clipped_end(begin, size.block_m, size.nq);
                const bool skip = classify(s, begin, end) == TileKind::Skipped;
                classified_skipped += skip;
                ASSERT_EQ(skipped.contains(q), skip)
                    << "Nq " << size.nq << " block_m " << size.block_m << " query block " << q << " of "
                    << query_blocks << ", summary {" << s.min_lower_start << ", " << s.max_lower_start << ", "
                    << s.min_lower_end << ", " << s.max_lower_end << ", " << s.min_upper_start << ", "
                    << s.max_upper_start << ", " << s.min_upper_end << ", " << s.max_upper_end << "}";
            }
            ASSERT_EQ(skipped.count(), classified_skipped) << "Nq " << size.nq << " block_m " << size.block_m
                                                           << ": the runs overlap";
        }
    }
}

TEST(TileOrder, WorkBucketShift) {
    EXPECT_EQ(cuda::work_bucket_shift(0), 0);
    EXPECT_EQ(cuda::work_bucket_shift(cuda::kWorkBuckets - 1), 0);
    EXPECT_EQ(cuda::work_bucket_shift(cuda::kWorkBuckets), 1);
    EXPECT_EQ(cuda::work_bucket_shift(2 * cuda::kWorkBuckets - 1), 1);
    EXPECT_EQ(cuda::work_bucket_shift(2 * cuda::kWorkBuckets), 2);
    const int64_t int32_max = std::numeric_limits<int32_t>::max();
    EXPECT_LT(int32_max >> cuda::work_bucket_shift(int32_max), cuda::kWorkBuckets);
}

// More key blocks than histogram bins (8193 > kWorkBuckets - 1): the query-block order is sorted
// by bins of two work values, and the schedule says so.
TEST(TileOrder, BucketsLargeWork) {
    auto rng = testing::test_rng();
    constexpr int32_t kBlockM = 16, kBlockN = 16;
    const AttentionSizes s{2, 200, (cuda::kWorkBuckets + 1) * kBlockN, 2, 1, 8, 8};
    TestMask mask = testing::catalogue_test_mask("causal_blockwise", s, 2, rng);
    const MaskView view = mask.mask_view(s);
    const TileOrderShape shape = cuda::make_tile_order_shape(view, s.batch, s.q_heads, s.kv_heads,
                                                             TileAxis::QueryBlocks, kBlockM, kBlockN, kH100Slots);
    EXPECT_EQ(shape.bucket_shift, 1);
    EXPECT_EQ(shape.buckets, (cuda::kWorkBuckets + 1) / 2 + 1);
    const std::vector<int32_t> work =
        cuda::host_block_work(shape, block_summaries(view, shape.order_batches, shape.summary_heads, kBlockN));
    const std::vector<int32_t> order = cuda::host_tile_order(shape, work);
    // Within a bin the order is not by work: R still covers every heavy block.
    const int32_t heavy_ranks = cuda::host_heavy_prefix_ranks(shape, work, order);
    testing::check_heavy_prefix(shape, work, order, heavy_ranks, "causal_blockwise, bucketed");
    testing::check_schedule(shape, cuda::make_tile_schedule(shape, order.data(), &heavy_ranks), work,
                            "causal_blockwise, bucketed");
}

TEST(TileOrder, RefusesWhatDoesNotFitInt32) {
    MaskView view;
    view.nq = std::numeric_limits<int32_t>::max();
    view.nk = 64;
    // 2 x (2^31 - 1) query blocks of one row: beyond the grid.
    EXPECT_THROW(cuda::make_tile_order_shape(view, 2, 1, 1, TileAxis::QueryBlocks, 1, 64, kH100Slots), Error);
    // A key block's work: (2^31 - 1) query blocks x 2 query heads per KV head.
    try {
        cuda::make_tile_order_shape(view, 1, 2, 1, TileAxis::KeyBlocks, 1, 64, kH100Slots);
        ADD_FAILURE() << "expected Error(Unsupported)";
    } catch (const Error& e) {
        EXPECT_EQ(e.code(), ErrorCode::Unsupported);
        EXPECT_NE(std::string(e.what()).find("tiles per block"), std::string::npos) << e.what();
    }
    // Bad heads or blocks name what was given.
    view.nq = 100;
    EXPECT_THROW(cuda::make_tile_order_shape(view, 1, 3, 2, TileAxis::QueryBlocks, 64, 64, kH100Slots), Error);
    EXPECT_THROW(cuda::make_tile_order_shape(view, 1, 2, 1, TileAxis::QueryBlocks, 0, 64, kH100Slots), Error);
    EXPECT_THROW(cuda::make_tile_order_shape(view, 1, 2, 1, TileAxis::QueryBlocks, 64, 64, 0), Error);
}

// TailSplit (src/cuda/sm80/tail_split.hpp): which grids are split, the parts' tiles, and the grid
// positions' mapping onto the split CTAs, as the dK/dV kernel and its host side use them.
// Checks the plan that `planner` (plan_tail_split or plan_forward_tail_split) makes for `grid`
// CTAs of `tiles` tiles (key blocks, for the forward) on `slots` resident CTAs.
template <typename Planner>
void expect_tail_plan(Planner planner, int64_t grid, int32_t slots, int32_t tiles, int32_t split_ctas, int32_t parts) {
    const cuda::sm80::TailPlan plan = planner(grid, slots, tiles);
    EXPECT_EQ(plan.split_ctas, split_ctas) << "grid " << grid << " slots " << slots << " tiles " << tiles;
    EXPECT_EQ(plan.parts, parts) << "grid " << grid << " slots " << slots << " tiles " << tiles;
}

TEST(TailSplit, PlanSplitsOnlyAShortLastWave) {
    auto expect_plan = [](int64_t grid, int32_t slots, int32_t tiles, int32_t split_ctas, int32_t parts) {
        expect_tail_plan(cuda::sm80::plan_tail_split, grid, slots, tiles, split_ctas, parts);
    };
    expect_plan(4096, 132, 128, 4, 33);         // SPEC §6 config (a) on an H100: 31 waves and 4 CTAs
    expect_plan(4096, 132, 512, 4, 33);         // config (b)
    expect_plan(4096, 132, 8, 4, 8);            // no more parts than tiles
    expect_plan(4224, 132, 128, 0, 1);          // whole waves
    expect_plan(132 * 10 + 33, 132, 128, 33, 4);  // a quarter of the slots: still split
    expect_plan(132 * 10 + 34, 132, 128, 0, 1);   // more: the wave is full enough
    expect_plan(100, 132, 128, 0, 1);           // one short wave is the whole grid: nothing after it to fill
    expect_plan(4096, 132, 1, 0, 1);            // one tile per CTA: nothing to split
    expect_plan(4096, 1, 128, 0, 1);
    expect_plan(0, 132, 128, 0, 1);
    // A split that would take the grid past grid dimension x's int32 is refused: 2^31 - 1 is
    // 67 past a multiple of 132, so a grid one past that multiple has a tail of 1, whose parts add
    // parts - 1 CTAs to it: 127 do not fit, 59 do.
    const int64_t whole_waves = int64_t{std::numeric_limits<int32_t>::max()} / 132 * 132;
    ASSERT_EQ(std::numeric_limits<int32_t>::max() - whole_waves, 67);
    expect_plan(whole_waves + 1, 132, 128, 0, 1);
    expect_plan(whole_waves + 1, 132, 60, 1, 60);
}

// The forward's split (plan_forward_tail_split()): parts of the key blocks, at most
// kForwardTailMaxParts, chosen for the shortest last wave, only where it saves a quarter of a CTA.
TEST(TailSplit, ForwardPlanShortensTheLastWave) {
    auto expect_plan = [](int64_t grid, int32_t slots, int32_t key_blocks, int32_t split_ctas, int32_t parts) {
        expect_tail_plan(cuda::sm80::plan_forward_tail_split, grid, slots, key_blocks, split_ctas, parts);
    };
    constexpr int32_t kSlots = 2 * 132;  // the D = 128 forward on an H100: two CTAs per SM
    // SPEC §6, both configurations: 136 CTAs in the last wave; halves would need two rounds (272
    // parts on 264 slots), thirds take two rounds of a third.
    expect_plan(4096, kSlots, 128, 136, 3);
    expect_plan(4096, kSlots, 512, 136, 3);
    EXPECT_NEAR(cuda::sm80::tail_wave_time(136, kSlots, 2), 1.0, 1e-12);
    EXPECT_NEAR(cuda::sm80::tail_wave_time(136, kSlots, 3), 2.0 / 3.0, 1e-12);
    expect_plan(4096, kSlots, 3, 136, 3);
    expect_plan(4096, kSlots, 2, 0, 1);                   // halves gain nothing here, and thirds need 3 blocks
    expect_plan(4096, kSlots, 1, 0, 1);                   // one key block: nothing to split
    expect_plan(4224, kSlots, 128, 0, 1);                 // whole waves
    expect_plan(3968, kSlots, 128, 8, 4);                 // 8 CTAs: quarters, one round
    expect_plan(kSlots * 10 + 198, kSlots, 128, 198, 4);  // three quarters of the slots: quarters, 3 rounds of 1/4
    expect_plan(kSlots * 10 + 199, kSlots, 128, 0, 1);    // more: no split saves a quarter
    expect_plan(100, kSlots, 128, 100, 2);                // a grid under one wave: halves (quarters tie; fewer parts)
    expect_plan(4096, 1, 128, 0, 1);
    expect_plan(0, kSlots, 128, 0, 1);
    // A split that would take the grid past grid dimension x's int32 is refused.
    const int64_t largest = std::numeric_limits<int32_t>::max();
    ASSERT_EQ(largest % 1000, 647);  // a tail of 0.647 of the slots: thirds, were there room
    expect_plan(largest, 1000, 128, 0, 1);
    expect_plan(largest - 647 + 150, 1000, 128, 150, 4);  // 150 x 4 parts still fit
}

TEST(TailSplit, PartsCoverEveryTileOnce) {
    for (int32_t tiles = 1; tiles <= 40; ++tiles)
        for (int32_t parts = 1; parts <= tiles + 3; ++parts) {
            int32_t next = 0;
            for (int32_t part = 0; part < parts; ++part) {
                const cuda::sm80::PartTiles t = cuda::sm80::part_tiles(tiles, part, parts);
                ASSERT_EQ(t.begin, next) << tiles << " tiles, part " << part << " of " << parts;
                ASSERT_LE(t.begin, t.end) << tiles << " tiles, part " << part << " of " << parts;
                if (parts <= tiles) ASSERT_LT(t.begin, t.end) << tiles << " tiles, part " << part << " of " << parts << " is empty";
                next = t.end;
            }
            ASSERT_EQ(next, tiles) << tiles << " tiles in " << parts << " parts";
        }
    const cuda::sm80::PartTiles last = cuda::sm80::part_tiles(std::numeric_limits<int32_t>::max(), 32, 33);
    EXPECT_EQ(last.end, std::numeric_limits<int32_t>::max());  // no overflow in the products
}

// The kernels' view of a plan (TailPlan::split()) and the grid the hosts launch for it.
TEST(TailSplit, GridPositionsRunTheSplitCtas) {
    std::vector<float> scratch(64);
    const cuda::sm80::TailSplit none = cuda::sm80::TailPlan{}.split(4096, scratch.data(), 60);
    EXPECT_FALSE(none.is_part(std::numeric_limits<int32_t>::max() - 1));  // no split: no part anywhere
    EXPECT_EQ(none.schedule_position(4095), 4095);
    EXPECT_EQ(none.sums, nullptr);
    EXPECT_EQ(cuda::sm80::TailPlan{}.launched_grid(4096), 4096);

    const cuda::sm80::TailPlan plan{4, 33};  // config (a)'s dK/dV grid: 4 split CTAs of 33 parts
    EXPECT_EQ(plan.launched_grid(4096), 4092 + 4 * 33);
    EXPECT_EQ(plan.scratch_floats(60), 64u);  // the sums, then one arrival count per split CTA
    const cuda::sm80::TailSplit split = plan.split(4096, scratch.data(), 60);
    EXPECT_EQ(split.first_cta, 4092);
    EXPECT_EQ(split.parts, 33);
    EXPECT_EQ(split.sums, scratch.data());
    EXPECT_EQ(static_cast<void*>(split.arrivals), static_cast<void*>(scratch.data() + 60));
    for (int32_t cta = 0; cta < 4092; ++cta) {
        ASSERT_FALSE(split.is_part(cta));
        ASSERT_EQ(split.schedule_position(cta), cta);
    }
    std::vector<int32_t> parts_seen(4 * 33, 0);
    for (int32_t cta = 4092; cta < plan.launched_grid(4096); ++cta) {
        ASSERT_TRUE(split.is_part(cta));
        const int32_t index = split.split_index(cta), part = split.part(cta);
        ASSERT_TRUE(index >= 0 && index < 4 && part >= 0 && part < 33) << cta;
        ASSERT_EQ(split.schedule_position(cta), 4092 + index) << cta;
        ++parts_seen[std::size_t(index * 33 + part)];
    }
    for (int32_t seen : parts_seen) EXPECT_EQ(seen, 1);
}

}  // namespace
}  // namespace flashmask
