"""FlashMask masks: the catalogue builders (SPEC §3), validation, dense converters and tile counts.

A mask is ``startend_row_indices`` (int32 ``[B, Hm, Nk, C]``, or None) plus ``causal``; the
builders return one sequence's mask (B = Hm = 1) as a :class:`Mask`. Every function that takes
a mask accepts either a :class:`Mask` or the index array with a separate ``causal``.

Dense masks follow the SDPA / FlexAttention convention: ``True`` = the query row may attend
to the key.
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from . import _flashmask
from ._arrays import refusal, require_array

INDEX_LAYOUT = "[B, Hm, Nk, C]"


class Mask(NamedTuple):
    """One FlashMask mask: ``startend_row_indices`` (int32 [B, Hm, Nk, C] or None) and ``causal``."""

    startend_row_indices: Optional[np.ndarray]
    causal: bool


def _mask(result: Tuple[Optional[np.ndarray], bool]) -> Mask:
    return Mask(*result)


def mask_arguments(startend_row_indices, causal: bool, batch: Optional[int] = None, *,
                   any_array: bool = False) -> Tuple[Optional[object], bool]:
    """(index array or None, causal) from either spelling of a mask.

    A builder's Mask describes one sequence (B = 1); given a `batch`, it is broadcast over it
    (a stride-0 view, no copy: ``numpy.broadcast_to``, or ``expand`` for a torch tensor put in
    a Mask). Index arrays passed as such must have the problem's B (SPEC §2). With
    `any_array`, an index array may be anything with DLPack (checked where it is converted);
    otherwise it must be a NumPy array."""
    if isinstance(startend_row_indices, Mask):
        if causal and not startend_row_indices.causal:
            raise refusal(ValueError, "causal",
                          "causal = True contradicts the Mask passed as startend_row_indices (causal = False)")
        indices = startend_row_indices.startend_row_indices
        shape = None if indices is None else tuple(indices.shape)
        if batch is not None and shape is not None and len(shape) == 4 and shape[0] == 1:
            if isinstance(indices, np.ndarray):
                indices = np.broadcast_to(indices, (batch,) + shape[1:])
            elif hasattr(indices, "expand"):
                indices = indices.expand(batch, *shape[1:])
        return indices, startend_row_indices.causal
    if startend_row_indices is not None and not any_array:
        require_array(startend_row_indices, "startend_row_indices")
    return startend_row_indices, bool(causal)


# --------------------------------------------------------------------------------------------
# The catalogue (SPEC §3). N = Nq = Nk unless stated.
# --------------------------------------------------------------------------------------------


def full(n: int) -> Mask:
    """Every row sees every key (no index tensor)."""
    return _mask(_flashmask.full(n))


def causal(n: int) -> Mask:
    """Plain causal attention (no index tensor)."""
    return _mask(_flashmask.causal(n))


def sliding_window(n: int, window: int) -> Mask:
    """Causal; key j is hidden from rows j + window on."""
    return _mask(_flashmask.sliding_window(n, window))


def causal_document(lengths: Sequence[int]) -> Mask:
    """Causal attention within each document; N = sum(lengths)."""
    return _mask(_flashmask.causal_document(list(lengths)))


def document(lengths: Sequence[int]) -> Mask:
    """Bidirectional attention within each document."""
    return _mask(_flashmask.document(list(lengths)))


def share_question(questions: Sequence[int], answers: Sequence[Sequence[int]]) -> Mask:
    """Per document a question of questions[d] tokens followed by answers of answers[d][a]
    tokens; each answer sees its question but not the other answers."""
    return _mask(_flashmask.share_question(list(questions), [list(a) for a in answers]))


def global_sliding_window(n: int, global_tokens: int, window: int) -> Mask:
    """The first global_tokens tokens see and are seen by all; the rest see a window."""
    return _mask(_flashmask.global_sliding_window(n, global_tokens, window))


def causal_blockwise(lengths: Sequence[int]) -> Mask:
    """Causal documents; the last document sees all earlier ones."""
    return _mask(_flashmask.causal_blockwise(list(lengths)))


def prefix_lm_causal(n: int, prefix: int) -> Mask:
    """Bidirectional over the first `prefix` tokens, causal after."""
    return _mask(_flashmask.prefix_lm_causal(n, prefix))


def prefix_lm_document(lengths: Sequence[int], prefixes: Sequence[int]) -> Mask:
    """prefix_lm_causal within each document (prefixes[d] tokens of document d)."""
    return _mask(_flashmask.prefix_lm_document(list(lengths), list(prefixes)))


def qk_sparse(n: int, spans: Sequence[Tuple[int, int]]) -> Mask:
    """Causal; each span [start, end) is a block of tokens that see neither one another nor
    themselves (key j of a span is hidden from rows [j, end))."""
    return _mask(_flashmask.qk_sparse(n, [(int(s), int(e)) for s, e in spans]))


def random_eviction(n: int, seed: int = 0, eviction_probability: float = 0.5) -> Mask:
    """Causal; each key j is evicted with probability `eviction_probability`, from a row drawn
    uniformly in [j + 1, N] on; the others are never evicted (N)."""
    return _mask(_flashmask.random_eviction(n, seed, float(eviction_probability)))


def eviction(rows: Sequence[int]) -> Mask:
    """Causal; key j is evicted from row rows[j] on (values in [j + 1, N]; N = never)."""
    return _mask(_flashmask.eviction([int(r) for r in rows]))


def window(nq: int, nk: int, left: int, right: int, causal: bool = False) -> Mask:
    """FlashAttention's window_size=(left, right), bottom-right aligned; a negative bound is
    unbounded; with causal, right is 0."""
    return _mask(_flashmask.window(nq, nk, left, right, causal))


def catalogue_names() -> List[str]:
    """The twelve catalogue names, in SPEC §3 order."""
    return list(_flashmask.catalogue_names())


def catalogue(name: str, n: int, seed: int = 0) -> Mask:
    """A catalogue mask by name with the benchmark parameters of SPEC §6 (documents of random
    lengths from `seed`, window N/8, prefix N/4)."""
    return _mask(_flashmask.catalogue_mask(name, n, seed))


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def validate_mask(startend_row_indices, causal: bool = False, *, nq: int) -> None:
    """Checks dtype, rank, C (for `causal`) and every value in [0, nq]. Raises TypeError for a
    wrong dtype and ValueError otherwise; a bad value is reported as (b, head, column, slot, value)."""
    indices, causal = mask_arguments(startend_row_indices, causal)
    if indices is None:
        return
    _flashmask.validate_mask(indices, causal, nq)


def check_mask_shape(startend_row_indices, causal: bool = False, *, batch: int, nq: int, nk: int,
                     q_heads: int, kv_heads: int) -> None:
    """Checks the index tensor's shape against an attention problem (Hm in {1, Hk, Hq}, ...)."""
    indices, causal = mask_arguments(startend_row_indices, causal)
    if indices is None:
        return
    _flashmask.check_mask_shape(indices, causal, batch, nq, nk, q_heads, kv_heads)


