"""Argument plumbing shared by the package: array checks and the bfloat16 policy.

bfloat16 policy. NumPy has no bfloat16 of its own and cannot export the `ml_dtypes` one
through DLPack or the buffer protocol, so bfloat16 reaches the C++ library as a uint16 view
of the same memory (no copy) with the module's `bfloat16_bits` flag set. Two spellings:

* arrays of dtype ``ml_dtypes.bfloat16`` (when ml_dtypes is installed): outputs come back as
  ``ml_dtypes.bfloat16`` arrays;
* uint16 arrays holding bfloat16 bits plus ``dtype="bfloat16"``: outputs come back as uint16
  bits. This needs nothing beyond NumPy.

A uint16 array without ``dtype="bfloat16"`` is refused (TypeError) like any other dtype the
library does not take.
"""

from __future__ import annotations

import functools
from typing import Optional

import numpy as np

BFLOAT16 = "bfloat16"


@functools.lru_cache(maxsize=None)
def ml_dtypes_bfloat16() -> Optional[np.dtype]:
    """The ml_dtypes bfloat16 dtype, or None when ml_dtypes is not installed."""
    try:
        import ml_dtypes
    except ImportError:
        return None
    return np.dtype(ml_dtypes.bfloat16)


def refusal(exception_type: type, argument: str, message: str) -> Exception:
    """An exception like the C++ module raises: the message names the argument, and the
    `argument` attribute holds it."""
    error = exception_type(message)
    error.argument = argument
    return error


def require_array(value, argument: str) -> np.ndarray:
    """`value` itself when it is a NumPy array; TypeError naming the argument otherwise.

    Arrays are never converted silently: a converted copy would hide a wrong dtype and, for
    outputs, lose what the library writes."""
    if not isinstance(value, np.ndarray):
        raise refusal(TypeError, argument, f"{argument} must be a numpy.ndarray; got {type(value).__name__}")
    return value


def require_rank(array: np.ndarray, rank: int, argument: str, layout: str) -> None:
    if array.ndim != rank:
        raise refusal(ValueError, argument,
                      f"{argument} has rank {array.ndim} (shape {list(array.shape)}); expected {rank}: {layout}")


def is_ml_bfloat16(array: np.ndarray) -> bool:
    bf16 = ml_dtypes_bfloat16()
    return bf16 is not None and array.dtype == bf16


def uses_bfloat16_bits(first: np.ndarray, dtype: Optional[str]) -> bool:
    """Whether this call passes bfloat16 as uint16 bits (see the module docstring)."""
    if dtype is None:
        return is_ml_bfloat16(first)
    if dtype != BFLOAT16:
        raise refusal(ValueError, "dtype",
                      f'dtype = {dtype!r}; expected None or "bfloat16" (for uint16 arrays of bfloat16 bits)')
    return True


def kernel_view(array: np.ndarray, bfloat16_bits: bool) -> np.ndarray:
    """The array as the C++ module reads it: ml_dtypes bfloat16 as a uint16 view of the same memory."""
    if bfloat16_bits and is_ml_bfloat16(array):
        return array.view(np.uint16)
    return array


def to_float64(array: np.ndarray, bfloat16_bits: bool) -> np.ndarray:
    """A C-contiguous float64 copy of an input tensor (for the reference)."""
    if bfloat16_bits and array.dtype == np.uint16:
        # bfloat16 is the upper half of a float32.
        return (array.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return np.ascontiguousarray(array, dtype=np.float64)
