#!/usr/bin/env python3
"""Work efficiency of the catalogue masks: visible pairs over the pairs of the tiles a kernel
computes (every tile not Skipped), by the library's own tile classification (tile_counts).

A kernel that ran its Partial tiles as fast as its Full ones would reach this fraction of its
full-mask TFLOP/s on a mask, so it bounds the "own full" ratio of SPEC §6 / issue #3.

`--reorder W` also counts the same mask with its key columns sorted inside windows of W keys.
Attention is exact under any permutation of the keys (O and LSE sum over keys; dK / dV are per
key), so a kernel could read K / V (and write dK / dV) through such a permutation. Sorting
clusters each key block's interval bounds, which turns Partial tiles into Full and Skipped
ones. A permuted key no longer sits at its own position, so the mask is first written as each
column's two intervals with the causal diagonal folded into the upper one (column_bounds(): a
non-causal C = 4 mask), and that is what gets permuted.

    python bench/work_efficiency.py --n 8192 32768 --reorder 512 1024 2048
"""

from __future__ import annotations

import argparse

import numpy as np

import flashmask.masks as fm
from mask_columns import column_bounds

FORWARD_TILE = (128, 64)   # query rows x keys: the sm80 forward's tile (forward_traits.hpp)
BACKWARD_TILE = (64, 128)  # the sm80 backward's step (backward_traits.cuh)
KERNEL_TILES = (FORWARD_TILE, BACKWARD_TILE)


def reorder_permutation(bounds: np.ndarray, window: int) -> np.ndarray:
    """Key order sorted by (lower start, lower end, upper end, upper start) inside each window
    of `window` keys; bounds as column_bounds() gives them ([4, N])."""
    lower_start, lower_end, upper_start, upper_end = bounds
    n = bounds.shape[1]
    permutation = np.empty(n, np.int64)
    for begin in range(0, n, window):
        keys = np.arange(begin, min(n, begin + window))
        order = np.lexsort((upper_start[keys], upper_end[keys], lower_end[keys], lower_start[keys]))  # last key primary
        permutation[begin:begin + keys.size] = keys[order]
    return permutation


def four_slot_indices(bounds: np.ndarray, permutation=None) -> np.ndarray:
    """The non-causal C = 4 index tensor [1, 1, N, 4] of these column bounds, keys permuted."""
    columns = bounds.T if permutation is None else bounds.T[permutation]
    return np.ascontiguousarray(columns.astype(np.int32)[None, None])


def efficiency(indices, causal: bool, n: int, tile) -> float:
    """Visible pairs over the pairs of the non-Skipped (block_m x block_n) tiles, Nq = Nk = n."""
    block_m, block_n = tile
    counts = fm.tile_counts(indices, causal, nq=n, nk=n, block_m=block_m, block_n=block_n)
    computed = (counts.partial + counts.full) * block_m * block_n
    return fm.visible_pairs(indices, causal, nq=n, nk=n) / computed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[8192, 32768])
    parser.add_argument("--masks", default=",".join(fm.catalogue_names()))
    parser.add_argument("--reorder", type=int, nargs="*", default=[], help="key windows to sort in")
    parser.add_argument("--seed", type=int, default=0, help="catalogue seed (the benchmark's is 0)")
    args = parser.parse_args()

    header = ["N", "mask", "tile", "as is"] + [f"sorted in {w}" for w in args.reorder]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for n in args.n:
        for name in args.masks.split(","):
            mask = fm.catalogue(name, n, args.seed)
            bounds = column_bounds(mask, n)
            visible = fm.visible_pairs(mask.startend_row_indices, mask.causal, nq=n, nk=n)
            if fm.visible_pairs(four_slot_indices(bounds), False, nq=n, nk=n) != visible:
                raise SystemExit(f"{name}: the C = 4 form sees other pairs than the mask itself")
            for tile in KERNEL_TILES:
                row = [str(n), name, f"{tile[0]} x {tile[1]}",
                       f"{efficiency(mask.startend_row_indices, mask.causal, n, tile):.3f}"]
                for window in args.reorder:
                    indices = four_slot_indices(bounds, reorder_permutation(bounds, window))
                    row.append(f"{efficiency(indices, False, n, tile):.3f}")
                print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
