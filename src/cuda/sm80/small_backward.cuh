// The backward of tiny problems in float32, without tensor cores: SPEC §5's naive computation
// with nothing rounded to 16 bits but the outputs.
//
// Why. The tiled kernels round P and dS to 16 bits for their products and take Di from the
// stored O. Over a problem of a few rows each row's error is most of the norm-wise error, and
// where a row sees one or two keys, dS = P (dP - Di) cancels: the stored O's rounding (session
// 25), the rounded P's sum (session 26) and dS's own 16-bit rounding each reached one ulp of dQ
// or dK there, against a naive computation that is sometimes luckier than half of that
// (bench/NOTES.md, sessions 25-26; GpuAttention.SingleRowSixteenBitBackward). The CPU path
// keeps P and dS in float and passes. At these sizes the tensor cores buy nothing: the call is
// launches and fixed passes: B 8, Hq 8, Nq 1, Nk 17 took 52 us on the tiled kernels and 20 us
// here (H100, session 28; the bounds are in small_backward_bounds.hpp).
//
// How. Two kernels, each output element summed by threads in a fixed order (the same bits on
// every run, so the deterministic mode is this path too):
//   1. rows: a CTA per (batch, query head, row) recomputes the row's scores and softmax in
//      float32, P, dP, delta = sum_j P_j dP_j (P sums to 1 up to float32 rounding), dS, and dQ;
//      it keeps the row's max, probability sum and delta for step 2.
//   2. keys: a CTA per (batch, KV head, key) recomputes P and dS of every visible row of the
//      group's query heads from those terms (the same expressions, so the same bits as step 1)
//      and sums dK and dV over them.
// A score and a dP are each one warp's dot product (lanes over the head dims, so a key's row is
// one coalesced read), and a warp forms kSmallBackwardKeysPerStep of them at once so that their
// loads are in flight together: ae5433e formed one at a time and waited on each product's loads
// and shuffles in turn (64 rows over 2,048 keys: 327 us on an H100). A thread per product
// (fc14d08, not run) would read 32 rows per load instruction, 32 times the L1 wavefronts.
// Operands are read one element at a time through their strides: the caller's rows need not be
// 16-byte aligned here, as the tiled kernels' copies make them.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "cuda/common/check.hpp"
#include "cuda/common/warp.hpp"
#include "cuda/common/workspace.cuh"
#include "cuda/sm80/backward_kernels.cuh"
#include "cuda/sm80/small_backward_bounds.hpp"
#include "flashmask/problem.hpp"

namespace flashmask::cuda::sm80 {

// 8 warps: the rows kernel has at most kSmallBackwardMaxRows CTAs, fewer than an H100's SMs, so
// its latency is hidden by warps within the CTA.
constexpr int kSmallBackwardThreads = 256;
constexpr int kSmallBackwardWarps = kSmallBackwardThreads / kWarpSize;
constexpr int kSmallBackwardKeysPerStep = 4;  // dot products a warp has in flight (rows kernel)
constexpr int kSmallBackwardRowsInFlight = 4;  // rows whose Q and dO a thread loads at once (keys kernel)
// Either kernel's grid, at most: a CTA per row, or per (batch, KV head, key), and there are at
// most as many (batch, KV head) pairs as rows. So the CTA's coordinates come from 32-bit
// divisions: 64-bit ones are subroutine calls, whose register convention made ptxas spill the
// keys kernel at D = 256.
constexpr int64_t kSmallBackwardMaxCtas = kSmallBackwardMaxRows * kSmallBackwardMaxKeys;
static_assert(kSmallBackwardMaxCtas <= INT32_MAX, "the kernels index their CTAs in 32 bits");
// The per-key (per-row) arrays in dynamic shared memory are padded to 16 bytes: ptxas reads them
// with 16-byte loads in the remainder of an unrolled loop (LDS.128 at the last element), which
// compute-sanitizer reported as out of bounds on ae5433e when Nq was 1 (H100, session 27).
constexpr int32_t kSharedPaddingFloats = 4;
__host__ __device__ constexpr int32_t padded_shared_floats(int32_t n) {
    return (n + kSharedPaddingFloats - 1) / kSharedPaddingFloats * kSharedPaddingFloats;
}

namespace small_backward_detail {

// What the keys kernel needs of each query row: P_j = exp(s_j - max) / sum, dS_j = P_j (dP_j - delta).
struct RowTerms {
    float max = -INFINITY;  // -inf: the row sees no key
    float sum = 0.0f;
    float delta = 0.0f;
};

// x combined over the CTA by `op` (associative, `identity` its neutral element): a butterfly
// within each warp, then the warps' results in warp order, so every thread gets the same bits.
template <typename Op>
__device__ __forceinline__ float block_reduce(float x, float identity, Op op, float* partial) {
#pragma unroll
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) x = op(x, __shfl_xor_sync(kFullWarpMask, x, offset));
    if (threadIdx.x % kWarpSize == 0) partial[threadIdx.x / kWarpSize] = x;
    __syncthreads();
    float total = identity;
    for (int w = 0; w < kSmallBackwardWarps; ++w) total = op(total, partial[w]);
    __syncthreads();  // `partial` is reused by the next reduction
    return total;
}
__device__ __forceinline__ float block_sum(float x, float* partial) {
    return block_reduce(x, 0.0f, [](float a, float b) { return a + b; }, partial);
}
__device__ __forceinline__ float block_max(float x, float* partial) {
    return block_reduce(x, -INFINITY, [](float a, float b) { return fmaxf(a, b); }, partial);
}

// <a, b_k> for kCount 16-bit rows b_k in global memory and one float row a in shared memory, by
// one warp: lane l sums the head dims l, l + 32, ... in order, then the lanes' sums are added by
// an xor butterfly; every lane gets every product. Each product's bits do not depend on kCount,
// so both kernels form each score and dP through it and get the same bits.
template <typename Element, int kHeadDim, int kCount>
__device__ __forceinline__ void warp_dots(const float* a, const Element* const (&b)[kCount], float (&dots)[kCount]) {
    static_assert(kHeadDim % kWarpSize == 0, "a warp's lanes split the head dims evenly");
    const int lane = threadIdx.x % kWarpSize;
#pragma unroll
    for (int k = 0; k < kCount; ++k) dots[k] = 0.0f;
#pragma unroll
    for (int d = lane; d < kHeadDim; d += kWarpSize) {
        const float a_d = a[d];
#pragma unroll
        for (int k = 0; k < kCount; ++k) dots[k] = fmaf(a_d, ElementTraits<Element>::to_float(b[k][d]), dots[k]);
    }
#pragma unroll
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
#pragma unroll
        for (int k = 0; k < kCount; ++k) dots[k] += __shfl_xor_sync(kFullWarpMask, dots[k], offset);
    }
}

