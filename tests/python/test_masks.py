"""Mask builders, dense converters, tile counts and visible pairs from Python."""

import numpy as np
import pytest

import flashmask
from flashmask import masks

PAPER_N = 10  # the paper's catalogue examples are for N = 10 (SPEC §3)


def slot(mask, index):
    """Slot vector `index` (LTS = 0, ...) of a one-sequence mask."""
    return mask.startend_row_indices[0, 0, :, index].tolist()


def paper_mask(causal, *vectors):
    """The paper's example as an index tensor [1, 1, N, C]."""
    indices = np.ascontiguousarray(np.array(vectors, dtype=np.int32).T).reshape(1, 1, PAPER_N, len(vectors))
    return flashmask.Mask(indices, causal)


# --- the paper's examples (SPEC §3, N = 10) -----------------------------------------------------


def test_causal_document_matches_paper():
    mask = masks.causal_document([4, 3, 3])
    assert mask.causal is True
    assert mask.startend_row_indices.shape == (1, 1, PAPER_N, 1)
    assert mask.startend_row_indices.dtype == np.int32
    assert slot(mask, 0) == [4, 4, 4, 4, 7, 7, 7, 10, 10, 10]


def test_share_question_matches_paper():
    mask = masks.share_question([4], [[3, 3]])
    assert mask.causal is True
    assert slot(mask, 0) == [10, 10, 10, 10, 7, 7, 7, 10, 10, 10]


def test_causal_blockwise_matches_paper():
    mask = masks.causal_blockwise([4, 3, 3])
    assert mask.causal is True
    assert slot(mask, 0) == [4, 4, 4, 4, 10, 10, 10, 10, 10, 10]
    assert slot(mask, 1) == [7, 7, 7, 7, 10, 10, 10, 10, 10, 10]


def test_prefix_lm_causal_matches_paper():
    mask = masks.prefix_lm_causal(PAPER_N, 5)
    assert mask.causal is False
    assert slot(mask, 0) == [10] * PAPER_N
    assert slot(mask, 1) == [0, 0, 0, 0, 0, 5, 6, 7, 8, 9]


def test_prefix_lm_document_matches_paper():
    mask = masks.prefix_lm_document([3, 2, 5], [2, 2, 2])
    assert slot(mask, 0) == [3, 3, 3, 5, 5, 10, 10, 10, 10, 10]
    assert slot(mask, 1) == [0, 0, 2, 3, 3, 5, 5, 7, 8, 9]


def test_global_sliding_window_sees_what_the_paper_example_sees():
    paper = paper_mask(False, [10, 10, 4, 5, 6, 7, 8, 9, 10, 10], [10] * 10, [0, 0, 0, 0, 2, 2, 2, 2, 2, 2],
                       [0, 0, 0, 0, 3, 4, 5, 6, 7, 8])
    built = masks.global_sliding_window(PAPER_N, 2, 2)
    np.testing.assert_array_equal(flashmask.to_dense(built), flashmask.to_dense(paper))


def test_qk_sparse_sees_what_the_paper_example_sees():
    paper = paper_mask(True, [10, 10, 2, 3, 4, 5, 6, 7, 10, 10], [10, 10, 5, 5, 5, 5, 8, 8, 10, 10])
    built = masks.qk_sparse(PAPER_N, [(2, 5), (6, 8)])
    np.testing.assert_array_equal(flashmask.to_dense(built), flashmask.to_dense(paper))


# --- builders against masks written independently in NumPy ---------------------------------------


def document_ids(lengths):
    return np.repeat(np.arange(len(lengths)), lengths)


def test_causal_document_and_document_against_numpy(rng):
    lengths = [int(x) for x in rng.integers(1, 40, size=int(rng.integers(1, 6)))]
    n = sum(lengths)
    same_document = document_ids(lengths)[:, None] == document_ids(lengths)[None, :]
    lower = np.tril(np.ones((n, n), dtype=bool))
    np.testing.assert_array_equal(flashmask.to_dense(masks.causal_document(lengths)), same_document & lower)
    np.testing.assert_array_equal(flashmask.to_dense(masks.document(lengths)), same_document)


def test_sliding_window_against_numpy(rng):
    n = int(rng.integers(1, 120))
    window = int(rng.integers(1, n + 2))
    mask = masks.sliding_window(n, window)
    assert slot(mask, 0) == [min(j + window, n) for j in range(n)]
    rows, cols = np.indices((n, n))
    np.testing.assert_array_equal(flashmask.to_dense(mask), (cols <= rows) & (rows < cols + window))


def test_window_with_unequal_lengths_against_numpy(rng):
    nq, nk = (int(x) for x in rng.integers(1, 90, size=2))
    left, right = (int(x) for x in rng.integers(0, 20, size=2))
    offset = nk - nq  # bottom-right alignment
    rows, cols = np.indices((nq, nk))
    mask = masks.window(nq, nk, left, right, False)
    expected = (rows + offset - left <= cols) & (cols <= rows + offset + right)
    np.testing.assert_array_equal(flashmask.to_dense(mask, nq=nq), expected)
    causal_mask = masks.window(nq, nk, left, right, True)
    assert causal_mask.causal is True
    expected_causal = (rows + offset - left <= cols) & (cols <= rows + offset)
    np.testing.assert_array_equal(flashmask.to_dense(causal_mask, nq=nq), expected_causal)


def test_eviction_from_rows(rng):
    n = int(rng.integers(2, 80))
    rows = [int(rng.integers(j + 1, n + 1)) for j in range(n)]
    mask = masks.eviction(rows)
    assert mask.causal is True and slot(mask, 0) == rows
    seeded = masks.random_eviction(n, int(rng.integers(0, 2**31)))
    values = np.array(slot(seeded, 0))
    assert np.all(values >= np.arange(n) + 1) and np.all(values <= n)
    never = masks.random_eviction(n, int(rng.integers(0, 2**31)), eviction_probability=0.0)
    assert slot(never, 0) == [n] * n
    with pytest.raises(ValueError, match="eviction_probability"):
        masks.random_eviction(n, 1, eviction_probability=2.0)


