// Helpers for the attention tests (test_cpu_*.cpp, test_api_*.cpp): host tensors of any storage
// dtype, test masks with one mask per (batch, mask head), the naive low-precision computation
// that SPEC §5's bfloat16/float16 bound is measured against, and error norms.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "cpu/reference.hpp"
#include "flashmask/api.hpp"
#include "flashmask/float16.hpp"
#include "flashmask/mask.hpp"
#include "test_mask_util.hpp"
#include "test_util.hpp"

namespace flashmask::testing {

// x rounded to the nearest value of a storage dtype (float32, float16, bfloat16).
inline double round_to(DType dtype, double x) {
    const float f = float(x);
    switch (dtype) {
        case DType::BFloat16: return bfloat16_to_float(float_to_bfloat16(f));
        case DType::Float16: return float16_to_float(float_to_float16(f));
        default: return f;
    }
}

// An owning, contiguous host tensor of a float dtype, read and written as doubles.
class HostTensor {
public:
    HostTensor(DType dtype, std::vector<int64_t> shape) : dtype_(dtype), shape_(std::move(shape)) {
        words_.assign(std::size_t((numel() * int64_t(element_size(dtype_)) + 3) / 4), 0u);
    }

    int64_t numel() const {
        int64_t n = 1;
        for (int64_t extent : shape_) n *= extent;
        return n;
    }
    DType dtype() const { return dtype_; }
    const std::vector<int64_t>& shape() const { return shape_; }
    void* data() { return words_.data(); }

    double get(int64_t i) const {
        if (dtype_ == DType::Float32) return reinterpret_cast<const float*>(words_.data())[i];
        const uint16_t bits = reinterpret_cast<const uint16_t*>(words_.data())[i];
        return dtype_ == DType::BFloat16 ? bfloat16_to_float(bits) : float16_to_float(bits);
    }
    void set(int64_t i, double value) {
        if (dtype_ == DType::Float32) reinterpret_cast<float*>(words_.data())[i] = float(value);
        else if (dtype_ == DType::BFloat16) reinterpret_cast<uint16_t*>(words_.data())[i] = float_to_bfloat16(float(value));
        else reinterpret_cast<uint16_t*>(words_.data())[i] = float_to_float16(float(value));
    }
    std::vector<double> values() const {
        std::vector<double> out(static_cast<std::size_t>(numel()));
        for (int64_t i = 0; i < numel(); ++i) out[i] = get(i);
        return out;
    }
    // Fresh standard normals, rounded to the dtype.
    void fill_normal(std::mt19937_64& rng) {
        const std::vector<float> normals = random_normals(rng, std::size_t(numel()));
        for (int64_t i = 0; i < numel(); ++i) set(i, normals[i]);
    }
    // NaN everywhere: an output still holding NaN after a call was not written.
    void poison() {
        for (int64_t i = 0; i < numel(); ++i) set(i, std::numeric_limits<double>::quiet_NaN());
    }
    int64_t count_nan() const {
        int64_t n = 0;
        for (int64_t i = 0; i < numel(); ++i) n += std::isnan(get(i));
        return n;
    }
    std::vector<uint32_t> bits() const { return words_; }

    TensorView view() {
        TensorView t;
        t.data = data();
        t.dtype = dtype_;
        t.rank = int(shape_.size());
        int64_t stride = 1;
        for (int d = t.rank - 1; d >= 0; --d) {
            t.shape[d] = shape_[d];
            t.strides[d] = stride;
            stride *= shape_[d];
        }
        return t;
    }

private:
    DType dtype_;
    std::vector<int64_t> shape_;
    std::vector<uint32_t> words_;
};

struct AttentionSizes {
    int32_t batch, nq, nk, q_heads, kv_heads, head_dim, value_dim;

    cpu::ReferenceShape reference_shape() const {
        return {batch, nq, nk, q_heads, kv_heads, head_dim, value_dim};
    }
    std::string describe() const {
        return "B=" + std::to_string(batch) + " Nq=" + std::to_string(nq) + " Nk=" + std::to_string(nk) +
               " Hq=" + std::to_string(q_heads) + " Hk=" + std::to_string(kv_heads) + " D=" + std::to_string(head_dim) +
               " Dv=" + std::to_string(value_dim);
    }
};

// The mask of a test: `causal` plus, optionally, a [B, Hm, Nk, C] index tensor with padded
// strides (IndexTensor), each (batch, mask head) holding its own mask.
struct TestMask {
    bool causal = false;
    std::optional<IndexTensor> indices;
    std::string name;

