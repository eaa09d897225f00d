// sorted_key_order(): the host twin of the CUDA path's window sort (src/cuda/common/key_order.cu),
// by the same rule (KeyOrderItem::before, flashmask/key_order.hpp).
#include <algorithm>
#include <string>

#include "flashmask/mask.hpp"

namespace flashmask {

MaskView SortedKeyOrder::mask(const MaskView& original) const {
    return sorted_mask_view(original, indices.data(), mask_heads);
}

SortedKeyOrder sorted_key_order(const MaskView& mask, int32_t batch, int32_t mask_heads, int32_t window) {
    if (window < 1)
        throw Error(ErrorCode::InvalidArgument, "window",
                    "sorted_key_order: window = " + std::to_string(window) + ", expected >= 1");
    if (batch < 0 || mask_heads < 0)
        throw Error(ErrorCode::InvalidArgument, batch < 0 ? "batch" : "mask_heads",
                    "sorted_key_order: batch = " + std::to_string(batch) + ", mask_heads = " +
                        std::to_string(mask_heads) + "; expected both >= 0");
    SortedKeyOrder sorted;
    sorted.batch = batch;
    sorted.mask_heads = mask_heads;
    sorted.nk = mask.nk;
    const std::size_t columns = std::size_t(batch) * std::size_t(mask_heads) * std::size_t(mask.nk);
    sorted.order.resize(columns);
    sorted.indices.resize(columns * kSortedMaskSlots);
    std::vector<KeyOrderItem> items;
    for (int32_t b = 0; b < batch; ++b)
        for (int32_t m = 0; m < mask_heads; ++m) {
            const std::size_t pair_first = (std::size_t(b) * mask_heads + m) * std::size_t(mask.nk);
            for (int64_t first = 0; first < mask.nk; first += window) {
                const int32_t end = int32_t(std::min<int64_t>(first + window, mask.nk));
                items.clear();
                for (int32_t key = int32_t(first); key < end; ++key)
                    items.push_back(KeyOrderItem::of(column_intervals(mask, b, m, key), key));
                std::sort(items.begin(), items.end(),
                          [](const KeyOrderItem& x, const KeyOrderItem& y) { return x.before(y); });
                for (std::size_t i = 0; i < items.size(); ++i) {
                    const std::size_t position = pair_first + std::size_t(first) + i;
                    sorted.order[position] = items[i].key;
                    items[i].write_slots(sorted.indices.data() + position * kSortedMaskSlots);
                }
            }
        }
    return sorted;
}

}  // namespace flashmask
