// The device block summaries must equal the host ones bit for bit: both run the same
// column_intervals()/fold() from tiles.hpp, so any difference is a device-side bug.
#include <cstring>
#include <random>

#include "cuda/common/block_summaries.cuh"
#include "flashmask/mask.hpp"
#include "gpu_test_util.hpp"
#include "test_util.hpp"

namespace flashmask {
namespace {

using testing::DeviceBuffer;

bool same(const BlockSummary& a, const BlockSummary& b) { return std::memcmp(&a, &b, sizeof a) == 0; }

// Random hostile index tensors [B, Hm, Nk, C]: values outside [0, Nq], start > end, empty columns.
TEST(GpuBlockSummaries, MatchHostOnHostileMasks) {
    FM_SKIP_WITHOUT_GPU();
    auto rng = testing::test_rng();
    struct Case { bool causal; int slots; int nq, nk; int block_n; };
    const Case cases[] = {{true, 1, 17, 17, 16}, {true, 2, 100, 257, 64}, {false, 2, 257, 100, 32},
                          {false, 4, 1000, 1000, 128}, {false, 4, 1, 4099, 128}, {true, 1, 4099, 1, 64}};
    for (const Case& c : cases) {
        const int batch = 2, heads = 3;
        std::uniform_int_distribution<int32_t> value(-3, c.nq + 3);
        std::vector<int32_t> indices(std::size_t(batch) * heads * c.nk * c.slots);
        for (auto& v : indices) v = value(rng);
        MaskView mask;
        mask.layout = mask_layout_for(c.causal, c.slots);
        mask.causal = c.causal;
        mask.nq = c.nq;
        mask.nk = c.nk;
        mask.stride_slot = 1;
        mask.stride_column = c.slots;
        mask.stride_head = int64_t(c.nk) * c.slots;
        mask.stride_batch = mask.stride_head * heads;

        mask.indices = indices.data();
        const std::vector<BlockSummary> host = block_summaries(mask, batch, heads, c.block_n);

        DeviceBuffer<int32_t> device_indices(indices);
        DeviceBuffer<BlockSummary> device_summaries(host.size());
        mask.indices = device_indices.get();
        cuda::compute_block_summaries(mask, batch, heads, c.block_n, device_summaries.get(), nullptr);
        FM_CUDA_CHECK(cudaDeviceSynchronize());
        const std::vector<BlockSummary> device = device_summaries.to_host();

        ASSERT_EQ(device.size(), host.size());
        for (std::size_t i = 0; i < host.size(); ++i)
            ASSERT_TRUE(same(device[i], host[i])) << "summary " << i << " causal=" << c.causal << " C=" << c.slots
                                                  << " Nq=" << c.nq << " Nk=" << c.nk;
    }
}

}  // namespace
}  // namespace flashmask
