#!/usr/bin/env python3
"""The catalogue seed whose masks have SPEC §6's densities, the benchmark's default mask seed.

SPEC §6 asks for "realistic parameters (3-10 documents of random lengths; window N/8; prefix
N/4)" and lists, beside its reference figures, the density each mask had at 8K. The catalogue
(flashmask.catalogue, src/mask/catalogue.cpp) draws the document count and lengths from a seed;
seed 0, the benchmark's default until session 12, drew many short documents: share_question at
density 0.045 against SPEC's 0.08, the document masks at 0.6 of theirs. Sparser masks leave
fewer visible pairs in each computed tile, so the figures at seed 0 are not comparable with the
SPEC's table (bench/NOTES.md, session 12).

The seed is chosen on densities alone, before any timing: among seeds 0 .. SEARCHED_SEEDS - 1,
the one with the least sum over the masks of log(density / SPEC's density)^2 at N = 8192.

    python bench/spec_densities.py            # the chosen seed, its densities against SPEC's
    python bench/spec_densities.py --seed 0   # one seed's densities against SPEC's
"""

from __future__ import annotations

import argparse
import math
from typing import Dict

import flashmask

SPEC_N = 8192
SEARCHED_SEEDS = 200
# SPEC §6's "density 8K" column, for the masks whose density depends on the catalogue's draws or
# parameters (full and causal are 1 and 1/2 whatever the seed).
SPEC_DENSITIES: Dict[str, float] = {
    "sliding_window": 0.12, "causal_document": 0.13, "document": 0.26, "share_question": 0.08,
    "global_sliding_window": 0.15, "causal_blockwise": 0.20, "prefix_lm_causal": 0.53,
    "prefix_lm_document": 0.14, "qk_sparse": 0.36, "random_eviction": 0.37,
}
# What search_seed() returns (checked by tests/python/test_spec_densities.py): the benchmark's
# default --seed.
SPEC_DENSITY_SEED = 121


def densities(seed: int, n: int = SPEC_N) -> Dict[str, float]:
    """Visible pairs over n^2 of each mask of SPEC_DENSITIES, catalogue seed `seed`."""
    return {name: flashmask.visible_pairs(flashmask.catalogue(name, n, seed), nq=n, nk=n) / (n * n)
            for name in SPEC_DENSITIES}


def distance(found: Dict[str, float]) -> float:
    """Sum of squared log ratios to SPEC's densities (0: all equal)."""
    return sum(math.log(found[name] / spec) ** 2 for name, spec in SPEC_DENSITIES.items())


def search_seed(seeds: int = SEARCHED_SEEDS) -> int:
    """The seed in [0, seeds) whose densities are nearest SPEC's (the lowest such seed on a tie)."""
    return min(range(seeds), key=lambda seed: (distance(densities(seed)), seed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=None, help="show this seed (default: search for the nearest)")
    args = parser.parse_args()
    seed = search_seed() if args.seed is None else args.seed
    found = densities(seed)
    print(f"seed {seed} (distance {distance(found):.3f}), N = {SPEC_N}")
    print("| mask | density | SPEC §6 |")
    print("|---|---|---|")
    for name, spec in SPEC_DENSITIES.items():
        print(f"| {name} | {found[name]:.3f} | {spec:.2f} |")


if __name__ == "__main__":
    main()
