"""FlashMask masks as torch tensors: the catalogue builders (SPEC §3) from what PyTorch users
hold, and converters to and from dense masks, FlexAttention mask_mods and BlockMasks.

Every builder returns a :class:`flashmask.Mask` whose ``startend_row_indices`` is an int32
torch tensor ``[B, 1, N, C]`` (contiguous, on the requested device) or None (full, causal),
plus ``causal``. The two fields are exactly the arguments of ``flashmask_attention`` and of
Paddle's ``flashmask_attention`` (SPEC §2); a Paddle index tensor passes unchanged.

Documents can be given in any of the forms users hold (exactly one per call):

* ``document_lengths``: one row ``[300, 200, 524]`` or a batch ``[[300, 724], [1024]]`` (ragged:
  rows may have different numbers of documents, but every row the same total N);
* ``cu_seqlens``: FlashAttention varlen style, ``[0, 300, 500, 1024]`` (int, one packed row),
  ``[B, D + 1]`` (a batch with D documents per row) or a list of 1-D tensors (ragged);
* ``position_ids``: ``[N]`` or ``[B, N]``, restarting at 0 at each document (as Hugging Face's
  packing collators write them).

The values are computed with torch ops on the device, vectorised over tokens; the Python
loops run over rows and documents only. Each builder agrees exactly, value for value, with
its C++ twin in :mod:`flashmask.masks` (tests/python/test_torch_masks.py checks every kind).
Checks of the parameters read values back to the host once (one synchronisation).

Importing this module imports torch; ``import flashmask`` does not import this module.
"""

from __future__ import annotations

from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from . import masks as _host_masks
from ._arrays import refusal
from .masks import _SLOTS_FOR_CAUSAL, Mask

__all__ = [
    "as_torch", "causal", "causal_blockwise", "causal_document", "document", "eviction", "from_dense",
    "from_mask_mod", "full", "global_sliding_window", "prefix_lm_causal", "prefix_lm_document", "qk_sparse",
    "random_eviction", "share_question", "sliding_window", "to_block_mask", "to_dense", "to_mask_mod", "varlen",
    "window",
]

# Rows and columns are int32 (SPEC §2): no sequence may be longer (as mask_checks.hpp says).
MAX_SEQUENCE_LENGTH = 2**31 - 1
INDEX_DTYPE = torch.int32
# Internal arithmetic is int64 so that sums like j + window never overflow before clamping.
_WORK_DTYPE = torch.int64
# The dense converters work on column chunks of at most this many elements of [G, Nq, chunk]
# (G = batch x heads), which bounds their temporaries (a few bytes per element each).
DENSE_CHUNK_ELEMENTS = 1 << 24

DeviceLike = Union[str, torch.device, int, None]
Lengths = Union[Sequence[int], Sequence[Sequence[int]], torch.Tensor]

# Slot positions of startend_row_indices (SPEC §2 table; kLts ... in src/mask/mask_checks.hpp).
_LTS, _LTE, _UTE_OF_TWO, _UTS, _UTE = 0, 1, 1, 2, 3


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _device(device: DeviceLike) -> torch.device:
    """The requested device; None is the CPU (never the current accelerator: a builder must
    not initialise CUDA unless asked to)."""
    return torch.device("cpu") if device is None else torch.device(device)


