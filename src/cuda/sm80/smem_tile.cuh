// A tile of kRows x kCols 16-bit values in shared memory, row-major, with the 16-byte chunks of
// each row XOR-swizzled by (row % 8). Without the swizzle the 8 row addresses of one ldmatrix
// phase (same column, 8 consecutive rows, rows a multiple of 128 bytes apart) would all hit the
// same 4 banks: an 8-way conflict. With it they cover all 32 banks. kCols must be a multiple of
// 64 (a row of at least 8 chunks), which every supported head dim is.
//
// Also here: the cooperative global -> shared loader (cp.async, zero-filling rows past the end)
// and the per-lane ldmatrix addresses for A and B fragments, so that the forward and backward
// kernels share one implementation of each.
#pragma once

#include <cstdint>

#include "cuda/common/warp.hpp"
#include "cuda/sm80/ptx.cuh"

namespace flashmask::cuda::sm80 {

constexpr int kChunkElements = 8;   // 16-bit values per 16-byte chunk
constexpr int kSwizzleRows = 8;     // the swizzle pattern repeats every 8 rows

template <int kRows, int kCols>
struct SmemTile {
    static_assert(kCols % (kChunkElements * kSwizzleRows) == 0, "rows must hold a multiple of 8 chunks");
    static constexpr int kRowsCount = kRows;
    static constexpr int kColsCount = kCols;
    static constexpr int kElements = kRows * kCols;
    static constexpr int kBytes = kElements * 2;
    static constexpr int kChunksPerRow = kCols / kChunkElements;

    // Element offset of (row, col); col's low 3 bits stay inside the chunk.
    static __device__ __forceinline__ int offset(int row, int col) {
        const int chunk = (col / kChunkElements) ^ (row % kSwizzleRows);
        return row * kCols + chunk * kChunkElements + col % kChunkElements;
    }
};

// Bytes spanned by `rows` rows of a tile: the step from a shared address to the same column
// `rows` rows further on, unchanged by the swizzle when rows % kSwizzleRows == 0.
template <typename Tile>
__device__ __forceinline__ constexpr uint32_t row_bytes(int rows) { return uint32_t(rows * (Tile::kBytes / Tile::kRowsCount)); }

// ldmatrix_x4 address of lane `lane` for the A fragment of the 16x16 block at (row0, col0):
// matrices (rows 0-7, cols 0-7), (rows 8-15, cols 0-7), (rows 0-7, cols 8-15), (rows 8-15, cols 8-15).
template <typename Tile, typename Element>
__device__ __forceinline__ uint32_t a_fragment_address(const Element* shared, int row0, int col0, int lane) {
    return shared_address(shared + Tile::offset(row0 + lane % 16, col0 + (lane / 16) * kChunkElements));
}

// ldmatrix_x4 address for the B fragments of two n-tiles (n0..n0+7, n0+8..n0+15) x k16 when the
// tile is stored [n][k] (e.g. K for S = Q K^T): r[0], r[1] = b of n-tile 0; r[2], r[3] = n-tile 1.
template <typename Tile, typename Element>
__device__ __forceinline__ uint32_t b_fragment_address_nk(const Element* shared, int n0, int k0, int lane) {
    return shared_address(shared + Tile::offset(n0 + lane % 8 + (lane / 16) * 8, k0 + ((lane / 8) % 2) * kChunkElements));
}

// ldmatrix_x4_trans address for the same two B fragments when the tile is stored [k][n]
// (e.g. V for O = P V): r[0], r[1] = b of n-tile 0; r[2], r[3] = n-tile 1.
template <typename Tile, typename Element>
__device__ __forceinline__ uint32_t b_fragment_address_kn(const Element* shared, int k0, int n0, int lane) {
    return shared_address(shared + Tile::offset(k0 + lane % 8 + ((lane / 8) % 2) * 8, n0 + (lane / 16) * kChunkElements));
}

// ldmatrix_x4_trans address for the A fragment of the 16x16 block at (row0, col0) of A when the
// tile stores A transposed, [col][row] (e.g. P^T for dV = P^T dO, from P kept as [query][key]).
template <typename Tile, typename Element>
__device__ __forceinline__ uint32_t a_fragment_address_transposed(const Element* shared, int row0, int col0, int lane) {
    // matrix i: rows (row0 + 8 * (i % 2)), cols (col0 + 8 * (i / 2)); stored as [col][row].
    const int matrix = lane / 8;
    return shared_address(shared + Tile::offset(col0 + (matrix / 2) * 8 + lane % 8, row0 + (matrix % 2) * kChunkElements));
}

// load_tile_async() with its per-thread work done once. When kThreads is a multiple of the
// chunks per row, a thread copies the same column chunk of rows first_row, first_row + kRowStep,
// ...; with kRowStep a multiple of the swizzle period that chunk sits at the same swizzled
// position in each of those rows, so the thread's shared offsets are one base plus constants and
// its global offsets one base plus multiples of kRowStep rows: a loop-carried kernel keeps two
// values instead of an address pair per copy (the forward keeps one for K and V). Same copies,
// same zero fill as load_tile_async()'s chunk-by-chunk path; load_tile_async() itself goes
// through it wherever kTileLoaderFits.
template <typename Tile, int kThreads>
struct TileLoader {
    static_assert(kThreads % Tile::kChunksPerRow == 0, "each thread copies one column chunk");
    static constexpr int kRowStep = kThreads / Tile::kChunksPerRow;
    static_assert(kRowStep % kSwizzleRows == 0, "the swizzled chunk repeats every kRowStep rows");
    static_assert(Tile::kRowsCount % kRowStep == 0, "every thread copies the same number of chunks");
    static constexpr int kCopies = Tile::kRowsCount / kRowStep;

