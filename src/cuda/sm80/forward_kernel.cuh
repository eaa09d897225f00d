// The portable (sm80+) forward kernel: FlashAttention-2 with FlashMask tile skipping.
//
// One CTA per (query block, query head, batch), the heaviest query blocks launched first: a
// per-call order (tile_scheduler.cuh) counted with this kernel's kBlockM x kBlockN tiles, which
// interleaves a few heads at a time for L2 locality. The CTA first classifies the key blocks of
// its query rows from their 32-byte block summaries (classify(), tiles.hpp), a chunk of kThreads
// blocks at a time, compacted into a shared-memory list; only the blocks left in that list are
// loaded. For each of them, in FlashAttention-2 order:
//
//     wait K(n) | issue V(n) | S = Q K^T | wait V(n) | issue K(next) | mask, softmax | O += P V
//
// so the load of V overlaps Q K^T and the load of the next K overlaps softmax and P V.
// Full tiles run without any mask arithmetic. A Partial tile is classified again per warp, on
// the warp's own rows (WarpKinds): a warp that sees all of it runs the unmasked path, one that
// sees none of it skips both products; a tile that no warp sees is not loaded. For a tile
// Partial to any warp, one thread per column reads the column's canonical intervals
// (column_intervals(), tiles.hpp) and turns them into one 32-bit word of masked rows per warp
// in shared memory; each S element then costs one bit test.
// The last key block, when Nk % kBlockN != 0, is always partial: its columns >= Nk are masked.
//
// Warp w owns query rows [w * kWarpRows, (w + 1) * kWarpRows) of the block for both products,
// so S, P and O stay in registers (mma C fragments of S are A fragments of P V, ptx.cuh).
//
// A full mask's grid of equal CTAs that ends in a part-filled wave has its last CTAs split over
// the key blocks (TailSplit, tail_split.hpp): each part runs the loop over its share, and the last
// part to finish merges the parts' O, maxima and sums before the epilogue (merge_split_parts()).
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <limits>

#include "cuda/common/check.hpp"
#include "cuda/common/key_order.cuh"
#include "cuda/common/row_bits.cuh"
#include "cuda/common/shared_memory.hpp"
#include "cuda/common/tile_scheduler.cuh"
#include "cuda/common/warp.hpp"
#include "cuda/common/workspace.cuh"
#include "cuda/sm80/forward_traits.hpp"
#include "cuda/sm80/kernel_operand.cuh"
#include "cuda/sm80/ptx.cuh"
#include "cuda/sm80/smem_tile.cuh"
#include "cuda/sm80/tail_split.hpp"
#include "flashmask/problem.hpp"
#include "flashmask/tiles.hpp"

namespace flashmask::cuda::sm80 {
namespace forward_detail {

// A key block in the CTA's compacted list: its index and whether any warp's rows of it are
// Partial (then the CTA builds the masked-row bits of the tile).
struct BlockEntry {
    static __device__ __forceinline__ int32_t encode(int32_t kv_block, bool partial) { return kv_block * 2 + partial; }
    static __device__ __forceinline__ int32_t kv_block(int32_t entry) { return entry >> 1; }
    static __device__ __forceinline__ bool partial(int32_t entry) { return entry & 1; }
    static constexpr int32_t kNone = -1;  // the list is exhausted
};

// Beside each entry, the kind of every warp's own rows of the tile (kWarpRows x kBlockN), a
// TileKind in 2 bits per warp. A tile that is Partial for the CTA is often Full or Skipped for
// some of its warps (a document boundary or a diagonal crosses only part of its 128 rows): such
// a warp runs the unmasked path, or no product at all, for that tile.
struct WarpKinds {
    static constexpr int kBits = 2;
    static constexpr uint32_t kField = (1u << kBits) - 1u;
    static __device__ __forceinline__ uint32_t with(uint32_t kinds, int warp, TileKind kind) {
        return kinds | (uint32_t(kind) << (kBits * warp));
    }
    static __device__ __forceinline__ TileKind of(uint32_t kinds, int warp) {
        return TileKind((kinds >> (kBits * warp)) & kField);
    }
};

template <typename Element, int kHeadDim>
struct SharedStorage {
    using Traits = ForwardTraits<kHeadDim>;
    using QTile = SmemTile<Traits::kBlockM, kHeadDim>;
    using KVTile = SmemTile<Traits::kBlockN, kHeadDim>;

