// The mask catalogue by name, with the "realistic parameters" of SPEC §6 drawn from a seed.
#include <algorithm>
#include <functional>
#include <set>

#include "flashmask/mask.hpp"
#include "mask/mask_checks.hpp"

namespace flashmask {
namespace {

using mask_detail::uniform_int;

// SPEC §6: "3-10 documents of random lengths; window N/8; prefix N/4".
constexpr int64_t kMinDocuments = 3;
constexpr int64_t kMaxDocuments = 10;
constexpr int64_t kWindowDivisor = 8;
// global_sliding_window's window reaches both ways: half of N / 8 on each side.
constexpr int64_t kTwoSidedWindowDivisor = 2 * kWindowDivisor;
constexpr int64_t kPrefixDivisor = 4;
// Not fixed by SPEC: global tokens are a small head of the sequence (1/64, at least one), the
// answers per question are 2-4, as in the paper's share-question figure, and QK-sparse drops
// 1-3 spans.
constexpr int64_t kGlobalTokenDivisor = 64;
constexpr int64_t kMinAnswers = 2;
constexpr int64_t kMaxAnswers = 4;
constexpr int64_t kMinDroppedSpans = 1;
constexpr int64_t kMaxDroppedSpans = 3;

// `count` distinct values of [lo, hi] in increasing order (count <= hi - lo + 1), by Floyd's
// sampling: O(count log count) whatever the range.
std::vector<int64_t> distinct_sorted(std::mt19937_64& rng, int64_t count, int64_t lo, int64_t hi) {
    std::set<int64_t> chosen;
    for (int64_t top = hi - count + 1; top <= hi; ++top) {
        const int64_t t = uniform_int(rng, lo, top);
        chosen.insert(chosen.count(t) ? top : t);
    }
    return {chosen.begin(), chosen.end()};
}

// `parts` random lengths, each at least 1, adding up to `total` (1 <= parts <= total).
std::vector<int64_t> random_split(std::mt19937_64& rng, int64_t total, int64_t parts) {
    std::vector<int64_t> cuts = distinct_sorted(rng, parts - 1, 1, total - 1);
    cuts.push_back(total);
    std::vector<int64_t> lengths;
    int64_t previous = 0;
    for (int64_t cut : cuts) {
        lengths.push_back(cut - previous);
        previous = cut;
    }
    return lengths;
}

}  // namespace

CatalogueParameters catalogue_parameters(int64_t n, uint64_t seed) {
    mask_detail::check_length(n, "n", "catalogue_parameters");
    std::mt19937_64 rng(seed);
    CatalogueParameters p;
    p.n = n;
    // Short sequences get fewer documents, never an empty one.
    const int64_t documents = std::min(uniform_int(rng, kMinDocuments, kMaxDocuments), n);
    if (documents > 0) p.document_lengths = random_split(rng, n, documents);
    for (int64_t length : p.document_lengths) {
        p.prefix_lengths.push_back(length / kPrefixDivisor);
        // A question and up to 2-4 answers, each at least one token.
        const int64_t answers = std::min(uniform_int(rng, kMinAnswers, kMaxAnswers), length - 1);
        std::vector<int64_t> parts = random_split(rng, length, 1 + answers);
        p.question_lengths.push_back(parts.front());
        p.answer_lengths.emplace_back(parts.begin() + 1, parts.end());
    }
    p.window = std::max<int64_t>(1, n / kWindowDivisor);
    p.global_window = std::max<int64_t>(1, n / kTwoSidedWindowDivisor);
    p.global_tokens = std::min(n, std::max<int64_t>(1, n / kGlobalTokenDivisor));
    p.prefix_length = n / kPrefixDivisor;
    // Spans are consecutive pairs of distinct boundaries in [0, N], hence disjoint and non-empty.
    const int64_t spans = std::min(uniform_int(rng, kMinDroppedSpans, kMaxDroppedSpans), (n + 1) / 2);
    const std::vector<int64_t> bounds = distinct_sorted(rng, 2 * spans, 0, n);
    for (int64_t s = 0; s < spans; ++s) p.dropped_spans.push_back({bounds[2 * s], bounds[2 * s + 1]});
    p.eviction_seed = seed;
    return p;
}

namespace {

using Builder = std::function<MaskSpec(const CatalogueParameters&)>;

// The twelve masks of SPEC §3, in its order.
const std::vector<std::pair<std::string, Builder>>& catalogue() {
    static const std::vector<std::pair<std::string, Builder>> entries = {
        {"full", [](const CatalogueParameters& p) { return full_mask(p.n); }},
        {"causal", [](const CatalogueParameters& p) { return causal_mask(p.n); }},
        {"sliding_window", [](const CatalogueParameters& p) { return sliding_window_mask(p.n, p.window); }},
        {"causal_document", [](const CatalogueParameters& p) { return causal_document_mask(p.document_lengths); }},
        {"document", [](const CatalogueParameters& p) { return document_mask(p.document_lengths); }},
        {"share_question",
         [](const CatalogueParameters& p) { return share_question_mask(p.question_lengths, p.answer_lengths); }},
        {"global_sliding_window",
         [](const CatalogueParameters& p) { return global_sliding_window_mask(p.n, p.global_tokens, p.global_window); }},
        {"causal_blockwise", [](const CatalogueParameters& p) { return causal_blockwise_mask(p.document_lengths); }},
        {"prefix_lm_causal", [](const CatalogueParameters& p) { return prefix_lm_causal_mask(p.n, p.prefix_length); }},
        {"prefix_lm_document",
         [](const CatalogueParameters& p) { return prefix_lm_document_mask(p.document_lengths, p.prefix_lengths); }},
        {"qk_sparse", [](const CatalogueParameters& p) { return qk_sparse_mask(p.n, p.dropped_spans); }},
        {"random_eviction", [](const CatalogueParameters& p) { return random_eviction_mask(p.n, p.eviction_seed); }},
    };
    return entries;
}

}  // namespace

const std::vector<std::string>& catalogue_names() {
    static const std::vector<std::string> names = [] {
        std::vector<std::string> list;
        for (const auto& entry : catalogue()) list.push_back(entry.first);
        return list;
    }();
    return names;
}

MaskSpec catalogue_mask(const std::string& name, int64_t n, uint64_t seed) {
    for (const auto& [entry_name, build] : catalogue())
        if (entry_name == name) return build(catalogue_parameters(n, seed));
    std::string valid;
    for (const std::string& known : catalogue_names()) valid += (valid.empty() ? "" : ", ") + known;
    throw Error(ErrorCode::InvalidArgument, "name", "unknown mask '" + name + "'; expected one of: " + valid);
}

}  // namespace flashmask
