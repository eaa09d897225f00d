#include "cpu/tiled.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "cpu/parallel.hpp"
#include "flashmask/float16.hpp"
#include "flashmask/mask.hpp"

// The hot loops below are written on SIMD vectors (GCC/Clang vector extensions) or as plain loops
// the compiler vectorizes. On x86-64 Linux with GCC, each is also compiled for AVX2 + FMA
// (x86-64-v3) and the best clone is picked at load time, so a portable build still runs at AVX2
// speed where the CPU has it.
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__)
#define FM_SIMD_CLONES __attribute__((target_clones("default", "arch=x86-64-v3")))
#else
#define FM_SIMD_CLONES
#endif
// 32-byte vectors passed between inlined helpers in the baseline clone draw a harmless ABI note.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace flashmask::cpu {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// ---------------------------------------------------------------------------------------------
// Storage formats: loads and stores convert to and from float; all arithmetic is float, but for
// the backward's delta and dS = P (dP - delta), formed in double (RowTerms), and dP = dO V^T,
// accumulated in Gradient. Where dP_j is close to the row's delta, dS = P (dP - delta)
// is a small difference of two values near dP_j, and with float32 inputs dP's own float rounding
// was the largest error left in dQ and dK: a row over two keys with dP = 6.244 and 6.218 gave dQ
// 1.5e-5 from float64 (SPEC §5: 1e-5; bench/NOTES.md, session 29). In double its product takes
// about twice a float one's time, ~10-20 % more for the whole float32 CPU backward; with 16-bit
// inputs a float dP is far more precise than the inputs, so they keep it.
// ---------------------------------------------------------------------------------------------
struct Float32Storage {
    using type = float;
    using Gradient = double;
    static float to_float(float x) { return x; }
    static float from_float(float x) { return x; }
};
struct BFloat16Storage {
    using type = uint16_t;
    using Gradient = float;
    static float to_float(uint16_t x) { return bfloat16_to_float(x); }
    static uint16_t from_float(float x) { return float_to_bfloat16(x); }
};
struct Float16Storage {
    using type = uint16_t;
    using Gradient = float;
    static float to_float(uint16_t x) { return float16_to_float(x); }
    static uint16_t from_float(float x) { return float_to_float16(x); }
};

// Element [b, s, h, 0] of a BSHD operand (the last dimension is contiguous).
template <class Storage>
typename Storage::type* row_pointer(const Operand& operand, int64_t b, int64_t s, int64_t h) {
    return operand.at<typename Storage::type>(b, s, h);
}

// Scratch tiles are indexed in int64 (pitches, transposed rows): with a head dim beyond
// 2^31 / kBlockN, r * pitch and d * kBlockN overflow int32.
// dst[r * pitch + d] = multiplier * src[b, first + r, h, d] for r < count, d < width.
template <class Storage, class Element>
void load_rows(const Operand& src, int64_t b, int32_t first, int64_t h, int32_t count, int32_t width, int64_t pitch,
               float multiplier, Element* dst) {
    for (int32_t r = 0; r < count; ++r) {
        const auto* row = row_pointer<Storage>(src, b, first + r, h);
        for (int32_t d = 0; d < width; ++d) dst[r * pitch + d] = multiplier * Storage::to_float(row[d]);
    }
}

// dst[d * kBlockN + c] = src[b, first + c, h, d]: a key block stored transposed, the right-hand
// side of Q K^T and dO V^T. Columns count..kBlockN-1 are zero.
template <class Storage, class Element>
void load_transposed(const Operand& src, int64_t b, int32_t first, int64_t h, int32_t count, int32_t width,
                     Element* dst) {
    for (int32_t c = 0; c < count; ++c) {
        const auto* row = row_pointer<Storage>(src, b, first + c, h);
        for (int64_t d = 0; d < width; ++d) dst[d * kBlockN + c] = Storage::to_float(row[d]);
    }
    for (int64_t d = 0; d < width; ++d)
        for (int32_t c = count; c < kBlockN; ++c) dst[d * kBlockN + c] = 0.0f;
}

// dst[b, first + r, h, d] = multiplier * src[r * pitch + d] for r < count, d < width.
template <class Storage>
void store_rows(const Operand& dst, int64_t b, int32_t first, int64_t h, int32_t count, int32_t width, int64_t pitch,
                float multiplier, const float* src) {
    for (int32_t r = 0; r < count; ++r) {
        auto* row = row_pointer<Storage>(dst, b, first + r, h);
        for (int32_t d = 0; d < width; ++d) row[d] = Storage::from_float(multiplier * src[r * pitch + d]);
    }
}

float* lse_pointer(const AttentionProblem& p, int64_t b, int64_t h, int64_t row) {
    return p.lse.at<float>(b, h, row);
}

// ---------------------------------------------------------------------------------------------
// Vectorizable float arithmetic
// ---------------------------------------------------------------------------------------------

// Explicit SIMD through GCC/Clang vector extensions: the compiler's auto-vectorizer gives up on
// the selects of the softmax (with IEEE trapping semantics), so those loops are written on
// vectors directly. In the baseline clone a vector is lowered to SSE pairs.
constexpr int32_t kVectorWidth = 8;  // floats per vector: one AVX register
typedef float FloatVector __attribute__((vector_size(kVectorWidth * sizeof(float))));
typedef int32_t IntVector __attribute__((vector_size(kVectorWidth * sizeof(int32_t))));
typedef double DoubleVector __attribute__((vector_size(sizeof(FloatVector))));
typedef float HalfFloatVector __attribute__((vector_size(sizeof(DoubleVector) / 2)));  // a DoubleVector's floats
constexpr int32_t kDoubleLanes = sizeof(DoubleVector) / sizeof(double);
static_assert(kBlockN % kVectorWidth == 0);
constexpr int32_t kVectorsPerScoreRow = kBlockN / kVectorWidth;

