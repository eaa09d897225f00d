// The mask model on the host: validation, the catalogue of builders (SPEC §3), dense
// converters and block summaries. Everything here costs O(B * Hm * Nk) except the explicit
// dense converters.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "flashmask/key_order.hpp"
#include "flashmask/tiles.hpp"
#include "flashmask/types.hpp"

namespace flashmask {

// ---------------------------------------------------------------------------------------------
// Views and validation
// ---------------------------------------------------------------------------------------------

// Checks the index tensor's dtype (int32), rank (4), shape [B, Hm, Nk, C] against the attention
// problem (Hm in {1, Hk, Hq}, C allowed for `causal`) and strides. Throws Error naming
// "startend_row_indices" otherwise. Does not read values.
void check_mask_shape(const TensorView& startend_row_indices, bool causal, int64_t batch, int64_t nq,
                      int64_t nk, int64_t q_heads, int64_t kv_heads);

// Builds the MaskView for an attention problem. `startend_row_indices` may be absent.
// The shape must already have been checked (check_mask_shape).
MaskView make_mask_view(const std::optional<TensorView>& startend_row_indices, bool causal, int64_t nq,
                        int64_t nk, int64_t q_heads);

// The first index value outside [0, Nq], in (batch, head, column, slot) order.
struct BadMaskValue {
    int64_t batch, head, column, slot;
    int32_t value;
};
// Reads a host index tensor of a checked shape; returns the first bad value, if any.
std::optional<BadMaskValue> find_bad_mask_value(const TensorView& startend_row_indices, int64_t nq);
// Shape check + value check; throws Error(BadMaskValue) naming (b, head, column, slot, value).
void validate_mask(const TensorView& startend_row_indices, bool causal, int64_t nq);

// ---------------------------------------------------------------------------------------------
// An owning host mask for one sequence (B = 1, Hm = 1), as produced by the builders.
// ---------------------------------------------------------------------------------------------
struct MaskSpec {
    bool causal = false;
    int64_t nq = 0, nk = 0;
    int32_t slots = 0;             // C; 0 when there is no index tensor (full or plain causal)
    std::vector<int32_t> indices;  // [Nk, C], slot-minor; empty when slots == 0

    // A mask of the given form whose index values are all 0, for a builder to fill in.
    static MaskSpec zeros(bool causal, int64_t nq, int64_t nk, int32_t slots);