template <typename Element, int kHeadDim>
__device__ __forceinline__ void load_row(float* to, const Element* from) {
    for (int d = threadIdx.x; d < kHeadDim; d += kSmallBackwardThreads) to[d] = ElementTraits<Element>::to_float(from[d]);
}

// Step 1. One CTA per (batch, query head, row), blockIdx.x in that order. Dynamic shared memory:
// 2 padded_shared_floats(Nk) floats.
template <typename Element, int kHeadDim>
__global__ void __launch_bounds__(kSmallBackwardThreads)
small_backward_rows_kernel(const AttentionProblem p, RowTerms* const terms) {
    static_assert(kHeadDim % kWarpSize == 0, "a warp's lanes split the head dims evenly");
    constexpr int kDimsPerLane = kHeadDim / kWarpSize;
    extern __shared__ float row_keys[];  // P_j, then dP_j, then dS_j in the second half
    float* const prob = row_keys;
    float* const grad = row_keys + padded_shared_floats(p.nk);
    __shared__ float q_row[kHeadDim], do_row[kHeadDim], partial[kSmallBackwardWarps];
    __shared__ float warp_dq[kSmallBackwardWarps][kHeadDim];
    const int32_t item = int32_t(blockIdx.x);  // 32-bit: see kSmallBackwardMaxCtas
    const int32_t r = item % p.nq;
    const int32_t head = (item / p.nq) % p.q_heads;
    const int32_t batch = item / (p.nq * p.q_heads);
    const int32_t kv_head = p.kv_head(head), mask_head = p.mask.mask_head(head);
    const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
    load_row<Element, kHeadDim>(q_row, element_at<Element>(p.q, batch, r, head));
    load_row<Element, kHeadDim>(do_row, element_at<Element>(p.dout, batch, r, head));
    __syncthreads();

    // Scaled scores, -inf for hidden keys; dP of the visible ones. A warp per
    // kSmallBackwardKeysPerStep keys at a time; hidden keys' rows are read too (the reads stay
    // within Nk), which keeps the loads free of the mask's.
    float local = -INFINITY;
    for (int32_t first = warp * kSmallBackwardKeysPerStep; first < p.nk;
         first += kSmallBackwardWarps * kSmallBackwardKeysPerStep) {
        const Element* k_rows[kSmallBackwardKeysPerStep];
        const Element* v_rows[kSmallBackwardKeysPerStep];
#pragma unroll
        for (int i = 0; i < kSmallBackwardKeysPerStep; ++i) {
            const int32_t key = min(first + i, p.nk - 1);  // past Nk: the last key again, unused
            k_rows[i] = element_at<Element>(p.k, batch, key, kv_head);
            v_rows[i] = element_at<Element>(p.v, batch, key, kv_head);
        }
        float scores[kSmallBackwardKeysPerStep], dprobs[kSmallBackwardKeysPerStep];
        warp_dots<Element, kHeadDim>(q_row, k_rows, scores);
        warp_dots<Element, kHeadDim>(do_row, v_rows, dprobs);
#pragma unroll
        for (int i = 0; i < kSmallBackwardKeysPerStep; ++i) {
            const int32_t key = first + i;
            if (key >= p.nk) break;
            const bool hidden = column_intervals(p.mask, batch, mask_head, key).masks(r);  // warp-uniform
            const float score = hidden ? -INFINITY : __fmul_rn(p.scale, scores[i]);
            if (lane == 0) {
                prob[key] = score;
                grad[key] = hidden ? 0.0f : dprobs[i];
            }
            local = fmaxf(local, score);
        }
    }
    RowTerms row;
    row.max = block_max(local, partial);  // its barriers also make the stores above visible to every thread
    Element* const dq = mutable_element_at<Element>(p.dq, batch, r, head);
    if (row.max == -INFINITY) {  // block-uniform: the row sees no key, and its dQ is 0
        for (int d = threadIdx.x; d < kHeadDim; d += kSmallBackwardThreads) dq[d] = ElementTraits<Element>::from_float(0.0f);
        if (threadIdx.x == 0) terms[item] = row;
        return;
    }
    // From here each thread reads and writes only its own keys, until the barrier before dQ.
    local = 0.0f;
    for (int32_t key = threadIdx.x; key < p.nk; key += kSmallBackwardThreads) {
        prob[key] = expf(prob[key] - row.max);  // exp(-inf) = 0 for hidden keys
        local += prob[key];
    }
    row.sum = block_sum(local, partial);
    local = 0.0f;
    for (int32_t key = threadIdx.x; key < p.nk; key += kSmallBackwardThreads) {
        prob[key] /= row.sum;  // the keys kernel's expf(s - max) / sum, in the same two roundings
        local += prob[key] * grad[key];
    }
    row.delta = block_sum(local, partial);
    for (int32_t key = threadIdx.x; key < p.nk; key += kSmallBackwardThreads)
        grad[key] = prob[key] * (grad[key] - row.delta);
    __syncthreads();

    // dQ = scale * sum_j dS_j K_j: warp w sums the keys w, w + kSmallBackwardWarps, ... (its lanes
    // the head dims, so a key's row is one coalesced read), then the warps' partials are added in
    // warp order.
    float dq_part[kDimsPerLane] = {};
#pragma unroll 4
    for (int32_t key = warp; key < p.nk; key += kSmallBackwardWarps) {  // hidden keys add dS = 0
        const float ds = grad[key];
        const Element* const k_row = element_at<Element>(p.k, batch, key, kv_head);
#pragma unroll
        for (int i = 0; i < kDimsPerLane; ++i)
            dq_part[i] = fmaf(ds, ElementTraits<Element>::to_float(k_row[lane + i * kWarpSize]), dq_part[i]);
    }
#pragma unroll
    for (int i = 0; i < kDimsPerLane; ++i) warp_dq[warp][lane + i * kWarpSize] = dq_part[i];
    __syncthreads();
    for (int d = threadIdx.x; d < kHeadDim; d += kSmallBackwardThreads) {
        float sum = 0.0f;
        for (int w = 0; w < kSmallBackwardWarps; ++w) sum += warp_dq[w][d];
        dq[d] = ElementTraits<Element>::from_float(p.scale * sum);
    }
    if (threadIdx.x == 0) terms[item] = row;
}

