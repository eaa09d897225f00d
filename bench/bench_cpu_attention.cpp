// The tiled CPU path against the dense float64 reference on a 4096-token causal-document mask
// (SPEC §3 #4, 3-10 documents of random lengths from a fixed seed), forward and backward.
//
// The reference scores every (query, key) pair; the tiled path skips the tiles the block
// summaries prove fully masked. So it must beat the reference by at least 1 / (1 - skipped
// fraction): the counter `predicted_min_speedup`, next to the measured `speedup_vs_reference`.
// `speedup_vs_full_mask` compares the tiled path with itself on a full mask of the same shape:
// how much of the skipped work is really saved.
//
// Run by hand (not in CI), e.g. `build/bench/bench_cpu_attention`; `--benchmark_filter=Forward`
// for the forward pass only. The default run takes well under a minute on 2 cores.
#include <benchmark/benchmark.h>

#include <chrono>
#include <cmath>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "cpu/reference.hpp"
#include "cpu/tiled.hpp"
#include "flashmask/api.hpp"
#include "flashmask/float16.hpp"
#include "flashmask/mask.hpp"

namespace {

using namespace flashmask;

constexpr int64_t kTokens = 4096;
constexpr int32_t kHeads = 2;     // small: the float64 reference is O(N^2) and single-threaded
constexpr int32_t kHeadDim = 64;
constexpr uint64_t kMaskSeed = 20250;  // fixed, so that runs compare the same documents

// Inputs, outputs and the mask of one benchmark configuration, built once.
struct Problem {
    MaskSpec mask;
    std::vector<float> q, k, v, out, lse, dout, dq, dk, dv;
    std::vector<double> q64, k64, v64, dout64;

    explicit Problem(MaskSpec spec) : mask(std::move(spec)) {
        const std::size_t elements = std::size_t(kTokens) * kHeads * kHeadDim;
        std::mt19937_64 rng(kMaskSeed);
        std::normal_distribution<float> normal;
        for (auto* x : {&q, &k, &v, &dout}) {
            x->resize(elements);
            for (float& value : *x) value = normal(rng);
        }
        out.resize(elements);
        dq.resize(elements);
        dk.resize(elements);
        dv.resize(elements);
        lse.resize(std::size_t(kHeads) * kTokens);
        q64.assign(q.begin(), q.end());
        k64.assign(k.begin(), k.end());
        v64.assign(v.begin(), v.end());
        dout64.assign(dout.begin(), dout.end());
    }

    TensorView tensor(std::vector<float>& x) { return make_contiguous_view(x.data(), DType::Float32, {1, kTokens, kHeads, kHeadDim}); }
    TensorView lse_view() { return make_contiguous_view(lse.data(), DType::Float32, {1, kHeads, kTokens}); }
    MaskView mask_view() const {
        MaskView view = mask.mask_view();
        view.query_heads_per_mask_head = kHeads;  // one mask head serves every query head
        return view;
    }