// A vector's lanes from and to consecutive elements of its type.
template <class Vector, class Element>
[[gnu::always_inline]] inline Vector load_lanes(const Element* p) {
    Vector v;
    std::memcpy(&v, p, sizeof v);
    return v;
}
template <class Vector, class Element>
[[gnu::always_inline]] inline void store_lanes(Element* p, Vector v) {
    std::memcpy(p, &v, sizeof v);
}
[[gnu::always_inline]] inline FloatVector load_vector(const float* p) { return load_lanes<FloatVector>(p); }
[[gnu::always_inline]] inline void store_vector(float* p, FloatVector v) { store_lanes(p, v); }
// kDoubleLanes consecutive floats or doubles as doubles.
template <class Element>
[[gnu::always_inline]] inline DoubleVector load_as_doubles(const Element* p) {
    if constexpr (std::is_same_v<Element, double>) return load_lanes<DoubleVector>(p);
    else return __builtin_convertvector(load_lanes<HalfFloatVector>(p), DoubleVector);
}
[[gnu::always_inline]] inline FloatVector broadcast(float x) { return FloatVector{} + x; }
[[gnu::always_inline]] inline FloatVector vector_max(FloatVector a, FloatVector b) { return a > b ? a : b; }
// Horizontal reductions as a tree (depth 3 rather than a chain of 7).
template <class Combine>
[[gnu::always_inline]] inline float horizontal(FloatVector v, Combine combine) {
    static_assert(kVectorWidth == 8);
    const float q0 = combine(v[0], v[4]), q1 = combine(v[1], v[5]), q2 = combine(v[2], v[6]), q3 = combine(v[3], v[7]);
    return combine(combine(q0, q2), combine(q1, q3));
}
[[gnu::always_inline]] inline float horizontal_max(FloatVector v) {
    return horizontal(v, [](float a, float b) { return a > b ? a : b; });
}
[[gnu::always_inline]] inline float horizontal_sum(FloatVector v) {
    return horizontal(v, [](float a, float b) { return a + b; });
}
[[gnu::always_inline]] inline double horizontal_sum(DoubleVector v) {
    static_assert(kDoubleLanes == 4);
    return (v[0] + v[2]) + (v[1] + v[3]);
}

// e^x in float to within a couple of ulp: Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2,
// Cephes' degree-6 polynomial for e^r, and 2^n built in the exponent bits. Inputs below -87,
// -inf included, give exactly 0 (a masked score's probability): e^-87 is just above the
// smallest normal float, so no subnormal is ever formed, not even in the discarded lanes
// (each costs a microcode assist of ~100 cycles). NaN stays NaN.
[[gnu::always_inline]] inline FloatVector exp_vector(FloatVector x) {
    constexpr float kLog2e = 1.44269504088896341f;
    constexpr float kLn2High = 0.693359375f;  // ln 2 = kLn2High + kLn2Low, kLn2High exact in few bits
    constexpr float kLn2Low = -2.12194440e-4f;
    constexpr float kMinArgument = -87.0f;          // e^-87 > FLT_MIN: below it, return 0
    constexpr float kMaxArgument = 88.0f;           // keeps 2^n finite (n <= 127)
    constexpr float kRoundingShift = 12582912.0f;   // 1.5 * 2^23: (t + shift) - shift rounds t
    constexpr int32_t kExponentBias = 127, kMantissaBits = 23;
    FloatVector clamped = x < kMinArgument ? broadcast(kMinArgument) : x;
    clamped = clamped > kMaxArgument ? broadcast(kMaxArgument) : clamped;
    const FloatVector n = (clamped * kLog2e + kRoundingShift) - kRoundingShift;
    const FloatVector r = (clamped - n * kLn2High) - n * kLn2Low;
    FloatVector poly = broadcast(1.9875691500e-4f);
    poly = poly * r + 1.3981999507e-3f;
    poly = poly * r + 8.3334519073e-3f;
    poly = poly * r + 4.1665795894e-2f;
    poly = poly * r + 1.6666665459e-1f;
    poly = poly * r + 5.0000001201e-1f;
    poly = poly * r * r + r + 1.0f;
    const IntVector exponent = (__builtin_convertvector(n, IntVector) + kExponentBias) << kMantissaBits;
    const FloatVector two_to_n = std::bit_cast<FloatVector>(exponent);
    return x < kMinArgument ? FloatVector{} : poly * two_to_n;
}

// The register tile of multiply(): kRowBlock rows x kColumnBlock columns of the output, held in
// 8 vector accumulators (with AVX2: 4 x 2 ymm registers, leaving room for the two B vectors and
// the broadcast A value). Buffers are padded so that every product covers whole register tiles.
constexpr int32_t kRowBlock = 4;
constexpr int32_t kVectorsPerRow = 2;
constexpr int32_t kColumnBlock = kVectorWidth * kVectorsPerRow;
static_assert(kBlockM % kRowBlock == 0 && kBlockN % kRowBlock == 0 && kBlockN % kColumnBlock == 0);

// One AVX register of an element type.
template <class Element>
struct VectorOf;
template <>
struct VectorOf<float> {
    using type = FloatVector;
};
template <>
struct VectorOf<double> {
    using type = DoubleVector;
};

int64_t round_up(int64_t n, int64_t multiple) { return (n + multiple - 1) / multiple * multiple; }

