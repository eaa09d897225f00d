// Masked rows of one column, as bits over a window of 32 consecutive rows: how the sm80 kernels
// apply a Partial tile's mask with one bit test per element instead of interval comparisons.
#pragma once

#include <cstdint>

#include "flashmask/tiles.hpp"

namespace flashmask::cuda {

constexpr int kRowBitsWindow = 32;  // rows per 32-bit word

// Rows [begin, end) of a window of 32 rows starting at 0, as bits (bounds relative to the window;
// any int32 values, empty or reversed ranges give 0).
__device__ __forceinline__ uint32_t row_bits(int32_t begin, int32_t end) {
    auto below = [](int32_t x) -> uint32_t {
        return x <= 0 ? 0u : x >= kRowBitsWindow ? ~0u : (1u << x) - 1u;
    };
    return below(end) & ~below(begin);
}

// The rows of a window of 32 starting at row `first_row` that `column` masks (either interval).
__device__ __forceinline__ uint32_t masked_row_bits(const ColumnIntervals& column, int32_t first_row) {
    return row_bits(column.lower_start - first_row, column.lower_end - first_row) |
           row_bits(column.upper_start - first_row, column.upper_end - first_row);
}

}  // namespace flashmask::cuda
