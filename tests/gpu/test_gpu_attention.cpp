// The CUDA path through the public API (flashmask::forward / backward on CUDA TensorViews)
// against the float64 CPU reference (small cases) or the float32 GPU reference (large ones),
// SPEC §5: every catalogue mask, bfloat16 and float16, D = 64 / 128 / 256, GQA (Hq / Hk = 4),
// mask heads 1, Hk and Hq, sizes 1, 17, 1000, 4099 and 8192, Nq != Nk with the bottom-right
// causal diagonal, transposed BHSD and padded BSHD views, rows off 16-byte addresses (copied
// through scratch in both directions, gradients too), explicit scales, hostile masks, the
// deterministic backward, the stream argument, the sorted key order and CUDA errors. Each case's dtype, head dim, layout and scale
// rotate with the mask kind, so that every combination is met without running all of them.
//
// The *Sanitizer* tests are the small cases for compute-sanitizer (see CMakeLists.txt).
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <stdexcept>
#include <string>
#include <thread>

#include "cuda/common/device.hpp"
#include "cuda/sm80/small_backward_bounds.hpp"
#include "cuda/sm80/tail_split.hpp"
#include "gpu_attention_check.hpp"
#include "gpu_reference.hpp"

namespace flashmask::testing {
namespace {

constexpr int32_t kHeadDims[] = {64, 128, 256};
constexpr DType kHalfDtypes[] = {DType::BFloat16, DType::Float16};
constexpr int kHeadDimCount = 3, kDtypeCount = 2;

// An explicit scale other than the default (which is 1/8 .. 1/16 for these head dims).
float random_scale(std::mt19937_64& rng) { return std::uniform_real_distribution<float>(0.05f, 0.3f)(rng); }

// ---------------------------------------------------------------------------------------------
// Every catalogue mask (SPEC §3).
// ---------------------------------------------------------------------------------------------
class GpuCatalogue : public ::testing::TestWithParam<std::string> {
protected:
    // The kind's position in the catalogue: rotates dtype, head dim, layout and scale per kind.
    int kind_index() const {
        const std::vector<std::string>& names = catalogue_names();
        return int(std::find(names.begin(), names.end(), GetParam()) - names.begin());
    }
    TestMask mask_for(const AttentionSizes& s, int32_t mask_heads, std::mt19937_64& rng) const {
        return catalogue_test_mask(GetParam(), s, mask_heads, rng);
    }
    // Case number n of this kind: dtype, D, layout, scale and mask heads (1 or Hq) rotated.
    GpuCase rotated_case(int n, int32_t batch, int32_t nq, int32_t nk, std::mt19937_64& rng) const {
        const int r = kind_index() + n;
        const int32_t d = kHeadDims[r % kHeadDimCount];
        GpuCase c{{batch, nq, nk, kGqaGroup, 1, d, d}, kHalfDtypes[r % kDtypeCount]};
        c.layout = kLayouts[(r / 2) % std::size(kLayouts)];
        if ((r / 3) % 2 == 1) c.scale = random_scale(rng);
        return c;
    }
    static int32_t rotated_mask_heads(int n, const GpuCase& c) { return n % 2 ? 1 : c.sizes.q_heads; }
};

// Sizes 1 and 17 on both axes, float64 reference. A single query row gets 8 batch entries and
// 8 query heads (2 KV heads). With Di = rowsum(dO * O) its dQ and dK carried the rounding of O,
// one error shared by the whole row that the naive computation (rowsum(P * dP)) does not make:
// over 8 rows the error ratio to the naive one strayed past 2 for a few percent of draws (18
// failing tensors in 240 draws at B = 2, Hq = 4, on the tiled CPU path), and at B = 8, Hq = 8
// once (session 25, document, float16, D = 256). Problems of at most 64 query rows and 128 keys
// now run the float32 backward without tensor cores (small_backward.cuh), as the Nq = 1 cases
// here do; GpuAttention.SingleRowSixteenBitBackward draws the B = 2, Hq = 4 shape many times.
TEST_P(GpuCatalogue, SizesOneAndSeventeen) {
    FM_SKIP_WITHOUT_GPU();
    auto rng = test_rng();
    const int32_t extents[][2] = {{1, 1}, {1, 17}, {17, 1}, {17, 17}};
    constexpr int32_t kSingleRowBatch = 8, kSingleRowQueryHeads = 8;
    int n = 0;
    for (const auto& [nq, nk] : extents) {
        GpuCase c = rotated_case(n, 2, nq, nk, rng);
        if (nq == 1) {
            c.sizes.batch = kSingleRowBatch;
            c.sizes.q_heads = kSingleRowQueryHeads;
            c.sizes.kv_heads = kSingleRowQueryHeads / kGqaGroup;
        }
        TestMask mask = mask_for(c.sizes, rotated_mask_heads(n++, c), rng);
        check_gpu_attention(c, mask, rng);
    }
}

// D = 64, 128, 256 in both dtypes, Nq < Nk and Nq > Nk (not multiples of any tile), float64 reference.
TEST_P(GpuCatalogue, HeadDimsAndDtypes) {
    FM_SKIP_WITHOUT_GPU();
    auto rng = test_rng();
    int n = 0;
    for (const int32_t d : kHeadDims)
        for (const DType dtype : kHalfDtypes) {
            const bool wide = (kind_index() + n) % 2 == 0;
            GpuCase c{{1, wide ? 77 : 130, wide ? 130 : 77, kGqaGroup, 1, d, d}, dtype};
            c.layout = kLayouts[n % std::size(kLayouts)];
            if (n % 3 == 2) c.scale = random_scale(rng);
            TestMask mask = mask_for(c.sizes, rotated_mask_heads(n++, c), rng);
            check_gpu_attention(c, mask, rng);
        }
}

// 1000 x 1000 and 1000 x 1111 / 1111 x 1000 (causal masks: the bottom-right diagonal), float32
// GPU reference; the square case runs on a created stream.
TEST_P(GpuCatalogue, SizeThousandAndNqNotNk) {
    FM_SKIP_WITHOUT_GPU();
    auto rng = test_rng();
    const Stream stream;
    const int32_t extents[][2] = {{1000, 1000}, {1000, 1111}, {1111, 1000}};
    int n = 0;
    for (const auto& [nq, nk] : extents) {
        GpuCase c = rotated_case(n, 1, nq, nk, rng);
        if (n == 0) c.stream = stream.get();
        TestMask mask = mask_for(c.sizes, rotated_mask_heads(n++, c), rng);
        check_gpu_attention(c, mask, rng);
    }
}

TEST_P(GpuCatalogue, Size4099) {
    FM_SKIP_WITHOUT_GPU();
    auto rng = test_rng();
    GpuCase c = rotated_case(1, 1, 4099, 4099, rng);
    TestMask mask = mask_for(c.sizes, rotated_mask_heads(1, c), rng);
    check_gpu_attention(c, mask, rng);
}

TEST_P(GpuCatalogue, Size8192) {
    FM_SKIP_WITHOUT_GPU();
    auto rng = test_rng();
    GpuCase c = rotated_case(2, 1, 8192, 8192, rng);
    TestMask mask = mask_for(c.sizes, rotated_mask_heads(2, c), rng);
    check_gpu_attention(c, mask, rng);
}

// The sorted key order (src/cuda/common/key_order.cuh) forced on every kind: the kernels run the
// key-permuted problem, and the results must be those of the caller's keys. Odd sizes, Nq != Nk
// with the bottom-right diagonal, GQA with mask heads 1 and Hk, the deterministic backward;
// float64 reference for the small case, float32 GPU for the larger ones.
TEST_P(GpuCatalogue, SortedKeyOrder) {
    FM_SKIP_WITHOUT_GPU();
    auto rng = test_rng();
    const int32_t extents[][2] = {{77, 130}, {1000, 1111}, {2100, 2049}};
    int n = 0;
    for (const auto& [nq, nk] : extents) {
        GpuCase c = rotated_case(n, 2, nq, nk, rng);
        c.sizes.q_heads = 2 * kGqaGroup;
        c.sizes.kv_heads = 2;
        c.key_order = KeyOrder::Sorted;
        c.deterministic = n == 1;
        TestMask mask = mask_for(c.sizes, n % 2 ? 1 : c.sizes.kv_heads, rng);
        check_gpu_attention(c, mask, rng);
        ++n;
    }
}

INSTANTIATE_TEST_SUITE_P(EveryKind, GpuCatalogue, ::testing::ValuesIn(catalogue_names()),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

// ---------------------------------------------------------------------------------------------
// Index tensors of every layout, random and hostile; mask heads 1, Hk and Hq.
// ---------------------------------------------------------------------------------------------
TEST(GpuAttention, RandomIntervalsEveryLayoutAndMaskHeads) {
    FM_SKIP_WITHOUT_GPU();
    auto rng = test_rng();
    int n = 0;
    for (const IndexLayout layout : kIndexLayouts)
        for (const AttentionSizes sizes : {AttentionSizes{2, 97, 130, 8, 2, 64, 64}, AttentionSizes{1, 130, 97, 8, 2, 128, 128}}) {
            const int32_t mask_heads[] = {1, sizes.kv_heads, sizes.q_heads};
            GpuCase c{sizes, kHalfDtypes[n % kDtypeCount]};
            TestMask mask = random_test_mask(layout.causal, layout.slots, false, sizes, mask_heads[n++ % 3], rng);
            check_gpu_attention(c, mask, rng);
        }
}

// Values below 0 and above Nq, start > end, all-masked columns and rows, the int32 extremes: no
// fault, no NaN, and the results of the reference's literal reading of SPEC §2.
TEST(GpuAttention, HostileMasksGiveTheReferenceReading) {
    FM_SKIP_WITHOUT_GPU();
    auto rng = test_rng();
    for (const IndexLayout layout : kIndexLayouts)
        for (const AttentionSizes sizes : {AttentionSizes{2, 90, 110, 4, 2, 128, 128}, AttentionSizes{1, 300, 257, 4, 2, 64, 64}}) {
            TestMask mask = random_test_mask(layout.causal, layout.slots, true, sizes, sizes.kv_heads, rng);
            mask.indices->at(0, 0, 0, 0) = std::numeric_limits<int32_t>::min();
            mask.indices->at(sizes.batch - 1, 1, sizes.nk - 1, layout.slots - 1) = std::numeric_limits<int32_t>::max();
            for (const DType dtype : kHalfDtypes) {
                GpuCase c{sizes, dtype};
                c.reference = ReferenceKind::Float64Cpu;  // the literal reading, not column_intervals()
                check_gpu_attention(c, mask, rng);
            }
        }
}

// The same with the keys read in sorted order: random intervals of every layout, hostile values
// included (the sort reads them through column_intervals(), as the summaries do), mask heads 1,
// Hk and Hq (Hq with GQA cannot be sorted: one order per KV head; it must run in order).
TEST(GpuAttention, SortedKeyOrderRandomAndHostileMasks) {
    FM_SKIP_WITHOUT_GPU();
    auto rng = test_rng();
    int n = 0;
    for (const IndexLayout layout : kIndexLayouts)
        for (const bool hostile : {false, true}) {
            const AttentionSizes sizes{2, 97, 1100, 8, 2, 64, 64};
            const int32_t mask_heads[] = {1, sizes.kv_heads, sizes.q_heads};
            GpuCase c{sizes, kHalfDtypes[n % kDtypeCount]};
            c.key_order = KeyOrder::Sorted;
            c.reference = ReferenceKind::Float64Cpu;
            TestMask mask = random_test_mask(layout.causal, layout.slots, hostile, sizes, mask_heads[n++ % 3], rng);
            if (hostile) mask.indices->at(0, 0, 0, 0) = std::numeric_limits<int32_t>::min();
            check_gpu_attention(c, mask, rng);
        }
}

// A single 16-bit query row over few keys (B 2, Nq 1, Nk 17, Hq 4, Hk 1), many draws against the
// naive computation, in both backward modes. On the tiled kernels, Di = rowsum(dO * O) from the
// 16-bit O passed 2x the naive error in ~7 % of such draws (the SizesOneAndSeventeen note above),
// and Di from the rounded P and dP still in 1 of 480 (16-bit dS alone reaches an ulp of dQ here;
// bench/NOTES.md, session 26). Such problems run the float32 backward (small_backward.cuh), as
// the CPU path keeps P and dS in float: every draw should pass. Fresh inputs each draw; D and
// the dtype alternate.
TEST(GpuAttention, SingleRowSixteenBitBackward) {
    FM_SKIP_WITHOUT_GPU();
    auto rng = test_rng();
    constexpr int kDraws = 80;
    int n = 0;
    for (const char* name : {"document", "causal_document", "random_eviction"}) {
        for (int draw = 0; draw < kDraws; ++draw, ++n) {
            const int32_t head_dim = kHeadDims[n % kHeadDimCount];
            GpuCase c{{2, 1, 17, kGqaGroup, 1, head_dim, head_dim}, kHalfDtypes[(n / kHeadDimCount) % kDtypeCount]};
            c.deterministic = n % 4 == 3;  // both modes take the small backward here
            TestMask mask = catalogue_test_mask(name, c.sizes, c.sizes.q_heads, rng);
            check_gpu_attention(c, mask, rng);
        }
    }
}

// Both sides of the float32 small backward's bounds (small_backward_bounds.hpp): the largest
// problem it takes, then one key more and one query row a head more (the tiled kernels), in both
// dtypes and both backward modes.
TEST(GpuAttention, SmallBackwardBounds) {
    FM_SKIP_WITHOUT_GPU();
    using cuda::sm80::kSmallBackwardMaxKeys;
    using cuda::sm80::kSmallBackwardMaxRows;
    auto rng = test_rng();
    const int32_t rows_per_head = int32_t(kSmallBackwardMaxRows / kGqaGroup);
    struct Bound {
        int32_t nq, nk;
        bool small;
    };
    const Bound bounds[] = {{rows_per_head, kSmallBackwardMaxKeys, true},
                            {rows_per_head, kSmallBackwardMaxKeys + 1, false},
                            {rows_per_head + 1, kSmallBackwardMaxKeys, false}};
    int n = 0;
    for (const Bound& bound : bounds)
        for (const DType dtype : kHalfDtypes) {
            GpuCase c{{1, bound.nq, bound.nk, kGqaGroup, 1, kHeadDims[n % kHeadDimCount], kHeadDims[n % kHeadDimCount]},
                      dtype};
            c.deterministic = n++ % 2 == 1;
            AttentionProblem problem;
            problem.batch = c.sizes.batch;
            problem.q_heads = c.sizes.q_heads;
            problem.nq = c.sizes.nq;
            problem.nk = c.sizes.nk;
            ASSERT_EQ(cuda::sm80::uses_small_backward(problem), bound.small) << c.describe();
            TestMask mask = catalogue_test_mask("causal_document", c.sizes, c.sizes.q_heads, rng);
            check_gpu_attention(c, mask, rng);
        }
}

// KeyOrder::Automatic from 16K keys: both orders' launches are queued and the device runs one
// (random eviction: the sorted one; causal_document's keys are in order already, so the natural
// one). Natural forced on the same mask must agree with the reference too. Float32 GPU reference.
TEST(GpuAttention, AutomaticKeyOrderAtSixteenK) {
    FM_SKIP_WITHOUT_GPU();
    auto rng = test_rng();
    int n = 0;
    for (const char* name : {"random_eviction", "causal_document"})
        for (const KeyOrder order : {KeyOrder::Automatic, KeyOrder::Natural}) {
            GpuCase c{{1, 16384, 16384, 2, 1, 128, 128}, kHalfDtypes[n++ % kDtypeCount]};
            c.key_order = order;
            TestMask mask = catalogue_test_mask(name, c.sizes, 1, rng);
            check_gpu_attention(c, mask, rng);
        }
}

// KeyOrder::Automatic at 16K keys for every head dim, dtype and backward mode: a thousand rows
// (the catalogue mask's bottom-right corner, as Nq != Nk reads it) keep the reference cheap,
// while the keys are enough for the device to build both orders and choose (random eviction's
// and causal_document's corners; which order wins does not matter here, both launches are
// queued and one returns). The 16K-square test above covers the same with every row, at D = 128.
TEST(GpuAttention, AutomaticKeyOrderEveryHeadDim) {
    FM_SKIP_WITHOUT_GPU();
    auto rng = test_rng();
    int n = 0;
    for (const char* name : {"random_eviction", "causal_document"})
        for (const int32_t head_dim : {64, 128, 256})
            for (const DType dtype : kHalfDtypes) {
                GpuCase c{{1, 1000, 16384, 2, 1, head_dim, head_dim}, dtype};
                c.deterministic = n++ % 2 == 1;
                TestMask mask = catalogue_test_mask(name, c.sizes, 1, rng);
                check_gpu_attention(c, mask, rng);
            }
}

// The dK/dV grid's short last wave split into parts (TailSplit, backward_kernels.cuh): full masks
// whose grid (B x 8 key blocks, Hk = 1) leaves a last wave of at most a quarter of the SMs whether
// the kernel fits one or two CTAs per SM (short_tail_batches()), so that its last key blocks run
// as parts, each summing its dK / dV into float32 and the last to arrive storing them: GQA, parts
// of one tile (2 tiles a CTA) to several (44), D = 64 / 128 / 256 (key blocks of 128, 128, 64
// keys), ragged last key blocks; and the deterministic backward (never split) on the same shape.
// Sizes within the GPU reference's (kReferenceMaxSequence): a first version split one long
// sequence of 2 x SMs + 3 key blocks, 34139 keys on an H200, which the reference refused.
constexpr int32_t kTailSplitTestKeyBlocks = 8;

// The fewest batches, of at least two waves, whose B x key_blocks CTAs leave the same last wave
// of 1 .. SMs / kTailSplitMaxFill CTAs on SMs and on 2 x SMs slots.
int32_t short_tail_batches(int32_t key_blocks) {
    const int32_t sms = cuda::current_device_sms(), two_waves = 2 * sms;
    const int32_t first = (two_waves + key_blocks - 1) / key_blocks;
    for (int32_t batches = first; batches < first + two_waves; ++batches) {
        const int32_t tail = batches * key_blocks % two_waves;
        if (tail >= 1 && tail * cuda::sm80::kTailSplitMaxFill <= sms) return batches;
    }
    throw std::runtime_error("no batch count of " + std::to_string(key_blocks) + " key blocks leaves a short tail on " +
                             std::to_string(sms) + " SMs");
}

TEST(GpuAttention, BackwardTailSplitFullMask) {
    FM_SKIP_WITHOUT_GPU();
    auto rng = test_rng();
    const int32_t batches = short_tail_batches(kTailSplitTestKeyBlocks);
    struct Shape {
        int32_t nq, q_heads, head_dim, block_n;
        DType dtype;
        bool deterministic;
    };
    const Shape shapes[] = {{700, 4, 128, 128, DType::BFloat16, false},
                            {100, 1, 64, 128, DType::Float16, false},
                            {300, 2, 256, 64, DType::BFloat16, false},
                            {700, 4, 128, 128, DType::Float16, true}};
    for (const Shape& shape : shapes) {
        const int32_t nk = kTailSplitTestKeyBlocks * shape.block_n - 37;  // the last key block ragged
        GpuCase c{{batches, shape.nq, nk, shape.q_heads, 1, shape.head_dim, shape.head_dim}, shape.dtype};
        c.deterministic = shape.deterministic;
        TestMask mask = catalogue_test_mask("full", c.sizes, 1, rng);
        check_gpu_attention(c, mask, rng);
    }
}

// The forward grid's last wave split over the key blocks (TailSplit, forward_kernel.cuh): full
// masks whose grid (B x Hq CTAs of one query block each) leaves a last wave that
// plan_forward_tail_split() splits whether the kernel fits one or two CTAs per SM
// (forward_tail_batches()), so that its last CTAs run as parts over the key blocks and the last
// part to finish merges their O, maxima and sums: GQA, D = 64 / 128 / 256, two, three and four
// parts, ragged last key blocks (64 keys a block at every D).
constexpr int32_t kForwardSplitTestKeyBlocks = 6;

// The fewest batches, of at least two waves, whose B x q_heads CTAs are split on SMs and on
// 2 x SMs slots, in `parts` parts on the latter.
int32_t forward_tail_batches(int32_t q_heads, int32_t parts) {
    const int32_t sms = cuda::current_device_sms(), two_waves = 2 * sms;
    for (int32_t batches = ceil_div(two_waves, q_heads); batches < ceil_div(two_waves, q_heads) + 2 * two_waves;
         ++batches) {
        const int64_t grid = int64_t(batches) * q_heads;
        const cuda::sm80::TailPlan one = cuda::sm80::plan_forward_tail_split(grid, sms, kForwardSplitTestKeyBlocks);
        const cuda::sm80::TailPlan two = cuda::sm80::plan_forward_tail_split(grid, two_waves, kForwardSplitTestKeyBlocks);
        if (one.split_ctas > 0 && two.split_ctas > 0 && two.parts == parts) return batches;
    }
    throw std::runtime_error("no batch count of " + std::to_string(q_heads) + " heads is split in " +
                             std::to_string(parts) + " parts on " + std::to_string(sms) + " SMs");
}

TEST(GpuAttention, ForwardTailSplitFullMask) {
    FM_SKIP_WITHOUT_GPU();
    auto rng = test_rng();
    struct Shape {
        int32_t nq, q_heads, head_dim, parts;
        DType dtype;
    };
    const Shape shapes[] = {{100, 2, 128, 3, DType::BFloat16},
                            {17, 1, 64, 4, DType::Float16},
                            {128, 2, 256, 2, DType::BFloat16},
                            {1, 4, 128, 4, DType::Float16}};
    for (const Shape& shape : shapes) {
        const int32_t nk = kForwardSplitTestKeyBlocks * 64 - 13;  // the last key block ragged
        GpuCase c{{forward_tail_batches(shape.q_heads, shape.parts), shape.nq, nk, shape.q_heads, 1, shape.head_dim,
                   shape.head_dim},
                  shape.dtype};
        TestMask mask = catalogue_test_mask("full", c.sizes, 1, rng);
        check_gpu_attention(c, mask, rng);
    }
}

// Rows that see no key (a band hidden from every column; with Nq > Nk and causal, the top
// Nq - Nk rows) and columns hidden from every row: O = 0, LSE = -inf, dQ = 0, dK = dV = 0.
TEST(GpuAttention, FullyMaskedRowsAndColumns) {
    FM_SKIP_WITHOUT_GPU();
    auto rng = test_rng();
    for (const int32_t nk : {100, 40, 300}) {
        const AttentionSizes sizes{1, 100, nk, 4, 1, 64, 64};
        TestMask mask;
        mask.causal = true;
        mask.name = "masked band and masked columns";
        mask.indices.emplace(1, 1, nk, 2, rng);
        std::uniform_int_distribution<int32_t> row(0, sizes.nq), coin(0, 4);
        int32_t start = row(rng), end = row(rng);
        if (start > end) std::swap(start, end);
        for (int32_t j = 0; j < nk; ++j) {
            const bool whole_column = coin(rng) == 0;
            mask.indices->at(0, 0, j, 0) = whole_column ? 0 : start;
            mask.indices->at(0, 0, j, 1) = whole_column ? sizes.nq : end;
        }
        for (const DType dtype : kHalfDtypes) check_gpu_attention(GpuCase{sizes, dtype}, mask, rng);
    }
}

// A key block that no row sees: its dK / dV CTA finds no live tile and stores zeros (with no step
// run, nothing else in the CTA has touched its shared memory or its copies). Keys [128, 256) (the
// dK / dV kernel's second key block at D <= 128) are masked for every row of a causal mask; the
// checker asks dK = dV = 0 there exactly, and the other keys' gradients within SPEC §5.
TestMask unseen_key_block_mask(const AttentionSizes& sizes, std::mt19937_64& rng) {
    constexpr int32_t kFirstUnseen = 128, kEndUnseen = 256;
    TestMask mask;
    mask.causal = true;
    mask.name = "keys 128-255 seen by no row";
    mask.indices.emplace(1, 1, sizes.nk, 2, rng);
    for (int32_t j = 0; j < sizes.nk; ++j) {
        const bool unseen = j >= kFirstUnseen && j < kEndUnseen;
        mask.indices->at(0, 0, j, 0) = unseen ? 0 : sizes.nq;
        mask.indices->at(0, 0, j, 1) = sizes.nq;
    }
    return mask;
}

void unseen_key_block_cases(ReferenceKind reference, bool deterministic) {
    auto rng = test_rng();
    for (const int32_t d : {64, 128})
        for (const DType dtype : kHalfDtypes) {
            GpuCase c{{1, 300, 300, 4, 1, d, d}, dtype};
            c.reference = reference;
            c.deterministic = deterministic;
            TestMask mask = unseen_key_block_mask(c.sizes, rng);
            check_gpu_attention(c, mask, rng);
        }
}

TEST(GpuAttention, KeyBlockThatNoRowSees) {
    FM_SKIP_WITHOUT_GPU();
    unseen_key_block_cases(ReferenceKind::Auto, false);
    unseen_key_block_cases(ReferenceKind::Auto, true);
}

// Plain causal attention with Nq != Nk: the diagonal is aligned bottom-right (row i sees key j
// iff j <= i + Nk - Nq); with Nq > Nk the first Nq - Nk rows see nothing.
TEST(GpuAttention, CausalBottomRightDiagonal) {
    FM_SKIP_WITHOUT_GPU();
    auto rng = test_rng();
    const int32_t extents[][2] = {{17, 40}, {40, 17}, {1000, 1111}, {1111, 1000}};
    int n = 0;
    for (const auto& [nq, nk] : extents) {
        GpuCase c{{1, nq, nk, kGqaGroup, 1, 128, 128}, kHalfDtypes[n++ % kDtypeCount]};
        TestMask mask;
        mask.causal = true;
        mask.name = "causal";
        check_gpu_attention(c, mask, rng);
    }
}

TEST(GpuAttention, ExplicitScaleWithoutIndexTensor) {
    FM_SKIP_WITHOUT_GPU();
    auto rng = test_rng();
    for (const bool causal : {false, true})
        for (const DType dtype : kHalfDtypes) {
            GpuCase c{{2, 75, 140, kGqaGroup, 1, 64, 64}, dtype};
            c.scale = random_scale(rng);
            TestMask mask;
            mask.causal = causal;
            mask.name = causal ? "causal" : "full";
            check_gpu_attention(c, mask, rng);
        }
}

// Every operand a [B, H, N, D] buffer passed with permuted strides, or BSHD rows kRowPadding
// apart (LSE rows padded too), small (float64 reference) and large (float32 GPU reference).
TEST(GpuAttention, TransposedAndPaddedViews) {
    FM_SKIP_WITHOUT_GPU();
    auto rng = test_rng();
    int n = 0;
    for (const Layout layout : {Layout::Bhsd, Layout::PaddedBshd})
        for (const AttentionSizes sizes : {AttentionSizes{2, 130, 200, 8, 2, 64, 64}, AttentionSizes{1, 1000, 1000, 8, 2, 128, 128}}) {
            GpuCase c{sizes, kHalfDtypes[n++ % kDtypeCount]};
            c.layout = layout;
            TestMask mask = catalogue_test_mask("prefix_lm_document", sizes, sizes.kv_heads, rng);
            check_gpu_attention(c, mask, rng);
        }
}

// The sizes of the unaligned-view tests: every head dim (one instantiation each), tiles cut on
// both axes, GQA, and Hk = 1 (the misaligned stride of K / V is then the sequence one alone).
const AttentionSizes kUnalignedSizes[] = {AttentionSizes{2, 130, 200, 8, 2, 64, 64},
                                          AttentionSizes{1, 77, 1000, 4, 1, 128, 128},
                                          AttentionSizes{1, 33, 70, 4, 4, 256, 256}};

// Rows off 16-byte addresses (Layout::UnalignedBshd): the forward repacks q, k, v and out
// through contiguous scratch around its kernel (KernelOperand, kernel_operand.cuh), so the
// results are those of any other view and nothing lands in the padding. With Hk = 1 the K / V
// head stride is never stepped over and the sequence stride is the misaligned one.
TEST(GpuAttention, ForwardRepacksRowsOffSixteenByteAddresses) {
    FM_SKIP_WITHOUT_GPU();
    auto rng = test_rng();
    int n = 0;
    for (const AttentionSizes& sizes : kUnalignedSizes) {
        GpuCase c{sizes, kHalfDtypes[n++ % kDtypeCount]};
        c.layout = Layout::UnalignedBshd;
        c.backward = false;  // the forward's copies alone; the backward's are the next tests
        TestMask mask = catalogue_test_mask("causal_document", sizes, sizes.kv_heads, rng);
        check_gpu_attention(c, mask, rng);
    }
}

// The backward on views with rows off 16-byte addresses: q, k, v, out, dout are copied into
// contiguous scratch, dq, dk, dv computed there and copied out (KernelOperand, run_backward):
// gradients within the bound, every element written, none in the padding. Both layouts (an odd
// row stride; a data pointer one element off), both modes (dQ by atomics then converted; the
// deterministic dQ kernel).
TEST(GpuAttention, BackwardRepacksRowsOffSixteenByteAddresses) {
    FM_SKIP_WITHOUT_GPU();
    auto rng = test_rng();
    int n = 0;
    for (const Layout layout : {Layout::UnalignedBshd, Layout::OffsetBshd})
        for (const AttentionSizes& sizes : kUnalignedSizes) {
            GpuCase c{sizes, kHalfDtypes[n % kDtypeCount]};
            c.layout = layout;
            c.deterministic = (n++ / kDtypeCount) % 2 == 1;
            TestMask mask = catalogue_test_mask("causal_document", sizes, sizes.kv_heads, rng);
            check_gpu_attention(c, mask, rng);
        }
}

// Aligned inputs, gradients into views with rows off 16-byte addresses: only dq, dk, dv go
// through scratch (copied out after the kernels), and the results are those of aligned views.
TEST(GpuAttention, BackwardWritesGradientsIntoUnalignedViews) {
    FM_SKIP_WITHOUT_GPU();
    auto rng = test_rng();
    int n = 0;
    for (const Layout gradient_layout : {Layout::UnalignedBshd, Layout::OffsetBshd})
        for (const bool deterministic : {false, true}) {
            const AttentionSizes& sizes = kUnalignedSizes[n % std::size(kUnalignedSizes)];
            GpuCase c{sizes, kHalfDtypes[n++ % kDtypeCount]};
            c.gradient_layout = gradient_layout;
            c.deterministic = deterministic;
            TestMask mask = catalogue_test_mask("sliding_window", sizes, sizes.kv_heads, rng);
            check_gpu_attention(c, mask, rng);
        }
}

// Nq = 0 (dK = dV = 0) and Nk = 0 (dQ = 0): run_backward zeroes the gradients without running
// the kernels. Into views with rows off 16-byte addresses the zeros go through scratch too:
// every element exactly 0 (none left poisoned), nothing in the padding.
TEST(GpuAttention, BackwardZeroGradientsIntoUnalignedViews) {
    FM_SKIP_WITHOUT_GPU();
    auto rng = test_rng();
    const DType dtype = DType::BFloat16;
    const int32_t extents[][2] = {{0, 70}, {50, 0}};
    for (const Layout gradient_layout : {Layout::UnalignedBshd, Layout::OffsetBshd})
        for (const auto& [nq, nk] : extents) {
            const AttentionSizes s{2, nq, nk, 4, 2, 64, 64};
            SCOPED_TRACE(s.describe() + ", gradients " + to_string(gradient_layout));
            const std::vector<int64_t> q_shape{s.batch, s.nq, s.q_heads, s.head_dim},
                kv_shape{s.batch, s.nk, s.kv_heads, s.head_dim}, lse_shape{s.batch, s.q_heads, s.nq};
            DeviceTensor q(dtype, q_shape), k(dtype, kv_shape), v(dtype, kv_shape), out(dtype, q_shape),
                lse(DType::Float32, lse_shape), dout(dtype, q_shape), dq(dtype, q_shape, gradient_layout),
                dk(dtype, kv_shape, gradient_layout), dv(dtype, kv_shape, gradient_layout);
            for (DeviceTensor* t : {&q, &k, &v, &dout}) t->fill_normal(rng());
            ForwardArgs fa{q.view(), k.view(), v.view(), out.view(), lse.view()};
            forward(fa);  // Nk = 0: O = 0, LSE = -inf; Nq = 0: nothing to write
            FM_CUDA_CHECK(cudaDeviceSynchronize());
            for (DeviceTensor* t : {&dq, &dk, &dv}) t->poison();
            BackwardArgs ba{q.view(), k.view(), v.view(), out.view(), lse.view(), dout.view(), dq.view(), dk.view(), dv.view()};
            backward(ba);
            FM_CUDA_CHECK(cudaDeviceSynchronize());
            for (const auto& [name, t] : {std::pair{"dq", &dq}, std::pair{"dk", &dk}, std::pair{"dv", &dv}}) {
                const std::vector<double> values = t->values();
                EXPECT_EQ(std::count(values.begin(), values.end(), 0.0), int64_t(values.size()))
                    << name << ": elements that are not exactly 0 (NaN: never written)";
                EXPECT_EQ(t->padding_written(), 0) << name << ": elements written between rows (padding of the view)";
            }
            EXPECT_GT(nq == 0 ? dk.numel() : dq.numel(), 0) << "the case has no gradient to zero";
        }
}

// Deterministic mode: two runs give identical dq, dk, dv bits (checked inside
// check_gpu_attention), and are within the bound like any other run. GQA makes dK / dV sum over
// four query heads, where a non-deterministic kernel would use atomics.
TEST(GpuAttention, DeterministicBackwardGivesIdenticalBits) {
    FM_SKIP_WITHOUT_GPU();
    auto rng = test_rng();
    int n = 0;
    for (const char* name : {"causal_document", "global_sliding_window", "full"})
        for (const AttentionSizes sizes : {AttentionSizes{2, 130, 300, 8, 2, 64, 64}, AttentionSizes{1, 1000, 1000, 8, 2, 128, 128}}) {
            GpuCase c{sizes, kHalfDtypes[n++ % kDtypeCount]};
            c.deterministic = true;
            TestMask mask = catalogue_test_mask(name, sizes, sizes.kv_heads, rng);
            check_gpu_attention(c, mask, rng);
        }
}

// ---------------------------------------------------------------------------------------------
// The stream argument: the work is queued behind what the caller queued on that stream.
// ---------------------------------------------------------------------------------------------

// Holds up the stream it is queued on (a host function: the stream waits for it) for much longer
// than this test's forward + backward take, so that a call that does not wait for the stream
// runs before the inputs are copied in.
constexpr auto kStreamHold = std::chrono::milliseconds(200);
void CUDART_CB hold_stream(void*) { std::this_thread::sleep_for(kStreamHold); }

// On a created non-blocking stream: hold the stream, then copy the real q (and dout) into buffers
// that hold NaN, then call the API with that stream. A call that ran anywhere but behind the copy
// (the legacy default stream does not wait for a non-blocking stream) reads NaN and cannot match
// the same call made with q in place from the start. The backward is deterministic so that the
// two runs can be compared bit for bit.
TEST(GpuAttention, RunsOnTheGivenStream) {
    FM_SKIP_WITHOUT_GPU();
    auto rng = test_rng();
    const AttentionSizes s{1, 300, 300, 4, 1, 64, 64};
    const DType dtype = DType::BFloat16;
    TestMask mask = catalogue_test_mask("document", s, 1, rng);
    const DeviceMask device_mask(mask, s);
    const std::vector<int64_t> q_shape{s.batch, s.nq, s.q_heads, s.head_dim}, kv_shape{s.batch, s.nk, s.kv_heads, s.head_dim},
        lse_shape{s.batch, s.q_heads, s.nq};
    DeviceTensor q(dtype, q_shape), k(dtype, kv_shape), v(dtype, kv_shape), dout(dtype, q_shape);
    for (DeviceTensor* t : {&q, &k, &v, &dout}) t->fill_normal(rng());

    struct Outputs {
        DeviceTensor out, lse, dq, dk, dv;
    };
    // Poisons first (poison() synchronises the device, so it must not come between the hold and the call).
    auto poison = [](Outputs& o) {
        for (DeviceTensor* t : {&o.out, &o.lse, &o.dq, &o.dk, &o.dv}) t->poison();
    };
    auto run = [&](const DeviceTensor& q_in, const DeviceTensor& dout_in, cudaStream_t stream, Outputs& o) {
        ForwardArgs fa{q_in.view(), k.view(), v.view(), o.out.view(), o.lse.view(), device_mask.view, mask.causal};
        fa.stream = stream;
        forward(fa);
        BackwardArgs ba{q_in.view(), k.view(), v.view(), o.out.view(), o.lse.view(), dout_in.view(),
                        o.dq.view(), o.dk.view(), o.dv.view(), device_mask.view, mask.causal};
        ba.deterministic = true;
        ba.stream = stream;
        backward(ba);
    };
    auto make_outputs = [&] {
        return Outputs{DeviceTensor(dtype, q_shape), DeviceTensor(DType::Float32, lse_shape), DeviceTensor(dtype, q_shape),
                       DeviceTensor(dtype, kv_shape), DeviceTensor(dtype, kv_shape)};
    };
    Outputs expected = make_outputs(), got = make_outputs();
    poison(expected);
    poison(got);
    run(q, dout, nullptr, expected);
    FM_CUDA_CHECK(cudaDeviceSynchronize());

    const Stream stream;
    DeviceTensor late_q(dtype, q_shape), late_dout(dtype, q_shape);
    late_q.poison();
    late_dout.poison();
    FM_CUDA_CHECK(cudaLaunchHostFunc(stream.get(), hold_stream, nullptr));
    const std::size_t bytes = std::size_t(q.numel()) * element_size(dtype);
    FM_CUDA_CHECK(cudaMemcpyAsync(late_q.view().data, q.view().data, bytes, cudaMemcpyDeviceToDevice, stream.get()));
    FM_CUDA_CHECK(cudaMemcpyAsync(late_dout.view().data, dout.view().data, bytes, cudaMemcpyDeviceToDevice, stream.get()));
    run(late_q, late_dout, stream.get(), got);
    FM_CUDA_CHECK(cudaStreamSynchronize(stream.get()));

    EXPECT_TRUE(got.out.bytes() == expected.out.bytes()) << "out differs: the forward did not wait for its stream";
    EXPECT_TRUE(got.lse.bytes() == expected.lse.bytes()) << "lse differs: the forward did not wait for its stream";
    EXPECT_TRUE(got.dq.bytes() == expected.dq.bytes()) << "dq differs: the backward did not wait for its stream";
    EXPECT_TRUE(got.dk.bytes() == expected.dk.bytes()) << "dk differs: the backward did not wait for its stream";
    EXPECT_TRUE(got.dv.bytes() == expected.dv.bytes()) << "dv differs: the backward did not wait for its stream";
}

// ---------------------------------------------------------------------------------------------
// CUDA errors come back as flashmask::Error(CudaError), and leave CUDA usable.
// ---------------------------------------------------------------------------------------------

// A device index that does not exist is refused before anything runs: Error(InvalidArgument)
// naming q and the device count, nothing written, the caller's device unchanged, and no stale
// error left in CUDA's last-error state (which the next check_launch() would otherwise report
// against an innocent launch).
TEST(GpuErrors, InvalidDeviceIndexIsRefused) {
    FM_SKIP_WITHOUT_GPU();
    auto rng = test_rng();
    int devices = 0, device_before = 0, device_after = -1;
    FM_CUDA_CHECK(cudaGetDeviceCount(&devices));
    FM_CUDA_CHECK(cudaGetDevice(&device_before));
    const AttentionSizes s{1, 64, 64, 2, 2, 64, 64};
    DeviceTensor q(DType::BFloat16, {1, 64, 2, 64}), k(DType::BFloat16, {1, 64, 2, 64}), v(DType::BFloat16, {1, 64, 2, 64}),
        out(DType::BFloat16, {1, 64, 2, 64}), lse(DType::Float32, {1, 2, 64});
    for (DeviceTensor* t : {&q, &k, &v}) t->fill_normal(rng());
    out.poison();
    lse.poison();
    ForwardArgs fa{q.view(), k.view(), v.view(), out.view(), lse.view()};
    for (TensorView* t : {&fa.q, &fa.k, &fa.v, &fa.out, &fa.lse}) t->device_index = devices;  // one past the last
    try {
        forward(fa);
        ADD_FAILURE() << "forward on cuda:" << devices << " (of " << devices << " devices) did not throw";
    } catch (const Error& e) {
        EXPECT_EQ(e.code(), ErrorCode::InvalidArgument) << e.what();
        EXPECT_EQ(e.argument(), "q") << e.what();
        EXPECT_NE(std::string(e.what()).find("cuda:" + std::to_string(devices)), std::string::npos)
            << "the refused device is not named in: " << e.what();
    }
    FM_CUDA_CHECK(cudaGetDevice(&device_after));
    EXPECT_EQ(device_after, device_before) << "the caller's current device changed";
    const cudaError_t stale = cudaGetLastError();  // also clears it, so that later tests are not blamed
    EXPECT_EQ(stale, cudaSuccess) << "the failed call left CUDA's last error set: " << cudaGetErrorName(stale);
    const std::vector<double> out_values = out.values();
    EXPECT_TRUE(std::all_of(out_values.begin(), out_values.end(), [](double x) { return std::isnan(x); }))
        << "out was written by a refused call";
    // CUDA is still usable: a full-mask case of the same sizes on the real device passes the checker.
    TestMask full;
    full.name = "full";
    check_gpu_attention(GpuCase{s, DType::BFloat16}, full, rng);
}

// Host memory passed as a CUDA tensor must be refused with an Error (InvalidArgument naming the
// tensor, or CudaError), not fault inside a kernel: a kernel fault is sticky and would kill the
// process's CUDA context. Run in a child process (death-test machinery, "threadsafe" style
// re-executes this binary) so that a fault cannot take the rest of the suite with it; the child
// exits 0 only if the API threw Error and CUDA still works afterwards.
int host_memory_outcome() {
    const int64_t elements = 1 * 64 * 2 * 64;
    std::vector<uint16_t> host_q(std::size_t(elements), 0x3f80);  // bfloat16 1.0
    DeviceTensor k(DType::BFloat16, {1, 64, 2, 64}), v(DType::BFloat16, {1, 64, 2, 64}), out(DType::BFloat16, {1, 64, 2, 64}),
        lse(DType::Float32, {1, 2, 64});
    k.fill_normal(1);
    v.fill_normal(2);
    ForwardArgs fa{k.view(), k.view(), v.view(), out.view(), lse.view()};
    fa.q.data = host_q.data();  // a CUDA view of host memory
    int outcome = 0;
    try {
        forward(fa);
        std::fprintf(stderr, "forward accepted host memory as a CUDA tensor (no Error)\n");
        outcome = 1;
    } catch (const Error& e) {
        std::fprintf(stderr, "Error(code %d, argument '%s'): %s\n", int(e.code()), e.argument().c_str(), e.what());
        if (e.code() != ErrorCode::InvalidArgument && e.code() != ErrorCode::CudaError) outcome = 2;
    }
    const cudaError_t after = cudaDeviceSynchronize();
    if (after != cudaSuccess) {
        std::fprintf(stderr, "CUDA unusable afterwards: %s\n", cudaGetErrorString(after));
        outcome = 3;
    }
    return outcome;
}

TEST(GpuErrors, HostMemoryAsCudaTensorIsErrorNotCrash) {
    FM_SKIP_WITHOUT_GPU();
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    EXPECT_EXIT(std::exit(host_memory_outcome()), ::testing::ExitedWithCode(0), "");
}

// ---------------------------------------------------------------------------------------------
// The test's own float32 GPU reference (used for the large cases) against the float64 one.
// ---------------------------------------------------------------------------------------------
TEST(GpuReference, MatchesFloat64Reference) {
    FM_SKIP_WITHOUT_GPU();
    auto rng = test_rng();
    {
        const AttentionSizes s{1, 200, 200, 4, 1, 64, 64};
        TestMask mask = catalogue_test_mask("sliding_window", s, 4, rng);
        check_gpu_reference(s, DType::BFloat16, mask, rng);
    }
    {
        const AttentionSizes s{2, 77, 130, 4, 2, 128, 128};
        TestMask mask = catalogue_test_mask("global_sliding_window", s, 2, rng);
        check_gpu_reference(s, DType::Float16, mask, rng);
    }
    for (const IndexLayout layout : kIndexLayouts) {
        const AttentionSizes s{1, 130, 77, 4, 1, 256, 256};
        TestMask mask = random_test_mask(layout.causal, layout.slots, true, s, 4, rng);
        check_gpu_reference(s, DType::BFloat16, mask, rng);
    }
    {
        const AttentionSizes s{1, 33, 1000, 4, 1, 64, 64};
        TestMask mask = catalogue_test_mask("causal_document", s, 1, rng);
        check_gpu_reference(s, DType::Float16, mask, rng);
    }
}

// ---------------------------------------------------------------------------------------------
// Small cases of each kernel for compute-sanitizer (memcheck): every (dtype, D) instantiation,
// sizes that are not multiples of any tile, float64 reference (no reference kernels run).
// ---------------------------------------------------------------------------------------------
void sanitizer_cases(const char* mask_name, bool backward, bool deterministic, int32_t q_heads, int32_t kv_heads) {
    auto rng = test_rng();
    for (const int32_t d : kHeadDims)
        for (const DType dtype : kHalfDtypes) {
            GpuCase c{{1, 77, 130, q_heads, kv_heads, d, d}, dtype};
            c.backward = backward;
            c.deterministic = deterministic;
            c.reference = ReferenceKind::Float64Cpu;  // no reference kernels under the sanitizer
            TestMask mask = catalogue_test_mask(mask_name, c.sizes, kv_heads, rng);
            check_gpu_attention(c, mask, rng);
        }
}

TEST(GpuSanitizer, Forward) {
    FM_SKIP_WITHOUT_GPU();
    sanitizer_cases("causal_document", false, false, 2, 2);
}

TEST(GpuSanitizer, BackwardNondeterministic) {
    FM_SKIP_WITHOUT_GPU();
    sanitizer_cases("causal_document", true, false, 2, 2);
}

TEST(GpuSanitizer, KeyBlockThatNoRowSees) {
    FM_SKIP_WITHOUT_GPU();
    unseen_key_block_cases(ReferenceKind::Float64Cpu, false);
}

TEST(GpuSanitizer, BackwardDeterministic) {
    FM_SKIP_WITHOUT_GPU();
    sanitizer_cases("causal_document", true, true, 2, 2);
}

// The float32 backward of tiny problems (small_backward.cuh): 8 query rows, GQA 4:1, a key count
// off every tile, at each head dim.
TEST(GpuSanitizer, SmallBackward) {
    FM_SKIP_WITHOUT_GPU();
    auto rng = test_rng();
    int n = 0;
    for (const int32_t d : kHeadDims) {
        const GpuCase c{{2, 1, 37, kGqaGroup, 1, d, d}, kHalfDtypes[n++ % kDtypeCount]};
        TestMask mask = catalogue_test_mask("causal_document", c.sizes, 1, rng);
        check_gpu_attention(c, mask, rng);
    }
}

// The split last wave of the dK/dV grid (see BackwardTailSplitFullMask), parts of one tile each.
TEST(GpuSanitizer, BackwardTailSplit) {
    FM_SKIP_WITHOUT_GPU();
    auto rng = test_rng();
    GpuCase c{{short_tail_batches(kTailSplitTestKeyBlocks), 100, kTailSplitTestKeyBlocks * 128 - 37, 1, 1, 64, 64},
              DType::BFloat16};
    c.reference = ReferenceKind::Float64Cpu;  // no reference kernels under the sanitizer
    TestMask mask = catalogue_test_mask("full", c.sizes, 1, rng);
    check_gpu_attention(c, mask, rng);
}

// The split last wave of the forward grid (see ForwardTailSplitFullMask).
TEST(GpuSanitizer, ForwardTailSplit) {
    FM_SKIP_WITHOUT_GPU();
    auto rng = test_rng();
    GpuCase c{{forward_tail_batches(1, 3), 17, kForwardSplitTestKeyBlocks * 64 - 13, 1, 1, 64, 64}, DType::BFloat16};
    c.reference = ReferenceKind::Float64Cpu;  // no reference kernels under the sanitizer
    TestMask mask = catalogue_test_mask("full", c.sizes, 1, rng);
    check_gpu_attention(c, mask, rng);
}

// Partial tiles everywhere: a random C = 4 index tensor, hostile values included.
TEST(GpuSanitizer, PartialTileMask) {
    FM_SKIP_WITHOUT_GPU();
    auto rng = test_rng();
    int n = 0;
    for (const int32_t d : kHeadDims) {
        const AttentionSizes s{1, 77, 130, 2, 2, d, d};
        TestMask mask = random_test_mask(false, 4, true, s, 2, rng);
        check_gpu_attention(GpuCase{s, kHalfDtypes[n++ % kDtypeCount]}, mask, rng);
    }
}

// GQA: Hq / Hk = 4 with two KV heads and a mask per KV head.
TEST(GpuSanitizer, Gqa) {
    FM_SKIP_WITHOUT_GPU();
    sanitizer_cases("document", true, false, 8, 2);
}

// The sorted key order: the sort, the gathers of K / V, the dK/dV kernel's loads and stores
// through the order, both backward modes, GQA with one mask head per KV head.
TEST(GpuSanitizer, SortedKeys) {
    FM_SKIP_WITHOUT_GPU();
    auto rng = test_rng();
    int n = 0;
    for (const int32_t d : kHeadDims) {
        GpuCase c{{1, 77, 1100, 8, 2, d, d}, kHalfDtypes[n % kDtypeCount]};
        c.key_order = KeyOrder::Sorted;
        c.deterministic = n++ % 2 == 1;
        c.reference = ReferenceKind::Float64Cpu;  // no reference kernels under the sanitizer
        TestMask mask = catalogue_test_mask("random_eviction", c.sizes, c.sizes.kv_heads, rng);
        check_gpu_attention(c, mask, rng);
    }
}

// Views with rows off 16-byte addresses in both directions (the copies through scratch around
// the kernels, the zeroed gradients aside): both such layouts, both backward modes.
TEST(GpuSanitizer, UnalignedViews) {
    FM_SKIP_WITHOUT_GPU();
    auto rng = test_rng();
    int n = 0;
    for (const int32_t d : kHeadDims)
        for (const Layout layout : {Layout::UnalignedBshd, Layout::OffsetBshd}) {
            GpuCase c{{1, 77, 130, 2, 2, d, d}, kHalfDtypes[n % kDtypeCount]};
            c.layout = layout;
            c.deterministic = (n++ / kDtypeCount) % 2 == 1;
            c.reference = ReferenceKind::Float64Cpu;  // no reference kernels under the sanitizer
            TestMask mask = catalogue_test_mask("causal_document", c.sizes, c.sizes.kv_heads, rng);
            check_gpu_attention(c, mask, rng);
        }
}

}  // namespace
}  // namespace flashmask::testing
