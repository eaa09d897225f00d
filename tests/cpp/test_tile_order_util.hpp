// Checks of a heaviest-first CTA schedule (src/cuda/common/tile_order.hpp), shared by the CPU
// tests of its host twin and the GPU tests of the device order. Reads only host memory: a device
// order is copied back and put in a schedule with make_tile_schedule() first.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "cuda/common/tile_order.hpp"
#include "flashmask/mask.hpp"

namespace flashmask::testing {

// The work of block `block` of grid (batch, head), from `work` laid out [order batches, order
// heads, blocks] as host_block_work() returns it.
inline int32_t work_of(const cuda::TileOrderShape& s, const std::vector<int32_t>& work, int32_t batch, int32_t head,
                       int32_t block) {
    const int64_t order_batch = s.order_batches == 1 ? 0 : batch;
    const int64_t order_head = head / s.heads_per_order_head;
    return work[std::size_t((order_batch * s.order_heads + order_head) * s.blocks + block)];
}

// Walks every CTA of `schedule` and checks, failing the test with `what` on the first violation:
//   1. the mapping is a bijection onto every (batch, head, block);
//   2. each section covers kHeadsPerSection consecutive (batch, head) pairs (fewer in the last),
//      in rank-major order: every run of that many consecutive CTAs holds each pair once;
//   3. along one (batch, head), CTA by CTA, the work bin (work >> bucket_shift) never grows, and
//      blocks of one bin come in the tie order (the exact work when bucket_shift is 0).
inline void check_schedule(const cuda::TileOrderShape& s, const cuda::TileSchedule& schedule,
                           const std::vector<int32_t>& work, const std::string& what) {
    const int64_t pairs = int64_t(s.batch) * s.heads, ctas = s.ctas();
    ASSERT_EQ(schedule.pairs, pairs) << what;
    ASSERT_EQ(work.size(), std::size_t(s.order_pairs() * s.blocks)) << what;
    std::vector<uint8_t> seen(std::size_t(ctas), 0);
    struct Last { int32_t bin = 0, tie_position = -1; };
    std::vector<Last> last(static_cast<std::size_t>(pairs));
    const int64_t section_ctas = int64_t(cuda::kHeadsPerSection) * s.blocks;
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

        const int64_t section = cta / section_ctas, first_pair = section * cuda::kHeadsPerSection;
        const int64_t section_pairs = std::min<int64_t>(cuda::kHeadsPerSection, pairs - first_pair);
        ASSERT_EQ(pair, first_pair + (cta - section * section_ctas) % section_pairs)
            << what << ": CTA " << cta << " is not in rank-major order within section " << section;

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
