// The resolved attention problem: what validation hands to every kernel (CPU and CUDA).
// One plain, device-copyable struct, so kernels take it by value and never re-validate.
#pragma once

#include <cstdint>

#include "flashmask/tiles.hpp"
#include "flashmask/types.hpp"

namespace flashmask {

// A strided 4-d operand: element (i0, i1, i2, i3) lives at data + sum(i_d * stride_d).
struct Operand {
    void* data = nullptr;
    int64_t stride[4] = {0, 0, 0, 0};

    // Element (i0, i1, i2, 0) as a T*: a row of the contiguous last dimension (BSHD: [b, s, h, :];
    // LSE: [b, h, row]).
    template <typename T>
    FM_HOST_DEVICE T* at(int64_t i0, int64_t i1, int64_t i2) const {
        return static_cast<T*>(data) + i0 * stride[0] + i1 * stride[1] + i2 * stride[2];
    }
};

struct AttentionProblem {
    DType dtype = DType::Float32;  // of q, k, v, out, dout, dq, dk, dv
    int32_t batch = 0, nq = 0, nk = 0, q_heads = 0, kv_heads = 0, head_dim = 0, value_dim = 0;
    float scale = 1.0f;
    MaskView mask;
    Operand q, k, v, out, dout, dq, dk, dv;  // BSHD index order
    Operand lse;                              // float32 [B, Hq, Nq]: stride[0..2] used

    FM_HOST_DEVICE int32_t kv_head(int32_t q_head) const { return q_head / (q_heads / kv_heads); }
};

}  // namespace flashmask
