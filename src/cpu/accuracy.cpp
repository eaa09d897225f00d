#include "cpu/accuracy.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

namespace flashmask::cpu {
namespace {

constexpr double kMinusInfinity = -std::numeric_limits<double>::infinity();

// The probabilities of query row `row` of (b, h) as the naive computation stores them:
// S_j = round(scale * q . k_j), P_j = round(softmax(S)_j) over the visible keys, P_j = 0 for
// hidden ones. Returns false (P all 0) when the row sees no key.
bool naive_probabilities(DType dtype, const ReferenceShape& shape, const MaskView& mask, double scale,
                         const double* q, const double* k, int32_t b, int32_t h, int32_t row,
                         std::vector<double>& p) {
    const int32_t kvh = shape.kv_head(h);
    const double* q_row = q + bshd_offset(b, row, h, shape.nq, shape.q_heads, shape.head_dim);
    p.assign(std::size_t(shape.nk), kMinusInfinity);  // scores first; -inf for hidden keys
    double row_max = kMinusInfinity;
    for (int32_t j = 0; j < shape.nk; ++j) {
        if (reference_masked(mask, b, h, row, j)) continue;
        const double* k_row = k + bshd_offset(b, j, kvh, shape.nk, shape.kv_heads, shape.head_dim);
        p[j] = round_to(dtype, scale * dot_product(q_row, k_row, shape.head_dim));
        row_max = std::max(row_max, p[j]);
    }
    if (row_max == kMinusInfinity) {
        std::fill(p.begin(), p.end(), 0.0);
        return false;
    }
    double denominator = 0.0;
    for (int32_t j = 0; j < shape.nk; ++j) denominator += std::exp(p[j] - row_max);  // exp(-inf) = 0
    for (int32_t j = 0; j < shape.nk; ++j) p[j] = round_to(dtype, std::exp(p[j] - row_max) / denominator);
    return true;
}

}  // namespace

double unit_roundoff(DType dtype) {
    switch (dtype) {
        case DType::BFloat16: return std::ldexp(1.0, -8);   // 8 significand bits
        case DType::Float16: return std::ldexp(1.0, -11);   // 11 significand bits
        default: return 0.0;
    }
}

double spec_bound(DType dtype, double naive_relative_error) {
    if (dtype == DType::Float32) return kFloat32Bound;
    if (dtype == DType::Float64) return kFloat64Bound;
    return std::min(kHalfBoundCap, std::max(kHalfBoundNaiveFactor * naive_relative_error, unit_roundoff(dtype)));
}

double ErrorAccumulator::relative() const {
    if (squared_reference == 0.0) return std::sqrt(squared_difference);
    return std::sqrt(squared_difference / squared_reference);
}

double relative_error(const std::vector<double>& got, const std::vector<double>& want) {
    ErrorAccumulator error;
    for (std::size_t i = 0; i < want.size(); ++i) error.add(got[i], want[i]);
    return error.relative();
}

std::vector<double> naive_forward(DType dtype, const ReferenceShape& shape, const MaskView& mask, double scale,
                                  const double* q, const double* k, const double* v,
                                  const std::vector<int32_t>* rows) {
    const int32_t d_v = shape.value_dim;
    std::vector<double> out(std::size_t(shape.batch) * shape.nq * shape.q_heads * d_v, 0.0);
    const std::vector<int32_t> computed_rows = rows_or_all(rows, shape.nq);
    std::vector<double> p;
    for (int32_t b = 0; b < shape.batch; ++b)
        for (int32_t h = 0; h < shape.q_heads; ++h) {
            const int32_t kvh = shape.kv_head(h);
            for (int32_t i : computed_rows) {
                if (!naive_probabilities(dtype, shape, mask, scale, q, k, b, h, i, p)) continue;
                double* out_row = out.data() + bshd_offset(b, i, h, shape.nq, shape.q_heads, d_v);
                for (int32_t j = 0; j < shape.nk; ++j) {
                    if (p[j] == 0.0) continue;
                    const double* v_row = v + bshd_offset(b, j, kvh, shape.nk, shape.kv_heads, d_v);
                    for (int32_t e = 0; e < d_v; ++e) out_row[e] += p[j] * v_row[e];
                }
                for (int32_t e = 0; e < d_v; ++e) out_row[e] = round_to(dtype, out_row[e]);
            }
        }
    return out;
}

ReferenceBackward naive_backward(DType dtype, const ReferenceShape& shape, const MaskView& mask, double scale,
                                 const double* q, const double* k, const double* v, const double* dout) {
    const int32_t d_qk = shape.head_dim, d_v = shape.value_dim;
    ReferenceBackward grad = ReferenceBackward::zeros(shape);
    std::vector<double> p, dp(std::size_t(shape.nk));
    for (int32_t b = 0; b < shape.batch; ++b)
        for (int32_t h = 0; h < shape.q_heads; ++h) {
            const int32_t kvh = shape.kv_head(h);
            for (int32_t i = 0; i < shape.nq; ++i) {
                if (!naive_probabilities(dtype, shape, mask, scale, q, k, b, h, i, p)) continue;
                const double* q_row = q + bshd_offset(b, i, h, shape.nq, shape.q_heads, d_qk);
                const double* dout_row = dout + bshd_offset(b, i, h, shape.nq, shape.q_heads, d_v);
                double* dq_row = grad.dq.data() + bshd_offset(b, i, h, shape.nq, shape.q_heads, d_qk);
                // dP_j = round(dO . V_j); rowsum(P * dP) is softmax-backward's internal reduction.
                double row_sum = 0.0;
                for (int32_t j = 0; j < shape.nk; ++j) {
                    if (p[j] == 0.0) continue;  // hidden (or underflowed) keys carry no gradient
                    const double* v_row = v + bshd_offset(b, j, kvh, shape.nk, shape.kv_heads, d_v);
                    dp[j] = round_to(dtype, dot_product(dout_row, v_row, d_v));
                    row_sum += p[j] * dp[j];
                }
                for (int32_t j = 0; j < shape.nk; ++j) {
                    if (p[j] == 0.0) continue;
                    const double ds = round_to(dtype, p[j] * (dp[j] - row_sum));
                    const std::size_t k_offset = bshd_offset(b, j, kvh, shape.nk, shape.kv_heads, d_qk);
                    const std::size_t v_offset = bshd_offset(b, j, kvh, shape.nk, shape.kv_heads, d_v);
                    for (int32_t e = 0; e < d_qk; ++e) {
                        dq_row[e] += ds * k[k_offset + e];
                        grad.dk[k_offset + e] += ds * q_row[e];
                    }
                    for (int32_t e = 0; e < d_v; ++e) grad.dv[v_offset + e] += p[j] * dout_row[e];
                }
            }
        }
    // One rounding per gradient element, after GQA's sum over the group's query heads.
    for (double& x : grad.dq) x = round_to(dtype, scale * x);
    for (double& x : grad.dk) x = round_to(dtype, scale * x);
    for (double& x : grad.dv) x = round_to(dtype, x);
    return grad;
}

}  // namespace flashmask::cpu
