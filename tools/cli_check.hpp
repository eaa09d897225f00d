// The accuracy check of `flashmask run --check` (SPEC §5): the timed run's outputs against the
// float64 reference on the first and last (batch, KV head) groups, forward on sampled rows,
// backward on every row (or on a reduced problem when the reference cannot afford the full
// one), with the bounds and the naive in-dtype computation of cpu/accuracy.hpp.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "cli_format.hpp"
#include "cli_mask.hpp"
#include "cli_progress.hpp"
#include "cli_run.hpp"
#include "cli_tensors.hpp"
#include "cpu/accuracy.hpp"
#include "cpu/reference.hpp"

namespace flashmask::cli {

namespace fm = ::flashmask;

// --check: forward rows sampled per checked (batch, KV head) group, and the float64 work
// (multiply-adds) the check may spend, a few seconds of the reference on one core. A backward
// check that would cost more runs on a reduced problem of the same kind.
inline constexpr int64_t kCheckRows = 64;
inline constexpr double kCheckBudgetMultiplyAdds = 1e10;
// The reference backward (scores, P.V recomputed, dP, dS.K, dS^T.Q) plus the naive in-dtype
// emulation, in units of one forward pass over the same pairs.
inline constexpr double kBackwardCheckCostFactor = 6.0;
// LSE is float32 whatever the input dtype; SPEC §5 bounds O, dQ, dK, dV only. Our tolerance
// for LSE: |lse - ref| <= kLseTolerance * max(1, |ref|), and -inf exactly where ref is -inf.
inline constexpr double kLseTolerance = 1e-4;

struct CheckLine {
    std::string tensor;
    double error = 0.0, bound = 0.0;
    std::optional<double> naive_error;  // 16-bit inputs: the naive in-dtype error behind the bound
    bool pass = false;
};

struct CheckSection {
    std::string pass;   // "forward" or "backward"
    std::string scope;  // what was compared, in words
    std::vector<CheckLine> lines;
};

struct Group {
    int64_t batch, kv_head;
};

// The (batch, KV head) groups the check compares: the first and, when different, the last,
// so that batch and head offsets are exercised.
inline std::vector<Group> check_groups(const Shape& s) {
    std::vector<Group> groups{{0, 0}};
    if (s.batch > 1 || s.kv_heads > 1) groups.push_back({s.batch - 1, s.kv_heads - 1});
    return groups;
}

inline std::string describe_groups(const Shape& s, const std::vector<Group>& groups) {
    std::string out;
    for (std::size_t i = 0; i < groups.size(); ++i)
        out += (i ? " and " : "") + format("(batch %lld, kv head %lld)", (long long)groups[i].batch, (long long)groups[i].kv_head);
    return out + format(", %lld query head%s each", (long long)s.group(), s.group() == 1 ? "" : "s");
}

// Sorted, distinct rows: the first and last, and random others from the seed.
inline std::vector<int32_t> sample_rows(int64_t nq, uint64_t seed) {
    std::vector<int32_t> rows;
    if (nq <= kCheckRows) {
        for (int64_t i = 0; i < nq; ++i) rows.push_back(int32_t(i));
        return rows;
    }
    std::vector<char> chosen(std::size_t(nq), 0);
    chosen[0] = chosen[std::size_t(nq - 1)] = 1;
    int64_t count = 2;
    for (uint64_t draw = 0; count < kCheckRows; ++draw) {
        const int64_t row = int64_t(mix64(seed ^ mix64(kStreamRows + draw)) % uint64_t(nq));
        if (!chosen[std::size_t(row)]) { chosen[std::size_t(row)] = 1; ++count; }
    }
    for (int64_t i = 0; i < nq; ++i)
        if (chosen[std::size_t(i)]) rows.push_back(int32_t(i));
    return rows;
}

// The doubles of one group of a problem, in the reference's layout.
struct GroupInputs {
    std::vector<double> q, k, v, dout;
    fm::cpu::ReferenceShape shape;