    void forward(int threads) {
        ForwardArgs args{tensor(q), tensor(k), tensor(v), tensor(out), lse_view(), mask.view(), mask.causal};
        args.num_threads = threads;
        flashmask::forward(args);
    }
    void backward(int threads) {
        BackwardArgs args{tensor(q),    tensor(k),  tensor(v),  tensor(out), lse_view(), tensor(dout),
                          tensor(dq),   tensor(dk), tensor(dv), mask.view(), mask.causal};
        args.num_threads = threads;
        flashmask::backward(args);
    }
    cpu::ReferenceShape shape() const { return {1, int32_t(kTokens), int32_t(kTokens), kHeads, kHeads, kHeadDim, kHeadDim}; }
};

Problem& causal_document() {
    static Problem problem(catalogue_mask("causal_document", kTokens, kMaskSeed));
    return problem;
}
Problem& full() {
    static Problem problem(full_mask(kTokens));
    return problem;
}

double scale() { return 1.0 / std::sqrt(double(kHeadDim)); }

// Seconds per iteration of the benchmarks that have run, by name, for the ratio counters.
std::map<std::string, double>& seconds_per_iteration() {
    static std::map<std::string, double> table;
    return table;
}

template <class Body>
void timed_loop(benchmark::State& state, const std::string& key, Body body) {
    const auto start = std::chrono::steady_clock::now();
    for (auto _ : state) body();
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    seconds_per_iteration()[key] = seconds / double(state.iterations());
}

void tile_counters(benchmark::State& state) {
    const MaskView view = causal_document().mask_view();
    const TileCounts tiles = count_tiles(view, 1, kHeads, cpu::kBlockM, cpu::kBlockN);
    const double skipped = double(tiles.skipped) / double(tiles.total());
    state.counters["tiles_skipped"] = double(tiles.skipped);
    state.counters["tiles_partial"] = double(tiles.partial);
    state.counters["tiles_full"] = double(tiles.full);
    state.counters["skipped_fraction"] = skipped;
    state.counters["predicted_min_speedup"] = 1.0 / (1.0 - skipped);
    state.counters["density"] = double(visible_pairs(view, 1, kHeads)) / (double(kTokens) * kTokens * kHeads);
}

// Ratios against the reference and the full-mask tiled run of the same direction and threads.
void speedup_counters(benchmark::State& state, const std::string& direction, const std::string& key) {
    auto& table = seconds_per_iteration();
    const double own = table[key];
    if (table.count("reference_" + direction)) state.counters["speedup_vs_reference"] = table["reference_" + direction] / own;
    const std::string full_key = "full_" + key.substr(key.find('_') + 1);
    if (table.count(full_key)) state.counters["speedup_vs_full_mask"] = table[full_key] / own;
}

void BM_ReferenceForward(benchmark::State& state) {
    Problem& p = causal_document();
    timed_loop(state, "reference_forward", [&] {
        auto result = cpu::reference_forward(p.shape(), p.mask_view(), scale(), p.q64.data(), p.k64.data(), p.v64.data());
        benchmark::DoNotOptimize(result.out.data());
    });
    tile_counters(state);
}

void BM_ReferenceBackward(benchmark::State& state) {
    Problem& p = causal_document();
    timed_loop(state, "reference_backward", [&] {
        auto grad = cpu::reference_backward(p.shape(), p.mask_view(), scale(), p.q64.data(), p.k64.data(), p.v64.data(),
                                            p.dout64.data());
        benchmark::DoNotOptimize(grad.dq.data());
    });
    tile_counters(state);
}

// Arg: threads (0 = all hardware threads).
void BM_TiledForwardFullMask(benchmark::State& state) {
    const int threads = int(state.range(0));
    timed_loop(state, "full_forward_" + std::to_string(threads), [&] { full().forward(threads); });
}

void BM_TiledForward(benchmark::State& state) {
    const int threads = int(state.range(0));
    const std::string key = "document_forward_" + std::to_string(threads);
    timed_loop(state, key, [&] { causal_document().forward(threads); });
    tile_counters(state);
    speedup_counters(state, "forward", key);
}

void BM_TiledBackwardFullMask(benchmark::State& state) {
    const int threads = int(state.range(0));
    full().forward(threads);
    timed_loop(state, "full_backward_" + std::to_string(threads), [&] { full().backward(threads); });
}

void BM_TiledBackward(benchmark::State& state) {
    const int threads = int(state.range(0));
    const std::string key = "document_backward_" + std::to_string(threads);
    causal_document().forward(threads);
    timed_loop(state, key, [&] { causal_document().backward(threads); });
    tile_counters(state);
    speedup_counters(state, "backward", key);
}

// The reference takes seconds per call: one iteration is plenty.
BENCHMARK(BM_ReferenceForward)->Unit(benchmark::kMillisecond)->Iterations(1);
BENCHMARK(BM_TiledForwardFullMask)->Arg(1)->Arg(0)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_TiledForward)->Arg(1)->Arg(0)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_ReferenceBackward)->Unit(benchmark::kMillisecond)->Iterations(1);
BENCHMARK(BM_TiledBackwardFullMask)->Arg(1)->Arg(0)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_TiledBackward)->Arg(1)->Arg(0)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
