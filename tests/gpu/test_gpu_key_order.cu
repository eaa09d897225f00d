// The device's key sort (cuda::SortedKeys, src/cuda/common/key_order.cu) must give the host
// twin's order and permuted mask (sorted_key_order(), mask.hpp) element for element: both apply
// the rule of flashmask/key_order.hpp, a total order, so any difference is a device-side bug.
// Hostile masks of every layout (values outside [0, Nq], start > end), Nk across and inside a
// window (1, 1023, 1025, 2500), mask heads 1 and Hk.
#include <random>
#include <string>
#include <vector>

#include "cuda/common/key_order.cuh"
#include "flashmask/mask.hpp"
#include "gpu_test_util.hpp"
#include "test_mask_util.hpp"
#include "test_util.hpp"

namespace flashmask {
namespace {

using testing::DeviceBuffer;

void expect_device_sort_matches_host(const testing::IndexLayout& layout, int32_t nq, int32_t nk, int32_t mask_heads,
                                     std::mt19937_64& rng) {
    constexpr int32_t kBatch = 2, kQueryHeads = 4, kKvHeads = 2;
    const std::string what = std::string(layout.causal ? "causal" : "not causal") + " C=" + std::to_string(layout.slots) +
                             " Nq=" + std::to_string(nq) + " Nk=" + std::to_string(nk) + " Hm=" + std::to_string(mask_heads);
    testing::IndexTensor indices(kBatch, mask_heads, nk, layout.slots, rng);
    testing::fill_hostile(indices, nq, rng);
    MaskView mask = make_mask_view(indices.view(), layout.causal, nq, nk, kQueryHeads);
    const SortedKeyOrder host = sorted_key_order(mask, kBatch, mask_heads);

    DeviceBuffer<int32_t> device_indices(indices.storage);
    mask.indices = device_indices.get();
    AttentionProblem p;
    p.batch = kBatch;
    p.nq = nq;
    p.nk = nk;
    p.q_heads = kQueryHeads;
    p.kv_heads = kKvHeads;
    p.mask = mask;
    const cuda::SortedKeys device(p, cuda::LaunchCondition{}, nullptr);
    FM_CUDA_CHECK(cudaDeviceSynchronize());

    std::vector<int32_t> order(host.order.size()), sorted_indices(host.indices.size());
    FM_CUDA_CHECK(cudaMemcpy(order.data(), device.order().order, order.size() * sizeof(int32_t), cudaMemcpyDeviceToHost));
    FM_CUDA_CHECK(cudaMemcpy(sorted_indices.data(), device.mask().indices, sorted_indices.size() * sizeof(int32_t),
                             cudaMemcpyDeviceToHost));
    for (std::size_t i = 0; i < order.size(); ++i)
        ASSERT_EQ(order[i], host.order[i]) << what << ": position " << i;
    for (std::size_t i = 0; i < sorted_indices.size(); ++i)
        ASSERT_EQ(sorted_indices[i], host.indices[i]) << what << ": index value " << i << " (position "
                                                      << i / kSortedMaskSlots << ", slot " << i % kSortedMaskSlots << ")";
    // The device view reads the same layout as the host's.
    const MaskView host_view = host.mask(make_mask_view(indices.view(), layout.causal, nq, nk, kQueryHeads));
    EXPECT_EQ(device.mask().layout, host_view.layout) << what;
    EXPECT_EQ(device.mask().causal, host_view.causal) << what;
    EXPECT_EQ(device.mask().stride_batch, host_view.stride_batch) << what;
    EXPECT_EQ(device.mask().stride_head, host_view.stride_head) << what;
}

TEST(GpuKeyOrder, DeviceSortMatchesHostOnHostileMasks) {
    FM_SKIP_WITHOUT_GPU();
    auto rng = testing::test_rng();
    const int32_t key_counts[] = {1, kKeyOrderWindow - 1, kKeyOrderWindow + 1, 2500};
    int n = 0;
    for (const testing::IndexLayout& layout : testing::kIndexLayouts)
        for (const int32_t nk : key_counts) {
            const int32_t nq = n % 2 ? 300 : 2049;
            expect_device_sort_matches_host(layout, nq, nk, n++ % 2 ? 1 : 2, rng);
        }
}

}  // namespace
}  // namespace flashmask