// out[r][x] (+)= sum_{k < depth} A(r, k) * b[k * ldb + x] for r < rows, x < width (rows a
// multiple of kRowBlock, width of kColumnBlock), with A(r, k) = a[r * a_row + k * a_depth]: the
// one matrix product of the CPU path. Strides of A express its transposes: Q K^T, dO V^T
// (A = Q or dO), P V, dS K (A = P or dS), and P^T dO, dS^T Q (A = P^T or dS^T). In float, or
// in double for dP (Storage::Gradient): a double register holds half the lanes, so its register
// tile covers half the columns (a tile of half the rows instead reads each B vector for half as
// many rows, and measured ~1.5x slower).
template <class Element>
FM_SIMD_CLONES void multiply(const Element* __restrict a, int64_t a_row, int64_t a_depth,
                             const Element* __restrict b, int64_t ldb, Element* __restrict out, int64_t ldo,
                             int64_t rows, int64_t depth, int64_t width, bool accumulate) {
    using Vector = typename VectorOf<Element>::type;
    constexpr int32_t kLanes = sizeof(Vector) / sizeof(Element);
    constexpr int32_t kRows = kRowBlock, kVectors = kVectorsPerRow, kColumns = kVectors * kLanes;
    static_assert(kColumnBlock % kColumns == 0);
    for (int64_t r0 = 0; r0 < rows; r0 += kRows)
        for (int64_t x0 = 0; x0 < width; x0 += kColumns) {
            Vector acc[kRows][kVectors];
            for (int32_t i = 0; i < kRows; ++i)
                for (int32_t v = 0; v < kVectors; ++v)
                    acc[i][v] = accumulate ? load_lanes<Vector>(out + (r0 + i) * ldo + x0 + v * kLanes) : Vector{};
            for (int64_t k = 0; k < depth; ++k) {
                Vector b_row[kVectors];
                for (int32_t v = 0; v < kVectors; ++v)
                    b_row[v] = load_lanes<Vector>(b + k * ldb + x0 + v * kLanes);
                for (int32_t i = 0; i < kRows; ++i) {
                    const Element a_ik = a[(r0 + i) * a_row + k * a_depth];
                    for (int32_t v = 0; v < kVectors; ++v) acc[i][v] += a_ik * b_row[v];
                }
            }
            for (int32_t i = 0; i < kRows; ++i)
                for (int32_t v = 0; v < kVectors; ++v) store_lanes(out + (r0 + i) * ldo + x0 + v * kLanes, acc[i][v]);
        }
}

// Partial tiles: the rows of a key-block operand (V forward, K for dQ backward) whose key has
// P = 0 in every row of the tile are zeroed, so that a hidden key's values, even Inf or NaN,
// never meet a 0 * x in the products.
void clear_unseen_keys(const float* prob, int32_t rows, int32_t cols, float* operand, int64_t pitch) {
    for (int32_t c = 0; c < cols; ++c) {
        bool seen = false;
        for (int32_t r = 0; r < rows && !seen; ++r) seen = prob[r * kBlockN + c] != 0.0f;
        if (!seen) std::fill(operand + c * pitch, operand + (c + 1) * pitch, 0.0f);
    }
}

// The canonical masked intervals of a tile's columns (tiles.hpp), laid out for the element-wise
// test. Padding columns (past Nk) get an interval covering every row.
struct TileColumns {
    int32_t lower_start[kBlockN], lower_end[kBlockN], upper_start[kBlockN], upper_end[kBlockN];
};

void load_tile_columns(const MaskView& mask, int32_t b, int32_t mask_head, int32_t first_column, int32_t cols,
                       TileColumns& t) {
    for (int32_t c = 0; c < kBlockN; ++c) {
        if (c < cols) {
            const ColumnIntervals ci = column_intervals(mask, b, mask_head, first_column + c);
            t.lower_start[c] = ci.lower_start;
            t.lower_end[c] = ci.lower_end;
            t.upper_start[c] = ci.upper_start;
            t.upper_end[c] = ci.upper_end;
        } else {
            t.lower_start[c] = 0;
            t.lower_end[c] = std::numeric_limits<int32_t>::max();
            t.upper_start[c] = t.upper_end[c] = 0;
        }
    }
}

// Partial tiles: scores of masked (row, column) pairs become -inf.
FM_SIMD_CLONES void mask_scores(float* __restrict scores, int32_t rows, int32_t first_row, const TileColumns& t) {
    for (int32_t r = 0; r < rows; ++r) {
        const int32_t i = first_row + r;
        float* __restrict s = scores + r * kBlockN;
        for (int32_t c = 0; c < kBlockN; ++c) {
            const bool masked = (t.lower_start[c] <= i && i < t.lower_end[c]) ||
                                (t.upper_start[c] <= i && i < t.upper_end[c]);
            s[c] = masked ? kNegInf : s[c];
        }
    }
}

// Columns past Nk in the last key block (any tile kind) take no part in the softmax.
void mask_padding_columns(float* scores, int32_t rows, int32_t cols) {
    for (int32_t r = 0; r < rows; ++r)
        for (int32_t c = cols; c < kBlockN; ++c) scores[r * kBlockN + c] = kNegInf;
}

// One step of the online softmax over a tile of scores, in place: scores become
// P = exp(s - new_max); row_max / row_sum are updated and rescale[r] = exp(old_max - new_max)
// is the factor by which the row's output accumulator must shrink. Rows with nothing visible so
// far keep max = -inf, sum = 0, and get P = 0 and rescale 1. Each phase is a loop over
// independent rows, so that their dependency chains (reductions, exp) overlap.
FM_SIMD_CLONES void online_softmax_step(float* __restrict scores, float* __restrict row_max,
                                        float* __restrict row_sum, float* __restrict rescale, int32_t rows) {
    float new_max[kBlockM];
    for (int32_t r = 0; r < rows; ++r) {
        const float* s = scores + r * kBlockN;
        FloatVector lane_max = broadcast(row_max[r]);
        for (int32_t v = 0; v < kVectorsPerScoreRow; ++v) lane_max = vector_max(lane_max, load_vector(s + v * kVectorWidth));
        new_max[r] = horizontal_max(lane_max);
    }
    float tile_sum[kBlockM];
    for (int32_t r = 0; r < rows; ++r) {
        float* s = scores + r * kBlockN;
        const float m = new_max[r] == kNegInf ? 0.0f : new_max[r];  // all -inf: exp(-inf) = 0
        FloatVector lane_sum{};
        for (int32_t v = 0; v < kVectorsPerScoreRow; ++v) {
            const FloatVector p = exp_vector(load_vector(s + v * kVectorWidth) - m);
            store_vector(s + v * kVectorWidth, p);
            lane_sum += p;
        }
        tile_sum[r] = horizontal_sum(lane_sum);
    }
    for (int32_t r = 0; r < rows; ++r) {
        // exp(old - new) is 0 when the old max was -inf; nothing visible yet keeps factor 1.
        const float factor = new_max[r] == kNegInf ? 1.0f : exp_vector(broadcast(row_max[r] - new_max[r]))[0];
        rescale[r] = factor;
        row_sum[r] = row_sum[r] * factor + tile_sum[r];
        row_max[r] = new_max[r];
    }
}

