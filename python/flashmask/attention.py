"""Attention with FlashMask masks: on NumPy arrays (the library's CPU path, returning new
arrays), into caller-allocated arrays of any framework and device through DLPack
(forward_into / backward_into: torch tensors on the CPU or a CUDA device, NumPy arrays), the
float64 reference it is tested against, and SPEC §5's naive in-dtype attention and error bound.

Layouts (SPEC §1), BSHD: q [B, Nq, Hq, D], k [B, Nk, Hk, D], v [B, Nk, Hk, Dv],
out [B, Nq, Hq, Dv], lse float32 [B, Hq, Nq]. Any strides with a contiguous last dimension
(so a [B, H, N, D] array passed as ``x.transpose(0, 2, 1, 3)`` works unchanged).
dtypes: float64, float32, float16, bfloat16 (see flashmask._arrays for how bfloat16 is spelled);
float64 runs in float64 arithmetic throughout (the exact path, e.g. for gradient checks).
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import numpy as np

from . import _flashmask
from ._arrays import (BFLOAT16, any_ml_bfloat16, cuda_stream_handle, device_operand, is_ml_bfloat16, kernel_view,
                      ml_dtypes_bfloat16, refusal, require_array, require_rank, to_float64, uses_bfloat16_bits)
from .masks import mask_arguments

_Q_LAYOUT = "[B, Nq, Hq, D]"
_V_LAYOUT = "[B, Nk, Hk, Dv]"
_NO_STREAM = 0  # NumPy arrays are on the CPU, where the library ignores the stream


def _attention_mask(startend_row_indices, causal: bool, q: np.ndarray):
    """(indices, causal) for an attention call: a builder's Mask is broadcast over q's batch."""
    return mask_arguments(startend_row_indices, causal, q.shape[0] if q.ndim == 4 else None)


def attention_forward(q: np.ndarray, k: np.ndarray, v: np.ndarray, startend_row_indices=None, *,
                      causal: bool = False, scale: Optional[float] = None, num_threads: int = 0,
                      dtype: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Masked attention forward: returns (out [B, Nq, Hq, Dv] in q's dtype, lse float32 [B, Hq, Nq]).

    startend_row_indices: int32 [B, Hm, Nk, C] (Hm in {1, Hk, Hq}), a Mask, or None.
    scale defaults to 1/sqrt(D); num_threads 0 = all cores. Rows that see no key get out = 0
    and lse = -inf. dtype="bfloat16" marks uint16 arrays as bfloat16 bits."""
    q = require_array(q, "q")
    k = require_array(k, "k")
    v = require_array(v, "v")
    require_rank(q, 4, "q", _Q_LAYOUT)
    indices, causal = _attention_mask(startend_row_indices, causal, q)
    bfloat16_bits = uses_bfloat16_bits(q, dtype)
    require_rank(v, 4, "v", _V_LAYOUT)
    batch, nq, q_heads, _ = q.shape
    out = np.empty((batch, nq, q_heads, v.shape[3]), dtype=q.dtype)
    lse = np.empty((batch, q_heads, nq), dtype=np.float32)
    _flashmask.forward(kernel_view(q, bfloat16_bits), kernel_view(k, bfloat16_bits), kernel_view(v, bfloat16_bits),
                       kernel_view(out, bfloat16_bits), lse, indices, causal,
                       None if scale is None else float(scale), int(num_threads), bfloat16_bits, _NO_STREAM)
    return out, lse


