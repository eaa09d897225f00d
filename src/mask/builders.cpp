// MaskSpec and the builders of the mask catalogue (SPEC §3), from natural parameters.
// Conventions shared by every builder: an empty lower interval is written (N, N) and an empty
// upper interval (0, 0), as the paper's examples do.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "flashmask/mask.hpp"
#include "mask/mask_checks.hpp"

namespace flashmask {

using mask_detail::check_length;
using mask_detail::kLte;
using mask_detail::kLts;
using mask_detail::kUte;
using mask_detail::kUteOfTwo;
using mask_detail::kUts;
using mask_detail::refuse;
using mask_detail::set_index;

// ---------------------------------------------------------------------------------------------
// MaskSpec
// ---------------------------------------------------------------------------------------------

std::vector<int32_t> MaskSpec::vector(int slot) const {
    if (slot < 0 || slot >= slots)
        refuse("slot", "MaskSpec::vector: slot " + std::to_string(slot) + " is not in [0, C) with C = " + std::to_string(slots));
    std::vector<int32_t> values(static_cast<std::size_t>(nk));
    for (int64_t j = 0; j < nk; ++j) values[j] = indices[j * slots + slot];
    return values;
}

std::optional<TensorView> MaskSpec::view() const {
    if (!has_indices()) return std::nullopt;
    // The view type is shared with writable tensors; nothing reached through this one writes.
    return make_contiguous_view(const_cast<int32_t*>(indices.data()), DType::Int32, {1, 1, nk, slots});
}

MaskSpec MaskSpec::zeros(bool causal, int64_t nq, int64_t nk, int32_t slots) {
    MaskSpec spec;
    spec.causal = causal;
    spec.nq = nq;
    spec.nk = nk;
    spec.slots = slots;
    spec.indices.assign(std::size_t(nk * slots), 0);
    return spec;
}

MaskView MaskSpec::mask_view() const {
    MaskView mask = make_mask_view(view(), causal, nq, nk, 1);
    // One sequence's mask serves every batch entry and head: zero strides broadcast it, so the
    // view is safe to read with any (batch, head).
    mask.stride_batch = 0;
    mask.stride_head = 0;
    return mask;
}

// ---------------------------------------------------------------------------------------------
// Builders
// ---------------------------------------------------------------------------------------------
namespace {

MaskSpec square_spec(bool causal, int64_t n, int32_t slots) { return MaskSpec::zeros(causal, n, n, slots); }

// Checks a list of non-negative lengths and returns their sum.
int64_t total_length(const std::vector<int64_t>& lengths, const std::string& argument, const std::string& where) {
    int64_t total = 0;
    for (std::size_t d = 0; d < lengths.size(); ++d) {
        if (lengths[d] < 0)
            refuse(argument, where + ": " + argument + "[" + std::to_string(d) + "] = " + std::to_string(lengths[d]) +
                                 " is negative; expected a length >= 0");
        if (lengths[d] > mask_detail::kMaxSequenceLength - total)
            refuse(argument, where + ": the " + argument + " add up to more than " +
                                 std::to_string(mask_detail::kMaxSequenceLength) + " tokens");
        total += lengths[d];
    }
    return total;
}

// Calls visit(document, start, end) for each document of the given lengths.
template <class Visit>
void for_each_document(const std::vector<int64_t>& lengths, Visit visit) {
    int64_t start = 0;
    for (std::size_t d = 0; d < lengths.size(); ++d) {
        visit(d, start, start + lengths[d]);
        start += lengths[d];
    }
}

}  // namespace

MaskSpec full_mask(int64_t n) {
    check_length(n, "n", "full_mask");
    return square_spec(false, n, 0);
}

MaskSpec causal_mask(int64_t n) {
    check_length(n, "n", "causal_mask");
    return square_spec(true, n, 0);
}

MaskSpec sliding_window_mask(int64_t n, int64_t window) {
    check_length(n, "n", "sliding_window_mask");
    if (window < 1)
        refuse("window", "sliding_window_mask: window must be at least 1 (a row sees itself), got " + std::to_string(window));
    // Row i sees keys (i - window, i]: key j is hidden from rows j + window on.
    MaskSpec spec = square_spec(true, n, 1);
    for (int64_t j = 0; j < n; ++j) set_index(spec, j, kLts, std::min(j + std::min(window, n), n));
    return spec;
}

MaskSpec causal_document_mask(const std::vector<int64_t>& document_lengths) {
    const int64_t n = total_length(document_lengths, "document_lengths", "causal_document_mask");
    MaskSpec spec = square_spec(true, n, 1);
    for_each_document(document_lengths, [&](std::size_t, int64_t start, int64_t end) {
        for (int64_t j = start; j < end; ++j) set_index(spec, j, kLts, end);
    });
    return spec;
}

MaskSpec document_mask(const std::vector<int64_t>& document_lengths) {
    const int64_t n = total_length(document_lengths, "document_lengths", "document_mask");
    MaskSpec spec = square_spec(false, n, 2);
    for_each_document(document_lengths, [&](std::size_t, int64_t start, int64_t end) {
        for (int64_t j = start; j < end; ++j) {
            set_index(spec, j, kLts, end);
            set_index(spec, j, kUteOfTwo, start);
        }
    });
    return spec;
}

MaskSpec share_question_mask(const std::vector<int64_t>& question_lengths,
                             const std::vector<std::vector<int64_t>>& answer_lengths) {
    const std::string where = "share_question_mask";
    if (question_lengths.size() != answer_lengths.size())
        refuse("answer_lengths", where + ": answer_lengths has " + std::to_string(answer_lengths.size()) +
                                     " documents, expected one per question (" + std::to_string(question_lengths.size()) + ")");
    std::vector<int64_t> document_lengths;
    total_length(question_lengths, "question_lengths", where);
    for (std::size_t d = 0; d < answer_lengths.size(); ++d) {
        const std::string argument = "answer_lengths[" + std::to_string(d) + "]";
        document_lengths.push_back(question_lengths[d] + total_length(answer_lengths[d], argument, where));
    }
    const int64_t n = total_length(document_lengths, "question_lengths and answer_lengths", where);
    MaskSpec spec = square_spec(true, n, 1);
    for_each_document(document_lengths, [&](std::size_t d, int64_t start, int64_t end) {
        // The question is seen by every answer of its document; each answer only by itself.
        const int64_t question_end = start + question_lengths[d];
        for (int64_t j = start; j < question_end; ++j) set_index(spec, j, kLts, end);
        for_each_document(answer_lengths[d], [&](std::size_t, int64_t answer_start, int64_t answer_end) {
            for (int64_t j = question_end + answer_start; j < question_end + answer_end; ++j)
                set_index(spec, j, kLts, question_end + answer_end);
        });
    });
    return spec;
}

MaskSpec global_sliding_window_mask(int64_t n, int64_t global_tokens, int64_t window) {
    const std::string where = "global_sliding_window_mask";
    check_length(n, "n", where);
    if (global_tokens < 0 || global_tokens > n)
        refuse("global_tokens", where + ": global_tokens must be in [0, n = " + std::to_string(n) + "], got " +
                                    std::to_string(global_tokens));
    if (window < 1)
        refuse("window", where + ": window must be at least 1 (a row sees itself), got " + std::to_string(window));
    window = std::min(window, n + 1);  // beyond n + 1 nothing changes; keeps j + window in range
    // Global rows (i < g) see every key and global keys (j < g) are seen by every row. Any
    // other key j is seen by the rows (j - window, j + window).
    MaskSpec spec = square_spec(false, n, 4);
    for (int64_t j = 0; j < n; ++j) {
        int64_t lower_start = n, upper_start = 0, upper_end = 0;
        if (j >= global_tokens) {
            lower_start = std::min(j + window, n);
            const int64_t first_visible = j - window + 1;
            if (first_visible > global_tokens) {
                upper_start = global_tokens;
                upper_end = first_visible;
            }
        }
        set_index(spec, j, kLts, lower_start);
        set_index(spec, j, kLte, n);
        set_index(spec, j, kUts, upper_start);
        set_index(spec, j, kUte, upper_end);
    }
    return spec;
}

MaskSpec causal_blockwise_mask(const std::vector<int64_t>& document_lengths) {
    const int64_t n = total_length(document_lengths, "document_lengths", "causal_blockwise_mask");
    // Each document sees itself (causally); the last one sees every earlier document too. So a
    // key of any other document is hidden from the rows between its document's end and the
    // last document's start.
    const int64_t last_start = document_lengths.empty() ? 0 : n - document_lengths.back();
    MaskSpec spec = square_spec(true, n, 2);
    for_each_document(document_lengths, [&](std::size_t, int64_t start, int64_t end) {
        const bool hidden_somewhere = end < last_start;
        for (int64_t j = start; j < end; ++j) {
            set_index(spec, j, kLts, hidden_somewhere ? end : n);
            set_index(spec, j, kLte, hidden_somewhere ? last_start : n);
        }
    });
    return spec;
}

MaskSpec prefix_lm_causal_mask(int64_t n, int64_t prefix_length) {
    const std::string where = "prefix_lm_causal_mask";
    check_length(n, "n", where);
    if (prefix_length < 0 || prefix_length > n)
        refuse("prefix_length", where + ": prefix_length must be in [0, n = " + std::to_string(n) + "], got " +
                                    std::to_string(prefix_length));
    // The prefix is seen by every row; later keys causally.
    MaskSpec spec = square_spec(false, n, 2);
    for (int64_t j = 0; j < n; ++j) {
        set_index(spec, j, kLts, n);
        set_index(spec, j, kUteOfTwo, j < prefix_length ? 0 : j);
    }
    return spec;
}

MaskSpec prefix_lm_document_mask(const std::vector<int64_t>& document_lengths, const std::vector<int64_t>& prefix_lengths) {
    const std::string where = "prefix_lm_document_mask";
    const int64_t n = total_length(document_lengths, "document_lengths", where);
    if (prefix_lengths.size() != document_lengths.size())
        refuse("prefix_lengths", where + ": prefix_lengths has " + std::to_string(prefix_lengths.size()) +
                                     " entries, expected one per document (" + std::to_string(document_lengths.size()) + ")");
    for (std::size_t d = 0; d < prefix_lengths.size(); ++d)
        if (prefix_lengths[d] < 0 || prefix_lengths[d] > document_lengths[d])
            refuse("prefix_lengths", where + ": prefix_lengths[" + std::to_string(d) + "] = " +
                                         std::to_string(prefix_lengths[d]) + " must be in [0, document_lengths[" +
                                         std::to_string(d) + "] = " + std::to_string(document_lengths[d]) + "]");
    // Within each document a prefix-LM: its prefix is seen by all of the document, the rest causally.
    MaskSpec spec = square_spec(false, n, 2);
    for_each_document(document_lengths, [&](std::size_t d, int64_t start, int64_t end) {
        for (int64_t j = start; j < end; ++j) {
            set_index(spec, j, kLts, end);
            set_index(spec, j, kUteOfTwo, j < start + prefix_lengths[d] ? start : j);
        }
    });
    return spec;
}

MaskSpec qk_sparse_mask(int64_t n, const std::vector<RowSpan>& dropped_spans) {
    const std::string where = "qk_sparse_mask";
    check_length(n, "n", where);
    for (std::size_t s = 0; s < dropped_spans.size(); ++s) {
        const RowSpan& span = dropped_spans[s];
        if (span.start < 0 || span.end > n || span.start >= span.end)
            refuse("dropped_spans", where + ": dropped_spans[" + std::to_string(s) + "] = [" + std::to_string(span.start) +
                                        ", " + std::to_string(span.end) + ") must satisfy 0 <= start < end <= n = " +
                                        std::to_string(n));
    }
    std::vector<RowSpan> spans = dropped_spans;
    std::sort(spans.begin(), spans.end(), [](const RowSpan& a, const RowSpan& b) { return a.start < b.start; });
    for (std::size_t s = 1; s < spans.size(); ++s)
        if (spans[s].start < spans[s - 1].end)
            refuse("dropped_spans", where + ": dropped_spans overlap: [" + std::to_string(spans[s - 1].start) + ", " +
                                        std::to_string(spans[s - 1].end) + ") and [" + std::to_string(spans[s].start) +
                                        ", " + std::to_string(spans[s].end) + ")");
    MaskSpec spec = square_spec(true, n, 2);
    for (int64_t j = 0; j < n; ++j) {
        set_index(spec, j, kLts, n);
        set_index(spec, j, kLte, n);
    }
    for (const RowSpan& span : spans)
        for (int64_t j = span.start; j < span.end; ++j) {
            set_index(spec, j, kLts, j);
            set_index(spec, j, kLte, span.end);
        }
    return spec;
}

MaskSpec random_eviction_mask(const std::vector<int32_t>& eviction_rows) {
    const std::string where = "random_eviction_mask";
    const int64_t n = int64_t(eviction_rows.size());
    check_length(n, "eviction_rows.size()", where);
    MaskSpec spec = square_spec(true, n, 1);
    for (int64_t j = 0; j < n; ++j) {
        // A key is seen at least by its own row (j + 1) and at most by every later row (N).
        if (eviction_rows[j] < j + 1 || eviction_rows[j] > n)
            refuse("eviction_rows", where + ": eviction_rows[" + std::to_string(j) + "] = " +
                                        std::to_string(eviction_rows[j]) + " must be in [j + 1, N] = [" +
                                        std::to_string(j + 1) + ", " + std::to_string(n) + "]");
        set_index(spec, j, kLts, eviction_rows[j]);
    }
    return spec;
}

MaskSpec random_eviction_mask(int64_t n, uint64_t seed, double eviction_probability) {
    const std::string where = "random_eviction_mask";
    check_length(n, "n", where);
    if (!(eviction_probability >= 0.0 && eviction_probability <= 1.0))
        refuse("eviction_probability", where + ": eviction_probability must be in [0, 1], got " +
                                           std::to_string(eviction_probability));
    // Integer threshold on 53 random bits: exact for 0 and 1, and the same draws on every platform.
    constexpr int kProbabilityBits = 53;
    const uint64_t threshold = uint64_t(std::ldexp(eviction_probability, kProbabilityBits));
    std::mt19937_64 rng(seed);
    std::vector<int32_t> eviction_rows(static_cast<std::size_t>(n));
    for (int64_t j = 0; j < n; ++j) {
        const bool evicted = (rng() >> (64 - kProbabilityBits)) < threshold;
        eviction_rows[j] = evicted ? int32_t(mask_detail::uniform_int(rng, j + 1, n)) : int32_t(n);
    }
    return random_eviction_mask(eviction_rows);
}

MaskSpec window_mask(int64_t nq, int64_t nk, int64_t left, int64_t right, bool causal) {
    const std::string where = "window_mask";
    check_length(nq, "nq", where);
    check_length(nk, "nk", where);
    const int64_t offset = nk - nq;  // bottom-right alignment
    // Row i sees key j iff i + offset - left <= j <= i + offset + right, i.e. key j is hidden
    // from rows >= j - offset + left + 1 (lower) and from rows < j - offset - right (upper).
    // A window wider than both sequences is unbounded; capping it keeps the arithmetic exact.
    const int64_t unbounded = nq + nk + 1;
    left = left < 0 ? unbounded : std::min(left, unbounded);
    right = right < 0 ? unbounded : std::min(right, unbounded);
    // With causal the upper side is the diagonal itself: C = 1.
    MaskSpec spec = MaskSpec::zeros(causal, nq, nk, causal ? 1 : 2);
    for (int64_t j = 0; j < nk; ++j) {
        set_index(spec, j, kLts, clamp_row(j - offset + left + 1, int32_t(nq)));
        if (!causal) set_index(spec, j, kUteOfTwo, clamp_row(j - offset - right, int32_t(nq)));
    }
    return spec;
}

}  // namespace flashmask