// Row r of `values` (rows `pitch` floats apart, `width` used) times factors[r]; rows whose factor
// is 1 are left as they are. The forward's rescaling of its accumulator, and the backward's
// normalisation of P (RowTerms).
FM_SIMD_CLONES void scale_rows(float* __restrict values, int64_t pitch, int64_t width, const float* __restrict factors,
                               int32_t rows) {
    for (int32_t r = 0; r < rows; ++r) {
        if (factors[r] == 1.0f) continue;
        for (int64_t c = 0; c < width; ++c) values[r * pitch + c] *= factors[r];
    }
}

// Backward: scores become P = exp(s - lse) from the forward pass's LSE; rows with LSE = -inf
// (nothing visible) get P = 0 rather than exp(-inf + inf).
FM_SIMD_CLONES void probabilities_from_lse(float* __restrict scores, const float* __restrict lse, int32_t rows) {
    for (int32_t r = 0; r < rows; ++r) {
        float* __restrict s = scores + r * kBlockN;
        if (lse[r] == kNegInf) {
            std::fill(s, s + kBlockN, 0.0f);
            continue;
        }
        for (int32_t v = 0; v < kVectorsPerScoreRow; ++v)
            store_vector(s + v * kVectorWidth, exp_vector(load_vector(s + v * kVectorWidth) - lse[r]));
    }
}

// dS = P * (dP - delta) in double (RowTerms::delta is one), rounded once to float. Where P = 0
// (masked) dS is 0 outright, so that a hidden key's V (even Inf or NaN) cannot leak into any
// gradient through 0 * dP.
// On vectors: as a plain loop the compiler left it scalar (7 % of a float32 backward, perf).
template <class Gradient>
FM_SIMD_CLONES void score_gradients(const Gradient* __restrict dprob, const float* __restrict prob,
                                    const double* __restrict delta, int32_t rows, float* __restrict dscores) {
    static_assert(kBlockN % kDoubleLanes == 0);
    for (int32_t r = 0; r < rows; ++r) {
        const DoubleVector row_delta = DoubleVector{} + delta[r];
        for (int32_t c = r * kBlockN; c < (r + 1) * kBlockN; c += kDoubleLanes) {
            const DoubleVector p = load_as_doubles(prob + c);
            const DoubleVector ds = p * (load_as_doubles(dprob + c) - row_delta);
            store_lanes(dscores + c, __builtin_convertvector(p != 0.0 ? ds : DoubleVector{}, HalfFloatVector));
        }
    }
}

// One tile's share of its rows' terms (delta_from_probabilities_item): sums[r] +=
// sum_c P (dP - pivots[r]) and probability_sums[r] += sum_c P over the keys row r sees (P != 0: a
// hidden key's dP, even Inf or NaN, adds nothing). A row's first visible key sets its pivot.
template <class Gradient>
FM_SIMD_CLONES void accumulate_row_terms(const float* __restrict prob, const Gradient* __restrict dprob, int32_t rows,
                                         double* __restrict pivots, double* __restrict sums,
                                         double* __restrict probability_sums) {
    static_assert(kBlockN % kDoubleLanes == 0);
    for (int32_t r = 0; r < rows; ++r) {
        const float* p_row = prob + r * kBlockN;
        const Gradient* dp_row = dprob + r * kBlockN;
        if (probability_sums[r] == 0.0) {
            const float* first = std::find_if(p_row, p_row + kBlockN, [](float p) { return p != 0.0f; });
            if (first == p_row + kBlockN) continue;
            pivots[r] = dp_row[first - p_row];
        }
        const DoubleVector pivot = DoubleVector{} + pivots[r];
        DoubleVector sum{}, probability_sum{};
        for (int32_t c = 0; c < kBlockN; c += kDoubleLanes) {
            const DoubleVector p = load_as_doubles(p_row + c);
            const DoubleVector term = p * (load_as_doubles(dp_row + c) - pivot);
            sum += p != 0.0 ? term : DoubleVector{};
            probability_sum += p;
        }
        sums[r] += horizontal_sum(sum);
        probability_sums[r] += horizontal_sum(probability_sum);
    }
}

// ---------------------------------------------------------------------------------------------
// Work decomposition shared by the passes
// ---------------------------------------------------------------------------------------------

// Block summaries of the whole call, [B, Hm, kv_blocks], and their lookup per query head.
struct MaskTiles {
    const AttentionProblem& p;
    int32_t kv_blocks, q_blocks, mask_heads;
    std::vector<BlockSummary> summaries;

    explicit MaskTiles(const AttentionProblem& problem)
        : p(problem),
          kv_blocks(ceil_div(problem.nk, kBlockN)),
          q_blocks(ceil_div(problem.nq, kBlockM)),
          mask_heads(problem.q_heads / problem.mask.query_heads_per_mask_head),
          summaries(block_summaries(problem.mask, problem.batch, mask_heads, kBlockN)) {}

