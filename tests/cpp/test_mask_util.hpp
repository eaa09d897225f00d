// Test helpers for the mask model: an independent, literal reading of the SPEC §2 table,
// strided index tensors filled with hostile or valid random values, and 2-d prefix sums for
// counting the visible elements of a tile. Nothing here calls column_intervals(): the tests use
// these to judge it.
#pragma once

#include <array>
#include <cstdint>
#include <random>
#include <vector>

#include "flashmask/mask.hpp"

namespace flashmask::testing {

// SPEC §2, one element: is row i hidden from key j, given the column's C raw (unclamped) values?
inline bool spec_masked(const std::array<int64_t, 4>& v, int slots, bool causal, int64_t i, int64_t j, int64_t nq,
                        int64_t nk) {
    auto in = [i](int64_t start, int64_t end) { return start <= i && i < end; };
    if (causal && j > i + (nk - nq)) return true;  // right of the bottom-right aligned diagonal
    if (causal && slots == 1) return in(v[0], nq);
    if (causal && slots == 2) return in(v[0], v[1]);
    if (!causal && slots == 2) return in(v[0], nq) || in(0, v[1]);
    if (!causal && slots == 4) return in(v[0], v[1]) || in(v[2], v[3]);
    return false;  // no index tensor
}

// The (causal, C) layouts an index tensor may have (SPEC §2): causal with C = 1 (LTS) or 2 (LTS,
// LTE); not causal with C = 2 (LTS, UTE) or 4 (LTS, LTE, UTS, UTE).
struct IndexLayout {
    bool causal;
    int32_t slots;
};
inline constexpr IndexLayout kIndexLayouts[] = {{true, 1}, {true, 2}, {false, 2}, {false, 4}};
// Every mask form the contract allows: those layouts and, in each causal setting, no index tensor
// at all (slots = 0: plain causal, full attention).
inline constexpr IndexLayout kMaskForms[] = {{true, 0}, {true, 1}, {true, 2}, {false, 0}, {false, 2}, {false, 4}};

// A [B, Hm, Nk, C] int32 tensor with padded (non-packed) strides, last dimension contiguous.
struct IndexTensor {
    int64_t batch = 0, heads = 0, nk = 0, slots = 0;
    std::array<int64_t, 4> strides{};
    std::vector<int32_t> storage;

