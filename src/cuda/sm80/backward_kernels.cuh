// The sm80 backward kernels (shapes and reasons in backward_traits.cuh).
//
// Notation: S = Q K^T (unscaled), P = exp(scale * S - LSE), dP = dO V^T, Di = rowsum(dO * O),
// dS = P * (dP - Di), dV = P^T dO, dK = scale * dS^T Q, dQ = scale * dS K. Exponentials are
// taken in base 2: P = exp2(S * scale * log2 e - LSE * log2 e), the second term precomputed per
// row; a row with LSE = -inf stores +inf there, so P = exp2(-inf) = 0 and it contributes nothing.
//
// Masking: a tile is classified once (classify() on the block summary); Skipped tiles are never
// loaded, Full tiles do no mask arithmetic, Partial tiles zero P where column_intervals() masks
// the (row, key) pair. Keys >= Nk are masked like Partial elements (their tile is never Full);
// rows >= Nq are zero-filled in shared memory and have P = 0 through their padded LSE.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "cuda/common/key_order.cuh"
#include "cuda/common/row_bits.cuh"
#include "cuda/common/shared_memory.hpp"
#include "cuda/common/tile_order.hpp"
#include "cuda/common/warp.hpp"
#include "cuda/common/workspace.cuh"
#include "cuda/sm80/backward_traits.cuh"
#include "cuda/sm80/ptx.cuh"
#include "cuda/sm80/smem_tile.cuh"
#include "cuda/sm80/tail_split.hpp"
#include "flashmask/problem.hpp"
#include "flashmask/tiles.hpp"

namespace flashmask::cuda::sm80 {

// Float32 per-call scratch, rows padded to kScratchRowAlignment: row r of (batch, head) is
// ((batch * Hq + head) * padded_nq + r).
struct BackwardScratch {
    float* lse_log2 = nullptr;   // LSE * log2 e; +inf for LSE = -inf and for padded rows
    float* di = nullptr;         // rowsum(dO * O); 0 for padded rows
    float* dq_accum = nullptr;   // rows x D, in DqAccumulator's order; non-deterministic mode only: unscaled dS K sums
    int32_t padded_nq = 0;
    TailSplit split;             // with dq_accum

    __device__ __forceinline__ int64_t row(int32_t batch, int32_t head, int32_t q_heads, int32_t r) const {
        return (int64_t(batch) * q_heads + head) * padded_nq + r;
    }
};

// The dQ accumulator's order: blocks of 16 rows x kSliceCols columns (one m16 fragment of a warp's
// dQ tile in the dK/dV kernel), each stored in the mma accumulator layout, [kSliceCols / 8 n-tiles]
// [32 lanes][4 values]: a warp adds its slice with kSliceCols / 8 vector reductions of 512
// contiguous bytes, where the row-major order took 2 x kSliceCols / 8 reductions scattered over
// 8 rows each (ncu: 14 % of the dK/dV kernel's stall samples). Only the convert kernel reads it.
// Rows are those of BackwardScratch::row(), whose blocks of 16 start at multiples of 16.
template <int kHeadDim, int kSliceCols>
struct DqAccumulator {
    static_assert(kHeadDim % kSliceCols == 0 && kSliceCols % kMmaCols == 0, "slices tile the columns");
    static constexpr int kSliceRows = kMmaRows;
    // In the m16n8 accumulator layout (kRowHalf, kPairColumns: backward_traits.cuh).
    static constexpr int kLanesPerRow = kMmaCols / kPairColumns;      // the 4 quads
    static constexpr int kValuesPerLane = kRowHalves * kPairColumns;  // rows g, g + 8 x 2 columns

