// Which backward problems take the float32 path of small_backward.cuh: host-only, so that the
// GPU tests can build problems on both sides of the bounds.
#pragma once

#include <cstdint>

#include "flashmask/problem.hpp"

namespace flashmask::cuda::sm80 {

// Problems of at most kSmallBackwardMaxRows query rows in all (batch x query heads x Nq) and at
// most kSmallBackwardMaxKeys keys take this path. The rows bound is where the error has been
// seen: the two failing shapes had 8 and 64 rows, and problems of 1,000 rows and more have
// never come near the bound. Keeping it low also keeps the tiled kernels under the GPU tests'
// small cases (77-300 rows and more).
// The keys bound is where the path stops being faster than the tiled kernels (H100, session 28,
// `flashmask run --timing queued`, 23ec1a6): 8 rows over 17 keys 20 us against the tiled 51 us,
// 64 rows over 2,048 keys 183 us against 33-45 us; ~0.08 us more per key, so the two cross
// near 256 keys. The failing shapes had 17 keys.
constexpr int64_t kSmallBackwardMaxRows = 64;
constexpr int32_t kSmallBackwardMaxKeys = 128;

inline bool uses_small_backward(const AttentionProblem& p) {
    return p.nk <= kSmallBackwardMaxKeys && int64_t(p.batch) * p.q_heads * p.nq <= kSmallBackwardMaxRows;
}

}  // namespace flashmask::cuda::sm80
