// Dense converters: the only O(Nq * Nk) code of the mask model. to_dense() reads through
// column_intervals(), the one reading every path shares; from_dense() is its exact inverse.
#include <algorithm>

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

std::vector<uint8_t> to_dense(const MaskView& mask, int32_t batch, int32_t mask_head) {
    if (batch < 0) refuse("batch", "to_dense: batch must be >= 0, got " + std::to_string(batch));
    if (mask_head < 0) refuse("mask_head", "to_dense: mask_head must be >= 0, got " + std::to_string(mask_head));
    const int64_t nq = mask.nq, nk = mask.nk;
    std::vector<uint8_t> visible(std::size_t(nq * nk), 1);
    for (int32_t j = 0; j < mask.nk; ++j) {
        const ColumnIntervals c = column_intervals(mask, batch, mask_head, j);
        for (int64_t i = c.lower_start; i < c.lower_end; ++i) visible[i * nk + j] = 0;
        for (int64_t i = c.upper_start; i < c.upper_end; ++i) visible[i * nk + j] = 0;
    }
    return visible;
}

std::vector<uint8_t> to_dense(const MaskSpec& mask) { return to_dense(mask.mask_view(), 0, 0); }

namespace {

// A maximal run [start, end) of masked rows within one column.
struct MaskedRun {
    int64_t start, end;
};

std::string rows_string(const MaskedRun& run) {
    std::string text = "[";  // built by appending: GCC 12 warns falsely on "[" + std::string
    text += std::to_string(run.start);
    text += ", ";
    text += std::to_string(run.end);
    return text + ")";
}

std::string kind_string(bool causal, int32_t slots) {
    return std::string("causal = ") + (causal ? "true" : "false") + ", C = " + std::to_string(slots);
}

// No layout has more than two intervals, so two runs and the start of a third say it all.
constexpr std::size_t kRunsNeeded = 3;

}  // namespace

MaskSpec from_dense(const uint8_t* visible, int64_t nq, int64_t nk, bool causal, int32_t slots) {
    const std::string where = "from_dense";
    check_length(nq, "nq", where);
    check_length(nk, "nk", where);
    if (visible == nullptr && nq * nk > 0) refuse("dense_mask", where + ": dense_mask is null");
    const MaskLayout layout = mask_layout_for(causal, slots);
    if (slots != 0 && layout == MaskLayout::None)
        refuse("slots", where + ": C = " + std::to_string(slots) + " is not allowed with causal = " +
                            (causal ? "true (expected 0, 1 or 2)" : "false (expected 0, 2 or 4)"));

    MaskSpec spec = MaskSpec::zeros(causal, nq, nk, slots);

    const int64_t offset = nk - nq;  // bottom-right aligned causal diagonal
    std::vector<MaskedRun> runs;
    for (int64_t j = 0; j < nk; ++j) {
        auto is_visible = [&](int64_t i) { return visible[i * nk + j] != 0; };
        auto refuse_column = [&](const std::string& why) {
            refuse("dense_mask", where + ": column " + std::to_string(j) + " of the dense mask has no interval form for " +
                                     kind_string(causal, slots) + ": " + why);
        };
        // With causal the rows above the diagonal are masked whatever the indices say.
        const int64_t first_row = causal ? std::clamp<int64_t>(j - offset, 0, nq) : 0;
        for (int64_t i = 0; i < first_row; ++i)
            if (is_visible(i))
                refuse_column("row " + std::to_string(i) + " is visible but lies above the causal diagonal (rows < " +
                              std::to_string(first_row) + " are hidden from this key)");

        runs.clear();
        for (int64_t i = first_row; i < nq && runs.size() < kRunsNeeded;) {
            if (is_visible(i)) { ++i; continue; }
            const int64_t start = i;
            while (i < nq && !is_visible(i)) ++i;
            runs.push_back({start, i});
        }
        const bool reaches_top = !runs.empty() && runs.front().start == 0;
        const bool reaches_bottom = !runs.empty() && runs.back().end == nq;
        auto runs_string = [&] {
            std::string text;
            for (const MaskedRun& run : runs) text += (text.empty() ? "" : ", ") + rows_string(run);
            return text + (runs.size() == kRunsNeeded ? ", ..." : "");
        };

        switch (layout) {
            case MaskLayout::None:
                if (!runs.empty())
                    refuse_column("rows " + runs_string() + " are masked, but without an index tensor no row can be");
                break;
            case MaskLayout::CausalLower:  // [LTS, Nq)
                if (runs.size() > 1 || (runs.size() == 1 && !reaches_bottom))
                    refuse_column("masked rows " + runs_string() + " below the diagonal are not one range ending at Nq = " +
                                  std::to_string(nq) + " ([LTS, Nq))");
                set_index(spec, j, kLts, runs.empty() ? nq : runs.front().start);
                break;
            case MaskLayout::CausalLowerBounded:  // [LTS, LTE)
                if (runs.size() > 1)
                    refuse_column("masked rows " + runs_string() + " below the diagonal are not one range ([LTS, LTE))");
                set_index(spec, j, kLts, runs.empty() ? nq : runs.front().start);
                set_index(spec, j, kLte, runs.empty() ? nq : runs.front().end);
                break;
            case MaskLayout::LowerUpper: {  // [LTS, Nq) and [0, UTE)
                // Allowed: no run, a run from row 0, a run to Nq, or one of each. A fully masked
                // column is written as lower = [0, Nq), upper empty.
                const bool fully_masked = runs.size() == 1 && reaches_top && reaches_bottom;
                const bool fits = runs.empty() || fully_masked ||
                                  (runs.size() == 1 && (reaches_top || reaches_bottom)) ||
                                  (runs.size() == 2 && reaches_top && reaches_bottom);
                if (!fits)
                    refuse_column("masked rows " + runs_string() +
                                  " are not a range from row 0 ([0, UTE)) and a range to Nq ([LTS, Nq))");
                const bool has_upper = reaches_top && !fully_masked;
                const bool has_lower = reaches_bottom;
                set_index(spec, j, kLts, has_lower ? runs.back().start : nq);
                set_index(spec, j, kUteOfTwo, has_upper ? runs.front().end : 0);
                break;
            }
            case MaskLayout::LowerUpperBounded: {  // [LTS, LTE) and [UTS, UTE)
                if (runs.size() > 2) refuse_column("masked rows " + runs_string() + " form more than two ranges");
                // Two runs: the upper interval is the one above. One run: it is the upper
                // interval only when it starts at row 0 and stops short of Nq; otherwise lower.
                const bool single_upper = runs.size() == 1 && reaches_top && !reaches_bottom;
                const bool has_upper = runs.size() == 2 || single_upper;
                const bool has_lower = runs.size() == 2 || (runs.size() == 1 && !single_upper);
                set_index(spec, j, kLts, has_lower ? runs.back().start : nq);
                set_index(spec, j, kLte, has_lower ? runs.back().end : nq);
                set_index(spec, j, kUts, has_upper ? runs.front().start : 0);
                set_index(spec, j, kUte, has_upper ? runs.front().end : 0);
                break;
            }
        }
    }
    return spec;
}

}  // namespace flashmask
