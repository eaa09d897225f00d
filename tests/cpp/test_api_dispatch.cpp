// forward() / backward() beyond the numbers: any strides with a contiguous last dimension give
// the very same bits as contiguous tensors (SPEC §1: a [B, H, N, D] tensor passed as a
// transposed view works unchanged); the documented zero-size behaviour; the default scale;
// and cuda_available() in a CPU-only build.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "test_cpu_common.hpp"

namespace flashmask::testing {
namespace {

// A [B, H, N, W] allocation viewed as the [B, N, H, W] operand the API expects.
struct HeadMajorTensor {
    HostTensor storage;
    HeadMajorTensor(DType dtype, int64_t b, int64_t n, int64_t h, int64_t w) : storage(dtype, {b, h, n, w}) {}
    TensorView view() {
        TensorView t = storage.view();
        std::swap(t.shape[1], t.shape[2]);
        std::swap(t.strides[1], t.strides[2]);
        return t;
    }
    // Element [b, s, h, d] of the BSHD view.
    int64_t offset(int64_t b, int64_t s, int64_t h, int64_t d) const {
        const auto& e = storage.shape();  // [B, H, N, W]
        return ((b * e[1] + h) * e[2] + s) * e[3] + d;
    }
};

TEST(ApiDispatch, TransposedViewsGiveTheSameBits) {
    auto rng = test_rng();
    const AttentionSizes s{2, 70, 90, 4, 2, 64, 64};
    for (const DType dtype : {DType::Float32, DType::BFloat16}) {
        TestMask mask = catalogue_test_mask("share_question", s, s.kv_heads, rng);
        // Contiguous BSHD operands.
        HostTensor q(dtype, {s.batch, s.nq, s.q_heads, 64}), k(dtype, {s.batch, s.nk, s.kv_heads, 64}),
            v(dtype, {s.batch, s.nk, s.kv_heads, 64}), dout(dtype, {s.batch, s.nq, s.q_heads, 64});
        for (HostTensor* t : {&q, &k, &v, &dout}) t->fill_normal(rng);
        HostTensor out(dtype, {s.batch, s.nq, s.q_heads, 64}), lse(DType::Float32, {s.batch, s.q_heads, s.nq}),
            dq(dtype, {s.batch, s.nq, s.q_heads, 64}), dk(dtype, {s.batch, s.nk, s.kv_heads, 64}),
            dv(dtype, {s.batch, s.nk, s.kv_heads, 64});
        for (HostTensor* t : {&out, &lse, &dq, &dk, &dv}) t->poison();  // NaN != NaN: unwritten shows
        forward({q.view(), k.view(), v.view(), out.view(), lse.view(), mask.view(), mask.causal});
        backward({q.view(), k.view(), v.view(), out.view(), lse.view(), dout.view(), dq.view(), dk.view(), dv.view(),
                  mask.view(), mask.causal});

        // The same values in head-major storage, passed as transposed views; LSE with padded rows.
        HeadMajorTensor q2(dtype, s.batch, s.nq, s.q_heads, 64), k2(dtype, s.batch, s.nk, s.kv_heads, 64),
            v2(dtype, s.batch, s.nk, s.kv_heads, 64), dout2(dtype, s.batch, s.nq, s.q_heads, 64),
            out2(dtype, s.batch, s.nq, s.q_heads, 64), dq2(dtype, s.batch, s.nq, s.q_heads, 64),
            dk2(dtype, s.batch, s.nk, s.kv_heads, 64), dv2(dtype, s.batch, s.nk, s.kv_heads, 64);
        constexpr int64_t kLsePadding = 5;
        HostTensor lse2_storage(DType::Float32, {s.batch, s.q_heads, s.nq + kLsePadding});
        TensorView lse2 = lse2_storage.view();
        lse2.shape[2] = s.nq;
        for (HostTensor* t : {&out2.storage, &dq2.storage, &dk2.storage, &dv2.storage, &lse2_storage}) t->poison();
        auto copy = [&](const HostTensor& from, HeadMajorTensor& to) {
            const auto& e = from.shape();
            for (int64_t b = 0; b < e[0]; ++b)
                for (int64_t n = 0; n < e[1]; ++n)
                    for (int64_t h = 0; h < e[2]; ++h)
                        for (int64_t d = 0; d < e[3]; ++d)
                            to.storage.set(to.offset(b, n, h, d), from.get(((b * e[1] + n) * e[2] + h) * e[3] + d));
        };
        copy(q, q2), copy(k, k2), copy(v, v2), copy(dout, dout2);
        forward({q2.view(), k2.view(), v2.view(), out2.view(), lse2, mask.view(), mask.causal});
        backward({q2.view(), k2.view(), v2.view(), out2.view(), lse2, dout2.view(), dq2.view(), dk2.view(), dv2.view(),
                  mask.view(), mask.causal});

        auto expect_same = [&](const char* name, const HostTensor& contiguous, const HeadMajorTensor& strided) {
            const auto& e = contiguous.shape();
            int64_t different = 0;
            for (int64_t b = 0; b < e[0]; ++b)
                for (int64_t n = 0; n < e[1]; ++n)
                    for (int64_t h = 0; h < e[2]; ++h)
                        for (int64_t d = 0; d < e[3]; ++d)
                            different += contiguous.get(((b * e[1] + n) * e[2] + h) * e[3] + d) !=
                                         strided.storage.get(strided.offset(b, n, h, d));
            EXPECT_EQ(different, 0) << name << " " << to_string(dtype);
        };
        expect_same("out", out, out2);
        expect_same("dq", dq, dq2);
        expect_same("dk", dk, dk2);
        expect_same("dv", dv, dv2);
        int64_t lse_different = 0;
        for (int64_t row = 0; row < int64_t(s.batch) * s.q_heads; ++row)
            for (int64_t i = 0; i < s.nq; ++i)
                lse_different += lse.get(row * s.nq + i) != lse2_storage.get(row * (s.nq + kLsePadding) + i);
        EXPECT_EQ(lse_different, 0) << "lse " << to_string(dtype);
        // The padding between the strided LSE rows is not the tensor's: it keeps its poison.
        int64_t padding_written = 0;
        for (int64_t row = 0; row < int64_t(s.batch) * s.q_heads; ++row)
            for (int64_t i = s.nq; i < s.nq + kLsePadding; ++i)
                padding_written += !std::isnan(lse2_storage.get(row * (s.nq + kLsePadding) + i));
        EXPECT_EQ(padding_written, 0) << "lse padding written, " << to_string(dtype);
    }
}

// The zero-size decisions documented in src/api/dispatch.cpp.
struct Buffers {
    HostTensor q, k, v, out, lse, dout, dq, dk, dv;
    explicit Buffers(const AttentionSizes& s)
        : q(DType::Float32, {s.batch, s.nq, s.q_heads, s.head_dim}), k(DType::Float32, {s.batch, s.nk, s.kv_heads, s.head_dim}),
          v(DType::Float32, {s.batch, s.nk, s.kv_heads, s.value_dim}),
          out(DType::Float32, {s.batch, s.nq, s.q_heads, s.value_dim}), lse(DType::Float32, {s.batch, s.q_heads, s.nq}),
          dout(DType::Float32, {s.batch, s.nq, s.q_heads, s.value_dim}),
          dq(DType::Float32, {s.batch, s.nq, s.q_heads, s.head_dim}), dk(DType::Float32, {s.batch, s.nk, s.kv_heads, s.head_dim}),
          dv(DType::Float32, {s.batch, s.nk, s.kv_heads, s.value_dim}) {}
    void run(std::mt19937_64& rng, bool causal) {
        for (HostTensor* t : {&q, &k, &v, &dout}) t->fill_normal(rng);
        for (HostTensor* t : {&out, &lse, &dq, &dk, &dv}) t->poison();
        forward({q.view(), k.view(), v.view(), out.view(), lse.view(), std::nullopt, causal});
        backward({q.view(), k.view(), v.view(), out.view(), lse.view(), dout.view(), dq.view(), dk.view(), dv.view(),
                  std::nullopt, causal});
    }
};

bool all_equal(const HostTensor& t, double value) {
    for (int64_t i = 0; i < t.numel(); ++i)
        if (!(t.get(i) == value)) return false;
    return true;
}

TEST(ApiDispatch, NoQueryRowsMeansZeroKeyGradients) {
    auto rng = test_rng();
    Buffers buffers({2, 0, 37, 4, 2, 64, 64});
    buffers.run(rng, false);
    EXPECT_TRUE(all_equal(buffers.dk, 0.0));
    EXPECT_TRUE(all_equal(buffers.dv, 0.0));
}

TEST(ApiDispatch, NoKeysMeansZeroOutputAndMinusInfinity) {
    auto rng = test_rng();
    for (const bool causal : {false, true}) {
        Buffers buffers({2, 19, 0, 4, 2, 64, 64});
        buffers.run(rng, causal);
        EXPECT_TRUE(all_equal(buffers.out, 0.0));
        EXPECT_TRUE(all_equal(buffers.lse, -std::numeric_limits<double>::infinity()));
        EXPECT_TRUE(all_equal(buffers.dq, 0.0));
    }
}

TEST(ApiDispatch, EmptyBatchIsAccepted) {
    auto rng = test_rng();
    Buffers buffers({0, 19, 23, 4, 2, 64, 64});
    EXPECT_NO_THROW(buffers.run(rng, true));
}

TEST(ApiDispatch, DefaultScaleIsOneOverSqrtHeadDim) {
    auto rng = test_rng();
    const AttentionSizes s{1, 40, 40, 2, 2, 128, 128};
    Buffers implicit(s), explicit_scale(s);
    for (HostTensor* t : {&implicit.q, &implicit.k, &implicit.v}) t->fill_normal(rng);
    explicit_scale.q = implicit.q, explicit_scale.k = implicit.k, explicit_scale.v = implicit.v;
    for (HostTensor* t : {&implicit.out, &implicit.lse, &explicit_scale.out, &explicit_scale.lse}) t->poison();
    forward({implicit.q.view(), implicit.k.view(), implicit.v.view(), implicit.out.view(), implicit.lse.view(),
             std::nullopt, true});
    ForwardArgs args{explicit_scale.q.view(), explicit_scale.k.view(), explicit_scale.v.view(),
                     explicit_scale.out.view(), explicit_scale.lse.view(), std::nullopt, true};
    args.scale = float(1.0 / std::sqrt(128.0));
    forward(args);
    ASSERT_EQ(implicit.out.count_nan() + implicit.lse.count_nan(), 0) << "not every output written";
    EXPECT_EQ(implicit.out.bits(), explicit_scale.out.bits());
    EXPECT_EQ(implicit.lse.bits(), explicit_scale.lse.bits());
}

#ifndef FLASHMASK_WITH_CUDA
TEST(ApiDispatch, NoCudaInACpuOnlyBuild) { EXPECT_FALSE(cuda_available()); }
#endif

}  // namespace
}  // namespace flashmask::testing
