#!/usr/bin/env python3
"""Where a mask's own-full ratio goes, fitted over the masks of one benchmark run.

Model (bench/NOTES.md, session 9): a CTA of the forward (one query block) or of dK/dV (one key
block) takes f + n (1 + c p) full-tile times, n being its computed (non-Skipped) tiles, p the
Partial share of them, f a fixed cost per CTA and c the extra cost of a Partial tile. Then

    own-full ratio = work efficiency / (1 + f / n + c p)

with the work efficiency of work_efficiency.py. f and c come from a least-squares fit of
1 / (ratio / efficiency) - 1 against (1 / n, p) over the masks with an index tensor; the script
prints them, each mask's fit, and what the ratio would be without f, without c, and without both.

    python bench/rate_model.py bench/results/h100-2026-12-06-ca095b6-a.json
"""

from __future__ import annotations

import argparse
import json

import numpy as np

import flashmask.masks as fm
from work_efficiency import BACKWARD_TILE, FORWARD_TILE

# Masks left out of the fit: full and causal (no index tensor, the reference and its half),
# and those whose loss has another main cause: random_eviction (scattered columns, the key
# order's case), qk_sparse and prefix_lm_causal (nearly dense).
LEFT_OUT = {"full", "causal", "random_eviction", "qk_sparse", "prefix_lm_causal"}


def mask_terms(name: str, n: int, seed: int, tile, direction: str):
    """(work efficiency, computed tiles per CTA, Partial share) of one catalogue mask."""
    block_m, block_n = tile
    mask = fm.catalogue(name, n, seed)
    counts = fm.tile_counts(mask.startend_row_indices, mask.causal, nq=n, nk=n, block_m=block_m, block_n=block_n)
    computed = counts.partial + counts.full
    efficiency = fm.visible_pairs(mask.startend_row_indices, mask.causal, nq=n, nk=n) / (computed * block_m * block_n)
    ctas = n // block_m if direction == "forward" else n // block_n  # per (batch, head)
    return efficiency, computed / ctas, counts.partial / computed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", help="a bench_attention.py JSON file")
    parser.add_argument("--config", default="a")
    parser.add_argument("--seed", type=int, default=None,
                        help="catalogue seed (default: the results file's, from its meta; 0 where it has none)")
    args = parser.parse_args()
    results = json.load(open(args.results))
    if args.seed is None:
        args.seed = results.get("meta", {}).get("seed", 0)
    rows = [r for r in results["rows"] if r["config"] == args.config]
    full = next(r for r in rows if r["mask"] == "full")["results"]["flashmask"]
    for direction, tile in (("forward", FORWARD_TILE), ("backward", BACKWARD_TILE)):
        key = f"{direction}_tflops"
        fitted = []
        for row in rows:
            figure = row["results"].get("flashmask", {}).get(key)
            if row["mask"] in LEFT_OUT or not figure:
                continue
            efficiency, per_cta, partial = mask_terms(row["mask"], row["n"], args.seed, tile, direction)
            fitted.append((row["mask"], figure / full[key], efficiency, per_cta, partial))
        terms = np.array([[1.0 / per_cta, partial] for _, _, _, per_cta, partial in fitted])
        losses = np.array([efficiency / ratio - 1.0 for _, ratio, efficiency, _, _ in fitted])
        (f, c), *_ = np.linalg.lstsq(terms, losses, rcond=None)
        print(f"{direction} ({tile[0]} x {tile[1]}): f = {f:.2f} full tiles per CTA, c = {c:.2f} per Partial tile")
        print(f"  {'mask':22s} {'ratio':>6s} {'model':>6s} {'eff':>6s} {'n':>6s} {'p':>5s} "
              f"{'f/n':>5s} {'cp':>5s}  {'f=0':>5s} {'c=0':>5s} {'both':>5s}")
        for name, ratio, efficiency, per_cta, partial in fitted:
            fixed, extra = f / per_cta, c * partial
            print(f"  {name:22s} {ratio:6.2f} {efficiency / (1 + fixed + extra):6.3f} {efficiency:6.3f} "
                  f"{per_cta:6.1f} {partial:5.2f} {fixed:5.2f} {extra:5.2f}  {efficiency / (1 + extra):5.2f} "
                  f"{efficiency / (1 + fixed):5.2f} {efficiency:5.2f}")


if __name__ == "__main__":
    main()
