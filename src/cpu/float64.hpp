// The CPU path for float64 tensors: attention with every product, sum and exponential in double,
// so that torch.autograd.gradcheck's finite differences (which need float64 arithmetic end to
// end) see no float32 rounding.
//
// Why not the tiled path (tiled.hpp) with double arithmetic: its core is written on 8-float SIMD
// vectors with a float32 exponential and float register tiles; a double variant would duplicate
// that core (or template it, with GCC's target clones on every template), for a dtype that exists
// for checking gradients, not for speed. This path instead reuses what the tiled path's speed rests
// on, the tile classification (tiles.hpp): every (row, key block) pair is classified, skipped
// blocks are never read, full ones take no mask arithmetic, partial ones test each key's
// canonical intervals. Work items are single query rows (forward, dQ) and single keys (dK, dV),
// spread over threads like the tiled path's (parallel.hpp). It stays separate from the float64
// oracle (reference.hpp; only its dot_product is shared), which reads the mask on its own and is
// what tests check this against.
//
// Rows with no visible key: O = 0, LSE = -inf, and no gradient flows through them. Keys and
// values hidden from a row are never read for it, so Inf or NaN in them cannot leak.
//
// The LSE stays float32 (SPEC §1). The backward therefore does not read it: it recomputes each
// row's log-sum-exp in double (for free, in the dQ pass, which scores whole rows anyway), since
// P = exp(s - LSE) from a float32 LSE would cap the gradients near 1e-7 relative.
//
// Callers pass a validated AttentionProblem of dtype Float64 (src/api/dispatch.cpp validates).
#pragma once

#include "flashmask/problem.hpp"

namespace flashmask::cpu {

// out [B, Nq, Hq, Dv] (float64) and lse [B, Hq, Nq] (float32). num_threads 0 = all hardware threads.
void float64_forward(const AttentionProblem& problem, int num_threads = 0);

// dq, dk, dv from q, k, v, out and dout (all float64); lse is not read (see above).
// Deterministic: every output element is owned by one work item, summed in a fixed order.
void float64_backward(const AttentionProblem& problem, int num_threads = 0);

}  // namespace flashmask::cpu