    int first_row, col, shared_offset;  // of this thread; shared_offset in elements

    __device__ __forceinline__ explicit TileLoader(int thread)
        : first_row(thread / Tile::kChunksPerRow),
          col((thread % Tile::kChunksPerRow) * kChunkElements),
          shared_offset(Tile::offset(first_row, col)) {}

    // Rows [0, kRowsCount) of the row-major global tile at `global` (row r at global + r *
    // row_stride); rows >= valid_rows zero filled. Issues cp.async only: the caller commits.
    // kWholeTileBranch: a whole tile (every block but a ragged last one) takes a copy loop with
    // no per-copy bounds test or address select (~3 instructions a copy fewer; the backward's Q
    // and dO loads, 8 copies a tile); off where the second loop costs registers (the forward).
    template <bool kWholeTileBranch = false, typename Element>
    __device__ __forceinline__ void load_async(Element* shared, const Element* global, int64_t row_stride,
                                               int valid_rows) const {
        const uint32_t destination = shared_address(shared + shared_offset);
        const Element* source = global + first_row * row_stride + col;
        const int64_t step = int64_t(kRowStep) * row_stride;
        if (kWholeTileBranch && valid_rows >= Tile::kRowsCount) {
#pragma unroll
            for (int i = 0; i < kCopies; ++i) cp_async_16(destination + row_bytes<Tile>(i * kRowStep), source + i * step, true);
            return;
        }
#pragma unroll
        for (int i = 0; i < kCopies; ++i) {
            const bool valid = first_row + i * kRowStep < valid_rows;
            cp_async_16(destination + row_bytes<Tile>(i * kRowStep), valid ? source + i * step : global, valid);
        }
    }
};

// Whether TileLoader<Tile, kThreads> applies: its static_asserts, as a value.
template <typename Tile, int kThreads>
constexpr bool kTileLoaderFits = kThreads % Tile::kChunksPerRow == 0 &&
                                 (kThreads / Tile::kChunksPerRow) % kSwizzleRows == 0 &&
                                 Tile::kRowsCount % (kThreads / Tile::kChunksPerRow) == 0;

// Copies rows [0, kRows) x cols [0, kCols) of a row-major global tile (row r at
// global + r * row_stride) into `shared`, with kThreads threads; rows >= valid_rows are zero
// filled. Issues cp.async only: the caller commits and waits. Through TileLoader when the shapes
// allow it (its per-thread offsets are formed once), else chunk by chunk.
template <typename Tile, int kThreads, bool kWholeTileBranch = false, typename Element>
__device__ __forceinline__ void load_tile_async(Element* shared, const Element* global, int64_t row_stride,
                                                int valid_rows) {
    if constexpr (kTileLoaderFits<Tile, kThreads>) {
        TileLoader<Tile, kThreads>(int(threadIdx.x)).template load_async<kWholeTileBranch>(shared, global, row_stride, valid_rows);
    } else {
        constexpr int kChunks = Tile::kRowsCount * Tile::kChunksPerRow;
        static_assert(kChunks % kThreads == 0, "every thread copies the same number of chunks");
#pragma unroll
        for (int i = 0; i < kChunks / kThreads; ++i) {
            const unsigned chunk = unsigned(i * kThreads) + threadIdx.x;  // unsigned: no sign fix-ups
            const int row = int(chunk / Tile::kChunksPerRow);
            const int col = int(chunk % Tile::kChunksPerRow) * kChunkElements;
            const bool valid = row < valid_rows;
            const Element* source = valid ? global + row * row_stride + col : global;
            cp_async_16(shared_address(shared + Tile::offset(row, col)), source, valid);
        }
    }
}

// load_tile_async() with rows gathered: row r of the tile is row rows[r] of the global tensor
// (at global + rows[r] * row_stride); rows >= valid_rows zero filled and their index not read.
// For loads done once per CTA (the dK/dV kernel's K / V block in the sorted key order): the
// index read sits in front of every copy, which a loop over tiles would feel (bench/NOTES.md).
template <typename Tile, int kThreads, typename Element>
__device__ __forceinline__ void load_gathered_tile_async(Element* shared, const Element* global, int64_t row_stride,
                                                         const int32_t* rows, int valid_rows) {
    constexpr int kChunks = Tile::kRowsCount * Tile::kChunksPerRow;
    static_assert(kChunks % kThreads == 0, "every thread copies the same number of chunks");
#pragma unroll
    for (int i = 0; i < kChunks / kThreads; ++i) {
        const unsigned chunk = unsigned(i * kThreads) + threadIdx.x;
        const int row = int(chunk / Tile::kChunksPerRow);
        const int col = int(chunk % Tile::kChunksPerRow) * kChunkElements;
        const bool valid = row < valid_rows;
        const Element* source = valid ? global + rows[row] * row_stride + col : global;
        cp_async_16(shared_address(shared + Tile::offset(row, col)), source, valid);
    }
}

// The fragment addresses above, advanced by `step` whole 16-column steps (col0 + 16 * step)
// without recomputing the swizzle: with c = the lane's chunk within the 16 columns (0 or 1) and
// r = row % 8, the chunk of step s is (2s + c) ^ r == (2s) ^ (c ^ r), because 2s is even and
// c < 2. So from the step-0 address the step flips chunk bits 1-2 (an XOR of (2s mod 8) chunks)
// and adds whole swizzle periods of 8 chunks. A constant XOR and a constant add per step lets the
// compiler keep one base register per operand instead of one address register per fragment.
// Requires: `address0` from a *_fragment_address helper at a col0 that is a multiple of 64
// columns (128 bytes: whole swizzle periods, so col0 leaves chunk bits 0-2 alone), and the
// tile's shared address 128-byte aligned (a whole swizzle period).
constexpr int kSwizzleBytes = kSwizzleRows * kCopyBytes;  // 128: one swizzle period of 8 chunks

// The general form: a swizzled position at chunk c of its period (c = chunk % 8 before the
// swizzle) moved by `chunks` chunks along its row, when c and chunks % 8 share no bit (so
// (c + k) ^ r == (c ^ r) ^ k). kChunkUnits is a chunk in the position's units: kCopyBytes for
// shared addresses, kChunkElements for element offsets (Tile::offset()).
template <int kChunkUnits>
__device__ __forceinline__ constexpr uint32_t advance_chunks(uint32_t position0, int chunks) {
    return (position0 ^ uint32_t((chunks % kSwizzleRows) * kChunkUnits)) +
           uint32_t((chunks / kSwizzleRows) * kSwizzleRows * kChunkUnits);
}

__device__ __forceinline__ uint32_t advance_column_steps(uint32_t address0, int step) {
    return advance_chunks<kCopyBytes>(address0, 2 * step);  // 16 columns = 2 chunks
}

}  // namespace flashmask::cuda::sm80