    IndexTensor(int64_t batch_, int64_t heads_, int64_t nk_, int64_t slots_, std::mt19937_64& rng)
        : batch(batch_), heads(heads_), nk(nk_), slots(slots_) {
        std::uniform_int_distribution<int64_t> pad(0, 2);
        strides[3] = 1;
        strides[2] = slots + pad(rng);
        strides[1] = nk * strides[2] + pad(rng);
        strides[0] = heads * strides[1] + pad(rng);
        storage.assign(std::size_t(batch * strides[0] + 1), -7777);  // padding holds garbage
    }
    int32_t& at(int64_t b, int64_t h, int64_t j, int64_t s) {
        return storage[std::size_t(b * strides[0] + h * strides[1] + j * strides[2] + s)];
    }
    std::array<int64_t, 4> column(int64_t b, int64_t h, int64_t j) {
        std::array<int64_t, 4> v{};
        for (int64_t s = 0; s < slots; ++s) v[s] = at(b, h, j, s);
        return v;
    }
    TensorView view() {
        TensorView t = make_contiguous_view(storage.data(), DType::Int32, {batch, heads, nk, slots});
        t.strides = strides;
        return t;
    }
};

// Random values meant to break things: anywhere in [-3, Nq + 3], starts after ends, empty and
// fully masked columns, and the boundary values 0 and Nq, in random proportions per column.
inline void fill_hostile(IndexTensor& t, int64_t nq, std::mt19937_64& rng) {
    std::uniform_int_distribution<int64_t> anywhere(-3, nq + 3), style(0, 4);
    for (int64_t b = 0; b < t.batch; ++b)
        for (int64_t h = 0; h < t.heads; ++h)
            for (int64_t j = 0; j < t.nk; ++j) {
                const int64_t kind = style(rng);
                for (int64_t s = 0; s < t.slots; ++s) {
                    int64_t value = anywhere(rng);
                    if (kind == 1) value = s % 2 == 0 ? -1 - (s & 2) : nq + 1;  // starts low, ends high: all
                    if (kind == 2) value = s % 2 == 0 ? nq : 0;                   // start > end: empty
                    if (kind == 3) value = s % 2 == 0 ? 0 : nq;                   // boundaries
                    t.at(b, h, j, s) = int32_t(value);
                }
            }
}

// Valid random values in [0, Nq], biased towards realistic intervals (start <= end) but with
// empty and reversed ones too.
inline void fill_valid(IndexTensor& t, int64_t nq, std::mt19937_64& rng) {
    std::uniform_int_distribution<int64_t> row(0, nq), coin(0, 3);
    for (int64_t b = 0; b < t.batch; ++b)
        for (int64_t h = 0; h < t.heads; ++h)
            for (int64_t j = 0; j < t.nk; ++j)
                for (int64_t s = 0; s < t.slots; s += 2) {
                    int64_t start = row(rng), end = row(rng);
                    if (coin(rng) != 0 && start > end) std::swap(start, end);
                    t.at(b, h, j, s) = int32_t(start);
                    if (s + 1 < t.slots) t.at(b, h, j, s + 1) = int32_t(end);
                }
}

// The dense visibility of one (batch, mask head) by spec_masked(): 1 = visible.
inline std::vector<uint8_t> spec_dense(IndexTensor* t, int64_t b, int64_t h, bool causal, int64_t nq, int64_t nk) {
    std::vector<uint8_t> visible(std::size_t(nq * nk));
    const int slots = t ? int(t->slots) : 0;
    for (int64_t j = 0; j < nk; ++j) {
        const std::array<int64_t, 4> v = t ? t->column(b, h, j) : std::array<int64_t, 4>{};
        for (int64_t i = 0; i < nq; ++i) visible[i * nk + j] = !spec_masked(v, slots, causal, i, j, nq, nk);
    }
    return visible;
}

inline std::vector<uint8_t> spec_dense(const MaskSpec& m) {
    std::vector<uint8_t> visible(std::size_t(m.nq * m.nk));
    for (int64_t j = 0; j < m.nk; ++j) {
        std::array<int64_t, 4> v{};
        for (int s = 0; s < m.slots; ++s) v[s] = m.indices[j * m.slots + s];
        for (int64_t i = 0; i < m.nq; ++i) visible[i * m.nk + j] = !spec_masked(v, m.slots, m.causal, i, j, m.nq, m.nk);
    }
    return visible;
}

// The same mask with the larger C of its causal setting: causal C = 1 -> C = 2 (LTE = Nq),
// not causal C = 2 -> C = 4 (LTE = Nq, UTS = 0). Other masks come back unchanged.
inline MaskSpec widen(const MaskSpec& m) {
    if (!(m.causal ? m.slots == 1 : m.slots == 2)) return m;
    MaskSpec w = m;
    w.slots = m.slots * 2;
    w.indices.clear();
    for (int64_t j = 0; j < m.nk; ++j) {
        const int32_t nq = int32_t(m.nq);
        if (m.causal) w.indices.insert(w.indices.end(), {m.indices[j], nq});
        else w.indices.insert(w.indices.end(), {m.indices[2 * j], nq, 0, m.indices[2 * j + 1]});
    }
    return w;
}

// Visible-element counts of any rectangle of a dense [Nq, Nk] mask in O(1).
struct VisibleCounter {
    int64_t nq, nk;
    std::vector<int64_t> sums;  // [(Nq + 1) x (Nk + 1)] inclusive prefix sums
    VisibleCounter(const std::vector<uint8_t>& visible, int64_t nq_, int64_t nk_)
        : nq(nq_), nk(nk_), sums(std::size_t((nq_ + 1) * (nk_ + 1)), 0) {
        for (int64_t i = 0; i < nq; ++i)
            for (int64_t j = 0; j < nk; ++j)
                sums[(i + 1) * (nk + 1) + j + 1] = visible[i * nk + j] + sums[i * (nk + 1) + j + 1] +
                                                    sums[(i + 1) * (nk + 1) + j] - sums[i * (nk + 1) + j];
    }
    // Visible elements in rows [r0, r1) x columns [c0, c1).
    int64_t count(int64_t r0, int64_t r1, int64_t c0, int64_t c1) const {
        return sums[r1 * (nk + 1) + c1] - sums[r0 * (nk + 1) + c1] - sums[r1 * (nk + 1) + c0] + sums[r0 * (nk + 1) + c0];
    }
};

}  // namespace flashmask::testing
