// The README's C++ example: packed documents under a causal-document mask, forward and
// backward on the CPU path, with GQA (8 query heads over 2 key/value heads).
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "flashmask/api.hpp"

int main() {
    namespace fm = flashmask;
    const int64_t batch = 1, n = 1024, q_heads = 8, kv_heads = 2, dim = 64;

    // Three documents packed into one sequence: LTS_j = end of j's document (C = 1, causal).
    const fm::MaskSpec mask = fm::causal_document_mask({300, 200, 524});

    std::mt19937 rng(7);
    std::normal_distribution<float> normal;
    auto random_tensor = [&](int64_t count) {
        std::vector<float> t(count);
        for (float& x : t) x = normal(rng);
        return t;
    };
    std::vector<float> q = random_tensor(batch * n * q_heads * dim);
    std::vector<float> k = random_tensor(batch * n * kv_heads * dim);
    std::vector<float> v = random_tensor(batch * n * kv_heads * dim);
    std::vector<float> out(q.size()), lse(batch * q_heads * n);

    using fm::DType;
    fm::ForwardArgs args;
    args.q = fm::make_contiguous_view(q.data(), DType::Float32, {batch, n, q_heads, dim});
    args.k = fm::make_contiguous_view(k.data(), DType::Float32, {batch, n, kv_heads, dim});
    args.v = fm::make_contiguous_view(v.data(), DType::Float32, {batch, n, kv_heads, dim});
    args.out = fm::make_contiguous_view(out.data(), DType::Float32, {batch, n, q_heads, dim});
    args.lse = fm::make_contiguous_view(lse.data(), DType::Float32, {batch, q_heads, n});
    args.startend_row_indices = mask.view();  // [1, 1, Nk, 1]: one mask head serves all heads
    args.causal = mask.causal;
    try {
        fm::forward(args);
    } catch (const fm::Error& e) {  // every refused input: the argument's name and what was expected
        std::fprintf(stderr, "refused (%s): %s\n", e.argument().c_str(), e.what());
        return 1;
    }

    std::vector<float> dout = random_tensor(out.size()), dq(q.size()), dk(k.size()), dv(v.size());
    fm::BackwardArgs grad;
    grad.q = args.q; grad.k = args.k; grad.v = args.v; grad.out = args.out; grad.lse = args.lse;
    grad.dout = fm::make_contiguous_view(dout.data(), DType::Float32, {batch, n, q_heads, dim});
    grad.dq = fm::make_contiguous_view(dq.data(), DType::Float32, {batch, n, q_heads, dim});
    grad.dk = fm::make_contiguous_view(dk.data(), DType::Float32, {batch, n, kv_heads, dim});
    grad.dv = fm::make_contiguous_view(dv.data(), DType::Float32, {batch, n, kv_heads, dim});
    grad.startend_row_indices = args.startend_row_indices;
    grad.causal = args.causal;
    fm::backward(grad);

    const fm::TileCounts tiles = fm::count_tiles(mask.mask_view(), batch, q_heads, 64, 64);
    std::printf("out[0] = %.4f, lse[0] = %.4f, tiles skipped/partial/full = %lld/%lld/%lld\n", out[0], lse[0],
                (long long)tiles.skipped, (long long)tiles.partial, (long long)tiles.full);
    return std::isfinite(out[0]) && std::isfinite(dq[0]) ? 0 : 1;
}
