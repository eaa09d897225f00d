// Host conversions between float and the two 16-bit storage formats (IEEE binary16 and
// bfloat16), round-to-nearest-even, NaN and infinity preserved. The CPU path stores in these
// and computes in float; the CUDA path uses the toolkit's own types.
#pragma once

#include <cstdint>
#include <cstring>

namespace flashmask {

inline float bits_to_float(uint32_t bits) { float f; std::memcpy(&f, &bits, 4); return f; }
inline uint32_t float_to_bits(float f) { uint32_t b; std::memcpy(&b, &f, 4); return b; }

inline float bfloat16_to_float(uint16_t h) { return bits_to_float(uint32_t(h) << 16); }

inline uint16_t float_to_bfloat16(float f) {
    const uint32_t bits = float_to_bits(f);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return uint16_t((bits >> 16) | 0x40);  // quiet NaN
    const uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
    return uint16_t((bits + rounding) >> 16);
}

inline float float16_to_float(uint16_t h) {
    const uint32_t sign = uint32_t(h & 0x8000u) << 16;
    const uint32_t exponent = (h >> 10) & 0x1fu;
    const uint32_t mantissa = h & 0x3ffu;
    if (exponent == 0x1f) return bits_to_float(sign | 0x7f800000u | (mantissa << 13));  // inf / NaN
    if (exponent == 0) {
        // zero or subnormal: mantissa * 2^-24
        const float magnitude = float(mantissa) * (1.0f / 16777216.0f);
        return sign ? -magnitude : magnitude;
    }
    return bits_to_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

inline uint16_t float_to_float16(float f) {
    const uint32_t bits = float_to_bits(f);
    const uint16_t sign = uint16_t((bits >> 16) & 0x8000u);
    const uint32_t abs = bits & 0x7fffffffu;
    if (abs > 0x7f800000u) return uint16_t(sign | 0x7e00u);            // NaN
    if (abs >= 0x477ff000u) return uint16_t(sign | 0x7c00u);           // rounds to >= 65520: inf
    if (abs < 0x38800000u) {                                          // below 2^-14: subnormal or 0
        // Add 0.5 (as a float with a fixed exponent) so the FPU rounds mantissa to nearest even.
        const float magnitude = bits_to_float(abs) + 0.5f;
        return uint16_t(sign | uint16_t(float_to_bits(magnitude) - 0x3f000000u));
    }
    const uint32_t rounded = abs + 0x0fffu + ((abs >> 13) & 1u) - (uint32_t(127 - 15) << 23);
    return uint16_t(sign | uint16_t(rounded >> 13));
}

}  // namespace flashmask
