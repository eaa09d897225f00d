"""flashmask.torch_masks: the torch builders against the C++ ones (flashmask.masks), value for
value, on fresh random parameters; the document forms (lengths, cu_seqlens, position ids)
against one another; the dense, mask_mod and BlockMask converters; Paddle's arguments; devices.

Skips without torch. CUDA cases skip without a GPU."""

import re
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import flashmask  # noqa: E402
from flashmask import masks  # noqa: E402
from flashmask import torch_masks as tm  # noqa: E402

PAPER_N = 10  # the paper's catalogue examples are for N = 10 (SPEC §3)
# Sizes: 1, small odd ones, one past a power of two, and a larger random one per run.
SIZES = [1, 7, 17, 65]
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")


# --- helpers ---------------------------------------------------------------------------------------


def assert_same_mask(torch_mask, host_mask, batch_row=0):
    """One row of a torch Mask equals a NumPy Mask exactly (causal flag, C and every value)."""
    assert torch_mask.causal == host_mask.causal
    if host_mask.startend_row_indices is None:
        assert torch_mask.startend_row_indices is None
        return
    indices = torch_mask.startend_row_indices
    assert indices.dtype == torch.int32 and indices.is_contiguous()
    np.testing.assert_array_equal(indices[batch_row:batch_row + 1].cpu().numpy(), host_mask.startend_row_indices)


def assert_same_batch(torch_mask, host_masks):
    """A torch Mask [B, 1, N, C] equals one NumPy Mask per row."""
    assert torch_mask.startend_row_indices.shape[:2] == (len(host_masks), 1)
    for b, host in enumerate(host_masks):
        assert_same_mask(torch_mask, host, b)


def slots(mask):
    """The slot vectors (LTS, ...) of row 0, head 0 as lists."""
    return mask.startend_row_indices[0, 0].T.tolist()


def random_lengths(rng, n, allow_empty=True):
    """A random split of n tokens into 1-6 documents (some empty when allowed)."""
    documents = int(rng.integers(1, 7))
    if not allow_empty:
        documents = min(documents, n) if n > 0 else 1
        cuts = np.sort(rng.choice(np.arange(1, n), size=documents - 1, replace=False)) if n > 1 else np.array([], int)
    else:
        cuts = np.sort(rng.integers(0, n + 1, size=documents - 1))
    bounds = np.concatenate([[0], cuts, [n]])
    return [int(x) for x in np.diff(bounds)]


def random_batch_lengths(rng, n, allow_empty=True):
    return [random_lengths(rng, n, allow_empty) for _ in range(int(rng.integers(1, 4)))]


def cu_seqlens_of(lengths):
    return [0] + np.cumsum(lengths).astype(int).tolist()


def position_ids_of(batch_lengths):
    return torch.tensor([[p for length in lengths for p in range(length)] for lengths in batch_lengths])


def random_size(rng, size):
    return size if size != "random" else int(rng.integers(2, 300))


def paper_dense(is_causal, *vectors):
    """SPEC §2's table, read element by element (independent of both implementations)."""
    n = len(vectors[0])
    dense = np.ones((n, n), dtype=bool)
    for j in range(n):
        for i in range(n):
            if is_causal:
                hidden = j > i
                lts = vectors[0][j]
                lte = vectors[1][j] if len(vectors) == 2 else n
                hidden |= lts <= i < lte
            elif len(vectors) == 2:
                hidden = i >= vectors[0][j] or i < vectors[1][j]
            else:
                hidden = vectors[0][j] <= i < vectors[1][j] or vectors[2][j] <= i < vectors[3][j]
            dense[i, j] = not hidden
    return dense


def torch_generator(seed):
    return torch.Generator().manual_seed(seed)


# --- SPEC §3's examples (N = 10) -------------------------------------------------------------------


def test_paper_examples():
    assert slots(tm.causal_document([4, 3, 3])) == [[4, 4, 4, 4, 7, 7, 7, 10, 10, 10]]
    assert slots(tm.document([4, 3, 3])) == [[4, 4, 4, 4, 7, 7, 7, 10, 10, 10], [0, 0, 0, 0, 4, 4, 4, 7, 7, 7]]
    assert slots(tm.share_question([4], [[3, 3]])) == [[10, 10, 10, 10, 7, 7, 7, 10, 10, 10]]
    assert slots(tm.global_sliding_window(PAPER_N, 2, 2)) == [
        [10, 10, 4, 5, 6, 7, 8, 9, 10, 10], [10] * 10, [0, 0, 0, 0, 2, 2, 2, 2, 2, 2], [0, 0, 0, 0, 3, 4, 5, 6, 7, 8]]
    assert slots(tm.causal_blockwise([4, 3, 3])) == [[4, 4, 4, 4, 10, 10, 10, 10, 10, 10],
                                                      [7, 7, 7, 7, 10, 10, 10, 10, 10, 10]]
    assert slots(tm.prefix_lm_causal(PAPER_N, 5)) == [[10] * 10, [0, 0, 0, 0, 0, 5, 6, 7, 8, 9]]
    assert slots(tm.prefix_lm_document([3, 2, 5], [2, 2, 2])) == [[3, 3, 3, 5, 5, 10, 10, 10, 10, 10],
                                                                 [0, 0, 2, 3, 3, 5, 5, 7, 8, 9]]
    assert slots(tm.sliding_window(PAPER_N, 3)) == [[3, 4, 5, 6, 7, 8, 9, 10, 10, 10]]
    assert tm.full(PAPER_N) == (None, False) and tm.causal(PAPER_N) == (None, True)
    # The paper writes QK-sparse's untouched middle column as (5, 5), the builders as (N, N): same mask.
    paper_qk = paper_dense(True, [10, 10, 2, 3, 4, 5, 6, 7, 10, 10], [10, 10, 5, 5, 5, 5, 8, 8, 10, 10])
    np.testing.assert_array_equal(tm.to_dense(tm.qk_sparse(PAPER_N, [(2, 5), (6, 8)]))[0, 0].numpy(), paper_qk)
    for mask in (tm.causal_document([4, 3, 3]), tm.causal_blockwise([4, 3, 3]), tm.share_question([4], [[3, 3]])):
        assert mask.causal is True and mask.startend_row_indices.shape[:3] == (1, 1, PAPER_N)


