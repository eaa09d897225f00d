#include "cpu/float64.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu/parallel.hpp"
#include "cpu/reference.hpp"  // dot_product
#include "cpu/tiled.hpp"
#include "flashmask/mask.hpp"

namespace flashmask::cpu {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// out[d] += weight * x[d] for d < n.
void add_scaled(double* out, double weight, const double* x, int32_t n) {
    for (int32_t d = 0; d < n; ++d) out[d] += weight * x[d];
}

// The tile classification of the whole call: block summaries [B, Hm, kv_blocks] of key blocks of
// the tiled path's width (kBlockN), classified against any range of query rows.
struct Classification {
    const AttentionProblem& p;
    int32_t kv_blocks, mask_heads;
    std::vector<BlockSummary> summaries;

    explicit Classification(const AttentionProblem& problem)
        : p(problem),
          kv_blocks(ceil_div(problem.nk, kBlockN)),
          mask_heads(problem.q_heads / problem.mask.query_heads_per_mask_head),
          summaries(block_summaries(problem.mask, problem.batch, mask_heads, kBlockN)) {}

    // Rows [row_begin, row_end) of query head q_head against key block kv_block.
    TileKind kind(int32_t b, int32_t q_head, int32_t row_begin, int32_t row_end, int32_t kv_block) const {
        const int32_t m = p.mask.mask_head(q_head);
        return classify(summaries[(std::size_t(b) * mask_heads + m) * kv_blocks + kv_block], row_begin, row_end);
    }
};

// Scaled scores of query row i of head h against every key into scores[0, Nk), -inf where the key
// is hidden (its K never read); returns the row's maximum (-inf when nothing is visible).
double score_row(const Classification& c, int32_t b, int32_t h, int32_t i, std::vector<double>& scores) {
    const AttentionProblem& p = c.p;
    const int32_t kvh = p.kv_head(h), mask_head = p.mask.mask_head(h);
    const double* q = p.q.at<double>(b, i, h);
    const double scale = p.scale;
    double row_max = kNegInf;
    for (int32_t kv_block = 0; kv_block < c.kv_blocks; ++kv_block) {
        const TileKind kind = c.kind(b, h, i, i + 1, kv_block);
        const int32_t first = kv_block * kBlockN, end = std::min(first + kBlockN, p.nk);
        for (int32_t j = first; j < end; ++j) {
            const bool hidden = kind == TileKind::Skipped ||
                                (kind == TileKind::Partial && column_intervals(p.mask, b, mask_head, j).masks(i));
            scores[j] = hidden ? kNegInf : scale * dot_product(q, p.k.at<double>(b, j, kvh), p.head_dim);
            row_max = std::max(row_max, scores[j]);
        }
    }
    return row_max;
}

// log(sum_j exp(s_j)) over a scored row with maximum row_max; -inf when nothing is visible.
double log_sum_exp(const std::vector<double>& scores, int32_t nk, double row_max) {
    if (row_max == kNegInf) return kNegInf;
    double sum = 0.0;
    for (int32_t j = 0; j < nk; ++j)
        if (scores[j] != kNegInf) sum += std::exp(scores[j] - row_max);
    return row_max + std::log(sum);
}

// Work items of the row passes: item = (b * Hq + h) * Nq + i, the index of LSE [B, Hq, Nq].
struct Row {
    int32_t b, h, i;
};
Row row_of(const AttentionProblem& p, int64_t item) {
    return {int32_t(item / (int64_t(p.q_heads) * p.nq)), int32_t((item / p.nq) % p.q_heads), int32_t(item % p.nq)};
}

void forward_row(const Classification& c, int64_t item, std::vector<double>& scores) {
    const AttentionProblem& p = c.p;
    const auto [b, h, i] = row_of(p, item);
    const int32_t kvh = p.kv_head(h);
    double* out = p.out.at<double>(b, i, h);
    std::fill(out, out + p.value_dim, 0.0);
    const double lse = log_sum_exp(scores, p.nk, score_row(c, b, h, i, scores));
    *p.lse.at<float>(b, h, i) = float(lse);
    if (lse == kNegInf) return;  // nothing visible: O = 0
    for (int32_t j = 0; j < p.nk; ++j)
        if (scores[j] != kNegInf) add_scaled(out, std::exp(scores[j] - lse), p.v.at<double>(b, j, kvh), p.value_dim);
}

// Backward, pass 1 (work item = one query row): the row's LSE (recomputed in double) and
// delta = rowsum(dO * O), kept for pass 2, and its dQ = scale * sum_j dS_ij K_j.
void dq_row(const Classification& c, int64_t item, std::vector<double>& scores, std::vector<double>& lse,
            std::vector<double>& delta) {
    const AttentionProblem& p = c.p;
    const auto [b, h, i] = row_of(p, item);
    const int32_t kvh = p.kv_head(h);
    const double* d_o = p.dout.at<double>(b, i, h);
    delta[item] = dot_product(p.out.at<double>(b, i, h), d_o, p.value_dim);
    lse[item] = log_sum_exp(scores, p.nk, score_row(c, b, h, i, scores));
    double* dq = p.dq.at<double>(b, i, h);
    std::fill(dq, dq + p.head_dim, 0.0);
    if (lse[item] == kNegInf) return;  // nothing visible: no gradient
    for (int32_t j = 0; j < p.nk; ++j) {
        if (scores[j] == kNegInf) continue;
        const double prob = std::exp(scores[j] - lse[item]);
        const double dprob = dot_product(d_o, p.v.at<double>(b, j, kvh), p.value_dim);
        add_scaled(dq, prob * (dprob - delta[item]), p.k.at<double>(b, j, kvh), p.head_dim);
    }
    for (int32_t d = 0; d < p.head_dim; ++d) dq[d] *= p.scale;
}

// Backward, pass 2 (work item = (b * Hk + kv head) * Nk + j, one key): sums over every query head
// of the group and every row that sees the key, dV_j = sum_i P_ij dO_i and
// dK_j = scale * sum_i dS_ij Q_i. Query rows go by blocks of kBlockM, classified as a whole.
void dkdv_key(const Classification& c, int64_t item, const std::vector<double>& lse, const std::vector<double>& delta) {
    const AttentionProblem& p = c.p;
    const int32_t j = int32_t(item % p.nk), kvh = int32_t((item / p.nk) % p.kv_heads),
                  b = int32_t(item / (int64_t(p.kv_heads) * p.nk));
    const int32_t group = p.q_heads / p.kv_heads, kv_block = j / kBlockN;
    const double* k = p.k.at<double>(b, j, kvh);
    const double* v = p.v.at<double>(b, j, kvh);
    double* dk = p.dk.at<double>(b, j, kvh);
    double* dv = p.dv.at<double>(b, j, kvh);
    std::fill(dk, dk + p.head_dim, 0.0);
    std::fill(dv, dv + p.value_dim, 0.0);
    for (int32_t h = kvh * group; h < (kvh + 1) * group; ++h) {
        const ColumnIntervals intervals = column_intervals(p.mask, b, p.mask.mask_head(h), j);
        for (int32_t row_begin = 0; row_begin < p.nq; row_begin += kBlockM) {
            const int32_t row_end = std::min(row_begin + kBlockM, p.nq);
            const TileKind kind = c.kind(b, h, row_begin, row_end, kv_block);
            if (kind == TileKind::Skipped) continue;
            for (int32_t i = row_begin; i < row_end; ++i) {
                if (kind == TileKind::Partial && intervals.masks(i)) continue;
                const std::size_t at = (std::size_t(b) * p.q_heads + h) * p.nq + i;
                if (lse[at] == kNegInf) continue;  // a visible key has a finite LSE unless its score is -inf
                const double* q = p.q.at<double>(b, i, h);
                const double* d_o = p.dout.at<double>(b, i, h);
                const double prob = std::exp(p.scale * dot_product(q, k, p.head_dim) - lse[at]);
                add_scaled(dv, prob, d_o, p.value_dim);
                add_scaled(dk, prob * (dot_product(d_o, v, p.value_dim) - delta[at]), q, p.head_dim);
            }
        }
    }
    for (int32_t d = 0; d < p.head_dim; ++d) dk[d] *= p.scale;
}

}  // namespace

