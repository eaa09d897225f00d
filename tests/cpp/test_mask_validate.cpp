// validate_mask / check_mask_shape / make_mask_view: one test per bad input of SPEC §2, the
// exact report of the first bad value, and the MaskView fields.
#include <functional>
#include <limits>

#include "test_mask_util.hpp"
#include "test_util.hpp"

namespace flashmask {
namespace {

using testing::IndexTensor;
using testing::test_rng;

// A problem shape for check_mask_shape: q [B, Nq, Hq, D], k [B, Nk, Hk, D].
struct Problem {
    int64_t batch = 2, nq = 19, nk = 23, q_heads = 8, kv_heads = 4;
};

void expect_error(const std::function<void()>& call, ErrorCode code, const std::vector<std::string>& needles) {
    try {
        call();
        ADD_FAILURE() << "expected an Error";
    } catch (const Error& e) {
        EXPECT_EQ(e.code(), code) << e.what();
        EXPECT_EQ(e.argument(), "startend_row_indices") << e.what();
        const std::string message = e.what();
        EXPECT_NE(message.find("startend_row_indices"), std::string::npos) << message;
        for (const std::string& needle : needles) EXPECT_NE(message.find(needle), std::string::npos) << message;
    }
}

void check_shape(IndexTensor& t, bool causal, const Problem& p) {
    check_mask_shape(t.view(), causal, p.batch, p.nq, p.nk, p.q_heads, p.kv_heads);
}

TEST(MaskValidation, AcceptsEveryAllowedShape) {
    auto rng = test_rng();
    const Problem p;
    for (const auto& [causal, slots] : testing::kIndexLayouts)
        for (int64_t heads : {int64_t(1), p.kv_heads, p.q_heads}) {
            IndexTensor t(p.batch, heads, p.nk, slots, rng);
            testing::fill_valid(t, p.nq, rng);
            EXPECT_NO_THROW(check_shape(t, causal, p));
            EXPECT_NO_THROW(validate_mask(t.view(), causal, p.nq));
            EXPECT_FALSE(find_bad_mask_value(t.view(), p.nq).has_value());
        }
}

TEST(MaskValidation, WrongDType) {
    auto rng = test_rng();
    const Problem p;
    IndexTensor t(p.batch, 1, p.nk, 1, rng);
    TensorView v = t.view();
    v.dtype = DType::Float32;
    expect_error([&] { check_mask_shape(v, true, p.batch, p.nq, p.nk, p.q_heads, p.kv_heads); }, ErrorCode::WrongDType,
                 {"int32", "float32"});
    expect_error([&] { validate_mask(v, true, p.nq); }, ErrorCode::WrongDType, {"int32", "float32"});
}

TEST(MaskValidation, WrongRank) {
    auto rng = test_rng();
    const Problem p;
    IndexTensor t(p.batch, 1, p.nk, 1, rng);
    TensorView v = make_contiguous_view(t.storage.data(), DType::Int32, {p.batch, p.nk, 1});
    expect_error([&] { check_mask_shape(v, true, p.batch, p.nq, p.nk, p.q_heads, p.kv_heads); },
                 ErrorCode::InvalidArgument, {"rank 3", "[B, Hm, Nk, C]"});
    expect_error([&] { validate_mask(v, true, p.nq); }, ErrorCode::InvalidArgument, {"rank 3"});
}

TEST(MaskValidation, BatchMismatch) {
    auto rng = test_rng();
    const Problem p;
    IndexTensor t(p.batch + 1, 1, p.nk, 1, rng);
    expect_error([&] { check_shape(t, true, p); }, ErrorCode::InvalidArgument,
                 {"batch", std::to_string(p.batch + 1), "B = " + std::to_string(p.batch)});
}

TEST(MaskValidation, MaskHeadsNotAllowed) {
    auto rng = test_rng();
    const Problem p;
    for (int64_t heads : {int64_t(0), int64_t(2), int64_t(3), p.q_heads * 2}) {
        IndexTensor t(p.batch, heads, p.nk, 1, rng);
        expect_error([&] { check_shape(t, true, p); }, ErrorCode::InvalidArgument,
                     {"Hm = " + std::to_string(heads), "Hk = 4", "Hq = 8"});
    }
}

TEST(MaskValidation, KeyLengthMismatch) {
    auto rng = test_rng();
    const Problem p;
    IndexTensor t(p.batch, 1, p.nk - 1, 2, rng);
    expect_error([&] { check_shape(t, false, p); }, ErrorCode::InvalidArgument,
                 {std::to_string(p.nk - 1), "Nk = " + std::to_string(p.nk)});
}

TEST(MaskValidation, SlotsNotAllowedForCausalSetting) {
    auto rng = test_rng();
    const Problem p;
    for (bool causal : {true, false})
        for (int64_t slots : causal ? std::vector<int64_t>{0, 3, 4} : std::vector<int64_t>{0, 1, 3}) {
            IndexTensor t(p.batch, 1, p.nk, slots, rng);
            const std::vector<std::string> needles = {"C = " + std::to_string(slots),
                                                      causal ? "causal = true" : "causal = false"};
            expect_error([&] { check_shape(t, causal, p); }, ErrorCode::InvalidArgument, needles);
            expect_error([&] { validate_mask(t.view(), causal, p.nq); }, ErrorCode::InvalidArgument, needles);
        }
}

TEST(MaskValidation, NonContiguousLastDimension) {
    auto rng = test_rng();
    const Problem p;
    IndexTensor t(p.batch, 1, p.nk, 2, rng);
    TensorView v = t.view();
    v.strides = {2 * p.nk, 2 * p.nk, 1, p.nk};  // [B, Hm, C, Nk] memory seen as [B, Hm, Nk, C]
    expect_error([&] { check_mask_shape(v, false, p.batch, p.nq, p.nk, p.q_heads, p.kv_heads); },
                 ErrorCode::InvalidArgument, {"contiguous", "stride " + std::to_string(p.nk)});
}

TEST(MaskValidation, NegativeStride) {
    auto rng = test_rng();
    const Problem p;
    IndexTensor t(p.batch, 1, p.nk, 1, rng);
    TensorView v = t.view();
    v.strides[2] = -1;
    expect_error([&] { check_mask_shape(v, true, p.batch, p.nq, p.nk, p.q_heads, p.kv_heads); },
                 ErrorCode::InvalidArgument, {"negative stride"});
}

TEST(MaskValidation, NullData) {
    auto rng = test_rng();
    const Problem p;
    IndexTensor t(p.batch, 1, p.nk, 1, rng);
    TensorView v = t.view();
    v.data = nullptr;
    expect_error([&] { check_mask_shape(v, true, p.batch, p.nq, p.nk, p.q_heads, p.kv_heads); },
                 ErrorCode::InvalidArgument, {"null"});
}

TEST(MaskValidation, ValueOutOfRangeIsReportedExactly) {
    auto rng = test_rng();
    const int64_t nq = 37;
    std::uniform_int_distribution<int64_t> heads(1, 3), column(0, 28), too_low(-1000, -1), too_high(nq + 1, nq + 1000);
    // The value: just outside [0, Nq] (where an off-by-one in the check would hide), the int32
    // extremes, or random ones further out; each in every layout.
    const auto bad_value = [&](int kind) -> int32_t {
        switch (kind) {
            case 0: return -1;
            case 1: return int32_t(nq + 1);
            case 2: return std::numeric_limits<int32_t>::min();
            case 3: return std::numeric_limits<int32_t>::max();
            case 4: return int32_t(too_low(rng));
            default: return int32_t(too_high(rng));
        }
    };
    constexpr int kValueKinds = 6, kLayouts = 4;
    for (int trial = 0; trial < kValueKinds * kLayouts; ++trial) {
        const bool causal = trial % 2 == 0;
        const int64_t slots = causal ? 1 + trial % 4 / 2 : 2 + 2 * (trial % 4 / 2);
        IndexTensor t(2, heads(rng), 29, slots, rng);
        testing::fill_valid(t, nq, rng);
        const int64_t b = rng() % 2, h = int64_t(rng() % uint64_t(t.heads)), j = column(rng),
                      s = int64_t(rng() % uint64_t(slots));
        const int32_t value = bad_value(trial / kLayouts);
        t.at(b, h, j, s) = value;
        // A second bad value later in (b, head, column, slot) order must not be the one reported.
        if (j + 1 < t.nk) t.at(b, h, j + 1, 0) = -1;
        const std::string where = "(" + std::to_string(b) + ", " + std::to_string(h) + ", " + std::to_string(j) + ", " +
                                  std::to_string(s) + ", " + std::to_string(value) + ")";
        expect_error([&] { validate_mask(t.view(), causal, nq); }, ErrorCode::BadMaskValue,
                     {"(b, head, column, slot, value)", where, "[0, " + std::to_string(nq) + "]"});
        const auto bad = find_bad_mask_value(t.view(), nq);
        ASSERT_TRUE(bad.has_value());
        EXPECT_EQ(bad->batch, b);
        EXPECT_EQ(bad->head, h);
        EXPECT_EQ(bad->column, j);
        EXPECT_EQ(bad->slot, s);
        EXPECT_EQ(bad->value, value);
    }
}

TEST(MaskValidation, BoundaryValuesAreValid) {
    auto rng = test_rng();
    const int64_t nq = 13;
    IndexTensor t(1, 1, 11, 4, rng);
    for (int64_t j = 0; j < t.nk; ++j)
        for (int64_t s = 0; s < 4; ++s) t.at(0, 0, j, s) = int32_t((j + s) % 2 ? nq : 0);
    EXPECT_NO_THROW(validate_mask(t.view(), false, nq));
}

TEST(MaskValidation, DeviceTensorsAreNotReadOnTheHost) {
    auto rng = test_rng();
    IndexTensor t(1, 1, 5, 1, rng);
    TensorView v = t.view();
    v.device = Device::CUDA;
    expect_error([&] { find_bad_mask_value(v, 5); }, ErrorCode::Unsupported, {"cuda"});
}

TEST(MaskView, FieldsFollowTheTensor) {
    auto rng = test_rng();
    const Problem p;
    for (const auto& [causal, slots] : testing::kIndexLayouts)
        for (int64_t heads : {int64_t(1), p.kv_heads, p.q_heads}) {
            IndexTensor t(p.batch, heads, p.nk, slots, rng);
            const MaskView view = make_mask_view(t.view(), causal, p.nq, p.nk, p.q_heads);
            EXPECT_EQ(view.layout, mask_layout_for(causal, slots));
            EXPECT_EQ(view.causal, causal);
            EXPECT_EQ(view.nq, p.nq);
            EXPECT_EQ(view.nk, p.nk);
            EXPECT_EQ(view.query_heads_per_mask_head, p.q_heads / heads);
            EXPECT_EQ(view.indices, t.storage.data());
            EXPECT_EQ(view.stride_batch, t.strides[0]);
            EXPECT_EQ(view.stride_head, t.strides[1]);
            EXPECT_EQ(view.stride_column, t.strides[2]);
            EXPECT_EQ(view.stride_slot, 1);
            for (int32_t h = 0; h < p.q_heads; ++h) EXPECT_EQ(view.mask_head(h), h / (p.q_heads / heads));
        }
    const MaskView none = make_mask_view(std::nullopt, true, p.nq, p.nk, p.q_heads);
    EXPECT_EQ(none.layout, MaskLayout::None);
    EXPECT_TRUE(none.causal);
    EXPECT_EQ(none.query_heads_per_mask_head, p.q_heads);
    EXPECT_EQ(none.mask_head(int32_t(p.q_heads - 1)), 0);
}

TEST(MaskView, RefusesSizesBeyondInt32) {
    EXPECT_THROW(make_mask_view(std::nullopt, false, int64_t(1) << 31, 4, 1), Error);
    EXPECT_THROW(make_mask_view(std::nullopt, false, 4, -1, 1), Error);
}

}  // namespace
}  // namespace flashmask