# --- every builder against its C++ twin, random parameters ------------------------------------------


@pytest.mark.parametrize("size", SIZES + ["random"])
@pytest.mark.parametrize("kind", ["causal_document", "document", "causal_blockwise"])
def test_document_builders_match_cpp(kind, size, rng):
    n = random_size(rng, size)
    batch_lengths = random_batch_lengths(rng, n)
    built = getattr(tm, kind)(batch_lengths)
    assert built.startend_row_indices.shape[:3] == (len(batch_lengths), 1, n)
    assert_same_batch(built, [getattr(masks, kind)(lengths) for lengths in batch_lengths])
    # One row given flat is B = 1.
    assert_same_mask(getattr(tm, kind)(batch_lengths[0]), getattr(masks, kind)(batch_lengths[0]))


@pytest.mark.parametrize("size", SIZES + ["random"])
@pytest.mark.parametrize("kind", ["causal_document", "document", "causal_blockwise"])
def test_cu_seqlens_and_position_ids_match_lengths(kind, size, rng):
    n = random_size(rng, size)
    builder = getattr(tm, kind)
    batch_lengths = random_batch_lengths(rng, n)
    expected = builder(batch_lengths).startend_row_indices
    # Ragged cu_seqlens (a list of int32 tensors), and each row's 1-D cu_seqlens for B = 1.
    ragged = [torch.tensor(cu_seqlens_of(lengths), dtype=torch.int32) for lengths in batch_lengths]
    assert torch.equal(builder(cu_seqlens=ragged).startend_row_indices, expected)
    for b, row in enumerate(ragged):
        assert torch.equal(builder(cu_seqlens=row).startend_row_indices, expected[b:b + 1])
    # A rectangular [B, D + 1] cu_seqlens: every row with the same number of documents.
    documents = int(rng.integers(1, 5))
    same_count = [[n] if documents == 1 else random_lengths_exactly(rng, n, documents) for _ in range(2)]
    rectangular = torch.tensor([cu_seqlens_of(lengths) for lengths in same_count], dtype=torch.int64)
    assert torch.equal(builder(cu_seqlens=rectangular).startend_row_indices, builder(same_count).startend_row_indices)
    # Position ids cannot spell an empty document: compare with the lengths without them.
    nonempty = [[length for length in lengths if length > 0] for lengths in batch_lengths]
    from_positions = builder(position_ids=position_ids_of(nonempty))
    assert torch.equal(from_positions.startend_row_indices, builder(nonempty).startend_row_indices)
    assert torch.equal(builder(position_ids=position_ids_of(nonempty[:1])[0]).startend_row_indices,
                       builder(nonempty[0]).startend_row_indices)


def random_lengths_exactly(rng, n, documents):
    """n tokens in exactly `documents` documents (some possibly empty)."""
    cuts = np.sort(rng.integers(0, n + 1, size=documents - 1))
    return [int(x) for x in np.diff(np.concatenate([[0], cuts, [n]]))]


def test_empty_last_document_keeps_its_meaning_for_causal_blockwise(rng):
    # With an empty last document no row sees earlier documents (C++ semantics): the torch
    # builder must not take the last non-empty document for the last one.
    n = int(rng.integers(4, 60))
    lengths = random_lengths_exactly(rng, n, 3) + [0]
    assert_same_mask(tm.causal_blockwise(lengths), masks.causal_blockwise(lengths))
    assert_same_mask(tm.causal_blockwise(cu_seqlens=cu_seqlens_of(lengths)), masks.causal_blockwise(lengths))


@pytest.mark.parametrize("size", SIZES + ["random"])
def test_prefix_lm_document_matches_cpp(size, rng):
    n = random_size(rng, size)
    batch_lengths = random_batch_lengths(rng, n)
    batch_prefixes = [[int(rng.integers(0, length + 1)) for length in lengths] for lengths in batch_lengths]
    built = tm.prefix_lm_document(batch_lengths, batch_prefixes)
    assert_same_batch(built, [masks.prefix_lm_document(l, p) for l, p in zip(batch_lengths, batch_prefixes)])
    cu = [torch.tensor(cu_seqlens_of(lengths)) for lengths in batch_lengths]
    assert torch.equal(tm.prefix_lm_document(cu_seqlens=cu, prefix_lengths=batch_prefixes).startend_row_indices,
                       built.startend_row_indices)
    nonempty = [[(l, p) for l, p in zip(lengths, prefixes) if l > 0]
                for lengths, prefixes in zip(batch_lengths, batch_prefixes)]
    lengths_only = [[l for l, _ in row] for row in nonempty]
    prefixes_only = [[p for _, p in row] for row in nonempty]
    assert torch.equal(
        tm.prefix_lm_document(position_ids=position_ids_of(lengths_only), prefix_lengths=prefixes_only).startend_row_indices,
        tm.prefix_lm_document(lengths_only, prefixes_only).startend_row_indices)


