// Validation of startend_row_indices (SPEC §2) and the MaskView built from it.
#include <sstream>

#include "flashmask/mask.hpp"
#include "mask/mask_checks.hpp"

namespace flashmask {
namespace {

using mask_detail::kMaxSequenceLength;

const char* const kIndices = "startend_row_indices";
constexpr int kIndicesRank = 4;  // [B, Hm, Nk, C]
enum IndicesDim { kBatchDim = 0, kHeadDim = 1, kColumnDim = 2, kSlotDim = 3 };

[[noreturn]] void refuse_indices(const TensorView& t, const std::string& problem) {
    throw Error(ErrorCode::InvalidArgument, kIndices,
                std::string(kIndices) + " of shape " + shape_string(t) + ": " + problem);
}

std::string allowed_slots(bool causal) {
    return causal ? "C = 1 (LTS) or C = 2 (LTS, LTE) with causal = true"
                  : "C = 2 (LTS, UTE) or C = 4 (LTS, LTE, UTS, UTE) with causal = false";
}

// The slot names of a layout, for messages: slot 1 of a causal C = 2 tensor is LTE.
const char* slot_name(MaskLayout layout, int64_t slot) {
    static const char* const causal_lower[] = {"LTS"};
    static const char* const causal_bounded[] = {"LTS", "LTE"};
    static const char* const lower_upper[] = {"LTS", "UTE"};
    static const char* const lower_upper_bounded[] = {"LTS", "LTE", "UTS", "UTE"};
    switch (layout) {
        case MaskLayout::CausalLower: return causal_lower[slot];
        case MaskLayout::CausalLowerBounded: return causal_bounded[slot];
        case MaskLayout::LowerUpper: return lower_upper[slot];
        case MaskLayout::LowerUpperBounded: return lower_upper_bounded[slot];
        case MaskLayout::None: break;
    }
    return "?";
}

// What makes the tensor safe to read: dtype, rank, extents, strides, data.
void check_indices_storage(const TensorView& t) {
    if (t.dtype != DType::Int32)
        throw Error(ErrorCode::WrongDType, kIndices,
                    std::string(kIndices) + " must be int32, got " + to_string(t.dtype));
    if (t.rank != kIndicesRank)
        refuse_indices(t, "expected rank 4 [B, Hm, Nk, C], got rank " + std::to_string(t.rank));
    for (int d = 0; d < kIndicesRank; ++d)
        if (t.shape[d] < 0) refuse_indices(t, "negative extent in dimension " + std::to_string(d));
    for (int d = 0; d < kIndicesRank; ++d)
        if (t.strides[d] < 0)
            refuse_indices(t, "negative stride " + std::to_string(t.strides[d]) + " in dimension " + std::to_string(d) +
                                  "; expected non-negative strides");
    // The same rule as every other tensor of the API (SPEC §1): the last dimension is contiguous.
    if (!t.last_dim_contiguous())
        refuse_indices(t, "the last dimension (C) must be contiguous (stride 1), got stride " +
                              std::to_string(t.strides[kSlotDim]));
    if (t.data == nullptr && t.numel() > 0) refuse_indices(t, "data pointer is null");
}

// What can be judged from the tensor alone: the storage checks and C against `causal`.
void check_indices_tensor(const TensorView& t, bool causal) {
    check_indices_storage(t);
    if (mask_layout_for(causal, t.shape[kSlotDim]) == MaskLayout::None)
        refuse_indices(t, "C = " + std::to_string(t.shape[kSlotDim]) + " is not allowed; expected " + allowed_slots(causal));
}

}  // namespace

void check_mask_shape(const TensorView& t, bool causal, int64_t batch, int64_t nq, int64_t nk, int64_t q_heads,
                      int64_t kv_heads) {
    (void)nq;  // Nq bounds the values, not the shape
    check_indices_tensor(t, causal);
    if (t.shape[kBatchDim] != batch)
        refuse_indices(t, "batch dimension is " + std::to_string(t.shape[kBatchDim]) + ", expected B = " +
                              std::to_string(batch) + " (that of q)");
    const int64_t hm = t.shape[kHeadDim];
    if (!(hm == 1 || hm == kv_heads || hm == q_heads) || hm < 1 || q_heads % hm != 0)
        refuse_indices(t, "head dimension is Hm = " + std::to_string(hm) + ", expected 1, Hk = " +
                              std::to_string(kv_heads) + " or Hq = " + std::to_string(q_heads));
    if (t.shape[kColumnDim] != nk)
        refuse_indices(t, "key dimension is " + std::to_string(t.shape[kColumnDim]) + ", expected Nk = " +
                              std::to_string(nk) + " (that of k)");
}

MaskView make_mask_view(const std::optional<TensorView>& indices, bool causal, int64_t nq, int64_t nk,
                        int64_t q_heads) {
    mask_detail::check_length(nq, "nq", "make_mask_view");
    mask_detail::check_length(nk, "nk", "make_mask_view");
    if (q_heads < 0 || q_heads > kMaxSequenceLength)
        mask_detail::refuse("q_heads", "make_mask_view: q_heads must be in [0, 2^31), got " + std::to_string(q_heads));
    MaskView view;
    view.causal = causal;
    view.nq = int32_t(nq);
    view.nk = int32_t(nk);
    // With no index tensor there is one (implicit) mask head serving every query head; at
    // least 1 so that mask_head() never divides by zero.
    view.query_heads_per_mask_head = int32_t(q_heads > 0 ? q_heads : 1);
    if (!indices) return view;

    const TensorView& t = *indices;
    check_indices_tensor(t, causal);
    if (t.shape[kColumnDim] != nk)
        refuse_indices(t, "key dimension is " + std::to_string(t.shape[kColumnDim]) + ", expected Nk = " + std::to_string(nk));
    const int64_t hm = t.shape[kHeadDim];
    if (hm < 1 || (q_heads > 0 && q_heads % hm != 0))
        refuse_indices(t, "head dimension Hm = " + std::to_string(hm) + " does not divide Hq = " + std::to_string(q_heads));
    view.indices = static_cast<const int32_t*>(t.data);
    view.stride_batch = t.strides[kBatchDim];
    view.stride_head = t.strides[kHeadDim];
    view.stride_column = t.strides[kColumnDim];
    view.stride_slot = t.strides[kSlotDim];
    view.layout = mask_layout_for(causal, t.shape[kSlotDim]);
    if (q_heads > 0) view.query_heads_per_mask_head = int32_t(q_heads / hm);
    return view;
}

std::optional<BadMaskValue> find_bad_mask_value(const TensorView& t, int64_t nq) {
    if (t.device != Device::CPU)
        throw Error(ErrorCode::Unsupported, kIndices,
                    std::string(kIndices) + ": find_bad_mask_value reads host memory, got a " + to_string(t.device) +
                        " tensor");
    check_indices_storage(t);
    if (t.numel() == 0) return std::nullopt;
    const auto* data = static_cast<const int32_t*>(t.data);
    for (int64_t b = 0; b < t.shape[kBatchDim]; ++b)
        for (int64_t h = 0; h < t.shape[kHeadDim]; ++h)
            for (int64_t j = 0; j < t.shape[kColumnDim]; ++j)
                for (int64_t s = 0; s < t.shape[kSlotDim]; ++s) {
                    const int32_t value = data[b * t.strides[kBatchDim] + h * t.strides[kHeadDim] +
                                               j * t.strides[kColumnDim] + s * t.strides[kSlotDim]];
                    if (value < 0 || value > nq) return BadMaskValue{b, h, j, s, value};
                }
    return std::nullopt;
}

void validate_mask(const TensorView& t, bool causal, int64_t nq) {
    check_indices_tensor(t, causal);
    mask_detail::check_length(nq, "nq", "validate_mask");
    if (const auto bad = find_bad_mask_value(t, nq)) {
        std::ostringstream message;
        message << kIndices << " has a value outside [0, Nq] = [0, " << nq << "] at (b, head, column, slot, value) = ("
                << bad->batch << ", " << bad->head << ", " << bad->column << ", " << bad->slot << ", " << bad->value
                << "); slot " << bad->slot << " is " << slot_name(mask_layout_for(causal, t.shape[kSlotDim]), bad->slot);
        throw Error(ErrorCode::BadMaskValue, kIndices, message.str());
    }
}

}  // namespace flashmask
