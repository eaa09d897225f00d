// The masks of the flashmask tool: a catalogue mask by name (SPEC §3) for any Nq x Nk, its
// natural parameters in words, and its density and tile counts (SPEC §4).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "cli_args.hpp"
#include "cli_format.hpp"
#include "cpu/tiled.hpp"
#include "flashmask/mask.hpp"

namespace flashmask::cli {

namespace fm = ::flashmask;

// Tile counts are printed for the CPU path's blocks (the tiles its kernels skip or mask).
inline constexpr int32_t kDefaultBlockM = fm::cpu::kBlockM;
inline constexpr int32_t kDefaultBlockN = fm::cpu::kBlockN;

inline std::string mask_names_list() { return ParsedArgs::join(fm::catalogue_names(), ", "); }

inline void check_mask_name(const std::string& name) {
    const auto& names = fm::catalogue_names();
    if (std::find(names.begin(), names.end(), name) == names.end())
        throw UsageError("--mask: unknown mask '" + name + "' (expected one of: " + mask_names_list() + ")");
}

// The Nq x Nk mask the tool runs. The catalogue defines square masks; for Nq != Nk the tool
// takes the bottom-right Nq x Nk corner of the N x N catalogue mask, N = max(Nq, Nk): the
// queries are the last Nq rows (a prefill chunk or decoding step over a longer context), or
// the keys the last Nk columns. That is the alignment SPEC §2 gives `causal`, so the corner's
// own causal diagonal is the square mask's.
inline fm::MaskSpec catalogue_corner(const std::string& name, int64_t nq, int64_t nk, uint64_t seed) {
    const int64_t n = std::max(nq, nk);
    fm::MaskSpec square = fm::catalogue_mask(name, n, seed);
    if (nq == nk) return square;
    fm::MaskSpec corner = fm::MaskSpec::zeros(square.causal, nq, nk, square.slots);
    const int64_t row_offset = n - nq, column_offset = n - nk;  // one of the two is 0
    for (int64_t j = 0; j < nk; ++j)
        for (int32_t slot = 0; slot < corner.slots; ++slot) {
            // A masked row interval [a, b) of the square is [a - offset, b - offset) of the corner,
            // clamped to its rows; every slot value is a row bound, so each shifts alike.
            const int64_t value = square.indices[std::size_t((j + column_offset) * square.slots + slot)];
            corner.indices[std::size_t(j * corner.slots + slot)] = fm::clamp_row(value - row_offset, int32_t(nq));
        }
    return corner;
}

// The natural parameters of a catalogue mask, in words.
inline std::string describe_parameters(const std::string& name, int64_t n, uint64_t seed) {
    if (name == "full" || name == "causal") return "none";
    const fm::CatalogueParameters p = fm::catalogue_parameters(n, seed);
    const std::string documents = std::to_string(p.document_lengths.size()) + " documents, lengths " +
                                  join_numbers(p.document_lengths);
    if (name == "sliding_window") return "window " + std::to_string(p.window);
    if (name == "causal_document" || name == "document") return documents;
    if (name == "causal_blockwise") return documents + " (the last sees all earlier ones)";
    if (name == "global_sliding_window")
        return std::to_string(p.global_tokens) + " global tokens, window " + std::to_string(p.global_window) + " on each side";
    if (name == "prefix_lm_causal") return "prefix " + std::to_string(p.prefix_length);
    if (name == "prefix_lm_document") return documents + "; prefixes " + join_numbers(p.prefix_lengths);
    if (name == "share_question") {
        std::string out = documents + "; question + answers:";
        for (std::size_t d = 0; d < p.question_lengths.size(); ++d)
            out += " " + std::to_string(p.question_lengths[d]) + "+(" + join_numbers(p.answer_lengths[d]) + ")";
        return out;
    }
    if (name == "qk_sparse") {
        std::string out = std::to_string(p.dropped_spans.size()) + " dropped spans:";
        for (const auto& span : p.dropped_spans) out += format(" [%lld, %lld)", (long long)span.start, (long long)span.end);
        return out;
    }
    if (name == "random_eviction")
        return format("each key evicted with probability %g, from a row uniform in [j + 1, N]; seed ",
                      fm::kDefaultEvictionProbability) +
               std::to_string(p.eviction_seed);
    return "";
}

// Density and tile counts of a mask, summed over `heads` (batch, query head) pairs.
struct MaskStats {
    int64_t heads = 1, nq = 0, nk = 0;
    int64_t visible_pairs = 0;
    double density = 0.0;
    int32_t block_m = 0, block_n = 0;
    fm::TileCounts tiles;
};

inline MaskStats mask_stats(const fm::MaskView& view, int32_t batch, int32_t q_heads, int32_t block_m, int32_t block_n) {
    MaskStats st;
    st.heads = int64_t(batch) * q_heads;
    st.nq = view.nq;
    st.nk = view.nk;
    st.visible_pairs = fm::visible_pairs(view, batch, q_heads);
    st.density = double(st.visible_pairs) / (double(st.heads) * double(view.nq) * double(view.nk));
    st.block_m = block_m;
    st.block_n = block_n;
    st.tiles = fm::count_tiles(view, batch, q_heads, block_m, block_n);
    return st;
}

inline double percent(int64_t part, int64_t total) { return total ? 100.0 * double(part) / double(total) : 0.0; }

inline void print_stats(const MaskStats& st, const std::string& block_origin) {
    const std::string scope = st.heads == 1 ? "per head" : "over " + with_commas(st.heads) + " (batch, query head) pairs";
    std::printf("density      %.4f (%s of %s pairs visible %s)\n", st.density, with_commas(st.visible_pairs).c_str(),
                with_commas(st.heads * st.nq * st.nk).c_str(), scope.c_str());
    const int64_t total = st.tiles.total();
    std::printf("tiles        %d x %d blocks (%s), %s tile%s %s\n", st.block_m, st.block_n, block_origin.c_str(),
                with_commas(total).c_str(), total == 1 ? "" : "s", scope.c_str());
    const std::string width = std::to_string(std::max<std::size_t>(1, with_commas(total).size()));
    const std::string row = "               %-8s %" + width + "s  %5.1f %%\n";
    std::printf(row.c_str(), "skipped", with_commas(st.tiles.skipped).c_str(), percent(st.tiles.skipped, total));
    std::printf(row.c_str(), "partial", with_commas(st.tiles.partial).c_str(), percent(st.tiles.partial, total));
    std::printf(row.c_str(), "full", with_commas(st.tiles.full).c_str(), percent(st.tiles.full, total));
}

inline void add_stats_json(JsonObject& j, const MaskStats& st) {
    j.integer("heads_counted", st.heads).integer("visible_pairs", st.visible_pairs).number("density", st.density);
    JsonObject tiles;
    tiles.integer("block_m", st.block_m).integer("block_n", st.block_n).integer("total", st.tiles.total());
    tiles.integer("skipped", st.tiles.skipped).integer("partial", st.tiles.partial).integer("full", st.tiles.full);
    j.add("tiles", tiles.str());
}

// A catalogue mask and its statistics per (batch, head): the mask is the same for every one.
struct MaskReport {
    std::string name, parameters, corner_note;
    fm::MaskSpec spec;
    MaskStats stats;
    bool keys_sorted = false;  // the stats count the keys in the CUDA path's sorted order (key_order.hpp)
};

// keys_sorted: count the tiles of the key-sorted problem (sorted_key_order(), mask.hpp) instead.
inline MaskReport analyse_mask(const std::string& name, int64_t nq, int64_t nk, uint64_t seed, int32_t block_m,
                               int32_t block_n, bool keys_sorted) {
    MaskReport r;
    r.name = name;
    r.spec = catalogue_corner(name, nq, nk, seed);
    r.parameters = describe_parameters(name, std::max(nq, nk), seed);
    if (nq != nk)
        r.corner_note = format("bottom-right %lld x %lld corner of the %lld x %lld mask", (long long)nq, (long long)nk,
                               (long long)std::max(nq, nk), (long long)std::max(nq, nk));
    r.keys_sorted = keys_sorted;
    const fm::MaskView view = r.spec.mask_view();
    if (keys_sorted) {
        const fm::SortedKeyOrder sorted = fm::sorted_key_order(view, 1, 1);
        r.stats = mask_stats(sorted.mask(view), 1, 1, block_m, block_n);
    } else {
        r.stats = mask_stats(view, 1, 1, block_m, block_n);
    }
    return r;
}

inline void print_mask_report(const MaskReport& r, const std::string& block_origin) {
    const fm::MaskSpec& m = r.spec;
    const std::string layout = m.has_indices() ? "C = " + std::to_string(m.slots) : std::string("no index tensor");
    std::printf("mask         %s (causal = %s, %s)\n", r.name.c_str(), m.causal ? "true" : "false", layout.c_str());
    std::printf("parameters   %s\n", r.parameters.c_str());
    if (!r.corner_note.empty()) std::printf("             %s\n", r.corner_note.c_str());
    std::printf("sizes        Nq = %lld, Nk = %lld\n", (long long)m.nq, (long long)m.nk);
    if (r.keys_sorted)
        std::printf("keys         sorted by their intervals in windows of %d (the CUDA path's key order 'sorted')\n",
                    int(fm::kKeyOrderWindow));
    print_stats(r.stats, block_origin);
}

inline JsonObject mask_json(const MaskReport& r) {
    JsonObject j;
    j.text("name", r.name).boolean("causal", r.spec.causal).integer("slots", r.spec.slots);
    j.text("parameters", r.parameters).integer("nq", r.spec.nq).integer("nk", r.spec.nk);
    if (!r.corner_note.empty()) j.text("corner", r.corner_note);
    j.text("tiles_key_order", r.keys_sorted ? "sorted" : "natural");
    add_stats_json(j, r.stats);
    return j;
}

}  // namespace flashmask::cli
