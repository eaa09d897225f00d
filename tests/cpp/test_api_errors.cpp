// One test per refused input of forward() / backward() (SPEC §1, §2): each checks the error
// code, that the error names the argument and says what was expected, and that no output
// was written (outputs are poisoned first and compared bit for bit afterwards).
#include <gtest/gtest.h>

#include <functional>
#include <limits>
#include <string>

#include "test_cpu_common.hpp"

namespace flashmask::testing {
namespace {

// Every argument of both calls, as views that a test case may corrupt.
struct CallViews {
    TensorView q, k, v, out, lse, dout, dq, dk, dv;
    std::optional<TensorView> indices;
    bool causal = true;
    std::optional<float> scale;
    int num_threads = 0;

    ForwardArgs forward_args() const { return {q, k, v, out, lse, indices, causal, scale, num_threads}; }
    BackwardArgs backward_args() const {
        return {q, k, v, out, lse, dout, dq, dk, dv, indices, causal, scale, false, num_threads};
    }
    std::vector<TensorView*> all() { return {&q, &k, &v, &out, &lse, &dout, &dq, &dk, &dv}; }
};

// A valid call (bf16, GQA 4:2, Nq != Nk, causal C = 2, Hm = Hk) with poisoned outputs.
class ValidCall {
public:
    static constexpr AttentionSizes kSizes{2, 33, 47, 4, 2, 64, 64};

    ValidCall()
        : rng_(test_rng()),
          q_(kDType, {kSizes.batch, kSizes.nq, kSizes.q_heads, kSizes.head_dim}),
          k_(kDType, {kSizes.batch, kSizes.nk, kSizes.kv_heads, kSizes.head_dim}),
          v_(kDType, {kSizes.batch, kSizes.nk, kSizes.kv_heads, kSizes.value_dim}),
          out_(kDType, {kSizes.batch, kSizes.nq, kSizes.q_heads, kSizes.value_dim}),
          lse_(DType::Float32, {kSizes.batch, kSizes.q_heads, kSizes.nq}),
          dout_(kDType, {kSizes.batch, kSizes.nq, kSizes.q_heads, kSizes.value_dim}),
          dq_(kDType, {kSizes.batch, kSizes.nq, kSizes.q_heads, kSizes.head_dim}),
          dk_(kDType, {kSizes.batch, kSizes.nk, kSizes.kv_heads, kSizes.head_dim}),
          dv_(kDType, {kSizes.batch, kSizes.nk, kSizes.kv_heads, kSizes.value_dim}),
          mask_(random_test_mask(true, 2, false, kSizes, kSizes.kv_heads, rng_)) {
        for (HostTensor* t : {&q_, &k_, &v_, &dout_}) t->fill_normal(rng_);
        for (HostTensor* t : {&out_, &lse_, &dq_, &dk_, &dv_}) t->poison();
        views_ = {q_.view(), k_.view(), v_.view(), out_.view(), lse_.view(), dout_.view(), dq_.view(), dk_.view(),
                  dv_.view(), mask_.view(), true};
    }

