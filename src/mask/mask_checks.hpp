// Helpers shared by the files of src/mask: parameter refusal, the seeded draws of the
// catalogue, and the slot positions through which builders and from_dense() write index
// tensors. Internal; not installed.
#pragma once

#include <cstdint>
#include <limits>
#include <random>
#include <string>

#include "flashmask/mask.hpp"
#include "flashmask/types.hpp"

namespace flashmask::mask_detail {

// Row indices are int32 (SPEC §2) and so are MaskView's sizes: no sequence may be longer.
inline constexpr int64_t kMaxSequenceLength = std::numeric_limits<int32_t>::max();

// Slot positions of startend_row_indices (SPEC §2 table).
inline constexpr int kLts = 0;
inline constexpr int kLte = 1;       // causal C = 2 and C = 4
inline constexpr int kUteOfTwo = 1;  // not causal, C = 2
inline constexpr int kUts = 2;       // C = 4
inline constexpr int kUte = 3;       // C = 4

// Slot `slot` of column `column` of a mask's [Nk, C] index tensor = value (a row bound, in int32).
inline void set_index(MaskSpec& spec, int64_t column, int slot, int64_t value) {
    spec.indices[std::size_t(column * spec.slots + slot)] = int32_t(value);
}

[[noreturn]] inline void refuse(const std::string& argument, const std::string& message) {
    throw Error(ErrorCode::InvalidArgument, argument, message);
}

// A sequence length argument: 0 <= n <= kMaxSequenceLength.
inline void check_length(int64_t n, const std::string& argument, const std::string& where) {
    if (n < 0 || n > kMaxSequenceLength)
        refuse(argument, where + ": " + argument + " must be in [0, " + std::to_string(kMaxSequenceLength) +
                             "], got " + std::to_string(n));
}

// Uniform in [lo, hi] (lo <= hi). Written here rather than std::uniform_int_distribution, whose
// output differs between standard libraries, so that a seed names the same mask everywhere.
inline int64_t uniform_int(std::mt19937_64& rng, int64_t lo, int64_t hi) {
    const uint64_t range = uint64_t(hi) - uint64_t(lo) + 1;
    if (range == 0) return int64_t(rng());  // the whole 64-bit range
    // Reject the top partial copy of [0, range) so that every value is equally likely.
    const uint64_t limit = std::numeric_limits<uint64_t>::max() - std::numeric_limits<uint64_t>::max() % range;
    uint64_t draw;
    do draw = rng(); while (draw >= limit);
    return lo + int64_t(draw % range);
}

}  // namespace flashmask::mask_detail
