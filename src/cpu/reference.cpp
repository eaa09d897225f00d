#include "cpu/reference.hpp"

#include <cmath>
#include <limits>

namespace flashmask::cpu {

double dot_product(const double* a, const double* b, int32_t n) {
    double partial[4] = {0.0, 0.0, 0.0, 0.0};
    int32_t d = 0;
    for (; d + 4 <= n; d += 4)
        for (int lane = 0; lane < 4; ++lane) partial[lane] += a[d + lane] * b[d + lane];
    for (; d < n; ++d) partial[0] += a[d] * b[d];
    return (partial[0] + partial[1]) + (partial[2] + partial[3]);
}

std::vector<int32_t> rows_or_all(const std::vector<int32_t>* rows, int32_t nq) {
    if (rows != nullptr) return *rows;
    std::vector<int32_t> all(std::size_t(nq > 0 ? nq : 0));
    for (int32_t i = 0; i < nq; ++i) all[std::size_t(i)] = i;
    return all;
}

namespace {

// The softmax of one query row over the visible keys. `probability[j]` is 0 for hidden keys;
// `lse` is -inf when no key is visible.
struct RowSoftmax {
    std::vector<double> probability;
    double lse;
};

RowSoftmax row_softmax(const ReferenceShape& shape, const MaskView& mask, double scale, const double* q,
                       const double* k, int32_t b, int32_t h, int32_t row) {
    const int32_t kvh = shape.kv_head(h);
    const double* q_row = q + bshd_offset(b, row, h, shape.nq, shape.q_heads, shape.head_dim);
    std::vector<double> score(std::size_t(shape.nk));
    std::vector<bool> visible(std::size_t(shape.nk));
    double row_max = -std::numeric_limits<double>::infinity();
    for (int32_t j = 0; j < shape.nk; ++j) {
        // Dense on purpose: every pair is scored, the mask only filters the softmax.
        score[j] = scale * dot_product(q_row, k + bshd_offset(b, j, kvh, shape.nk, shape.kv_heads, shape.head_dim),
                               shape.head_dim);
        visible[j] = !reference_masked(mask, b, h, row, j);
        if (visible[j]) row_max = std::fmax(row_max, score[j]);
    }
    RowSoftmax result{std::vector<double>(std::size_t(shape.nk), 0.0), -std::numeric_limits<double>::infinity()};
    if (row_max == -std::numeric_limits<double>::infinity()) return result;  // no visible key
    double denominator = 0.0;
    for (int32_t j = 0; j < shape.nk; ++j)
        if (visible[j]) denominator += std::exp(score[j] - row_max);
    for (int32_t j = 0; j < shape.nk; ++j)
        if (visible[j]) result.probability[j] = std::exp(score[j] - row_max) / denominator;
    result.lse = row_max + std::log(denominator);
    return result;
}

}  // namespace

bool reference_masked(const MaskView& mask, int32_t batch, int32_t query_head, int32_t row, int32_t column) {
    // causal: row i sees key j only if j <= i + (Nk - Nq) (bottom-right aligned diagonal).
    if (mask.causal && int64_t(column) > int64_t(row) + (int64_t(mask.nk) - int64_t(mask.nq))) return true;
    if (mask.layout == MaskLayout::None) return false;
    const int32_t head = query_head / mask.query_heads_per_mask_head;
    const int32_t* col = mask.indices + batch * mask.stride_batch + head * mask.stride_head +
                         column * mask.stride_column;
    auto slot = [&](int s) { return int64_t(col[s * mask.stride_slot]); };
    const int64_t i = row;
    switch (mask.layout) {
        case MaskLayout::CausalLower:         // causal, C = 1: LTS         -> [LTS, Nq)
            return i >= slot(0);
        case MaskLayout::CausalLowerBounded:  // causal, C = 2: LTS, LTE    -> [LTS, LTE)
            return slot(0) <= i && i < slot(1);
        case MaskLayout::LowerUpper:          // C = 2: LTS, UTE            -> [LTS, Nq) and [0, UTE)
            return i >= slot(0) || i < slot(1);
        case MaskLayout::LowerUpperBounded:   // C = 4: LTS, LTE, UTS, UTE  -> [LTS, LTE) and [UTS, UTE)
            return (slot(0) <= i && i < slot(1)) || (slot(2) <= i && i < slot(3));
        case MaskLayout::None: return false;
    }
    return false;
}

ReferenceForward reference_forward(const ReferenceShape& shape, const MaskView& mask, double scale,
                                   const double* q, const double* k, const double* v,
                                   const std::vector<int32_t>* rows) {
    ReferenceForward result;
    result.out.assign(std::size_t(shape.batch) * shape.nq * shape.q_heads * shape.value_dim, 0.0);
    result.lse.assign(std::size_t(shape.batch) * shape.q_heads * shape.nq, -std::numeric_limits<double>::infinity());
    const std::vector<int32_t> computed_rows = rows_or_all(rows, shape.nq);
    for (int32_t b = 0; b < shape.batch; ++b)
        for (int32_t h = 0; h < shape.q_heads; ++h)
            for (int32_t i : computed_rows) {
                const RowSoftmax softmax = row_softmax(shape, mask, scale, q, k, b, h, i);
                result.lse[(std::size_t(b) * shape.q_heads + h) * shape.nq + i] = softmax.lse;
                double* out_row = result.out.data() + bshd_offset(b, i, h, shape.nq, shape.q_heads, shape.value_dim);
                for (int32_t j = 0; j < shape.nk; ++j) {
                    const double p = softmax.probability[j];
                    if (p == 0.0) continue;
                    const double* v_row = v + bshd_offset(b, j, shape.kv_head(h), shape.nk, shape.kv_heads, shape.value_dim);
                    for (int32_t d = 0; d < shape.value_dim; ++d) out_row[d] += p * v_row[d];
                }
            }
    return result;
}

ReferenceBackward reference_backward(const ReferenceShape& shape, const MaskView& mask, double scale,
                                     const double* q, const double* k, const double* v, const double* dout) {
    const int32_t d_qk = shape.head_dim, d_v = shape.value_dim;
    ReferenceBackward grad = ReferenceBackward::zeros(shape);
    std::vector<double> dprobability(std::size_t(shape.nk));
    for (int32_t b = 0; b < shape.batch; ++b)
        for (int32_t h = 0; h < shape.q_heads; ++h) {
            const int32_t kvh = shape.kv_head(h);
            for (int32_t i = 0; i < shape.nq; ++i) {
                const RowSoftmax softmax = row_softmax(shape, mask, scale, q, k, b, h, i);
                const double* q_row = q + bshd_offset(b, i, h, shape.nq, shape.q_heads, d_qk);
                const double* dout_row = dout + bshd_offset(b, i, h, shape.nq, shape.q_heads, d_v);
                double* dq_row = grad.dq.data() + bshd_offset(b, i, h, shape.nq, shape.q_heads, d_qk);
                // dP_j = dO_i . V_j;  delta_i = sum_j P_ij dP_ij;  dS_ij = P_ij (dP_ij - delta_i).
                double delta = 0.0;
                for (int32_t j = 0; j < shape.nk; ++j) {
                    if (softmax.probability[j] == 0.0) continue;  // hidden keys carry no gradient
                    const double* v_row = v + bshd_offset(b, j, kvh, shape.nk, shape.kv_heads, d_v);
                    dprobability[j] = dot_product(dout_row, v_row, d_v);
                    delta += softmax.probability[j] * dprobability[j];
                }
                for (int32_t j = 0; j < shape.nk; ++j) {
                    const double p = softmax.probability[j];
                    if (p == 0.0) continue;
                    const double dscore = p * (dprobability[j] - delta);
                    const std::size_t k_offset = bshd_offset(b, j, kvh, shape.nk, shape.kv_heads, d_qk);
                    const std::size_t v_offset = bshd_offset(b, j, kvh, shape.nk, shape.kv_heads, d_v);
                    for (int32_t d = 0; d < d_qk; ++d) {
                        dq_row[d] += scale * dscore * k[k_offset + d];
                        grad.dk[k_offset + d] += scale * dscore * q_row[d];
                    }
                    for (int32_t d = 0; d < d_v; ++d) grad.dv[v_offset + d] += p * dout_row[d];
                }
            }
        }
    return grad;
}

}  // namespace flashmask::cpu
