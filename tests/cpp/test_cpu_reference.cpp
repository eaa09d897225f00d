// The float64 reference judged on its own: its reading of the mask agrees with the canonical
// intervals (to_dense) on catalogue and hostile masks; its backward is the gradient of its
// forward (central finite differences); and a document mask is the same as attention run on
// each document alone, with no mask machinery at all.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "cpu/reference.hpp"
#include "test_cpu_common.hpp"

namespace flashmask::testing {
namespace {

std::vector<double> normals(std::mt19937_64& rng, std::size_t count) {
    const std::vector<float> values = random_normals(rng, count);
    return {values.begin(), values.end()};
}

// reference_masked() reads the SPEC §2 table on its own; it must agree with column_intervals()
// (through to_dense) on every catalogue mask and on hostile values of every layout.
TEST(ReferenceMask, AgreesWithCanonicalIntervals) {
    auto rng = test_rng();
    const AttentionSizes square{2, 67, 67, 4, 4, 8, 8}, wide{2, 41, 90, 4, 4, 8, 8}, tall{2, 90, 41, 4, 4, 8, 8};
    std::vector<std::pair<TestMask, AttentionSizes>> cases;
    for (const AttentionSizes& s : {square, wide, tall}) {
        for (const std::string& name : catalogue_names()) cases.emplace_back(catalogue_test_mask(name, s, 2, rng), s);
        for (const auto& [causal, slots] : kIndexLayouts)
            cases.emplace_back(random_test_mask(causal, slots, true, s, 2, rng), s);
    }
    for (auto& [mask, s] : cases) {
        const MaskView view = mask.mask_view(s);
        for (int32_t b = 0; b < s.batch; ++b)
            for (int32_t h = 0; h < s.q_heads; ++h) {
                const std::vector<uint8_t> visible = to_dense(view, b, view.mask_head(h));
                int64_t disagreements = 0;
                for (int32_t i = 0; i < s.nq; ++i)
                    for (int32_t j = 0; j < s.nk; ++j)
                        disagreements += cpu::reference_masked(view, b, h, i, j) == bool(visible[i * s.nk + j]);
                EXPECT_EQ(disagreements, 0) << mask.name << " " << s.describe() << " b=" << b << " h=" << h;
            }
    }
}

// L = sum(dO * O): the reference backward must be its gradient. Central differences in float64
// with step 1e-6 are accurate to ~1e-9 here; GQA, Nq != Nk, D != Dv, a fully masked row and a
// key no row sees are all in the problem.
TEST(ReferenceBackward, IsTheGradientOfTheForward) {
    auto rng = test_rng();
    const AttentionSizes s{1, 6, 9, 4, 2, 3, 2};
    TestMask mask = random_test_mask(false, 4, false, s, s.q_heads, rng);
    // Mask head (= query head) 0: row 2 sees nothing. Mask head 1: no row sees key 4.
    for (int32_t j = 0; j < s.nk; ++j) {
        mask.indices->at(0, 0, j, 0) = 2;
        mask.indices->at(0, 0, j, 1) = 3;
    }
    for (int32_t slot = 0; slot < 4; ++slot) mask.indices->at(0, 1, 4, slot) = slot % 2 ? s.nq : 0;
    const MaskView view = mask.mask_view(s);
    const double scale = 0.7;
    std::vector<double> q = normals(rng, std::size_t(s.batch) * s.nq * s.q_heads * s.head_dim);
    std::vector<double> k = normals(rng, std::size_t(s.batch) * s.nk * s.kv_heads * s.head_dim);
    std::vector<double> v = normals(rng, std::size_t(s.batch) * s.nk * s.kv_heads * s.value_dim);
    const std::vector<double> dout = normals(rng, std::size_t(s.batch) * s.nq * s.q_heads * s.value_dim);
    const cpu::ReferenceBackward grad =
        cpu::reference_backward(s.reference_shape(), view, scale, q.data(), k.data(), v.data(), dout.data());
    auto loss = [&] {
        const cpu::ReferenceForward f = cpu::reference_forward(s.reference_shape(), view, scale, q.data(), k.data(), v.data());
        return std::inner_product(f.out.begin(), f.out.end(), dout.begin(), 0.0);
    };
    constexpr double kStep = 1e-6, kTolerance = 1e-7;
    for (auto [x, analytic, name] : {std::tuple{&q, &grad.dq, "dq"}, {&k, &grad.dk, "dk"}, {&v, &grad.dv, "dv"}})
        for (std::size_t i = 0; i < x->size(); ++i) {
            const double saved = (*x)[i];
            (*x)[i] = saved + kStep;
            const double up = loss();
            (*x)[i] = saved - kStep;
            const double down = loss();
            (*x)[i] = saved;
            const double numeric = (up - down) / (2 * kStep);
            EXPECT_NEAR((*analytic)[i], numeric, kTolerance * (1.0 + std::abs(numeric))) << name << "[" << i << "]";
        }
    // No gradient flows through row 2 of query head 0, which sees nothing.
    for (int32_t d = 0; d < s.head_dim; ++d) EXPECT_EQ(grad.dq[(2 * s.q_heads + 0) * s.head_dim + d], 0.0);
}

// Rows that see no key: O = 0, LSE = -inf, and only those rows are touched by `rows`.
TEST(ReferenceForward, EmptyRowsAndRowSubsets) {
    auto rng = test_rng();
    const AttentionSizes s{1, 20, 30, 2, 1, 8, 8};
    TestMask mask;
    mask.causal = true;  // Nq < Nk: every row sees keys j <= i + 10
    mask.indices.emplace(1, 1, s.nk, 2, rng);
    for (int32_t j = 0; j < s.nk; ++j) {
        mask.indices->at(0, 0, j, 0) = 5;  // rows [5, 9) see nothing
        mask.indices->at(0, 0, j, 1) = 9;
    }
    const MaskView view = mask.mask_view(s);
    const std::vector<double> q = normals(rng, std::size_t(s.nq) * s.q_heads * s.head_dim);
    const std::vector<double> k = normals(rng, std::size_t(s.nk) * s.head_dim), v = normals(rng, std::size_t(s.nk) * s.value_dim);
    const cpu::ReferenceForward all = cpu::reference_forward(s.reference_shape(), view, 0.3, q.data(), k.data(), v.data());
    const std::vector<int32_t> rows = {0, 6, 13, 19};
    const cpu::ReferenceForward some =
        cpu::reference_forward(s.reference_shape(), view, 0.3, q.data(), k.data(), v.data(), &rows);
    for (int32_t h = 0; h < s.q_heads; ++h)
        for (int32_t i = 0; i < s.nq; ++i) {
            const bool empty = i >= 5 && i < 9, sampled = std::count(rows.begin(), rows.end(), i) > 0;
            const double lse = all.lse[h * s.nq + i];
            EXPECT_EQ(std::isinf(lse) && lse < 0, empty) << "row " << i;
            EXPECT_EQ(some.lse[h * s.nq + i], sampled ? lse : -std::numeric_limits<double>::infinity());
            for (int32_t d = 0; d < s.value_dim; ++d) {
                const double o = all.out[(i * s.q_heads + h) * s.value_dim + d];
                if (empty) EXPECT_EQ(o, 0.0);
                EXPECT_EQ(some.out[(i * s.q_heads + h) * s.value_dim + d], sampled ? o : 0.0);
            }
        }
}

// A (causal) document mask is attention run on each document alone, (causally) without any
// index tensor: an independent check of the reference's masking and softmax.
TEST(ReferenceForward, DocumentMaskIsAttentionPerDocument) {
    auto rng = test_rng();
    const std::vector<int64_t> lengths = {5, 1, 12, 7};
    const int32_t n = 25, heads = 2, dim = 6;
    for (const bool causal : {true, false}) {
        const MaskSpec spec = causal ? causal_document_mask(lengths) : document_mask(lengths);
        const cpu::ReferenceShape shape{1, n, n, heads, heads, dim, dim};
        const std::vector<double> q = normals(rng, std::size_t(n) * heads * dim), k = normals(rng, q.size()),
                                  v = normals(rng, q.size());
        MaskView view = spec.mask_view();
        view.query_heads_per_mask_head = heads;
        const cpu::ReferenceForward whole = cpu::reference_forward(shape, view, 0.5, q.data(), k.data(), v.data());
        int32_t start = 0;
        for (const int64_t length : lengths) {
            const int32_t len = int32_t(length);
            const std::size_t offset = std::size_t(start) * heads * dim, count = std::size_t(len) * heads * dim;
            const cpu::ReferenceShape part{1, len, len, heads, heads, dim, dim};
            MaskView plain;
            plain.causal = causal;
            plain.nq = plain.nk = len;
            plain.query_heads_per_mask_head = heads;
            const cpu::ReferenceForward alone =
                cpu::reference_forward(part, plain, 0.5, q.data() + offset, k.data() + offset, v.data() + offset);
            for (std::size_t e = 0; e < count; ++e) EXPECT_NEAR(whole.out[offset + e], alone.out[e], 1e-12);
            for (int32_t h = 0; h < heads; ++h)
                for (int32_t i = 0; i < len; ++i)
                    EXPECT_NEAR(whole.lse[h * n + start + i], alone.lse[h * len + i], 1e-12);
            start += len;
        }
    }
}

}  // namespace
}  // namespace flashmask::testing
