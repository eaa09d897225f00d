// Helpers for the attention tests (test_cpu_*.cpp, test_api_*.cpp): host tensors of any storage
// dtype and test masks with one mask per (batch, mask head). The SPEC §5 error measures, bounds
// and naive in-dtype computation are the library's own, in cpu/accuracy.hpp.
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

#include "cpu/elements.hpp"
#include "cpu/reference.hpp"
#include "flashmask/api.hpp"
#include "flashmask/mask.hpp"
#include "test_mask_util.hpp"
#include "test_util.hpp"

namespace flashmask::testing {

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

    double get(int64_t i) const { return cpu::load_element(dtype_, words_.data(), i); }
    void set(int64_t i, double value) { cpu::store_element(dtype_, words_.data(), i, value); }
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

    TensorView view() { return make_contiguous_view(data(), dtype_, shape_); }

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

}  // namespace flashmask::testing