    Element q[QTile::kElements];     // also the staging buffer of O in the epilogue (each warp its own rows)
    Element k[KVTile::kElements];
    Element v[KVTile::kElements];
    // Partial tiles: bit r of masked_rows[w][j] says whether row r of warp w's rows is masked in
    // column j of the tile (from column_intervals(); every row for columns >= Nk).
    uint32_t masked_rows[Traits::kWarps][Traits::kBlockN];
    int32_t block_list[Traits::kThreads];    // BlockEntry values of the current chunk
    uint32_t warp_kinds[Traits::kThreads];   // WarpKinds of each block_list entry
    int32_t warp_counts[Traits::kWarps];     // non-skipped blocks per warp while compacting a chunk
    int32_t key_end;                         // the end of this CTA's key blocks (a part's share: TailSplit)
    int32_t last_part;                       // a split CTA's part: whether it arrived last

    // advance_column_steps() (smem_tile.cuh) needs q, k and v each at a whole swizzle period.
    static_assert(QTile::kBytes % kSwizzleBytes == 0 && KVTile::kBytes % kSwizzleBytes == 0, "tiles 128-byte aligned");
    static_assert(Traits::kWarps * WarpKinds::kBits <= 32, "every warp's kind fits one word");
};

__device__ __forceinline__ float quad_max(float x) {
    x = fmaxf(x, __shfl_xor_sync(kFullWarpMask, x, 1));
    return fmaxf(x, __shfl_xor_sync(kFullWarpMask, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
    x += __shfl_xor_sync(kFullWarpMask, x, 1);
    return x + __shfl_xor_sync(kFullWarpMask, x, 2);
}

// Where a part of a split CTA (TailSplit) keeps its results: per thread, its O fragment values
// (kMTiles x kDTiles float4s), then its rows' maxima and its own share of their sums (kMTiles x 2
// rows each, one float4), value-major so that a warp's 16-byte accesses cover 512 contiguous bytes.
template <int kThreads, int kMTiles, int kDTiles>
struct ForwardSplitLayout {
    static constexpr int kOValues = kMTiles * kDTiles;  // float4s of O per thread
    static constexpr int kMaxima = kOValues, kSums = kOValues + 1;
    static constexpr int kValues = kOValues + 2;
    static constexpr int64_t kFloatsPerPart = int64_t(kValues) * kThreads * 4;
    static_assert(kMTiles * 2 <= 4, "a thread's row maxima (and sums) fit one float4");

    static __device__ __forceinline__ float4* at(const TailSplit& split, int32_t split_cta, int32_t part, int value) {
        return reinterpret_cast<float4*>(split.sums + (int64_t(split_cta) * split.parts + part) * kFloatsPerPart) +
               value * kThreads + threadIdx.x;
    }
};

// A part of a split CTA after its key blocks: stores its unnormalised O, row maxima and this
// thread's partial row sums, and counts its arrival. Returns true in the part that arrives last,
// with every part's results merged into o, row_max and row_sum as one pass over all the keys
// would have left them (up to the order of the sums). The merge reads every part, its own
// included, in part order, so that the result does not depend on which part came last.
// Called by every thread; `last_part` is a shared-memory word.
template <int kThreads, int kMTiles, int kDTiles>
__device__ __forceinline__ bool merge_split_parts(const TailSplit& split, int32_t cta, float scale_log2,
                                                  float (&o)[kMTiles][kDTiles][4], float (&row_max)[kMTiles][2],
                                                  float (&row_sum)[kMTiles][2], int32_t& last_part) {
    using Layout = ForwardSplitLayout<kThreads, kMTiles, kDTiles>;
    constexpr float kNegInf = -std::numeric_limits<float>::infinity();
    const int32_t split_cta = split.split_index(cta), own = split.part(cta);
    float maxima[4] = {kNegInf, kNegInf, kNegInf, kNegInf}, sums[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
        for (int dt = 0; dt < kDTiles; ++dt)
            *Layout::at(split, split_cta, own, mt * kDTiles + dt) =
                make_float4(o[mt][dt][0], o[mt][dt][1], o[mt][dt][2], o[mt][dt][3]);
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            maxima[2 * mt + half] = row_max[mt][half];
            sums[2 * mt + half] = row_sum[mt][half];
        }
    }
    *Layout::at(split, split_cta, own, Layout::kMaxima) = make_float4(maxima[0], maxima[1], maxima[2], maxima[3]);
    *Layout::at(split, split_cta, own, Layout::kSums) = make_float4(sums[0], sums[1], sums[2], sums[3]);
    if (!arrive_last_part(split, split_cta, last_part)) return false;

    for (int32_t part = 0; part < split.parts; ++part) {
        const float4 m4 = __ldcg(Layout::at(split, split_cta, part, Layout::kMaxima));
        const float4 l4 = __ldcg(Layout::at(split, split_cta, part, Layout::kSums));
        const float part_max[4] = {m4.x, m4.y, m4.z, m4.w}, part_sum[4] = {l4.x, l4.y, l4.z, l4.w};
        // Rescale the merged rows and this part's to their common maximum; a maximum of -inf (no
        // key seen yet) weighs 0, never exp2(-inf + inf).
        float merged_weight[kMTiles][2], part_weight[kMTiles][2];
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                const int r = 2 * mt + half;
                const float merged = part == 0 ? kNegInf : row_max[mt][half];
                const float new_max = fmaxf(merged, part_max[r]);
                merged_weight[mt][half] = merged == kNegInf ? 0.0f : exp2_approx((merged - new_max) * scale_log2);
                part_weight[mt][half] = part_max[r] == kNegInf ? 0.0f : exp2_approx((part_max[r] - new_max) * scale_log2);
                row_max[mt][half] = new_max;
                row_sum[mt][half] = (part == 0 ? 0.0f : row_sum[mt][half] * merged_weight[mt][half]) +
                                    part_sum[r] * part_weight[mt][half];
            }
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
            for (int dt = 0; dt < kDTiles; ++dt) {
                const float4 x = __ldcg(Layout::at(split, split_cta, part, mt * kDTiles + dt));
                const float values[4] = {x.x, x.y, x.z, x.w};
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const float merged = part == 0 ? 0.0f : o[mt][dt][e] * merged_weight[mt][e / 2];
                    o[mt][dt][e] = merged + values[e] * part_weight[mt][e / 2];
                }
            }
    }
    return true;
}

// kSplitTail: whether the grid's last CTAs may be parts of a split CTA (TailSplit). Only a launch
// with a split plan instantiates it, so that every other launch (each mask with an index tensor)
// runs code that the split's per-CTA key range and merge do not touch: inlined into the one
// kernel, they cost the masked forwards ~1 % (bench/NOTES.md, session 22).
template <typename Element, int kHeadDim, bool kSplitTail>
__global__ void __launch_bounds__(ForwardTraits<kHeadDim>::kThreads, ForwardTraits<kHeadDim>::kMinBlocksPerSM)
forward_kernel(const AttentionProblem p, const SummaryTable table, const TileSchedule schedule,
               const LaunchCondition condition, const TailSplit split) {
    using Traits = ForwardTraits<kHeadDim>;
    using Storage = SharedStorage<Element, kHeadDim>;
    using QTile = typename Storage::QTile;
    using KVTile = typename Storage::KVTile;
    constexpr int kThreads = Traits::kThreads, kWarps = Traits::kWarps;
    constexpr int kBlockM = Traits::kBlockM, kBlockN = Traits::kBlockN;
    constexpr int kMTiles = Traits::kMTiles, kNTiles = Traits::kNTiles, kDTiles = Traits::kDTiles;
    constexpr float kNegInf = -std::numeric_limits<float>::infinity();

    extern __shared__ __align__(kSwizzleBytes) unsigned char shared_raw[];  // advance_column_steps() needs 128-byte tiles
    Storage& smem = *reinterpret_cast<Storage*>(shared_raw);
    if (!condition.holds()) return;  // the launch of the key order the device did not choose

    const int thread = int(threadIdx.x), warp = thread / kWarpSize, lane = thread % kWarpSize;
    const int group = lane / 4, quad = lane % 4;  // mma fragment coordinates (ptx.cuh)

    // Heaviest query blocks first, interleaved over a section of a few heads whose K/V the CTAs
    // running together share in L2 (tile_order.hpp).
    // A part of a split CTA (TailSplit: the grid's last wave of a full mask) runs the schedule
    // position of the CTA it splits, over its share of the key blocks.
    const bool is_part = kSplitTail && split.is_part(int32_t(blockIdx.x));
    const TileCoordinates tile =
        schedule.at(kSplitTail ? split.schedule_position(int32_t(blockIdx.x)) : int32_t(blockIdx.x));
    const int32_t q_block = tile.block, head = tile.head, batch = tile.batch;
    // Read in place from the kernel's parameter space: a local copy would hold 15 more registers.
    const MaskView& mask = p.mask;
    const int32_t nq = p.nq, nk = p.nk;
    const int32_t kv_head = p.kv_head(head), mask_head = mask.mask_head(head);
    const int32_t row_begin = q_block * kBlockM;
    const int32_t row_end = clipped_end(row_begin, kBlockM, nq);
    const int warp_row = warp * Traits::kWarpRows;  // first row of this warp inside the block

    const Element* q = static_cast<const Element*>(p.q.data) + batch * p.q.stride[0] + row_begin * p.q.stride[1] +
                       head * p.q.stride[2];
    const Element* k = static_cast<const Element*>(p.k.data) + batch * p.k.stride[0] + kv_head * p.k.stride[2];
    const Element* v = static_cast<const Element*>(p.v.data) + batch * p.v.stride[0] + kv_head * p.v.stride[2];

    load_tile_async<QTile, kThreads>(smem.q, q, p.q.stride[1], row_end - row_begin);
    cp_async_commit();

    // --- which key blocks to visit ------------------------------------------------------------
    const int32_t kv_blocks = table.blocks;
    // This CTA's key blocks: all, or a part's share. A part's end is read from shared memory where
    // a chunk is classified: held in a register across the key loop it cost ptxas 12 bytes of spills.
    const PartTiles key_range =
        is_part ? part_tiles(kv_blocks, split.part(int32_t(blockIdx.x)), split.parts) : PartTiles{0, kv_blocks};
    if constexpr (kSplitTail) {
        if (thread == 0) smem.key_end = key_range.end;
        __syncthreads();
    }
    auto key_end = [&]() -> int32_t {
        if constexpr (kSplitTail) return smem.key_end;
        return kv_blocks;
    };
    const bool ragged_last_block = nk % kBlockN != 0;  // its columns >= Nk must be masked
    // Classifies blocks [first, first + kThreads) below key_end() and compacts those that some
    // warp sees (a tile Partial for the CTA may be Skipped for every warp: it is not loaded) into
    // smem.block_list (and their warps' kinds into smem.warp_kinds) in key order. Returns their
    // count (the same in every thread).
    auto classify_chunk = [&](int32_t first) -> int32_t {
        const int32_t kv_block = first + thread;
        TileKind kind = TileKind::Skipped;
        uint32_t warp_kinds = 0;
        bool any_partial = false, any_seen = false;
        if (kv_block < key_end()) {
            const BlockSummary summary = table.at(mask, batch, head, kv_block);
            const bool ragged = ragged_last_block && kv_block == kv_blocks - 1;
            kind = classify(summary, row_begin, row_end);
            if (kind == TileKind::Full && ragged) kind = TileKind::Partial;
#pragma unroll
            for (int w = 0; w < kWarps; ++w) {
                TileKind warp_kind = kind;
                if (kind == TileKind::Partial) {  // rows past Nq are Skipped: nothing of theirs is stored
                    const int32_t warp_begin = row_begin + w * Traits::kWarpRows;
                    warp_kind = classify(summary, warp_begin, clipped_end(warp_begin, Traits::kWarpRows, row_end));
                    if (warp_kind == TileKind::Full && ragged) warp_kind = TileKind::Partial;
                }
                any_partial = any_partial || warp_kind == TileKind::Partial;
                any_seen = any_seen || warp_kind != TileKind::Skipped;
                warp_kinds = WarpKinds::with(warp_kinds, w, warp_kind);
            }
        }
        const bool keep = any_seen;  // false for a Skipped tile: its warps' kinds are all Skipped
        const unsigned ballot = __ballot_sync(kFullWarpMask, keep);
        if (lane == 0) smem.warp_counts[warp] = __popc(ballot);
        __syncthreads();
        int32_t offset = 0, total = 0;
#pragma unroll
        for (int w = 0; w < kWarps; ++w) {
            const int32_t count = smem.warp_counts[w];
            offset += w < warp ? count : 0;
            total += count;
        }
        if (keep) {
            const int32_t slot = offset + __popc(ballot & ((1u << lane) - 1u));
            smem.block_list[slot] = BlockEntry::encode(kv_block, any_partial);
            smem.warp_kinds[slot] = warp_kinds;
        }
        __syncthreads();
        return total;
    };
    int32_t next_chunk = key_range.begin, chunk_count = 0, position = 0;
    // The entry at `position` of the list and this warp's kind of it, refilling the list from
    // the next non-empty chunk when it is used up; kNone at the end. The entry is uniform across
    // the CTA, warp_kind only across the warp.
    auto next_entry = [&](TileKind& warp_kind) -> int32_t {
        if (position == chunk_count) {
            chunk_count = 0;
            position = 0;
            while (chunk_count == 0 && next_chunk < key_end()) {
                chunk_count = classify_chunk(next_chunk);
                next_chunk += kThreads;
            }
            if (chunk_count == 0) return BlockEntry::kNone;
        }
        warp_kind = WarpKinds::of(smem.warp_kinds[position], warp);
        return smem.block_list[position];
    };

    const TileLoader<KVTile, kThreads> kv_loader(thread);  // the same per-thread offsets for K and V
    auto load_kv_async = [&](Element* shared, const Element* head_base, int64_t row_stride, int32_t kv_block) {
        const int64_t first_key = int64_t(kv_block) * kBlockN;
        const int valid_rows = int(min(int64_t(kBlockN), int64_t(nk) - first_key));
        kv_loader.load_async(shared, head_base + first_key * row_stride, row_stride, valid_rows);
        cp_async_commit();
    };

    TileKind warp_kind = TileKind::Skipped;
    int32_t entry = next_entry(warp_kind);
    if (entry != BlockEntry::kNone) load_kv_async(smem.k, k, p.k.stride[1], BlockEntry::kv_block(entry));

    // --- the key loop -------------------------------------------------------------------------
    float o[kMTiles][kDTiles][4];
    float row_max[kMTiles][2], row_sum[kMTiles][2];  // per row: [mt][0] row group, [mt][1] row group + 8
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
        for (int dt = 0; dt < kDTiles; ++dt)
#pragma unroll
            for (int e = 0; e < 4; ++e) o[mt][dt][e] = 0.0f;
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            row_max[mt][half] = kNegInf;
            row_sum[mt][half] = 0.0f;
        }
    }
    const float scale_log2 = p.scale * kLog2e;

    // Per-lane ldmatrix addresses at column 0; every other fragment is a constant step away.
    const uint32_t q_fragments = a_fragment_address<QTile>(smem.q, warp_row, 0, lane);
    const uint32_t k_fragments = b_fragment_address_nk<KVTile>(smem.k, 0, 0, lane);
    const uint32_t v_fragments = b_fragment_address_kn<KVTile>(smem.v, 0, 0, lane);
    constexpr uint32_t k16RowsQ = row_bytes<QTile>(16);  // from one m16 tile's fragments to the next
    constexpr uint32_t k16RowsKV = row_bytes<KVTile>(16);

    while (entry != BlockEntry::kNone) {
        const int32_t kv_block = BlockEntry::kv_block(entry);
        const bool partial = BlockEntry::partial(entry);

        cp_async_wait<0>();  // K(n) (and Q on the first pass)
        __syncthreads();     // ... visible to all; every warp is done with V(n-1)
        load_kv_async(smem.v, v, p.v.stride[1], kv_block);

        // A Partial tile's column bounds: loaded here, turned into masked-row bits after S, so that
        // the loads' latency passes under the product instead of stalling the threads below
        // kBlockN before it (a Partial tile cost ~1.25x a Full one at 8K: bench/NOTES.md, session 9).
        const int64_t column = int64_t(kv_block) * kBlockN + thread;
        const bool builds_bits = partial && thread < kBlockN;
        ColumnSlots slots{};
        if (builds_bits && column < nk) slots = load_column_slots(mask, batch, mask_head, int32_t(column));

        // S = Q K^T, by the warps that see any of the tile (warp_kind is warp-uniform). A warp
        // whose rows see none of it leaves its row maxima, sums and O as they are: exactly what
        // the tile's exp2(-inf) = 0 would have given.
        float s[kMTiles][kNTiles][4];
        const bool computes = warp_kind != TileKind::Skipped;
        if (computes) {
#pragma unroll
            for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
                for (int nt = 0; nt < kNTiles; ++nt)
#pragma unroll
                    for (int e = 0; e < 4; ++e) s[mt][nt][e] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < kHeadDim / 16; ++kk) {
                const uint32_t q_step = advance_column_steps(q_fragments, kk);
                const uint32_t k_step = advance_column_steps(k_fragments, kk);
                uint32_t a[kMTiles][4];
#pragma unroll
                for (int mt = 0; mt < kMTiles; ++mt) ldmatrix_x4(a[mt], q_step + mt * k16RowsQ);
#pragma unroll
                for (int np = 0; np < kNTiles / 2; ++np) {
                    uint32_t b[4];
                    ldmatrix_x4(b, k_step + np * k16RowsKV);
                    const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
#pragma unroll
                    for (int mt = 0; mt < kMTiles; ++mt) {
                        mma_16816<Element>(s[mt][2 * np], a[mt], b0);
                        mma_16816<Element>(s[mt][2 * np + 1], a[mt], b1);
                    }
                }
            }
        }

        if (builds_bits) {
            // Published by the barrier below; the previous tile's readers passed the one above.
            ColumnIntervals c{0, nq, 0, nq};  // columns past Nk: every row masked
            if (column < nk) c = canonical_intervals(mask, slots, int32_t(column));
#pragma unroll
            for (int w = 0; w < kWarps; ++w) {
                const int32_t first_row = row_begin + w * Traits::kWarpRows;  // bounds are in [0, Nq]: no overflow
                smem.masked_rows[w][thread] = masked_row_bits(c, first_row);
            }
        }

        cp_async_wait<0>();  // V(n)
        __syncthreads();     // ... visible to all, the masked-row bits too; every warp is done with K(n)
        ++position;
        TileKind next_warp_kind = TileKind::Skipped;
        const int32_t next = next_entry(next_warp_kind);
        if (next != BlockEntry::kNone) load_kv_async(smem.k, k, p.k.stride[1], BlockEntry::kv_block(next));

        // Partial rows: -inf where the column masks the row. This thread's rows are bits
        // group + 8 * half + 16 * mt of its warp's word: one shift per column, one test per element.
        if (warp_kind == TileKind::Partial) {
#pragma unroll
            for (int nt = 0; nt < kNTiles; ++nt)
#pragma unroll
                for (int pair = 0; pair < 2; ++pair) {
                    const uint32_t bits = smem.masked_rows[warp][nt * 8 + 2 * quad + pair] >> group;
#pragma unroll
                    for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
                        for (int half = 0; half < 2; ++half)
                            if (bits & (1u << (16 * mt + 8 * half))) s[mt][nt][2 * half + pair] = kNegInf;
                }
        }

        // Online softmax in float32. A row whose maximum is still -inf (nothing visible yet)
        // uses 0 as its base, so exp2 gives 0 for every masked element, never NaN.
        if (computes) {
#pragma unroll
            for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
                for (int half = 0; half < 2; ++half) {
                    float tile_max = kNegInf;
#pragma unroll
                    for (int nt = 0; nt < kNTiles; ++nt)
                        tile_max = fmaxf(tile_max, fmaxf(s[mt][nt][2 * half], s[mt][nt][2 * half + 1]));
                    const float new_max = fmaxf(row_max[mt][half], quad_max(tile_max));
                    const float base = new_max == kNegInf ? 0.0f : new_max * scale_log2;
                    const float correction = exp2_approx(row_max[mt][half] * scale_log2 - base);
                    row_max[mt][half] = new_max;
                    float sum = 0.0f;
#pragma unroll
                    for (int nt = 0; nt < kNTiles; ++nt)
#pragma unroll
                        for (int pair = 0; pair < 2; ++pair) {
                            float& x = s[mt][nt][2 * half + pair];
                            x = exp2_approx(fmaf(x, scale_log2, -base));
                            sum += x;
                        }
                    row_sum[mt][half] = row_sum[mt][half] * correction + sum;
#pragma unroll
                    for (int dt = 0; dt < kDTiles; ++dt) {
                        o[mt][dt][2 * half] *= correction;
                        o[mt][dt][2 * half + 1] *= correction;
                    }
                }

            // All of P packed to 16 bits before the P V products, so that S's floats die before
            // the first of them: the products then hold O and kMTiles x kNTiles x 2 packed
            // registers, half of S. Packed inside the products (through session 28), D = 128's
            // full-mask loop spilled the row maxima and sums: 23 local accesses a step, 6 now.
            uint32_t p16[kMTiles][kNTiles][2];
#pragma unroll
            for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
                for (int nt = 0; nt < kNTiles; ++nt) {
                    p16[mt][nt][0] = ElementTraits<Element>::pack(s[mt][nt][0], s[mt][nt][1]);
                    p16[mt][nt][1] = ElementTraits<Element>::pack(s[mt][nt][2], s[mt][nt][3]);
                }
            // O += P V: S's C fragments of n-tiles 2kk, 2kk+1 are P's A fragment for keys 16kk..16kk+15.
#pragma unroll
            for (int kk = 0; kk < kBlockN / 16; ++kk) {
                uint32_t a[kMTiles][4];
#pragma unroll
                for (int mt = 0; mt < kMTiles; ++mt) {
                    a[mt][0] = p16[mt][2 * kk][0];
                    a[mt][1] = p16[mt][2 * kk][1];
                    a[mt][2] = p16[mt][2 * kk + 1][0];
                    a[mt][3] = p16[mt][2 * kk + 1][1];
                }
#pragma unroll
                for (int dp = 0; dp < kDTiles / 2; ++dp) {
                    uint32_t b[4];
                    ldmatrix_x4_trans(b, advance_column_steps(v_fragments, dp) + kk * k16RowsKV);
                    const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
#pragma unroll
                    for (int mt = 0; mt < kMTiles; ++mt) {
                        mma_16816<Element>(o[mt][2 * dp], a[mt], b0);
                        mma_16816<Element>(o[mt][2 * dp + 1], a[mt], b1);
                    }
                }
            }
        }
        entry = next;
        warp_kind = next_warp_kind;
    }

    // --- epilogue -----------------------------------------------------------------------------
    // With no key block the Q copy may still be in flight into rows other warps stage O in.
    cp_async_wait<0>();
    __syncthreads();
    // A split CTA's parts: all but the last to finish leave their results and return.
    if constexpr (kSplitTail) {
        if (is_part &&
            !merge_split_parts<kThreads>(split, int32_t(blockIdx.x), scale_log2, o, row_max, row_sum, smem.last_part))
            return;
    }

    float* lse = static_cast<float*>(p.lse.data) + batch * p.lse.stride[0] + head * p.lse.stride[1];
    // O is staged in Q's tile. This thread's element offset at (row group, column 2 quad): column
    // tile dt is chunk dt from there, rows 8 apart keep the swizzle: constant steps (smem_tile.cuh).
    const uint32_t o_stage0 = QTile::offset(warp_row + group, 2 * quad);
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const float sum = quad_sum(row_sum[mt][half]);
            // l == 0: no visible key (fully masked row, or Nk == 0): O = 0, LSE = -inf.
            const float inverse = sum > 0.0f ? 1.0f / sum : 0.0f;
            const int row_step = mt * 16 + 8 * half;
            const int local_row = warp_row + group + row_step;
