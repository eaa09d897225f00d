// The sorted key order's host twin (sorted_key_order(), mask.hpp; the rule in key_order.hpp):
// per (batch, mask head) a permutation that keeps every key in its window, sorted by the rule
// inside each window, whose C = 4 mask is the original mask with its columns permuted (dense,
// element by element), for every catalogue mask, random and hostile masks of every layout, odd
// sizes, Nq != Nk, mask heads 1 and 2 and no index tensor. And what it is for: random eviction
// computes at least a tenth fewer tiles in sorted order. Also the CUDA path's rule for when it
// sorts (key_order_choice.hpp), which needs no GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <string>
#include <vector>

#include "cuda/common/key_order_choice.hpp"
#include "cuda/common/tile_order.hpp"
#include "test_cpu_common.hpp"
#include "test_mask_util.hpp"

namespace flashmask::testing {
namespace {

// Windows of the CUDA path and a small one, so that a few hundred keys cross several windows
// and end in a partial one.
constexpr int32_t kWindows[] = {kKeyOrderWindow, 96};

void check_sorted_order(TestMask& mask, const AttentionSizes& s, int32_t mask_heads, int32_t window) {
    SCOPED_TRACE(mask.name + " " + s.describe() + " Hm=" + std::to_string(mask_heads) + " window " +
                 std::to_string(window));
    const MaskView view = mask.mask_view(s);
    const SortedKeyOrder sorted = sorted_key_order(view, s.batch, mask_heads, window);
    ASSERT_EQ(sorted.order.size(), std::size_t(s.batch) * mask_heads * s.nk);
    ASSERT_EQ(sorted.indices.size(), sorted.order.size() * kSortedMaskSlots);
    const MaskView sorted_view = sorted.mask(view);
    for (int32_t b = 0; b < s.batch; ++b)
        for (int32_t m = 0; m < mask_heads; ++m) {
            const int32_t* order = sorted.order.data() + (std::size_t(b) * mask_heads + m) * s.nk;
            std::vector<int32_t> keys(order, order + s.nk);
            std::sort(keys.begin(), keys.end());
            std::vector<int32_t> expected(std::size_t(s.nk));
            std::iota(expected.begin(), expected.end(), 0);
            ASSERT_EQ(keys, expected) << "batch " << b << " head " << m << ": not a permutation of the keys";
            for (int32_t j = 0; j < s.nk; ++j) {
                ASSERT_EQ(order[j] / window, j / window) << "position " << j << " holds key " << order[j]
                                                         << " from another window";
                if (j % window == 0) continue;
                const KeyOrderItem previous =
                    KeyOrderItem::of(column_intervals(view, b, m, order[j - 1]), order[j - 1]);
                const KeyOrderItem current = KeyOrderItem::of(column_intervals(view, b, m, order[j]), order[j]);
                ASSERT_TRUE(previous.before(current)) << "positions " << j - 1 << " and " << j << " out of order";
            }
            const std::vector<uint8_t> original = to_dense(view, b, m);
            const std::vector<uint8_t> permuted = to_dense(sorted_view, b, m);
            for (int32_t i = 0; i < s.nq; ++i)
                for (int32_t j = 0; j < s.nk; ++j)
                    ASSERT_EQ(permuted[std::size_t(i) * s.nk + j], original[std::size_t(i) * s.nk + order[j]])
                        << "batch " << b << " head " << m << ": row " << i << ", position " << j << " (key "
                        << order[j] << ")";
        }
}

TEST(KeyOrder, EveryCatalogueMaskIsPermutedExactly) {
    auto rng = test_rng();
    for (const std::string& name : catalogue_names())
        for (const AttentionSizes s : {AttentionSizes{2, 1000, 1111, 4, 2, 64, 64}, AttentionSizes{1, 1111, 1000, 4, 2, 64, 64}})
            for (const int32_t window : kWindows) {
                const int32_t mask_heads = window == kKeyOrderWindow ? 1 : s.kv_heads;
                TestMask mask = catalogue_test_mask(name, s, mask_heads, rng);
                check_sorted_order(mask, s, mask_heads, window);
            }
}

TEST(KeyOrder, RandomAndHostileMasksOfEveryLayoutArePermutedExactly) {
    auto rng = test_rng();
    const AttentionSizes s{2, 97, 301, 4, 2, 64, 64};
    for (const IndexLayout layout : kIndexLayouts)
        for (const bool hostile : {false, true})
            for (const int32_t window : kWindows) {
                TestMask mask = random_test_mask(layout.causal, layout.slots, hostile, s, s.kv_heads, rng);
                check_sorted_order(mask, s, s.kv_heads, window);
            }
}

TEST(KeyOrder, NoIndexTensorKeepsTheKeysInOrder) {
    for (const bool causal : {false, true}) {
        const AttentionSizes s{1, 300, 2100, 2, 1, 64, 64};
        TestMask mask;
        mask.causal = causal;
        mask.name = causal ? "causal" : "full";
        check_sorted_order(mask, s, 1, kKeyOrderWindow);
        const SortedKeyOrder sorted = sorted_key_order(mask.mask_view(s), s.batch, 1);
        std::vector<int32_t> identity(std::size_t(s.nk));
        std::iota(identity.begin(), identity.end(), 0);
        EXPECT_EQ(sorted.order, identity) << "these columns are in bound order already";
    }
}

// What the order is for (bench/NOTES.md, sessions 6 and 7): random eviction at 32K computes
// 0.746 of its tiles' pairs in the keys' own order and 0.936 sorted (forward tile), so at
// least the tenth fewer tiles that KeyOrder::Automatic asks for; causal document does not move.
TEST(KeyOrder, RandomEvictionComputesFewerTilesSorted) {
    constexpr int64_t kN = 32768;
    constexpr int32_t kBlockM = 128, kBlockN = 64;  // the sm80 forward's tile
    for (const char* name : {"random_eviction", "causal_document"}) {
        SCOPED_TRACE(name);
        const MaskSpec spec = catalogue_mask(name, kN, 0);
        const TensorView indices =
            make_contiguous_view(const_cast<int32_t*>(spec.indices.data()), DType::Int32, {1, 1, kN, spec.slots});
        const MaskView view = make_mask_view(indices, spec.causal, kN, kN, 1);
        const SortedKeyOrder sorted = sorted_key_order(view, 1, 1);
        const TileCounts natural = count_tiles(view, 1, 1, kBlockM, kBlockN);
        const TileCounts in_order = count_tiles(sorted.mask(view), 1, 1, kBlockM, kBlockN);
        const int64_t natural_computed = natural.partial + natural.full;
        const int64_t sorted_computed = in_order.partial + in_order.full;
        EXPECT_EQ(visible_pairs(sorted.mask(view), 1, 1), visible_pairs(view, 1, 1));
        if (std::string(name) == "random_eviction")
            EXPECT_LE(sorted_computed * 10, natural_computed * 9) << natural_computed << " -> " << sorted_computed;
        else
            EXPECT_EQ(sorted_computed, natural_computed);
    }
}

// KeyOrder::Automatic's early gate (sorted_order_may_pay()), with the counts the natural order's
// tile-order kernel makes (host twins, tile_order.hpp), for every catalogue mask at 32K with both
// kernels' tiles and axes: its least count, the keys each query block sees in each window packed
// into whole key blocks, is at most the tiles the sorted order computes, and so is the visible
// pairs' (the kernel's fallback); so the gate rules the sorted order out only where
// sorted_order_pays() would. And what it is for: it rules out the structured masks, which the
// sort does not help, and lets random eviction through.
TEST(KeyOrder, TheEarlyGateNeverRulesOutAPayingSort) {
    constexpr int64_t kN = 32768;
    constexpr int32_t kSlots = 264;  // an H100's 132 SMs x 2: any value gives the same counts
    struct Tile {
        cuda::TileAxis axis;
        int32_t block_m, block_n;
    };
    // The sm80 forward's tiles and axis, the dK/dV kernel's.
    constexpr Tile kTiles[] = {{cuda::TileAxis::QueryBlocks, 128, 64}, {cuda::TileAxis::KeyBlocks, 64, 128}};
    for (const std::string& name : catalogue_names()) {
        const MaskSpec spec = catalogue_mask(name, kN, 0);
        if (spec.slots == 0) continue;  // no index tensor: never sorted
        const TensorView indices =
            make_contiguous_view(const_cast<int32_t*>(spec.indices.data()), DType::Int32, {1, 1, kN, spec.slots});
        const MaskView view = make_mask_view(indices, spec.causal, kN, kN, 1);
        const SortedKeyOrder sorted = sorted_key_order(view, 1, 1);
        const MaskView sorted_view = sorted.mask(view);
        for (const Tile& tile : kTiles) {
            SCOPED_TRACE(name + " " + std::to_string(tile.block_m) + "x" + std::to_string(tile.block_n));
            const cuda::TileOrderShape shape =
                cuda::make_tile_order_shape(view, 1, 1, 1, tile.axis, tile.block_m, tile.block_n, kSlots);
            auto computed_tiles = [&](const MaskView& v) {
                unsigned long long tiles = 0;
                for (const int32_t w : cuda::host_block_work(shape, block_summaries(v, 1, 1, tile.block_n)))
                    tiles += static_cast<unsigned long long>(w);
                return tiles;
            };
            const unsigned long long natural_tiles = computed_tiles(view), sorted_tiles = computed_tiles(sorted_view);
            const unsigned long long pairs_per_tile = static_cast<unsigned long long>(tile.block_m) * tile.block_n;
            const unsigned long long least_tiles = cuda::host_least_window_tiles(shape, view, tile.block_n);
            const unsigned long long visible = cuda::host_order_visible_pairs(shape, view);
            EXPECT_LE(least_tiles, sorted_tiles);
            EXPECT_LE(visible, sorted_tiles * pairs_per_tile);
            EXPECT_LE(visible, least_tiles * pairs_per_tile);  // the window count is the tighter one
            ASSERT_TRUE(cuda::window_bound_fits(shape, tile.block_n));  // as the order kernel counts at 32K
            const unsigned long long least_pairs = least_tiles * pairs_per_tile;
            const bool may_pay = cuda::sorted_order_may_pay(least_pairs, natural_tiles * pairs_per_tile);
            if (cuda::sorted_order_pays(natural_tiles, sorted_tiles))
                EXPECT_TRUE(may_pay) << "the sort pays (" << natural_tiles << " -> " << sorted_tiles
                                     << " tiles) but the gate ruled it out (at least " << least_tiles << ")";
            if (name == "random_eviction")
                EXPECT_TRUE(may_pay);
            else
                EXPECT_FALSE(may_pay) << "at least " << least_tiles << " of " << natural_tiles << " tiles";
            // The device's counters give the same choice (LaunchCondition, read on the host here).
            std::vector<unsigned long long> counters(cuda::kWorkCounters);
            counters[cuda::kNaturalTiles] = natural_tiles;
            counters[cuda::kSortedTiles] = sorted_tiles;
            counters[cuda::kLeastSortedPairs] = least_pairs;
            counters[cuda::kNaturalTilePairs] = natural_tiles * pairs_per_tile;
            const cuda::LaunchCondition natural_launch{counters.data(), false}, sorted_launch{counters.data(), true};
            EXPECT_EQ(sorted_launch.sorted_order_possible(), may_pay);
            EXPECT_EQ(sorted_launch.holds(), cuda::sorted_order_pays(natural_tiles, sorted_tiles));
            EXPECT_NE(natural_launch.holds(), sorted_launch.holds());
        }
    }
    EXPECT_TRUE(cuda::LaunchCondition{}.holds());  // no comparison: every launch runs
    EXPECT_TRUE(cuda::LaunchCondition{}.sorted_order_possible());
}

TEST(KeyOrder, RefusesAWindowBelowOne) {
    const AttentionSizes s{1, 10, 10, 1, 1, 64, 64};
    TestMask mask;
    try {
        (void)sorted_key_order(mask.mask_view(s), 1, 1, 0);
        FAIL() << "window 0 was accepted";
    } catch (const Error& e) {
        EXPECT_EQ(e.argument(), "window");
        EXPECT_NE(std::string(e.what()).find("window = 0"), std::string::npos) << e.what();
    }
}

// The CUDA path's choice of key order: sorting needs an index tensor and one order per KV head
// (Hm = 1 or Hk); KeyOrder::Automatic leaves it to the device from kAutomaticKeyOrderMinKeys keys.
TEST(KeyOrder, WhenTheCudaPathSorts) {
    using cuda::KeyOrderUse;
    auto problem = [](MaskLayout layout, int32_t nk, int32_t mask_heads) {
        AttentionProblem p;
        p.batch = 1;
        p.nq = 100;
        p.nk = nk;
        p.q_heads = 8;
        p.kv_heads = 2;
        p.mask.layout = layout;
        p.mask.nq = p.nq;
        p.mask.nk = nk;
        p.mask.query_heads_per_mask_head = p.q_heads / mask_heads;
        return p;
    };
    constexpr int32_t kLong = cuda::kAutomaticKeyOrderMinKeys, kShort = cuda::kAutomaticKeyOrderMinKeys - 1;
    for (const int32_t mask_heads : {1, 2}) {
        const AttentionProblem p = problem(MaskLayout::CausalLower, kLong, mask_heads);
        EXPECT_EQ(cuda::key_order_use(p, KeyOrder::Automatic), KeyOrderUse::Chosen) << "Hm " << mask_heads;
        EXPECT_EQ(cuda::key_order_use(p, KeyOrder::Sorted), KeyOrderUse::Sorted) << "Hm " << mask_heads;
        EXPECT_EQ(cuda::key_order_use(p, KeyOrder::Natural), KeyOrderUse::Natural) << "Hm " << mask_heads;
        const AttentionProblem short_keys = problem(MaskLayout::CausalLower, kShort, mask_heads);
        EXPECT_EQ(cuda::key_order_use(short_keys, KeyOrder::Automatic), KeyOrderUse::Natural) << "Hm " << mask_heads;
        EXPECT_EQ(cuda::key_order_use(short_keys, KeyOrder::Sorted), KeyOrderUse::Sorted) << "Hm " << mask_heads;
    }
    // A mask per query head with GQA (Hm = Hq = 8, Hk = 2), or no index tensor: never sorted.
    for (const KeyOrder option : {KeyOrder::Automatic, KeyOrder::Sorted}) {
        EXPECT_EQ(cuda::key_order_use(problem(MaskLayout::LowerUpperBounded, kLong, 8), option), KeyOrderUse::Natural);
        EXPECT_EQ(cuda::key_order_use(problem(MaskLayout::None, kLong, 1), option), KeyOrderUse::Natural);
    }
    // Sorted pays at 0.9 of the natural order's tiles or fewer.
    EXPECT_TRUE(cuda::sorted_order_pays(1000, 900));
    EXPECT_FALSE(cuda::sorted_order_pays(1000, 901));
    EXPECT_TRUE(cuda::sorted_order_pays(0, 0));  // nothing to compute either way: either order is right
    // It may pay while its least pairs are at most 0.9 of the natural tiles' pairs.
    EXPECT_TRUE(cuda::sorted_order_may_pay(900, 1000));
    EXPECT_FALSE(cuda::sorted_order_may_pay(901, 1000));
    EXPECT_TRUE(cuda::sorted_order_may_pay(0, 0));
    EXPECT_TRUE(cuda::sorted_order_may_pay(9ULL << 60, 10ULL << 60));  // past 64 bits once multiplied
}

}  // namespace
}  // namespace flashmask::testing
