// The error measures and bounds of `flashmask run --check` (SPEC §5): relative errors against the float64
// reference, and the bound for 16-bit inputs, which is twice the error of the same attention
// computed naively in the input dtype (capped at 2e-2).
//
// "Naively in the input dtype" is what eager PyTorch does for
//     softmax((q * scale) @ k^T masked) @ v
// on bfloat16/float16 tensors: every operator accumulates in float32 and rounds its result to
// the input dtype. naive_forward_rows() and naive_backward() emulate exactly that, operator by
// operator (the backward being what autograd does through the same graph), reading the mask
// with the reference's own literal reading (reference_masked).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "cpu/reference.hpp"
#include "flashmask/float16.hpp"
#include "flashmask/types.hpp"

namespace flashmask::cli {

inline constexpr double kFloat32Bound = 1e-5;       // SPEC §5: float32 inputs
inline constexpr double kHalfBoundCap = 2e-2;        // SPEC §5: 16-bit inputs, never above this
inline constexpr double kHalfBoundNaiveFactor = 2.0; // SPEC §5: 16-bit inputs, 2x the naive error

// Rounds a float to `dtype` and back (the identity for float32).
inline float round_to(DType dtype, float x) {
    switch (dtype) {
        case DType::BFloat16: return bfloat16_to_float(float_to_bfloat16(x));
        case DType::Float16: return float16_to_float(float_to_float16(x));
        default: return x;
    }
}

// Accumulates ||x - ref||^2 and ||ref||^2 over any number of calls.
struct ErrorAccumulator {
    double squared_difference = 0.0, squared_reference = 0.0;
    int64_t count = 0;