    std::optional<TensorView> view() { return indices ? std::optional<TensorView>(indices->view()) : std::nullopt; }
    MaskView mask_view(const AttentionSizes& s) {
        return make_mask_view(view(), causal, s.nq, s.nk, s.q_heads);
    }
};

// Catalogue mask `name` for every (batch, mask head), each drawn from its own seed. For
// Nq != Nk the mask is the bottom-right Nq x Nk window of the square catalogue mask of
// N = max(Nq, Nk): its last Nk columns and last Nq rows (row values shifted, clamped to
// [0, Nq]). That window is what the bottom-right aligned causal diagonal describes, so causal
// catalogue masks keep their meaning (e.g. the last Nq queries of a causal-document batch).
inline TestMask catalogue_test_mask(const std::string& name, const AttentionSizes& s, int32_t mask_heads,
                                    std::mt19937_64& rng) {
    const int64_t n = std::max(s.nq, s.nk), row_shift = n - s.nq, column_shift = n - s.nk;
    TestMask mask;
    mask.name = name;
    for (int32_t b = 0; b < s.batch; ++b)
        for (int32_t m = 0; m < mask_heads; ++m) {
            const MaskSpec spec = catalogue_mask(name, n, rng());
            mask.causal = spec.causal;
            if (!spec.has_indices()) continue;
            if (!mask.indices) mask.indices.emplace(s.batch, mask_heads, s.nk, spec.slots, rng);
            for (int64_t j = 0; j < s.nk; ++j)
                for (int32_t slot = 0; slot < spec.slots; ++slot) {
                    const int64_t value = spec.indices[std::size_t((j + column_shift) * spec.slots + slot)] - row_shift;
                    mask.indices->at(b, m, j, slot) = int32_t(std::clamp<int64_t>(value, 0, s.nq));
                }
        }
    return mask;
}

// Random intervals of the layout (causal, C), one draw per column: valid values in [0, Nq]
// (fill_valid) or hostile ones (fill_hostile: outside [0, Nq], reversed, ...).
inline TestMask random_test_mask(bool causal, int32_t slots, bool hostile, const AttentionSizes& s, int32_t mask_heads,
                                 std::mt19937_64& rng) {
    TestMask mask;
    mask.causal = causal;
    mask.name = std::string(hostile ? "hostile" : "random") + (causal ? " causal" : "") + " C=" + std::to_string(slots);
    mask.indices.emplace(s.batch, mask_heads, s.nk, slots, rng);
    if (hostile) fill_hostile(*mask.indices, s.nq, rng);
    else fill_valid(*mask.indices, s.nq, rng);
    return mask;
}

// ---------------------------------------------------------------------------------------------
// The naive low-precision computation of SPEC §5: the reference's arithmetic with the inputs,
// scores, probabilities and outputs (and, backward, every intermediate product) rounded to the
// storage dtype. Its error against the float64 reference is the yardstick for bf16 / fp16.
// ---------------------------------------------------------------------------------------------
struct NaiveResult {
    std::vector<double> out, dq, dk, dv;
};

inline NaiveResult naive_low_precision(DType dtype, const AttentionSizes& s, const MaskView& mask, double scale,
                                       const std::vector<double>& q, const std::vector<double>& k,
                                       const std::vector<double>& v, const std::vector<double>* dout) {
    auto r = [dtype](double x) { return round_to(dtype, x); };
    const int32_t group = s.q_heads / s.kv_heads, d_qk = s.head_dim, d_v = s.value_dim;
    auto at = [](int32_t b, int32_t i, int32_t h, int32_t seq, int32_t heads, int32_t width) {
        return ((std::size_t(b) * seq + i) * heads + h) * std::size_t(width);
    };
    NaiveResult result;
    result.out.assign(std::size_t(s.batch) * s.nq * s.q_heads * d_v, 0.0);
    if (dout) {
        result.dq.assign(q.size(), 0.0);
        result.dk.assign(k.size(), 0.0);
        result.dv.assign(v.size(), 0.0);
    }
    std::vector<double> p(std::size_t(s.nk)), dp(std::size_t(s.nk));
    for (int32_t b = 0; b < s.batch; ++b)
        for (int32_t h = 0; h < s.q_heads; ++h) {
            const int32_t kvh = h / group;
            for (int32_t i = 0; i < s.nq; ++i) {
                const double* q_row = &q[at(b, i, h, s.nq, s.q_heads, d_qk)];
                double row_max = -std::numeric_limits<double>::infinity();
                for (int32_t j = 0; j < s.nk; ++j) {
                    if (cpu::reference_masked(mask, b, h, i, j)) { p[j] = -std::numeric_limits<double>::infinity(); continue; }
                    double dot = 0.0;
                    for (int32_t d = 0; d < d_qk; ++d) dot += q_row[d] * k[at(b, j, kvh, s.nk, s.kv_heads, d_qk) + d];
                    p[j] = r(scale * dot);
                    row_max = std::max(row_max, p[j]);
                }
                if (row_max == -std::numeric_limits<double>::infinity()) continue;  // nothing visible
                double denominator = 0.0;
                for (int32_t j = 0; j < s.nk; ++j) denominator += std::exp(p[j] - row_max);
                for (int32_t j = 0; j < s.nk; ++j) p[j] = r(std::exp(p[j] - row_max) / denominator);
                double* out_row = &result.out[at(b, i, h, s.nq, s.q_heads, d_v)];
                for (int32_t j = 0; j < s.nk; ++j)
                    for (int32_t d = 0; d < d_v; ++d) out_row[d] += p[j] * v[at(b, j, kvh, s.nk, s.kv_heads, d_v) + d];
                for (int32_t d = 0; d < d_v; ++d) out_row[d] = r(out_row[d]);
                if (!dout) continue;
                const double* do_row = &(*dout)[at(b, i, h, s.nq, s.q_heads, d_v)];
                double delta = 0.0;
                for (int32_t d = 0; d < d_v; ++d) delta += do_row[d] * out_row[d];
                delta = r(delta);
                double* dq_row = &result.dq[at(b, i, h, s.nq, s.q_heads, d_qk)];
                for (int32_t j = 0; j < s.nk; ++j) {
                    if (p[j] == 0.0) continue;
                    const std::size_t kj = at(b, j, kvh, s.nk, s.kv_heads, d_qk), vj = at(b, j, kvh, s.nk, s.kv_heads, d_v);
                    double dot = 0.0;
                    for (int32_t d = 0; d < d_v; ++d) dot += do_row[d] * v[vj + d];
                    const double ds = r(p[j] * (r(dot) - delta));
                    for (int32_t d = 0; d < d_qk; ++d) {
                        dq_row[d] += scale * ds * k[kj + d];
                        result.dk[kj + d] += scale * ds * q_row[d];
                    }
                    for (int32_t d = 0; d < d_v; ++d) result.dv[vj + d] += p[j] * do_row[d];
                }
            }
        }
    for (auto* grad : {&result.dq, &result.dk, &result.dv})
        for (double& x : *grad) x = r(x);
    return result;
}

// ||got - want|| / ||want|| (2-norms); ||got|| when want is all zeros.
inline double relative_error(const std::vector<double>& got, const std::vector<double>& want) {
    double diff = 0.0, norm = 0.0;
    for (std::size_t i = 0; i < want.size(); ++i) {
        diff += (got[i] - want[i]) * (got[i] - want[i]);
        norm += want[i] * want[i];
    }
    return norm > 0.0 ? std::sqrt(diff / norm) : std::sqrt(diff);
}

// SPEC §5 bounds.
inline constexpr double kFloat32Tolerance = 1e-5;
inline constexpr double kLowPrecisionCeiling = 2e-2;
// The error of rounding a result to the dtype once (half an ulp at 1): a naive computation that
// happens to be exact (one visible key) cannot demand less than that of the tiled path.
inline double unit_roundoff(DType dtype) {
    return dtype == DType::BFloat16 ? std::ldexp(1.0, -8) : dtype == DType::Float16 ? std::ldexp(1.0, -11) : 0.0;
}
inline double tolerance(DType dtype, double naive_error) {
    if (dtype == DType::Float32) return kFloat32Tolerance;
    return std::min(kLowPrecisionCeiling, std::max(2.0 * naive_error, unit_roundoff(dtype)));
}

}  // namespace flashmask::testing
