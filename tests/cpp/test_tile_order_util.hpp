// Checks of a heaviest-first CTA schedule (src/cuda/common/tile_order.hpp), shared by the CPU
// tests of its host twin and the GPU tests of the device order. Reads only host memory: a device
// order and heavy prefix are copied back and put in a schedule with make_tile_schedule() first.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "cuda/common/tile_order.hpp"
#include "flashmask/mask.hpp"
#include "test_cpu_common.hpp"

namespace flashmask::testing {

// The batch and head counts of a test case, applied to sizes whose own counts are placeholders.
struct Heads {
    int32_t batch, q_heads, kv_heads, mask_heads;

    AttentionSizes applied_to(AttentionSizes s) const {
        s.batch = batch;
        s.q_heads = q_heads;
        s.kv_heads = kv_heads;
        return s;
    }
};

// The work of block `block` of grid (batch, head), from `work` laid out [order batches, order
// heads, blocks] as host_block_work() returns it.
inline int32_t work_of(const cuda::TileOrderShape& s, const std::vector<int32_t>& work, int32_t batch, int32_t head,
                       int32_t block) {
    const int64_t order_batch = s.order_batches == 1 ? 0 : batch;
    const int64_t order_head = head / s.heads_per_order_head;
    return work[std::size_t((order_batch * s.order_heads + order_head) * s.blocks + block)];
}

// The section size plan_scheduled_launch() gives the bf16 kernels of `s` along `axis`.
inline int32_t planned_heads_per_section(const AttentionSizes& s, cuda::TileAxis axis) {
    AttentionProblem p;
    p.dtype = DType::BFloat16;
    p.batch = s.batch;
    p.nq = s.nq;
    p.nk = s.nk;
    p.q_heads = s.q_heads;
    p.kv_heads = s.kv_heads;
    p.head_dim = s.head_dim;
    p.value_dim = s.value_dim;
    // The kernels' blocks on an H100: the forward's 128 query rows on 2 x 132 slots, the dK/dV
    // kernel's 128 keys (64 at D = 256) on 132.
    constexpr int32_t kSms = 132, kForwardRows = 128, kDkDvKeys = 128, kDkDvKeysD256 = 64;
    const bool keys = axis == cuda::TileAxis::KeyBlocks;
    const int32_t block = keys ? (s.head_dim > 128 ? kDkDvKeysD256 : kDkDvKeys) : kForwardRows;
    const int32_t blocks = ceil_div(keys ? s.nk : s.nq, block);
    return cuda::section_heads(p, axis, blocks, keys ? kSms : 2 * kSms);
}

// Walks every CTA of `schedule` and checks, failing the test with `what` on the first violation:
//   1. the mapping is a bijection onto every (batch, head, block);
//   2. with R = *schedule.heavy_ranks (0 when null), in [0, blocks]: the first R x pairs CTAs are
//      ranks [0, R) rank-major over all (batch, head) pairs; the rest are sections of
//      s.heads_per_section consecutive pairs (fewer in the last), each ranks [R, blocks) rank-major
//      over its pairs; each CTA's block is its pair's order entry at that rank (written here in
//      64-bit arithmetic, independently of TileSchedule::at());
//   3. along one (batch, head), CTA by CTA, the work bin (work >> bucket_shift) never grows, and
//      blocks of one bin come in the tie order (the exact work when bucket_shift is 0).
inline void check_schedule(const cuda::TileOrderShape& s, const cuda::TileSchedule& schedule,
                           const std::vector<int32_t>& work, const std::string& what) {
    const int64_t pairs = int64_t(s.batch) * s.heads, ctas = s.ctas();
    ASSERT_EQ(schedule.pairs, pairs) << what;
    ASSERT_EQ(work.size(), std::size_t(s.order_pairs() * s.blocks)) << what;
    const int64_t heavy = schedule.heavy_ranks != nullptr ? *schedule.heavy_ranks : 0;
    ASSERT_TRUE(heavy >= 0 && heavy <= s.blocks) << what << ": heavy prefix of " << heavy << " ranks, blocks "
                                                 << s.blocks;
    const int64_t heavy_ctas = heavy * pairs, section_ctas = int64_t(s.heads_per_section) * (s.blocks - heavy);
    std::vector<uint8_t> seen(std::size_t(ctas), 0);
    struct Last { int32_t bin = 0, tie_position = -1; };
    std::vector<Last> last(static_cast<std::size_t>(pairs));
    for (int64_t cta = 0; cta < ctas; ++cta) {
        const cuda::TileCoordinates c = schedule.at(int32_t(cta));
        ASSERT_TRUE(c.batch >= 0 && c.batch < s.batch && c.head >= 0 && c.head < s.heads && c.block >= 0 &&
                    c.block < s.blocks)
            << what << ": CTA " << cta << " maps to (" << c.batch << ", " << c.head << ", " << c.block << ")";
        const int64_t pair = int64_t(c.batch) * s.heads + c.head;
        uint8_t& hit = seen[std::size_t(pair * s.blocks + c.block)];
        ASSERT_EQ(hit, 0) << what << ": CTA " << cta << " maps to (" << c.batch << ", " << c.head << ", " << c.block
                          << ") a second time";
        hit = 1;

        int64_t expected_pair = 0, expected_rank = 0;
        if (cta < heavy_ctas) {
            expected_pair = cta % pairs;
            expected_rank = cta / pairs;
        } else {
            const int64_t rest = cta - heavy_ctas, section = rest / section_ctas;
            const int64_t first_pair = section * s.heads_per_section, offset = rest - section * section_ctas;
            const int64_t section_pairs = std::min<int64_t>(s.heads_per_section, pairs - first_pair);
            expected_pair = first_pair + offset % section_pairs;
            expected_rank = heavy + offset / section_pairs;
        }
        ASSERT_EQ(pair, expected_pair) << what << ": CTA " << cta << " is not in rank-major order ("
                                       << (cta < heavy_ctas ? "heavy prefix" : "sections") << ", R = " << heavy << ")";
        const int64_t order_batch = s.order_batches == 1 ? 0 : c.batch, order_head = c.head / s.heads_per_order_head;
        const int32_t expected_block =
            schedule.order != nullptr
                ? schedule.order[std::size_t((order_batch * s.order_heads + order_head) * s.blocks + expected_rank)]
                : cuda::tie_order_block(s.axis, s.blocks, int32_t(expected_rank));
        ASSERT_EQ(c.block, expected_block) << what << ": CTA " << cta << " should run rank " << expected_rank << " of ("
                                           << c.batch << ", " << c.head << "), R = " << heavy;

        const int32_t bin = work_of(s, work, c.batch, c.head, c.block) >> s.bucket_shift;
        const int32_t tie_position = s.axis == cuda::TileAxis::QueryBlocks ? s.blocks - 1 - c.block : c.block;
        Last& previous = last[std::size_t(pair)];
        if (previous.tie_position >= 0) {
            ASSERT_LE(bin, previous.bin) << what << ": (" << c.batch << ", " << c.head << ") block " << c.block
                                         << " (CTA " << cta << ") is heavier than the block before it";
            if (bin == previous.bin)
                ASSERT_GT(tie_position, previous.tie_position)
                    << what << ": (" << c.batch << ", " << c.head << ") block " << c.block << " (CTA " << cta
                    << ") breaks the tie order";
        }
        previous = {bin, tie_position};
    }
}

// R = heavy_ranks against its definition (tile_order.hpp, kHeavyFraction): no order head has a
// heavy block at rank R or beyond, and unless R = 0 some order head has one at rank R - 1.
inline void check_heavy_prefix(const cuda::TileOrderShape& s, const std::vector<int32_t>& work,
                               const std::vector<int32_t>& order, int32_t heavy_ranks, const std::string& what) {
    ASSERT_TRUE(heavy_ranks >= 0 && heavy_ranks <= s.blocks) << what << ": R = " << heavy_ranks;
    bool last_rank_heavy = false;
    for (int64_t pair = 0; pair < s.order_pairs(); ++pair) {
        const int32_t* pair_work = work.data() + pair * s.blocks;
        const int32_t* pair_order = order.data() + pair * s.blocks;
        int64_t order_head_work = 0;
        for (int32_t block = 0; block < s.blocks; ++block) order_head_work += pair_work[block];
        const double threshold = cuda::heavy_work_threshold(s, order_head_work);
        for (int32_t rank = heavy_ranks; rank < s.blocks; ++rank)
            ASSERT_FALSE(cuda::is_heavy(pair_work[pair_order[rank]], threshold))
                << what << ": order pair " << pair << " has a heavy block (" << pair_work[pair_order[rank]]
                << " tiles > " << threshold << ") at rank " << rank << ", outside the prefix of R = " << heavy_ranks;
        if (heavy_ranks > 0) last_rank_heavy |= cuda::is_heavy(pair_work[pair_order[heavy_ranks - 1]], threshold);
    }
    if (heavy_ranks > 0) EXPECT_TRUE(last_rank_heavy) << what << ": R = " << heavy_ranks << " is longer than needed";
}

// The non-skipped tiles of the whole call, from work: each (batch, head) of the grid counted once.
// With the query-block axis that is the tiles of every query head; with the key-block axis every
// query head is counted through its KV head's group: either way count_tiles()'s partial + full.
inline int64_t total_work(const cuda::TileOrderShape& s, const std::vector<int32_t>& work) {
    int64_t total = 0;
    for (int32_t b = 0; b < s.batch; ++b)
        for (int32_t h = 0; h < s.heads; ++h)
            for (int32_t block = 0; block < s.blocks; ++block) total += work_of(s, work, b, h, block);
    return total;
}

}  // namespace flashmask::testing
