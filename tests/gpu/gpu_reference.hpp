// The GPU tests' own device code, host-callable (no device code in this header, so plain C++
// test files include it):
//   * a float32 attention reference on the GPU for the sizes where the float64 CPU reference
//     would take minutes (4099, 8192): written to be obviously right, not fast: one thread block
//     per (batch, query head, query row) for the forward and dQ, one per (batch, KV head, key)
//     for dK and dV; every (row, key) pair is visited and the mask decides by column_intervals()
//     (tiles.hpp, the one reading of a column);
//   * the same computation "done naively in the input dtype" (SPEC §5), by rounding every tensor
//     that attention's graph materialises exactly where cpu::naive_forward/naive_backward do;
//   * random normal inputs generated on the device and strided -> contiguous float32 copies.
// Every launch is checked (Error(CudaError) on failure).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "flashmask/tiles.hpp"
#include "flashmask/types.hpp"

namespace flashmask::testing {

// What the reference rounds to: nothing (the float32 reference) or the 16-bit storage dtype at
// every materialised tensor (the naive in-dtype computation of cpu/accuracy.hpp): S, P, O;
// dP, dS, dQ, dK, dV.
enum class Rounding { None, BFloat16, Float16 };
Rounding naive_rounding(DType dtype);  // BFloat16 / Float16 for those dtypes

// The largest head dim the reference kernels take, and the largest sequence they take (their
// per-row / per-key arrays live in shared memory: 2 floats per key or row).
inline constexpr int32_t kReferenceMaxHeadDim = 256;
inline constexpr int32_t kReferenceMaxSequence = 16384;

// One attention problem for the reference: contiguous float32 device tensors in BSHD order
// (q [B, Nq, Hq, D], k / v [B, Nk, Hk, D], dout [B, Nq, Hq, D]), Dv == D, and a MaskView whose
// index pointer (if any) is device memory.
struct ReferenceProblem {
    int32_t batch = 0, nq = 0, nk = 0, q_heads = 0, kv_heads = 0, head_dim = 0;
    float scale = 1.0f;
    MaskView mask;
    const float *q = nullptr, *k = nullptr, *v = nullptr, *dout = nullptr;
};

// out [B, Nq, Hq, D] and lse [B, Hq, Nq], float32 device memory. Rows that see no key:
// out = 0, lse = -inf.
void gpu_reference_forward(const ReferenceProblem& p, Rounding rounding, float* out, float* lse,
                           cudaStream_t stream = nullptr);

// dq [B, Nq, Hq, D], dk / dv [B, Nk, Hk, D] float32 device memory, recomputing the forward
// itself. key_visible_pairs (optional, int32 [B, Nk, Hk]): how many (query head of the group,
// row) pairs see each key, 0 for a key that no row sees (its dK and dV must be exactly 0).
void gpu_reference_backward(const ReferenceProblem& p, Rounding rounding, float* dq, float* dk, float* dv,
                            int32_t* key_visible_pairs = nullptr, cudaStream_t stream = nullptr);

// `count` elements of `data` (dtype bfloat16, float16 or float32), contiguous, set to standard
// normals drawn from (seed, element index) and rounded to the dtype.
void gpu_fill_normal(DType dtype, void* data, int64_t count, uint64_t seed, cudaStream_t stream = nullptr);

// A strided 4-d tensor of `dtype` (any strides, in elements) copied into a contiguous float32
// tensor of the same shape.
void gpu_to_float(DType dtype, const void* data, const int64_t shape[4], const int64_t strides[4], float* out,
                  cudaStream_t stream = nullptr);

}  // namespace flashmask::testing
