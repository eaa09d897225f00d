// The mask catalogue (SPEC §3): the paper's N = 10 examples, each builder against a brute-force
// reading of its natural definition on random parameters, parameter refusals, and the
// catalogue by name with realistic parameters (SPEC §6).
#include <algorithm>
#include <functional>
#include <numeric>

#include "test_mask_util.hpp"
#include "test_util.hpp"

namespace flashmask {
namespace {

using testing::spec_dense;
using testing::test_rng;
using Vec = std::vector<int32_t>;

// -------------------------------------------------------------------------------------------
// The paper's examples for N = 10 (the only hard-coded results allowed)
// -------------------------------------------------------------------------------------------

TEST(PaperExamples, CausalDocument) {
    const MaskSpec m = causal_document_mask({4, 3, 3});
    EXPECT_TRUE(m.causal);
    EXPECT_EQ(m.slots, 1);
    EXPECT_EQ(m.vector(0), (Vec{4, 4, 4, 4, 7, 7, 7, 10, 10, 10}));
}

TEST(PaperExamples, Document) {
    const MaskSpec m = document_mask({4, 3, 3});
    EXPECT_FALSE(m.causal);
    EXPECT_EQ(m.slots, 2);
    EXPECT_EQ(m.vector(0), (Vec{4, 4, 4, 4, 7, 7, 7, 10, 10, 10}));
    EXPECT_EQ(m.vector(1), (Vec{0, 0, 0, 0, 4, 4, 4, 7, 7, 7}));
}

TEST(PaperExamples, ShareQuestion) {
    const MaskSpec m = share_question_mask({4}, {{3, 3}});
    EXPECT_TRUE(m.causal);
    EXPECT_EQ(m.slots, 1);
    EXPECT_EQ(m.vector(0), (Vec{10, 10, 10, 10, 7, 7, 7, 10, 10, 10}));
}

TEST(PaperExamples, GlobalSlidingWindow) {
    const MaskSpec m = global_sliding_window_mask(10, 2, 2);
    EXPECT_FALSE(m.causal);
    EXPECT_EQ(m.slots, 4);
    EXPECT_EQ(m.vector(0), (Vec{10, 10, 4, 5, 6, 7, 8, 9, 10, 10}));
    EXPECT_EQ(m.vector(1), (Vec(10, 10)));
    EXPECT_EQ(m.vector(2), (Vec{0, 0, 0, 0, 2, 2, 2, 2, 2, 2}));
    EXPECT_EQ(m.vector(3), (Vec{0, 0, 0, 0, 3, 4, 5, 6, 7, 8}));
}

TEST(PaperExamples, CausalBlockwise) {
    const MaskSpec m = causal_blockwise_mask({4, 3, 3});
    EXPECT_TRUE(m.causal);
    EXPECT_EQ(m.slots, 2);
    EXPECT_EQ(m.vector(0), (Vec{4, 4, 4, 4, 10, 10, 10, 10, 10, 10}));
    EXPECT_EQ(m.vector(1), (Vec{7, 7, 7, 7, 10, 10, 10, 10, 10, 10}));
}

TEST(PaperExamples, PrefixLmCausal) {
    const MaskSpec m = prefix_lm_causal_mask(10, 5);
    EXPECT_FALSE(m.causal);
    EXPECT_EQ(m.slots, 2);
    EXPECT_EQ(m.vector(0), (Vec(10, 10)));
    EXPECT_EQ(m.vector(1), (Vec{0, 0, 0, 0, 0, 5, 6, 7, 8, 9}));
}

TEST(PaperExamples, PrefixLmDocument) {
    const MaskSpec m = prefix_lm_document_mask({3, 2, 5}, {2, 2, 2});
    EXPECT_FALSE(m.causal);
    EXPECT_EQ(m.slots, 2);
    EXPECT_EQ(m.vector(0), (Vec{3, 3, 3, 5, 5, 10, 10, 10, 10, 10}));
    EXPECT_EQ(m.vector(1), (Vec{0, 0, 2, 3, 3, 5, 5, 7, 8, 9}));
}

TEST(PaperExamples, QkSparseMatchesThePaperDensely) {
    // The paper writes column 5 (just after the span [2, 5)) as an empty (5, 5), the builder
    // as the canonical empty (10, 10): the same mask, so compare densely.
    const MaskSpec m = qk_sparse_mask(10, {{2, 5}, {6, 8}});
    EXPECT_TRUE(m.causal);
    EXPECT_EQ(m.slots, 2);
    MaskSpec paper = m;
    const Vec lts = {10, 10, 2, 3, 4, 5, 6, 7, 10, 10}, lte = {10, 10, 5, 5, 5, 5, 8, 8, 10, 10};
    for (int j = 0; j < 10; ++j) {
        paper.indices[2 * j] = lts[j];
        paper.indices[2 * j + 1] = lte[j];
    }
    EXPECT_EQ(to_dense(m), to_dense(paper));
    EXPECT_EQ(to_dense(m), spec_dense(paper));
}

TEST(PaperExamples, FullAndCausalHaveNoIndices) {
    EXPECT_FALSE(full_mask(10).has_indices());
    EXPECT_FALSE(full_mask(10).causal);
    EXPECT_FALSE(causal_mask(10).has_indices());
    EXPECT_TRUE(causal_mask(10).causal);
    EXPECT_FALSE(full_mask(10).view().has_value());
}

// -------------------------------------------------------------------------------------------
// Natural definitions, brute force
// -------------------------------------------------------------------------------------------

using Visible = std::function<bool(int64_t i, int64_t j)>;

// Asserts that `m` shows exactly the pairs `visible` allows, both via to_dense() and via the
// literal SPEC table.
void expect_matches(const MaskSpec& m, const Visible& visible, const std::string& what) {
    const std::vector<uint8_t> dense = to_dense(m);
    ASSERT_EQ(dense, spec_dense(m)) << what;
    for (int64_t i = 0; i < m.nq; ++i)
        for (int64_t j = 0; j < m.nk; ++j)
            ASSERT_EQ(dense[i * m.nk + j] != 0, visible(i, j)) << what << ": row " << i << ", key " << j;
}

// Document index of every token.
std::vector<int64_t> document_of(const std::vector<int64_t>& lengths) {
    std::vector<int64_t> owner;
    for (std::size_t d = 0; d < lengths.size(); ++d) owner.insert(owner.end(), std::size_t(lengths[d]), int64_t(d));
    return owner;
}

std::vector<int64_t> starts_of(const std::vector<int64_t>& lengths) {
    std::vector<int64_t> starts(lengths.size(), 0);
    for (std::size_t d = 1; d < lengths.size(); ++d) starts[d] = starts[d - 1] + lengths[d - 1];
    return starts;
}

std::vector<int64_t> random_lengths(std::mt19937_64& rng, int64_t count, int64_t max_length, int64_t min_length = 0) {
    std::uniform_int_distribution<int64_t> length(min_length, max_length);
    std::vector<int64_t> lengths(static_cast<std::size_t>(count));
    for (auto& l : lengths) l = length(rng);
    return lengths;
}

// Each checker below states the mask's natural definition; `p` holds its parameters.
void check_causal_document(const std::vector<int64_t>& lengths, const MaskSpec& m) {
    const auto doc = document_of(lengths);
    expect_matches(m, [&](int64_t i, int64_t j) { return j <= i && doc[i] == doc[j]; }, "causal_document");
}

void check_document(const std::vector<int64_t>& lengths, const MaskSpec& m) {
    const auto doc = document_of(lengths);
    expect_matches(m, [&](int64_t i, int64_t j) { return doc[i] == doc[j]; }, "document");
}

void check_causal_blockwise(const std::vector<int64_t>& lengths, const MaskSpec& m) {
    const auto doc = document_of(lengths);
    const int64_t last = int64_t(lengths.size()) - 1;
    expect_matches(m, [&](int64_t i, int64_t j) { return j <= i && (doc[i] == doc[j] || doc[i] == last); },
                   "causal_blockwise");
}

void check_prefix_lm_document(const std::vector<int64_t>& lengths, const std::vector<int64_t>& prefixes,
                              const MaskSpec& m) {
    const auto doc = document_of(lengths);
    const auto starts = starts_of(lengths);
    expect_matches(m,
                   [&](int64_t i, int64_t j) {
                       return doc[i] == doc[j] && (j < starts[doc[j]] + prefixes[doc[j]] || j <= i);
                   },
                   "prefix_lm_document");
}

void check_share_question(const std::vector<int64_t>& questions, const std::vector<std::vector<int64_t>>& answers,
                          const MaskSpec& m) {
    // Token t: its document, and its answer within the document (-1 for the question).
    std::vector<int64_t> doc, part;
    for (std::size_t d = 0; d < questions.size(); ++d) {
        doc.insert(doc.end(), std::size_t(questions[d]), int64_t(d));
        part.insert(part.end(), std::size_t(questions[d]), -1);
        for (std::size_t a = 0; a < answers[d].size(); ++a) {
            doc.insert(doc.end(), std::size_t(answers[d][a]), int64_t(d));
            part.insert(part.end(), std::size_t(answers[d][a]), int64_t(a));
        }
    }
    expect_matches(m,
                   [&](int64_t i, int64_t j) {
                       return j <= i && doc[i] == doc[j] && (part[j] == -1 || part[j] == part[i]);
                   },
                   "share_question");
}

void check_sliding_window(int64_t window, const MaskSpec& m) {
    expect_matches(m, [&](int64_t i, int64_t j) { return j <= i && i - j < window; }, "sliding_window");
}

void check_global_sliding_window(int64_t global_tokens, int64_t window, const MaskSpec& m) {
    expect_matches(m,
                   [&](int64_t i, int64_t j) {
                       return i < global_tokens || j < global_tokens || std::abs(i - j) < window;
                   },
                   "global_sliding_window");
}

void check_prefix_lm_causal(int64_t prefix, const MaskSpec& m) {
    expect_matches(m, [&](int64_t i, int64_t j) { return j < prefix || j <= i; }, "prefix_lm_causal");
}

void check_qk_sparse(const std::vector<RowSpan>& spans, const MaskSpec& m) {
    expect_matches(m,
                   [&](int64_t i, int64_t j) {
                       // Tokens of one span see neither one another nor themselves.
                       for (const RowSpan& s : spans)
                           if (s.start <= j && j < s.end && s.start <= i && i < s.end) return false;
                       return j <= i;
                   },
                   "qk_sparse");
}

void check_random_eviction(const std::vector<int32_t>& rows, const MaskSpec& m) {
    expect_matches(m, [&](int64_t i, int64_t j) { return j <= i && i < rows[j]; }, "random_eviction");
}

constexpr int kRandomTrials = 20;

TEST(Builders, DocumentMasksMatchTheirDefinition) {
    auto rng = test_rng();
    std::uniform_int_distribution<int64_t> count(0, 6);
    for (int t = 0; t < kRandomTrials; ++t) {
        const auto lengths = random_lengths(rng, count(rng), 9);  // zero-length documents included
        check_causal_document(lengths, causal_document_mask(lengths));
        check_document(lengths, document_mask(lengths));
        check_causal_blockwise(lengths, causal_blockwise_mask(lengths));
        std::vector<int64_t> prefixes;
        for (int64_t l : lengths) prefixes.push_back(std::uniform_int_distribution<int64_t>(0, l)(rng));
        check_prefix_lm_document(lengths, prefixes, prefix_lm_document_mask(lengths, prefixes));
        std::vector<int64_t> questions = random_lengths(rng, int64_t(lengths.size()), 5);
        std::vector<std::vector<int64_t>> answers;
        for (std::size_t d = 0; d < lengths.size(); ++d) answers.push_back(random_lengths(rng, count(rng) % 4, 5));
        check_share_question(questions, answers, share_question_mask(questions, answers));
    }
}

TEST(Builders, WindowAndPrefixMasksMatchTheirDefinition) {
    auto rng = test_rng();
    std::uniform_int_distribution<int64_t> size(0, 40);
    for (int t = 0; t < kRandomTrials; ++t) {
        const int64_t n = size(rng);
        const int64_t window = std::uniform_int_distribution<int64_t>(1, n + 3)(rng);
        const int64_t global = std::uniform_int_distribution<int64_t>(0, n)(rng);
        check_sliding_window(window, sliding_window_mask(n, window));
        check_global_sliding_window(global, window, global_sliding_window_mask(n, global, window));
        check_prefix_lm_causal(global, prefix_lm_causal_mask(n, global));
    }
}

TEST(Builders, QkSparseAndEvictionMatchTheirDefinition) {
    auto rng = test_rng();
    std::uniform_int_distribution<int64_t> size(0, 40);
    for (int t = 0; t < kRandomTrials; ++t) {
        const int64_t n = size(rng);
        // Disjoint spans from sorted distinct boundaries, given in shuffled order.
        std::vector<int64_t> bounds(static_cast<std::size_t>(n + 1));
        std::iota(bounds.begin(), bounds.end(), 0);
        std::shuffle(bounds.begin(), bounds.end(), rng);
        bounds.resize(std::size_t(std::min<int64_t>(n + 1, 2 * std::uniform_int_distribution<int64_t>(0, 4)(rng))) & ~std::size_t(1));
        std::sort(bounds.begin(), bounds.end());
        std::vector<RowSpan> spans;
        for (std::size_t s = 0; s + 1 < bounds.size(); s += 2) spans.push_back({bounds[s], bounds[s + 1]});
        std::shuffle(spans.begin(), spans.end(), rng);
        check_qk_sparse(spans, qk_sparse_mask(n, spans));

        std::vector<int32_t> rows(static_cast<std::size_t>(n));
        for (int64_t j = 0; j < n; ++j) rows[j] = int32_t(std::uniform_int_distribution<int64_t>(j + 1, n)(rng));
        check_random_eviction(rows, random_eviction_mask(rows));
        const MaskSpec seeded = random_eviction_mask(n, rng());
        for (int64_t j = 0; j < n; ++j) {
            ASSERT_GE(seeded.indices[j], j + 1);
            ASSERT_LE(seeded.indices[j], n);
        }
    }
}

TEST(Builders, WindowSizeMatchesFlashAttention) {
    auto rng = test_rng();
    std::uniform_int_distribution<int64_t> size(0, 30), side(-1, 12);
    for (int t = 0; t < 4 * kRandomTrials; ++t) {
        const int64_t nq = size(rng), nk = size(rng), left = side(rng), right = side(rng);
        const bool causal = t % 2 == 1;
        const MaskSpec m = window_mask(nq, nk, left, right, causal);
        EXPECT_EQ(m.slots, causal ? 1 : 2);
        const int64_t offset = nk - nq;
        expect_matches(m,
                       [&](int64_t i, int64_t j) {
                           const bool left_ok = left < 0 || i + offset - left <= j;
                           const bool right_ok = causal ? j <= i + offset : right < 0 || j <= i + offset + right;
                           return left_ok && right_ok;
                       },
                       "window_mask nq=" + std::to_string(nq) + " nk=" + std::to_string(nk) + " left=" +
                           std::to_string(left) + " right=" + std::to_string(right));
        // Every value the builder writes is meaningful.
        if (const auto view = m.view()) {
            EXPECT_FALSE(find_bad_mask_value(*view, nq).has_value());
        }
    }
}

// -------------------------------------------------------------------------------------------
// Parameter refusals: each names its parameter
// -------------------------------------------------------------------------------------------

void expect_refused(const std::function<void()>& build, const std::string& argument) {
    try {
        build();
        ADD_FAILURE() << "expected an Error about " << argument;
    } catch (const Error& e) {
        EXPECT_EQ(e.code(), ErrorCode::InvalidArgument) << e.what();
        EXPECT_EQ(e.argument(), argument) << e.what();
        EXPECT_NE(std::string(e.what()).find(argument), std::string::npos) << e.what();
    }
}

TEST(Builders, RefuseBadParameters) {
    expect_refused([] { full_mask(-1); }, "n");
    expect_refused([] { causal_mask(int64_t(1) << 31); }, "n");
    expect_refused([] { sliding_window_mask(10, 0); }, "window");
    expect_refused([] { sliding_window_mask(-2, 3); }, "n");
    expect_refused([] { causal_document_mask({3, -1, 2}); }, "document_lengths");
    expect_refused([] { document_mask({-4}); }, "document_lengths");
    expect_refused([] { causal_blockwise_mask({int64_t(1) << 30, int64_t(1) << 30}); }, "document_lengths");
    expect_refused([] { share_question_mask({2, 3}, {{1}}); }, "answer_lengths");
    expect_refused([] { share_question_mask({-2}, {{1}}); }, "question_lengths");
    expect_refused([] { share_question_mask({2}, {{1, -1}}); }, "answer_lengths[0]");
    expect_refused([] { global_sliding_window_mask(10, 11, 2); }, "global_tokens");
    expect_refused([] { global_sliding_window_mask(10, -1, 2); }, "global_tokens");
    expect_refused([] { global_sliding_window_mask(10, 2, 0); }, "window");
    expect_refused([] { prefix_lm_causal_mask(10, 11); }, "prefix_length");
    expect_refused([] { prefix_lm_causal_mask(10, -1); }, "prefix_length");
    expect_refused([] { prefix_lm_document_mask({3, 2}, {1}); }, "prefix_lengths");
    expect_refused([] { prefix_lm_document_mask({3, 2}, {1, 3}); }, "prefix_lengths");
    expect_refused([] { qk_sparse_mask(10, {{2, 11}}); }, "dropped_spans");
    expect_refused([] { qk_sparse_mask(10, {{-1, 3}}); }, "dropped_spans");
    expect_refused([] { qk_sparse_mask(10, {{4, 4}}); }, "dropped_spans");
    expect_refused([] { qk_sparse_mask(10, {{6, 9}, {2, 7}}); }, "dropped_spans");
    expect_refused([] { random_eviction_mask(Vec{3, 1, 3}); }, "eviction_rows");
    expect_refused([] { random_eviction_mask(Vec{1, 4, 3}); }, "eviction_rows");
    expect_refused([] { random_eviction_mask(-5, 1); }, "n");
    expect_refused([] { random_eviction_mask(10, 1, -0.1); }, "eviction_probability");
    expect_refused([] { random_eviction_mask(10, 1, 1.5); }, "eviction_probability");
    expect_refused([] { window_mask(-1, 4, 1, 1, false); }, "nq");
    expect_refused([] { window_mask(4, -1, 1, 1, true); }, "nk");
    expect_refused([] { MaskSpec m = causal_document_mask({2}); m.vector(1); }, "slot");
}

// -------------------------------------------------------------------------------------------
// The catalogue by name
// -------------------------------------------------------------------------------------------

// The (causal, C) each catalogue mask is built with (SPEC §3).
struct Kind {
    bool causal;
    int32_t slots;
};
Kind kind_of(const std::string& name) {
    if (name == "full") return {false, 0};
    if (name == "causal") return {true, 0};
    if (name == "document" || name == "prefix_lm_causal" || name == "prefix_lm_document") return {false, 2};
    if (name == "global_sliding_window") return {false, 4};
    if (name == "causal_blockwise" || name == "qk_sparse") return {true, 2};
    return {true, 1};
}

TEST(Catalogue, HasTheTwelveMasks) {
    EXPECT_EQ(catalogue_names().size(), 12u);
    for (const std::string& name : catalogue_names()) EXPECT_NO_THROW(catalogue_mask(name, 10, 1)) << name;
}

TEST(Catalogue, MasksAreValidForManySizes) {
    auto rng = test_rng();
    for (int64_t n : {0, 1, 2, 3, 17, 100, 1000}) {
        const uint64_t seed = rng();
        for (const std::string& name : catalogue_names()) {
            const MaskSpec m = catalogue_mask(name, n, seed);
            SCOPED_TRACE(name + " n=" + std::to_string(n) + " seed=" + std::to_string(seed));
            EXPECT_EQ(m.nq, n);
            EXPECT_EQ(m.nk, n);
            EXPECT_EQ(m.causal, kind_of(name).causal);
            EXPECT_EQ(m.slots, kind_of(name).slots);
            EXPECT_EQ(m.indices.size(), std::size_t(n * m.slots));
            if (const auto view = m.view()) {
                EXPECT_NO_THROW(validate_mask(*view, m.causal, n));
            }
            // The same seed names the same mask.
            EXPECT_EQ(catalogue_mask(name, n, seed).indices, m.indices);
        }
    }
}

TEST(Catalogue, ParametersAreRealistic) {
    auto rng = test_rng();
    for (int64_t n : {1, 2, 3, 5, 17, 100, 1000, 8192}) {
        for (int trial = 0; trial < 5; ++trial) {
            const uint64_t seed = rng();
            const CatalogueParameters p = catalogue_parameters(n, seed);
            SCOPED_TRACE("n=" + std::to_string(n) + " seed=" + std::to_string(seed));
            const int64_t documents = int64_t(p.document_lengths.size());
            EXPECT_LE(documents, 10);
            EXPECT_GE(documents, std::min<int64_t>(3, n));
            EXPECT_EQ(std::accumulate(p.document_lengths.begin(), p.document_lengths.end(), int64_t(0)), n);
            for (std::size_t d = 0; d < p.document_lengths.size(); ++d) {
                const int64_t length = p.document_lengths[d];
                EXPECT_GE(length, 1);
                EXPECT_EQ(p.prefix_lengths[d], length / 4);
                EXPECT_GE(p.question_lengths[d], 1);
                const auto& answers = p.answer_lengths[d];
                EXPECT_LE(answers.size(), 4u);
                EXPECT_GE(int64_t(answers.size()), std::min<int64_t>(2, length - 1));
                EXPECT_EQ(p.question_lengths[d] + std::accumulate(answers.begin(), answers.end(), int64_t(0)), length);
                for (int64_t a : answers) EXPECT_GE(a, 1);
            }
            EXPECT_EQ(p.window, std::max<int64_t>(1, n / 8));
            EXPECT_EQ(p.global_window, std::max<int64_t>(1, n / 16));
            EXPECT_EQ(p.global_tokens, std::max<int64_t>(1, n / 64));
            EXPECT_EQ(p.prefix_length, n / 4);
            EXPECT_GE(p.dropped_spans.size(), 1u);
            EXPECT_LE(p.dropped_spans.size(), 3u);
            EXPECT_NO_THROW(qk_sparse_mask(n, p.dropped_spans));  // in range, non-empty, disjoint
        }
    }
}

TEST(Catalogue, MasksFollowTheirNaturalDefinition) {
    auto rng = test_rng();
    for (int64_t n : {1, 2, 17, 100}) {
        const uint64_t seed = rng();
        const CatalogueParameters p = catalogue_parameters(n, seed);
        auto by_name = [&](const char* name) { return catalogue_mask(name, n, seed); };
        SCOPED_TRACE("n=" + std::to_string(n) + " seed=" + std::to_string(seed));
        expect_matches(by_name("full"), [](int64_t, int64_t) { return true; }, "full");
        expect_matches(by_name("causal"), [](int64_t i, int64_t j) { return j <= i; }, "causal");
        check_sliding_window(p.window, by_name("sliding_window"));
        check_causal_document(p.document_lengths, by_name("causal_document"));
        check_document(p.document_lengths, by_name("document"));
        check_share_question(p.question_lengths, p.answer_lengths, by_name("share_question"));
        check_global_sliding_window(p.global_tokens, p.global_window, by_name("global_sliding_window"));
        check_causal_blockwise(p.document_lengths, by_name("causal_blockwise"));
        check_prefix_lm_causal(p.prefix_length, by_name("prefix_lm_causal"));
        check_prefix_lm_document(p.document_lengths, p.prefix_lengths, by_name("prefix_lm_document"));
        check_qk_sparse(p.dropped_spans, by_name("qk_sparse"));
        check_random_eviction(by_name("random_eviction").vector(0), by_name("random_eviction"));
        EXPECT_EQ(by_name("random_eviction").indices, random_eviction_mask(n, p.eviction_seed).indices);
    }
}

TEST(Catalogue, UnknownNameListsTheValidOnes) {
    try {
        catalogue_mask("causal_documnet", 16, 1);
        ADD_FAILURE() << "expected an Error";
    } catch (const Error& e) {
        EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
        const std::string message = e.what();
        EXPECT_NE(message.find("causal_documnet"), std::string::npos) << message;
        for (const std::string& name : catalogue_names()) EXPECT_NE(message.find(name), std::string::npos) << message;
    }
    EXPECT_THROW(catalogue_mask("causal", -1, 1), Error);
}

// Probability 0 evicts nothing, 1 evicts every key but the last (whose only row is N), and the
// default 1/2 gives SPEC §6's density of about 0.37: 0.5 - p / 4 of a square mask.
TEST(MaskBuilders, RandomEvictionProbability) {
    auto rng = testing::test_rng();
    const int64_t n = 4096;
    const MaskSpec never = random_eviction_mask(n, rng(), 0.0);
    for (int64_t j = 0; j < n; ++j) ASSERT_EQ(never.indices[j], n) << "column " << j;
    const MaskSpec always = random_eviction_mask(n, rng(), 1.0);
    int64_t evicted = 0;
    for (int64_t j = 0; j < n; ++j) evicted += always.indices[j] < n;
    // Each key draws its row uniformly in [j + 1, N]; only the draw N means "not evicted".
    EXPECT_GT(evicted, n - 64);
    const MaskSpec half = random_eviction_mask(n, rng());
    const double density = double(visible_pairs(half.mask_view(), 1, 1)) / double(n * n);
    EXPECT_NEAR(density, 0.375, 0.02);
}

}  // namespace
}  // namespace flashmask