    TileKind kind(int32_t b, int32_t q_head, int32_t q_block, int32_t kv_block) const {
        const int32_t m = p.mask.mask_head(q_head);
        const BlockSummary& s = summaries[(std::size_t(b) * mask_heads + m) * kv_blocks + kv_block];
        // Not (q_block + 1) * kBlockM, which overflows int32 in the last block when Nq is near 2^31.
        const int32_t row_begin = q_block * kBlockM;
        return classify(s, row_begin, row_begin + rows_in(q_block));
    }
    int32_t rows_in(int32_t q_block) const { return std::min(kBlockM, p.nq - q_block * kBlockM); }
    int32_t cols_in(int32_t kv_block) const { return std::min(kBlockN, p.nk - kv_block * kBlockN); }
};

// Padded row pitches of the scratch tiles: head widths rounded up to whole register tiles.
struct Pitches {
    int64_t head, value;
    explicit Pitches(const AttentionProblem& p)
        : head(round_up(p.head_dim, kColumnBlock)), value(round_up(p.value_dim, kColumnBlock)) {}
};

// Scores of one tile (already scaled, since the query tile is), masked as its kind requires.
void tile_scores(const MaskTiles& tiles, TileKind kind, int32_t b, int32_t q_head, int32_t q_block, int32_t kv_block,
                 const float* q_tile, int64_t q_pitch, const float* kt_tile, float* scores, TileColumns& columns) {
    const int32_t rows = tiles.rows_in(q_block), cols = tiles.cols_in(kv_block);
    multiply(q_tile, q_pitch, 1, kt_tile, kBlockN, scores, kBlockN, round_up(rows, kRowBlock), tiles.p.head_dim,
             kBlockN, false);
    if (kind == TileKind::Partial) {
        load_tile_columns(tiles.p.mask, b, tiles.p.mask.mask_head(q_head), kv_block * kBlockN, cols, columns);
        mask_scores(scores, rows, q_block * kBlockM, columns);
    } else if (cols < kBlockN) {
        mask_padding_columns(scores, rows, cols);
    }
}

// ---------------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------------
// Per-worker tiles. Rows past a tile's end (up to a whole register tile) may hold stale values:
// they are computed with and never stored.
struct ForwardScratch {
    std::vector<float> q, kt, v, scores, acc, row_max, row_sum, rescale;
    TileColumns columns;

    void allocate(const AttentionProblem& p) {
        if (!q.empty()) return;
        const Pitches pitch(p);
        q.resize(std::size_t(kBlockM) * pitch.head);
        kt.resize(std::size_t(p.head_dim) * kBlockN);
        v.resize(std::size_t(kBlockN) * pitch.value);
        scores.resize(std::size_t(kBlockM) * kBlockN);
        acc.resize(std::size_t(kBlockM) * pitch.value);
        row_max.resize(kBlockM);
        row_sum.resize(kBlockM);
        rescale.resize(kBlockM);
    }
};

// The parallel loops number their work items (batch, head, block) with the block fastest:
// item = (b * heads + head) * blocks + block.
struct WorkItem {
    int32_t b, head, block;
};
WorkItem work_item(int64_t item, int32_t heads, int32_t blocks) {
    return {int32_t(item / (int64_t(blocks) * heads)), int32_t((item / blocks) % heads), int32_t(item % blocks)};
}

// Work item = (b, query head, query block): its rows of O and LSE.
template <class Storage>
void forward_item(const MaskTiles& tiles, int64_t item, ForwardScratch& w) {
    const AttentionProblem& p = tiles.p;
    const Pitches pitch(p);
    const WorkItem at = work_item(item, p.q_heads, tiles.q_blocks);
    const int32_t b = at.b, h = at.head, q_block = at.block;
    const int32_t kvh = p.kv_head(h), first_row = q_block * kBlockM, rows = tiles.rows_in(q_block);

    load_rows<Storage>(p.q, b, first_row, h, rows, p.head_dim, pitch.head, p.scale, w.q.data());
    std::fill(w.acc.begin(), w.acc.end(), 0.0f);
    std::fill(w.row_max.begin(), w.row_max.end(), kNegInf);
    std::fill(w.row_sum.begin(), w.row_sum.end(), 0.0f);

    for (int32_t kv_block = 0; kv_block < tiles.kv_blocks; ++kv_block) {
        const TileKind kind = tiles.kind(b, h, q_block, kv_block);
        if (kind == TileKind::Skipped) continue;  // K/V of this block are never read
        const int32_t first_col = kv_block * kBlockN, cols = tiles.cols_in(kv_block);
        load_transposed<Storage>(p.k, b, first_col, kvh, cols, p.head_dim, w.kt.data());
        load_rows<Storage>(p.v, b, first_col, kvh, cols, p.value_dim, pitch.value, 1.0f, w.v.data());
        tile_scores(tiles, kind, b, h, q_block, kv_block, w.q.data(), pitch.head, w.kt.data(), w.scores.data(),
                    w.columns);
        online_softmax_step(w.scores.data(), w.row_max.data(), w.row_sum.data(), w.rescale.data(), rows);
        scale_rows(w.acc.data(), pitch.value, pitch.value, w.rescale.data(), rows);
        if (kind == TileKind::Partial) clear_unseen_keys(w.scores.data(), rows, cols, w.v.data(), pitch.value);
        multiply(w.scores.data(), kBlockN, 1, w.v.data(), pitch.value, w.acc.data(), pitch.value,
                 round_up(rows, kRowBlock), cols, pitch.value, true);
    }

    for (int32_t r = 0; r < rows; ++r) {
        const bool visible = w.row_sum[r] > 0.0f;
        const float inverse_sum = visible ? 1.0f / w.row_sum[r] : 0.0f;  // nothing visible: O = 0
        store_rows<Storage>(p.out, b, first_row + r, h, 1, p.value_dim, pitch.value, inverse_sum,
                            w.acc.data() + r * pitch.value);
        *lse_pointer(p, b, h, first_row + r) = visible ? w.row_max[r] + std::log(w.row_sum[r]) : kNegInf;
    }
}

