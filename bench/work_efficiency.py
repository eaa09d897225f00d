#!/usr/bin/env python3
"""Work efficiency of the catalogue masks: visible pairs over the pairs of the tiles a kernel
computes (every tile not Skipped), by the library's own tile classification (tile_counts).

A kernel that ran its Partial tiles as fast as its Full ones would reach this fraction of its
full-mask TFLOP/s on a mask, so it bounds the "own full" ratio of SPEC §6 / issue #3.

`--reorder W` also counts the same mask with its keys sorted inside windows of W keys, the
library's own sort (flashmask.sorted_key_order, the CUDA path's key_order="sorted" with W = 1024):
attention is exact under any permutation of the keys, and sorting clusters each key block's
interval bounds, which turns Partial tiles into Full and Skipped ones.

    python bench/work_efficiency.py --n 8192 32768 --reorder 512 1024 2048
"""

from __future__ import annotations

import argparse

import flashmask.masks as fm
from spec_densities import SPEC_DENSITY_SEED  # bench/, the script's own folder

FORWARD_TILE = (128, 64)   # query rows x keys: the sm80 forward's tile (forward_traits.hpp)
BACKWARD_TILE = (64, 128)  # the sm80 backward's step (backward_traits.cuh)
KERNEL_TILES = (FORWARD_TILE, BACKWARD_TILE)


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
    parser.add_argument("--seed", type=int, default=SPEC_DENSITY_SEED, help="catalogue seed (default: the benchmark's)")
    args = parser.parse_args()

    header = ["N", "mask", "tile", "as is"] + [f"sorted in {w}" for w in args.reorder]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for n in args.n:
        for name in args.masks.split(","):
            mask = fm.catalogue(name, n, args.seed)
            sorted_indices = [fm.sorted_key_order(mask.startend_row_indices, mask.causal, nq=n, nk=n, window=w)[1]
                              for w in args.reorder]
            for tile in KERNEL_TILES:
                row = [str(n), name, f"{tile[0]} x {tile[1]}",
                       f"{efficiency(mask.startend_row_indices, mask.causal, n, tile):.3f}"]
                row += [f"{efficiency(indices, False, n, tile):.3f}" for indices in sorted_indices]
                print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
