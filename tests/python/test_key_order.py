"""flashmask.sorted_key_order: the keys as the CUDA path's key_order="sorted" reads them (its
host twin). The order keeps every key in its window and follows the rule of
include/flashmask/key_order.hpp, checked here against an independent NumPy lexsort of each
column's bounds (bench/mask_columns.py); the sorted C = 4 mask is the mask with its key columns
permuted, dense, for every catalogue mask; and random eviction's work efficiency rises with it
(bench/work_efficiency.py, which counts with it)."""

import pathlib
import sys

import numpy as np
import pytest

import flashmask
from flashmask import masks

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "bench"))
from mask_columns import column_bounds  # noqa: E402
from work_efficiency import FORWARD_TILE, efficiency  # noqa: E402

N = 777        # no multiple of any tile or window
WINDOW = 128


def lexsorted_order(bounds: np.ndarray, window: int) -> np.ndarray:
    """The rule, written independently: (lower start, lower end, upper end, upper start, key)
    ascending inside each window; bounds [4, N] as column_bounds() gives them."""
    lower_start, lower_end, upper_start, upper_end = bounds
    n = bounds.shape[1]
    order = np.empty(n, np.int64)
    for begin in range(0, n, window):
        keys = np.arange(begin, min(n, begin + window))
        # np.lexsort: last key primary; it is stable, so equal tuples stay in key order.
        ranks = np.lexsort((upper_start[keys], upper_end[keys], lower_end[keys], lower_start[keys]))
        order[begin:begin + keys.size] = keys[ranks]
    return order


@pytest.mark.parametrize("name", masks.catalogue_names())
def test_sorted_keys_are_the_mask_with_its_keys_permuted(name, rng):
    mask = masks.catalogue(name, N, int(rng.integers(1 << 31)))
    order, indices = flashmask.sorted_key_order(mask.startend_row_indices, mask.causal, nq=N, nk=N, window=WINDOW)
    assert order.shape == (1, 1, N) and order.dtype == np.int32
    assert indices.shape == (1, 1, N, 4) and indices.dtype == np.int32
    order = order[0, 0]
    np.testing.assert_array_equal(order, lexsorted_order(column_bounds(mask, N), WINDOW))
    for begin in range(0, N, WINDOW):  # keys move only inside their window
        assert sorted(order[begin:begin + WINDOW].tolist()) == list(range(begin, min(N, begin + WINDOW)))
    dense = masks.to_dense(mask, nq=N, nk=N)
    np.testing.assert_array_equal(masks.to_dense(indices, False, nq=N, nk=N), dense[:, order])


def test_the_default_window_is_the_kernels(rng):
    mask = masks.random_eviction(3000, int(rng.integers(1 << 31)))
    default_order, _ = flashmask.sorted_key_order(mask.startend_row_indices, mask.causal)
    order, _ = flashmask.sorted_key_order(mask.startend_row_indices, mask.causal, window=flashmask.KEY_ORDER_WINDOW)
    np.testing.assert_array_equal(default_order, order)
    assert flashmask.KEY_ORDER_WINDOW == 1024


def test_sorting_raises_random_evictions_work_efficiency(rng):
    # bench/NOTES.md (sessions 6 and 7): 0.74 -> 0.87 at 8K; at 4K the sort must still win clearly.
    n = 4096
    mask = masks.random_eviction(n, int(rng.integers(1 << 31)))
    as_is = efficiency(mask.startend_row_indices, mask.causal, n, FORWARD_TILE)
    _, indices = flashmask.sorted_key_order(mask.startend_row_indices, mask.causal, window=512)
    assert efficiency(indices, False, n, FORWARD_TILE) > as_is + 0.05


def test_a_window_below_one_is_refused(rng):
    mask = masks.random_eviction(100, int(rng.integers(1 << 31)))
    with pytest.raises(ValueError) as refused:
        flashmask.sorted_key_order(mask.startend_row_indices, mask.causal, window=0)
    assert refused.value.argument == "window"
