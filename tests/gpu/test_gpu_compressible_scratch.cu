// The backward's dQ accumulator in the device's compressible buffer
// (src/cuda/common/compressible_scratch.hpp): the buffer grows, is reported and given back; a
// lease on one stream waits on the device for the last lease's work on another; no lease while a
// stream captures a graph or while leases are switched off; and the backward within SPEC §5 of
// the reference with its accumulator in either kind of memory.
//
// Where the device or driver grants no compressible memory, the tests that need the buffer skip
// with that reason, and the backward's case runs the plain path twice.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "cuda/common/compressible_scratch.hpp"
#include "flashmask/api.hpp"
#include "gpu_attention_check.hpp"
#include "gpu_test_util.hpp"

namespace flashmask::testing {
namespace {

using cuda::CompressibleScratch;

constexpr std::size_t kMiB = std::size_t(1) << 20;
// Clock cycles the first stream's kernel waits before it writes: tens of milliseconds at any H100
// clock, far longer than the second stream's memset takes when it does not wait.
constexpr long long kHoldCycles = 100'000'000;
constexpr uint32_t kFirstWord = 0x11111111u, kSecondWord = 0x22222222u;
constexpr int kFillThreads = 256;

// Sets whether leases are granted, and restores the setting at scope exit.
class LeasesEnabled {
public:
    explicit LeasesEnabled(bool enabled) : before_(cuda::compressible_scratch_enabled()) {
        cuda::set_compressible_scratch_enabled(enabled);
    }
    ~LeasesEnabled() { cuda::set_compressible_scratch_enabled(before_); }
    LeasesEnabled(const LeasesEnabled&) = delete;
    LeasesEnabled& operator=(const LeasesEnabled&) = delete;

private:
    bool before_;
};

// Every thread waits kHoldCycles, then the block fills `words` with `value`.
__global__ void hold_then_fill(uint32_t* data, std::size_t words, uint32_t value, long long cycles) {
    const long long start = clock64();
    while (clock64() - start < cycles) {
    }
    for (std::size_t i = threadIdx.x; i < words; i += blockDim.x) data[i] = value;
}

// Whether this device and driver grant a lease at all (taken and dropped on the default stream).
bool compressible_memory_granted() {
    const LeasesEnabled on(true);
    const CompressibleScratch probe = CompressibleScratch::lease(kMiB, nullptr);
    return bool(probe);
}

#define FM_SKIP_WITHOUT_COMPRESSIBLE_MEMORY()                              \
    if (!compressible_memory_granted())                                    \
    GTEST_SKIP() << "this device or driver grants no compressible memory " \
                    "(CU_DEVICE_ATTRIBUTE_GENERIC_COMPRESSION_SUPPORTED, or cuMemCreate's granted properties)"

TEST(GpuCompressibleScratch, GrowsIsReportedAndReleased) {
    FM_SKIP_WITHOUT_GPU();
    FM_SKIP_WITHOUT_COMPRESSIBLE_MEMORY();
    const LeasesEnabled on(true);
    release_cuda_cache();
    EXPECT_EQ(cuda_cached_bytes(), 0u);
    const Stream stream;
    {
        const CompressibleScratch small = CompressibleScratch::lease(kMiB, stream.get());
        ASSERT_TRUE(small);
    }
    const std::size_t first = cuda_cached_bytes();
    EXPECT_GE(first, kMiB);
    const std::size_t larger = first + 3 * kMiB + 1;  // past the first buffer, off any granularity
    {
        const CompressibleScratch grown = CompressibleScratch::lease(larger, stream.get());
        ASSERT_TRUE(grown);
        // The whole of it is mapped: a store past the mapping would fault and fail the check.
        FM_CUDA_CHECK(cudaMemsetAsync(grown.as<void>(), 0, larger, stream.get()));
    }
    EXPECT_GE(cuda_cached_bytes(), larger);
    const std::size_t after_growth = cuda_cached_bytes();
    { const CompressibleScratch smaller = CompressibleScratch::lease(kMiB, stream.get()); }
    EXPECT_EQ(cuda_cached_bytes(), after_growth) << "a smaller lease must reuse the buffer, not shrink it";
    FM_CUDA_CHECK(cudaStreamSynchronize(stream.get()));
    release_cuda_cache();
    EXPECT_EQ(cuda_cached_bytes(), 0u);
}

// Stream A holds the buffer with a kernel that writes only after tens of milliseconds; stream B's
// lease must wait for it on the device, so B's later memset is what remains. Without the wait B
// (non-blocking, idle) writes first and A's words overwrite it.
TEST(GpuCompressibleScratch, LeaseOnAnotherStreamWaitsForTheLastUse) {
    FM_SKIP_WITHOUT_GPU();
    FM_SKIP_WITHOUT_COMPRESSIBLE_MEMORY();
    const LeasesEnabled on(true);
    const Stream first, second;
    const std::size_t words = 64 * 1024;
    const std::size_t bytes = words * sizeof(uint32_t);
    {
        const CompressibleScratch held = CompressibleScratch::lease(bytes, first.get());
        ASSERT_TRUE(held);
        hold_then_fill<<<1, kFillThreads, 0, first.get()>>>(held.as<uint32_t>(), words, kFirstWord, kHoldCycles);
        FM_CUDA_CHECK(cudaGetLastError());
    }
    std::vector<uint32_t> host(words, 0);
    {
        const CompressibleScratch next = CompressibleScratch::lease(bytes, second.get());
        ASSERT_TRUE(next);
        static_assert((kSecondWord & 0xFFu) * 0x01010101u == kSecondWord, "a memset byte repeated");
        FM_CUDA_CHECK(cudaMemsetAsync(next.as<void>(), int(kSecondWord & 0xFFu), bytes, second.get()));
        FM_CUDA_CHECK(cudaMemcpyAsync(host.data(), next.as<void>(), bytes, cudaMemcpyDeviceToHost, second.get()));
    }
    FM_CUDA_CHECK(cudaStreamSynchronize(second.get()));
    FM_CUDA_CHECK(cudaStreamSynchronize(first.get()));
    std::size_t first_words = 0, second_words = 0;
    for (const uint32_t word : host) {
        first_words += word == kFirstWord;
        second_words += word == kSecondWord;
    }
    EXPECT_EQ(second_words, words) << first_words
                                   << " words were the first stream's: the second lease did not wait for it";
}

TEST(GpuCompressibleScratch, NoLeaseWhileCapturingOrSwitchedOff) {
    FM_SKIP_WITHOUT_GPU();
    {
        const LeasesEnabled off(false);
        EXPECT_FALSE(CompressibleScratch::lease(kMiB, nullptr)) << "leases are switched off";
    }
    const LeasesEnabled on(true);
    const Stream stream;
    FM_CUDA_CHECK(cudaStreamBeginCapture(stream.get(), cudaStreamCaptureModeThreadLocal));
    const bool leased = bool(CompressibleScratch::lease(kMiB, stream.get()));
    cudaGraph_t graph = nullptr;
    FM_CUDA_CHECK(cudaStreamEndCapture(stream.get(), &graph));
    if (graph != nullptr) FM_CUDA_CHECK(cudaGraphDestroy(graph));
    EXPECT_FALSE(leased) << "a lease while the stream captures a graph would be shared with the graph's replays";
}

// The backward's dQ accumulator in compressible memory and in stream-ordered scratch: both within
// SPEC §5 (the checker's outputs are poisoned, and FLASHMASK_POISON_SCRATCH fills the lease too,
// so an accumulator the preprocess did not zero shows). Sizes that are not multiples of a tile,
// GQA, a mask with Partial tiles; the second size needs a larger buffer than the first.
TEST(GpuCompressibleScratch, BackwardWithTheAccumulatorInEitherMemory) {
    FM_SKIP_WITHOUT_GPU();
    auto rng = test_rng();
    const bool granted = compressible_memory_granted();
    for (const bool compressible : {true, false})
        for (const AttentionSizes sizes :
             {AttentionSizes{1, 300, 333, 8, 2, 128, 128}, AttentionSizes{2, 1000, 1000, 8, 2, 64, 64}}) {
            SCOPED_TRACE(std::string(compressible ? "compressible" : "plain") + " accumulator");
            const LeasesEnabled leases(compressible);
            if (!compressible) release_cuda_cache();
            GpuCase c{sizes, DType::BFloat16};
            TestMask mask = catalogue_test_mask("share_question", sizes, sizes.kv_heads, rng);
            check_gpu_attention(c, mask, rng);
            FM_CUDA_CHECK(cudaDeviceSynchronize());
            const std::size_t accumulator_bytes =
                std::size_t(sizes.batch) * sizes.q_heads * sizes.nq * sizes.head_dim * sizeof(float);
            if (compressible && granted)
                EXPECT_GE(cuda_cached_bytes(), accumulator_bytes) << "the backward did not take the buffer";
            else
                EXPECT_EQ(cuda_cached_bytes(), 0u) << "no lease was to be taken";
        }
}

// The same under compute-sanitizer, small: the accumulator in either memory.
TEST(GpuSanitizer, BackwardAccumulatorInEitherMemory) {
    FM_SKIP_WITHOUT_GPU();
    auto rng = test_rng();
    for (const bool compressible : {true, false}) {
        SCOPED_TRACE(std::string(compressible ? "compressible" : "plain") + " accumulator");
        const LeasesEnabled leases(compressible);
        GpuCase c{{1, 77, 130, 4, 2, 64, 64}, DType::Float16};
        c.reference = ReferenceKind::Float64Cpu;
        TestMask mask = catalogue_test_mask("causal_document", c.sizes, c.sizes.kv_heads, rng);
        check_gpu_attention(c, mask, rng);
    }
}

}  // namespace
}  // namespace flashmask::testing