    GroupInputs(const Problem& p, const Group& g, bool backward) {
        const int64_t heads = p.shape.group(), h0 = g.kv_head * heads;
        q = bshd_to_double(p.q, g.batch, h0, h0 + heads);
        k = bshd_to_double(p.k, g.batch, g.kv_head, g.kv_head + 1);
        v = bshd_to_double(p.v, g.batch, g.kv_head, g.kv_head + 1);
        if (backward) dout = bshd_to_double(p.dout, g.batch, h0, h0 + heads);
        const Shape& s = p.shape;
        shape = {1, int32_t(s.nq), int32_t(s.nk), int32_t(heads), 1, int32_t(s.head_dim), int32_t(s.head_dim)};
    }
};

// One tensor's line of the table: its error, the SPEC §5 bound (from the naive error) and the verdict.
inline CheckLine finish_line(const std::string& tensor, fm::DType dtype, const fm::cpu::ErrorAccumulator& error,
                             const fm::cpu::ErrorAccumulator& naive) {
    CheckLine line;
    line.tensor = tensor;
    line.error = error.relative();
    if (dtype != fm::DType::Float32) line.naive_error = naive.relative();
    line.bound = fm::cpu::spec_bound(dtype, naive.relative());
    line.pass = line.error <= line.bound;
    return line;
}

// Forward: sampled rows of the check groups of the timed run's own outputs.
inline CheckSection check_forward(const Problem& p, uint64_t seed, Progress* progress) {
    const Shape& s = p.shape;
    const std::vector<Group> groups = check_groups(s);
    const std::vector<int32_t> rows = sample_rows(s.nq, seed);
    const int64_t heads = s.group(), d = s.head_dim;
    const fm::MaskView mask = p.group_mask_view();
    fm::cpu::ErrorAccumulator out_error, naive_error;
    double lse_worst = 0.0;
    bool lse_infinities_match = true;
    for (const Group& g : groups) {
        const GroupInputs in(p, g, false);
        const fm::cpu::ReferenceForward ref =
            fm::cpu::reference_forward(in.shape, mask, p.scale, in.q.data(), in.k.data(), in.v.data(), &rows);
        const int64_t h0 = g.kv_head * heads;
        const std::vector<double> out = bshd_to_double(p.out, g.batch, h0, h0 + heads);
        const std::vector<double> lse = bhn_to_double(p.lse, g.batch, h0, h0 + heads);
        std::vector<double> naive;
        if (p.dtype != fm::DType::Float32)
            naive = fm::cpu::naive_forward(p.dtype, in.shape, mask, p.scale, in.q.data(), in.k.data(), in.v.data(), &rows);
        for (int32_t row : rows)
            for (int64_t h = 0; h < heads; ++h) {
                for (int64_t e = 0; e < d; ++e) {
                    const std::size_t i = std::size_t((row * heads + h) * d + e);
                    out_error.add(out[i], ref.out[i]);
                    if (!naive.empty()) naive_error.add(naive[i], ref.out[i]);
                }
                const std::size_t li = std::size_t(h * s.nq + row);
                const double ours = lse[li], expected = ref.lse[li];
                if (std::isinf(expected) || std::isinf(ours) || std::isnan(ours)) {
                    lse_infinities_match = lse_infinities_match && ours == expected;
                } else {
                    lse_worst = std::max(lse_worst, std::abs(ours - expected) / std::max(1.0, std::abs(expected)));
                }
            }
        if (progress) progress->advance(format("forward, batch %lld, kv head %lld", (long long)g.batch, (long long)g.kv_head));
    }
    CheckSection section;
    section.pass = "forward";
    section.scope = format("%s; %lld of %lld rows", describe_groups(s, groups).c_str(), (long long)rows.size(),
                           (long long)s.nq);
    section.lines.push_back(finish_line("out", p.dtype, out_error, naive_error));
    CheckLine lse_line;
    lse_line.tensor = "lse";
    lse_line.error = lse_infinities_match ? lse_worst : std::numeric_limits<double>::infinity();
    lse_line.bound = kLseTolerance;
    lse_line.pass = lse_infinities_match && lse_worst <= kLseTolerance;
    section.lines.push_back(lse_line);
    return section;
}

// Backward: every row of the given groups, dQ of their query heads, dK and dV of their KV head.
inline std::vector<CheckLine> compare_backward(const Problem& p, const std::vector<Group>& groups, Progress* progress) {
    const int64_t heads = p.shape.group();
    const fm::MaskView mask = p.group_mask_view();
    fm::cpu::ErrorAccumulator error[3], naive_error[3];
    for (const Group& g : groups) {
        const GroupInputs in(p, g, true);
        const fm::cpu::ReferenceBackward ref = fm::cpu::reference_backward(in.shape, mask, p.scale, in.q.data(),
                                                                           in.k.data(), in.v.data(), in.dout.data());
        fm::cpu::ReferenceBackward naive;
        if (p.dtype != fm::DType::Float32)
            naive = fm::cpu::naive_backward(p.dtype, in.shape, mask, p.scale, in.q.data(), in.k.data(), in.v.data(),
                                            in.dout.data());
        const int64_t h0 = g.kv_head * heads;
        const std::vector<double> ours[3] = {bshd_to_double(p.dq, g.batch, h0, h0 + heads),
                                             bshd_to_double(p.dk, g.batch, g.kv_head, g.kv_head + 1),
                                             bshd_to_double(p.dv, g.batch, g.kv_head, g.kv_head + 1)};
        const std::vector<double>* refs[3] = {&ref.dq, &ref.dk, &ref.dv};
        const std::vector<double>* naives[3] = {&naive.dq, &naive.dk, &naive.dv};
        for (int t = 0; t < 3; ++t)
            for (std::size_t i = 0; i < ours[t].size(); ++i) {
                error[t].add(ours[t][i], (*refs[t])[i]);
                if (!naives[t]->empty()) naive_error[t].add((*naives[t])[i], (*refs[t])[i]);
            }
        if (progress) progress->advance(format("backward, batch %lld, kv head %lld", (long long)g.batch, (long long)g.kv_head));
    }
    const char* names[3] = {"dq", "dk", "dv"};
    std::vector<CheckLine> lines;
    for (int t = 0; t < 3; ++t) lines.push_back(finish_line(names[t], p.dtype, error[t], naive_error[t]));
    return lines;
}

// Multiply-adds of the reference backward (plus the naive emulation) over one group.
inline double backward_check_cost(const Shape& s) {
    return kBackwardCheckCostFactor * double(s.group()) * double(s.nq) * double(s.nk) * 2.0 * double(s.head_dim);
}

// The groups of the timed run that the backward check can afford to compare (the first, and
// the last when both fit); empty when even one is over budget.
inline std::vector<Group> affordable_backward_groups(const Shape& s) {
    std::vector<Group> groups = check_groups(s);
    const double per_group = backward_check_cost(s);
    if (per_group * double(groups.size()) > kCheckBudgetMultiplyAdds) groups.resize(1);
    if (per_group > kCheckBudgetMultiplyAdds) groups.clear();
    return groups;
}

// Progress units of the check: one per compared group, plus the reduced problem's run.
inline int64_t check_progress_units(const Shape& s, bool backward) {
    int64_t units = int64_t(check_groups(s).size());
    if (backward) {
        const std::size_t groups = affordable_backward_groups(s).size();
        units += groups ? int64_t(groups) : 2;
    }
    return units;
}

// The backward check of the timed run when the reference can afford it; otherwise the same
// mask kind, dtype, head dim and GQA group on the largest halved sequence length it can
// afford, run through the library on the same device.
inline CheckSection check_backward(const Problem& p, const std::string& mask_name, uint64_t seed, fm::Device device,
                                   int threads, bool deterministic, fm::KeyOrder key_order, Progress* progress) {
    CheckSection section;
    section.pass = "backward";
    const std::vector<Group> groups = affordable_backward_groups(p.shape);
    if (!groups.empty()) {
        section.scope = describe_groups(p.shape, groups) + "; every row";
        section.lines = compare_backward(p, groups, progress);
        return section;
    }
    const double per_group = backward_check_cost(p.shape);
    Shape reduced = p.shape;
    reduced.batch = 1;
    reduced.q_heads = p.shape.group();
    reduced.kv_heads = 1;
    const int64_t n = std::max(p.shape.nq, p.shape.nk);
    int64_t reduced_n = n;
    while (reduced_n > 1 && backward_check_cost(reduced) > kCheckBudgetMultiplyAdds) {
        reduced_n /= 2;
        reduced.nq = std::max<int64_t>(1, p.shape.nq * reduced_n / n);
        reduced.nk = std::max<int64_t>(1, p.shape.nk * reduced_n / n);
    }
    Problem small = make_problem(reduced, p.dtype, catalogue_corner(mask_name, reduced.nq, reduced.nk, seed),
                                 true, mix64(seed), threads);
    Executor executor(small, device, threads, deterministic, key_order);
    executor.forward(nullptr);
    executor.backward(nullptr);
    executor.fetch_outputs();
    if (progress) progress->advance("backward, the reduced problem run");
    section.scope = format("a reduced %s problem, Nq = %lld, Nk = %lld, batch 1, kv head 0 with its %lld "
                           "query head%s, fresh inputs (the full size would cost the reference ~%.0f G multiply-adds)",
                           mask_name.c_str(), (long long)reduced.nq, (long long)reduced.nk,
                           (long long)reduced.q_heads, reduced.q_heads == 1 ? "" : "s", per_group / 1e9);
    section.lines = compare_backward(small, {{0, 0}}, progress);
    if (small.dq.has_nan(threads) || small.dk.has_nan(threads) || small.dv.has_nan(threads)) {
        CheckLine unwritten{"unwritten (reduced)", 1.0, 0.0, std::nullopt, false};
        section.lines.push_back(unwritten);
    }
    return section;
}

}  // namespace flashmask::cli
