// Host tensors for the flashmask tool: owning storage in any of the library's dtypes, filled
// with reproducible random normals in parallel, sliced into BSHD sub-views, and read back as
// doubles for the accuracy check.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <numbers>
#include <vector>

#include "cpu/elements.hpp"
#include "cpu/parallel.hpp"
#include "flashmask/types.hpp"

namespace flashmask::cli {

// Runs body(begin, end) over [0, count) in contiguous pieces on up to `threads` workers
// (0 = every hardware thread), with the CPU path's own fork-join loop.
inline void parallel_ranges(int64_t count, int threads, const std::function<void(int64_t, int64_t)>& body) {
    constexpr int64_t kMinPiece = 1 << 16;  // elements: below this a thread costs more than it saves
    const int64_t pieces = std::max<int64_t>(1, std::min<int64_t>(count / kMinPiece, 4 * cpu::worker_count(threads, count)));
    const int64_t per_piece = (count + pieces - 1) / pieces;
    cpu::parallel_for(pieces, cpu::worker_count(threads, pieces), [&](int, int64_t piece) {
        body(std::min(count, piece * per_piece), std::min(count, (piece + 1) * per_piece));
    });
}

// A stateless hash (SplitMix64's finaliser): the random value of an element depends only on
// (seed, stream, index), so any split of the work over threads fills the same numbers.
inline uint64_t mix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

// Two independent standard normals for pair `pair` of stream `stream` (Box-Muller, in float:
// the inputs are rounded to at most float precision anyway, and float math is twice as fast).
inline void normal_pair(uint64_t seed, uint64_t stream, uint64_t pair, float& first, float& second) {
    const uint64_t bits = mix64(mix64(seed ^ mix64(stream)) ^ pair);
    constexpr float kTwoToMinus24 = 1.0f / 16777216.0f;
    // 24 random bits each (a float's mantissa): u1 in (0, 1] so that log(u1) is finite; u2 in [0, 1).
    const float u1 = float((bits >> 40) + 1) * kTwoToMinus24;
    const float u2 = float(bits & 0xffffffull) * kTwoToMinus24;
    const float radius = std::sqrt(-2.0f * std::log(u1));
    const float angle = 2.0f * std::numbers::pi_v<float> * u2;
    first = radius * std::cos(angle);
    second = radius * std::sin(angle);
}

// An owning, contiguous host tensor of any library dtype.
class HostTensor {
public:
    HostTensor() = default;
    HostTensor(DType dtype, std::vector<int64_t> shape) : dtype_(dtype), shape_(std::move(shape)) {
        numel_ = 1;
        for (int64_t extent : shape_) numel_ *= extent;
        bytes_.reset(new std::byte[std::size_t(numel_) * element_size(dtype_)]);
    }

    DType dtype() const { return dtype_; }
    int64_t numel() const { return numel_; }
    const std::vector<int64_t>& shape() const { return shape_; }
    void* data() const { return bytes_.get(); }

    TensorView view() const { return make_contiguous_view(bytes_.get(), dtype_, shape_); }

    double get(int64_t index) const { return cpu::load_element(dtype_, bytes_.get(), index); }

    // Stores `value` rounded to the tensor's dtype (round to nearest even).
    void set(int64_t index, float value) { cpu::store_element(dtype_, bytes_.get(), index, value); }

    // Fresh standard normals from (seed, stream), rounded to the dtype.
    void fill_normal(uint64_t seed, uint64_t stream, int threads) {
        const int64_t pairs = (numel_ + 1) / 2;
        parallel_ranges(pairs, threads, [&](int64_t begin, int64_t end) {
            for (int64_t p = begin; p < end; ++p) {
                float a, b;
                normal_pair(seed, stream, uint64_t(p), a, b);
                set(2 * p, a);
                if (2 * p + 1 < numel_) set(2 * p + 1, b);
            }
        });
    }

    // Fills every element with `value` (NaN poisons outputs, so unwritten elements show).
    void fill(float value, int threads) {
        parallel_ranges(numel_, threads, [&](int64_t begin, int64_t end) {
            for (int64_t i = begin; i < end; ++i) set(i, value);
        });
    }

    // Does any element hold a NaN (e.g. poison that was never overwritten)?
    bool has_nan(int threads) const {
        std::atomic<bool> found{false};
        parallel_ranges(numel_, threads, [&](int64_t begin, int64_t end) {
            for (int64_t i = begin; i < end && !found; ++i)
                if (std::isnan(get(i))) found = true;
        });
        return found;
    }

private:
    DType dtype_ = DType::Float32;
    std::vector<int64_t> shape_;
    int64_t numel_ = 0;
    std::unique_ptr<std::byte[]> bytes_;
};

// The sub-view of `t` with dimension `dim` restricted to [begin, end): same strides, so a
// strided (not contiguous) view of the same storage.
inline TensorView slice_dim(const TensorView& t, int dim, int64_t begin, int64_t end) {
    TensorView s = t;
    s.data = static_cast<std::byte*>(t.data) + begin * t.strides[dim] * int64_t(element_size(t.dtype));
    s.shape[dim] = end - begin;
    return s;
}

// Batches [batch_begin, batch_end) and heads [head_begin, head_end) of a [B, N, H, X] view.
inline TensorView slice_bshd(const TensorView& t, int64_t batch_begin, int64_t batch_end, int64_t head_begin,
                             int64_t head_end) {
    return slice_dim(slice_dim(t, 0, batch_begin, batch_end), 2, head_begin, head_end);
}

// Batches and heads of a [B, H, N] view (the LSE).
inline TensorView slice_bhn(const TensorView& t, int64_t batch_begin, int64_t batch_end, int64_t head_begin,
                            int64_t head_end) {
    return slice_dim(slice_dim(t, 0, batch_begin, batch_end), 1, head_begin, head_end);
}

// Copies batch `batch`, heads [head_begin, head_end) of a contiguous [B, N, H, X] host tensor
// into contiguous doubles [1, N, head_end - head_begin, X] (the reference's layout).
inline std::vector<double> bshd_to_double(const HostTensor& t, int64_t batch, int64_t head_begin, int64_t head_end) {
    const int64_t n = t.shape()[1], heads = t.shape()[2], x = t.shape()[3];
    const int64_t sub_heads = head_end - head_begin;
    std::vector<double> out(std::size_t(n * sub_heads * x));
    for (int64_t i = 0; i < n; ++i)
        for (int64_t h = 0; h < sub_heads; ++h)
            for (int64_t e = 0; e < x; ++e)
                out[std::size_t((i * sub_heads + h) * x + e)] =
                    t.get(((batch * n + i) * heads + head_begin + h) * x + e);
    return out;
}

// Same for a contiguous [B, H, N] tensor (LSE): doubles [1, head_end - head_begin, N].
inline std::vector<double> bhn_to_double(const HostTensor& t, int64_t batch, int64_t head_begin, int64_t head_end) {
    const int64_t heads = t.shape()[1], n = t.shape()[2];
    std::vector<double> out(std::size_t((head_end - head_begin) * n));
    for (int64_t h = head_begin; h < head_end; ++h)
        for (int64_t i = 0; i < n; ++i)
            out[std::size_t((h - head_begin) * n + i)] = t.get((batch * heads + h) * n + i);
    return out;
}

}  // namespace flashmask::cli