// ---------------------------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------------------------
template <class Storage>
struct BackwardScratch {
    using Gradient = typename Storage::Gradient;
    static constexpr bool kWideGradient = !std::is_same_v<Gradient, float>;
    std::vector<float> q, dout, lse, inverse_sum, k, kt, prob, dscores, dq, dk, dv;
    std::vector<double> delta;
    // The operands and result of dP = dO V^T: dout_wide is dO in Gradient where that is not float.
    std::vector<Gradient> dout_wide, vt, dprob;
    TileColumns columns;

    const Gradient* dprob_dout() const {
        if constexpr (kWideGradient) return dout_wide.data();
        else return dout.data();
    }

    void allocate(const AttentionProblem& p) {
        if (!q.empty()) return;
        const Pitches pitch(p);
        q.resize(std::size_t(kBlockM) * pitch.head);
        dout.resize(std::size_t(kBlockM) * pitch.value);
        if (kWideGradient) dout_wide.resize(dout.size());
        lse.resize(kBlockM);
        delta.resize(kBlockM);
        inverse_sum.resize(kBlockM);
        k.resize(std::size_t(kBlockN) * pitch.head);
        kt.resize(std::size_t(p.head_dim) * kBlockN);
        vt.resize(std::size_t(p.value_dim) * kBlockN);
        prob.resize(std::size_t(kBlockM) * kBlockN);
        dprob.resize(std::size_t(kBlockM) * kBlockN);
        dscores.resize(std::size_t(kBlockM) * kBlockN);
        dq.resize(std::size_t(kBlockM) * pitch.head);
        dk.resize(std::size_t(kBlockN) * pitch.head);
        dv.resize(std::size_t(kBlockN) * pitch.value);
    }
};

// delta[b, h, i]: the softmax-gradient term every pass needs, [B, Hq, Nq], in dS = P (dP - delta).
//
// Exactly it is rowsum(dO * O) = sum_j P_ij dP_ij. FlashAttention takes the first form, one read
// of O and dO; but the stored O carries its storage rounding, and dS = P * (dP - delta) cancels
// where a row's dP are close to delta, so that rounding reaches the gradients unattenuated. In
// float32 a single query row over a few keys (causal_document, Nq = 1, Nk = 17) gave dQ / dK errors
// of 1.4e-5 against SPEC's 1e-5 about once in 50 random draws, and summing in double did not help
// (O's rounding, not the sum's, is the error); in float16 a row over two keys gave 1.13e-3 against
// the bound's 1.05e-3 (Nq = 1, Nk = 17, D = 256, once in ~300 draws; bench/NOTES.md, session 25):
// SPEC §5's naive computation takes delta as softmax-backward's internal row sum of P * dP, where
// the stored O's rounding is not. So delta is sum_j P_ij dP_ij over the row's tiles
// (delta_from_probabilities_item), from the same P and dP that dS then uses, in double: rounding in
// dP then cancels in dP - delta instead of adding to it. It costs a third pass of two products (S
// and dP) per computed tile: measured +25-37 % on the CPU backward (bf16, 2,048 tokens, 2 threads:
// full 236 -> 323 ms, causal_document 42 -> 54 ms).
//
// That pass also sums each row's recomputed probabilities. P = exp(S - LSE) shares one error
// across a row: LSE's float32 rounding (and the forward's own), so the row sums to 1 + e rather
// than 1, and dS = P * (dP - delta) no longer sums to 0 over the row. Where a row sees few keys
// that residue is the whole gradient: with one visible key the exact P is 1 and dS is 0, and
// P = 1 - ulp left dQ / dK errors up to 1.3e-4 against float64 on random small masks, up to 37
// times the naive float32 computation's (bench/NOTES.md, session 17). Dividing each row's P by
// its sum removes the shared error: delta = sum_j P_ij dP_ij / sum_j P_ij, and the dQ and dK/dV
// passes scale P by 1 / sum_j P_ij (RowTerms::inverse_sum) before they use it.
// And delta stays a double: in a row that is nearly one-hot, dP_j - delta is a small difference
// of two values near dP_j, and with delta rounded to a float (the division alone) dQ errors still
// reached 1.4e-5, 4x the naive computation's. It is summed about a pivot, the row's first
// visible dP: delta = pivot + sum_j P_ij (dP_ij - pivot) / sum_j P_ij is exactly dP for a row
// over one key, so its dS is exactly 0, where (P dP) / P is not once dP is a double (the product
// rounds; dQ 5e-14 where float64 gives 0, test_random_problems.py, session 29).

// What every row of the backward needs beside its LSE, [B, Hq, Nq] each: delta and the inverse
// of the row's probability sum.
struct RowTerms {
    std::vector<double> delta;
    std::vector<float> inverse_sum;
};

// Loads a query block's Q (scaled), dO, LSE and row terms (none for the pass that forms them:
// delta 0, P as recomputed).
template <class Storage>
void load_query_block(const MaskTiles& tiles, const RowTerms* terms, int32_t b, int32_t h, int32_t q_block,
                      BackwardScratch<Storage>& w) {
    const AttentionProblem& p = tiles.p;
    const Pitches pitch(p);
    const int32_t first_row = q_block * kBlockM, rows = tiles.rows_in(q_block);
    load_rows<Storage>(p.q, b, first_row, h, rows, p.head_dim, pitch.head, p.scale, w.q.data());
    load_rows<Storage>(p.dout, b, first_row, h, rows, p.value_dim, pitch.value, 1.0f, w.dout.data());
    if constexpr (BackwardScratch<Storage>::kWideGradient)
        load_rows<Storage>(p.dout, b, first_row, h, rows, p.value_dim, pitch.value, 1.0f, w.dout_wide.data());
    const std::size_t row0 = (std::size_t(b) * p.q_heads + h) * p.nq + first_row;
    for (int32_t r = 0; r < rows; ++r) {
        w.lse[r] = *lse_pointer(p, b, h, first_row + r);
        w.delta[r] = terms != nullptr ? terms->delta[row0 + r] : 0.0;
        w.inverse_sum[r] = terms != nullptr ? terms->inverse_sum[row0 + r] : 1.0f;  // 1: scale_rows leaves the row
    }
}

