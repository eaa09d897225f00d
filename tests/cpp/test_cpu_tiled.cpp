// The tiled CPU path (through forward()/backward()) against the float64 reference, SPEC §5:
// every catalogue mask, random and hostile index tensors of every layout, Nq != Nk, GQA
// (Hq / Hk = 4), mask heads 1, Hk and Hq, head dims 64 / 128 / 256, sizes 1, 17, 1000 and
// 4099, float32 / bfloat16 / float16; and the float64 path (cpu/float64.hpp), also through
// forward()/backward(), to kFloat64Bound. Inputs are fresh normals every run; outputs are
// poisoned with NaN first, so every element is checked to have been written.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "cpu/accuracy.hpp"
#include "cpu/reference.hpp"
#include "cpu/tiled.hpp"
#include "test_cpu_common.hpp"

namespace flashmask::testing {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
// The LSE is float32 arithmetic on the same inputs as the reference: a few float32 ulps of its
// magnitude (and of the scores it is made of).
constexpr double kLseTolerance = 1e-5;

struct CheckOptions {
    bool backward = true;
    const std::vector<int32_t>* rows = nullptr;  // forward only: compare these query rows
    std::optional<float> scale;
    int num_threads = 0;
};

// Elements of a [B, S, H, W] tensor in the listed rows (of dimension S).
std::vector<double> select_rows(const std::vector<double>& x, const AttentionSizes& s, int32_t heads, int32_t width,
                                const std::vector<int32_t>& rows) {
    std::vector<double> out;
    for (int32_t b = 0; b < s.batch; ++b)
        for (int32_t i : rows)
            for (int32_t h = 0; h < heads; ++h)
                for (int32_t d = 0; d < width; ++d)
                    out.push_back(x[((std::size_t(b) * s.nq + i) * heads + h) * width + d]);
    return out;
}

// Rows of a [B, S, H, W] tensor that must be exactly zero: S-index rows `row` of (b, h) for
// which `structurally_zero(b, h, row)` holds (a query row that sees no key, a key no query row
// sees). No NaN, no garbage, no rounding residue there.
template <class Predicate>
void expect_zero_rows(const char* what, const std::vector<double>& got, int32_t batch, int32_t seq, int32_t heads,
                      int32_t width, Predicate structurally_zero) {
    int64_t nonzero = 0, zero_rows = 0;
    for (int32_t b = 0; b < batch; ++b)
        for (int32_t i = 0; i < seq; ++i)
            for (int32_t h = 0; h < heads; ++h) {
                if (!structurally_zero(b, h, i)) continue;
                ++zero_rows;
                for (int32_t d = 0; d < width; ++d)
                    nonzero += got[((std::size_t(b) * seq + i) * heads + h) * width + d] != 0.0;
            }
    EXPECT_EQ(nonzero, 0) << what << ": " << nonzero << " elements of " << zero_rows
                          << " rows that must be exactly 0 are not";
}

void expect_close(const char* what, DType dtype, const std::vector<double>& got, const std::vector<double>& ref,
                  const std::vector<double>* naive) {
    const double error = cpu::relative_error(got, ref);
    const double naive_error = naive ? cpu::relative_error(*naive, ref) : 0.0;
    const double bound = cpu::spec_bound(dtype, naive_error);
    EXPECT_LT(error, bound) << what << " relative error " << error << " (naive " << to_string(dtype) << " error "
                            << naive_error << ")";
}

// Runs forward (and backward) of one case through the API and checks every output.
void check_attention(const AttentionSizes& s, DType dtype, TestMask& mask, std::mt19937_64& rng,
                     const CheckOptions& options = {}) {
    SCOPED_TRACE(mask.name + (mask.causal ? " (causal)" : "") + " " + s.describe() + " " + to_string(dtype));
    HostTensor q(dtype, {s.batch, s.nq, s.q_heads, s.head_dim}), k(dtype, {s.batch, s.nk, s.kv_heads, s.head_dim}),
        v(dtype, {s.batch, s.nk, s.kv_heads, s.value_dim}), out(dtype, {s.batch, s.nq, s.q_heads, s.value_dim}),
        lse(DType::Float32, {s.batch, s.q_heads, s.nq});
    q.fill_normal(rng);
    k.fill_normal(rng);
    v.fill_normal(rng);
    out.poison();
    lse.poison();
    // What forward and backward share, set once so that the two calls cannot disagree.
    auto set_shared_args = [&](auto& args) {
        args.q = q.view(), args.k = k.view(), args.v = v.view(), args.out = out.view(), args.lse = lse.view();
        args.startend_row_indices = mask.view();
        args.causal = mask.causal;
        args.scale = options.scale;
        args.num_threads = options.num_threads;
    };
    ForwardArgs fa;
    set_shared_args(fa);
    forward(fa);
    ASSERT_EQ(out.count_nan(), 0) << "out not fully written";
    ASSERT_EQ(lse.count_nan(), 0) << "lse not fully written";

    const MaskView mask_view = mask.mask_view(s);
    const double scale = options.scale ? *options.scale : double(float(1.0 / std::sqrt(double(s.head_dim))));
    const std::vector<double> qd = q.values(), kd = k.values(), vd = v.values();
    const cpu::ReferenceForward ref = cpu::reference_forward(s.reference_shape(), mask_view, scale, qd.data(),
                                                             kd.data(), vd.data(), options.rows);
    // SPEC §5 measures 16-bit inputs against the same attention computed naively in the dtype.
    const bool low_precision = dtype != DType::Float32 && dtype != DType::Float64;
    std::optional<std::vector<double>> naive_out;
    if (low_precision)
        naive_out = cpu::naive_forward(dtype, s.reference_shape(), mask_view, scale, qd.data(), kd.data(), vd.data(),
                                       options.rows);

    // Forward: O (on the sampled rows) and LSE.
    std::vector<int32_t> all_rows;
    for (int32_t i = 0; i < s.nq; ++i) all_rows.push_back(i);
    const std::vector<int32_t>& rows = options.rows ? *options.rows : all_rows;
    const std::vector<double> out_values = out.values();
    if (naive_out) {
        const std::vector<double> naive_rows = select_rows(*naive_out, s, s.q_heads, s.value_dim, rows);
        expect_close("out", dtype, select_rows(out_values, s, s.q_heads, s.value_dim, rows),
                     select_rows(ref.out, s, s.q_heads, s.value_dim, rows), &naive_rows);
    } else {
        expect_close("out", dtype, select_rows(out_values, s, s.q_heads, s.value_dim, rows),
                     select_rows(ref.out, s, s.q_heads, s.value_dim, rows), nullptr);
    }
    int64_t lse_mismatches = 0;
    for (int32_t b = 0; b < s.batch; ++b)
        for (int32_t h = 0; h < s.q_heads; ++h)
            for (int32_t i : rows) {
                const std::size_t at = (std::size_t(b) * s.q_heads + h) * s.nq + i;
                const double want = ref.lse[at], got = lse.get(int64_t(at));
                const bool ok = want == -kInf ? got == -kInf
                                              : std::abs(got - want) <= kLseTolerance * std::max(1.0, std::abs(want));
                if (!ok && lse_mismatches++ < 5)
                    ADD_FAILURE() << "lse[b=" << b << ", h=" << h << ", i=" << i << "] = " << got << ", reference " << want;
            }
    EXPECT_EQ(lse_mismatches, 0);
    auto row_sees_nothing = [&](int32_t b, int32_t h, int32_t i) {
        return ref.lse[(std::size_t(b) * s.q_heads + h) * s.nq + i] == -kInf &&
               (!options.rows || std::binary_search(rows.begin(), rows.end(), i));
    };
    expect_zero_rows("out of rows that see no key", out_values, s.batch, s.nq, s.q_heads, s.value_dim, row_sees_nothing);
    if (!options.backward) return;

    // Backward from this forward's O and LSE.
    HostTensor dout(dtype, {s.batch, s.nq, s.q_heads, s.value_dim});
    dout.fill_normal(rng);
    const std::vector<double> dout_values = dout.values();
    HostTensor dq(dtype, {s.batch, s.nq, s.q_heads, s.head_dim}), dk(dtype, {s.batch, s.nk, s.kv_heads, s.head_dim}),
        dv(dtype, {s.batch, s.nk, s.kv_heads, s.value_dim});
    dq.poison();
    dk.poison();
    dv.poison();
    BackwardArgs ba;
    set_shared_args(ba);
    ba.dout = dout.view(), ba.dq = dq.view(), ba.dk = dk.view(), ba.dv = dv.view();
    backward(ba);
    ASSERT_EQ(dq.count_nan(), 0) << "dq not fully written";
    ASSERT_EQ(dk.count_nan(), 0) << "dk not fully written";
    ASSERT_EQ(dv.count_nan(), 0) << "dv not fully written";
    const cpu::ReferenceBackward grad = cpu::reference_backward(s.reference_shape(), mask_view, scale, qd.data(),
                                                                kd.data(), vd.data(), dout_values.data());
    std::optional<cpu::ReferenceBackward> naive_grad;
    if (low_precision)
        naive_grad = cpu::naive_backward(dtype, s.reference_shape(), mask_view, scale, qd.data(), kd.data(), vd.data(),
                                         dout_values.data());
    const std::vector<double> dq_values = dq.values(), dk_values = dk.values(), dv_values = dv.values();
    expect_close("dq", dtype, dq_values, grad.dq, naive_grad ? &naive_grad->dq : nullptr);
    expect_close("dk", dtype, dk_values, grad.dk, naive_grad ? &naive_grad->dk : nullptr);
    expect_close("dv", dtype, dv_values, grad.dv, naive_grad ? &naive_grad->dv : nullptr);
    expect_zero_rows("dq of rows that see no key", dq_values, s.batch, s.nq, s.q_heads, s.head_dim, row_sees_nothing);
    const int32_t group = s.q_heads / s.kv_heads;
    auto key_seen_by_none = [&](int32_t b, int32_t kvh, int32_t j) {
        for (int32_t h = kvh * group; h < (kvh + 1) * group; ++h)
            for (int32_t i = 0; i < s.nq; ++i)
                if (!cpu::reference_masked(mask_view, b, h, i, j)) return false;
        return true;
    };
    expect_zero_rows("dk of keys no row sees", dk_values, s.batch, s.nk, s.kv_heads, s.head_dim, key_seen_by_none);
    expect_zero_rows("dv of keys no row sees", dv_values, s.batch, s.nk, s.kv_heads, s.value_dim, key_seen_by_none);
}

// Query rows of an `n`-row forward check too long to compare in full: both edges of every query
// block (kBlockM) including the ragged tail, and `random_rows` random ones; sorted, distinct.
std::vector<int32_t> sampled_rows(int32_t n, int random_rows, std::mt19937_64& rng) {
    std::vector<int32_t> rows;
    for (int32_t i = 0; i < n; i += cpu::kBlockM) rows.insert(rows.end(), {i, std::min(i + cpu::kBlockM - 1, n - 1)});
    std::uniform_int_distribution<int32_t> any_row(0, n - 1);
    for (int r = 0; r < random_rows; ++r) rows.push_back(any_row(rng));
    std::sort(rows.begin(), rows.end());
    rows.erase(std::unique(rows.begin(), rows.end()), rows.end());
    return rows;
}

// ---------------------------------------------------------------------------------------------
// Every catalogue mask, forward and backward, with GQA and each mask-head count.
// ---------------------------------------------------------------------------------------------
class CatalogueMask : public ::testing::TestWithParam<std::string> {};

// Sizes not multiples of any tile, Nq < Nk, Nq > Nk and Nq == Nk; Hq / Hk = 4 with Hk = 2 so
// that Hm = 1, Hk and Hq are three different mask-head counts.
void check_catalogue_mask(const std::string& name, DType dtype) {
    auto rng = test_rng();
    const struct { AttentionSizes sizes; int32_t mask_heads; } cases[] = {
        {{2, 200, 200, 8, 2, 64, 64}, 8},
        {{1, 150, 230, 8, 2, 64, 64}, 1},
        {{1, 230, 150, 8, 2, 64, 64}, 2},
    };
    for (const auto& c : cases) {
        TestMask mask = catalogue_test_mask(name, c.sizes, c.mask_heads, rng);
        check_attention(c.sizes, dtype, mask, rng);
    }
}

TEST_P(CatalogueMask, MatchesReferenceFloat32) { check_catalogue_mask(GetParam(), DType::Float32); }

// The float64 path on the same cases, to kFloat64Bound: float64 arithmetic throughout, the
// backward's included (it recomputes the LSE in double rather than reading the float32 one).
TEST_P(CatalogueMask, MatchesReferenceFloat64) { check_catalogue_mask(GetParam(), DType::Float64); }

TEST_P(CatalogueMask, MatchesReferenceBFloat16) {
    auto rng = test_rng();
    const AttentionSizes sizes{1, 180, 140, 8, 2, 64, 64};
    TestMask mask = catalogue_test_mask(GetParam(), sizes, sizes.q_heads, rng);
    check_attention(sizes, DType::BFloat16, mask, rng);
}

// Head dims 128 and 256 (64 is above), Nq != Nk, GQA 4:1, in float32 and a 16-bit dtype.
TEST_P(CatalogueMask, HeadDims128And256) {
    auto rng = test_rng();
    for (const auto& [head_dim, half] : {std::pair{128, DType::BFloat16}, std::pair{256, DType::Float16}}) {
        const AttentionSizes sizes{1, 70, 90, 4, 1, head_dim, head_dim};
        TestMask mask = catalogue_test_mask(GetParam(), sizes, sizes.q_heads, rng);
        check_attention(sizes, DType::Float32, mask, rng);
        check_attention(sizes, half, mask, rng);
    }
}

// Sizes 1, 17 and 1000 on both axes (none a multiple of a tile), forward and backward, except the
// backward with a single key: see TiledAttention.SingleKeyBackward.
TEST_P(CatalogueMask, SizesOneSeventeenThousand) {
    auto rng = test_rng();
    const int32_t extents[][2] = {{1, 1}, {1, 17}, {17, 1}, {17, 17}, {17, 1000}, {1000, 17}, {1000, 1000}};
    for (const auto& [nq, nk] : extents) {
        const AttentionSizes sizes{1, nq, nk, 4, 1, 64, 64};
        TestMask mask = catalogue_test_mask(GetParam(), sizes, sizes.q_heads, rng);
        check_attention(sizes, DType::Float32, mask, rng, {.backward = nk > 1});
        if (nq == nk) check_attention(sizes, DType::BFloat16, mask, rng, {.backward = nk > 1});
    }
}

// 4099 tokens (64 blocks + 3 rows), forward on a sample of rows; the backward at this size is
// TiledAttention.Sequence4099's (its float64 reference takes seconds).
TEST_P(CatalogueMask, Sequence4099Forward) {
    auto rng = test_rng();
    constexpr int32_t kTokens = 4099;
    const AttentionSizes sizes{1, kTokens, kTokens, 4, 1, 64, 64};
    TestMask mask = catalogue_test_mask(GetParam(), sizes, 1, rng);
    const std::vector<int32_t> rows = sampled_rows(kTokens, 64, rng);
    check_attention(sizes, DType::Float32, mask, rng, {.backward = false, .rows = &rows});
}

INSTANTIATE_TEST_SUITE_P(EveryKind, CatalogueMask, ::testing::ValuesIn(catalogue_names()),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

// ---------------------------------------------------------------------------------------------
// Every layout (causal, C) with random and with hostile index values.
// ---------------------------------------------------------------------------------------------

TEST(TiledAttention, RandomIntervalsEveryLayout) {
    auto rng = test_rng();
    for (const IndexLayout layout : kIndexLayouts)
        for (const AttentionSizes sizes : {AttentionSizes{2, 97, 130, 4, 1, 64, 64}, AttentionSizes{1, 130, 97, 4, 1, 64, 64}}) {
            TestMask mask = random_test_mask(layout.causal, layout.slots, false, sizes, sizes.q_heads, rng);
            check_attention(sizes, DType::Float32, mask, rng);
            check_attention(sizes, DType::Float16, mask, rng);
        }
}

// Values outside [0, Nq], reversed intervals, extremes: read exactly as the reference reads the
// SPEC §2 table, never NaN, never out of bounds.
TEST(TiledAttention, HostileIndexValuesGiveTheReferenceReading) {
    auto rng = test_rng();
    for (const IndexLayout layout : kIndexLayouts) {
        const AttentionSizes sizes{2, 90, 110, 4, 2, 64, 64};
        TestMask mask = random_test_mask(layout.causal, layout.slots, true, sizes, 2, rng);
        // The int32 extremes too.
        mask.indices->at(0, 0, 0, 0) = std::numeric_limits<int32_t>::min();
        mask.indices->at(1, 1, sizes.nk - 1, layout.slots - 1) = std::numeric_limits<int32_t>::max();
        check_attention(sizes, DType::Float32, mask, rng);
    }
}

// ---------------------------------------------------------------------------------------------
// The backward with a single key (Nk = 1). Every row that sees it has P = 1 exactly, so the exact
// dQ and dK vanish and SPEC §5's relative error is 0 / 0; cpu::relative_error() then takes the
// absolute norm, which holds the float32 rounding residue of dP - delta to 1e-5 in all. That
// residue grew with the number of rows that see the key (on the full mask, all 17 rows of 4
// heads, about 2 % of draws exceeded 1e-5) until the backward divided P by its row's sum
// (RowTerms, tiled.cpp): a row over one key now gets dS = 0 exactly.
// ---------------------------------------------------------------------------------------------
TEST(TiledAttention, SingleKeyBackward) {
    auto rng = test_rng();
    for (const int32_t nq : {1, 17})
        for (const char* name : {"full", "causal_document", "global_sliding_window"}) {
            const AttentionSizes sizes{1, nq, 1, 4, 1, 64, 64};
            TestMask mask = catalogue_test_mask(name, sizes, sizes.q_heads, rng);
            check_attention(sizes, DType::Float32, mask, rng);
            if (nq == 1) check_attention(sizes, DType::BFloat16, mask, rng);
        }
}

// ---------------------------------------------------------------------------------------------
// Rows over one or two keys at a large scale, float32, to SPEC's 1e-5. Causal with Nq = 40 > Nk = 2
// (the diagonal bottom-right): rows see 0, 1 or 2 keys, and at scale 0.45 a row over two keys is
// nearly one-hot, so the exact gradients are small and dS = P (dP - delta) cancels; only the last
// row's four heads carry dQ, so one row decides the error. Where it failed, on the path as it was:
// - P = exp(S - LSE) sharing LSE's rounding along the row, and delta stored as one float: 4 to 10
//   of this test's 300 checks per run, errors up to 8.4e-5 (bench/NOTES.md, session 17; RowTerms);
// - dP = dO V^T accumulated in float: a row whose two dP differ by 0.4 % (6.244, 6.218) gave
//   dQ 1.5-2.3e-5 in ~1.5 % of runs (session 29; Storage::Gradient). The naive float32
//   computation fails the same way, so the test once accepted 3x its error; with dP in double
//   the worst error in 20,000 checks was 3.0e-6.
// ---------------------------------------------------------------------------------------------
TEST(TiledAttention, FewKeysNearlyOneHotBackward) {
    auto rng = test_rng();
    constexpr int kDraws = 100;            // fresh inputs each
    constexpr float kLargeScale = 0.45f;   // 3.6 / sqrt(D): nearly one-hot rows
    const AttentionSizes sizes{1, 40, 2, 4, 2, 64, 64};
    TestMask causal = catalogue_test_mask("causal", sizes, 1, rng);
    for (int draw = 0; draw < kDraws; ++draw)
        check_attention(sizes, DType::Float32, causal, rng, CheckOptions{.scale = kLargeScale});
}

// ---------------------------------------------------------------------------------------------
// A single query row over few keys in 16 bits, against the naive computation. With delta taken
// as rowsum(dO * O) from the 16-bit O, O's rounding reached dQ and dK unattenuated where
// dS = P (dP - delta) cancels, and over the 8 rows of B = 2, Hq = 4 the error passed 2x the naive
// one in ~7 % of draws (18 tensors in 240 draws, GpuCatalogue.SizesOneAndSeventeen's note); with
// delta from the row's P and dP (RowTerms, tiled.cpp) none does. Fresh inputs each draw.
// ---------------------------------------------------------------------------------------------
TEST(TiledAttention, SingleRowSixteenBitBackward) {
    auto rng = test_rng();
    constexpr int kDraws = 80;  // the old delta failed 6 of 10 runs of half as many
    const AttentionSizes sizes{2, 1, 17, 4, 1, 64, 64};
    for (const char* name : {"document", "causal_document", "random_eviction"}) {
        TestMask mask = catalogue_test_mask(name, sizes, sizes.q_heads, rng);
        for (int draw = 0; draw < kDraws; ++draw)
            check_attention(sizes, draw % 2 ? DType::Float16 : DType::BFloat16, mask, rng);
    }
}

// ---------------------------------------------------------------------------------------------
// 4099 tokens, backward in full (a few seconds of float64 reference), with a different sparse
// mask per query head. Every kind's forward at this size is CatalogueMask.Sequence4099Forward.
// ---------------------------------------------------------------------------------------------
TEST(TiledAttention, Sequence4099Backward) {
    auto rng = test_rng();
    const AttentionSizes sizes{1, 4099, 4099, 4, 1, 64, 64};
    TestMask mask = catalogue_test_mask("sliding_window", sizes, sizes.q_heads, rng);
    check_attention(sizes, DType::Float32, mask, rng);
}

// ---------------------------------------------------------------------------------------------
// Head dims and dtypes.
// ---------------------------------------------------------------------------------------------
TEST(TiledAttention, HeadDimsAndDtypes) {
    auto rng = test_rng();
    const std::vector<std::string>& names = catalogue_names();
    std::size_t next_mask = std::uniform_int_distribution<std::size_t>(0, names.size() - 1)(rng);
    for (const int32_t head_dim : {64, 128, 256})
        for (const DType dtype : {DType::Float32, DType::BFloat16, DType::Float16, DType::Float64}) {
            const AttentionSizes sizes{1, 130, 100, 4, 1, head_dim, head_dim};
            TestMask mask = catalogue_test_mask(names[next_mask++ % names.size()], sizes, sizes.q_heads, rng);
            check_attention(sizes, dtype, mask, rng);
        }
}

TEST(TiledAttention, ValueDimDiffersFromHeadDim) {
    auto rng = test_rng();
    for (const auto& [head_dim, value_dim] : {std::pair{64, 32}, std::pair{40, 96}}) {
        const AttentionSizes sizes{2, 70, 90, 4, 2, head_dim, value_dim};
        TestMask mask = catalogue_test_mask("prefix_lm_document", sizes, 2, rng);
        check_attention(sizes, DType::Float32, mask, rng);
        check_attention(sizes, DType::Float64, mask, rng);
    }
}

TEST(TiledAttention, ExplicitScaleAndNoIndexTensor) {
    auto rng = test_rng();
    const AttentionSizes sizes{2, 75, 140, 2, 2, 64, 64};
    for (const bool causal : {false, true}) {
        TestMask mask;
        mask.causal = causal;
        mask.name = causal ? "causal" : "full";
        const float scale = std::uniform_real_distribution<float>(0.05f, 0.3f)(rng);
        check_attention(sizes, DType::Float32, mask, rng, {.scale = scale});
        check_attention(sizes, DType::Float64, mask, rng, {.scale = scale});
    }
}

// Rows that see no key: O = 0, LSE = -inf, dQ = 0; keys no row sees: dK = dV = 0. A causal
// C = 2 mask hiding a random band of rows from every column, plus Nq > Nk with causal (the top
// Nq - Nk rows see nothing).
TEST(TiledAttention, FullyMaskedRowsGiveZerosAndMinusInfinity) {
    auto rng = test_rng();
    for (const int32_t nk : {100, 40}) {
        const AttentionSizes sizes{1, 100, nk, 2, 1, 64, 64};
        TestMask mask;
        mask.causal = true;
        mask.name = "masked band";
        mask.indices.emplace(1, 1, nk, 2, rng);
        std::uniform_int_distribution<int32_t> row(0, sizes.nq);
        int32_t start = row(rng), end = row(rng);
        if (start > end) std::swap(start, end);
        for (int32_t j = 0; j < nk; ++j) {
            mask.indices->at(0, 0, j, 0) = start;
            mask.indices->at(0, 0, j, 1) = end;
        }
        check_attention(sizes, DType::Float32, mask, rng);
        check_attention(sizes, DType::BFloat16, mask, rng);
        check_attention(sizes, DType::Float64, mask, rng);
    }
}

// Keys that no row can see (here: whole key blocks and stray columns) may hold NaN and Inf:
// skipped tiles never read them, and masked elements of partial tiles never let them through.
TEST(TiledAttention, HiddenKeysAreNeverMixedIn) {
    auto rng = test_rng();
    const AttentionSizes sizes{1, 150, 300, 2, 1, 64, 64};
    IndexTensor indices(1, 1, sizes.nk, 2, rng);  // not causal, C = 2: LTS, UTE
    std::vector<bool> hidden(sizes.nk);
    for (int32_t j = 0; j < sizes.nk; ++j) {
        hidden[j] = (j >= 64 && j < 192) || std::uniform_int_distribution<int>(0, 9)(rng) == 0;
        indices.at(0, 0, j, 0) = hidden[j] ? 0 : sizes.nq;  // LTS = 0: hidden from every row
        indices.at(0, 0, j, 1) = 0;
    }
    const std::optional<TensorView> mask = indices.view();
    for (const DType dtype : {DType::Float32, DType::Float64}) {
        SCOPED_TRACE(to_string(dtype));
        HostTensor q(dtype, {1, sizes.nq, 2, 64}), k(dtype, {1, sizes.nk, 1, 64}),
            v(dtype, {1, sizes.nk, 1, 64}), dout(dtype, {1, sizes.nq, 2, 64});
        for (HostTensor* t : {&q, &k, &v, &dout}) t->fill_normal(rng);
        auto run = [&](HostTensor& kk, HostTensor& vv) {
            HostTensor out(dtype, {1, sizes.nq, 2, 64}), lse(DType::Float32, {1, 2, sizes.nq});
            HostTensor dq(dtype, {1, sizes.nq, 2, 64}), dk(dtype, {1, sizes.nk, 1, 64}),
                dv(dtype, {1, sizes.nk, 1, 64});
            forward({q.view(), kk.view(), vv.view(), out.view(), lse.view(), mask, false});
            backward({q.view(), kk.view(), vv.view(), out.view(), lse.view(), dout.view(), dq.view(), dk.view(), dv.view(),
                      mask, false});
            return std::vector<std::vector<uint32_t>>{out.bits(), lse.bits(), dq.bits()};
        };
        const auto clean = run(k, v);
        HostTensor k_bad = k, v_bad = v;
        for (int32_t j = 0; j < sizes.nk; ++j)
            if (hidden[j])
                for (int32_t d = 0; d < 64; ++d) {
                    k_bad.set(j * 64 + d, d % 2 ? std::numeric_limits<double>::quiet_NaN() : kInf);
                    v_bad.set(j * 64 + d, d % 2 ? -kInf : std::numeric_limits<double>::quiet_NaN());
                }
        EXPECT_EQ(run(k_bad, v_bad), clean);
    }
}

// The same bits whatever the thread count, run after run (SPEC: the CPU path is deterministic).
TEST(TiledAttention, DeterministicAcrossThreadCounts) {
    auto rng = test_rng();
    const AttentionSizes s{2, 300, 260, 4, 1, 64, 64};
    TestMask mask = catalogue_test_mask("document", s, 1, rng);
    HostTensor q(DType::BFloat16, {s.batch, s.nq, s.q_heads, 64}), k(DType::BFloat16, {s.batch, s.nk, 1, 64}),
        v(DType::BFloat16, {s.batch, s.nk, 1, 64}), dout(DType::BFloat16, {s.batch, s.nq, s.q_heads, 64});
    for (HostTensor* t : {&q, &k, &v, &dout}) t->fill_normal(rng);
    auto run = [&](int threads) {
        HostTensor out(DType::BFloat16, {s.batch, s.nq, s.q_heads, 64}), lse(DType::Float32, {s.batch, s.q_heads, s.nq});
        HostTensor dq(DType::BFloat16, {s.batch, s.nq, s.q_heads, 64}), dk(DType::BFloat16, {s.batch, s.nk, 1, 64}),
            dv(DType::BFloat16, {s.batch, s.nk, 1, 64});
        ForwardArgs fa{q.view(), k.view(), v.view(), out.view(), lse.view(), mask.view(), mask.causal};
        fa.num_threads = threads;
        forward(fa);
        BackwardArgs ba{q.view(), k.view(), v.view(), out.view(), lse.view(), dout.view(), dq.view(), dk.view(),
                        dv.view(), mask.view(), mask.causal};
        ba.num_threads = threads;
        backward(ba);
        return std::vector<std::vector<uint32_t>>{out.bits(), lse.bits(), dq.bits(), dk.bits(), dv.bits()};
    };
    const auto single = run(1);
    EXPECT_EQ(run(3), single);
    EXPECT_EQ(run(0), single);
}

}  // namespace
}  // namespace flashmask::testing
