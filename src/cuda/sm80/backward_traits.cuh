// Compile-time shape of the sm80 backward kernels, per head dim: one table, each constant with
// its reason. Everything else (sizes, strides, mask, scale, deterministic) is a runtime value.
//
// The backward is three kernels (backward_kernels.cuh):
//   preprocess  Di = rowsum(dO * O) and LSE * log2(e) into row-padded float32 scratch;
//   dK/dV       one CTA per (key block, KV head, batch), launched heaviest key blocks first
//               (tile_scheduler.cuh); loops over the query heads of its KV head's group (the
//               GQA sum stays inside the CTA) and their non-skipped query blocks; each product
//               of a step has its own 2-D tiling of the warps, with P and dS passed through
//               shared memory (below). Non-deterministic mode also forms dQ = dS K per step
//               there and adds it into a float32 accumulator (DqAccumulator's order) with
//               vector reductions;
//   dQ          deterministic mode only: one CTA per (query block, query head, batch[, half]),
//               heaviest query blocks first; warps own 16 queries, loops over the non-skipped
//               key blocks recomputing P, dP.
#pragma once

#include <cstdint>

#include "cuda/common/row_bits.cuh"
#include "cuda/sm80/smem_tile.cuh"

namespace flashmask::cuda::sm80 {

// The shape of mma.sync m16n8k16 (ptx.cuh) and of the fragments the kernels move.
constexpr int kMmaRows = 16;                 // m: the rows of one A fragment
constexpr int kMmaCols = 8;                  // n: one accumulator tile's columns
constexpr int kMmaK = 16;                    // k: one product's depth, the kernels' k-step
// The m16n8 accumulator layout (ptx.cuh): lane (group, quad) holds rows group and group + kRowHalf
// (kRowHalves of them), two adjacent columns 2 quad, +1 in each (kPairColumns: one packed pair).
constexpr int kRowHalf = kMmaRows / 2;
constexpr int kRowHalves = 2;
constexpr int kPairColumns = 2;
constexpr int kBFragmentCols = 2 * kMmaCols; // one ldmatrix.x4 of B: the fragments of two n-tiles
constexpr int kWarpTileRows = 2 * kMmaRows;  // every warp tile of the dK/dV kernel: two A fragments deep

constexpr bool is_power_of_two(int x) { return x > 0 && (x & (x - 1)) == 0; }

// Rows of the float32 scratch (LSE * log2 e, Di, the dQ accumulator) are padded to a multiple of
// this, so that every query block of either kernel reads whole 16-byte chunks without bounds
// checks; padded rows hold LSE = +inf (P = 0) and Di = 0. A multiple of every kBlockM below.
constexpr int kScratchRowAlignment = 128;

// The dK/dV kernel: one CTA per key block of kBlockN keys, a step of kBlockM queries at a time,
// with FlashAttention-2's arrangement: each of the three products of a step has its own 2-D
// tiling of the warps, and P and dS pass between them through shared memory.
//   S, dP (kBlockM x kBlockN): kSdpWarpsM warps along the queries x the rest along the keys;
//   dK, dV (kBlockN x D):     kDkvWarpsN warps along the keys x the rest along D;
//   dQ (kBlockM x D):         kDqWarpsM warps along the queries x the rest along D.
// Every warp tile is 32 rows (two m16 fragments) deep: a B fragment loaded from shared memory
// feeds two products, which is what the 1-D arrangement (a warp owning 16 keys of every
// product, P and dS kept in registers) lacked: per warp and step it loaded 184 ldmatrix.x4 for
// 320 mma at D = 128, this one 144 (ncu at 739aff4, bench/NOTES.md: ~40 more ldmatrix per warp
// and tile than FA2, whose backward ran 1.09x ours).
//
// D = 64 and 128: 8 warps, 64 queries x 128 keys a step. Registers per thread at D = 128: the
// dK + dV accumulators (32 keys x 64 columns each) 2 x 64 floats, S and dP of the warp's 32 x 32
// (2 x 32 floats, both live while the exponentials run) and P packed (16); ptxas (sm_90a, nvcc
// 13.0, at 7b93f74): 255 registers at D = 128, no spills in any variant (before the dP product
// moved ahead of the exponentials, session 20: 20 bytes for bf16 with the dQ reductions, 28 with
// sorted keys, 32-36 for float16, 60 for float16's deterministic sorted-key variant);
// 192-200 registers at D = 64, no spills. Shared memory at
// D = 128: K, V 2 x 32 KB + Q, dO double-buffered 4 x 16 KB + P, dS 2 x 16 KB + LSE / Di 1 KB +
// the keys' column intervals 2 KB = 163 KB, exactly sm_80's opt-in limit; at D = 64 exactly the
// 99 KB of sm_86 / sm_89 (both then passed by the kernel's static shared memory: DkDvSmem).
// D = 256: 64 keys a step, so that K, V (2 x 32 KB), Q, dO double-buffered (4 x 32 KB) and P,
// dS (2 x 8 KB) fit in 210 KB (sm_90 only); warp tiles 32 x 16 (S, dP), 32 keys x 64 columns
// (dK, dV: the same 128 accumulator floats as D = 128), 32 x 64 (dQ); 248-255 registers, no
// spills.
// Measured (H100, 8192, B 2, H 32, bf16, full mask): 299-301 TFLOP/s against the 1-D
// arrangement's 284-287 (bench/NOTES.md, session 5); 307 with the dQ product between dV and dK
// (session 12; FA2 309 in the same runs).
template <int kHeadDim> struct DkDvTraits {
    static constexpr int kWarps = 8;
    static constexpr int kBlockM = 64;
    static constexpr int kBlockN = kHeadDim <= 128 ? 128 : 64;
    static constexpr int kSdpWarpsM = 2;                          // S, dP: 2 x 4 warps
    static constexpr int kDkvWarpsN = kBlockN / kWarpTileRows;    // dK, dV: 32 keys per warp
    static constexpr int kDqWarpsM = 2;                           // dQ: 2 x 4 warps
    static constexpr int kColSplits = 1;                          // every output column in one CTA
};

// The deterministic dQ kernel.
template <int kHeadDim> struct DqTraits;

// 8 warps x 16 queries = 128 queries per CTA, 64 keys per step: S and dP are 16 x 64 per warp
// (2 * 32 floats), the dQ accumulator (D / 8) * 4 floats: 245 registers at D = 128 (sm_90a; the
// products through warp_mma(), whose second fragment buffer takes the rest), no spills. Shared
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
// 192 KB; the dQ columns split into halves of 128, one per CTA (64 accumulator floats).
template <> struct DqTraits<256> {
    static constexpr int kWarps = 4;
    static constexpr int kBlockN = 64;
    static constexpr int kColSplits = 2;
};

// What both kernels derive from their table entry.
template <typename Table, int kHeadDim> struct DerivedTraits : Table {
    static constexpr int kThreads = Table::kWarps * kWarpSize;
    static constexpr int kOutCols = kHeadDim / Table::kColSplits;  // output columns of one CTA
    static_assert(kOutCols % kBFragmentCols == 0, "output columns come in pairs of 8-column mma tiles");
};

template <int kHeadDim> struct DkDv : DerivedTraits<DkDvTraits<kHeadDim>, kHeadDim> {
    using Base = DerivedTraits<DkDvTraits<kHeadDim>, kHeadDim>;
    // Warp tiles of the three products (rows x columns).
    static constexpr int kSdpRows = Base::kBlockM / Base::kSdpWarpsM;
    static constexpr int kSdpCols = Base::kBlockN / (Base::kWarps / Base::kSdpWarpsM);
    static constexpr int kDkvRows = Base::kBlockN / Base::kDkvWarpsN;
    static constexpr int kDkvCols = kHeadDim / (Base::kWarps / Base::kDkvWarpsN);
    static constexpr int kDqRows = Base::kBlockM / Base::kDqWarpsM;
    static constexpr int kDqCols = kHeadDim / (Base::kWarps / Base::kDqWarpsM);
    static_assert(kSdpRows == kWarpTileRows && kDkvRows == kWarpTileRows && kDqRows == kWarpTileRows, "warp tiles are 32 rows deep");
    static_assert(kSdpCols % kBFragmentCols == 0 && kDkvCols % kBFragmentCols == 0 && kDqCols % kBFragmentCols == 0,
                  "warp tiles hold whole pairs of 8-column n-tiles (one ldmatrix.x4 of B each)");
    // The kernel steps swizzled addresses along a row with advance_column_steps() /
    // advance_chunks() (smem_tile.cuh), which need the steps' chunk bits clear in the base: every
    // warp tile starts at a multiple of its width (keys of P^T: kWarpTileRows), a power of two,
    // and steps only within that width (or by whole 64-column periods).
    static_assert(is_power_of_two(kSdpCols) && is_power_of_two(kDkvCols) && is_power_of_two(kDqCols) &&
                      is_power_of_two(kWarpTileRows),
                  "warp tile widths are powers of two");
    static_assert(kSdpRows <= kRowBitsWindow, "a warp's rows of a Partial tile are one 32-bit word (row_bits.cuh)");
    static_assert(kScratchRowAlignment % Base::kBlockM == 0, "query blocks tile the padded scratch rows");
    static_assert(Base::kBlockN <= Base::kThreads, "one thread per key refreshes the column intervals");
};

template <int kHeadDim> struct Dq : DerivedTraits<DqTraits<kHeadDim>, kHeadDim> {
    using Base = DerivedTraits<DqTraits<kHeadDim>, kHeadDim>;
    static constexpr int kBlockM = Base::kWarps * kMmaRows;  // each warp owns 16 queries
    static_assert(kScratchRowAlignment % kBlockM == 0, "query blocks tile the padded scratch rows");
    static_assert(Base::kBlockN % 16 == 0 && Base::kBlockN <= Base::kThreads, "one thread per key column");
};

}  // namespace flashmask::cuda::sm80
