// The device block summaries must equal the host ones bit for bit: both run the same
// column_intervals()/fold() from tiles.hpp, so any difference is a device-side bug.
#include <random>
#include <vector>

#include "cuda/common/block_summaries.cuh"
#include "flashmask/mask.hpp"
#include "gpu_test_util.hpp"
#include "test_mask_util.hpp"
#include "test_util.hpp"

namespace flashmask {
namespace {

using testing::DeviceBuffer;

struct Case { bool causal; int slots; int nq, nk; int block_n; };

// Random hostile index tensors [B, Hm, Nk, C] with padded strides (the C++ tests' IndexTensor
// and fill_hostile): values outside [0, Nq], start > end, empty and fully masked columns.
void expect_device_matches_host(const Case& c, int32_t batch, int32_t mask_heads, std::mt19937_64& rng) {
    testing::IndexTensor indices(batch, mask_heads, c.nk, c.slots, rng);
    testing::fill_hostile(indices, c.nq, rng);
    MaskView mask = make_mask_view(indices.view(), c.causal, c.nq, c.nk, mask_heads);
    const std::vector<BlockSummary> host = block_summaries(mask, batch, mask_heads, c.block_n);

    DeviceBuffer<int32_t> device_indices(indices.storage);
    DeviceBuffer<BlockSummary> device_summaries(host.size());
    // Poison: every field of an entry the kernel leaves unwritten reads -1, which no summary
    // holds (bounds are clamped to [0, Nq] or the fold identity's INT32_MIN / INT32_MAX).
    FM_CUDA_CHECK(cudaMemset(device_summaries.get(), 0xFF, host.size() * sizeof(BlockSummary)));
    mask.indices = device_indices.get();
    cuda::compute_block_summaries(mask, batch, mask_heads, c.block_n, device_summaries.get(), nullptr);
    FM_CUDA_CHECK(cudaDeviceSynchronize());
    const std::vector<BlockSummary> device = device_summaries.to_host();

    ASSERT_EQ(device.size(), host.size());
    for (std::size_t i = 0; i < host.size(); ++i)
        ASSERT_TRUE(testing::same_summary(device[i], host[i])) << "summary " << i << " causal=" << c.causal << " C=" << c.slots
                                              << " Nq=" << c.nq << " Nk=" << c.nk << " B=" << batch;
}

TEST(GpuBlockSummaries, MatchHostOnHostileMasks) {
    FM_SKIP_WITHOUT_GPU();
    auto rng = testing::test_rng();
    const Case cases[] = {{true, 1, 17, 17, 16}, {true, 2, 100, 257, 64}, {false, 2, 257, 100, 32},
                          {false, 4, 1000, 1000, 128}, {false, 4, 1, 4099, 128}, {true, 1, 4099, 1, 64}};
    constexpr int32_t kBatch = 2, kMaskHeads = 3;
    for (const Case& c : cases) expect_device_matches_host(c, kBatch, kMaskHeads, rng);
}

// A batch of many short sequences: more (batch, mask head) pairs than a grid's y or z dimension
// holds (65535), every summary still computed.
TEST(GpuBlockSummaries, MatchHostPastGridDimensionLimits) {
    FM_SKIP_WITHOUT_GPU();
    auto rng = testing::test_rng();
    constexpr int32_t kGridYZLimit = 65535;
    constexpr int32_t kBatch = kGridYZLimit + 2, kMaskHeads = 2;
    expect_device_matches_host({true, 2, 7, 9, 4}, kBatch, kMaskHeads, rng);
}

}  // namespace
}  // namespace flashmask