#pragma unroll
            for (int dt = 0; dt < kDTiles; ++dt) {
                const uint32_t packed = ElementTraits<Element>::pack(o[mt][dt][2 * half] * inverse,
                                                                     o[mt][dt][2 * half + 1] * inverse);
                const uint32_t offset = advance_chunks<kChunkElements>(o_stage0, dt) + row_step * QTile::kColsCount;
                *reinterpret_cast<uint32_t*>(smem.q + offset) = packed;
            }
            const int32_t row = row_begin + local_row;
            if (quad == 0 && row < nq)
                lse[row * p.lse.stride[2]] = sum > 0.0f ? row_max[mt][half] * p.scale + logf(sum) : kNegInf;
        }
    __syncwarp();

    // Each warp writes its own rows, 16 bytes per lane. Lane l takes row residue l / kLaneChunks
    // (mod 8) and chunks l % kLaneChunks + kLaneChunks * j: with its chunk in the first
    // kLaneChunks of a period, every chunk and every row 8 further is a constant step from its
    // first one (advance_chunks()), in shared memory and in global memory alike.
    constexpr int kLaneChunks = kWarpSize / kSwizzleRows;  // 4 lanes share a row
    constexpr int kRowSteps = Traits::kWarpRows / kSwizzleRows;
    constexpr int kChunkSteps = QTile::kChunksPerRow / kLaneChunks;
    static_assert(Traits::kWarpRows % kSwizzleRows == 0 && QTile::kChunksPerRow % kLaneChunks == 0 &&
                      kLaneChunks <= kSwizzleRows && (kLaneChunks & (kLaneChunks - 1)) == 0,
                  "a lane's chunks are c + kLaneChunks * j with c < kLaneChunks: no carries into c");
    const int first_row = warp_row + lane / kLaneChunks, first_chunk = lane % kLaneChunks;
    const uint32_t stage0 = QTile::offset(first_row, first_chunk * kChunkElements);
    const int64_t row_stride = p.out.stride[1];
    Element* const out = static_cast<Element*>(p.out.data) + batch * p.out.stride[0] +
                         (row_begin + first_row) * row_stride + head * p.out.stride[2] + first_chunk * kChunkElements;