// Step 2. One CTA per (batch, KV head, key), blockIdx.x in that order. Dynamic shared memory:
// 2 padded_shared_floats(Nq) floats.
template <typename Element, int kHeadDim>
__global__ void __launch_bounds__(kSmallBackwardThreads)
small_backward_keys_kernel(const AttentionProblem p, const RowTerms* const terms) {
    extern __shared__ float key_rows[];  // P_i, then dS_i in the second half, of one query head
    float* const prob = key_rows;
    float* const dscore = key_rows + padded_shared_floats(p.nq);
    __shared__ float k_row[kHeadDim], v_row[kHeadDim];
    constexpr int kDimsPerThread = (kHeadDim + kSmallBackwardThreads - 1) / kSmallBackwardThreads;
    const int32_t item = int32_t(blockIdx.x);  // 32-bit: see kSmallBackwardMaxCtas
    const int32_t key = item % p.nk;
    const int32_t kv_head = (item / p.nk) % p.kv_heads;
    const int32_t batch = item / (p.nk * p.kv_heads);
    const int32_t group = p.q_heads / p.kv_heads;
    const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
    load_row<Element, kHeadDim>(k_row, element_at<Element>(p.k, batch, key, kv_head));
    load_row<Element, kHeadDim>(v_row, element_at<Element>(p.v, batch, key, kv_head));
    __syncthreads();

    float dk[kDimsPerThread] = {}, dv[kDimsPerThread] = {};
    for (int32_t head = kv_head * group; head < (kv_head + 1) * group; ++head) {
        const ColumnIntervals column = column_intervals(p.mask, batch, p.mask.mask_head(head), key);
        for (int32_t r = warp; r < p.nq; r += kSmallBackwardWarps) {  // a warp per row
            float pr = 0.0f, ds = 0.0f;
            if (!column.masks(r)) {  // warp-uniform; the row sees this key, so its max is finite
                const RowTerms row = terms[(int64_t(batch) * p.q_heads + head) * p.nq + r];
                // The rows kernel's expressions, operands and order: the same P and dS bits.
                const Element* const q_rows[1] = {element_at<Element>(p.q, batch, r, head)};
                const Element* const do_rows[1] = {element_at<Element>(p.dout, batch, r, head)};
                float score[1], dprob[1];
                warp_dots<Element, kHeadDim>(k_row, q_rows, score);
                warp_dots<Element, kHeadDim>(v_row, do_rows, dprob);
                // __fmul_rn: rounded before the subtraction, as the rows kernel's stored score is
                // (a contracted fma would give other bits).
                pr = expf(__fmul_rn(p.scale, score[0]) - row.max) / row.sum;
                ds = pr * (dprob[0] - row.delta);
            }
            if (lane == 0) {
                prob[r] = pr;
                dscore[r] = ds;
            }
        }
        __syncthreads();
#pragma unroll
        for (int t = 0; t < kDimsPerThread; ++t) {
            const int d = threadIdx.x + t * kSmallBackwardThreads;
            if (d >= kHeadDim) break;
            // The loads come before the test of P, so that an unrolled step's loads are in flight
            // together: 23ec1a6 skipped the row first (`continue`), one L2 round trip a row. A row
            // that does not see the key (P = 0, so dS = 0) still adds nothing, and its operands,
            // read but unused, may hold anything.
#pragma unroll kSmallBackwardRowsInFlight
            for (int32_t r = 0; r < p.nq; ++r) {
                const float dout_d = ElementTraits<Element>::to_float(element_at<Element>(p.dout, batch, r, head)[d]);
                const float q_d = ElementTraits<Element>::to_float(element_at<Element>(p.q, batch, r, head)[d]);
                if (prob[r] != 0.0f) {
                    dv[t] = fmaf(prob[r], dout_d, dv[t]);
                    dk[t] = fmaf(dscore[r], q_d, dk[t]);
                }
            }
        }
        __syncthreads();  // before the next head overwrites prob and dscore
    }
    Element* const dk_out = mutable_element_at<Element>(p.dk, batch, key, kv_head);
    Element* const dv_out = mutable_element_at<Element>(p.dv, batch, key, kv_head);
#pragma unroll
    for (int t = 0; t < kDimsPerThread; ++t) {
        const int d = threadIdx.x + t * kSmallBackwardThreads;
        if (d >= kHeadDim) break;
        dk_out[d] = ElementTraits<Element>::from_float(p.scale * dk[t]);
        dv_out[d] = ElementTraits<Element>::from_float(dv[t]);
    }
}

}  // namespace small_backward_detail