def _check_length(value: int, argument: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise refusal(TypeError, argument, f"{where}: {argument} must be an int; got {type(value).__name__}")
    value = int(value)
    if value < 0 or value > MAX_SEQUENCE_LENGTH:
        raise refusal(ValueError, argument, f"{where}: {argument} must be in [0, {MAX_SEQUENCE_LENGTH}], got {value}")
    return value


def _check_count(value: int, argument: str, where: str) -> int:
    """A batch size or head count: an int >= 1 (TypeError for a non-int, as for the lengths)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise refusal(TypeError, argument, f"{where}: {argument} must be an int >= 1, got {value!r}")
    if value < 1:
        raise refusal(ValueError, argument, f"{where}: {argument} must be an int >= 1, got {value!r}")
    return int(value)


def _check_batch(batch: int, where: str) -> int:
    return _check_count(batch, "batch", where)


def _index_tensor(vectors: Sequence[torch.Tensor]) -> torch.Tensor:
    """[B, N] vectors (LTS, LTE / UTE, ...) as the int32 index tensor [B, 1, N, C]."""
    return torch.stack(vectors, dim=-1).unsqueeze(1).to(INDEX_DTYPE).contiguous()


def _columns(n: int, batch: int, device: torch.device) -> torch.Tensor:
    """Column (token) indices j as an int64 [batch, n] tensor."""
    return torch.arange(n, dtype=_WORK_DTYPE, device=device).expand(batch, n)


def _first_true(flags: torch.Tensor) -> Optional[Tuple[int, ...]]:
    """The index (row-major) of the first True of `flags`, or None: one host read."""
    if flags.numel() == 0:
        return None
    flat = flags.reshape(-1)
    first = int(torch.argmax(flat.to(torch.uint8)).item())
    if not bool(flat[first].item()):
        return None
    return tuple(int(i) for i in np.unravel_index(first, tuple(flags.shape)))


def _is_nested(value) -> bool:
    """Whether a parameter is a batch: a tensor or array of rank >= 2, or a sequence whose
    entries are sequences or tensors of rank >= 1."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return value.ndim >= 2
    if len(value) == 0:
        return False
    first = value[0]
    if isinstance(first, (torch.Tensor, np.ndarray)):
        return first.ndim >= 1
    return isinstance(first, (list, tuple))


def _rows_of_ints(value, argument: str, where: str) -> List[List[int]]:
    """A per-row list of int lists from a flat sequence (one row), a nested one (a batch) or a
    1-D / 2-D tensor or array."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        if value.ndim not in (1, 2):
            raise refusal(ValueError, argument,
                          f"{where}: {argument} has shape {list(value.shape)}; expected [D] or [B, D]")
        rows = value.tolist()
        return [rows] if value.ndim == 1 else rows
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise refusal(TypeError, argument,
                      f"{where}: {argument} must be a sequence of ints, a sequence of such sequences (one per "
                      f"batch row) or a tensor; got {type(value).__name__}")
    rows = [list(row.tolist() if hasattr(row, "tolist") else row) for row in value] if _is_nested(value) \
        else [list(value)]
    for b, row in enumerate(rows):
        for d, item in enumerate(row):
            if isinstance(item, bool) or not isinstance(item, (int, np.integer)):
                raise refusal(TypeError, argument,
                              f"{where}: {argument}[{b}][{d}] = {item!r} is not an int")
    return [[int(item) for item in row] for row in rows]


def _padded(rows: List[List[int]], fill: int, device: torch.device) -> torch.Tensor:
    """Ragged int rows as one int64 [B, max length] tensor, short rows padded with `fill`."""
    width = max((len(row) for row in rows), default=0)
    table = [row + [fill] * (width - len(row)) for row in rows]
    return torch.tensor(table, dtype=_WORK_DTYPE).reshape(len(rows), width).to(device)


# --------------------------------------------------------------------------------------------
# Documents: every document form becomes padded cu_seqlens, then per-token bounds
# --------------------------------------------------------------------------------------------


class _Documents(NamedTuple):
    """Packed documents of a batch. cu_seqlens [B, D + 1] (int64; rows with fewer documents are
    padded with N, i.e. empty documents after the last real one), the number of real documents
    per row [B], and per token (int64 [B, N]): its document's index, start and end."""

    cu_seqlens: torch.Tensor
    counts: torch.Tensor
    n: int
    index: torch.Tensor
    start: torch.Tensor
    end: torch.Tensor

    @property
    def batch(self) -> int:
        return int(self.cu_seqlens.shape[0])

    def last_start(self) -> torch.Tensor:
        """[B, 1]: the start of each row's last document (its end, N, when it is empty; 0
        when the row has no document)."""
        last = (self.counts - 1).clamp(min=0).unsqueeze(1)
        return self.cu_seqlens.gather(1, last)

    def lengths(self) -> torch.Tensor:
        """[B, D]: the document lengths (0 for padding)."""
        return self.cu_seqlens[:, 1:] - self.cu_seqlens[:, :-1]


def _documents_from_cu(cu: torch.Tensor, counts: torch.Tensor, argument: str, where: str) -> _Documents:
    """Checks padded cu_seqlens [B, D + 1] (0 first, non-decreasing, every row ending at the same
    N) and derives the per-token bounds."""
    if cu.shape[1] == 0:
        raise refusal(ValueError, argument, f"{where}: {argument} is empty; expected at least [0]")
    bad_first = _first_true(cu[:, 0] != 0)
    if bad_first is not None:
        (b,) = bad_first
        raise refusal(ValueError, argument,
                      f"{where}: {argument} of row {b} starts at {int(cu[b, 0])}; expected 0")
    decreasing = _first_true(cu[:, 1:] < cu[:, :-1])
    if decreasing is not None:
        b, d = decreasing
        raise refusal(ValueError, argument,
                      f"{where}: {argument} of row {b} decreases at entry {d + 1} ({int(cu[b, d])} then "
                      f"{int(cu[b, d + 1])}); expected non-decreasing offsets (document lengths >= 0)")
    totals = cu[:, -1]
    n = int(totals[0].item())
    other = _first_true(totals != n)
    if other is not None:
        (b,) = other
        raise refusal(ValueError, argument,
                      f"{where}: {argument}: row {b} has {int(totals[b])} tokens but row 0 has {n}; every row of "
                      "a batch must have the same length N (pad with a document of padding tokens)")
    _check_length(n, "the total length of the documents", where)
    batch = cu.shape[0]
    tokens = _columns(n, batch, cu.device).contiguous()
    # The document of token t is the last d with cu[d] <= t: empty documents (repeated offsets)
    # are stepped over, padding (offsets = N) is never reached.
    index = (torch.searchsorted(cu.contiguous(), tokens, right=True) - 1).clamp(min=0)
    last = max(cu.shape[1] - 2, 0)
    index = index.clamp(max=last)
    start = cu.gather(1, index)
    end = cu.gather(1, (index + 1).clamp(max=cu.shape[1] - 1))
    return _Documents(cu, counts, n, index, start, end)


def _cu_from_lengths(document_lengths, device: torch.device, where: str) -> _Documents:
    argument = "document_lengths"
    rows = _rows_of_ints(document_lengths, argument, where)
    for b, row in enumerate(rows):
        for d, length in enumerate(row):
            if length < 0:
                raise refusal(ValueError, argument,
                              f"{where}: {argument}[{b}][{d}] = {length} is negative; expected a length >= 0")
    lengths = _padded(rows, 0, device)
    counts = torch.tensor([len(row) for row in rows], dtype=_WORK_DTYPE, device=device)
    cu = torch.nn.functional.pad(torch.cumsum(lengths, dim=1), (1, 0))
    return _documents_from_cu(cu, counts, argument, where)


def _cu_from_cu_seqlens(cu_seqlens, device: torch.device, where: str, argument: str = "cu_seqlens") -> _Documents:
    if isinstance(cu_seqlens, torch.Tensor) and cu_seqlens.ndim in (1, 2):
        if cu_seqlens.dtype.is_floating_point or cu_seqlens.dtype.is_complex or cu_seqlens.dtype == torch.bool:
            raise refusal(TypeError, argument, f"{where}: {argument} has dtype {cu_seqlens.dtype}; expected an integer dtype")
        cu = cu_seqlens.to(device=device, dtype=_WORK_DTYPE)
        cu = cu.unsqueeze(0) if cu.ndim == 1 else cu
        counts = torch.full((cu.shape[0],), max(cu.shape[1] - 1, 0), dtype=_WORK_DTYPE, device=device)
        return _documents_from_cu(cu, counts, argument, where)
    if isinstance(cu_seqlens, torch.Tensor):
        raise refusal(ValueError, argument,
                      f"{where}: {argument} has shape {list(cu_seqlens.shape)}; expected [D + 1] or [B, D + 1]")
    rows = _rows_of_ints(cu_seqlens, argument, where)
    # Ragged rows: pad each with its own total, i.e. with empty documents at its end.
    counts = torch.tensor([max(len(row) - 1, 0) for row in rows], dtype=_WORK_DTYPE, device=device)
    width = max(len(row) for row in rows) if rows else 0
    cu = torch.tensor([row + [row[-1] if row else 0] * (width - len(row)) for row in rows],
                      dtype=_WORK_DTYPE).reshape(len(rows), width).to(device)
    return _documents_from_cu(cu, counts, argument, where)


def _cu_from_position_ids(position_ids, device: torch.device, where: str) -> _Documents:
    argument = "position_ids"
    if not isinstance(position_ids, torch.Tensor):
        raise refusal(TypeError, argument, f"{where}: {argument} must be a torch tensor [N] or [B, N]; "
                                           f"got {type(position_ids).__name__}")
    if position_ids.ndim not in (1, 2):
        raise refusal(ValueError, argument,
                      f"{where}: {argument} has shape {list(position_ids.shape)}; expected [N] or [B, N]")
    if position_ids.dtype.is_floating_point or position_ids.dtype.is_complex or position_ids.dtype == torch.bool:
        raise refusal(TypeError, argument, f"{where}: {argument} has dtype {position_ids.dtype}; expected an integer dtype")
    positions = position_ids.to(device=device, dtype=_WORK_DTYPE)
    positions = positions.unsqueeze(0) if positions.ndim == 1 else positions
    batch, n = positions.shape
    _check_length(n, "position_ids.shape[-1]", where)
    # A document starts at each 0; elsewhere the position must be the previous one plus 1.
    previous = torch.nn.functional.pad(positions[:, :-1] + 1, (1, 0), value=0)
    wrong = _first_true((positions != 0) & (positions != previous))
    if wrong is not None:
        b, t = wrong
        expected = "0" if t == 0 else f"0 (a new document) or {int(positions[b, t - 1]) + 1}"
        raise refusal(ValueError, argument,
                      f"{where}: {argument}[{b}, {t}] = {int(positions[b, t])}; expected {expected}: position ids "
                      "restart at 0 at each document and count up by 1 within it")
    starts = positions == 0
    counts = starts.sum(dim=1)
    documents = int(counts.max().item()) if batch > 0 and n > 0 else 0
    # The start offsets of each row, in order, padded with N (sorting moves the N's to the end).
    tokens = _columns(n, batch, device)
    offsets = torch.where(starts, tokens, torch.full_like(tokens, n)).sort(dim=1).values[:, :documents]
    cu = torch.cat([offsets, torch.full((batch, 1), n, dtype=_WORK_DTYPE, device=device)], dim=1)
    return _documents_from_cu(cu, counts.to(_WORK_DTYPE), argument, where)


def _documents(where: str, document_lengths, cu_seqlens, position_ids, device: DeviceLike) -> _Documents:
    """The documents of whichever form was given (exactly one)."""
    given = [name for name, value in (("document_lengths", document_lengths), ("cu_seqlens", cu_seqlens),
                                      ("position_ids", position_ids)) if value is not None]
    if len(given) != 1:
        raise refusal(ValueError, "document_lengths",
                      f"{where}: give the documents in exactly one form (document_lengths, cu_seqlens or position_ids); "
                      f"got {', '.join(given) if given else 'none'}")
    if device is None:
        # Tensors stay where they are (a list of tensors where its first is); lists go to the CPU.
        source = cu_seqlens if cu_seqlens is not None else position_ids if position_ids is not None else document_lengths
        if isinstance(source, (list, tuple)) and source and isinstance(source[0], torch.Tensor):
            source = source[0]
        device = source.device if isinstance(source, torch.Tensor) else None
    device = _device(device)
    if document_lengths is not None:
        return _cu_from_lengths(document_lengths, device, where)
    if cu_seqlens is not None:
        return _cu_from_cu_seqlens(cu_seqlens, device, where)
    return _cu_from_position_ids(position_ids, device, where)


def _per_document(values, docs: _Documents, argument: str, where: str) -> torch.Tensor:
    """A per-document parameter (one int per document of each row: a flat list for one row, a
    nested list or a [B, D] tensor for a batch) as int64 [B, D], checked against the counts."""
    rows = _rows_of_ints(values, argument, where)
    counts = docs.counts.tolist()
    if len(rows) == 1 and docs.batch > 1:
        rows = rows * docs.batch  # one row of parameters serves every row of documents
    if len(rows) != docs.batch:
        raise refusal(ValueError, argument,
                      f"{where}: {argument} has {len(rows)} rows; expected one per batch row ({docs.batch})")
    for b, (row, count) in enumerate(zip(rows, counts)):
        if len(row) != count:
            raise refusal(ValueError, argument,
                          f"{where}: {argument} has {len(row)} entries in row {b}; expected one per document ({count})")
    width = docs.cu_seqlens.shape[1] - 1
    table = _padded(rows, 0, docs.cu_seqlens.device)
    return torch.nn.functional.pad(table, (0, width - table.shape[1]))


# --------------------------------------------------------------------------------------------
# The catalogue (SPEC §3)
# --------------------------------------------------------------------------------------------


def full(n: int) -> Mask:
    """Every row sees every key: no index tensor, causal = False (n is checked, not needed)."""
    _check_length(n, "n", "full")
    return Mask(None, False)


def causal(n: int) -> Mask:
    """Plain causal attention: no index tensor, causal = True."""
    _check_length(n, "n", "causal")
    return Mask(None, True)


def sliding_window(n: int, window: int, *, batch: int = 1, device: DeviceLike = None) -> Mask:
    """Causal; row i sees keys (i - window, i], so key j is hidden from rows j + window on."""
    where = "sliding_window"
    n = _check_length(n, "n", where)
    batch = _check_batch(batch, where)
    if window < 1:
        raise refusal(ValueError, "window", f"{where}: window must be at least 1 (a row sees itself), got {window}")
    j = _columns(n, batch, _device(device))
    return Mask(_index_tensor([(j + min(int(window), n)).clamp(max=n)]), True)


def causal_document(document_lengths: Optional[Lengths] = None, *, cu_seqlens=None, position_ids=None,
                    device: DeviceLike = None) -> Mask:
    """Causal attention within each packed document: LTS_j = end of j's document."""
    docs = _documents("causal_document", document_lengths, cu_seqlens, position_ids, device)
    return Mask(_index_tensor([docs.end]), True)


def document(document_lengths: Optional[Lengths] = None, *, cu_seqlens=None, position_ids=None,
             device: DeviceLike = None) -> Mask:
    """Bidirectional attention within each packed document: LTS_j = end, UTE_j = start."""
    docs = _documents("document", document_lengths, cu_seqlens, position_ids, device)
    return Mask(_index_tensor([docs.end, docs.start]), False)


def causal_blockwise(document_lengths: Optional[Lengths] = None, *, cu_seqlens=None, position_ids=None,
                     device: DeviceLike = None) -> Mask:
    """Causal documents; the last document of each row sees all earlier ones. A key of an
    earlier document is hidden from the rows between its document's end and the last
    document's start."""
    docs = _documents("causal_blockwise", document_lengths, cu_seqlens, position_ids, device)
    last_start = docs.last_start()
    hidden_somewhere = docs.end < last_start
    n = torch.full_like(docs.end, docs.n)
    lower_start = torch.where(hidden_somewhere, docs.end, n)
    lower_end = torch.where(hidden_somewhere, last_start.expand_as(docs.end), n)
    return Mask(_index_tensor([lower_start, lower_end]), True)


def prefix_lm_causal(n: int, prefix_length: Union[int, Sequence[int], torch.Tensor], *, batch: int = 1,
                     device: DeviceLike = None) -> Mask:
    """Bidirectional over the first `prefix_length` tokens, causal after (LTS = N, UTE_j = 0 in
    the prefix and j after it). `prefix_length` is one int, or one per batch row ([B])."""
    where = "prefix_lm_causal"
    n = _check_length(n, "n", where)
    batch = _check_batch(batch, where)
    device = _device(device)
    if isinstance(prefix_length, (int, np.integer)) and not isinstance(prefix_length, bool):
        prefixes = [[int(prefix_length)]] * batch
    else:
        prefixes = [[p] for row in _rows_of_ints(prefix_length, "prefix_length", where) for p in row]
        if batch == 1:
            batch = len(prefixes)
        if len(prefixes) != batch:
            raise refusal(ValueError, "prefix_length",
                          f"{where}: prefix_length has {len(prefixes)} entries; expected one per batch row ({batch})")
    for b, (p,) in enumerate(prefixes):
        if p < 0 or p > n:
            raise refusal(ValueError, "prefix_length",
                          f"{where}: prefix_length[{b}] = {p} must be in [0, n = {n}]")
    prefix = torch.tensor(prefixes, dtype=_WORK_DTYPE).reshape(batch, 1).to(device)
    j = _columns(n, batch, device)
    upper_end = torch.where(j < prefix, torch.zeros_like(j), j)
    return Mask(_index_tensor([torch.full_like(j, n), upper_end]), False)


def prefix_lm_document(document_lengths: Optional[Lengths] = None, prefix_lengths=None, *, cu_seqlens=None,
                       position_ids=None, device: DeviceLike = None) -> Mask:
    """A prefix-LM within each document: its first prefix_lengths[d] tokens are seen by all of
    the document, the rest causally. prefix_lengths holds one int per document (per row for a
    batch; a single row of them serves every batch row)."""
    where = "prefix_lm_document"
    docs = _documents(where, document_lengths, cu_seqlens, position_ids, device)
    if prefix_lengths is None:
        raise refusal(ValueError, "prefix_lengths", f"{where}: prefix_lengths is required (one per document)")
    prefixes = _per_document(prefix_lengths, docs, "prefix_lengths", where)
    lengths = docs.lengths()
    bad = _first_true((prefixes < 0) | (prefixes > lengths))
    if bad is not None:
        b, d = bad
        raise refusal(ValueError, "prefix_lengths",
                      f"{where}: prefix_lengths[{b}][{d}] = {int(prefixes[b, d])} must be in [0, document length = "
                      f"{int(lengths[b, d])}]")
    j = _columns(docs.n, docs.batch, docs.start.device)
    prefix = prefixes.gather(1, docs.index) if prefixes.shape[1] > 0 else torch.zeros_like(j)
    upper_end = torch.where(j < docs.start + prefix, docs.start, j)
    return Mask(_index_tensor([docs.end, upper_end]), False)


def share_question(question_lengths, answer_lengths, *, device: DeviceLike = None) -> Mask:
    """Per document a question followed by answers that share it (DPO, reward models): each
    answer sees its question and itself, not the other answers. Causal, C = 1: question tokens
    are hidden from the document's end on, answer tokens from their answer's end on.

    One row: question_lengths [D] and answer_lengths [D][A_d]; a batch: [B][D_b] and
    [B][D_b][A]."""
    where = "share_question"
    device = _device(device)
    batched = _is_nested(question_lengths)
    question_rows = _rows_of_ints(question_lengths, "question_lengths", where)
    answer_rows = answer_lengths if batched else [answer_lengths]
    if len(answer_rows) != len(question_rows):
        raise refusal(ValueError, "answer_lengths",
                      f"{where}: answer_lengths has {len(answer_rows)} rows; expected one per row of question_lengths "
                      f"({len(question_rows)})")
    # Segments (a question or an answer) in order; each is hidden from `hidden_from` on.
    segment_rows: List[List[int]] = []
    document_rows: List[List[int]] = []
    question_flags: List[List[int]] = []
    for b, (questions, answers) in enumerate(zip(question_rows, answer_rows)):
        if len(answers) != len(questions):
            raise refusal(ValueError, "answer_lengths",
                          f"{where}: answer_lengths has {len(answers)} documents in row {b}; expected one per "
                          f"question ({len(questions)})")
        segments, flags, documents = [], [], []
        for d, (question, answer_list) in enumerate(zip(questions, answers)):
            answer_list = _rows_of_ints(answer_list, "answer_lengths", where)[0] if len(answer_list) else []
            if question < 0:
                raise refusal(ValueError, "question_lengths",
                              f"{where}: question_lengths[{b}][{d}] = {question} is negative; expected a length >= 0")
            for a, length in enumerate(answer_list):
                if length < 0:
                    raise refusal(ValueError, "answer_lengths",
                                  f"{where}: answer_lengths[{b}][{d}][{a}] = {length} is negative; expected a length >= 0")
            segments += [question] + answer_list
            flags += [1] + [0] * len(answer_list)
            documents.append(question + sum(answer_list))
        segment_rows.append(segments)
        question_flags.append(flags)
        document_rows.append(documents)
    docs = _cu_from_lengths(document_rows, device, where)
    segments = _cu_from_lengths(segment_rows, device, where)
    is_question = _padded(question_flags, 0, device)
    if is_question.shape[1] == 0:
        return Mask(_index_tensor([docs.end]), True)
    question_token = is_question.gather(1, segments.index).bool()
    return Mask(_index_tensor([torch.where(question_token, docs.end, segments.end)]), True)


def global_sliding_window(n: int, global_tokens: int, window: int, *, batch: int = 1,
                          device: DeviceLike = None) -> Mask:
    """The first `global_tokens` tokens see and are seen by every token; any other key j is seen
    by the rows (j - window, j + window). Not causal, C = 4 (as the C++ builder writes it)."""
    where = "global_sliding_window"
    n = _check_length(n, "n", where)
    batch = _check_batch(batch, where)
    if global_tokens < 0 or global_tokens > n:
        raise refusal(ValueError, "global_tokens", f"{where}: global_tokens must be in [0, n = {n}], got {global_tokens}")
    if window < 1:
        raise refusal(ValueError, "window", f"{where}: window must be at least 1 (a row sees itself), got {window}")
    window = min(int(window), n + 1)  # beyond n + 1 nothing changes
    j = _columns(n, batch, _device(device))
    local = j >= global_tokens
    first_visible = j - window + 1
    has_upper = local & (first_visible > global_tokens)
    lower_start = torch.where(local, (j + window).clamp(max=n), torch.full_like(j, n))
    upper_start = torch.where(has_upper, torch.full_like(j, global_tokens), torch.zeros_like(j))
    upper_end = torch.where(has_upper, first_visible, torch.zeros_like(j))
    return Mask(_index_tensor([lower_start, torch.full_like(j, n), upper_start, upper_end]), False)


def qk_sparse(n: int, dropped_spans, *, device: DeviceLike = None) -> Mask:
    """Causal; each span [start, end) is a block of tokens that see neither one another nor
    themselves (key j of a span is hidden from rows [j, end)). dropped_spans: (start, end)
    pairs for one row, or a list of such lists (one per batch row), or a [S, 2] / [B, S, 2]
    tensor."""
    where = "qk_sparse"
    argument = "dropped_spans"
    n = _check_length(n, "n", where)
    device = _device(device)
    if isinstance(dropped_spans, (torch.Tensor, np.ndarray)):
        spans = dropped_spans.tolist()
        rows = [spans] if dropped_spans.ndim == 2 else spans
    else:
        rows = list(dropped_spans)
        one_row = len(rows) == 0 or (len(rows[0]) == 2 and not _is_nested(rows[0]))
        rows = [rows] if one_row else rows
    table = []
    for b, row in enumerate(rows):
        pairs = []
        for s, span in enumerate(row):
            if len(span) != 2:
                raise refusal(ValueError, argument, f"{where}: {argument}[{b}][{s}] = {span!r}; expected (start, end)")
            pairs.append([int(span[0]), int(span[1])])
        table.append(pairs)
    batch = len(table)
    width = max(len(row) for row in table)
    # Padding spans are empty ones at N: sorted last, containing no token, exempt from the checks.
    spans = torch.tensor([row + [[n, n]] * (width - len(row)) for row in table],
                         dtype=_WORK_DTYPE).reshape(batch, width, 2).to(device)
    real = torch.tensor([[s < len(row) for s in range(width)] for row in table], dtype=torch.bool).reshape(
        batch, width).to(device)
    starts, ends = spans[..., 0], spans[..., 1]
    wrong = _first_true(real & ((starts < 0) | (ends > n) | (starts >= ends)))
    if wrong is not None:
        b, s = wrong
        raise refusal(ValueError, argument,
                      f"{where}: {argument}[{b}][{s}] = [{int(starts[b, s])}, {int(ends[b, s])}) must satisfy "
                      f"0 <= start < end <= n = {n}")
    order = starts.argsort(dim=1, stable=True)
    starts, ends, real = starts.gather(1, order), ends.gather(1, order), real.gather(1, order)
    if width > 1:
        overlap = _first_true(real[:, 1:] & (starts[:, 1:] < ends[:, :-1]))
        if overlap is not None:
            b, s = overlap
            raise refusal(ValueError, argument,
                          f"{where}: {argument} of row {b} overlap: [{int(starts[b, s])}, {int(ends[b, s])}) and "
                          f"[{int(starts[b, s + 1])}, {int(ends[b, s + 1])})")
    j = _columns(n, batch, device).contiguous()
    nothing = torch.full_like(j, n)
    if width == 0:
        return Mask(_index_tensor([nothing, nothing]), True)
    span = (torch.searchsorted(starts.contiguous(), j, right=True) - 1).clamp(min=0)
    span_end = ends.gather(1, span)
    inside = (starts.gather(1, span) <= j) & (j < span_end)
    return Mask(_index_tensor([torch.where(inside, j, nothing), torch.where(inside, span_end, nothing)]), True)


def eviction(eviction_rows: torch.Tensor, *, device: DeviceLike = None) -> Mask:
    """Causal; key j is evicted from row eviction_rows[..., j] on (values in [j + 1, N]; N =
    never). eviction_rows: int tensor [N] or [B, N] (or a list)."""
    where = "eviction"
    argument = "eviction_rows"
    rows = eviction_rows if isinstance(eviction_rows, torch.Tensor) else torch.tensor(eviction_rows)
    if device is None:
        device = rows.device
    if rows.ndim not in (1, 2):
        raise refusal(ValueError, argument, f"{where}: {argument} has shape {list(rows.shape)}; expected [N] or [B, N]")
    if rows.dtype.is_floating_point or rows.dtype.is_complex or rows.dtype == torch.bool:
        raise refusal(TypeError, argument, f"{where}: {argument} has dtype {rows.dtype}; expected an integer dtype")
    rows = rows.to(device=_device(device), dtype=_WORK_DTYPE)
    rows = rows.unsqueeze(0) if rows.ndim == 1 else rows
    batch, n = rows.shape
    _check_length(n, "eviction_rows.shape[-1]", where)
    j = _columns(n, batch, rows.device)
    wrong = _first_true((rows < j + 1) | (rows > n))
    if wrong is not None:
        b, column = wrong
        raise refusal(ValueError, argument,
                      f"{where}: {argument}[{b}, {column}] = {int(rows[b, column])} must be in [j + 1, N] = "
                      f"[{column + 1}, {n}]")
    return Mask(_index_tensor([rows]), True)


def random_eviction(n: int, *, eviction_probability: float = 0.5, generator: Optional[torch.Generator] = None,
                    seed: Optional[int] = None, batch: int = 1, device: DeviceLike = None) -> Mask:
    """Causal; each key j is evicted with probability `eviction_probability`, from a row drawn
    uniformly in [j + 1, N] on; the others never (N).

    The draws are torch's, on the device, from `generator` (torch's default one when None).
    With `seed` instead, the mask is the C++ catalogue's (flashmask.masks.random_eviction(n,
    seed, eviction_probability)), drawn on the host and copied to the device, the same on
    every machine."""
    where = "random_eviction"
    n = _check_length(n, "n", where)
    batch = _check_batch(batch, where)
    device = _device(device)
    if not (0.0 <= eviction_probability <= 1.0):
        raise refusal(ValueError, "eviction_probability",
                      f"{where}: eviction_probability must be in [0, 1], got {eviction_probability}")
    if seed is not None:
        if generator is not None:
            raise refusal(ValueError, "seed", f"{where}: give seed (the C++ draws) or generator (torch's), not both")
        host = _host_masks.random_eviction(n, int(seed), float(eviction_probability))
        return as_torch(host, device=device, batch=batch)
    if generator is not None and generator.device.type != device.type:
        raise refusal(ValueError, "generator",
                      f"{where}: generator is on {generator.device}; expected one on the requested device {device}")
    evicted = torch.rand((batch, n), generator=generator, device=device, dtype=torch.float64) < eviction_probability
    j = _columns(n, batch, device)
    # Uniform in [j + 1, N]: N - j choices; the clamp keeps a draw of 1 - ulp inside.
    choices = n - j
    draws = torch.rand((batch, n), generator=generator, device=device, dtype=torch.float64)
    offset = torch.minimum((draws * choices).floor().to(_WORK_DTYPE), choices - 1)
    rows = torch.where(evicted, j + 1 + offset, torch.full_like(j, n))
    return Mask(_index_tensor([rows]), True)


def window(nq: int, nk: int, left: int, right: int, causal: bool = False, *, batch: int = 1,
           device: DeviceLike = None) -> Mask:
    """FlashAttention's window_size = (left, right), bottom-right aligned: row i sees key j iff
    i + (nk - nq) - left <= j <= i + (nk - nq) + right. A negative bound is unbounded; with
    causal, right is 0 (C = 1), else C = 2. The values are flashmask_attention's own for
    window_size (torch_op.window_indices, one implementation), here checked and contiguous."""
    from .torch_op import window_indices  # registers the attention ops; torch is loaded already

    where = "window"
    nq = _check_length(nq, "nq", where)
    nk = _check_length(nk, "nk", where)
    batch = _check_batch(batch, where)
    for name, bound in (("left", left), ("right", right)):
        if isinstance(bound, bool) or not isinstance(bound, (int, np.integer)):
            raise refusal(TypeError, name, f"{where}: {name} must be an int (negative = unbounded); got {bound!r}")
    indices = window_indices(nq, nk, (int(left), int(right)), bool(causal), batch=batch, device=_device(device))
    return Mask(indices.contiguous(), bool(causal))


def varlen(cu_seqlens_q, cu_seqlens_k=None, *, causal: bool = False, window_size=None,
           device: DeviceLike = None) -> Mask:
    """The mask of FlashAttention's flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k,
    ..., causal, window_size) over the packed sequences: query rows of document d see only keys
    of document d, with causal and window_size applied per document and aligned bottom-right
    within it (as FlashAttention does when a document's query and key lengths differ).

    cu_seqlens_q / cu_seqlens_k: [D + 1] (one packed row: q [1, total_q, H, D]) or [B, D + 1],
    the same number of documents in both; cu_seqlens_k None means the same as cu_seqlens_q
    (self-attention). Nq = total_q, Nk = total_k. When the two are equal and causal, the mask
    is causal (C = 1: the kernels skip the upper triangle); otherwise not causal, C = 2."""
    where = "varlen"
    from .torch_op import _window_bounds  # the one window_size parser; None here means unbounded
    left, right = (-1, -1) if window_size is None else _window_bounds(window_size, where)
    if device is None and isinstance(cu_seqlens_q, torch.Tensor):
        device = cu_seqlens_q.device
    device = _device(device)
    queries = _cu_from_cu_seqlens(cu_seqlens_q, device, where, "cu_seqlens_q")
    keys = queries if cu_seqlens_k is None else _cu_from_cu_seqlens(cu_seqlens_k, device, where, "cu_seqlens_k")
    if keys.cu_seqlens.shape != queries.cu_seqlens.shape:
        raise refusal(ValueError, "cu_seqlens_k",
                      f"{where}: cu_seqlens_k has shape {list(keys.cu_seqlens.shape)} but cu_seqlens_q has "
                      f"{list(queries.cu_seqlens.shape)}; expected one entry per document in both")
    nq = queries.n
    # Per key token j of document d: the document's query rows [qs, qe) and its keys' end ke.
    qs = queries.cu_seqlens.gather(1, keys.index)
    qe = queries.cu_seqlens.gather(1, (keys.index + 1).clamp(max=queries.cu_seqlens.shape[1] - 1))
    ke = keys.end
    # Row i of document d sees key j iff (j - ks) - (i - qs) - ((ke - ks) - (qe - qs)) lies in
    # [-left, right], i.e. i in [j - ke + qe - right, j - ke + qe + left], within [qs, qe).
    j = _columns(keys.n, keys.batch, ke.device)
    diagonal_row = j - ke + qe  # the row on document d's bottom-right aligned diagonal
    unbounded = nq + keys.n + 1
    left = unbounded if left < 0 else min(left, unbounded)
    right = 0 if causal else (unbounded if right < 0 else min(right, unbounded))
    lower_start = torch.minimum(qe, diagonal_row + left + 1).clamp(0, nq)
    self_attention = cu_seqlens_k is None or torch.equal(queries.cu_seqlens, keys.cu_seqlens)
    if causal and self_attention:
        return Mask(_index_tensor([lower_start]), True)
    upper_end = torch.maximum(qs, diagonal_row - right).clamp(0, nq)
    return Mask(_index_tensor([lower_start, upper_end]), False)


def as_torch(mask: Mask, *, device: DeviceLike = None, batch: int = 1) -> Mask:
    """A NumPy Mask (flashmask.masks' builders, flashmask.catalogue) as a torch Mask on
    `device`, its index tensor repeated to `batch` rows when it has one."""
    indices, is_causal = _host_masks.mask_arguments(mask, False)
    if indices is None:
        return Mask(None, is_causal)
    tensor = torch.as_tensor(np.ascontiguousarray(indices)).to(_device(device))
    if _check_batch(batch, "as_torch") > 1 and tensor.shape[0] == 1:
        tensor = tensor.expand(batch, *tensor.shape[1:])
    return Mask(tensor.contiguous(), is_causal)


# --------------------------------------------------------------------------------------------
# Reading a mask: canonical column intervals (column_intervals() in include/flashmask/tiles.hpp)
# --------------------------------------------------------------------------------------------

# The slot counts that decide the causal setting by themselves (of _SLOTS_FOR_CAUSAL, SPEC §2).
_SLOTS_ONLY_WITH = {1: True, 4: False}


class _Intervals(NamedTuple):
    """Per column the rows hidden from it, [lower_start, lower_end) and [upper_start, upper_end)
    (int64 [B, Hm, Nk]), plus the causal diagonal's offset when causal (else None)."""

    lower_start: torch.Tensor
    lower_end: torch.Tensor
    upper_start: torch.Tensor
    upper_end: torch.Tensor


def _mask_sizes(startend_row_indices, causal_flag, nq, nk, device, where):
    """(indices or None, causal, nq, nk, device) from either spelling of a mask."""
    indices, is_causal = _host_masks.mask_arguments(startend_row_indices, causal_flag, any_array=True)
    if indices is None:
        if nk is None:
            raise refusal(ValueError, "nk", f"{where}: nk is needed when there is no startend_row_indices")
        nk = _check_length(nk, "nk", where)
        nq = nk if nq is None else _check_length(nq, "nq", where)
        return None, is_causal, nq, nk, _device(device)
    if not isinstance(indices, torch.Tensor):
        indices = torch.as_tensor(np.ascontiguousarray(indices))
    if indices.dtype != INDEX_DTYPE:
        raise refusal(TypeError, "startend_row_indices",
                      f"{where}: startend_row_indices has dtype {indices.dtype}; expected torch.int32")
    if indices.ndim != 4:
        raise refusal(ValueError, "startend_row_indices",
                      f"{where}: startend_row_indices has shape {list(indices.shape)}; expected [B, Hm, Nk, C]")
    slots = indices.shape[-1]
    if slots not in _SLOTS_FOR_CAUSAL[is_causal]:
        raise refusal(ValueError, "startend_row_indices",
                      f"{where}: startend_row_indices has C = {slots}; with causal = {is_causal} expected C in "
                      f"{_SLOTS_FOR_CAUSAL[is_causal]}")
    if nk is not None and nk != indices.shape[2]:
        raise refusal(ValueError, "nk", f"{where}: nk = {nk} but startend_row_indices has Nk = {indices.shape[2]}")
    nk = int(indices.shape[2])
    nq = nk if nq is None else _check_length(nq, "nq", where)
    if device is not None:
        indices = indices.to(_device(device))
    return indices, is_causal, nq, nk, indices.device


def _intervals(indices: Optional[torch.Tensor], is_causal: bool, nq: int, nk: int, device) -> _Intervals:
    """The hidden row intervals of every column, as column_intervals() reads them (values
    clamped to [0, Nq]; with causal the upper interval is the diagonal's [0, j - (Nk - Nq)))."""
    shape = (1, 1, nk) if indices is None else tuple(indices.shape[:3])
    full_rows = torch.full(shape, nq, dtype=_WORK_DTYPE, device=device)
    zeros = torch.zeros(shape, dtype=_WORK_DTYPE, device=device)
    lower_start, lower_end, upper_start, upper_end = full_rows, full_rows, zeros, zeros
    if indices is not None:
        values = indices.to(_WORK_DTYPE)
        slots = indices.shape[-1]
        lower_start = values[..., _LTS]
        if is_causal and slots == 2:
            lower_end = values[..., _LTE]
        elif not is_causal and slots == 2:
            upper_end = values[..., _UTE_OF_TWO]
        elif slots == 4:
            lower_end, upper_start, upper_end = values[..., _LTE], values[..., _UTS], values[..., _UTE]
    if is_causal:
        j = torch.arange(nk, dtype=_WORK_DTYPE, device=device)
        upper_start, upper_end = zeros, (j - (nk - nq)).expand(shape)
    return _Intervals(*(v.clamp(0, nq) for v in (lower_start, lower_end, upper_start, upper_end)))


def to_dense(startend_row_indices, causal: bool = False, *, nq: Optional[int] = None, nk: Optional[int] = None,
             device: DeviceLike = None) -> torch.Tensor:
    """The visibility of a mask as a bool tensor [B, Hm, Nq, Nk] (True = the row may attend to
    the key; [1, 1, Nq, Nk] without an index tensor), on the index tensor's device (or
    `device`): what SDPA takes as attn_mask and FlexAttention's create_mask returns.

    nq defaults to Nk; nk is needed only without an index tensor. O(Nq x Nk): for tests and
    comparisons."""
    where = "to_dense"
    indices, is_causal, nq, nk, device = _mask_sizes(startend_row_indices, causal, nq, nk, device, where)
    intervals = _intervals(indices, is_causal, nq, nk, device)
    batch, heads, _ = intervals.lower_start.shape
    dense = torch.empty((batch, heads, nq, nk), dtype=torch.bool, device=device)
    rows_per_chunk = max(1, DENSE_CHUNK_ELEMENTS // max(1, batch * heads * nk))
    bounds = [v.unsqueeze(2) for v in intervals]  # [B, Hm, 1, Nk]
    for row_start in range(0, nq, rows_per_chunk):
        rows = torch.arange(row_start, min(row_start + rows_per_chunk, nq), dtype=_WORK_DTYPE,
                            device=device).view(1, 1, -1, 1)
        hidden = ((bounds[0] <= rows) & (rows < bounds[1])) | ((bounds[2] <= rows) & (rows < bounds[3]))
        dense[:, :, row_start:row_start + rows.shape[2]] = ~hidden
    return dense


# --------------------------------------------------------------------------------------------
# From a dense mask: runs of hidden rows per column, then the smallest exact layout
# --------------------------------------------------------------------------------------------


class _ColumnRuns(NamedTuple):
    """Per column (int64 [G, Nk]): how many maximal runs of hidden rows it has, where the
    first starts and ends and where the last starts and ends (meaningless without a run)."""

    count: torch.Tensor
    first_start: torch.Tensor
    first_end: torch.Tensor
    last_start: torch.Tensor
    last_end: torch.Tensor


def _column_runs(hidden: torch.Tensor) -> _ColumnRuns:
    """The runs of a bool [G, Nq, c] chunk of hidden rows."""
    nq = hidden.shape[1]
    # Row numbers in int32 (they fit: Nq < 2**31) halve the memory traffic of the reductions.
    rows = torch.arange(nq, dtype=torch.int32, device=hidden.device).view(1, nq, 1)
    run_starts = hidden.clone()
    run_starts[:, 1:] &= ~hidden[:, :-1]       # hidden here, not in the row above
    run_last_rows = hidden.clone()
    run_last_rows[:, :-1] &= ~hidden[:, 1:]    # hidden here, not in the row below
    return _ColumnRuns(*(field.to(_WORK_DTYPE) for field in (
        run_starts.sum(dim=1, dtype=torch.int32),
        torch.where(run_starts, rows, nq).amin(dim=1),
        torch.where(run_last_rows, rows + 1, nq).amin(dim=1),
        torch.where(run_starts, rows, -1).amax(dim=1),
        torch.where(run_last_rows, rows + 1, -1).amax(dim=1),
    )))


class _DenseSummary(NamedTuple):
    """What from_dense needs of a dense mask, per (g, column): the runs of all hidden rows
    (causal = False), the runs of hidden rows on and below the causal diagonal (causal = True),
    and the first visible row above the diagonal (Nq when none)."""

    runs: _ColumnRuns
    runs_below_diagonal: _ColumnRuns
    first_visible_above: torch.Tensor


def _summarise(chunks, groups: int, nq: int, nk: int, device) -> _DenseSummary:
    """Folds the column chunks (column_start, visible bool [G, Nq, c]) into a _DenseSummary."""
    parts_all, parts_below, parts_above = [], [], []
    rows = torch.arange(nq, dtype=torch.int32, device=device).view(1, nq, 1)
    for column_start, visible in chunks:
        columns = torch.arange(column_start, column_start + visible.shape[2], dtype=_WORK_DTYPE,
                               device=device).view(1, 1, -1)
        # With causal, rows i < j - (Nk - Nq) are above the diagonal: hidden whatever the indices say.
        above_diagonal = rows < (columns - (nk - nq))
        hidden = ~visible
        parts_all.append(_column_runs(hidden))
        parts_below.append(_column_runs(hidden & ~above_diagonal))
        parts_above.append(torch.where(visible & above_diagonal, rows, nq).amin(dim=1).to(_WORK_DTYPE))

    def cat(parts: List[_ColumnRuns]) -> _ColumnRuns:
        if not parts:
            empty = torch.zeros((groups, 0), dtype=_WORK_DTYPE, device=device)
            return _ColumnRuns(*(empty,) * 5)
        return _ColumnRuns(*(torch.cat(field, dim=1) for field in zip(*parts)))

    above = torch.cat(parts_above, dim=1) if parts_above else torch.zeros((groups, 0), dtype=_WORK_DTYPE, device=device)
    return _DenseSummary(cat(parts_all), cat(parts_below), above)


def _layout_fits(runs: _ColumnRuns, is_causal: bool, slots: int, nq: int) -> torch.Tensor:
    """Per column: whether its runs have the interval form of (causal, C) (SPEC §2 table)."""
    count = runs.count
    top = (count > 0) & (runs.first_start == 0)
    bottom = (count > 0) & (runs.last_end == nq)
    if slots == 0:
        return count == 0
    if is_causal and slots == 1:     # [LTS, Nq)
        return (count == 0) | ((count == 1) & bottom)
    if is_causal and slots == 2:     # [LTS, LTE)
        return count <= 1
    if slots == 2:                   # [LTS, Nq) and [0, UTE); a fully hidden column is one run
        return (count == 0) | ((count == 1) & (top | bottom)) | ((count == 2) & top & bottom)
    return count <= 2                # [LTS, LTE) and [UTS, UTE)


def _layout_values(runs: _ColumnRuns, is_causal: bool, slots: int, nq: int) -> List[torch.Tensor]:
    """The slot vectors of columns that fit (causal, C), as src/mask/dense.cpp writes them."""
    count = runs.count
    some = count > 0
    top = some & (runs.first_start == 0)
    bottom = some & (runs.last_end == nq)
    nothing = torch.full_like(count, nq)
    zero = torch.zeros_like(count)
    if is_causal:
        lower_start = torch.where(some, runs.first_start, nothing)
        return [lower_start] if slots == 1 else [lower_start, torch.where(some, runs.first_end, nothing)]
    if slots == 2:
        fully_hidden = (count == 1) & top & bottom
        has_upper = top & ~fully_hidden
        return [torch.where(bottom, runs.last_start, nothing), torch.where(has_upper, runs.first_end, zero)]
    single_upper = (count == 1) & top & ~bottom
    has_upper = (count == 2) | single_upper
    has_lower = (count == 2) | ((count == 1) & ~single_upper)
    return [torch.where(has_lower, runs.last_start, nothing), torch.where(has_lower, runs.last_end, nothing),
            torch.where(has_upper, runs.first_start, zero), torch.where(has_upper, runs.first_end, zero)]


def _describe_column(summary: _DenseSummary, is_causal: bool, slots: int, nq: int, g: int, column: int) -> str:
    above = int(summary.first_visible_above[g, column])
    if is_causal and above < nq:
        return f"row {above} is visible but lies above the causal diagonal"
    runs = summary.runs_below_diagonal if is_causal else summary.runs
    count = int(runs.count[g, column])
    first = f"[{int(runs.first_start[g, column])}, {int(runs.first_end[g, column])})"
    last = f"[{int(runs.last_start[g, column])}, {int(runs.last_end[g, column])})"
    hidden = f"{count} range{'s' if count != 1 else ''} of rows are hidden (the first {first}, the last {last})"
    expected = {
        (True, 0): "no hidden row (no index tensor)",
        (True, 1): "one range ending at Nq ([LTS, Nq))",
        (True, 2): "at most one range ([LTS, LTE))",
        (False, 0): "no hidden row (no index tensor)",
        (False, 2): "a range from row 0 ([0, UTE)) and/or a range to Nq ([LTS, Nq))",
        (False, 4): "at most two ranges ([UTS, UTE) and [LTS, LTE))",
    }[(is_causal, slots)]
    return f"{hidden}; expected {expected}"


def _mask_from_summary(summary: _DenseSummary, shape: Tuple[int, int], causal_flag: Optional[bool],
                       slots: Optional[int], nq: int, argument: str, where: str) -> Mask:
    """The smallest exact layout for the summarised dense mask, or ValueError naming the first
    column (in (batch, head, column) order) that has none.

    causal_flag None tries causal = True first when nothing above the diagonal is visible
    anywhere (the kernels then skip those tiles without reading indices), then causal = False;
    a given C that exists with only one setting (1: causal, 4: not) decides it."""
    batch, heads = shape
    nk = int(summary.runs.count.shape[1])
    if causal_flag is not None:
        settings = [bool(causal_flag)]
    elif slots in _SLOTS_ONLY_WITH:
        settings = [_SLOTS_ONLY_WITH[slots]]
    elif bool((summary.first_visible_above < nq).any().item()):
        settings = [False]
    else:
        settings = [True, False]
    for is_causal in settings:
        allowed = (0,) + _SLOTS_FOR_CAUSAL[is_causal]
        if slots is not None and slots not in allowed:
            raise refusal(ValueError, "slots",
                          f"{where}: C = {slots} is not allowed with causal = {is_causal} (expected one of {allowed})")
        runs = summary.runs_below_diagonal if is_causal else summary.runs
        diagonal_ok = summary.first_visible_above >= nq if is_causal else torch.ones_like(runs.count, dtype=torch.bool)
        for candidate in _SLOTS_FOR_CAUSAL[is_causal] if slots is None else (slots,):
            offending = _first_true(~(diagonal_ok & _layout_fits(runs, is_causal, candidate, nq)))
            if offending is None:
                if candidate == 0:
                    return Mask(None, is_causal)
                vectors = _layout_values(runs, is_causal, candidate, nq)
                indices = torch.stack(vectors, dim=-1).reshape(batch, heads, nk, candidate)
                return Mask(indices.to(INDEX_DTYPE).contiguous(), is_causal)
    # The last setting and C tried (the most general) name the column.
    g, column = offending
    place = f"column {column}" if batch * heads == 1 else f"column {column} (batch {g // heads}, head {g % heads})"
    raise refusal(ValueError, argument,
                  f"{where}: {place} of the {argument} has no interval form for causal = {is_causal}, C = {candidate}: "
                  f"{_describe_column(summary, is_causal, candidate, nq, g, column)}")


def _columns_per_chunk(groups: int, nq: int) -> int:
    return max(1, DENSE_CHUNK_ELEMENTS // max(1, groups * nq))


def from_dense(dense_mask: torch.Tensor, causal: Optional[bool] = None, slots: Optional[int] = None) -> Mask:
    """The exact FlashMask form of a dense boolean mask, [Nq, Nk] or [B, H, Nq, Nk] (True, or
    nonzero, = visible), on the dense mask's device: indices [1, 1, Nk, C] or [B, H, Nk, C].

    `causal` None chooses causal = True when nothing above the bottom-right diagonal is visible
    and a causal layout is exact, else causal = False; `slots` (C) None picks the smallest C
    allowed with `causal` that is exact for every (batch, head) (flashmask.from_dense's rule).
    Raises ValueError naming the first column with no such form. The same values as
    flashmask.from_dense, computed with torch ops in column chunks."""
    where = "from_dense"
    argument = "dense_mask"
    if not isinstance(dense_mask, torch.Tensor):
        raise refusal(TypeError, argument, f"{where}: {argument} must be a torch tensor; got {type(dense_mask).__name__} "
                                           "(flashmask.from_dense takes NumPy arrays)")
    if dense_mask.ndim not in (2, 4):
        raise refusal(ValueError, argument,
                      f"{where}: {argument} has shape {list(dense_mask.shape)}; expected [Nq, Nk] or [B, H, Nq, Nk]")
    visible = dense_mask if dense_mask.dtype == torch.bool else dense_mask != 0
    visible = visible.reshape((1, 1) + tuple(visible.shape)) if visible.ndim == 2 else visible
    batch, heads, nq, nk = visible.shape
    _check_length(nq, "Nq", where)
    _check_length(nk, "Nk", where)
    groups = batch * heads
    grouped = visible.reshape(groups, nq, nk)
    step = _columns_per_chunk(groups, nq)
    chunks = ((start, grouped[:, :, start:start + step]) for start in range(0, nk, step))
    summary = _summarise(chunks, groups, nq, nk, visible.device)
    return _mask_from_summary(summary, (batch, heads), causal, slots, nq, argument, where)


# --------------------------------------------------------------------------------------------
# FlexAttention
# --------------------------------------------------------------------------------------------


def _flex_attention():
    try:
        from torch.nn.attention import flex_attention as module
    except ImportError as error:  # torch older than 2.5
        raise refusal(NotImplementedError, "mask_mod",
                      f"FlexAttention (torch.nn.attention.flex_attention) is not in torch {torch.__version__}") from error
    return module


def from_mask_mod(mask_mod: Callable, nq: int, nk: int, *, batch: Optional[int] = None, heads: Optional[int] = None,
                  causal: Optional[bool] = None, slots: Optional[int] = None, device: DeviceLike = None) -> Mask:
    """The exact FlashMask form of a FlexAttention mask_mod(b, h, q_idx, kv_idx) -> bool.

    The mask_mod is evaluated once on `device` (the CPU when None) over the [batch, heads, Nq,
    Nk] grid, in column chunks, with FlexAttention's create_mask (torch.vmap, as
    create_block_mask does); batch and heads None mean the mask does not depend on them (1,
    as in create_block_mask). causal and slots as for from_dense. Raises ValueError naming the
    first column when the mask has no column-interval form."""
    where = "from_mask_mod"
    flex = _flex_attention()
    if not callable(mask_mod):
        raise refusal(TypeError, "mask_mod", f"{where}: mask_mod must be callable; got {type(mask_mod).__name__}")
    nq = _check_length(nq, "nq", where)
    nk = _check_length(nk, "nk", where)
    batch = 1 if batch is None else _check_batch(batch, where)
    heads = 1 if heads is None else _check_count(heads, "heads", where)
    device = _device(device)
    groups = batch * heads
    step = _columns_per_chunk(groups, nq)

    def chunks():
        for start in range(0, nk, step):
            width = min(step, nk - start)

            def shifted(b, h, q_idx, kv_idx, start=start):
                return mask_mod(b, h, q_idx, kv_idx + start)

            visible = flex.create_mask(shifted, batch, heads, nq, width, device=device)
            if visible.dtype != torch.bool:
                visible = visible != 0
            yield start, visible.reshape(groups, nq, width)

    summary = _summarise(chunks(), groups, nq, nk, device)
    return _mask_from_summary(summary, (batch, heads), causal, slots, nq, "mask_mod", where)


def to_mask_mod(startend_row_indices, causal: bool = False, *, nq: Optional[int] = None,
                nk: Optional[int] = None, heads: Optional[int] = None) -> Callable:
    """A FlexAttention mask_mod(b, h, q_idx, kv_idx) computing the mask's column rule (SPEC §2):
    True where the row may attend to the key. `heads` is the number of query heads FlexAttention
    will pass (default Hm); query head h reads mask head h // (heads / Hm). A mask with B = 1
    or Hm = 1 serves every batch entry or head."""
    where = "to_mask_mod"
    indices, is_causal, nq, nk, device = _mask_sizes(startend_row_indices, causal, nq, nk, None, where)
    lower_start, lower_end, upper_start, upper_end = _intervals(indices, is_causal, nq, nk, device)
    mask_batch, mask_heads, _ = lower_start.shape
    heads = mask_heads if heads is None else _check_count(heads, "heads", where)
    if heads % mask_heads != 0:
        raise refusal(ValueError, "heads",
                      f"{where}: heads = {heads} is not a multiple of the mask's Hm = {mask_heads}")
    heads_per_mask_head = heads // mask_heads

    def mask_mod(b, h, q_idx, kv_idx):
        bb = b if mask_batch > 1 else 0
        hh = h // heads_per_mask_head if mask_heads > 1 else 0
        hidden = ((lower_start[bb, hh, kv_idx] <= q_idx) & (q_idx < lower_end[bb, hh, kv_idx])) | \
                 ((upper_start[bb, hh, kv_idx] <= q_idx) & (q_idx < upper_end[bb, hh, kv_idx]))
        return ~hidden

    return mask_mod


def to_block_mask(startend_row_indices, causal: bool = False, *, nq: Optional[int] = None,
                  nk: Optional[int] = None, batch: Optional[int] = None, heads: Optional[int] = None,
                  block_size: Union[int, Tuple[int, int]] = 128, device: DeviceLike = None):
    """A FlexAttention BlockMask of the mask (create_block_mask with to_mask_mod's mask_mod), on
    the index tensor's device (or `device`), for running flex_attention on the same mask.
    batch and heads default to the mask's B and Hm (None for FlexAttention when 1: broadcast)."""
    flex = _flex_attention()
    where = "to_block_mask"
    indices, is_causal, nq, nk, mask_device = _mask_sizes(startend_row_indices, causal, nq, nk, device, where)
    mask = Mask(indices, is_causal)
    mask_mod = to_mask_mod(mask, nq=nq, nk=nk, heads=heads)
    if batch is None and indices is not None and indices.shape[0] > 1:
        batch = int(indices.shape[0])
    if heads is None and indices is not None and indices.shape[1] > 1:
        heads = int(indices.shape[1])
    return flex.create_block_mask(mask_mod, batch, heads, nq, nk, device=mask_device, BLOCK_SIZE=block_size)
