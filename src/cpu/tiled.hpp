// The tiled, multi-threaded CPU attention (SPEC §1, §4): FlashAttention's online softmax over
// (query block x key block) tiles, with FlashMask's tile classification deciding per tile:
//   Skipped - nothing is computed and the key block's K/V are never read;
//   Full    - scores go straight into the softmax, no mask arithmetic;
//   Partial - the canonical column intervals (tiles.hpp) are applied element-wise.
// Storage float32, float16 or bfloat16; every product and sum in float32 (float64 tensors take
// float64.hpp's path instead).
//
// Callers pass a validated AttentionProblem (src/api/dispatch.cpp validates); nothing here
// re-checks arguments, and index values are only ever read through column_intervals(), which
// clamps them.
#pragma once

#include <cstdint>

#include "flashmask/problem.hpp"

namespace flashmask::cpu {

// Query rows per tile. 64 rows of Q, O-accumulator and scores at head dim 256 are 3 x 64 KiB:
// they stay in L2 while key tiles stream past, and a sequence of a few thousand tokens still
// splits into enough (batch, head, query block) work items to keep every core busy.
inline constexpr int32_t kBlockM = 64;
// Keys per tile. A 64-float score row is a handful of SIMD registers, and the K/V tile of a
// 256-wide head (2 x 64 KiB) fits L2 beside the query tile. Tile counts printed for the CPU path
// use these sizes.
inline constexpr int32_t kBlockN = 64;

// out [B, Nq, Hq, Dv] and lse [B, Hq, Nq] from q, k, v. num_threads 0 = all hardware threads.
void tiled_forward(const AttentionProblem& problem, int num_threads = 0);

// dq, dk, dv from q, k, v, out, lse (of the forward pass on the same inputs) and dout.
// Deterministic: every output element is owned by one work item, summed in a fixed order.
void tiled_backward(const AttentionProblem& problem, int num_threads = 0);

}  // namespace flashmask::cpu
