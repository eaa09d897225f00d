// Compile-time shape of the sm80 backward kernels, per head dim: one table, each constant with
// its reason. Everything else (sizes, strides, mask, scale, deterministic) is a runtime value.
//
// The backward is three kernels (backward_kernels.cuh):
//   preprocess  Di = rowsum(dO * O) and LSE * log2(e) into row-padded float32 scratch;
//   dK/dV       one CTA per (key block, KV head, batch[, output half]), launched heaviest key
//               blocks first (tile_scheduler.cuh); warps own 16 keys each and keep S^T, P^T,
//               dP^T, dS^T and their dK/dV rows in registers; loops over the query heads of its
//               KV head's group (the GQA sum stays inside the CTA) and their non-skipped query
//               blocks. Non-deterministic mode also forms dQ = dS K per tile there and adds it
//               into a float32 accumulator (DqAccumulator's order) with vector reductions;
//   dQ          deterministic mode only: one CTA per (query block, query head, batch[, half]),
//               heaviest query blocks first; warps own 16 queries, loops over the non-skipped
//               key blocks recomputing P, dP.
#pragma once

#include <cstdint>

#include "cuda/common/row_bits.cuh"
#include "cuda/sm80/smem_tile.cuh"

namespace flashmask::cuda::sm80 {

constexpr int kMmaRows = 16;  // one warp's rows of an m16n8k16 product: the unit every warp owns
constexpr int kMmaCols = 8;   // n of m16n8k16: one accumulator tile's columns

// Rows of the float32 scratch (LSE * log2 e, Di, the dQ accumulator) are padded to a multiple of
// this, so that every query block of either kernel reads whole 16-byte chunks without bounds
// checks; padded rows hold LSE = +inf (P = 0) and Di = 0. A multiple of every kBlockM below.
constexpr int kScratchRowAlignment = 128;

// The dK/dV kernel.
template <int kHeadDim> struct DkDvTraits;

// D = 64 and 128: 8 warps x 16 keys = 128 keys per CTA, 64 queries per step. Registers per
// thread: dK + dV accumulators 2 * (D / 8) * 4 floats (64 / 128), then S^T or dP^T (32 floats)
// and the packed P^T (16): -Xptxas -v (sm_90a, nvcc 13.0) reports 255 at D = 128 (bf16 / fp16:
// 24 / 24 bytes of spills with the dQ reductions, 4 / 4 in deterministic mode: loop-invariant
// values stored before the main loop and reloaded in it) and 222-226 at D = 64 (no spills), so
// one CTA of 256 threads per SM. Shared memory at D = 128: K, V 2 * 32 KB + Q, dO
// double-buffered 4 * 16 KB + dS^T double-buffered 2 * 16 KB + LSE / Di 1 KB + the keys' column
// intervals 2 KB = 163 KB: exactly the 163 KB of sm_80 (and within the 227 KB of sm_90); at
// D = 64 exactly the 99 KB of sm_86 / sm_89, where D = 128 is refused.
// Measured (H100, 8192, B 2, H 32, bf16): 4 warps x 2 CTAs per SM at D = 128 ran no faster.
template <> struct DkDvTraits<64> {
    static constexpr int kWarps = 8;
    static constexpr int kBlockM = 64;   // queries per step: S^T is 16 x 64 per warp (32 floats)
    static constexpr int kColSplits = 1;  // dK, dV, dQ columns handled by one CTA
};
template <> struct DkDvTraits<128> {
    static constexpr int kWarps = 8;
    static constexpr int kBlockM = 64;
    static constexpr int kColSplits = 1;
};
// D = 256: the accumulators of all 256 columns (2 * 128 floats) do not fit next to S^T and dP^T,
// so the output columns are split into halves of 128, one per CTA (adjacent CTAs of the 1-D
// grid: blockIdx.x % kColSplits); S^T and dP^T are recomputed in full by both halves. K and V of 128 keys x 256 would take 128 KB on their own,
// so 4 warps (64 keys): K, V 2 * 32 KB + Q, dO double-buffered 4 * 32 KB + dS^T 2 * 8 KB = 210 KB
// with LSE / Di and column intervals (sm_90 only; sm_80's 163 KB is refused). ptxas: 255
// registers, 16 bytes of spills (loop-invariant values reloaded in the main loop).
template <> struct DkDvTraits<256> {
    static constexpr int kWarps = 4;
    static constexpr int kBlockM = 64;
    static constexpr int kColSplits = 2;
};

// The deterministic dQ kernel.
template <int kHeadDim> struct DqTraits;

// 8 warps x 16 queries = 128 queries per CTA, 64 keys per step: S and dP are 16 x 64 per warp
// (2 * 32 floats), the dQ accumulator (D / 8) * 4 floats: 207 registers at D = 128 (sm_90a). Shared
// memory at D = 128: Q, dO 2 * 32 KB + K, V double-buffered 4 * 16 KB = 128 KB.
template <> struct DqTraits<64> {
    static constexpr int kWarps = 8;
    static constexpr int kBlockN = 64;
    static constexpr int kColSplits = 1;
};
template <> struct DqTraits<128> {
    static constexpr int kWarps = 8;
    static constexpr int kBlockN = 64;
    static constexpr int kColSplits = 1;
};
// D = 256: 4 warps (64 queries) keep Q, dO (2 * 32 KB) and double-buffered K, V (4 * 32 KB) in
// 192 KB; the dQ columns split into halves of 128 as in the dK/dV kernel (64 accumulator floats).
template <> struct DqTraits<256> {
    static constexpr int kWarps = 4;
    static constexpr int kBlockN = 64;
    static constexpr int kColSplits = 2;
};

// What both kernels derive from their table entry.
template <typename Table, int kHeadDim> struct DerivedTraits : Table {
    static constexpr int kThreads = Table::kWarps * kWarpSize;
    static constexpr int kOutCols = kHeadDim / Table::kColSplits;  // output columns of one CTA
    static_assert(kOutCols % 16 == 0, "output columns come in pairs of 8-column mma tiles");
};

template <int kHeadDim> struct DkDv : DerivedTraits<DkDvTraits<kHeadDim>, kHeadDim> {
    using Base = DerivedTraits<DkDvTraits<kHeadDim>, kHeadDim>;
    static constexpr int kBlockN = Base::kWarps * kMmaRows;  // each warp owns 16 keys
    // dQ of one tile (kBlockM x kOutCols) is split among the warps: kBlockM / 16 row slices,
    // the rest of the warps splitting the columns.
    static constexpr int kDqRowSlices = Base::kBlockM / kMmaRows;
    static constexpr int kDqColSlices = Base::kWarps / kDqRowSlices;
    static constexpr int kDqColsPerWarp = Base::kOutCols / kDqColSlices;
    static_assert(Base::kWarps % kDqRowSlices == 0 && kDqColsPerWarp % 16 == 0, "dQ split among warps");
    static_assert(kScratchRowAlignment % Base::kBlockM == 0, "query blocks tile the padded scratch rows");
    static_assert(Base::kBlockM % kRowBitsWindow == 0, "Partial tiles hold masked rows in whole 32-bit words (row_bits.cuh)");
};

template <int kHeadDim> struct Dq : DerivedTraits<DqTraits<kHeadDim>, kHeadDim> {
    using Base = DerivedTraits<DqTraits<kHeadDim>, kHeadDim>;
    static constexpr int kBlockM = Base::kWarps * kMmaRows;  // each warp owns 16 queries
    static_assert(kScratchRowAlignment % kBlockM == 0, "query blocks tile the padded scratch rows");
    static_assert(Base::kBlockN % 16 == 0 && Base::kBlockN <= Base::kThreads, "one thread per key column");
};

}  // namespace flashmask::cuda::sm80