    CallViews& views() { return views_; }
    // The bits of every output buffer, to show a refused call wrote nothing.
    std::vector<std::vector<uint32_t>> output_bits() const {
        return {out_.bits(), lse_.bits(), dq_.bits(), dk_.bits(), dv_.bits()};
    }

private:
    static constexpr DType kDType = DType::BFloat16;
    std::mt19937_64 rng_;
    HostTensor q_, k_, v_, out_, lse_, dout_, dq_, dk_, dv_;
    TestMask mask_;
    CallViews views_;
};

enum class Calls { Forward, Backward, Both };

struct BadInput {
    const char* name;
    std::function<void(CallViews&)> corrupt;
    ErrorCode code;
    const char* argument;
    Calls calls = Calls::Both;
};

void expect_refused(const std::function<void()>& call, const BadInput& bad, const ValidCall& valid,
                    const char* which) {
    SCOPED_TRACE(std::string(bad.name) + " in " + which);
    const auto before = valid.output_bits();
    try {
        call();
        ADD_FAILURE() << "accepted";
    } catch (const Error& e) {
        const std::string message = e.what();
        EXPECT_EQ(int(e.code()), int(bad.code)) << message;
        EXPECT_EQ(e.argument(), bad.argument) << message;
        EXPECT_NE(message.find(bad.argument), std::string::npos) << "message does not name the argument: " << message;
        const bool states_requirement = message.find("expected") != std::string::npos || message.find("must") != std::string::npos;
        EXPECT_TRUE(states_requirement) << "message does not say what was expected: " << message;
    }
    EXPECT_EQ(valid.output_bits(), before) << "an output was written";
}

void PrintTo(const BadInput& bad, std::ostream* os) { *os << bad.name; }

class RefusedInput : public ::testing::TestWithParam<BadInput> {};

TEST_P(RefusedInput, ThrowsNamingTheArgumentAndWritesNothing) {
    ValidCall valid;
    const BadInput& bad = GetParam();
    if (std::string(bad.name) == "cuda_tensors_without_cuda_kernels_or_device" && cuda_available())
        GTEST_SKIP() << "a CUDA device is usable here: CUDA tensors are accepted (tests/gpu covers that path)";
    bad.corrupt(valid.views());
    const CallViews& views = valid.views();
    if (bad.calls != Calls::Backward) expect_refused([&] { forward(views.forward_args()); }, bad, valid, "forward");
    if (bad.calls != Calls::Forward) expect_refused([&] { backward(views.backward_args()); }, bad, valid, "backward");
}

TEST(RefusedInput, TheUncorruptedCallIsAccepted) {
    ValidCall valid;
    EXPECT_NO_THROW(forward(valid.views().forward_args()));
    EXPECT_NO_THROW(backward(valid.views().backward_args()));
}

void on_cuda(CallViews& c) {
    for (TensorView* t : c.all()) t->device = Device::CUDA;
    c.indices->device = Device::CUDA;
}

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr int64_t kBeyondInt32 = int64_t(std::numeric_limits<int32_t>::max()) + 1;

using EC = ErrorCode;
const BadInput kBadInputs[] = {
    // dtypes
    {"q_int32", [](CallViews& c) { c.q.dtype = DType::Int32; }, EC::WrongDType, "q"},
    {"k_dtype_differs", [](CallViews& c) { c.k.dtype = DType::Float16; }, EC::WrongDType, "k"},
    {"v_dtype_differs", [](CallViews& c) { c.v.dtype = DType::Float32; }, EC::WrongDType, "v"},
    {"out_dtype_differs", [](CallViews& c) { c.out.dtype = DType::Float16; }, EC::WrongDType, "out"},
    {"lse_not_float32", [](CallViews& c) { c.lse.dtype = DType::BFloat16; }, EC::WrongDType, "lse"},
    {"dout_dtype_differs", [](CallViews& c) { c.dout.dtype = DType::Float16; }, EC::WrongDType, "dout", Calls::Backward},
    {"dq_dtype_differs", [](CallViews& c) { c.dq.dtype = DType::Float32; }, EC::WrongDType, "dq", Calls::Backward},
    {"dk_dtype_differs", [](CallViews& c) { c.dk.dtype = DType::Float16; }, EC::WrongDType, "dk", Calls::Backward},
    {"dv_dtype_differs", [](CallViews& c) { c.dv.dtype = DType::Float16; }, EC::WrongDType, "dv", Calls::Backward},
    {"float32_on_cuda",
     [](CallViews& c) {
         on_cuda(c);
         for (TensorView* t : c.all()) t->dtype = DType::Float32;
     },
     EC::WrongDType, "q"},
    {"float64_on_cuda",
     [](CallViews& c) {
         on_cuda(c);
         for (TensorView* t : c.all()) t->dtype = DType::Float64;
         c.lse.dtype = DType::Float32;
     },
     EC::WrongDType, "q"},
    {"lse_float64", [](CallViews& c) { c.lse.dtype = DType::Float64; }, EC::WrongDType, "lse"},
    {"k_float64_differs", [](CallViews& c) { c.k.dtype = DType::Float64; }, EC::WrongDType, "k"},
    // ranks and shapes
    {"q_rank_3", [](CallViews& c) { c.q.rank = 3; }, EC::InvalidArgument, "q"},
    {"lse_rank_4", [](CallViews& c) { c.lse.rank = 4; c.lse.shape[3] = 1; c.lse.strides[3] = 1; }, EC::InvalidArgument, "lse"},
    {"q_negative_extent", [](CallViews& c) { c.q.shape[1] = -1; }, EC::InvalidArgument, "q"},
    {"q_extent_beyond_int32", [](CallViews& c) { c.q.shape[1] = kBeyondInt32; }, EC::InvalidArgument, "q"},
    {"k_batch_mismatch", [](CallViews& c) { c.k.shape[0] += 1; }, EC::InvalidArgument, "k"},
    {"k_head_dim_mismatch", [](CallViews& c) { c.k.shape[3] = 32; }, EC::InvalidArgument, "k"},
    {"v_keys_mismatch", [](CallViews& c) { c.v.shape[1] += 1; }, EC::InvalidArgument, "v"},
    {"v_heads_mismatch", [](CallViews& c) { c.v.shape[2] = 1; }, EC::InvalidArgument, "v"},
    {"out_value_dim_mismatch", [](CallViews& c) { c.out.shape[3] = 32; }, EC::InvalidArgument, "out"},
    {"lse_rows_mismatch", [](CallViews& c) { c.lse.shape[2] -= 1; }, EC::InvalidArgument, "lse"},
    {"dout_shape_mismatch", [](CallViews& c) { c.dout.shape[1] -= 1; }, EC::InvalidArgument, "dout", Calls::Backward},
    {"dq_shape_mismatch", [](CallViews& c) { c.dq.shape[2] = 2; }, EC::InvalidArgument, "dq", Calls::Backward},
    {"dk_shape_mismatch", [](CallViews& c) { c.dk.shape[1] -= 1; }, EC::InvalidArgument, "dk", Calls::Backward},
    {"dv_shape_mismatch", [](CallViews& c) { c.dv.shape[3] = 16; }, EC::InvalidArgument, "dv", Calls::Backward},
    {"zero_head_dim",
     [](CallViews& c) {
         for (TensorView* t : {&c.q, &c.k, &c.dq, &c.dk}) t->shape[3] = 0;
     },
     EC::InvalidArgument, "q"},
    {"q_heads_not_a_multiple_of_kv_heads",
     [](CallViews& c) {
         for (TensorView* t : {&c.k, &c.v, &c.dk, &c.dv}) t->shape[2] = 3;
     },
     EC::InvalidArgument, "k"},
    {"zero_kv_heads",
     [](CallViews& c) {
         for (TensorView* t : {&c.k, &c.v, &c.dk, &c.dv}) t->shape[2] = 0;
     },
     EC::InvalidArgument, "k"},
    // the index tensor (SPEC §2)
    {"mask_heads_not_1_hk_or_hq", [](CallViews& c) { c.indices->shape[1] = 3; }, EC::InvalidArgument, "startend_row_indices"},
    {"mask_c4_with_causal", [](CallViews& c) { c.indices->shape[3] = 4; }, EC::InvalidArgument, "startend_row_indices"},
    {"mask_c1_without_causal", [](CallViews& c) { c.causal = false; c.indices->shape[3] = 1; }, EC::InvalidArgument,
     "startend_row_indices"},
    {"mask_c3", [](CallViews& c) { c.indices->shape[3] = 3; }, EC::InvalidArgument, "startend_row_indices"},
    {"mask_not_int32", [](CallViews& c) { c.indices->dtype = DType::Float32; }, EC::WrongDType, "startend_row_indices"},
    {"mask_rank_3", [](CallViews& c) { c.indices->rank = 3; }, EC::InvalidArgument, "startend_row_indices"},
    {"mask_keys_mismatch", [](CallViews& c) { c.indices->shape[2] -= 1; }, EC::InvalidArgument, "startend_row_indices"},
    {"mask_batch_mismatch", [](CallViews& c) { c.indices->shape[0] = 1; }, EC::InvalidArgument, "startend_row_indices"},
    {"mask_last_dim_not_contiguous", [](CallViews& c) { c.indices->strides[3] = 2; }, EC::InvalidArgument,
     "startend_row_indices"},
    {"mask_on_another_device", [](CallViews& c) { c.indices->device = Device::CUDA; }, EC::InvalidArgument,
     "startend_row_indices"},
    // strides and memory
    {"q_last_dim_not_contiguous", [](CallViews& c) { c.q.strides[3] = 2; }, EC::InvalidArgument, "q"},
    {"out_last_dim_not_contiguous", [](CallViews& c) { c.out.strides[3] = 3; }, EC::InvalidArgument, "out", Calls::Forward},
    {"dk_last_dim_not_contiguous", [](CallViews& c) { c.dk.strides[3] = 2; }, EC::InvalidArgument, "dk", Calls::Backward},
    {"out_elements_overlap", [](CallViews& c) { c.out.strides[1] = 0; }, EC::InvalidArgument, "out", Calls::Forward},
    {"dq_elements_overlap", [](CallViews& c) { c.dq.strides[2] = 0; }, EC::InvalidArgument, "dq", Calls::Backward},
    {"q_null_data", [](CallViews& c) { c.q.data = nullptr; }, EC::InvalidArgument, "q"},
    // devices
    {"k_on_another_device", [](CallViews& c) { c.k.device = Device::CUDA; }, EC::InvalidArgument, "k"},
    {"dv_on_another_cuda_device",
     [](CallViews& c) {
         on_cuda(c);
         c.dv.device_index = 1;
     },
     EC::InvalidArgument, "dv", Calls::Backward},
    // CPU-only build: no kernels; CUDA build on a machine without a GPU: no device. (The GPU
    // suite covers a CUDA build with a device.)
    {"cuda_tensors_without_cuda_kernels_or_device", on_cuda, EC::Unsupported, "q"},
    // scalars
    {"scale_nan", [](CallViews& c) { c.scale = kNaN; }, EC::InvalidArgument, "scale"},
    {"scale_infinite", [](CallViews& c) { c.scale = kInf; }, EC::InvalidArgument, "scale"},
    {"scale_zero", [](CallViews& c) { c.scale = 0.0f; }, EC::InvalidArgument, "scale"},
    {"scale_negative", [](CallViews& c) { c.scale = -0.125f; }, EC::InvalidArgument, "scale"},
    {"num_threads_negative", [](CallViews& c) { c.num_threads = -1; }, EC::InvalidArgument, "num_threads"},
};

INSTANTIATE_TEST_SUITE_P(EveryBadInput, RefusedInput, ::testing::ValuesIn(kBadInputs),
                         [](const ::testing::TestParamInfo<BadInput>& info) { return std::string(info.param.name); });

// Extents of 2^16 each pass the per-extent int32 check, but q's element count, 2^64, does not
// fit int64: computed by plain multiplication it wrapped to 0, so q passed for empty and its
// null data went unchecked. q is refused first, as any non-empty null tensor is.
TEST(RefusedInput, NullDataWhoseElementCountOverflowsInt64) {
    constexpr int64_t kExtent = int64_t(1) << 16;
    auto null_view = [](int rank) {
        TensorView t;
        t.data = nullptr;
        t.dtype = rank == 3 ? DType::Float32 : DType::BFloat16;
        t.rank = rank;
        for (int d = 0; d < rank; ++d) t.shape[d] = kExtent;
        for (int d = 0; d < rank; ++d) t.strides[d] = d == rank - 1 ? 1 : kExtent;  // never used
        return t;
    };
    ForwardArgs args;
    args.q = args.k = args.v = args.out = null_view(4);
    args.lse = null_view(3);
    try {
        forward(args);
        ADD_FAILURE() << "accepted";
    } catch (const Error& e) {
        EXPECT_EQ(e.argument(), "q") << e.what();
        EXPECT_NE(std::string(e.what()).find("null"), std::string::npos) << e.what();
    }
}

}  // namespace
}  // namespace flashmask::testing