    void add(double value, double reference) {
        squared_difference += (value - reference) * (value - reference);
        squared_reference += reference * reference;
        ++count;
    }
    // ||x - ref|| / ||ref||; the absolute norm ||x|| when the reference is all zeros (fully
    // masked rows), so that exact zeros give 0 and anything else shows.
    double relative() const {
        if (squared_reference == 0.0) return std::sqrt(squared_difference);
        return std::sqrt(squared_difference / squared_reference);
    }
};

// The SPEC §5 bound for a tensor, given the naive in-dtype error (ignored for float32).
inline double spec_bound(DType dtype, double naive_relative_error) {
    if (dtype == DType::Float32) return kFloat32Bound;
    return std::min(kHalfBoundCap, kHalfBoundNaiveFactor * naive_relative_error);
}

// Inputs of one checked sub-problem, as doubles in the reference's contiguous BSHD layout.
// The values are exactly those the library saw (already rounded to the input dtype).
struct CheckInputs {
    cpu::ReferenceShape shape;
    const double* q;     // [B, Nq, Hq, D]
    const double* k;     // [B, Nk, Hk, D]
    const double* v;     // [B, Nk, Hk, Dv]
    const double* dout;  // [B, Nq, Hq, Dv] (backward only)
};

namespace detail {

// The probabilities of one (batch, head, row) as naive in-dtype attention rounds them:
// s = round(round(q * scale) . k), softmax in float32 over the visible keys, rounded.
// Writes p[0..Nk) (0 for masked keys); returns false when the row sees no key.
inline bool naive_probabilities(const CheckInputs& in, const MaskView& mask, DType dtype, double scale, int32_t b,
                                int32_t h, int32_t row, std::vector<float>& scaled_q, std::vector<float>& p) {
    const auto& s = in.shape;
    const int32_t kvh = h / (s.q_heads / s.kv_heads);
    const double* q_row = in.q + ((int64_t(b) * s.nq + row) * s.q_heads + h) * s.head_dim;
    scaled_q.resize(std::size_t(s.head_dim));
    for (int32_t e = 0; e < s.head_dim; ++e) scaled_q[std::size_t(e)] = round_to(dtype, float(q_row[e] * scale));
    p.assign(std::size_t(s.nk), 0.0f);
    float max_score = -std::numeric_limits<float>::infinity();
    bool any_visible = false;
    for (int32_t j = 0; j < s.nk; ++j) {
        if (cpu::reference_masked(mask, b, h, row, j)) continue;
        const double* k_row = in.k + ((int64_t(b) * s.nk + j) * s.kv_heads + kvh) * s.head_dim;
        float dot = 0.0f;
        for (int32_t e = 0; e < s.head_dim; ++e) dot += scaled_q[std::size_t(e)] * float(k_row[e]);
        p[std::size_t(j)] = round_to(dtype, dot);
        max_score = any_visible ? std::max(max_score, p[std::size_t(j)]) : p[std::size_t(j)];
        any_visible = true;
    }
    if (!any_visible) return false;
    float sum = 0.0f;
    for (int32_t j = 0; j < s.nk; ++j) {
        if (cpu::reference_masked(mask, b, h, row, j)) continue;
        p[std::size_t(j)] = std::exp(p[std::size_t(j)] - max_score);
        sum += p[std::size_t(j)];
    }
    for (int32_t j = 0; j < s.nk; ++j) p[std::size_t(j)] = round_to(dtype, p[std::size_t(j)] / sum);
    return true;
}

}  // namespace detail

// Naive in-dtype forward output for the given rows of every (batch, head): a full-size
// [B, Nq, Hq, Dv] array, zero outside `rows` and on rows that see no key.
inline std::vector<double> naive_forward_rows(const CheckInputs& in, const MaskView& mask, DType dtype, double scale,
                                              const std::vector<int32_t>& rows) {
    const auto& s = in.shape;
    std::vector<double> out(std::size_t(int64_t(s.batch) * s.nq * s.q_heads * s.value_dim), 0.0);
    std::vector<float> scaled_q, p, accumulator(std::size_t(s.value_dim));
    for (int32_t b = 0; b < s.batch; ++b)
        for (int32_t h = 0; h < s.q_heads; ++h) {
            const int32_t kvh = h / (s.q_heads / s.kv_heads);
            for (int32_t row : rows) {
                if (!detail::naive_probabilities(in, mask, dtype, scale, b, h, row, scaled_q, p)) continue;
                std::fill(accumulator.begin(), accumulator.end(), 0.0f);
                for (int32_t j = 0; j < s.nk; ++j) {
                    if (p[std::size_t(j)] == 0.0f) continue;
                    const double* v_row = in.v + ((int64_t(b) * s.nk + j) * s.kv_heads + kvh) * s.value_dim;
                    for (int32_t e = 0; e < s.value_dim; ++e) accumulator[std::size_t(e)] += p[std::size_t(j)] * float(v_row[e]);
                }
                double* o = out.data() + ((int64_t(b) * s.nq + row) * s.q_heads + h) * s.value_dim;
                for (int32_t e = 0; e < s.value_dim; ++e) o[e] = round_to(dtype, accumulator[std::size_t(e)]);
            }
        }
    return out;
}

// Naive in-dtype backward (what autograd computes through the graph above): dV = P^T dO,
// dP = dO V^T, dS = P * (dP - rowsum(dP * P)), dQ = (dS K) * scale, dK = dS^T (q * scale),
// each operator accumulating in float32 and rounding its result. GQA sums in float32.
inline cpu::ReferenceBackward naive_backward(const CheckInputs& in, const MaskView& mask, DType dtype, double scale) {
    const auto& s = in.shape;
    const int64_t d = s.head_dim, dv = s.value_dim;
    cpu::ReferenceBackward grads;
    grads.dq.assign(std::size_t(int64_t(s.batch) * s.nq * s.q_heads * d), 0.0);
    std::vector<float> dk_sum(std::size_t(int64_t(s.batch) * s.nk * s.kv_heads * d), 0.0f);
    std::vector<float> dv_sum(std::size_t(int64_t(s.batch) * s.nk * s.kv_heads * dv), 0.0f);
    std::vector<float> scaled_q, p, dp(static_cast<std::size_t>(s.nk)), dq_row(static_cast<std::size_t>(d));
    for (int32_t b = 0; b < s.batch; ++b)
        for (int32_t h = 0; h < s.q_heads; ++h) {
            const int32_t kvh = h / (s.q_heads / s.kv_heads);
            for (int32_t row = 0; row < s.nq; ++row) {
                if (!detail::naive_probabilities(in, mask, dtype, scale, b, h, row, scaled_q, p)) continue;
                const double* dout_row = in.dout + ((int64_t(b) * s.nq + row) * s.q_heads + h) * dv;
                float row_sum = 0.0f;
                for (int32_t j = 0; j < s.nk; ++j) {
                    dp[std::size_t(j)] = 0.0f;
                    if (p[std::size_t(j)] == 0.0f) continue;
                    const int64_t kv_index = (int64_t(b) * s.nk + j) * s.kv_heads + kvh;
                    const double* v_row = in.v + kv_index * dv;
                    float dot = 0.0f;
                    for (int64_t e = 0; e < dv; ++e) {
                        dot += float(dout_row[e]) * float(v_row[e]);
                        dv_sum[std::size_t(kv_index * dv + e)] += p[std::size_t(j)] * float(dout_row[e]);
                    }
                    dp[std::size_t(j)] = round_to(dtype, dot);
                    row_sum += dp[std::size_t(j)] * p[std::size_t(j)];
                }
                std::fill(dq_row.begin(), dq_row.end(), 0.0f);
                for (int32_t j = 0; j < s.nk; ++j) {
                    if (p[std::size_t(j)] == 0.0f) continue;
                    const float ds = round_to(dtype, p[std::size_t(j)] * (dp[std::size_t(j)] - row_sum));
                    const int64_t kv_index = (int64_t(b) * s.nk + j) * s.kv_heads + kvh;
                    const double* k_row = in.k + kv_index * d;
                    for (int64_t e = 0; e < d; ++e) {
                        dq_row[std::size_t(e)] += ds * float(k_row[e]);
                        dk_sum[std::size_t(kv_index * d + e)] += ds * scaled_q[std::size_t(e)];
                    }
                }
                double* dq = grads.dq.data() + ((int64_t(b) * s.nq + row) * s.q_heads + h) * d;
                for (int64_t e = 0; e < d; ++e)
                    dq[e] = round_to(dtype, float(round_to(dtype, dq_row[std::size_t(e)]) * scale));
            }
        }
    grads.dk.resize(dk_sum.size());
    grads.dv.resize(dv_sum.size());
    for (std::size_t i = 0; i < dk_sum.size(); ++i) grads.dk[i] = round_to(dtype, dk_sum[i]);
    for (std::size_t i = 0; i < dv_sum.size(); ++i) grads.dv[i] = round_to(dtype, dv_sum[i]);
    return grads;
}

}  // namespace flashmask::cli