# --- the catalogue, converters, counts -----------------------------------------------------------


def test_catalogue_has_the_twelve_masks():
    assert flashmask.catalogue_names() == [
        "full", "causal", "sliding_window", "causal_document", "document", "share_question",
        "global_sliding_window", "causal_blockwise", "prefix_lm_causal", "prefix_lm_document", "qk_sparse",
        "random_eviction",
    ]


@pytest.mark.parametrize("name", masks.catalogue_names())
def test_dense_round_trip(name, rng):
    n = int(rng.integers(1, 150))
    mask = flashmask.catalogue(name, n, int(rng.integers(0, 2**31)))
    if mask.startend_row_indices is not None:
        flashmask.validate_mask(mask, nq=n)
    dense = flashmask.to_dense(mask, nq=n, nk=n)
    assert dense.shape == (n, n) and dense.dtype == np.bool_
    rebuilt = flashmask.from_dense(dense, causal=mask.causal)
    np.testing.assert_array_equal(flashmask.to_dense(rebuilt, nq=n), dense)
    # Every dense mask also has the most general form, C = 4 without causal.
    general = flashmask.from_dense(dense, causal=False, slots=4)
    np.testing.assert_array_equal(flashmask.to_dense(general, nq=n), dense)


def test_from_dense_refuses_naming_the_first_offending_column(rng):
    n = int(rng.integers(6, 60))
    column = int(rng.integers(0, n - 3))
    dense = np.tril(np.ones((n, n), dtype=bool))
    dense[column + 1, column] = False  # a hole: masked rows are no longer one run to the end
    with pytest.raises(ValueError) as refused:
        flashmask.from_dense(dense, causal=True, slots=1)
    assert refused.value.argument == "dense_mask"
    assert f"column {column} " in str(refused.value)
    # With LTE the hole has an exact form.
    rebuilt = flashmask.from_dense(dense, causal=True)
    assert rebuilt.startend_row_indices.shape[-1] == 2
    np.testing.assert_array_equal(flashmask.to_dense(rebuilt), dense)


def test_visible_pairs_counts_the_dense_mask(rng):
    n = int(rng.integers(1, 200))
    name = str(rng.choice(masks.catalogue_names()))
    mask = flashmask.catalogue(name, n, int(rng.integers(0, 2**31)))
    batch, q_heads = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    pairs = flashmask.visible_pairs(mask, nq=n, nk=n, batch=batch, q_heads=q_heads)
    assert pairs == int(flashmask.to_dense(mask, nq=n, nk=n).sum()) * batch * q_heads


def test_tile_counts_are_sound_against_the_dense_mask(rng):
    n = int(rng.integers(1, 300))
    block_m, block_n = (int(x) for x in rng.choice([16, 32, 64, 128], size=2))
    name = str(rng.choice(masks.catalogue_names()))
    mask = flashmask.catalogue(name, n, int(rng.integers(0, 2**31)))
    dense = flashmask.to_dense(mask, nq=n, nk=n)
    counts = flashmask.tile_counts(mask, nq=n, nk=n, block_m=block_m, block_n=block_n)
    empty, visible_all = 0, 0
    for row in range(0, n, block_m):
        for col in range(0, n, block_n):
            tile = dense[row:row + block_m, col:col + block_n]
            empty += not tile.any()
            visible_all += tile.all()
    q_blocks, kv_blocks = -(-n // block_m), -(-n // block_n)
    assert counts.total == q_blocks * kv_blocks
    assert counts.skipped <= empty and counts.full <= visible_all


def test_tile_counts_of_plain_causal(rng):
    block = int(rng.choice([16, 32, 64]))
    blocks = int(rng.integers(1, 8))
    heads = int(rng.integers(1, 4))
    counts = flashmask.tile_counts(masks.causal(block * blocks), nq=block * blocks, nk=block * blocks,
                                   q_heads=heads, block_m=block, block_n=block)
    below_diagonal = blocks * (blocks - 1) // 2
    assert counts == (below_diagonal * heads, blocks * heads, below_diagonal * heads)


def test_block_summaries_shape(rng):
    n = int(rng.integers(1, 200))
    mask = masks.causal_document([n])
    summaries = flashmask.block_summaries(mask, block_n=32)
    assert summaries.shape == (1, 1, -(-n // 32), len(flashmask.BLOCK_SUMMARY_FIELDS))
    lower_start = list(flashmask.BLOCK_SUMMARY_FIELDS).index("min_lower_start")
    assert summaries.dtype == np.int32 and np.all(summaries[..., lower_start] >= 0)


def test_module_refuses_more_mask_heads_than_the_index_tensor_holds(rng):
    # The extension's to_dense / block_summaries take the head count from the caller; a count
    # above the tensor's Hm (accepted as a broadcast Hm = 1 before) read past the tensor's end.
    n = int(rng.integers(2, 50))
    indices = masks.causal_document([n]).startend_row_indices
    heads = int(rng.integers(2, 1_000_000))
    with pytest.raises(ValueError, match="has 1 mask heads; expected mask_heads") as refused:
        flashmask._flashmask.to_dense(indices, True, 1, heads, n, n, 0, heads - 1)
    assert refused.value.argument == "startend_row_indices"
    with pytest.raises(ValueError, match="has 1 mask heads; expected mask_heads"):
        flashmask._flashmask.block_summaries(indices, True, 1, heads, n, n, 32)