void float64_forward(const AttentionProblem& problem, int num_threads) {
    const Classification c(problem);
    const int64_t items = int64_t(problem.batch) * problem.q_heads * problem.nq;
    const int workers = worker_count(num_threads, items);
    std::vector<std::vector<double>> scores(std::size_t(workers), std::vector<double>(std::size_t(problem.nk)));
    parallel_for(items, workers, [&](int worker, int64_t item) { forward_row(c, item, scores[worker]); });
}

void float64_backward(const AttentionProblem& problem, int num_threads) {
    const Classification c(problem);
    const int64_t rows = int64_t(problem.batch) * problem.q_heads * problem.nq;
    std::vector<double> lse(static_cast<std::size_t>(rows)), delta(static_cast<std::size_t>(rows));
    const int row_workers = worker_count(num_threads, rows);
    std::vector<std::vector<double>> scores(std::size_t(row_workers), std::vector<double>(std::size_t(problem.nk)));
    parallel_for(rows, row_workers,
                 [&](int worker, int64_t item) { dq_row(c, item, scores[worker], lse, delta); });
    const int64_t keys = int64_t(problem.batch) * problem.kv_heads * problem.nk;
    parallel_for(keys, worker_count(num_threads, keys), [&](int, int64_t item) { dkdv_key(c, item, lse, delta); });
}

}  // namespace flashmask::cpu
