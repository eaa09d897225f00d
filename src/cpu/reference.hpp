// The float64 oracle (SPEC §1, §2): dense attention in double precision, written to be obviously
// right rather than fast. It reads the mask on its own, straight from the SPEC §2 table
// (masked(i, j) from the raw index values and `causal`), and deliberately shares no code with
// tiles.hpp's canonical intervals, so that the tiled CPU path, the CUDA kernels and the tile
// classification are all checked against an independent reading.
//
// Every (query, key) pair is scored; the mask only decides which scores enter the softmax.
// That makes its cost O(B * Hq * Nq * Nk * (D + Dv)) whatever the mask, which is what a dense
// masked attention costs and what the tiled path's skipped tiles are measured against.
//
// Rows with no visible key: O = 0, LSE = -inf, and no gradient flows through them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "flashmask/tiles.hpp"

namespace flashmask::cpu {

struct ReferenceShape {
    int32_t batch, nq, nk, q_heads, kv_heads, head_dim, value_dim;

    int32_t kv_head(int32_t q_head) const { return q_head / (q_heads / kv_heads); }  // SPEC §1 GQA
};

struct ReferenceForward {
    std::vector<double> out;  // [B, Nq, Hq, Dv]
    std::vector<double> lse;  // [B, Hq, Nq]
};

struct ReferenceBackward {
    std::vector<double> dq, dk, dv;  // contiguous BSHD, shaped like q, k, v

    // Zero gradients of the right sizes, for a backward computation to accumulate into.
    static ReferenceBackward zeros(const ReferenceShape& shape) {
        const std::size_t q_rows = std::size_t(shape.batch) * shape.nq * shape.q_heads;
        const std::size_t kv_rows = std::size_t(shape.batch) * shape.nk * shape.kv_heads;
        return {std::vector<double>(q_rows * shape.head_dim, 0.0), std::vector<double>(kv_rows * shape.head_dim, 0.0),
                std::vector<double>(kv_rows * shape.value_dim, 0.0)};
    }
};

// Offset of element [b, s, h, 0] of a contiguous [B, S, H, width] tensor (the layout of every
// array here).
inline std::size_t bshd_offset(int32_t b, int32_t s, int32_t h, int32_t seq, int32_t heads, int32_t width) {
    return ((std::size_t(b) * seq + s) * heads + h) * std::size_t(width);
}

// <a, b> over n doubles, in four interleaved partial sums: the same float64 accuracy as one
// running sum without one long dependency chain (the reference and the naive computation score
// every pair, so this is most of their time).
double dot_product(const double* a, const double* b, int32_t n);

// The query rows a forward pass computes: `rows` when given, else every row of [0, nq).
std::vector<int32_t> rows_or_all(const std::vector<int32_t>* rows, int32_t nq);

// Is key `column` hidden from query row `row` for query head `query_head` of batch `batch`?
// The SPEC §2 table read literally; values outside [0, Nq] need no clamping in this form.
bool reference_masked(const MaskView& mask, int32_t batch, int32_t query_head, int32_t row, int32_t column);

// q [B, Nq, Hq, D], k [B, Nk, Hk, D], v [B, Nk, Hk, Dv]: contiguous BSHD doubles.
// `rows`: optional subset of query rows to compute (others are left at O = 0, LSE = -inf), so
// that tests of long sequences can sample rows of the forward pass.
ReferenceForward reference_forward(const ReferenceShape& shape, const MaskView& mask, double scale,
                                   const double* q, const double* k, const double* v,
                                   const std::vector<int32_t>* rows = nullptr);

// dout [B, Nq, Hq, Dv]. Recomputes the forward pass itself (no O / LSE inputs). With GQA, dK
// and dV sum over the query heads sharing a KV head.
ReferenceBackward reference_backward(const ReferenceShape& shape, const MaskView& mask, double scale,
                                     const double* q, const double* k, const double* v, const double* dout);

}  // namespace flashmask::cpu