@pytest.mark.parametrize("size", SIZES + ["random"])
def test_share_question_matches_cpp(size, rng):
    n_documents = [int(rng.integers(1, 4)) for _ in range(int(rng.integers(1, 4)))]
    # Draw rows until every row has the same total: build the first, then fit the others to it.
    rows = []
    for documents in n_documents:
        questions = [int(rng.integers(0, 12)) for _ in range(documents)]
        answers = [[int(rng.integers(0, 9)) for _ in range(int(rng.integers(0, 4)))] for _ in range(documents)]
        rows.append((questions, answers))
    totals = [sum(q) + sum(sum(a) for a in answers) for q, answers in rows]
    target = max(totals) + (size if size != "random" else int(rng.integers(0, 40)))
    for (questions, answers), total in zip(rows, totals):
        answers[-1].append(target - total)  # one more answer pads the row to the common length
    built = tm.share_question([q for q, _ in rows], [a for _, a in rows])
    assert built.startend_row_indices.shape[:3] == (len(rows), 1, target)
    assert_same_batch(built, [masks.share_question(q, a) for q, a in rows])
    assert_same_mask(tm.share_question(*rows[0]), masks.share_question(*rows[0]))


@pytest.mark.parametrize("size", SIZES + ["random"])
def test_window_builders_match_cpp(size, rng):
    n = random_size(rng, size)
    window = int(rng.integers(1, n + 3))
    batch = int(rng.integers(1, 4))
    built = tm.sliding_window(n, window, batch=batch)
    assert_same_batch(built, [masks.sliding_window(n, window)] * batch)
    global_tokens = int(rng.integers(0, n + 1))
    assert_same_batch(tm.global_sliding_window(n, global_tokens, window, batch=batch),
                      [masks.global_sliding_window(n, global_tokens, window)] * batch)
    nq, nk = n, random_size(rng, "random") if size == "random" else n + int(rng.integers(-n + 1, 9))
    for is_causal in (False, True):
        left, right = (int(x) for x in rng.integers(-2, n + 2, size=2))
        assert_same_mask(tm.window(nq, nk, left, right, is_causal), masks.window(nq, nk, left, right, is_causal))


def varlen_dense(q_lengths, k_lengths, left, right, is_causal):
    """FlashAttention varlen's mask built from the C++ window builder, one document at a time
    (bottom-right aligned within each document) on the block diagonal."""
    dense = np.zeros((sum(q_lengths), sum(k_lengths)), dtype=bool)
    q0 = k0 = 0
    for nq, nk in zip(q_lengths, k_lengths):
        if nq > 0 and nk > 0:
            block = flashmask.to_dense(masks.window(nq, nk, left, right, is_causal), nq=nq)
            dense[q0:q0 + nq, k0:k0 + nk] = block
        q0, k0 = q0 + nq, k0 + nk
    return dense


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("windowed", [False, True])
def test_varlen_is_flash_attention_varlen(is_causal, windowed, rng):
    documents = int(rng.integers(1, 6))
    q_lengths = [int(x) for x in rng.integers(0, 30, size=documents)]
    k_lengths = [int(x) for x in rng.integers(0, 30, size=documents)]
    left, right = (int(x) for x in rng.integers(-1, 12, size=2)) if windowed else (-1, -1)
    window_size = (left, right) if windowed else None
    cu_q = torch.tensor(cu_seqlens_of(q_lengths), dtype=torch.int32)
    cu_k = torch.tensor(cu_seqlens_of(k_lengths), dtype=torch.int32)
    mask = tm.varlen(cu_q, cu_k, causal=is_causal, window_size=window_size)
    assert mask.causal is False and mask.startend_row_indices.shape == (1, 1, sum(k_lengths), 2)
    dense = tm.to_dense(mask, nq=sum(q_lengths))[0, 0].numpy()
    np.testing.assert_array_equal(dense, varlen_dense(q_lengths, k_lengths, left, right, is_causal))
    # Self-attention: the document masks themselves (causal, C = 1, when causal).
    same = tm.varlen(cu_q, causal=is_causal, window_size=window_size)
    assert same.causal is is_causal
    np.testing.assert_array_equal(tm.to_dense(same)[0, 0].numpy(),
                                  varlen_dense(q_lengths, q_lengths, left, right, is_causal))
    if not windowed:
        expected = (tm.causal_document if is_causal else tm.document)(q_lengths)
        assert torch.equal(same.startend_row_indices, expected.startend_row_indices)


@pytest.mark.parametrize("size", SIZES + ["random"])
def test_prefix_lm_causal_matches_cpp(size, rng):
    n = random_size(rng, size)
    prefixes = [int(x) for x in rng.integers(0, n + 1, size=int(rng.integers(1, 4)))]
    assert_same_batch(tm.prefix_lm_causal(n, prefixes), [masks.prefix_lm_causal(n, p) for p in prefixes])
    assert_same_batch(tm.prefix_lm_causal(n, torch.tensor(prefixes)), [masks.prefix_lm_causal(n, p) for p in prefixes])
    assert_same_batch(tm.prefix_lm_causal(n, prefixes[0], batch=2), [masks.prefix_lm_causal(n, prefixes[0])] * 2)


