#!/usr/bin/env python3
"""A model of the dK/dV grid's reuse of query rows in L2, by section size (bench/NOTES.md,
session 21; tile_order.hpp's kKeyBlockSectionBytes).

Each dK/dV CTA (one key block of one (batch, head) pair) walks its own range of query blocks, one
step each, loading their Q and dO rows and adding into their float32 dQ accumulator rows. A row
read again soon after another CTA of the same pair touched it is likely still in L2; one whose
last touch is long past, or that no running CTA touched, comes from memory. The model:

* work: the query blocks each key block visits, from the mask's column intervals (causal masks
  with one bound per column, C = 1: visible rows [j, LTS_j) of column j; plain causal; full);
* order: tile_order.hpp's, simplified to one order head: heaviest blocks first (ties: lower key
  block first), ranks interleaved over the pairs of a section, a heavy prefix over all pairs for
  blocks heavier than kHeavyFraction (1) x a slot's share of a section's work;
* grid: CTAs start in grid order on the first free of `slots` slots, take `work` steps;
* reuse: an access of (pair, query block) at step t counts as a hit when the same row was touched
  at most `lifetime` steps earlier (the L2 holds ~50 MB; a step moves ~64 KB of rows per SM).

It prints the hit rate and the grid's makespan (in steps) per section size. A model, not a
measurement: it says which section sizes are worth timing, not what they gain.

    python3 bench/l2_reuse_model.py --n 32768 --pairs 16 --sections 8,4,2,1
"""

from __future__ import annotations

import argparse
import heapq

import numpy as np

import flashmask.masks as fm
from spec_densities import SPEC_DENSITY_SEED  # bench/, the script's own folder

BACKWARD_TILE = (64, 128)  # query rows x keys of the dK/dV step (backward_traits.cuh)
DKDV_SLOTS = 132           # one dK/dV CTA per SM on an H100 (163 KB of shared memory at D = 128)


def query_ranges(name: str, n: int, seed: int) -> list[tuple[int, int]]:
    """[first, end) query blocks each key block visits."""
    block_m, block_n = BACKWARD_TILE
    if name == "full":
        return [(0, n // block_m)] * (n // block_n)
    if name == "causal":
        return [(kb * block_n // block_m, n // block_m) for kb in range(n // block_n)]
    mask = fm.catalogue(name, n, seed)
    indices = mask.startend_row_indices
    if not mask.causal or indices is None or indices.shape[-1] != 1:
        raise SystemExit(f"l2_reuse_model.py: {name} is not a causal mask with one bound per column")
    columns = np.arange(n)
    ends = np.minimum(indices[0, 0, :, 0].astype(np.int64), n)
    ranges = []
    for kb in range(n // block_n):
        lo, hi = columns[kb * block_n:(kb + 1) * block_n], ends[kb * block_n:(kb + 1) * block_n]
        seen = hi > lo
        ranges.append((int(lo[seen].min()) // block_m, (int(hi[seen].max()) - 1) // block_m + 1) if seen.any() else (0, 0))
    return ranges


def grid_order(work: np.ndarray, pairs: int, section_pairs: int, slots: int) -> tuple[list[tuple[int, int]], int]:
    """(pair, key block) in grid order, and the heavy prefix's rank count R."""
    blocks = len(work)
    order = sorted(range(blocks), key=lambda b: (-work[b], b))
    slot_work = min(section_pairs, pairs) * work.sum() / slots
    heavy = [rank for rank in range(blocks) if work[order[rank]] > slot_work]
    prefix = max(heavy) + 1 if heavy else 0
    grid = [(pair, order[rank]) for rank in range(prefix) for pair in range(pairs)]
    for first in range(0, pairs, section_pairs):
        grid += [(pair, order[rank]) for rank in range(prefix, blocks)
                 for pair in range(first, min(pairs, first + section_pairs))]
    return grid, prefix


def simulate(ranges, grid, slots: int, lifetime: int) -> tuple[float, int]:
    """Hit rate of the row accesses, and the makespan in steps."""
    free = [0] * slots
    accesses = []
    makespan = 0
    for pair, kb in grid:
        start = heapq.heappop(free)
        first, end = ranges[kb]
        accesses += [(start + k, pair, first + k) for k in range(end - first)]
        heapq.heappush(free, start + end - first)
        makespan = max(makespan, start + end - first)
    accesses.sort()
    last_touch: dict[tuple[int, int], int] = {}
    hits = 0
    for step, pair, q_block in accesses:
        previous = last_touch.get((pair, q_block))
        hits += previous is not None and step - previous <= lifetime
        last_touch[(pair, q_block)] = step
    return hits / max(len(accesses), 1), makespan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=32768)
    parser.add_argument("--pairs", type=int, default=16, help="(batch, head) pairs: SPEC §6's B x H")
    parser.add_argument("--masks", default="share_question,causal_document,causal,full")
    parser.add_argument("--sections", default="8,4,2,1", help="pairs per section to compare")
    parser.add_argument("--lifetime", type=int, default=6, help="steps a row stays in L2 after a touch")
    parser.add_argument("--seed", type=int, default=SPEC_DENSITY_SEED)
    args = parser.parse_args()

    print(f"N {args.n}, {args.pairs} pairs, {DKDV_SLOTS} slots, lifetime {args.lifetime} steps, seed {args.seed}")
    print("mask                 section  R     hit rate  makespan (steps)")
    for name in args.masks.split(","):
        ranges = query_ranges(name, args.n, args.seed)
        work = np.array([end - first for first, end in ranges])
        for section_pairs in (int(s) for s in args.sections.split(",")):
            grid, prefix = grid_order(work, args.pairs, section_pairs, DKDV_SLOTS)
            hit, makespan = simulate(ranges, grid, DKDV_SLOTS, args.lifetime)
            print(f"{name:20s} {section_pairs:7d}  {prefix:4d}  {hit:8.3f}  {makespan:8d}")


if __name__ == "__main__":
    main()
