"""Each key column's two masked row intervals, as the library reads every mask layout; shared by
the benchmark (its FlexAttention mask_mod and dense check) and the work-efficiency study. Needs
NumPy and the flashmask package, not PyTorch."""

from __future__ import annotations

import numpy as np

import flashmask

# Canonical column bounds from flashmask.block_summaries(block_n=1): with one column per block
# the minima/maxima ARE the column's canonical intervals (tiles.hpp column_intervals), the
# library's one reading of every layout. max_lower_end and min_upper_start are not used: they
# leave empty intervals out, so they are not the column's bounds.
COLUMN_BOUND_FIELDS = ("min_lower_start", "min_lower_end", "max_upper_start", "max_upper_end")


def column_bounds(mask: flashmask.Mask, n: int) -> np.ndarray:
    """int32 [4, N]: lower_start, lower_end, upper_start, upper_end of every column (the causal
    diagonal folded into the upper interval), for Nq = Nk = n."""
    summaries = flashmask.block_summaries(mask, nq=n, nk=n, block_n=1)[0, 0]
    fields = [flashmask.BLOCK_SUMMARY_FIELDS.index(name) for name in COLUMN_BOUND_FIELDS]
    return np.ascontiguousarray(summaries[:, fields].T.astype(np.int32))