def random_spans(rng, n):
    """Up to 4 non-overlapping spans [start, end) in [0, n), in random order."""
    points = np.sort(rng.choice(np.arange(n + 1), size=min(2 * int(rng.integers(0, 5)), n + 1 - (n + 1) % 2),
                                replace=False))
    spans = [(int(points[i]), int(points[i + 1])) for i in range(0, len(points) - 1, 2)]
    rng.shuffle(spans)
    return spans


@pytest.mark.parametrize("size", SIZES + ["random"])
def test_qk_sparse_matches_cpp(size, rng):
    n = random_size(rng, size)
    rows = [random_spans(rng, n) for _ in range(int(rng.integers(1, 4)))]
    assert_same_batch(tm.qk_sparse(n, rows), [masks.qk_sparse(n, spans) for spans in rows])
    assert_same_mask(tm.qk_sparse(n, rows[0]), masks.qk_sparse(n, rows[0]))
    if rows[0]:
        assert_same_mask(tm.qk_sparse(n, torch.tensor(rows[0])), masks.qk_sparse(n, rows[0]))


@pytest.mark.parametrize("size", SIZES + ["random"])
def test_eviction_matches_cpp(size, rng, seed):
    n = random_size(rng, size)
    rows = [[int(rng.integers(j + 1, n + 1)) for j in range(n)] for _ in range(int(rng.integers(1, 4)))]
    assert_same_batch(tm.eviction(torch.tensor(rows, dtype=torch.int32)), [masks.eviction(r) for r in rows])
    assert_same_mask(tm.eviction(rows[0]), masks.eviction(rows[0]))
    # With a seed the mask is the C++ catalogue's, drawn on the host.
    cpp_seed = int(rng.integers(0, 2**31))
    probability = float(rng.uniform(0, 1))
    assert_same_mask(tm.random_eviction(n, seed=cpp_seed, eviction_probability=probability),
                     masks.random_eviction(n, cpp_seed, probability))


def test_random_eviction_with_a_torch_generator(seed):
    n, batch = 257, 3
    first = tm.random_eviction(n, generator=torch_generator(seed), batch=batch)
    again = tm.random_eviction(n, generator=torch_generator(seed), batch=batch)
    assert torch.equal(first.startend_row_indices, again.startend_row_indices)  # the generator decides
    rows = first.startend_row_indices[:, 0, :, 0].long()
    j = torch.arange(n)
    assert bool(((rows >= j + 1) & (rows <= n)).all())
    evicted = float((rows < n).float().mean())
    assert 0.3 < evicted < 0.7  # p = 1/2 (a key evicted from row N counts as kept: at most 1/N more)
    # The draws are a valid eviction mask, so the C++ builder accepts them and agrees.
    assert_same_batch(first, [masks.eviction(r.tolist()) for r in rows])
    never = tm.random_eviction(n, eviction_probability=0.0, generator=torch_generator(seed))
    assert slots(never) == [[n] * n]
    always = tm.random_eviction(n, eviction_probability=1.0, generator=torch_generator(seed))
    assert bool((always.startend_row_indices[0, 0, :-1, 0] < n).any())


# --- refusals ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("call, argument, message", [
    (lambda: tm.causal_document([3, -1]), "document_lengths", r"\[0\]\[1\] = -1 is negative"),
    (lambda: tm.document([[3, 4], [5]]), "document_lengths", r"row 1 has 5 tokens but row 0 has 7"),
    (lambda: tm.causal_document(cu_seqlens=[1, 4]), "cu_seqlens", r"starts at 1; expected 0"),
    (lambda: tm.causal_document(cu_seqlens=torch.tensor([0, 5, 3])), "cu_seqlens", r"decreases at entry 2"),
    (lambda: tm.causal_document(cu_seqlens=torch.tensor([0.0, 2.0])), "cu_seqlens", r"dtype"),
    (lambda: tm.causal_document(position_ids=torch.tensor([[0, 1, 3]])), "position_ids", r"\[0, 2\] = 3; expected 0"),
    (lambda: tm.causal_document(position_ids=torch.tensor([1, 2])), "position_ids", r"\[0, 0\] = 1"),
    (lambda: tm.varlen([0, 3, 5], [0, 4]), "cu_seqlens_k", r"expected one entry per document in both"),
    (lambda: tm.varlen([0, 3], window_size=(1, 2, 3)), "window_size", r"a pair \(left, right\)"),
    (lambda: tm.causal_document([2], cu_seqlens=[0, 2]), "document_lengths", r"exactly one form"),
    (lambda: tm.causal_document(), "document_lengths", r"got none"),
    (lambda: tm.prefix_lm_document([3, 2], [4, 0]), "prefix_lengths", r"\[0\]\[0\] = 4 must be in \[0, document length = 3\]"),
    (lambda: tm.prefix_lm_document([3, 2], [1]), "prefix_lengths", r"1 entries in row 0; expected one per document \(2\)"),
    (lambda: tm.prefix_lm_causal(5, 6), "prefix_length", r"must be in \[0, n = 5\]"),
    (lambda: tm.sliding_window(5, 0), "window", r"at least 1"),
    (lambda: tm.global_sliding_window(5, 6, 2), "global_tokens", r"\[0, n = 5\]"),
    (lambda: tm.qk_sparse(10, [(2, 5), (4, 8)]), "dropped_spans", r"overlap: \[2, 5\) and \[4, 8\)"),
    (lambda: tm.qk_sparse(10, [(2, 11)]), "dropped_spans", r"0 <= start < end <= n = 10"),
    (lambda: tm.eviction([1, 1, 3]), "eviction_rows", r"\[0, 1\] = 1 must be in \[j \+ 1, N\] = \[2, 3\]"),
    (lambda: tm.random_eviction(5, eviction_probability=1.5), "eviction_probability", r"\[0, 1\]"),
    (lambda: tm.share_question([2, 3], [[1]]), "answer_lengths", r"1 documents in row 0; expected one per question"),
    (lambda: tm.share_question([2], [[1, -1]]), "answer_lengths", r"\[0\]\[0\]\[1\] = -1 is negative"),
    (lambda: tm.to_dense(torch.zeros(1, 1, 4, 3, dtype=torch.int32)), "startend_row_indices", r"C = 3"),
    (lambda: tm.to_dense(torch.zeros(1, 1, 4, 1, dtype=torch.int64), True), "startend_row_indices", r"torch.int32"),
    (lambda: tm.to_dense(None, nq=3), "nk", r"nk is needed"),
    (lambda: tm.from_dense(torch.ones(3, 3, 3, dtype=torch.bool)), "dense_mask", r"\[Nq, Nk\] or \[B, H, Nq, Nk\]"),
    (lambda: tm.from_dense(torch.ones(3, 3, dtype=torch.bool), causal=True, slots=4), "slots", r"C = 4 is not allowed"),
])
def test_bad_parameters_are_refused_naming_the_argument(call, argument, message):
    with pytest.raises((ValueError, TypeError)) as refused:
        call()
    assert refused.value.argument == argument
    assert re.search(message, str(refused.value)), str(refused.value)


