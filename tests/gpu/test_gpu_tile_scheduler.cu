// The device tile order (src/cuda/common/tile_scheduler.cuh) against its host twin
// (tile_order.hpp, itself checked in tests/cpp/test_tile_order.cpp):
//   * compute_tile_order() writes the very work values, order and heavy prefix R of the host twin,
//     for every mask layout (MaskLayout::None included, which the launchers never sort), both
//     axes, block counts from 1 to 65536, work values beyond the histogram (bucketed), slot
//     counts from 1 to 2^30, and the catalogue at the benchmark's 8K with an H100's 264 slots;
//   * TileScheduler, as the launchers build it, gives a schedule that is a bijection: the heavy
//     prefix rank-major over all (batch, head) pairs, then sections of heads_per_section pairs,
//     rank-major, each head's blocks heaviest first (sections of 1, 3 and kMaxHeadsPerSection
//     pairs, paired with the slot counts);
//   * resident_block_slots() counts at least one CTA per SM, within the SM's limits;
//   * the same under CUDA graph capture, replayed twice;
//   * where the order kernel computes the block summaries itself (the forward's query-block order
//     of a mask with an index tensor), the summaries, order and R are the same again.
// Outputs are poisoned first: an entry the kernel leaves unwritten reads -1 (R: -1 too, which
// the kernel's zeroing and atomicMax must overwrite).
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "cuda/common/tile_scheduler.cuh"
#include "cuda/common/shared_memory.hpp"
#include "cuda/common/workspace.cuh"
#include "gpu_test_util.hpp"
#include "test_cpu_common.hpp"
#include "test_tile_order_util.hpp"

namespace flashmask {
namespace {

using cuda::TileAxis;
using cuda::TileOrderShape;
using testing::AttentionSizes;
using testing::Heads;
using testing::DeviceBuffer;
using testing::TestMask;

// A TestMask's index tensor on the device, with the MaskView the kernels read.
struct DeviceIndices {
    std::optional<DeviceBuffer<int32_t>> indices;
    MaskView view;