# --------------------------------------------------------------------------------------------
# Sizes of a mask's problem: what the index tensor says, unless given.
# --------------------------------------------------------------------------------------------


class _Sizes(NamedTuple):
    batch: int
    mask_heads: int
    nq: int
    nk: int


def _sizes(indices: Optional[np.ndarray], nq: Optional[int], nk: Optional[int]) -> _Sizes:
    # A tensor of the wrong rank gets a placeholder size; the library then refuses its rank.
    has_shape = indices is not None and indices.ndim == 4
    batch, mask_heads = (indices.shape[0], indices.shape[1]) if has_shape else (1, 1)
    if nk is None:
        if not has_shape:
            raise refusal(ValueError, "nk", "nk: the key length is needed when there is no startend_row_indices")
        nk = indices.shape[2]
    if nq is None:
        nq = nk
    return _Sizes(int(batch), int(mask_heads), int(nq), int(nk))


# --------------------------------------------------------------------------------------------
# Dense converters
# --------------------------------------------------------------------------------------------


def to_dense(startend_row_indices, causal: bool = False, *, nq: Optional[int] = None, nk: Optional[int] = None,
             batch: int = 0, head: int = 0) -> np.ndarray:
    """The bool [nq, nk] visibility of one (batch, mask head) of a mask (True = visible).

    nk defaults to the index tensor's Nk and nq to nk; both are needed for full / causal."""
    indices, causal = mask_arguments(startend_row_indices, causal)
    sizes = _sizes(indices, nq, nk)
    dense = _flashmask.to_dense(indices, causal, sizes.batch, sizes.mask_heads, sizes.nq, sizes.nk, batch, head)
    return dense.view(np.bool_)


# The slot counts allowed for each causal setting, smallest first (SPEC §2).
_SLOTS_FOR_CAUSAL = {True: (1, 2), False: (2, 4)}


def from_dense(dense_mask, causal: bool = False, slots: Optional[int] = None) -> Mask:
    """The exact FlashMask form of a dense [Nq, Nk] mask (nonzero = visible).

    `slots` is C; None picks the smallest C allowed with `causal` that represents the mask
    exactly. Raises ValueError naming the first column with no such form."""
    dense = require_array(dense_mask, "dense_mask")
    if dense.ndim != 2:
        raise refusal(ValueError, "dense_mask", f"dense_mask has rank {dense.ndim}; expected 2: [Nq, Nk]")
    visible = np.ascontiguousarray(dense != 0).view(np.uint8)
    if slots is not None:
        return _mask(_flashmask.from_dense(visible, bool(causal), int(slots)))
    *smaller, largest = _SLOTS_FOR_CAUSAL[bool(causal)]
    for candidate in smaller:
        try:
            return _mask(_flashmask.from_dense(visible, bool(causal), candidate))
        except ValueError:
            pass  # not representable with this C; the largest C reports the offending column
    return _mask(_flashmask.from_dense(visible, bool(causal), largest))