@pytest.mark.parametrize("batch, exception", [(2.0, TypeError), (True, TypeError), ("2", TypeError),
                                              (0, ValueError), (-1, ValueError)])
def test_a_bad_batch_is_refused_with_the_type_of_its_fault(batch, exception):
    # A non-int is a TypeError, as for the lengths; an int below 1 a ValueError.
    with pytest.raises(exception) as refused:
        tm.sliding_window(8, 2, batch=batch)
    assert refused.value.argument == "batch"
    assert "sliding_window: batch must be an int >= 1" in str(refused.value)


# --- dense converters --------------------------------------------------------------------------------

# (causal, C) of every layout of SPEC §2.
LAYOUTS = [(True, 1), (True, 2), (False, 2), (False, 4)]


def random_indices(rng, batch, heads, nq, nk, c):
    """Index values anywhere in [-2, Nq + 2]: wrong values are clamped, never refused by the readers."""
    return rng.integers(-2, nq + 3, size=(batch, heads, nk, c)).astype(np.int32)


@pytest.mark.parametrize("is_causal, c", LAYOUTS)
def test_to_dense_matches_cpp_on_random_indices(is_causal, c, rng):
    batch, heads = (int(x) for x in rng.integers(1, 4, size=2))
    nq, nk = (int(x) for x in rng.integers(1, 40, size=2))
    indices = random_indices(rng, batch, heads, nq, nk, c)
    dense = tm.to_dense(torch.from_numpy(indices), is_causal, nq=nq)
    assert dense.shape == (batch, heads, nq, nk) and dense.dtype == torch.bool
    for b in range(batch):
        for h in range(heads):
            expected = flashmask.to_dense(indices, is_causal, nq=nq, batch=b, head=h)
            np.testing.assert_array_equal(dense[b, h].numpy(), expected)


def test_to_dense_without_indices(rng):
    nq, nk = (int(x) for x in rng.integers(1, 30, size=2))
    np.testing.assert_array_equal(tm.to_dense(tm.causal(nk), nq=nq, nk=nk)[0, 0].numpy(),
                                  flashmask.to_dense(masks.causal(nk), nq=nq, nk=nk))
    assert bool(tm.to_dense(tm.full(nk), nq=nq, nk=nk).all())


def cpp_from_dense(dense, is_causal, c=None):
    return flashmask.from_dense(dense, causal=is_causal, slots=c)


@pytest.mark.parametrize("is_causal, c", LAYOUTS)
@pytest.mark.parametrize("explicit_slots", [False, True])
def test_from_dense_matches_cpp_on_representable_masks(is_causal, c, explicit_slots, rng):
    nq, nk = (int(x) for x in rng.integers(1, 40, size=2))
    indices = random_indices(rng, 1, 1, nq, nk, c)
    dense = flashmask.to_dense(indices, is_causal, nq=nq)
    slots_asked = c if explicit_slots else None
    expected = cpp_from_dense(dense, is_causal, slots_asked)
    got = tm.from_dense(torch.from_numpy(dense), causal=is_causal, slots=slots_asked)
    assert_same_mask(got, expected)


@pytest.mark.parametrize("is_causal", [False, True])
def test_from_dense_refuses_the_same_first_column_as_cpp(is_causal, rng):
    nq, nk = (int(x) for x in rng.integers(3, 30, size=2))
    # A representable mask with random holes punched in a few columns.
    dense = flashmask.to_dense(random_indices(rng, 1, 1, nq, nk, 2), is_causal, nq=nq)
    for _ in range(int(rng.integers(1, 4))):
        column = int(rng.integers(0, nk))
        dense[rng.integers(0, nq, size=3), column] ^= True
    try:
        expected = cpp_from_dense(dense, is_causal)
    except ValueError as refused:
        cpp_column = re.search(r"column (\d+) ", str(refused)).group(1)
        with pytest.raises(ValueError) as torch_refused:
            tm.from_dense(torch.from_numpy(dense), causal=is_causal)
        assert torch_refused.value.argument == "dense_mask"
        assert f"column {cpp_column} " in str(torch_refused.value), (str(refused), str(torch_refused.value))
    else:
        assert_same_mask(tm.from_dense(torch.from_numpy(dense), causal=is_causal), expected)