// P and dP = dO V^T of one non-skipped tile, from the loaded query block and key block (kt, vt).
template <class Storage>
void tile_probabilities_and_dprob(const MaskTiles& tiles, TileKind kind, int32_t b, int32_t h, int32_t q_block,
                                  int32_t kv_block, BackwardScratch<Storage>& w) {
    const Pitches pitch(tiles.p);
    const int32_t rows = tiles.rows_in(q_block);
    tile_scores(tiles, kind, b, h, q_block, kv_block, w.q.data(), pitch.head, w.kt.data(), w.prob.data(), w.columns);
    probabilities_from_lse(w.prob.data(), w.lse.data(), rows);
    multiply(w.dprob_dout(), pitch.value, 1, w.vt.data(), kBlockN, w.dprob.data(), kBlockN, round_up(rows, kRowBlock),
             tiles.p.value_dim, kBlockN, false);
}

// P (divided by its row's sum where the row terms have one) and dS of one non-skipped tile,
// from the loaded query block and key block (kt, vt).
template <class Storage>
void tile_probabilities_and_gradients(const MaskTiles& tiles, TileKind kind, int32_t b, int32_t h, int32_t q_block,
                                      int32_t kv_block, BackwardScratch<Storage>& w) {
    tile_probabilities_and_dprob(tiles, kind, b, h, q_block, kv_block, w);
    const int32_t rows = tiles.rows_in(q_block);
    scale_rows(w.prob.data(), kBlockN, kBlockN, w.inverse_sum.data(), rows);
    score_gradients(w.dprob.data(), w.prob.data(), w.delta.data(), rows, w.dscores.data());
}

// The row terms of a query block's rows from its computed tiles, in double: delta =
// pivot + sum_j P_ij (dP_ij - pivot) / sum_j P_ij with the row's first visible dP as the pivot,
// and inverse_sum = 1 / sum_j P_ij (1 for a row that sees nothing);
// work item = (b, query head, query block), as for dQ. Hidden keys (P = 0) add nothing, whatever
// their V holds.
template <class Storage>
void delta_from_probabilities_item(const MaskTiles& tiles, int64_t item, RowTerms& terms, BackwardScratch<Storage>& w) {
    const AttentionProblem& p = tiles.p;
    const WorkItem at = work_item(item, p.q_heads, tiles.q_blocks);
    const int32_t b = at.b, h = at.head, q_block = at.block;
    const int32_t kvh = p.kv_head(h), rows = tiles.rows_in(q_block), first_row = q_block * kBlockM;

    load_query_block<Storage>(tiles, nullptr, b, h, q_block, w);  // its row terms are this item's output
    double sums[kBlockM] = {}, probability_sums[kBlockM] = {}, pivots[kBlockM] = {};
    for (int32_t kv_block = 0; kv_block < tiles.kv_blocks; ++kv_block) {
        const TileKind kind = tiles.kind(b, h, q_block, kv_block);
        if (kind == TileKind::Skipped) continue;
        const int32_t first_col = kv_block * kBlockN, cols = tiles.cols_in(kv_block);
        load_transposed<Storage>(p.k, b, first_col, kvh, cols, p.head_dim, w.kt.data());
        load_transposed<Storage>(p.v, b, first_col, kvh, cols, p.value_dim, w.vt.data());
        tile_probabilities_and_dprob(tiles, kind, b, h, q_block, kv_block, w);
        accumulate_row_terms(w.prob.data(), w.dprob.data(), rows, pivots, sums, probability_sums);
    }
    const std::size_t row0 = (std::size_t(b) * p.q_heads + h) * p.nq + first_row;
    for (int32_t r = 0; r < rows; ++r) {
        const bool seen = probability_sums[r] > 0.0;
        terms.delta[row0 + r] = seen ? pivots[r] + sums[r] / probability_sums[r] : 0.0;
        terms.inverse_sum[row0 + r] = seen ? float(1.0 / probability_sums[r]) : 1.0f;
    }
}

// dQ work item = (b, query head, query block): dQ = scale * sum over key blocks of dS K.
template <class Storage>
void dq_item(const MaskTiles& tiles, const RowTerms& terms, int64_t item, BackwardScratch<Storage>& w) {
    const AttentionProblem& p = tiles.p;
    const Pitches pitch(p);
    const WorkItem at = work_item(item, p.q_heads, tiles.q_blocks);
    const int32_t b = at.b, h = at.head, q_block = at.block;
    const int32_t kvh = p.kv_head(h), rows = tiles.rows_in(q_block);

    load_query_block<Storage>(tiles, &terms, b, h, q_block, w);
    std::fill(w.dq.begin(), w.dq.end(), 0.0f);
    for (int32_t kv_block = 0; kv_block < tiles.kv_blocks; ++kv_block) {
        const TileKind kind = tiles.kind(b, h, q_block, kv_block);
        if (kind == TileKind::Skipped) continue;
        const int32_t first_col = kv_block * kBlockN, cols = tiles.cols_in(kv_block);
        load_rows<Storage>(p.k, b, first_col, kvh, cols, p.head_dim, pitch.head, 1.0f, w.k.data());
        load_transposed<Storage>(p.k, b, first_col, kvh, cols, p.head_dim, w.kt.data());
        load_transposed<Storage>(p.v, b, first_col, kvh, cols, p.value_dim, w.vt.data());
        tile_probabilities_and_gradients(tiles, kind, b, h, q_block, kv_block, w);
        if (kind == TileKind::Partial) clear_unseen_keys(w.prob.data(), rows, cols, w.k.data(), pitch.head);
        multiply(w.dscores.data(), kBlockN, 1, w.k.data(), pitch.head, w.dq.data(), pitch.head,
                 round_up(rows, kRowBlock), cols, pitch.head, true);
    }
    store_rows<Storage>(p.dq, b, q_block * kBlockM, h, rows, p.head_dim, pitch.head, p.scale, w.dq.data());
}