# --------------------------------------------------------------------------------------------
# Block summaries, tile counts, visible pairs
# --------------------------------------------------------------------------------------------

# Field order of block_summaries()' last axis (BlockSummary in include/flashmask/tiles.hpp).
BLOCK_SUMMARY_FIELDS = (
    "min_lower_start", "max_lower_start", "min_lower_end", "max_lower_end",
    "min_upper_start", "max_upper_start", "min_upper_end", "max_upper_end",
)

# The CPU attention path's tile (query rows x keys): the default for tile counts.
CPU_BLOCK_M = int(_flashmask.cpu_block_m)
CPU_BLOCK_N = int(_flashmask.cpu_block_n)


def _problem_arguments(startend_row_indices, causal, nq, nk, batch, q_heads, kv_heads):
    """(indices, causal, batch, nq, nk, q_heads, kv_heads) for the module's count_tiles and
    visible_pairs: batch and q_heads default to the index tensor's B and Hm (1 without one),
    kv_heads to q_heads."""
    indices, causal = mask_arguments(startend_row_indices, causal, batch)
    sizes = _sizes(indices, nq, nk)
    batch = sizes.batch if batch is None else batch
    q_heads = sizes.mask_heads if q_heads is None else q_heads
    kv_heads = q_heads if kv_heads is None else kv_heads
    return indices, causal, batch, sizes.nq, sizes.nk, q_heads, kv_heads


class TileCounts(NamedTuple):
    skipped: int
    partial: int
    full: int

    @property
    def total(self) -> int:
        return self.skipped + self.partial + self.full


def block_summaries(startend_row_indices, causal: bool = False, *, nq: Optional[int] = None,
                    nk: Optional[int] = None, block_n: int = CPU_BLOCK_N) -> np.ndarray:
    """Per key block minima/maxima of the canonical intervals: int32 [B, Hm, blocks, 8], the
    last axis in BLOCK_SUMMARY_FIELDS order."""
    indices, causal = mask_arguments(startend_row_indices, causal)
    sizes = _sizes(indices, nq, nk)
    return _flashmask.block_summaries(indices, causal, sizes.batch, sizes.mask_heads, sizes.nq, sizes.nk, block_n)


def tile_counts(startend_row_indices, causal: bool = False, *, nq: Optional[int] = None, nk: Optional[int] = None,
                batch: Optional[int] = None, q_heads: Optional[int] = None, kv_heads: Optional[int] = None,
                block_m: int = CPU_BLOCK_M, block_n: int = CPU_BLOCK_N) -> TileCounts:
    """Skipped / partial / full tiles over every (batch, query head, q block, kv block).

    batch and q_heads default to the index tensor's B and Hm (1 without one), kv_heads to q_heads."""
    problem = _problem_arguments(startend_row_indices, causal, nq, nk, batch, q_heads, kv_heads)
    return TileCounts(*_flashmask.count_tiles(*problem, block_m, block_n))


KEY_ORDER_WINDOW = int(_flashmask.key_order_window)  # the CUDA path's window (include/flashmask/key_order.hpp)


def sorted_key_order(startend_row_indices, causal: bool = False, *, nq: Optional[int] = None,
                     nk: Optional[int] = None, batch: Optional[int] = None, q_heads: Optional[int] = None,
                     kv_heads: Optional[int] = None, window: int = KEY_ORDER_WINDOW) -> Tuple[np.ndarray, np.ndarray]:
    """The keys as the CUDA path's key_order="sorted" reads them: (order, indices), order int32
    [B, Hm, Nk] (position j holds key order[..., j]) and the sorted problem's mask, a non-causal
    C = 4 index tensor int32 [B, Hm, Nk, 4] (pass it with causal=False). Keys are sorted by their
    intervals inside windows of `window` keys (the kernels use KEY_ORDER_WINDOW; other windows
    are for studies). Sizes default as for tile_counts."""
    problem = _problem_arguments(startend_row_indices, causal, nq, nk, batch, q_heads, kv_heads)
    return _flashmask.sorted_key_order(*problem, int(window))


def visible_pairs(startend_row_indices, causal: bool = False, *, nq: Optional[int] = None, nk: Optional[int] = None,
                  batch: Optional[int] = None, q_heads: Optional[int] = None,
                  kv_heads: Optional[int] = None) -> int:
    """Visible (query, key) pairs summed over batch and query heads (SPEC §6's FLOP count);
    sizes default as for tile_counts."""
    problem = _problem_arguments(startend_row_indices, causal, nq, nk, batch, q_heads, kv_heads)
    return int(_flashmask.visible_pairs(*problem))
