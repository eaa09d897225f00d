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

#include "cuda/sm80/ptx.cuh"

namespace flashmask::cuda::sm80 {

constexpr int kChunkElements = 8;   // 16-bit values per 16-byte chunk
constexpr int kSwizzleRows = 8;     // the swizzle pattern repeats every 8 rows
constexpr int kWarpSize = 32;

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

// Copies rows [0, kRows) x cols [0, kCols) of a row-major global tile (row r at
// global + r * row_stride) into `shared`, with kThreads threads; rows >= valid_rows are zero
// filled. Issues cp.async only: the caller commits and waits.
template <typename Tile, int kThreads, typename Element>
__device__ __forceinline__ void load_tile_async(Element* shared, const Element* global, int64_t row_stride,
                                                int valid_rows) {
    constexpr int kChunks = Tile::kRowsCount * Tile::kChunksPerRow;
    static_assert(kChunks % kThreads == 0, "every thread copies the same number of chunks");
#pragma unroll
    for (int i = 0; i < kChunks / kThreads; ++i) {
        const int chunk = i * kThreads + int(threadIdx.x);
        const int row = chunk / Tile::kChunksPerRow;
        const int col = (chunk % Tile::kChunksPerRow) * kChunkElements;
        const bool valid = row < valid_rows;
        const Element* source = valid ? global + row * row_stride + col : global;
        cp_async_16(shared_address(shared + Tile::offset(row, col)), source, valid);
    }
}

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
// tile stores A transposed, [col][row] (e.g. dS^T kept as [key][query] for dQ = dS K).
template <typename Tile, typename Element>
__device__ __forceinline__ uint32_t a_fragment_address_transposed(const Element* shared, int row0, int col0, int lane) {
    // matrix i: rows (row0 + 8 * (i % 2)), cols (col0 + 8 * (i / 2)); stored as [col][row].
    const int matrix = lane / 8;
    return shared_address(shared + Tile::offset(col0 + (matrix / 2) * 8 + lane % 8, row0 + (matrix % 2) * kChunkElements));
}

}  // namespace flashmask::cuda::sm80