#pragma unroll
    for (int r = 0; r < kRowSteps; ++r) {
        if (row_begin + first_row + r * kSwizzleRows >= nq) break;  // rows ascend with r
#pragma unroll
        for (int j = 0; j < kChunkSteps; ++j) {
            const int chunks = kLaneChunks * j;
            *reinterpret_cast<int4*>(out + r * kSwizzleRows * row_stride + chunks * kChunkElements) =
                *reinterpret_cast<const int4*>(smem.q + advance_chunks<kChunkElements>(stage0, chunks) +
                                               r * kSwizzleRows * QTile::kColsCount);
        }
    }
}

}  // namespace forward_detail

template <typename Element, int kHeadDim>
void launch_forward(const AttentionProblem& p, KeyOrder key_order, cudaStream_t stream, ForwardPart part) {
    using namespace forward_detail;
    using Traits = ForwardTraits<kHeadDim>;
    if (p.batch == 0 || p.nq == 0) return;  // nothing to write

    // Every refusal (shared memory, a CTA that fits no SM, a grid past int32) before any work is queued.
    constexpr int kSmemBytes = int(sizeof(SharedStorage<Element, kHeadDim>));
    const auto launch = plan_scheduled_launch<Traits>(forward_kernel<Element, kHeadDim, false>, kSmemBytes, p,
                                                      TileAxis::QueryBlocks, "forward", "forward_kernel");

    const KeyOrderedTiles tiles(p, key_order, launch.shape, Traits::kBlockN, stream);
    if (part == ForwardPart::PreprocessingOnly) return;

    // The grid's last wave split over the key blocks where every CTA has the same work (no index
    // tensor: only the natural key order runs), with each part's results in scratch.
    using Layout = ForwardSplitLayout<Traits::kThreads, Traits::kMTiles, Traits::kDTiles>;
    const int32_t key_blocks = int32_t(ceil_div(int64_t{p.nk}, int64_t{Traits::kBlockN}));
    const TailPlan tail = ctas_have_equal_work(p)
                              ? plan_forward_tail_split(int64_t{launch.grid}, launch.shape.cta_slots, key_blocks)
                              : TailPlan{};
    const std::size_t split_floats = std::size_t(tail.split_ctas) * std::size_t(tail.parts) * Layout::kFloatsPerPart;
    DeviceScratch split_memory(tail.scratch_floats(split_floats) * sizeof(float), stream);
    const TailSplit split = tail.split(int64_t{launch.grid}, split_memory.as<float>(), split_floats);
    if (tail.split_ctas > 0)
        FM_CUDA_CHECK(cudaMemsetAsync(split.arrivals, 0, std::size_t(tail.split_ctas) * sizeof(int32_t), stream));
    const unsigned natural_grid = unsigned(tail.launched_grid(int64_t{launch.grid}));
    // The split kernel has the unsplit one's shared memory and launch bounds: the same CTA slots.
    auto* const natural_kernel = tail.split_ctas > 0 ? forward_kernel<Element, kHeadDim, true> : launch.kernel;
    if (tail.split_ctas > 0) allow_shared_memory(natural_kernel, launch.smem_bytes);

    const KernelOperand q(p.q, p.batch, p.nq, p.q_heads, p.head_dim, stream);
    const KernelOperand k(p.k, p.batch, p.nk, p.kv_heads, p.head_dim, stream);
    const KernelOperand v(p.v, p.batch, p.nk, p.kv_heads, p.value_dim, stream);
    const KernelOperand out(p.out, p.batch, p.nq, p.q_heads, p.value_dim, stream);
    q.copy_in();
    k.copy_in();
    v.copy_in();
    AttentionProblem kernel_problem = p;
    kernel_problem.q = q.operand();
    kernel_problem.k = k.operand();
    kernel_problem.v = v.operand();
    kernel_problem.out = out.operand();
    auto run = [&](const AttentionProblem& problem, const SummaryTable& table, const TileSchedule& schedule,
                   const LaunchCondition& condition, const TailSplit& tail_split, unsigned grid, auto kernel) {
        kernel<<<grid, Traits::kThreads, launch.smem_bytes, stream>>>(problem, table, schedule, condition,
                                                                      tail_split);
        check_launch("flashmask sm80 forward_kernel");
    };

    if (tiles.natural_runs())
        run(kernel_problem, tiles.natural_table(), tiles.natural_schedule(), tiles.natural_condition(), split,
            natural_grid, natural_kernel);
    if (tiles.sorted_runs()) {
        // K and V gathered in the sorted order (only when that order runs), read by the unchanged kernel.
        const std::size_t key_rows = std::size_t(p.batch) * p.nk * p.kv_heads;
        DeviceScratch gathered(sizeof(Element) * key_rows * (p.head_dim + p.value_dim), stream);
        AttentionProblem sorted_problem = kernel_problem;
        sorted_problem.mask = tiles.sorted_mask();
        sorted_problem.k = contiguous_operand(gathered.as<Element>(), p.nk, p.kv_heads, p.head_dim);
        sorted_problem.v = contiguous_operand(gathered.as<Element>() + key_rows * p.head_dim, p.nk, p.kv_heads, p.value_dim);
        gather_keys(kernel_problem.k, sorted_problem.k, int32_t(sizeof(Element)), p.head_dim, p, tiles.sorted_order(),
                    tiles.sorted_condition(), stream);
        gather_keys(kernel_problem.v, sorted_problem.v, int32_t(sizeof(Element)), p.value_dim, p, tiles.sorted_order(),
                    tiles.sorted_condition(), stream);
        run(sorted_problem, tiles.sorted_table(), tiles.sorted_schedule(), tiles.sorted_condition(), TailSplit{},
            launch.grid, launch.kernel);
    }
    out.copy_out();
}

}  // namespace flashmask::cuda::sm80