    bool has_indices() const { return slots != 0; }
    // The slot vector `slot` (0..C-1), e.g. LTS for slot 0.
    std::vector<int32_t> vector(int slot) const;
    // A [1, 1, Nk, C] view (indices must outlive it); nullopt when there are no indices.
    std::optional<TensorView> view() const;
    // A view that broadcasts this mask over every batch entry and head (zero strides).
    MaskView mask_view() const;
};

// The catalogue (SPEC §3). N is the sequence length (Nq = Nk = N) unless stated. Lengths may
// be 0 (an empty document is harmless) but not negative, and N is at most 2^31 - 1; a bad
// parameter throws Error(InvalidArgument) naming it. Empty intervals are written as the
// paper's examples write them: lower (N, N), upper (0, 0).
MaskSpec full_mask(int64_t n);
MaskSpec causal_mask(int64_t n);
// Causal; row i sees the `window` keys (i - window, i].
MaskSpec sliding_window_mask(int64_t n, int64_t window);
MaskSpec causal_document_mask(const std::vector<int64_t>& document_lengths);
MaskSpec document_mask(const std::vector<int64_t>& document_lengths);
// One document = a question followed by answers, each answer seeing the question but not the
// other answers. Lengths: question_lengths[d], answer_lengths[d][a].
MaskSpec share_question_mask(const std::vector<int64_t>& question_lengths,
                             const std::vector<std::vector<int64_t>>& answer_lengths);
// Rows i < g see every key, keys j < g are seen by every row, and otherwise row i sees key j
// iff |i - j| < window (the paper's example: n = 10, g = 2, window = 2).
MaskSpec global_sliding_window_mask(int64_t n, int64_t global_tokens, int64_t window);
MaskSpec causal_blockwise_mask(const std::vector<int64_t>& document_lengths);
MaskSpec prefix_lm_causal_mask(int64_t n, int64_t prefix_length);
MaskSpec prefix_lm_document_mask(const std::vector<int64_t>& document_lengths,
                                 const std::vector<int64_t>& prefix_lengths);
// Each span [start, end) is a block of tokens that do not see one another (nor themselves)
// but see everything causally before the span: key j in a span is hidden from rows [j, end).
struct RowSpan { int64_t start, end; };
MaskSpec qk_sparse_mask(int64_t n, const std::vector<RowSpan>& dropped_spans);
// Key j is evicted from row eviction_rows[j] on (values in [j + 1, N]; N = never evicted).
MaskSpec random_eviction_mask(const std::vector<int32_t>& eviction_rows);
// From `seed`: each key is evicted with probability `eviction_probability`, from a row drawn
// uniformly in [j + 1, N]; the others are never evicted. The default 1/2 gives the density of
// SPEC §6's table (0.5 - p / 4 = 0.375 of all pairs for a square mask).
inline constexpr double kDefaultEvictionProbability = 0.5;
MaskSpec random_eviction_mask(int64_t n, uint64_t seed, double eviction_probability = kDefaultEvictionProbability);
// FlashAttention's window_size: row i sees key j iff i + off - left <= j <= i + off + right,
// off = Nk - Nq (bottom-right alignment). A negative left or right means unbounded. With
// causal, right is forced to 0 and the index tensor is C = 1.
MaskSpec window_mask(int64_t nq, int64_t nk, int64_t left, int64_t right, bool causal);

// The catalogue by name, with the standard benchmark parameters of SPEC §6 derived from N
// and a seed (documents of random lengths, window N/8, prefix N/4). Names: full, causal,
// sliding_window, causal_document, document, share_question, global_sliding_window,
// causal_blockwise, prefix_lm_causal, prefix_lm_document, qk_sparse, random_eviction.
const std::vector<std::string>& catalogue_names();
MaskSpec catalogue_mask(const std::string& name, int64_t n, uint64_t seed);

// The natural parameters catalogue_mask() draws for (n, seed), exposed so that tools can print
// them and tests can check a catalogue mask against its natural definition. One draw serves
// every mask, so e.g. causal_document and document share their documents.
struct CatalogueParameters {
    int64_t n = 0;
    std::vector<int64_t> document_lengths;  // 3-10 documents (fewer when n < 3), each >= 1 token
    std::vector<int64_t> prefix_lengths;    // prefix_lm_document: a quarter of each document
    // share_question: each document split into a question and 2-4 answers (fewer when short).
    std::vector<int64_t> question_lengths;
    std::vector<std::vector<int64_t>> answer_lengths;
    int64_t window = 1;         // sliding_window: max(1, N / 8) keys back
    // global_sliding_window: max(1, N / 16) on each side, so that the window spans N / 8
    // (SPEC §6 density 0.15 at 8K), and max(1, N / 64) global tokens, at most N.
    int64_t global_window = 1;
    int64_t global_tokens = 0;
    int64_t prefix_length = 0;  // prefix_lm_causal: N / 4
    std::vector<RowSpan> dropped_spans;  // qk_sparse: 1-3 random non-overlapping spans
    uint64_t eviction_seed = 0;          // random_eviction
};
CatalogueParameters catalogue_parameters(int64_t n, uint64_t seed);

// ---------------------------------------------------------------------------------------------
// Dense converters (the only O(Nq * Nk) code besides the reference)
// ---------------------------------------------------------------------------------------------

// Row-major [Nq, Nk]; 1 = the query row may attend to the key (SDPA / FlexAttention convention).
std::vector<uint8_t> to_dense(const MaskView& mask, int32_t batch, int32_t mask_head);
std::vector<uint8_t> to_dense(const MaskSpec& mask);

// The exact interval form of a dense [Nq, Nk] visibility mask (nonzero = visible) for the
// requested (causal, C); C = 0 asks for no index tensor (the mask must then be full, or plain
// causal). Throws Error(InvalidArgument, "dense_mask") naming the first column that has no such
// form and why (with causal, any visible row above the diagonal), and Error(..., "slots") for
// a C not allowed with `causal`. The result is canonical, so converting it back and forth
// gives the very same indices:
//   * each interval is as small as the column allows (with causal it starts at the diagonal
//     at the earliest); empty lower intervals are (Nq, Nq), empty upper ones (0, 0);
//   * a fully masked column is one lower interval, [0, Nq) or with causal [diagonal, Nq)
//     (not causal, C = 2: LTS = UTE = 0);
//   * C = 4: of two masked runs the upper interval is the one above; a single run is the upper
//     interval only if it starts at row 0 and stops short of Nq, otherwise the lower one.
MaskSpec from_dense(const uint8_t* visible, int64_t nq, int64_t nk, bool causal, int32_t slots);

// ---------------------------------------------------------------------------------------------
// The sorted key order (key_order.hpp): the host twin of the CUDA path's sort
// ---------------------------------------------------------------------------------------------

// The keys of every (batch, mask head) sorted inside windows of `window` keys (the CUDA path
// sorts in kKeyOrderWindow; other windows are for studies), and the sorted problem's mask.
struct SortedKeyOrder {
    int32_t batch = 0, mask_heads = 0, nk = 0;
    std::vector<int32_t> order;    // [batch, mask heads, Nk]: position j holds key order[j]
    std::vector<int32_t> indices;  // [batch, mask heads, Nk, kSortedMaskSlots]: non-causal LTS, LTE, UTS, UTE

    // The sorted mask as a view over `indices` (valid while this object lives), for a problem
    // with `original`'s Nq, Nk and query heads per mask head.
    MaskView mask(const MaskView& original) const;
};
// mask_heads: the number of mask heads of `mask` (1 without an index tensor). Throws
// Error(InvalidArgument, "window") for window < 1.
SortedKeyOrder sorted_key_order(const MaskView& mask, int32_t batch, int32_t mask_heads,
                                int32_t window = kKeyOrderWindow);

// ---------------------------------------------------------------------------------------------
// Block summaries and tile counts
// ---------------------------------------------------------------------------------------------

// Summaries [B, Hm, ceil(Nk / block_n)] for a host MaskView.
std::vector<BlockSummary> block_summaries(const MaskView& mask, int32_t batch, int32_t mask_heads, int32_t block_n);

struct TileCounts {
    int64_t skipped = 0, partial = 0, full = 0;
    int64_t total() const { return skipped + partial + full; }
};
// Counts over every (batch, query head, q block, kv block) tile.
TileCounts count_tiles(const MaskView& mask, int32_t batch, int32_t q_heads, int32_t block_m, int32_t block_n);
// Visible (query, key) pairs, summed over batch and query heads, in O(B * Hq * Nk).
int64_t visible_pairs(const MaskView& mask, int32_t batch, int32_t q_heads);

}  // namespace flashmask