    // Floats from the accumulator's start to the slice holding (row, col).
    static __device__ __forceinline__ int64_t slice(int64_t row, int col) {
        return (row / kSliceRows) * (int64_t(kSliceRows) * kHeadDim) + (col / kSliceCols) * (kSliceRows * kSliceCols);
    }
    // (r, c) inside a slice, r < 16, c < kSliceCols: n-tile c / 8, lane (r % 8) * 4 + (c % 8) / 2,
    // value (r / 8) * 2 + c % 2.
    static __device__ __forceinline__ int within(int r, int c) {
        const int lane = (r % kRowHalf) * kLanesPerRow + (c % kMmaCols) / kPairColumns;
        const int value = (r / kRowHalf) * kPairColumns + c % kPairColumns;
        return ((c / kMmaCols) * kWarpSize + lane) * kValuesPerLane + value;
    }
};

// A column that hides every row: keys >= Nk.
__device__ __forceinline__ ColumnIntervals all_rows_masked() { return {0, INT32_MAX, 0, 0}; }

__device__ __forceinline__ ColumnIntervals key_intervals(const MaskView& mask, int32_t batch, int32_t mask_head,
                                                         int32_t key) {
    return key < mask.nk ? column_intervals(mask, batch, mask_head, key) : all_rows_masked();
}

template <typename Element>
__device__ __forceinline__ const Element* element_at(const Operand& t, int32_t i0, int32_t i1, int32_t i2) {
    return static_cast<const Element*>(t.data) + i0 * t.stride[0] + i1 * t.stride[1] + i2 * t.stride[2];
}
template <typename Element>
__device__ __forceinline__ Element* mutable_element_at(const Operand& t, int32_t i0, int32_t i1, int32_t i2) {
    return static_cast<Element*>(t.data) + i0 * t.stride[0] + i1 * t.stride[1] + i2 * t.stride[2];
}

// Two accumulator tiles side by side (columns 0-7, 8-15 of a 16-wide block), packed to 16 bits,
// are one A fragment of the next product (ptx.cuh).
template <typename Element>
__device__ __forceinline__ void accumulators_to_a(uint32_t (&a)[4], const float (&left)[4], const float (&right)[4]) {
    a[0] = ElementTraits<Element>::pack(left[0], left[1]);
    a[1] = ElementTraits<Element>::pack(left[2], left[3]);
    a[2] = ElementTraits<Element>::pack(right[0], right[1]);
    a[3] = ElementTraits<Element>::pack(right[2], right[3]);
}

// The two values of a packed pair as floats (low half first).
template <typename Element>
__device__ __forceinline__ float2 unpack(uint32_t pair) {
    const Element* e = reinterpret_cast<const Element*>(&pair);
    return make_float2(ElementTraits<Element>::to_float(e[0]), ElementTraits<Element>::to_float(e[1]));
}

// dS = P * (dP - Di) of one packed pair, packed to 16 bits: `p` is the pair of P as it entered
// dV (rounded to the dtype), (lo, hi) = dP - Di in float32. Both kernels form dS here and only
// here, so that the dQ kernel (deterministic mode) forms dS with the same formula and roundings as
// the dK/dV kernel (not always the same bits: its P and dP come from differently ordered products).
//   bfloat16: dP - Di is packed to bf16 and multiplied by P in one packed multiply (HMUL2.BF16;
//     _rn: never contracted), which saves unpacking P and two float32 multiplies per pair. The
//     cost is one extra bf16 rounding of (dP - Di) (relative 2^-9) before the product's own:
//     about twice the rounding error of dS, within SPEC §5's 2x the naive-dtype error (the naive
//     computation rounds there too). bf16 has float32's exponent range: no new overflow.
//   float16: P is unpacked and multiplied in float32, rounded once: (dP - Di) can exceed
//     float16's range (65504) where P * (dP - Di), P <= 1, does not.
template <typename Element>
__device__ __forceinline__ uint32_t ds_pair(uint32_t p, float lo, float hi) {
    if constexpr (std::is_same_v<Element, __nv_bfloat16>) {
        const uint32_t difference = ElementTraits<Element>::pack(lo, hi);
        const __nv_bfloat162 product = __hmul2_rn(*reinterpret_cast<const __nv_bfloat162*>(&p),
                                                  *reinterpret_cast<const __nv_bfloat162*>(&difference));
        return *reinterpret_cast<const uint32_t*>(&product);
    } else {
        const float2 probability = unpack<Element>(p);
        return ElementTraits<Element>::pack(probability.x * lo, probability.y * hi);
    }
}

// Fragment addresses are formed once per tile and stepped with constants: rows by whole multiples
// of 8 through row_bytes() (keeps row % 8, hence the swizzle: a plain add), columns by
// advance_column_steps() (smem_tile.cuh). One base register per operand instead of one per
// fragment is part of what keeps the dK/dV kernel within its registers (ptxas: backward_traits.cuh).

// Calls body(std::true_type{}) for a Partial tile and body(std::false_type{}) otherwise: the one
// branch per tile that lets Full tiles run code with no mask arithmetic in it (the body tests
// `decltype(masked)::value` with if constexpr).
template <typename Body>
__device__ __forceinline__ void with_mask_test_if_partial(TileKind kind, Body&& body) {
    if (kind == TileKind::Partial)
        body(std::true_type{});
    else
        body(std::false_type{});
}

template <int kTiles>
__device__ __forceinline__ void zero(float (&acc)[kTiles][4]) {
#pragma unroll
    for (int t = 0; t < kTiles; ++t)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[t][e] = 0.0f;
}

// acc[kTiles][4] += A * B where A is in registers, packed (a[kDepth / 16][4], one A fragment per
// 16 k), and B (kDepth x 8 kTiles) is stored [k][n] (ldmatrix transposed; address b0 at k = 0,
// n = 0 of the columns wanted).
template <typename Element, typename BTile, int kTiles, int kDepth>
__device__ __forceinline__ void mma_a_regs_b_kn(float (&acc)[kTiles][4], const uint32_t (&a)[kDepth / 16][4],
                                                uint32_t b0) {
#pragma unroll  // in full: a[k] must stay in registers, and a runtime k would put it in local memory
    for (int k = 0; k < kDepth / 16; ++k) {
#pragma unroll
        for (int t = 0; t < kTiles; t += 2) {
            uint32_t b[4];
            ldmatrix_x4_trans(b, advance_column_steps(b0, t / 2) + row_bytes<BTile>(kMmaK * k));
            const uint32_t left[2] = {b[0], b[1]}, right[2] = {b[2], b[3]};
            mma_16816<Element>(acc[t], a[k], left);
            mma_16816<Element>(acc[t + 1], a[k], right);
        }
    }
}

// --- preprocess ------------------------------------------------------------------------------

constexpr int kPreprocessThreads = 256;

// One group of D / 8 threads per padded row: Di = rowsum(dO * O) in float32 from 16-byte chunks,
// and LSE * log2 e (+inf where LSE = -inf, so that exp2(x - it) = 0; padded rows likewise).
// With a dQ accumulator (non-deterministic mode) it also zeroes it, D floats per padded row: the
// same bytes a memset would write, without a launch of its own (FlashAttention-2 clears its
// dQaccum in the same kernel).
template <typename Element, int kHeadDim>
__global__ void __launch_bounds__(kPreprocessThreads)
backward_preprocess_kernel(const AttentionProblem p, const BackwardScratch scratch) {
    constexpr int kThreadsPerRow = kHeadDim / kChunkElements;
    static_assert(kThreadsPerRow <= kWarpSize && kWarpSize % kThreadsPerRow == 0, "a row's threads share a warp");
    const int64_t rows = int64_t(p.batch) * p.q_heads * scratch.padded_nq;
    const int64_t row = int64_t(blockIdx.x) * (kPreprocessThreads / kThreadsPerRow) + threadIdx.x / kThreadsPerRow;
    const int chunk = threadIdx.x % kThreadsPerRow;
    // No early return: every lane of the warp takes part in the shuffles below.
    const bool in_range = row < rows;
    const int32_t r = int32_t(row % scratch.padded_nq);
    const int32_t head = int32_t((row / scratch.padded_nq) % p.q_heads);
    const int32_t batch = int32_t(row / (int64_t(scratch.padded_nq) * p.q_heads));
    float sum = 0.0f;
    if (in_range && r < p.nq) {
        const uint4 o = *reinterpret_cast<const uint4*>(element_at<Element>(p.out, batch, r, head) + chunk * kChunkElements);
        const uint4 d = *reinterpret_cast<const uint4*>(element_at<Element>(p.dout, batch, r, head) + chunk * kChunkElements);
        const Element* oe = reinterpret_cast<const Element*>(&o);
        const Element* de = reinterpret_cast<const Element*>(&d);
#pragma unroll
        for (int i = 0; i < kChunkElements; ++i)
            sum += ElementTraits<Element>::to_float(oe[i]) * ElementTraits<Element>::to_float(de[i]);
    }
#pragma unroll
    for (int offset = kThreadsPerRow / 2; offset > 0; offset /= 2) sum += __shfl_xor_sync(kFullWarpMask, sum, offset);
    if (in_range && chunk == 0) {
        float lse_log2 = INFINITY;
        if (r < p.nq) {
            const float lse = static_cast<const float*>(p.lse.data)[batch * p.lse.stride[0] + head * p.lse.stride[1] +
                                                                    r * p.lse.stride[2]];
            lse_log2 = lse == -INFINITY ? INFINITY : lse * kLog2e;
        }
        scratch.lse_log2[row] = lse_log2;
        scratch.di[row] = sum;
    }
    if (in_range && scratch.dq_accum != nullptr) {
        // The accumulator is rows x D floats whatever its order inside (DqAccumulator): this
        // thread zeroes its row's floats [8 chunk, 8 chunk + 8).
        float4* const zeros = reinterpret_cast<float4*>(scratch.dq_accum + row * kHeadDim + chunk * kChunkElements);
        static_assert(kChunkElements % 4 == 0, "a chunk's floats are whole float4s");
#pragma unroll
        for (int i = 0; i < kChunkElements / 4; ++i) zeros[i] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
}

// --- dK / dV (and dQ by atomics) ---------------------------------------------------------------

template <typename Element, int kHeadDim>
struct DkDvSmem {
    using T = DkDv<kHeadDim>;
    using KTile = SmemTile<T::kBlockN, kHeadDim>;     // K and V of the CTA's keys
    using QTile = SmemTile<T::kBlockM, kHeadDim>;     // Q and dO of one query block
    using PTile = SmemTile<T::kBlockM, T::kBlockN>;   // P and dS of one step, [query][key]
    // Q / dO double-buffered: the next block loads while this one is computed.
    static constexpr int kStages = 2;
    // The column intervals of the CTA's keys for the current head, in shared memory rather than
    // registers live across the main loop.
    static constexpr int kColumnBytes = T::kBlockN * int(sizeof(ColumnIntervals));
    static constexpr int kBytes = 2 * KTile::kBytes + 2 * kStages * QTile::kBytes +
                                  2 * kStages * T::kBlockM * int(sizeof(float)) + 2 * PTile::kBytes + kColumnBytes;
    // This layout is exactly sm_80's 163 KB at D = 128 and sm_86's / sm_89's 99 KB at D = 64, and
    // the kernel's static tile_end takes it past them (ptxas: 128 bytes of static shared memory,
    // the dynamic block's alignment; the limit is on both together), so those devices refuse
    // the backward at those head dims (Unsupported, check_shared_memory) until the layout gives up
    // 128 bytes (bench/NOTES.md, session 18).
    static_assert(kHeadDim != 128 || kBytes <= kSm80SharedMemoryPerBlock, "D = 128's layout is at most sm_80's 163 KB");
    static_assert(kHeadDim != 64 || kBytes <= kSm86SharedMemoryPerBlock, "D = 64's layout is at most sm_86's 99 KB");
};

// Both kernels look for their next tile 32 candidates at a time, one per lane in block order
// (lane l: the (l + 1)-th block after the current one), each candidate classified once, by its own
// lane; the warp's votes give the verdicts on all 32 as two bit masks. take() moves to the first
// live candidate, and the rest of the verdicts stay for the next take(). Call vote() with the
// whole warp.
struct CandidateVotes {
    uint32_t live = 0;  // bit b: the candidate b + 1 blocks on is not Skipped
    uint32_t full = 0;  //        ... and is Full

    static __device__ __forceinline__ CandidateVotes vote(TileKind candidate_kind) {
        return {__ballot_sync(kFullWarpMask, candidate_kind != TileKind::Skipped),
                __ballot_sync(kFullWarpMask, candidate_kind == TileKind::Full)};
    }
    // How many blocks on the first live candidate is (0: none left), with its kind in `kind`;
    // it and the candidates before it are dropped, so bit 0 is again the block after it.
    __device__ __forceinline__ int take(TileKind& kind) {
        if (live == 0) return 0;
        const int steps = __ffs(live);
        kind = (full >> (steps - 1)) & 1u ? TileKind::Full : TileKind::Partial;
        live = steps < kWarpSize ? live >> steps : 0u;
        full = steps < kWarpSize ? full >> steps : 0u;
        return steps;
    }
};

// The kind of one warp's sub-tile of a Partial tile: its key columns (lane l holds column l's
// intervals in `column` where `has_column`) x rows [row_begin, row_end). Each lane classifies its
// column with classify() on a one-column summary and the warp votes: Skipped if every column
// is, Full if every column is, else Partial. Sound as classify() is per column, and at least as
// sharp as classify() on a summary merged over the columns (which needs every column covered by
// the same interval to skip). Call with the whole warp.
__device__ __forceinline__ TileKind warp_sub_tile_kind(const ColumnIntervals& column, bool has_column,
                                                       int32_t row_begin, int32_t row_end) {
    TileKind kind = TileKind::Skipped;
    if (has_column) {
        BlockSummary summary = BlockSummary::empty();
        summary.fold(column);
        kind = classify(summary, row_begin, row_end);
    }
    const bool skipped = !has_column || kind == TileKind::Skipped;
    const bool full = !has_column || kind == TileKind::Full;
    if (__all_sync(kFullWarpMask, skipped)) return TileKind::Skipped;
    return __all_sync(kFullWarpMask, full) ? TileKind::Full : TileKind::Partial;
}

// One warp's acc[kMTiles][kNTiles][4] += A B over k in [0, kDepth), both operands in shared
// memory: A fragment i (rows 16 i) of k-step s at a_address(i, s), loaded with ldmatrix.x4
// (transposed when kATransposed: A stored [k][m]); the B fragments of n-tiles 2 j, 2 j + 1 at
// b_address(j, s) (transposed when kBTransposed: B stored [k][n]). Each B fragment feeds
// kMTiles products, each A fragment kNTiles.
//
// The fragments of step s + 1 are loaded before the products of step s (two register buffers):
// loaded just before their products, the products waited on them (ncu: short scoreboard at the
// HMMA, 23 % of the dK/dV kernel's stall samples).
template <typename Element, int kMTiles, int kNTiles, int kDepth, bool kATransposed, bool kBTransposed,
          typename AAddress, typename BAddress>
__device__ __forceinline__ void warp_mma(float (&acc)[kMTiles][kNTiles][4], AAddress a_address, BAddress b_address) {
    static_assert(kNTiles % 2 == 0 && kDepth % 16 == 0, "whole B fragment pairs and k16 steps");
    constexpr int kSteps = kDepth / 16;
    uint32_t a[2][kMTiles][4], b[2][kNTiles / 2][4];
    auto load = [&](int buffer, int s) {
#pragma unroll
        for (int i = 0; i < kMTiles; ++i) {
            if constexpr (kATransposed)
                ldmatrix_x4_trans(a[buffer][i], a_address(i, s));
            else
                ldmatrix_x4(a[buffer][i], a_address(i, s));
        }
#pragma unroll
        for (int j = 0; j < kNTiles / 2; ++j) {
            if constexpr (kBTransposed)
                ldmatrix_x4_trans(b[buffer][j], b_address(j, s));
            else
                ldmatrix_x4(b[buffer][j], b_address(j, s));
        }
    };
    load(0, 0);
#pragma unroll
    for (int s = 0; s < kSteps; ++s) {
        if (s + 1 < kSteps) load((s + 1) % 2, s + 1);
#pragma unroll
        for (int j = 0; j < kNTiles / 2; ++j) {
            const uint32_t left[2] = {b[s % 2][j][0], b[s % 2][j][1]}, right[2] = {b[s % 2][j][2], b[s % 2][j][3]};
#pragma unroll
            for (int i = 0; i < kMTiles; ++i) {
                mma_16816<Element>(acc[i][2 * j], a[s % 2][i], left);
                mma_16816<Element>(acc[i][2 * j + 1], a[s % 2][i], right);
            }
        }
    }
}

template <int kMTiles, int kNTiles>
__device__ __forceinline__ void zero(float (&acc)[kMTiles][kNTiles][4]) {
#pragma unroll
    for (int i = 0; i < kMTiles; ++i) zero(acc[i]);
}

// A part of split CTA `split_cta` (TailSplit) at the end of its tiles: adds its dK and dV
// accumulators (each thread its own fragment values, at value-major positions so that a warp's
// reductions cover 512 contiguous bytes) into the split CTA's sums, and counts its arrival.
// Returns true in the part that arrives last, with the complete sums read back into dk, dv.
// Called by every thread.
template <int kThreads, int kMTiles, int kTiles>
__device__ __forceinline__ bool sum_split_parts(const TailSplit& split, int32_t split_cta,
                                                float (&dk)[kMTiles][kTiles][4], float (&dv)[kMTiles][kTiles][4]) {
    constexpr int kQuads = kMTiles * kTiles;  // 4-float groups per thread and matrix
    float* const dk_sums = split.sums + int64_t(split_cta) * 2 * kQuads * kThreads * 4;
    float* const dv_sums = dk_sums + kQuads * kThreads * 4;
    auto at = [&](float* sums, int i, int t) { return sums + ((i * kTiles + t) * kThreads + threadIdx.x) * 4; };
#pragma unroll
    for (int i = 0; i < kMTiles; ++i)
#pragma unroll
        for (int t = 0; t < kTiles; ++t) {
            red_add_quad(at(dk_sums, i, t), dk[i][t][0], dk[i][t][1], dk[i][t][2], dk[i][t][3]);
            red_add_quad(at(dv_sums, i, t), dv[i][t][0], dv[i][t][1], dv[i][t][2], dv[i][t][3]);
        }
    __shared__ int32_t last_part;
    if (!arrive_last_part(split, split_cta, last_part)) return false;
#pragma unroll
    for (int i = 0; i < kMTiles; ++i)
#pragma unroll
        for (int t = 0; t < kTiles; ++t) {
            const float4 k = __ldcg(reinterpret_cast<const float4*>(at(dk_sums, i, t)));
            const float4 v = __ldcg(reinterpret_cast<const float4*>(at(dv_sums, i, t)));
            dk[i][t][0] = k.x, dk[i][t][1] = k.y, dk[i][t][2] = k.z, dk[i][t][3] = k.w;
            dv[i][t][0] = v.x, dv[i][t][1] = v.y, dv[i][t][2] = v.z, dv[i][t][3] = v.w;
        }
    return true;
}

// grid: B * Hk * key blocks CTAs, heaviest key blocks first (schedule: TileAxis::KeyBlocks,
// counted with this kernel's kBlockM x kBlockN tiles); block kThreads. Every CTA returns at once
// when `condition` does not hold (the launch of the key order the device did not choose).
//
// kSortedKeys: the problem is the key-permuted one of key_order.cuh (p.mask its permuted mask);
// the CTA loads its K / V block through `key_order` and stores dK / dV at the caller's keys. A
// compile-time variant, so that the natural one keeps its registers: either change as a runtime
// branch cost the default kernel 60 bytes of spills (ptxas, bf16 D = 128).
//
// A step (one query block of one query head):
//   barrier 1   Q, dO of the step have landed; every warp is done with the previous step, so the
//               other Q / dO stage may take the next block's loads and P, dS may be rewritten;
//   S, dP, P, dS   per warp tile (kSdpRows x kSdpCols), P and dS stored to shared memory;
//   barrier 2   P, dS complete;
//   dV += P^T dO   per warp tile (kDkvRows keys x kDkvCols columns);
//   dQ += dS K   per warp tile (kDqRows x kDqCols), added into the float32 accumulator
//               (non-deterministic mode; the dQ kernel forms it otherwise);
//   dK += dS^T Q   per warp tile, as dV.
template <typename Element, int kHeadDim, bool kAccumulateDq, bool kSortedKeys>
__global__ void __launch_bounds__(DkDv<kHeadDim>::kThreads, 1)
backward_dkdv_kernel(const AttentionProblem p, const SummaryTable summaries, const TileSchedule schedule,
                     const BackwardScratch scratch, const KeyOrderView key_order, const LaunchCondition condition) {
    using T = DkDv<kHeadDim>;
    using Smem = DkDvSmem<Element, kHeadDim>;
    using KTile = typename Smem::KTile;
    using QTile = typename Smem::QTile;
    using PTile = typename Smem::PTile;
    constexpr int kBlockM = T::kBlockM, kBlockN = T::kBlockN, kThreads = T::kThreads;
    constexpr int kMTiles = kWarpTileRows / kMmaRows;     // m16 fragments of every warp tile
    constexpr int kSdpTiles = T::kSdpCols / kMmaCols;    // n-tiles of a warp's S / dP
    constexpr int kDkvTiles = T::kDkvCols / kMmaCols;    // n-tiles of a warp's dK / dV
    constexpr int kDqTiles = T::kDqCols / kMmaCols;
    static_assert(kMTiles * kDkvTiles * 4 * kThreads == kBlockN * kHeadDim,
                  "the CTA's threads hold dK (and dV) once each: TailSplit's sums are kBlockN x D per matrix");

    extern __shared__ __align__(128) unsigned char shared_memory[];
    Element* const k_smem = reinterpret_cast<Element*>(shared_memory);
    Element* const v_smem = k_smem + KTile::kElements;
    Element* const q_smem = v_smem + KTile::kElements;                   // [kStages]
    Element* const do_smem = q_smem + Smem::kStages * QTile::kElements;  // [kStages]
    Element* const p_smem = do_smem + Smem::kStages * QTile::kElements;
    Element* const ds_smem = p_smem + PTile::kElements;
    float* const lse_smem = reinterpret_cast<float*>(ds_smem + PTile::kElements);  // [kStages][kBlockM]
    float* const di_smem = lse_smem + Smem::kStages * kBlockM;
    ColumnIntervals* const columns_smem = reinterpret_cast<ColumnIntervals*>(di_smem + Smem::kStages * kBlockM);

    if (!condition.holds()) return;  // the launch of the key order the device did not choose
    // A part of a split CTA (TailSplit) runs the schedule position of the CTA it splits.
    const bool split = kAccumulateDq && scratch.split.is_part(int32_t(blockIdx.x));
    const TileCoordinates tile = schedule.at(scratch.split.schedule_position(int32_t(blockIdx.x)));
    const int32_t key_block = tile.block;
    const int32_t kv_head = tile.head;
    const int32_t batch = tile.batch;
    const int32_t key0 = key_block * kBlockN;
    const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
    const int group = lane / 4, quad = lane % 4;
    const int32_t heads_per_group = p.q_heads / p.kv_heads;
    const int32_t first_head = kv_head * heads_per_group;
    const int32_t q_blocks = ceil_div(p.nq, kBlockM);
    // key0 + kBlockN > Nk without forming key0 + kBlockN (int32 overflow near 2^31).
    const bool keys_past_end = key0 > p.nk - kBlockN;
    const float scale_log2 = p.scale * kLog2e;

    // The tiles of this CTA, in order: (query head index in the group, query block), Skipped ones left out.
    auto tile_kind = [&](const BlockSummary& s, int32_t q_block) {
        const int32_t row0 = q_block * kBlockM;
        const TileKind kind = classify(s, row0, clipped_end(row0, kBlockM, p.nq));
        return kind == TileKind::Full && keys_past_end ? TileKind::Partial : kind;
    };
    // Moves (head_index, q_block) to the next non-skipped tile; head_index == heads_per_group when
    // none. The 32 lanes of each warp classify 32 query blocks at once (CandidateVotes; every
    // thread calls this, so every lane takes part): a mask that skips most blocks costs a few
    // rounds per CTA, not one dependent summary read per block. A round's verdicts on the
    // blocks after its winner are used first, so that a run of live blocks costs one round per
    // 32 steps, not one each (ncu: a round was ~60 of the ~180 instructions a warp ran per step
    // between barrier 1 and the products).
    // The summary of (current head, this key block): its address is formed when the head changes
    // (mask_head() divides) and it is read through the read-only cache, by the rounds only.
    const BlockSummary* head_summary = &summaries.at(p.mask, batch, first_head, key_block);
    CandidateVotes later;  // the last round's verdicts on the blocks after q_block
    auto advance_to_live = [&](int32_t& head_index, int32_t& q_block, TileKind& kind) {
        if (const int steps = later.take(kind)) {
            q_block += steps;
            return;
        }
        BlockSummary s = read_only_summary(head_summary);
        while (true) {
            if (q_block + 1 >= q_blocks) {
                q_block = -1;
                if (++head_index == heads_per_group) return;
                head_summary = &summaries.at(p.mask, batch, first_head + head_index, key_block);
                s = read_only_summary(head_summary);
            }
            const int32_t candidate = q_block + 1 + lane;
            later = CandidateVotes::vote(candidate < q_blocks ? tile_kind(s, candidate) : TileKind::Skipped);
            if (const int steps = later.take(kind)) {
                q_block += steps;
                return;
            }
            q_block += kWarpSize;
        }
    };
    // A part's tiles are [tile_begin, tile_end) of (head_index, q_block) in order, as
    // head_index * q_blocks + q_block (at most heads per group x query blocks: int32 by the tile
    // order's checks); every tile for an unsplit CTA. The end is read from shared memory at each
    // step: kept in a register across the main loop it cost ptxas 100 bytes of spills.
    const PartTiles tiles = split ? part_tiles(heads_per_group * q_blocks, scratch.split.part(int32_t(blockIdx.x)),
                                               scratch.split.parts)
                                  : PartTiles{0, heads_per_group * q_blocks};
    const int32_t tile_begin = tiles.begin;
    __shared__ int32_t tile_end;
    tile_end = tiles.end;  // every thread alike
    auto advance = [&](int32_t& head_index, int32_t& q_block, TileKind& kind) {
        advance_to_live(head_index, q_block, kind);
        if (head_index < heads_per_group && head_index * q_blocks + q_block >= tile_end) head_index = heads_per_group;
    };
    auto load_query_block = [&](int stage, int32_t head_index, int32_t q_block) {
        const int32_t head = first_head + head_index, row0 = q_block * kBlockM;
        const Element* const q_rows = element_at<Element>(p.q, batch, row0, head);
        const Element* const do_rows = element_at<Element>(p.dout, batch, row0, head);
        constexpr bool kWholeTileBranch = true;  // smem_tile.cuh
        load_tile_async<QTile, kThreads, kWholeTileBranch>(q_smem + stage * QTile::kElements, q_rows, p.q.stride[1], p.nq - row0);
        load_tile_async<QTile, kThreads, kWholeTileBranch>(do_smem + stage * QTile::kElements, do_rows, p.dout.stride[1],
                                                           p.nq - row0);
        constexpr int kRowChunks = kBlockM * int(sizeof(float)) / kCopyBytes;  // 16-byte chunks of kBlockM floats
        static_assert(2 * kRowChunks <= kThreads, "one chunk per thread");
        const int64_t scratch_row = scratch.row(batch, head, p.q_heads, row0);
        const int c = threadIdx.x;
        if (c < kRowChunks)
            cp_async_16(shared_address(lse_smem + stage * kBlockM + c * 4), scratch.lse_log2 + scratch_row + c * 4, true);
        else if (c < 2 * kRowChunks)
            cp_async_16(shared_address(di_smem + stage * kBlockM + (c - kRowChunks) * 4),
                        scratch.di + scratch_row + (c - kRowChunks) * 4, true);
    };

    // The warp tiles (backward_traits.cuh).
    const int sdp_row0 = (warp % T::kSdpWarpsM) * T::kSdpRows;  // S, dP: queries
    const int sdp_key0 = (warp / T::kSdpWarpsM) * T::kSdpCols;  //        keys
    const int dkv_key0 = (warp % T::kDkvWarpsN) * T::kDkvRows;  // dK, dV: keys
    const int dkv_col0 = (warp / T::kDkvWarpsN) * T::kDkvCols;  //         columns
    const int dq_row0 = (warp % T::kDqWarpsM) * T::kDqRows;     // dQ: queries
    const int dq_col0 = (warp / T::kDqWarpsM) * T::kDqCols;

    // Per-lane ldmatrix addresses, formed once and stepped with constants: rows by multiples of
    // 8 through row_bytes() (a plain add), columns by advance_column_steps(), which needs the
    // lane's chunk and the step's to share no bit (smem_tile.cuh): each base column below is a
    // multiple of its warp tile's width, a power of two (static_assert in DkDv), the lane adds
    // at most its second chunk (bit 0), and the steps stay within the width or move by whole
    // 64-column periods.
    const uint32_t q_address = shared_address(q_smem), do_address = shared_address(do_smem);
    // From a Q / dO stage's start: A of S = Q K^T, dP = dO V^T; B as [query][column] of dV, dK.
    const uint32_t qa_lane = a_fragment_address<QTile>(q_smem, sdp_row0, 0, lane) - q_address;
    const uint32_t out_kn_lane = b_fragment_address_kn<QTile>(q_smem, 0, dkv_col0, lane) - q_address;
    // B of S, dP: K, V as [key][d].
    const uint32_t k_nk = b_fragment_address_nk<KTile>(k_smem, sdp_key0, 0, lane);
    const uint32_t v_nk = b_fragment_address_nk<KTile>(v_smem, sdp_key0, 0, lane);
    // A of dV, dK: P^T, dS^T, from their [query][key] tiles (transposed loads); from a tile's start.
    const uint32_t p_address = shared_address(p_smem), ds_address = shared_address(ds_smem);
    const uint32_t pt_lane = a_fragment_address_transposed<PTile>(p_smem, dkv_key0, 0, lane) - p_address;
    // dQ = dS K: A = dS as [query][key]; B = K as [key][column].
    const uint32_t dsa = a_fragment_address<PTile>(ds_smem, dq_row0, 0, lane);
    const uint32_t k_kn = b_fragment_address_kn<KTile>(k_smem, 0, dq_col0, lane);
    // This lane's P / dS pairs: (query sdp_row0 + 16 i + group + 8 h, keys sdp_key0 + 8 t + 2 quad, +1),
    // as an element offset from a tile's start at i = h = t = 0.
    const int pair_offset = PTile::offset(sdp_row0 + group, sdp_key0 + kPairColumns * quad);
    static_assert(kMmaCols == kChunkElements, "an n-tile is one chunk: pair_at() steps t chunks");
    auto pair_at = [&](Element* tile_smem, int i, int h, int t) {
        return reinterpret_cast<uint32_t*>(tile_smem + advance_chunks<kChunkElements>(uint32_t(pair_offset), t) +
                                           (kMmaRows * i + kRowHalf * h) * PTile::kColsCount);
    };
    // Calls f(i, h, row) for this lane's four rows of S / dP: m16 fragment i, row half h (group,
    // group + 8), `row` within the step's queries.
    auto for_each_lane_row = [&](auto&& f) {
#pragma unroll
        for (int i = 0; i < kMTiles; ++i)
#pragma unroll
            for (int h = 0; h < kRowHalves; ++h) f(i, h, sdp_row0 + kMmaRows * i + kRowHalf * h + group);
    };

    float dv_acc[kMTiles][kDkvTiles][4], dk_acc[kMTiles][kDkvTiles][4];
    zero(dv_acc);
    zero(dk_acc);

    int32_t columns_head = -1;  // the head whose column intervals columns_smem holds
    const auto load_column_intervals = [&](int32_t head) {
        if (threadIdx.x < kBlockN)
            columns_smem[threadIdx.x] = key_intervals(p.mask, batch, p.mask.mask_head(head), key0 + int32_t(threadIdx.x));
        columns_head = head;
    };
    // Just before the first tile: advance() moves to the first live one from there.
    int32_t head_index = tile_begin / q_blocks, q_block = tile_begin % q_blocks - 1;
    if (head_index < heads_per_group)
        head_summary = &summaries.at(p.mask, batch, first_head + head_index, key_block);
    TileKind kind = TileKind::Skipped;
    advance(head_index, q_block, kind);
    if (head_index < heads_per_group) {
        if constexpr (!kSortedKeys) {
            load_tile_async<KTile, kThreads>(k_smem, element_at<Element>(p.k, batch, key0, kv_head), p.k.stride[1],
                                             p.nk - key0);
            load_tile_async<KTile, kThreads>(v_smem, element_at<Element>(p.v, batch, key0, kv_head), p.v.stride[1],
                                             p.nk - key0);
        } else {  // the block's keys in the sorted order: one row lookup per copy, once per CTA
            const int32_t* const keys = key_order.keys(batch, p.mask.mask_head(first_head)) + key0;
            load_gathered_tile_async<KTile, kThreads>(k_smem, element_at<Element>(p.k, batch, 0, kv_head), p.k.stride[1],
                                                      keys, p.nk - key0);
            load_gathered_tile_async<KTile, kThreads>(v_smem, element_at<Element>(p.v, batch, 0, kv_head), p.v.stride[1],
                                                      keys, p.nk - key0);
        }
        load_query_block(0, head_index, q_block);
        cp_async_commit();
        // The first head's column intervals, read while the copies above are in flight: a first
        // Partial step would otherwise have its threads wait on these loads before barrier 1, and
        // every warp with them. Read whether or not a Partial step comes (a dK/dV CTA spends ~3
        // steps' time outside its steps: bench/NOTES.md, session 9).
        load_column_intervals(first_head + head_index);
    }
    for (int stage = 0; head_index < heads_per_group; stage ^= 1) {
        const int32_t head = first_head + head_index, row0 = q_block * kBlockM;
        const TileKind this_kind = kind;
        // A Partial step needs its head's column intervals. Written before barrier 1: every warp
        // has passed the previous step's barrier 2, after which nobody reads them.
        if (this_kind == TileKind::Partial && columns_head != head) load_column_intervals(head);
        cp_async_wait<0>();
        __syncthreads();  // barrier 1
        advance(head_index, q_block, kind);
        if (head_index < heads_per_group) {
            load_query_block(stage ^ 1, head_index, q_block);
            cp_async_commit();
        }

        const uint32_t q_tile = q_address + stage * QTile::kBytes;
        const uint32_t do_tile = do_address + stage * QTile::kBytes;
        const float* const lse_tile = lse_smem + stage * kBlockM;
        const float* const di_tile = di_smem + stage * kBlockM;

        // The kind of this warp's S / dP tile: the step's kind, refined for a Partial step to that
        // of the warp's keys x rows, so that a warp whose keys the mask hides (or shows) entirely
        // skips its products (or the mask arithmetic). Warp-uniform.
        const int32_t warp_row_begin = row0 + sdp_row0;
        TileKind warp_kind = this_kind;
        if (this_kind == TileKind::Partial) {
            const bool has_column = lane < T::kSdpCols;
            warp_kind = warp_sub_tile_kind(columns_smem[sdp_key0 + (has_column ? lane : 0)], has_column, warp_row_begin,
                                           clipped_end(warp_row_begin, T::kSdpRows, p.nq));
        }

        if (warp_kind == TileKind::Skipped) {
            // P = dS = 0 on this warp's tile: the products of the whole step read them.
            for_each_lane_row([&](int i, int h, int) {
#pragma unroll
                for (int t = 0; t < kSdpTiles; ++t) *pair_at(p_smem, i, h, t) = *pair_at(ds_smem, i, h, t) = 0u;
            });
        } else {
            // S = Q K^T of the warp tile; element (i, t, e): query sdp_row0 + 16 i + group + 8 (e / 2),
            // key sdp_key0 + 8 t + 2 quad + e % 2.
            float s_acc[kMTiles][kSdpTiles][4];
            zero(s_acc);
            warp_mma<Element, kMTiles, kSdpTiles, kHeadDim, false, false>(
                s_acc, [&](int i, int s) { return advance_column_steps(q_tile + qa_lane + row_bytes<QTile>(kMmaRows * i), s); },
                [&](int j, int s) { return advance_column_steps(k_nk + row_bytes<KTile>(kBFragmentCols * j), s); });
            // dP = dO V^T before P: the exponentials below then issue while its products are still
            // in the tensor pipe, and S's and dP's products interleave. Between the two products
            // the exponentials waited on one another (ncu: 2.5 % of the kernel's samples, FA2's
            // 1 %); the backward gained 1.2-1.6 % at 32K, the full mask 2.6 % at 8K (bench/NOTES.md,
            // session 20).
            float dp_acc[kMTiles][kSdpTiles][4];
            zero(dp_acc);
            warp_mma<Element, kMTiles, kSdpTiles, kHeadDim, false, false>(
                dp_acc, [&](int i, int s) { return advance_column_steps(do_tile + qa_lane + row_bytes<QTile>(kMmaRows * i), s); },
                [&](int j, int s) { return advance_column_steps(v_nk + row_bytes<KTile>(kBFragmentCols * j), s); });
            // P = exp2(S scale log2 e - LSE log2 e), packed to 16 bits as it enters dV; one branch
            // per step, not per element: Full tiles run no mask code. In a Partial tile lane l
            // turns the warp's key column l into bits over the warp's 32 rows, and each lane takes
            // its own columns' words from their lanes by shuffles, shifted so that bit 16 i + 8 h
            // is the lane's row (i, h); one bit test per element zeroes P. (Each lane building all
            // of its kSdpTiles x 2 columns' words itself cost 8 interval reads and 16 row_bits a
            // step, the same words built by the 8 lanes of a quad over and over.)
            uint32_t p_packed[kMTiles][kSdpTiles][kRowHalves];
            auto probabilities = [&](auto masked) {
                uint32_t hidden[kSdpTiles][kPairColumns];
                if constexpr (decltype(masked)::value) {
                    static_assert(T::kSdpCols <= kWarpSize, "one key column of the warp tile per lane");
                    const uint32_t column_rows =
                        masked_row_bits(columns_smem[sdp_key0 + (lane < T::kSdpCols ? lane : 0)], warp_row_begin);
#pragma unroll
                    for (int t = 0; t < kSdpTiles; ++t)
#pragma unroll
                        for (int c = 0; c < kPairColumns; ++c)
                            hidden[t][c] = __shfl_sync(kFullWarpMask, column_rows, t * kMmaCols + kPairColumns * quad + c) >>
                                           group;
                }
                for_each_lane_row([&](int i, int h, int row) {
                    const float lse = lse_tile[row];
#pragma unroll
                    for (int t = 0; t < kSdpTiles; ++t) {
                        float prob[kPairColumns];
#pragma unroll
                        for (int c = 0; c < kPairColumns; ++c) {
                            prob[c] = exp2_approx(fmaf(s_acc[i][t][2 * h + c], scale_log2, -lse));
                            if constexpr (decltype(masked)::value) {
                                if (hidden[t][c] & (1u << (kMmaRows * i + kRowHalf * h))) prob[c] = 0.0f;
                            }
                        }
                        p_packed[i][t][h] = ElementTraits<Element>::pack(prob[0], prob[1]);
                    }
                });
            };
            with_mask_test_if_partial(warp_kind, probabilities);
            for_each_lane_row([&](int i, int h, int) {
#pragma unroll
                for (int t = 0; t < kSdpTiles; ++t) *pair_at(p_smem, i, h, t) = p_packed[i][t][h];
            });

            // dS = P * (dP - Di) from the packed P (the value that entered dV).
            for_each_lane_row([&](int i, int h, int row) {
                const float di = di_tile[row];
#pragma unroll
                for (int t = 0; t < kSdpTiles; ++t)
                    *pair_at(ds_smem, i, h, t) =
                        ds_pair<Element>(p_packed[i][t][h], dp_acc[i][t][2 * h] - di, dp_acc[i][t][2 * h + 1] - di);
            });
        }
        __syncthreads();  // barrier 2: P, dS of the step complete

        // dV += P^T dO, then dQ, then dK += dS^T Q (dK scaled at the end); dV and dK take A from
        // the [query][key] tiles, transposed, and B as [query][column].
        warp_mma<Element, kMTiles, kDkvTiles, kBlockM, true, true>(
            dv_acc, [&](int i, int s) { return advance_column_steps(p_address + pt_lane, i) + row_bytes<PTile>(kMmaK * s); },
            [&](int j, int s) { return advance_column_steps(do_tile + out_kn_lane, j) + row_bytes<QTile>(kMmaK * s); });
        if constexpr (kAccumulateDq) {
            // dQ += dS K of the warp tile, added into the float32 accumulator in DqAccumulator's
            // order (one slice per m16 fragment; padded rows exist there and add zeros). Between
            // the dV and dK products, as FlashAttention-2 orders them: there ptxas issues half of
            // the eight reductions (D = 128) among the dQ product's last products, and they drain
            // to L2 during the dK product. Run first, before dV, all eight went in one burst that
            // the dV product's ldmatrix queued behind (ncu: MIO throttle at LDSM twice
            // FlashAttention-2's, bench/NOTES.md, session 11); run last, they queued in front of
            // barrier 1 (session 5).
            float dq[kMTiles][kDqTiles][4];
            zero(dq);
            warp_mma<Element, kMTiles, kDqTiles, kBlockN, false, true>(
                dq, [&](int i, int s) { return advance_column_steps(dsa + row_bytes<PTile>(kMmaRows * i), s); },
                [&](int j, int s) { return advance_column_steps(k_kn, j) + row_bytes<KTile>(kMmaK * s); });
            using Accumulator = DqAccumulator<kHeadDim, T::kDqCols>;
#pragma unroll
            for (int i = 0; i < kMTiles; ++i) {
                float* const lane_values =
                    scratch.dq_accum +
                    Accumulator::slice(scratch.row(batch, head, p.q_heads, row0 + dq_row0 + kMmaRows * i), dq_col0) +
                    lane * Accumulator::kValuesPerLane;
#pragma unroll
                for (int t = 0; t < kDqTiles; ++t)
                    red_add_quad(lane_values + t * kWarpSize * Accumulator::kValuesPerLane, dq[i][t][0], dq[i][t][1],
                                 dq[i][t][2], dq[i][t][3]);
            }
        }
        warp_mma<Element, kMTiles, kDkvTiles, kBlockM, true, true>(
            dk_acc, [&](int i, int s) { return advance_column_steps(ds_address + pt_lane, i) + row_bytes<PTile>(kMmaK * s); },
            [&](int j, int s) { return advance_column_steps(q_tile + out_kn_lane, j) + row_bytes<QTile>(kMmaK * s); });
    }

    // dK = scale * dS^T Q and dV, staged through shared memory and stored 16 bytes a lane. Stored
    // straight from the accumulators, a lane's pairs of columns were 4-byte stores, each warp
    // instruction 8 rows x 16 bytes (8 half-used sectors), 64 a thread per CTA; staged, a warp
    // instruction writes 4 rows x 128 contiguous bytes and a thread issues 16. K's and V's tiles
    // take dK and dV: the barrier below is every warp past its last products (the dQ product
    // reads K), and each warp then reads back only its own keys x columns. Rows at keys >= Nk are
    // not stored; key_of(position) is the caller's key of a position (itself, or the sorted
    // order's). Deterministic mode keeps the direct stores: staged, ptxas spilled 56 bytes there
    // (5 spill loads a step at bf16 D = 128, none before).
    auto store_staged = [&](auto&& key_of) {
        __syncthreads();
#pragma unroll
        for (int i = 0; i < kMTiles; ++i)
#pragma unroll
            for (int h = 0; h < kRowHalves; ++h) {
                const int row = dkv_key0 + kMmaRows * i + kRowHalf * h + group;
#pragma unroll
                for (int t = 0; t < kDkvTiles; ++t) {
                    const int offset = KTile::offset(row, dkv_col0 + t * kMmaCols + kPairColumns * quad);
                    *reinterpret_cast<uint32_t*>(k_smem + offset) =
                        ElementTraits<Element>::pack(p.scale * dk_acc[i][t][2 * h], p.scale * dk_acc[i][t][2 * h + 1]);
                    *reinterpret_cast<uint32_t*>(v_smem + offset) =
                        ElementTraits<Element>::pack(dv_acc[i][t][2 * h], dv_acc[i][t][2 * h + 1]);
                }
            }
        __syncwarp();
        // Lane l: rows dkv_key0 + l / kLaneChunks + kSwizzleRows r, chunks l % kLaneChunks +
        // kLaneChunks j of the warp's columns.
        constexpr int kLaneChunks = kWarpSize / kSwizzleRows;
        constexpr int kRowSteps = T::kDkvRows / kSwizzleRows;
        constexpr int kChunkSteps = T::kDkvCols / kChunkElements / kLaneChunks;
        static_assert(T::kDkvRows % kSwizzleRows == 0 && (T::kDkvCols / kChunkElements) % kLaneChunks == 0,
                      "a warp's dK / dV tile is whole rows of whole lane chunks");
#pragma unroll
        for (int r = 0; r < kRowSteps; ++r) {
            const int row = dkv_key0 + lane / kLaneChunks + kSwizzleRows * r;
            const int32_t position = key0 + row;
            if (position >= p.nk) continue;
            const int32_t key = key_of(position);
            Element* const dk_row = mutable_element_at<Element>(p.dk, batch, key, kv_head);
            Element* const dv_row = mutable_element_at<Element>(p.dv, batch, key, kv_head);
#pragma unroll
            for (int j = 0; j < kChunkSteps; ++j) {
                const int col = dkv_col0 + (lane % kLaneChunks + kLaneChunks * j) * kChunkElements;
                const int offset = KTile::offset(row, col);
                const uint4 dk_chunk = *reinterpret_cast<const uint4*>(k_smem + offset);
                const uint4 dv_chunk = *reinterpret_cast<const uint4*>(v_smem + offset);
                store_global_16(dk_row + col, dk_chunk.x, dk_chunk.y, dk_chunk.z, dk_chunk.w);
                store_global_16(dv_row + col, dv_chunk.x, dv_chunk.y, dv_chunk.z, dv_chunk.w);
            }
        }
    };
    auto store_direct = [&](auto&& key_of) {
#pragma unroll
        for (int i = 0; i < kMTiles; ++i)
#pragma unroll
            for (int h = 0; h < kRowHalves; ++h) {
                const int32_t position = key0 + dkv_key0 + kMmaRows * i + kRowHalf * h + group;
                if (position >= p.nk) continue;
                const int32_t key = key_of(position);
                Element* const dk_row = mutable_element_at<Element>(p.dk, batch, key, kv_head);
                Element* const dv_row = mutable_element_at<Element>(p.dv, batch, key, kv_head);
#pragma unroll
                for (int t = 0; t < kDkvTiles; ++t) {
                    const int col = dkv_col0 + t * kMmaCols + kPairColumns * quad;
                    *reinterpret_cast<uint32_t*>(dk_row + col) =
                        ElementTraits<Element>::pack(p.scale * dk_acc[i][t][2 * h], p.scale * dk_acc[i][t][2 * h + 1]);
                    *reinterpret_cast<uint32_t*>(dv_row + col) =
                        ElementTraits<Element>::pack(dv_acc[i][t][2 * h], dv_acc[i][t][2 * h + 1]);
                }
            }
    };
    auto store = [&](auto&& key_of) {
        if constexpr (kAccumulateDq)
            store_staged(key_of);
        else
            store_direct(key_of);
    };
    // The split CTA of a part, from blockIdx again rather than kept across the main loop.
    if (kAccumulateDq && scratch.split.is_part(int32_t(blockIdx.x)) &&
        !sum_split_parts<kThreads>(scratch.split, scratch.split.split_index(int32_t(blockIdx.x)), dk_acc, dv_acc))
        return;
    if constexpr (!kSortedKeys) {
        store([](int32_t position) { return position; });
    } else {
        const int32_t* const keys = key_order.keys(batch, p.mask.mask_head(first_head));
        store([&](int32_t position) { return __ldg(keys + position); });
    }
}

// --- dQ, deterministic ---------------------------------------------------------------------------

template <typename Element, int kHeadDim>
struct DqSmem {
    using T = Dq<kHeadDim>;
    using QTile = SmemTile<T::kBlockM, kHeadDim>;  // Q and dO of the CTA's queries
    using KTile = SmemTile<T::kBlockN, kHeadDim>;  // K and V of one key block
    static constexpr int kStages = 2;              // K / V double-buffered
    static constexpr int kBytes = 2 * QTile::kBytes + 2 * kStages * KTile::kBytes +
                                  kStages * T::kBlockN * int(sizeof(ColumnIntervals));
};

// grid: B * Hq * query blocks * kColSplits CTAs, heaviest query blocks first (schedule:
// TileAxis::QueryBlocks, counted with this kernel's kBlockM x kBlockN tiles); block kThreads.
template <typename Element, int kHeadDim>
__global__ void __launch_bounds__(Dq<kHeadDim>::kThreads, 1)
backward_dq_kernel(const AttentionProblem p, const SummaryTable summaries, const TileSchedule schedule,
                   const BackwardScratch scratch) {
    using T = Dq<kHeadDim>;
    using Smem = DqSmem<Element, kHeadDim>;
    using QTile = typename Smem::QTile;
    using KTile = typename Smem::KTile;
    constexpr int kBlockM = T::kBlockM, kBlockN = T::kBlockN, kThreads = T::kThreads;
    constexpr int kKeyTiles = kBlockN / kMmaCols;
    constexpr int kOutTiles = T::kOutCols / kMmaCols;

    extern __shared__ __align__(128) unsigned char shared_memory[];
    Element* const q_smem = reinterpret_cast<Element*>(shared_memory);
    Element* const do_smem = q_smem + QTile::kElements;
    Element* const k_smem = do_smem + QTile::kElements;             // [kStages]
    Element* const v_smem = k_smem + Smem::kStages * KTile::kElements;  // [kStages]
    ColumnIntervals* const columns_smem = reinterpret_cast<ColumnIntervals*>(v_smem + Smem::kStages * KTile::kElements);

    const TileCoordinates tile = schedule.at(int32_t(blockIdx.x / T::kColSplits));
    const int32_t q_block = tile.block;
    const int32_t head = tile.head;
    const int32_t col_base = int32_t(blockIdx.x % T::kColSplits) * T::kOutCols;
    const int32_t batch = tile.batch;
    const int32_t kv_head = p.kv_head(head);
    const int32_t mask_head = p.mask.mask_head(head);
    const int32_t row0 = q_block * kBlockM;
    const int32_t row_end = clipped_end(row0, kBlockM, p.nq);
    const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
    const int group = lane / 4, quad = lane % 4;
    const int32_t key_blocks = ceil_div(p.nk, kBlockN);
    const float scale_log2 = p.scale * kLog2e;

    auto tile_kind = [&](int32_t key_block) {
        const TileKind kind = classify(summaries.at(p.mask, batch, head, key_block), row0, row_end);
        // key_block * kBlockN < Nk: no int32 overflow, unlike (key_block + 1) * kBlockN
        return kind == TileKind::Full && p.nk - key_block * kBlockN < kBlockN ? TileKind::Partial : kind;
    };
    // Moves key_block to the next non-skipped block (key_blocks when none), 32 candidates per
    // round (CandidateVotes), a round's later verdicts used first.
    CandidateVotes later;
    auto advance = [&](int32_t& key_block, TileKind& kind) {
        if (const int steps = later.take(kind)) {
            key_block += steps;
            return;
        }
        while (key_block + 1 < key_blocks) {
            const int32_t candidate = key_block + 1 + lane;
            later = CandidateVotes::vote(candidate < key_blocks ? tile_kind(candidate) : TileKind::Skipped);
            if (const int steps = later.take(kind)) {
                key_block += steps;
                return;
            }
            key_block += kWarpSize;
        }
        key_block = key_blocks;
    };
    auto load_key_block = [&](int stage, int32_t key_block, TileKind kind) {
        const int32_t key0 = key_block * kBlockN;
        load_tile_async<KTile, kThreads>(k_smem + stage * KTile::kElements, element_at<Element>(p.k, batch, key0, kv_head),
                                         p.k.stride[1], p.nk - key0);
        load_tile_async<KTile, kThreads>(v_smem + stage * KTile::kElements, element_at<Element>(p.v, batch, key0, kv_head),
                                         p.v.stride[1], p.nk - key0);
        if (kind == TileKind::Partial && threadIdx.x < kBlockN)
            columns_smem[stage * kBlockN + threadIdx.x] = key_intervals(p.mask, batch, mask_head, key0 + threadIdx.x);
    };

    // This thread's rows: group and group + 8 of the warp's 16.
    const int32_t warp_row0 = warp * kMmaRows;
    const int32_t my_row[2] = {row0 + warp_row0 + group, row0 + warp_row0 + group + 8};
    float my_lse_log2[2], my_di[2];
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const int64_t r = scratch.row(batch, head, p.q_heads, my_row[half]);
        my_lse_log2[half] = scratch.lse_log2[r];
        my_di[half] = scratch.di[r];
    }

    float dq[kOutTiles][4];
    zero(dq);

    // Per-lane ldmatrix addresses at step 0 (stepped with constants in the products).
    const uint32_t q_fragment = a_fragment_address<QTile>(q_smem, warp_row0, 0, lane);
    const uint32_t do_fragment = a_fragment_address<QTile>(do_smem, warp_row0, 0, lane);
    const uint32_t k_address = shared_address(k_smem), v_address = shared_address(v_smem);
    // Offsets from a K / V stage's start: B as [key][d] (S, dP) and as [key][col] (dQ).
    const uint32_t kv_nk_lane = b_fragment_address_nk<KTile>(k_smem, 0, 0, lane) - k_address;
    const uint32_t k_kn_lane = b_fragment_address_kn<KTile>(k_smem, 0, col_base, lane) - k_address;

    int32_t key_block = -1;
    TileKind kind = TileKind::Skipped;
    advance(key_block, kind);
    if (key_block < key_blocks) {
        load_tile_async<QTile, kThreads>(q_smem, element_at<Element>(p.q, batch, row0, head), p.q.stride[1], p.nq - row0);
        load_tile_async<QTile, kThreads>(do_smem, element_at<Element>(p.dout, batch, row0, head), p.dout.stride[1],
                                         p.nq - row0);
        load_key_block(0, key_block, kind);
        cp_async_commit();
    }
    // One barrier per iteration: after it this block's K / V (and column intervals) are visible, and the previous stage is free for the next block's loads.
    for (int stage = 0; key_block < key_blocks; stage ^= 1) {
        const TileKind this_kind = kind;
        cp_async_wait<0>();
        __syncthreads();
        advance(key_block, kind);
        if (key_block < key_blocks) {
            load_key_block(stage ^ 1, key_block, kind);
            cp_async_commit();
        }

        const uint32_t k_tile = k_address + stage * KTile::kBytes;
        const uint32_t v_tile = v_address + stage * KTile::kBytes;
        const ColumnIntervals* const columns = columns_smem + stage * kBlockN;

        // S = Q K^T, dP = dO V^T: the warp's 16 queries x kBlockN keys; dS = P * (dP - Di), packed, in ds.
        // Element e of tile t: row my_row[e / 2], key 8t + 2 quad + e % 2.
        uint32_t ds[kBlockN / 16][4];
        {
            // One m16 fragment of rows (the warp's 16 queries) against the block's keys.
            float s_rows[1][kKeyTiles][4], dp_rows[1][kKeyTiles][4];
            zero(s_rows);
            zero(dp_rows);
            warp_mma<Element, 1, kKeyTiles, kHeadDim, false, false>(
                s_rows, [&](int, int step) { return advance_column_steps(q_fragment, step); },
                [&](int j, int step) { return advance_column_steps(k_tile + kv_nk_lane + row_bytes<KTile>(kBFragmentCols * j), step); });
            warp_mma<Element, 1, kKeyTiles, kHeadDim, false, false>(
                dp_rows, [&](int, int step) { return advance_column_steps(do_fragment, step); },
                [&](int j, int step) { return advance_column_steps(v_tile + kv_nk_lane + row_bytes<KTile>(kBFragmentCols * j), step); });
            float (&s)[kKeyTiles][4] = s_rows[0];
            float (&dp)[kKeyTiles][4] = dp_rows[0];
            // One branch per tile, not per element, as in the dK/dV kernel: Full tiles run no mask
            // code; Partial tiles test each element's column (this thread's rows are fixed here,
            // its columns vary, so the intervals are read per element from shared memory).
            auto probabilities = [&](auto masked) {
#pragma unroll
                for (int t = 0; t < kKeyTiles; ++t) {
                    const int key = t * kMmaCols + 2 * quad;
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        float prob = exp2_approx(fmaf(s[t][e], scale_log2, -my_lse_log2[e / 2]));
                        if constexpr (decltype(masked)::value) {
                            if (columns[key + e % 2].masks(my_row[e / 2])) prob = 0.0f;
                        }
                        s[t][e] = prob;
                    }
                }
            };
            with_mask_test_if_partial(this_kind, probabilities);
            // P rounded to the dtype as in the dK/dV kernel, and dS formed by the same ds_pair(),
            // so that both kernels use one dS.
#pragma unroll
            for (int k = 0; k < kBlockN / 16; ++k) {
                uint32_t p_packed[4];
                accumulators_to_a<Element>(p_packed, s[2 * k], s[2 * k + 1]);
#pragma unroll
                for (int half = 0; half < 2; ++half) {  // left (tile 2k) and right (2k + 1) halves
                    const float (&d)[4] = dp[2 * k + half];
                    ds[k][2 * half] = ds_pair<Element>(p_packed[2 * half], d[0] - my_di[0], d[1] - my_di[0]);
                    ds[k][2 * half + 1] = ds_pair<Element>(p_packed[2 * half + 1], d[2] - my_di[1], d[3] - my_di[1]);
                }
            }
        }
        // dQ += dS K (scaled at the end).
        mma_a_regs_b_kn<Element, KTile, kOutTiles, kBlockN>(dq, ds, k_tile + k_kn_lane);
    }

#pragma unroll
    for (int half = 0; half < 2; ++half) {
        if (my_row[half] >= p.nq) continue;
        Element* const dq_row = mutable_element_at<Element>(p.dq, batch, my_row[half], head);
#pragma unroll
        for (int t = 0; t < kOutTiles; ++t) {
            const int col = col_base + t * kMmaCols + 2 * quad;
            *reinterpret_cast<uint32_t*>(dq_row + col) =
                ElementTraits<Element>::pack(p.scale * dq[t][2 * half], p.scale * dq[t][2 * half + 1]);
        }
    }
}