// The whole backward of a problem that uses_small_backward(), queued on `stream`. p has Nq, Nk,
// batch and heads of at least 1.
template <typename Element, int kHeadDim>
void run_small_backward(const AttentionProblem& p, cudaStream_t stream) {
    using namespace small_backward_detail;
    const int64_t rows = int64_t(p.batch) * p.q_heads * p.nq;   // at most kSmallBackwardMaxRows
    const int64_t keys = int64_t(p.batch) * p.kv_heads * p.nk;  // at most that x kSmallBackwardMaxKeys
    DeviceScratch scratch(sizeof(RowTerms) * std::size_t(rows), stream);
    RowTerms* const terms = scratch.as<RowTerms>();
    small_backward_rows_kernel<Element, kHeadDim>
        <<<unsigned(rows), kSmallBackwardThreads, 2 * sizeof(float) * std::size_t(padded_shared_floats(p.nk)), stream>>>(p, terms);
    check_launch("flashmask backward: small_backward_rows_kernel");
    small_backward_keys_kernel<Element, kHeadDim>
        <<<unsigned(keys), kSmallBackwardThreads, 2 * sizeof(float) * std::size_t(padded_shared_floats(p.nq)), stream>>>(p, terms);
    check_launch("flashmask backward: small_backward_keys_kernel");
}

}  // namespace flashmask::cuda::sm80
