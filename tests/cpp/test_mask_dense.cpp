// Dense converters: to_dense() against a literal reading of the SPEC §2 table on hostile index
// tensors, and from_dense() round trips and refusals.
#include "test_mask_util.hpp"
#include "test_util.hpp"

namespace flashmask {
namespace {

using testing::IndexTensor;
using testing::spec_dense;
using testing::test_rng;

// A mask form (causal, C), C = 0 for "no index tensor".
using Kind = testing::IndexLayout;
const int64_t kSizes[] = {1, 2, 17, 40};

std::string describe(Kind k, int64_t nq, int64_t nk) {
    return std::string("causal=") + (k.causal ? "true" : "false") + " C=" + std::to_string(k.slots) +
           " Nq=" + std::to_string(nq) + " Nk=" + std::to_string(nk);
}

TEST(ToDense, MatchesTheSpecTableOnHostileIndices) {
    auto rng = test_rng();
    constexpr int64_t kBatch = 2, kMaskHeads = 3;
    for (const Kind kind : testing::kMaskForms)
        for (int64_t nq : kSizes)
            for (int64_t nk : kSizes) {  // Nq < Nk, Nq == Nk and Nq > Nk
                SCOPED_TRACE(describe(kind, nq, nk));
                std::optional<IndexTensor> t;
                if (kind.slots) {
                    t.emplace(kBatch, kMaskHeads, nk, kind.slots, rng);
                    testing::fill_hostile(*t, nq, rng);
                }
                const MaskView view = make_mask_view(t ? std::optional(t->view()) : std::nullopt, kind.causal, nq, nk,
                                                     2 * kMaskHeads);
                for (int32_t b = 0; b < kBatch; ++b)
                    for (int32_t m = 0; m < (t ? kMaskHeads : 1); ++m)
                        ASSERT_EQ(to_dense(view, b, m), spec_dense(t ? &*t : nullptr, b, m, kind.causal, nq, nk))
                            << "batch " << b << ", mask head " << m;
            }
}

TEST(ToDense, EmptySequences) {
    EXPECT_TRUE(to_dense(full_mask(0)).empty());
    EXPECT_TRUE(to_dense(window_mask(0, 5, 1, 1, true)).empty());
    EXPECT_TRUE(to_dense(window_mask(5, 0, 1, 1, false)).empty());
}

// A random valid mask of the given kind, as a MaskSpec (B = Hm = 1).
MaskSpec random_spec(Kind kind, int64_t nq, int64_t nk, std::mt19937_64& rng) {
    MaskSpec m;
    m.causal = kind.causal;
    m.nq = nq;
    m.nk = nk;
    m.slots = kind.slots;
    if (kind.slots) {
        IndexTensor t(1, 1, nk, kind.slots, rng);
        testing::fill_valid(t, nq, rng);
        for (int64_t j = 0; j < nk; ++j)
            for (int64_t s = 0; s < kind.slots; ++s) m.indices.push_back(t.at(0, 0, j, s));
    }
    return m;
}

void expect_round_trip(const MaskSpec& m, Kind target) {
    const std::vector<uint8_t> dense = to_dense(m);
    const MaskSpec back = from_dense(dense.data(), m.nq, m.nk, target.causal, target.slots);
    EXPECT_EQ(back.causal, target.causal);
    EXPECT_EQ(back.slots, target.slots);
    ASSERT_EQ(to_dense(back), dense);
    if (const auto view = back.view()) {
        EXPECT_NO_THROW(validate_mask(*view, back.causal, back.nq));
    }
    // The representation is canonical: converting again gives the very same indices.
    EXPECT_EQ(from_dense(to_dense(back).data(), m.nq, m.nk, target.causal, target.slots).indices, back.indices);
}

TEST(FromDense, RoundTripsEveryCatalogueMask) {
    auto rng = test_rng();
    for (int64_t n : {1, 17, 100}) {
        const uint64_t seed = rng();
        for (const std::string& name : catalogue_names()) {
            const MaskSpec m = catalogue_mask(name, n, seed);
            SCOPED_TRACE(name + " n=" + std::to_string(n) + " seed=" + std::to_string(seed));
            expect_round_trip(m, {m.causal, m.slots});
            // Every mask also has the form of the larger C of its causal setting.
            expect_round_trip(m, {m.causal, m.causal ? 2 : 4});
        }
    }
}

TEST(FromDense, RoundTripsRandomMasksOfEveryKind) {
    auto rng = test_rng();
    for (const Kind kind : testing::kMaskForms)
        for (int64_t nq : kSizes)
            for (int64_t nk : kSizes)
                for (int trial = 0; trial < 3; ++trial) {
                    SCOPED_TRACE(describe(kind, nq, nk));
                    expect_round_trip(random_spec(kind, nq, nk, rng), kind);
                }
}

TEST(FromDense, KeepsTheBuildersConventions) {
    // Where the builders already write the minimal form, from_dense gives it back unchanged.
    auto rng = test_rng();
    const uint64_t seed = rng();
    for (const char* name : {"sliding_window", "causal_document", "document", "share_question", "causal_blockwise",
                             "prefix_lm_causal", "prefix_lm_document", "qk_sparse", "random_eviction"}) {
        const MaskSpec m = catalogue_mask(name, 100, seed);
        const std::vector<uint8_t> dense = to_dense(m);
        EXPECT_EQ(from_dense(dense.data(), m.nq, m.nk, m.causal, m.slots).indices, m.indices) << name;
    }
}

// Makes column j of `dense` (valid for `kind`) a column with no interval form of that kind.
// Returns false when the column is too short for such a pattern.
bool break_column(std::vector<uint8_t>& dense, int64_t nq, int64_t nk, int64_t j, Kind kind, bool above_diagonal) {
    const int64_t first_row = kind.causal ? std::clamp<int64_t>(j - (nk - nq), 0, nq) : 0;
    auto set = [&](int64_t i, bool visible) { dense[i * nk + j] = visible; };
    if (above_diagonal) {  // causal only: a visible row that the diagonal hides
        if (first_row == 0) return false;
        set(first_row - 1, true);
        return true;
    }
    // Below the diagonal, alternate masked and visible rows: enough runs to break any layout.
    const int64_t rows_needed = kind.slots == 0 ? 1 : kind.slots == 1 ? 2 : kind.slots == 2 ? 3 : 5;
    if (nq - first_row < rows_needed) return false;
    for (int64_t i = first_row; i < nq; ++i) set(i, true);
    // C = 0: any masked row; causal C = 1: a masked row with a visible one below; causal C = 2:
    // two masked runs; not causal C = 2: a masked run between visible rows; C = 4: three runs.
    if (kind.slots == 0) set(nq - 1, false);
    else if (kind.causal && kind.slots == 1) set(first_row, false);
    else if (kind.causal) { set(first_row, false); set(first_row + 2, false); }
    else if (kind.slots == 2) set(1, false);
    else { set(0, false); set(2, false); set(4, false); }
    return true;
}

TEST(FromDense, RefusalNamesTheFirstOffendingColumn) {
    auto rng = test_rng();
    int refusals = 0;
    for (const Kind kind : testing::kMaskForms)
        for (int64_t nq : {5, 17, 40})
            for (int64_t nk : {5, 17, 40})
                for (bool above_diagonal : {false, true}) {
                    if (above_diagonal && !kind.causal) continue;
                    std::vector<uint8_t> dense = to_dense(random_spec(kind, nq, nk, rng));
                    // Break a random column that can be broken, and a later one too.
                    std::vector<int64_t> breakable;
                    for (int64_t j = 0; j < nk; ++j) {
                        std::vector<uint8_t> copy = dense;
                        if (break_column(copy, nq, nk, j, kind, above_diagonal)) breakable.push_back(j);
                    }
                    if (breakable.empty()) continue;
                    const int64_t j = breakable[rng() % breakable.size()];
                    break_column(dense, nq, nk, j, kind, above_diagonal);
                    if (breakable.back() > j) break_column(dense, nq, nk, breakable.back(), kind, above_diagonal);
                    SCOPED_TRACE(describe(kind, nq, nk) + " column " + std::to_string(j));
                    try {
                        from_dense(dense.data(), nq, nk, kind.causal, kind.slots);
                        ADD_FAILURE() << "expected a refusal";
                    } catch (const Error& e) {
                        ++refusals;
                        EXPECT_EQ(e.code(), ErrorCode::InvalidArgument) << e.what();
                        EXPECT_EQ(e.argument(), "dense_mask") << e.what();
                        EXPECT_NE(std::string(e.what()).find("column " + std::to_string(j) + " "), std::string::npos)
                            << e.what();
                        if (above_diagonal) {
                            EXPECT_NE(std::string(e.what()).find("above the causal diagonal"), std::string::npos) << e.what();
                        }
                    }
                }
    EXPECT_GT(refusals, 50);
}

TEST(FromDense, RefusesBadArguments) {
    std::vector<uint8_t> dense(12, 1);
    for (auto [causal, slots] : {std::pair{true, 4}, {true, 3}, {false, 1}, {false, 3}, {true, -1}}) {
        try {
            from_dense(dense.data(), 3, 4, causal, slots);
            ADD_FAILURE() << "expected a refusal of C = " << slots;
        } catch (const Error& e) {
            EXPECT_EQ(e.argument(), "slots") << e.what();
        }
    }
    EXPECT_THROW(from_dense(nullptr, 3, 4, false, 2), Error);
    EXPECT_THROW(from_dense(dense.data(), -3, 4, false, 2), Error);
    EXPECT_EQ(from_dense(nullptr, 0, 4, true, 1).indices, (std::vector<int32_t>(4, 0)));  // Nq = 0: every LTS is 0
}

}  // namespace
}  // namespace flashmask