def attention_backward(dout: np.ndarray, q: np.ndarray, k: np.ndarray, v: np.ndarray, out: np.ndarray,
                       lse: np.ndarray, startend_row_indices=None, *, causal: bool = False,
                       scale: Optional[float] = None, deterministic: bool = False, num_threads: int = 0,
                       dtype: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Masked attention backward: returns (dq, dk, dv) shaped and typed like (q, k, v).

    out and lse are attention_forward's on the same inputs. With GQA, dk/dv sum over the query
    heads sharing a KV head. The CPU path is deterministic whatever `deterministic` says."""
    dout = require_array(dout, "dout")
    q = require_array(q, "q")
    k = require_array(k, "k")
    v = require_array(v, "v")
    out = require_array(out, "out")
    lse = require_array(lse, "lse")
    indices, causal = _attention_mask(startend_row_indices, causal, q)
    bfloat16_bits = uses_bfloat16_bits(q, dtype)
    dq = np.empty(q.shape, dtype=q.dtype)
    dk = np.empty(k.shape, dtype=k.dtype)
    dv = np.empty(v.shape, dtype=v.dtype)
    views = [kernel_view(a, bfloat16_bits) for a in (q, k, v, out)]
    grads = [kernel_view(a, bfloat16_bits) for a in (dq, dk, dv)]
    _flashmask.backward(*views, lse, kernel_view(dout, bfloat16_bits), *grads, indices, causal,
                        None if scale is None else float(scale), bool(deterministic), int(num_threads),
                        bfloat16_bits, _NO_STREAM)
    return dq, dk, dv


def _batch_of(q) -> Optional[int]:
    """q's B, for broadcasting a builder's Mask; None when q is not a rank-4 array (the library
    then refuses q itself)."""
    shape = getattr(q, "shape", None)
    return int(shape[0]) if shape is not None and len(shape) == 4 else None


def _device_operands(named, stream_handle: int):
    """The C++ module's operands for (name, value) pairs (see _arrays.device_operand)."""
    return [device_operand(value, name, stream_handle) for name, value in named]


def _index_operand(indices, stream_handle: int):
    return None if indices is None else device_operand(indices, "startend_row_indices", stream_handle,
                                                       floating=False)


def forward_into(q, k, v, out, lse, startend_row_indices=None, *, causal: bool = False,
                 scale: Optional[float] = None, stream: Optional[int] = None, num_threads: int = 0,
                 key_order: str = "auto") -> None:
    """Masked attention forward into caller-allocated outputs, on the CPU or a CUDA device.

    q [B, Nq, Hq, D], k [B, Nk, Hk, D], v [B, Nk, Hk, Dv]; out [B, Nq, Hq, Dv] in q's dtype and
    lse float32 [B, Hq, Nq] are written in place. Any arrays with DLPack support, all on one
    device: torch tensors (CPU or CUDA, bfloat16 included), NumPy arrays, ... Any strides with
    a contiguous last dimension, so a [B, H, N, D] tensor passes as ``x.transpose(1, 2)``.
    dtypes: bfloat16 and float16 on CUDA; float32 and float64 too on the CPU.

    startend_row_indices: int32 [B, Hm, Nk, C] on the same device, a Mask, or None.
    stream: the cudaStream_t the kernels run on, as an int (e.g.
    ``torch.cuda.current_stream().cuda_stream``); None = the legacy default stream. The inputs
    are made ready on it through DLPack. On CUDA the call may return before the kernels finish:
    the outputs are ready in `stream`'s order. Ignored on the CPU, where num_threads applies
    (0 = all cores).

    key_order: the order the CUDA kernels read the keys in. "auto" sorts them by their mask
    intervals (inside windows of 1024 keys) from Nk = 16384 on when that leaves at most 0.9 of
    the tiles to compute (random eviction), a choice made on the device without any host
    synchronisation (CUDA graph capture works); "natural" never sorts; "sorted" always sorts when
    the mask allows it (an index tensor, mask heads 1 or Hk). Results agree up to the order of
    floating-point sums. The CPU path reads the keys in order.

    Refusals (before anything is written): TypeError (dtype, not an array), ValueError (shape,
    device mismatch, option), NotImplementedError (not in this build: e.g. CUDA arrays without
    CUDA kernels, a head dim with no kernel), RuntimeError (a CUDA failure, CUDA's message)."""
    handle = cuda_stream_handle(stream)
    indices, causal = mask_arguments(startend_row_indices, causal, _batch_of(q), any_array=True)
    named = [("q", q), ("k", k), ("v", v), ("out", out), ("lse", lse)]
    bfloat16_bits = any_ml_bfloat16(value for _, value in named)
    operands = _device_operands(named, handle)
    index_operand = _index_operand(indices, handle)
    _flashmask.forward(*operands, index_operand, causal, None if scale is None else float(scale),
                       int(num_threads), bfloat16_bits, handle, str(key_order))


def backward_into(dout, q, k, v, out, lse, dq, dk, dv, startend_row_indices=None, *, causal: bool = False,
                  scale: Optional[float] = None, deterministic: bool = False, stream: Optional[int] = None,
                  num_threads: int = 0, key_order: str = "auto") -> None:
    """Masked attention backward into caller-allocated dq, dk, dv (shaped and typed like q, k, v),
    on the CPU or a CUDA device; the arrays and `stream` as in forward_into.

    out and lse are forward_into's on the same inputs. With GQA, dk/dv sum over the query heads
    sharing a KV head. deterministic=True gives identical bits on every run (the CPU path
    always does). On CUDA, as in forward_into, a view whose rows are off 16-byte addresses (data
    pointer or a stride but the last not a multiple of 8 elements) is copied through contiguous
    scratch around the kernels. key_order as in forward_into."""
    handle = cuda_stream_handle(stream)
    indices, causal = mask_arguments(startend_row_indices, causal, _batch_of(q), any_array=True)
    named = [("q", q), ("k", k), ("v", v), ("out", out), ("lse", lse), ("dout", dout), ("dq", dq), ("dk", dk),
             ("dv", dv)]
    bfloat16_bits = any_ml_bfloat16(value for _, value in named)
    operands = _device_operands(named, handle)
    index_operand = _index_operand(indices, handle)
    _flashmask.backward(*operands, index_operand, causal, None if scale is None else float(scale),
                        bool(deterministic), int(num_threads), bfloat16_bits, handle, str(key_order))


def reference_forward(q: np.ndarray, k: np.ndarray, v: np.ndarray, startend_row_indices=None, *,
                      causal: bool = False, scale: Optional[float] = None,
                      dtype: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray]:
    """The float64 reference forward (dense, slow; for tests): (out, lse) as float64.

    Inputs of any supported dtype are converted to float64 first."""
    q, k, v = (require_array(a, name) for a, name in ((q, "q"), (k, "k"), (v, "v")))
    indices, causal = _attention_mask(startend_row_indices, causal, q)
    bfloat16_bits = uses_bfloat16_bits(q, dtype)
    q64, k64, v64 = (to_float64(a, bfloat16_bits) for a in (q, k, v))
    return _flashmask.reference_forward(q64, k64, v64, indices, causal, None if scale is None else float(scale))


def reference_backward(dout: np.ndarray, q: np.ndarray, k: np.ndarray, v: np.ndarray, startend_row_indices=None,
                       *, causal: bool = False, scale: Optional[float] = None,
                       dtype: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The float64 reference backward (recomputes the forward): (dq, dk, dv) as float64."""
    dout, q, k, v = (require_array(a, name) for a, name in ((dout, "dout"), (q, "q"), (k, "k"), (v, "v")))
    indices, causal = _attention_mask(startend_row_indices, causal, q)
    bfloat16_bits = uses_bfloat16_bits(q, dtype)
    q64, k64, v64, dout64 = (to_float64(a, bfloat16_bits) for a in (q, k, v, dout))
    return _flashmask.reference_backward(q64, k64, v64, dout64, indices, causal,
                                         None if scale is None else float(scale))


# The storage dtypes of attention, by NumPy dtype (bfloat16 is spelled separately; see _arrays).
_LIBRARY_DTYPES = {np.dtype(np.float64): _flashmask.DType.float64, np.dtype(np.float32): _flashmask.DType.float32,
                   np.dtype(np.float16): _flashmask.DType.float16}
_DTYPE_NAMES = {"float64": _flashmask.DType.float64, "float32": _flashmask.DType.float32,
                "float16": _flashmask.DType.float16, BFLOAT16: _flashmask.DType.bfloat16}
_EXPECTED_DTYPES = "float64, float32, float16 or bfloat16"


def _input_dtype(arrays, bfloat16_bits: bool):
    """The one storage dtype of (name, array) pairs, as the library's DType; TypeError naming
    the first array whose dtype is not a storage dtype or differs from the first's."""
    (first_name, first), *others = arrays
    for name, array in others:
        if array.dtype != first.dtype:
            raise refusal(TypeError, name, f"{name} has dtype {array.dtype}; expected {first_name}'s {first.dtype}")
    if bfloat16_bits or is_ml_bfloat16(first):
        return _flashmask.DType.bfloat16
    if first.dtype not in _LIBRARY_DTYPES:
        raise refusal(TypeError, first_name, f"{first_name} has dtype {first.dtype}; expected {_EXPECTED_DTYPES}")
    return _LIBRARY_DTYPES[first.dtype]


def naive_forward(q: np.ndarray, k: np.ndarray, v: np.ndarray, startend_row_indices=None, *,
                  causal: bool = False, scale: Optional[float] = None, dtype: Optional[str] = None) -> np.ndarray:
    """SPEC §5's "same computation done naively in the input dtype" (dense, slow; for tests):
    out [B, Nq, Hq, Dv] as float64, with S, P and O each rounded once to the inputs' dtype
    (src/cpu/accuracy.hpp). Its error against reference_forward feeds spec_bound()."""
    q, k, v = (require_array(a, name) for a, name in ((q, "q"), (k, "k"), (v, "v")))
    indices, causal = _attention_mask(startend_row_indices, causal, q)
    bfloat16_bits = uses_bfloat16_bits(q, dtype)
    storage = _input_dtype((("q", q), ("k", k), ("v", v)), bfloat16_bits)
    q64, k64, v64 = (to_float64(a, bfloat16_bits) for a in (q, k, v))
    return _flashmask.naive_forward(storage, q64, k64, v64, indices, causal, None if scale is None else float(scale))


def naive_backward(dout: np.ndarray, q: np.ndarray, k: np.ndarray, v: np.ndarray, startend_row_indices=None, *,
                   causal: bool = False, scale: Optional[float] = None,
                   dtype: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """naive_forward's backward (autograd through the same rounded graph): (dq, dk, dv) as float64."""
    dout, q, k, v = (require_array(a, name) for a, name in ((dout, "dout"), (q, "q"), (k, "k"), (v, "v")))
    indices, causal = _attention_mask(startend_row_indices, causal, q)
    bfloat16_bits = uses_bfloat16_bits(q, dtype)
    storage = _input_dtype((("q", q), ("k", k), ("v", v), ("dout", dout)), bfloat16_bits)
    q64, k64, v64, dout64 = (to_float64(a, bfloat16_bits) for a in (q, k, v, dout))
    return _flashmask.naive_backward(storage, q64, k64, v64, dout64, indices, causal,
                                     None if scale is None else float(scale))


def spec_bound(dtype: Union[str, np.dtype, type], naive_error: float) -> float:
    """SPEC §5's bound on ||x - ref|| / ||ref|| for one tensor of inputs of `dtype` ("float32",
    "float16", "bfloat16", "float64" or a NumPy dtype): 1e-5 for float32 (1e-12 for float64, beyond
    SPEC §5: float64 arithmetic on both sides); for 16-bit dtypes twice
    `naive_error` (naive_* against reference_*), at least one rounding of the dtype, at most 2e-2."""
    return float(_flashmask.spec_bound(_named_dtype(dtype), float(naive_error)))


def _named_dtype(dtype):
    """The library's DType for a dtype name or NumPy dtype; TypeError naming `dtype` otherwise."""
    if isinstance(dtype, str) and dtype in _DTYPE_NAMES:
        return _DTYPE_NAMES[dtype]
    try:
        numpy_dtype = np.dtype(dtype)
    except (TypeError, ValueError):
        numpy_dtype = None
    if numpy_dtype is not None and numpy_dtype == ml_dtypes_bfloat16():
        return _flashmask.DType.bfloat16
    if numpy_dtype in _LIBRARY_DTYPES:
        return _LIBRARY_DTYPES[numpy_dtype]
    raise refusal(TypeError, "dtype", f"dtype = {dtype!r}; expected {_EXPECTED_DTYPES}")
