// One element of a host buffer of any library dtype, read as a double and written from one
// (rounded to nearest even for the 16-bit formats): the plain per-element access with which the
// command-line tool and the tests fill and read their host tensors. The tiled CPU path has its
// own loads, typed at compile time (tiled.cpp's storage traits).
#pragma once

#include <cstdint>

#include "flashmask/float16.hpp"
#include "flashmask/types.hpp"

namespace flashmask::cpu {

// Element `index` of the contiguous buffer `data` of dtype `dtype`, exactly, as a double.
inline double load_element(DType dtype, const void* data, int64_t index) {
    switch (dtype) {
        case DType::Float32: return static_cast<const float*>(data)[index];
        case DType::BFloat16: return bfloat16_to_float(static_cast<const uint16_t*>(data)[index]);
        case DType::Float16: return float16_to_float(static_cast<const uint16_t*>(data)[index]);
        case DType::Int32: return static_cast<const int32_t*>(data)[index];
        case DType::Float64: return static_cast<const double*>(data)[index];
    }
    return 0.0;
}

// Stores `value` as element `index`: as it is for Float64; rounded to float, then to the 16-bit
// format if that is the dtype (NaN and infinities kept); truncated for Int32.
inline void store_element(DType dtype, void* data, int64_t index, double value) {
    switch (dtype) {
        case DType::Float32: static_cast<float*>(data)[index] = float(value); break;
        case DType::BFloat16: static_cast<uint16_t*>(data)[index] = float_to_bfloat16(float(value)); break;
        case DType::Float16: static_cast<uint16_t*>(data)[index] = float_to_float16(float(value)); break;
        case DType::Int32: static_cast<int32_t*>(data)[index] = int32_t(value); break;
        case DType::Float64: static_cast<double*>(data)[index] = value; break;
    }
}

}  // namespace flashmask::cpu