// dK/dV work item = (b, kv head, key block): sums over every query head of the group and
// every non-skipped query block, dV = P^T dO and dK = dS^T (scale Q).
template <class Storage>
void dkdv_item(const MaskTiles& tiles, const RowTerms& terms, int64_t item, BackwardScratch<Storage>& w) {
    const AttentionProblem& p = tiles.p;
    const Pitches pitch(p);
    const WorkItem at = work_item(item, p.kv_heads, tiles.kv_blocks);
    const int32_t b = at.b, kvh = at.head, kv_block = at.block;
    const int32_t first_col = kv_block * kBlockN, cols = tiles.cols_in(kv_block);
    const int64_t key_rows = round_up(cols, kRowBlock);
    const int32_t group = p.q_heads / p.kv_heads;

    std::fill(w.dk.begin(), w.dk.end(), 0.0f);
    std::fill(w.dv.begin(), w.dv.end(), 0.0f);
    bool loaded = false;  // K/V are read only if some tile of the key block is not skipped
    for (int32_t h = kvh * group; h < (kvh + 1) * group; ++h)
        for (int32_t q_block = 0; q_block < tiles.q_blocks; ++q_block) {
            const TileKind kind = tiles.kind(b, h, q_block, kv_block);
            if (kind == TileKind::Skipped) continue;
            if (!loaded) {
                load_transposed<Storage>(p.k, b, first_col, kvh, cols, p.head_dim, w.kt.data());
                load_transposed<Storage>(p.v, b, first_col, kvh, cols, p.value_dim, w.vt.data());
                loaded = true;
            }
            load_query_block<Storage>(tiles, &terms, b, h, q_block, w);
            tile_probabilities_and_gradients(tiles, kind, b, h, q_block, kv_block, w);
            const int32_t rows = tiles.rows_in(q_block);
            multiply(w.prob.data(), 1, kBlockN, w.dout.data(), pitch.value, w.dv.data(), pitch.value, key_rows, rows,
                     pitch.value, true);
            multiply(w.dscores.data(), 1, kBlockN, w.q.data(), pitch.head, w.dk.data(), pitch.head, key_rows, rows,
                     pitch.head, true);
        }
    store_rows<Storage>(p.dk, b, first_col, kvh, cols, p.head_dim, pitch.head, 1.0f, w.dk.data());
    store_rows<Storage>(p.dv, b, first_col, kvh, cols, p.value_dim, pitch.value, 1.0f, w.dv.data());
}

template <class Storage>
void run_forward(const AttentionProblem& p, int num_threads) {
    const MaskTiles tiles(p);
    const int64_t items = int64_t(p.batch) * p.q_heads * tiles.q_blocks;
    const int workers = worker_count(num_threads, items);
    std::vector<ForwardScratch> scratch(static_cast<std::size_t>(workers));
    parallel_for(items, workers, [&](int worker, int64_t item) {
        scratch[worker].allocate(p);
        forward_item<Storage>(tiles, item, scratch[worker]);
    });
}

template <class Storage>
void run_backward(const AttentionProblem& p, int num_threads) {
    const MaskTiles tiles(p);
    const std::size_t row_count = std::size_t(p.batch) * p.q_heads * p.nq;
    RowTerms terms;
    terms.delta.resize(row_count);
    const int64_t dq_items = int64_t(p.batch) * p.q_heads * tiles.q_blocks;
    const int64_t dkdv_items = int64_t(p.batch) * p.kv_heads * tiles.kv_blocks;
    const int workers = worker_count(num_threads, std::max(dq_items, dkdv_items));
    std::vector<BackwardScratch<Storage>> scratch(static_cast<std::size_t>(workers));
    terms.inverse_sum.resize(row_count);
    parallel_for(dq_items, worker_count(num_threads, dq_items), [&](int worker, int64_t item) {
        scratch[worker].allocate(p);
        delta_from_probabilities_item<Storage>(tiles, item, terms, scratch[worker]);
    });
    parallel_for(dq_items, worker_count(num_threads, dq_items), [&](int worker, int64_t item) {
        scratch[worker].allocate(p);
        dq_item<Storage>(tiles, terms, item, scratch[worker]);
    });
    parallel_for(dkdv_items, worker_count(num_threads, dkdv_items), [&](int worker, int64_t item) {
        scratch[worker].allocate(p);
        dkdv_item<Storage>(tiles, terms, item, scratch[worker]);
    });
}

// Calls run(Storage{}) with the storage format of `problem.dtype`: the one place a dtype becomes
// a compile-time type. `function` names the caller in the error for a dtype with no CPU kernel.
template <class Run>
void with_storage(const AttentionProblem& problem, const char* function, Run run) {
    switch (problem.dtype) {
        case DType::Float32: return run(Float32Storage{});
        case DType::BFloat16: return run(BFloat16Storage{});
        case DType::Float16: return run(Float16Storage{});
        case DType::Float64:  // float64.hpp's path
        case DType::Int32: break;
    }
    throw Error(ErrorCode::WrongDType, "q",
                std::string(function) + ": no CPU kernel for dtype " + to_string(problem.dtype));
}

}  // namespace

void tiled_forward(const AttentionProblem& problem, int num_threads) {
    with_storage(problem, "tiled_forward",
                 [&](auto storage) { run_forward<decltype(storage)>(problem, num_threads); });
}

void tiled_backward(const AttentionProblem& problem, int num_threads) {
    with_storage(problem, "tiled_backward",
                 [&](auto storage) { run_backward<decltype(storage)>(problem, num_threads); });
}

}  // namespace flashmask::cpu