// --- dQ accumulator -> dQ, and zero gradients ----------------------------------------------------

constexpr int kElementwiseThreads = 256;

// backward_dq_convert_kernel's threads for `padded_rows` rows of the accumulator (B * Hq * padded_nq).
template <int kHeadDim>
__host__ __device__ constexpr int64_t dq_convert_threads(int64_t padded_rows) {
    static_assert(DqAccumulator<kHeadDim, DkDv<kHeadDim>::kDqCols>::kSliceRows == kMmaRows, "slices are m16 fragments");
    return padded_rows / kMmaRows * kRowHalf * (kHeadDim / kMmaCols);
}

// dQ = scale * accumulator, in the dtype, with dQ's strides. One thread per (16-row slice, row
// pair g and g + 8, n-tile of 8 columns): the n-tile's four lanes hold those two rows' 8 columns
// as four float4s side by side (DqAccumulator), which the thread reads whole (64 contiguous
// bytes, each read once) and writes as one 16-byte chunk per row. One thread per row chunk
// instead read four float2s 16 bytes apart, half of each sector it touched, the other half left
// to another warp (the kernel moved its 402 MB at 2.7 TB/s: bench/NOTES.md, session 11).
template <typename Element, int kHeadDim>
__global__ void __launch_bounds__(kElementwiseThreads)
backward_dq_convert_kernel(const AttentionProblem p, const BackwardScratch scratch) {
    using Accumulator = DqAccumulator<kHeadDim, DkDv<kHeadDim>::kDqCols>;
    constexpr int kNTiles = kHeadDim / kMmaCols;  // n-tiles of a row; an n-tile is one chunk
    static_assert(kMmaCols == kChunkElements, "a row's 8 columns of an n-tile are one 16-byte chunk of dQ");
    static_assert(Accumulator::kLanesPerRow * kPairColumns == kMmaCols, "four lanes' pairs make an n-tile's row");
    const int64_t item = int64_t(blockIdx.x) * kElementwiseThreads + threadIdx.x;
    if (item >= dq_convert_threads<kHeadDim>(int64_t(p.batch) * p.q_heads * scratch.padded_nq)) return;
    // n-tile fastest: a warp's writes run along two rows' columns.
    const int n_tile = int(item % kNTiles);
    const int g = int((item / kNTiles) % kRowHalf);
    const int64_t slice_row0 = (item / (kNTiles * kRowHalf)) * Accumulator::kSliceRows;  // a BackwardScratch::row()
    const int32_t r0 = int32_t(slice_row0 % scratch.padded_nq);
    const int32_t head = int32_t((slice_row0 / scratch.padded_nq) % p.q_heads);
    const int32_t batch = int32_t(slice_row0 / (int64_t(scratch.padded_nq) * p.q_heads));
    const int col = n_tile * kMmaCols;
    // Lane g * 4 + q holds rows g, g + 8 x columns col + 2q, +1 (within()'s value order: row g's
    // pair, then row g + 8's); lanes g * 4 .. g * 4 + 3 are consecutive.
    const float4* const quads = reinterpret_cast<const float4*>(
        scratch.dq_accum + Accumulator::slice(slice_row0, col) + Accumulator::within(g, col % DkDv<kHeadDim>::kDqCols));
    uint32_t upper[Accumulator::kLanesPerRow], lower[Accumulator::kLanesPerRow];  // rows g, g + 8
#pragma unroll
    for (int q = 0; q < Accumulator::kLanesPerRow; ++q) {
        const float4 v = quads[q];
        upper[q] = ElementTraits<Element>::pack(p.scale * v.x, p.scale * v.y);
        lower[q] = ElementTraits<Element>::pack(p.scale * v.z, p.scale * v.w);
    }
    if (r0 + g < p.nq)
        store_global_16(mutable_element_at<Element>(p.dq, batch, r0 + g, head) + col, upper[0], upper[1], upper[2], upper[3]);
    if (r0 + g + kRowHalf < p.nq)
        store_global_16(mutable_element_at<Element>(p.dq, batch, r0 + g + kRowHalf, head) + col, lower[0], lower[1],
                        lower[2], lower[3]);
}

// Zeros a strided [batches, rows, heads, kHeadDim] gradient (dK, dV with Nq = 0; dQ with Nk = 0).
template <typename Element, int kHeadDim>
__global__ void __launch_bounds__(kElementwiseThreads)
zero_gradient_kernel(Operand t, int32_t batches, int32_t rows, int32_t heads) {
    constexpr int kChunksPerRow = kHeadDim / kChunkElements;
    const int64_t chunks = int64_t(batches) * rows * heads * kChunksPerRow;
    const int64_t chunk = int64_t(blockIdx.x) * kElementwiseThreads + threadIdx.x;
    if (chunk >= chunks) return;
    const int col = int(chunk % kChunksPerRow) * kChunkElements;
    const int64_t row = chunk / kChunksPerRow;
    const int32_t head = int32_t(row % heads);
    const int32_t r = int32_t((row / heads) % rows);
    const int32_t batch = int32_t(row / (int64_t(heads) * rows));
    store_global_16(mutable_element_at<Element>(t, batch, r, head) + col, 0u, 0u, 0u, 0u);
}

}  // namespace flashmask::cuda::sm80