def test_from_dense_noise_is_refused_at_the_first_column(rng):
    nq, nk = (int(x) for x in rng.integers(8, 40, size=2))
    dense = np.ones((nq, nk), dtype=bool)
    column = int(rng.integers(0, nk))
    dense[1::3, column] = False  # >= 3 separate hidden rows: no layout has three intervals
    with pytest.raises(ValueError) as refused:
        tm.from_dense(torch.from_numpy(dense))
    assert f"column {column} " in str(refused.value) and "C = 4" in str(refused.value)


@pytest.mark.parametrize("name", masks.catalogue_names())
def test_dense_round_trip_of_the_catalogue(name, rng):
    n = int(rng.integers(1, 120))
    mask = tm.as_torch(flashmask.catalogue(name, n, int(rng.integers(0, 2**31))))
    dense = tm.to_dense(mask, nq=n, nk=n)
    rebuilt = tm.from_dense(dense)
    assert torch.equal(tm.to_dense(rebuilt, nq=n), dense)
    # The automatic choice of causal: whatever the catalogue says when it hides the upper triangle.
    if mask.causal:
        assert rebuilt.causal is True
    general = tm.from_dense(dense, causal=False, slots=4)
    assert torch.equal(tm.to_dense(general, nq=n), dense)


def test_from_dense_batched_picks_one_c_for_all_and_names_batch_and_head(rng, monkeypatch):
    # Small chunks: the column chunking must not change anything.
    monkeypatch.setattr(tm, "DENSE_CHUNK_ELEMENTS", int(rng.integers(1, 200)))
    batch, heads = 2, 3
    nq, nk = (int(x) for x in rng.integers(4, 30, size=2))
    indices = random_indices(rng, batch, heads, nq, nk, 4)
    indices[0, 0, :, :2] = nq  # (0, 0) needs C = 2 at most, the others C = 4
    dense = tm.to_dense(torch.from_numpy(indices), False, nq=nq)
    rebuilt = tm.from_dense(dense, causal=False)
    assert rebuilt.startend_row_indices.shape == (batch, heads, nk, 4)
    assert torch.equal(tm.to_dense(rebuilt, nq=nq), dense)
    for b in range(batch):
        for h in range(heads):
            assert_same_mask(tm.from_dense(dense[b, h], causal=False, slots=4),
                             cpp_from_dense(dense[b, h].numpy(), False, 4))
    broken = dense.clone()
    column = int(rng.integers(0, nk))
    broken[1, 2, :, column] = torch.arange(nq) % 2 == 0  # alternate rows: too many intervals
    if nq >= 6:
        with pytest.raises(ValueError, match=rf"column {column} \(batch 1, head 2\)"):
            tm.from_dense(broken, causal=False)


# --- FlexAttention -------------------------------------------------------------------------------------

try:
    from torch.nn.attention import flex_attention as flex
except ImportError:  # torch < 2.5
    flex = None
FLEX = pytest.mark.skipif(flex is None, reason=f"no FlexAttention in torch {torch.__version__}")