    DeviceIndices(TestMask& mask, const AttentionSizes& s) : view(mask.mask_view(s)) {
        if (!mask.indices) return;
        indices.emplace(mask.indices->storage);
        view.indices = indices->get();
    }
};

// CTA slots: an H100's 132 SMs x 2 resident CTAs, and the extremes (1: nothing heavy; 2^30:
// nearly everything with work). Each with its own section size (the heavy prefix's threshold
// scales with both): the launchers' largest at the H100's slots, 3 (sections that do not divide
// the pairs) and 1 (a section per head, the backward's at 32K) at the extremes.
constexpr int32_t kH100Slots = 132 * 2;
struct SlotsAndSection {
    int32_t cta_slots, heads_per_section;
};
constexpr SlotsAndSection kCtaSlots[] = {{1, 3}, {kH100Slots, cuda::kMaxHeadsPerSection}, {1 << 30, 1}};

struct HostOrder {
    std::vector<int32_t> work, order;
    int32_t heavy_ranks = 0;
};

HostOrder host_order(const TileOrderShape& shape, const MaskView& host_view, int32_t block_n) {
    HostOrder h;
    h.work = cuda::host_block_work(shape, block_summaries(host_view, shape.order_batches, shape.summary_heads, block_n));
    h.order = cuda::host_tile_order(shape, h.work);
    h.heavy_ranks = cuda::host_heavy_prefix_ranks(shape, h.work, h.order);
    return h;
}

int32_t device_int(const int32_t* value) {
    int32_t host = 0;
    FM_CUDA_CHECK(cudaMemcpy(&host, value, sizeof(int32_t), cudaMemcpyDeviceToHost));
    return host;
}

std::string describe(const std::string& mask, const AttentionSizes& s, int32_t mask_heads, TileAxis axis,
                     int32_t block_m, int32_t block_n) {
    return mask + " " + s.describe() + " Hm=" + std::to_string(mask_heads) +
           (axis == TileAxis::QueryBlocks ? " query" : " key") + " blocks " + std::to_string(block_m) + "x" +
           std::to_string(block_n);
}

// One mask, one axis, one tile shape, one slot count and section size: the kernel's work, order
// and R equal the host twin's, and the TileScheduler's schedule passes check_schedule().
void check_device_order(TestMask& mask, const AttentionSizes& s, int32_t mask_heads, TileAxis axis, int32_t block_m,
                        int32_t block_n, SlotsAndSection slots) {
    const std::string what = describe(mask.name, s, mask_heads, axis, block_m, block_n) + " slots " +
                             std::to_string(slots.cta_slots) + " section " + std::to_string(slots.heads_per_section);
    const DeviceIndices device(mask, s);
    const MaskView host_view = mask.mask_view(s);
    TileOrderShape shape = cuda::make_tile_order_shape(host_view, s.batch, s.q_heads, s.kv_heads, axis, block_m,
                                                       block_n, slots.cta_slots);
    shape.heads_per_section = slots.heads_per_section;  // as plan_scheduled_launch() sets it
    const HostOrder expected = host_order(shape, host_view, block_n);
    const cuda::BlockSummaries summaries(device.view, s.batch, s.q_heads, block_n, nullptr);

    // The kernel itself, whatever the layout.
    const std::size_t entries = expected.order.size();
    DeviceBuffer<int32_t> order(entries), workspace(std::size_t(cuda::tile_order_workspace(shape)));
    order.poison();
    workspace.poison();
    // The totals (the key order's WorkComparison: tiles, their pairs, least pairs) start from
    // non-zero values: the kernel adds.
    const std::vector<unsigned long long> totals_start = {7, 11, 13};
    DeviceBuffer<unsigned long long> totals(totals_start.size());
    FM_CUDA_CHECK(cudaMemcpy(totals.get(), totals_start.data(), sizeof(unsigned long long) * totals_start.size(),
                             cudaMemcpyHostToDevice));
    const cuda::OrderTotals order_totals{totals.get(), totals.get() + 1, totals.get() + 2, device.view};
    cuda::compute_tile_order(shape, summaries.table(), order.get(), workspace.get(), order_totals, nullptr);
    FM_CUDA_CHECK(cudaDeviceSynchronize());
    unsigned long long expected_tiles = 0;
    for (const int32_t w : expected.work) expected_tiles += static_cast<unsigned long long>(w);
    const std::vector<unsigned long long> device_totals = totals.to_host();
    ASSERT_EQ(device_totals.at(0), totals_start[0] + expected_tiles) << what << ": total work";
    ASSERT_EQ(device_totals.at(1), totals_start[1] + expected_tiles * static_cast<unsigned long long>(block_m) *
                                                         static_cast<unsigned long long>(block_n))
        << what << ": the tiles' pairs";
    // The least pairs: the window count where the order kernel can hold its windows, else the
    // visible pairs (both paths run over kTileShapes).
    const unsigned long long least_pairs =
        cuda::window_bound_fits(shape, block_n)
            ? cuda::host_least_window_tiles(shape, host_view, block_n) * static_cast<unsigned long long>(block_m) *
                  static_cast<unsigned long long>(block_n)
            : cuda::host_order_visible_pairs(shape, host_view);
    ASSERT_EQ(device_totals.at(2), totals_start[2] + least_pairs) << what << ": least pairs";
    const std::vector<int32_t> device_workspace = workspace.to_host(), device_order = order.to_host();
    for (std::size_t i = 0; i < entries; ++i) {
        ASSERT_EQ(device_workspace[i], expected.work[i]) << what << ": work of entry " << i << " (pair " << i / shape.blocks
                                                    << ", block " << i % shape.blocks << ")";
        ASSERT_EQ(device_order[i], expected.order[i]) << what << ": order entry " << i << " (pair "
                                                      << i / shape.blocks << ", rank " << i % shape.blocks << ")";
    }
    ASSERT_EQ(device_workspace.at(entries), expected.heavy_ranks) << what << ": heavy prefix R";

    // The scheduler as a kernel launch gets it: from the planned shape, as the launchers build it,
    // or from the sizes (sections of kMaxHeadsPerSection).
    std::optional<cuda::TileScheduler> built;
    if (slots.heads_per_section == cuda::kMaxHeadsPerSection)
        built.emplace(device.view, s.batch, s.q_heads, s.kv_heads, axis, block_m, summaries.table(), slots.cta_slots,
                      nullptr);
    else
        built.emplace(device.view, shape, summaries.table(), nullptr);
    const cuda::TileScheduler& tiles = *built;
    FM_CUDA_CHECK(cudaDeviceSynchronize());
    const bool sorted = host_view.layout != MaskLayout::None && shape.ctas() > 0;
    ASSERT_EQ(tiles.order() != nullptr, sorted) << what;
    ASSERT_EQ(tiles.heavy_ranks() != nullptr, sorted) << what;
    ASSERT_EQ(tiles.schedule().heavy_ranks, tiles.heavy_ranks()) << what;
    cuda::TileSchedule host_schedule = tiles.schedule();
    std::vector<int32_t> scheduled_order;
    int32_t scheduled_heavy_ranks = 0;
    if (sorted) {
        scheduled_order.resize(entries);
        FM_CUDA_CHECK(cudaMemcpy(scheduled_order.data(), tiles.order(), entries * sizeof(int32_t), cudaMemcpyDeviceToHost));
        ASSERT_EQ(scheduled_order, expected.order) << what;
        scheduled_heavy_ranks = device_int(tiles.heavy_ranks());
        ASSERT_EQ(scheduled_heavy_ranks, expected.heavy_ranks) << what << ": TileScheduler's R";
        host_schedule.order = scheduled_order.data();
        host_schedule.heavy_ranks = &scheduled_heavy_ranks;
    }
    testing::check_schedule(shape, host_schedule, expected.work, what);
    if (::testing::Test::HasFatalFailure()) return;

    // Where the order kernel computes the summaries too (the forward's one-launch preprocessing):
    // into a poisoned table, the host's summaries, and the same order and R.
    if (!cuda::TileScheduler::computes_summaries(device.view, shape)) return;
    const cuda::BlockSummaries deferred(device.view, s.batch, s.q_heads, block_n, nullptr,
                                        cuda::BlockSummaries::SummaryFill::ByTileOrder);
    const std::vector<BlockSummary> host_summaries =
        block_summaries(host_view, shape.order_batches, shape.summary_heads, block_n);
    // Every field of an entry left unwritten reads -1, which no summary holds.
    FM_CUDA_CHECK(cudaMemset(deferred.writable(), 0xFF, host_summaries.size() * sizeof(BlockSummary)));
    const cuda::SummariesToCompute computed{device.view, deferred.writable()};
    const cuda::TileScheduler fused(device.view, shape, deferred.table(), nullptr, {}, &computed);
    FM_CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<BlockSummary> device_summaries(host_summaries.size());
    FM_CUDA_CHECK(cudaMemcpy(device_summaries.data(), deferred.writable(),
                             host_summaries.size() * sizeof(BlockSummary), cudaMemcpyDeviceToHost));
    for (std::size_t i = 0; i < host_summaries.size(); ++i)
        ASSERT_TRUE(testing::same_summary(device_summaries[i], host_summaries[i]))
            << what << ": summary " << i << " computed by the order kernel";
    std::vector<int32_t> fused_order(entries);
    FM_CUDA_CHECK(cudaMemcpy(fused_order.data(), fused.order(), entries * sizeof(int32_t), cudaMemcpyDeviceToHost));
    ASSERT_EQ(fused_order, expected.order) << what << " (summaries computed by the order kernel)";
    ASSERT_EQ(device_int(fused.heavy_ranks()), expected.heavy_ranks) << what << " (summaries computed by the order kernel)";
}

// One and several sections, B * H not a multiple of the section sizes, GQA, mask heads 1, Hk, Hq.
constexpr Heads kHeads[] = {{1, 1, 1, 1}, {2, 6, 2, 6}, {3, 6, 2, 2}, {2, 5, 5, 1}, {1, 16, 2, 16}};
// The forward's and deterministic dQ kernel's tile (128 x 64), the dK/dV kernel's (64 x 128), small
// tiles for more blocks.
constexpr int32_t kTileShapes[][2] = {{128, 64}, {64, 128}, {16, 16}};

TEST(GpuTileScheduler, CatalogueMasksMatchHost) {
    FM_SKIP_WITHOUT_GPU();
    auto rng = testing::test_rng();
    const std::vector<std::string> masks = {"full",           "causal",          "causal_blockwise",
                                            "share_question", "causal_document", "sliding_window",
                                            "qk_sparse",      "random_eviction", "global_sliding_window"};
    const AttentionSizes sizes[] = {{0, 17, 17, 0, 0, 8, 8}, {0, 1000, 1000, 0, 0, 8, 8}, {0, 300, 1100, 0, 0, 8, 8}};
    for (const std::string& name : masks)
        for (const AttentionSizes& base : sizes)
            for (const Heads& h : kHeads) {
                const AttentionSizes s = h.applied_to(base);
                TestMask mask = testing::catalogue_test_mask(name, s, h.mask_heads, rng);
                const int32_t mask_heads = mask.indices ? h.mask_heads : 1;
                for (const auto& tile : kTileShapes)
                    for (TileAxis axis : {TileAxis::QueryBlocks, TileAxis::KeyBlocks})
                        for (const SlotsAndSection& slots : kCtaSlots) {
                            check_device_order(mask, s, mask_heads, axis, tile[0], tile[1], slots);
                            if (HasFatalFailure()) return;
                        }
            }
}

TEST(GpuTileScheduler, HostileMasksMatchHost) {
    FM_SKIP_WITHOUT_GPU();
    auto rng = testing::test_rng();
    const AttentionSizes s{2, 300, 129, 6, 2, 8, 8};
    for (const testing::IndexLayout& layout : testing::kIndexLayouts)
        for (int32_t mask_heads : {1, 2, 6}) {
            TestMask mask = testing::random_test_mask(layout.causal, layout.slots, true, s, mask_heads, rng);
            for (TileAxis axis : {TileAxis::QueryBlocks, TileAxis::KeyBlocks})
                for (const SlotsAndSection& slots : kCtaSlots) {
                    check_device_order(mask, s, mask_heads, axis, 16, 16, slots);
                    if (HasFatalFailure()) return;
                }
        }
}

// Block counts of the extremes: 8 blocks, and 65536 (32 chunks of the kernel's staged scatter);
// work beyond the histogram on both axes (8193 key blocks; 3 x 64 query blocks summed over 64
// query heads per KV head), so that the kernel's bins hold two or more work values.
TEST(GpuTileScheduler, ExtremeBlockCountsMatchHost) {
    FM_SKIP_WITHOUT_GPU();
    auto rng = testing::test_rng();
    struct Case {
        const char* mask;
        AttentionSizes sizes;
        int32_t mask_heads;
        TileAxis axis;
        int32_t block_m, block_n;
    };
    const Case cases[] = {
        {"causal_blockwise", {2, 8 * 128, 8 * 64, 3, 3, 8, 8}, 3, TileAxis::QueryBlocks, 128, 64},
        {"causal_blockwise", {1, 65536 * 16, 64, 2, 1, 8, 8}, 1, TileAxis::QueryBlocks, 16, 64},
        {"share_question", {1, 64, 65536 * 16, 1, 1, 8, 8}, 1, TileAxis::KeyBlocks, 64, 16},
        {"causal_blockwise", {2, 200, (cuda::kWorkBuckets + 1) * 16, 2, 1, 8, 8}, 2, TileAxis::QueryBlocks, 16, 16},
        {"causal_document", {1, 3 * 64 * 16, 300, 64, 1, 8, 8}, 64, TileAxis::KeyBlocks, 16, 64},
    };
    for (const Case& c : cases) {
        TestMask mask = testing::catalogue_test_mask(c.mask, c.sizes, c.mask_heads, rng);
        for (const SlotsAndSection& slots : kCtaSlots) {
            check_device_order(mask, c.sizes, c.mask_heads, c.axis, c.block_m, c.block_n, slots);
            if (HasFatalFailure()) return;
        }
    }
}

// The catalogue at the benchmark's N = 8K, B 2, H 32 (one mask head, a mask per batch entry),
// with the kernels' tiles on both axes, an H100's 264 slots and the launchers' sections: where R
// matters.
TEST(GpuTileScheduler, CatalogueAt8KMatchesHost) {
    FM_SKIP_WITHOUT_GPU();
    auto rng = testing::test_rng();
    const AttentionSizes s{2, 8192, 8192, 32, 32, 128, 128};
    constexpr int32_t kForwardTile[2] = {128, 64}, kDkDvTile[2] = {64, 128};
    for (const std::string& name : catalogue_names()) {
        TestMask mask = testing::catalogue_test_mask(name, s, 1, rng);
        check_device_order(mask, s, 1, TileAxis::QueryBlocks, kForwardTile[0], kForwardTile[1],
                           {kH100Slots, testing::planned_heads_per_section(s, TileAxis::QueryBlocks)});
        if (HasFatalFailure()) return;
        check_device_order(mask, s, 1, TileAxis::KeyBlocks, kDkDvTile[0], kDkDvTile[1],
                           {kH100Slots, testing::planned_heads_per_section(s, TileAxis::KeyBlocks)});
        if (HasFatalFailure()) return;
    }
}

// KeyOrder::Automatic's early gate (sorted_order_may_pay(), key_order_choice.hpp): the kernels
// that build the sorted order, given the condition of its launches, write nothing and add nothing
// when the natural order's counts rule the sorted order out (least pairs 9 in 10 tile pairs is
// the bound), and work as unconditioned ones when they do not. Outputs poisoned first.
TEST(GpuTileScheduler, SortedOrderKernelsReturnWhenItCannotPay) {
    FM_SKIP_WITHOUT_GPU();
    auto rng = testing::test_rng();
    const AttentionSizes s{2, 700, 900, 4, 2, 64, 64};
    TestMask mask = testing::catalogue_test_mask("random_eviction", s, 1, rng);
    const DeviceIndices device(mask, s);
    const MaskView host_view = mask.mask_view(s);
    constexpr int32_t kBlockM = 64, kBlockN = 128;
    const TileOrderShape shape = cuda::make_tile_order_shape(host_view, s.batch, s.q_heads, s.kv_heads,
                                                             TileAxis::KeyBlocks, kBlockM, kBlockN, kH100Slots);
    const HostOrder expected = host_order(shape, host_view, kBlockN);
    const std::vector<BlockSummary> host_summaries =
        block_summaries(host_view, shape.order_batches, shape.summary_heads, kBlockN);
    for (const bool may_pay : {false, true}) {
        const std::string what = may_pay ? "sorted order possible" : "sorted order ruled out";
        std::vector<unsigned long long> counters(cuda::kWorkCounters, 0);
        counters[cuda::kNaturalTilePairs] = 10;
        counters[cuda::kLeastSortedPairs] = may_pay ? 9 : 10;
        ASSERT_EQ(cuda::LaunchCondition({counters.data(), true}).sorted_order_possible(), may_pay) << what;
        DeviceBuffer<unsigned long long> device_counters(counters.size());
        FM_CUDA_CHECK(cudaMemcpy(device_counters.get(), counters.data(), sizeof(unsigned long long) * counters.size(),
                                 cudaMemcpyHostToDevice));
        const cuda::LaunchCondition condition{device_counters.get(), true};

        // The summaries kernel, into a poisoned table (-1 in every field, which no summary holds).
        DeviceBuffer<BlockSummary> summaries(host_summaries.size());
        FM_CUDA_CHECK(cudaMemset(summaries.get(), 0xFF, host_summaries.size() * sizeof(BlockSummary)));
        cuda::compute_block_summaries(device.view, shape.order_batches, shape.summary_heads, kBlockN, summaries.get(),
                                      nullptr, condition);
        FM_CUDA_CHECK(cudaDeviceSynchronize());
        const std::vector<BlockSummary> device_summaries = summaries.to_host();
        for (std::size_t i = 0; i < host_summaries.size(); ++i) {
            BlockSummary poisoned;
            std::memset(&poisoned, 0xFF, sizeof(poisoned));
            ASSERT_TRUE(testing::same_summary(device_summaries[i], may_pay ? host_summaries[i] : poisoned))
                << what << ": summary " << i;
        }

        // The tile order, from the host's summaries, adding to the sorted order's tile counter.
        const DeviceBuffer<BlockSummary> table_summaries(host_summaries);
        const cuda::SummaryTable device_table{table_summaries.get(), int64_t(shape.summary_heads) * shape.key_blocks,
                                              shape.key_blocks, kBlockN, shape.key_blocks};
        DeviceBuffer<int32_t> order(expected.order.size()), workspace(std::size_t(cuda::tile_order_workspace(shape)));
        order.poison();
        const cuda::OrderTotals totals{device_counters.get() + cuda::kSortedTiles, nullptr, nullptr, device.view};
        cuda::compute_tile_order(shape, device_table, order.get(), workspace.get(), totals, nullptr, nullptr,
                                 condition);
        FM_CUDA_CHECK(cudaDeviceSynchronize());
        unsigned long long expected_tiles = 0;
        for (const int32_t w : expected.work) expected_tiles += static_cast<unsigned long long>(w);
        ASSERT_EQ(device_counters.to_host().at(cuda::kSortedTiles), may_pay ? expected_tiles : 0) << what;
        const std::vector<int32_t> device_order = order.to_host();
        for (std::size_t i = 0; i < device_order.size(); ++i)
            ASSERT_EQ(device_order[i], may_pay ? expected.order[i] : -1) << what << ": order entry " << i;
    }
}

// A kernel for the occupancy query alone (never launched): its resident CTAs per SM are bounded
// by its threads and its dynamic shared memory.
constexpr int kSlotProbeThreads = 256;
constexpr int kSlotProbeSmemBytes = 64 * 1024;  // above the default 48 KB: needs the opt-in first
__global__ void __launch_bounds__(kSlotProbeThreads) slot_probe_kernel(int32_t* out) {
    extern __shared__ int32_t probe_smem[];
    probe_smem[threadIdx.x] = int32_t(threadIdx.x);
    __syncthreads();
    out[threadIdx.x] = probe_smem[kSlotProbeThreads - 1 - threadIdx.x];
}

// resident_block_slots(): SMs x resident CTAs, at least one per SM, no more than the SM's threads
// and shared memory allow; divided by the CTAs per block.
TEST(GpuTileScheduler, ResidentBlockSlots) {
    FM_SKIP_WITHOUT_GPU();
    cuda::allow_shared_memory(slot_probe_kernel, kSlotProbeSmemBytes);
    int device = 0, threads_per_sm = 0, smem_per_sm = 0;
    FM_CUDA_CHECK(cudaGetDevice(&device));
    const int32_t sms = cuda::current_device_sms();
    FM_CUDA_CHECK(cudaDeviceGetAttribute(&threads_per_sm, cudaDevAttrMaxThreadsPerMultiProcessor, device));
    FM_CUDA_CHECK(cudaDeviceGetAttribute(&smem_per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device));
    const int32_t slots = cuda::resident_block_slots(slot_probe_kernel, kSlotProbeThreads, kSlotProbeSmemBytes, 1);
    EXPECT_GE(slots, sms);
    EXPECT_LE(slots, sms * (threads_per_sm / kSlotProbeThreads));
    EXPECT_LE(slots, sms * (smem_per_sm / kSlotProbeSmemBytes));
    EXPECT_EQ(cuda::resident_block_slots(slot_probe_kernel, kSlotProbeThreads, kSlotProbeSmemBytes, 2), slots / 2);
    EXPECT_THROW(cuda::resident_block_slots(slot_probe_kernel, kSlotProbeThreads, kSlotProbeSmemBytes, 0), Error);
}

// The summaries and the order built inside a stream capture (stream-ordered scratch: memory
// nodes, no synchronisation; R zeroed by a memset node), then the graph replayed twice, each time
// into poisoned buffers. The occupancy query the launchers make for cta_slots runs inside the
// capture too, as in a captured forward, and must give what it gives outside.
TEST(GpuTileScheduler, CudaGraphCapture) {
    FM_SKIP_WITHOUT_GPU();
    auto rng = testing::test_rng();
    const AttentionSizes s{2, 1000, 1000, 6, 2, 8, 8};
    constexpr int32_t kBlockM = 128, kBlockN = 64;
    TestMask mask = testing::catalogue_test_mask("causal_blockwise", s, 6, rng);
    const DeviceIndices device(mask, s);
    const MaskView host_view = mask.mask_view(s);
    const TileOrderShape shape = cuda::make_tile_order_shape(host_view, s.batch, s.q_heads, s.kv_heads,
                                                             TileAxis::QueryBlocks, kBlockM, kBlockN, kH100Slots);
    const HostOrder expected = host_order(shape, host_view, kBlockN);
    ASSERT_GT(expected.heavy_ranks, 0) << "8 query blocks x 8 pairs per section against 264 slots: a heavy prefix";
    DeviceBuffer<int32_t> result(expected.order.size()), heavy_ranks(1);

    cuda::allow_shared_memory(slot_probe_kernel, kSlotProbeSmemBytes);
    const int32_t slots = cuda::resident_block_slots(slot_probe_kernel, kSlotProbeThreads, kSlotProbeSmemBytes, 1);
    int32_t captured_slots = 0;
    cudaStream_t stream = nullptr;
    FM_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    FM_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    {
        captured_slots = cuda::resident_block_slots(slot_probe_kernel, kSlotProbeThreads, kSlotProbeSmemBytes, 1);
        const cuda::BlockSummaries summaries(device.view, s.batch, s.q_heads, kBlockN, stream);
        const cuda::TileScheduler tiles(device.view, s.batch, s.q_heads, s.kv_heads, TileAxis::QueryBlocks, kBlockM,
                                        summaries.table(), kH100Slots, stream);
        FM_CUDA_CHECK(cudaMemcpyAsync(result.get(), tiles.order(), expected.order.size() * sizeof(int32_t),
                                      cudaMemcpyDeviceToDevice, stream));
        FM_CUDA_CHECK(cudaMemcpyAsync(heavy_ranks.get(), tiles.heavy_ranks(), sizeof(int32_t), cudaMemcpyDeviceToDevice,
                                      stream));
    }  // the scratch is freed inside the capture: free nodes
    FM_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
    EXPECT_EQ(captured_slots, slots);
    FM_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    for (int replay = 0; replay < 2; ++replay) {
        result.poison();
        heavy_ranks.poison();
        FM_CUDA_CHECK(cudaGraphLaunch(exec, stream));
        FM_CUDA_CHECK(cudaStreamSynchronize(stream));
        EXPECT_EQ(result.to_host(), expected.order) << "replay " << replay;
        EXPECT_EQ(heavy_ranks.to_host().at(0), expected.heavy_ranks) << "replay " << replay;
    }
    FM_CUDA_CHECK(cudaGraphExecDestroy(exec));
    FM_CUDA_CHECK(cudaGraphDestroy(graph));
    FM_CUDA_CHECK(cudaStreamDestroy(stream));
}

}  // namespace
}  // namespace flashmask