@FLEX
def test_from_mask_mod_matches_the_builders(rng, monkeypatch):
    monkeypatch.setattr(tm, "DENSE_CHUNK_ELEMENTS", int(rng.integers(1, 300)))  # several column chunks
    n = int(rng.integers(2, 90))
    lengths = random_lengths(rng, n, allow_empty=False)
    document_id = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))

    def causal_document_mod(b, h, q_idx, kv_idx):
        return (document_id[q_idx] == document_id[kv_idx]) & (kv_idx <= q_idx)

    def document_mod(b, h, q_idx, kv_idx):
        return document_id[q_idx] == document_id[kv_idx]

    window = int(rng.integers(1, n + 1))

    def sliding_window_mod(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & (q_idx - kv_idx < window)

    prefix = int(rng.integers(0, n + 1))

    def prefix_lm_mod(b, h, q_idx, kv_idx):
        return (kv_idx < prefix) | (kv_idx <= q_idx)

    assert_same_mask(tm.from_mask_mod(causal_document_mod, n, n), masks.causal_document(lengths))
    # (A document mask of one-token documents is causal too: fix the setting to compare.)
    assert_same_mask(tm.from_mask_mod(document_mod, n, n, causal=False), masks.document(lengths))
    assert_same_mask(tm.from_mask_mod(sliding_window_mod, n, n), masks.sliding_window(n, window))
    assert_same_mask(tm.from_mask_mod(prefix_lm_mod, n, n, causal=False), masks.prefix_lm_causal(n, prefix))
    # Left to choose, the converter takes causal = True when it can (a prefix of 0 or 1 is causal).
    chosen = tm.from_mask_mod(prefix_lm_mod, n, n)
    assert chosen.causal == (prefix <= 1)
    assert torch.equal(tm.to_dense(chosen), tm.to_dense(tm.prefix_lm_causal(n, prefix)))


@FLEX
def test_from_mask_mod_with_batch_and_heads_equals_create_mask(rng):
    batch, heads = 2, 3
    nq, nk = (int(x) for x in rng.integers(2, 50, size=2))
    shift = torch.from_numpy(rng.integers(-5, 6, size=(batch, heads)))

    def shifted_window_mod(b, h, q_idx, kv_idx):
        return (kv_idx - q_idx <= shift[b, h]) & (q_idx - kv_idx <= 4 + shift[b, h])

    mask = tm.from_mask_mod(shifted_window_mod, nq, nk, batch=batch, heads=heads)
    assert mask.startend_row_indices.shape[:3] == (batch, heads, nk)
    expected = flex.create_mask(shifted_window_mod, batch, heads, nq, nk, device="cpu")
    assert torch.equal(tm.to_dense(mask, nq=nq), expected)


@FLEX
def test_from_mask_mod_refuses_a_mask_without_interval_form(rng):
    nq, nk = (int(x) for x in rng.integers(8, 60, size=2))
    column = int(rng.integers(0, nk))

    def striped_mod(b, h, q_idx, kv_idx):
        return ~((kv_idx == column) & (q_idx % 3 == 1))

    with pytest.raises(ValueError) as refused:
        tm.from_mask_mod(striped_mod, nq, nk)
    assert refused.value.argument == "mask_mod"
    assert f"column {column} " in str(refused.value) and "no interval form" in str(refused.value)


@FLEX
@pytest.mark.parametrize("is_causal, c", LAYOUTS)
def test_to_mask_mod_evaluates_to_the_dense_mask(is_causal, c, rng):
    batch, mask_heads, per_head = 2, 2, 2
    nq, nk = (int(x) for x in rng.integers(1, 40, size=2))
    indices = torch.from_numpy(random_indices(rng, batch, mask_heads, nq, nk, c))
    mask_mod = tm.to_mask_mod(indices, is_causal, nq=nq, heads=mask_heads * per_head)
    evaluated = flex.create_mask(mask_mod, batch, mask_heads * per_head, nq, nk, device="cpu")
    dense = tm.to_dense(indices, is_causal, nq=nq)
    assert torch.equal(evaluated, dense.repeat_interleave(per_head, dim=1))


@FLEX
def test_block_mask_on_cpu_agrees_with_the_dense_mask(rng):
    n = int(rng.integers(20, 100))
    batch_lengths = random_batch_lengths(rng, n, allow_empty=False)
    mask = tm.causal_document(batch_lengths)
    block = int(rng.choice([8, 16, 32]))
    block_mask = tm.to_block_mask(mask, block_size=block)
    dense = tm.to_dense(mask)
    blocks = -(-n // block)
    padded = torch.nn.functional.pad(dense, (0, blocks * block - n, 0, blocks * block - n))
    any_visible = padded.reshape(len(batch_lengths), 1, blocks, block, blocks, block).any(dim=5).any(dim=3)
    assert torch.equal(block_mask.to_dense().bool(), any_visible)
    # flex_attention (eager, on the CPU) with the BlockMask = SDPA with the dense mask. Every
    # row sees its own key here, so SDPA has no fully masked row.
    q, k, v = (torch.randn(len(batch_lengths), 2, n, 16, dtype=torch.float64) for _ in range(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "flex_attention called without torch.compile()"
        out = flex.flex_attention(q, k, v, block_mask=block_mask)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=dense)
    torch.testing.assert_close(out, expected)


# --- Paddle's arguments, as they are -------------------------------------------------------------------


def test_paddle_arguments_pass_unchanged():
    # Paddle's flashmask_attention takes startend_row_indices [B, H, N, C] int32 plus causal,
    # with SPEC §2's meaning. Its documented examples (the paper's, N = 10), two heads each:
    # head 0 the causal document mask, head 1 the causal blockwise one (C = 2 for both).
    causal_document = [[4, 4, 4, 4, 7, 7, 7, 10, 10, 10], [10] * 10]
    causal_blockwise = [[4, 4, 4, 4, 10, 10, 10, 10, 10, 10], [7, 7, 7, 7, 10, 10, 10, 10, 10, 10]]
    paddle_causal = torch.tensor([[causal_document, causal_blockwise]], dtype=torch.int32).transpose(-1, -2)
    assert paddle_causal.shape == (1, 2, PAPER_N, 2)
    dense = tm.to_dense(paddle_causal, True)
    np.testing.assert_array_equal(dense[0, 0].numpy(), paper_dense(True, *causal_document))
    np.testing.assert_array_equal(dense[0, 1].numpy(), paper_dense(True, *causal_blockwise))
    # Not causal: the document mask (C = 2: LTS, UTE) and global + sliding window (C = 4).
    document = [[4, 4, 4, 4, 7, 7, 7, 10, 10, 10], [0, 0, 0, 0, 4, 4, 4, 7, 7, 7]]
    global_window = [[10, 10, 4, 5, 6, 7, 8, 9, 10, 10], [10] * 10, [0, 0, 0, 0, 2, 2, 2, 2, 2, 2],
                     [0, 0, 0, 0, 3, 4, 5, 6, 7, 8]]
    paddle_document = torch.tensor([[document]], dtype=torch.int32).transpose(-1, -2)
    paddle_global = torch.tensor([[global_window]], dtype=torch.int32).transpose(-1, -2)
    np.testing.assert_array_equal(tm.to_dense(paddle_document)[0, 0].numpy(), paper_dense(False, *document))
    np.testing.assert_array_equal(tm.to_dense(paddle_global)[0, 0].numpy(), paper_dense(False, *global_window))
    # The builders write exactly these tensors.
    assert torch.equal(tm.document([4, 3, 3]).startend_row_indices, paddle_document)
    assert torch.equal(tm.global_sliding_window(PAPER_N, 2, 2).startend_row_indices, paddle_global)
    # And the C++ library reads a Paddle tensor the same way.
    for b, h in [(0, 0), (0, 1)]:
        np.testing.assert_array_equal(
            flashmask.to_dense(np.ascontiguousarray(paddle_causal.numpy()), True, batch=b, head=h), dense[b, h].numpy())


def test_paddle_arguments_in_flashmask_attention(rng):
    attention = getattr(flashmask, "flashmask_attention", None)
    if attention is None:
        pytest.skip("flashmask.flashmask_attention is not in this build yet")
    mask = tm.document([[4, 3, 3], [2, 8]])
    q, k, v = (torch.from_numpy(rng.standard_normal((2, PAPER_N, 2, 64))).float() for _ in range(3))
    out = attention(q, k, v, mask.startend_row_indices, causal=mask.causal)
    dense = tm.to_dense(mask)
    expected = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=dense).transpose(1, 2)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_every_builder_in_flashmask_attention_matches_sdpa(rng):
    attention = getattr(flashmask, "flashmask_attention", None)
    if attention is None:
        pytest.skip("flashmask.flashmask_attention is not in this build yet")
    n, batch = int(rng.integers(2, 60)), 2
    q, k, v = (torch.from_numpy(rng.standard_normal((batch, n, 2, 64))).float() for _ in range(3))
    for name, call in builder_calls(rng, n).items():
        mask = call("cpu")
        out = attention(q, k, v, mask)  # the Mask itself: its B = 1 serves both rows
        dense = tm.to_dense(mask)
        sees_some_key = dense.any(dim=-1)  # [1, 1, N]: SDPA gives NaN for the other rows
        expected = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=dense).transpose(1, 2)
        rows = sees_some_key[0, 0]
        torch.testing.assert_close(out[:, rows], expected[:, rows], atol=1e-5, rtol=1e-5, msg=name)
        assert bool((out[:, ~rows] == 0).all()), name  # SPEC §1: a row with no visible key is 0


# --- devices -------------------------------------------------------------------------------------------


def test_builders_put_the_tensor_on_the_requested_device(rng):
    n = int(rng.integers(2, 50))
    lengths = random_lengths(rng, n)
    built = tm.causal_document(lengths, device="cpu")
    assert built.startend_row_indices.device.type == "cpu"
    # Tensors given keep their device when none is asked for.
    cu = torch.tensor(cu_seqlens_of(lengths), dtype=torch.int32)
    assert tm.document(cu_seqlens=cu).startend_row_indices.device == cu.device
    assert tm.from_dense(tm.to_dense(built)).startend_row_indices.device == cu.device


def builder_calls(rng, n):
    """One call per catalogue kind with indices (and window), each taking `device`."""
    lengths = random_lengths(rng, n, allow_empty=False)
    spans = random_spans(rng, n)
    return {
        "sliding_window": lambda device: tm.sliding_window(n, 3, device=device),
        "causal_document": lambda device: tm.causal_document(lengths, device=device),
        "document": lambda device: tm.document(cu_seqlens=torch.tensor(cu_seqlens_of(lengths)), device=device),
        "share_question": lambda device: tm.share_question([1], [[n - 1]], device=device),
        "global_sliding_window": lambda device: tm.global_sliding_window(n, 1, 3, device=device),
        "causal_blockwise": lambda device: tm.causal_blockwise(position_ids=position_ids_of([lengths]), device=device),
        "prefix_lm_causal": lambda device: tm.prefix_lm_causal(n, n // 2, device=device),
        "prefix_lm_document": lambda device: tm.prefix_lm_document(lengths, [0] * len(lengths), device=device),
        "qk_sparse": lambda device: tm.qk_sparse(n, spans, device=device),
        "eviction": lambda device: tm.eviction(list(range(1, n + 1)), device=device),
        "random_eviction": lambda device: tm.random_eviction(n, seed=7, device=device),
        "window": lambda device: tm.window(n, n, 2, 1, device=device),
        "varlen": lambda device: tm.varlen(torch.tensor(cu_seqlens_of(lengths)), causal=True, window_size=(4, 0),
                                           device=device),
    }


@CUDA
def test_builders_and_converters_on_cuda(rng):
    n = int(rng.integers(2, 200))
    for name, call in builder_calls(rng, n).items():
        on_gpu, on_cpu = call("cuda"), call("cpu")
        assert on_gpu.startend_row_indices.is_cuda, name
        assert torch.equal(on_gpu.startend_row_indices.cpu(), on_cpu.startend_row_indices), name
        dense = tm.to_dense(on_gpu)
        assert dense.is_cuda and torch.equal(dense.cpu(), tm.to_dense(on_cpu)), name
        rebuilt = tm.from_dense(dense)
        assert rebuilt.startend_row_indices.is_cuda
        assert torch.equal(tm.to_dense(rebuilt).cpu(), dense.cpu()), name
    generator = torch.Generator(device="cuda").manual_seed(int(rng.integers(0, 2**31)))
    assert tm.random_eviction(n, generator=generator, device="cuda").startend_row_indices.is_cuda
    document_id = torch.zeros(n, dtype=torch.int64, device="cuda")
    document_id[n // 2:] = 1

    def document_mod(b, h, q_idx, kv_idx):
        return document_id[q_idx] == document_id[kv_idx]

    from_mod = tm.from_mask_mod(document_mod, n, n, device="cuda")
    assert from_mod.startend_row_indices.is_cuda
    assert torch.equal(from_mod.startend_row_indices.cpu(), tm.document([n // 2, n - n // 2]).startend_row_indices)
