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


# --------------------------------------------------------------------------------------------
# Arrays of any framework and device, through DLPack (forward_into / backward_into)
# --------------------------------------------------------------------------------------------

# DLPack's device type of CUDA memory (DLDeviceType kDLCUDA).
DLPACK_CUDA = 2
# DLPack's name for the legacy default stream. Its cudaStream_t is 0, but __dlpack__(stream=0)
# is disallowed for CUDA (0 is ambiguous there); 1 and 2 (cudaStreamLegacy, cudaStreamPerThread)
# mean the same in both, and any other handle is passed as it is.
DLPACK_LEGACY_DEFAULT_STREAM = 1


def cuda_stream_handle(stream) -> int:
    """The cudaStream_t of a call as an int: `stream` itself, or 0 (the legacy default stream)
    for None. TypeError/ValueError naming `stream` for anything but a non-negative int."""
    if stream is None:
        return 0
    if isinstance(stream, bool) or not isinstance(stream, int):
        raise refusal(TypeError, "stream",
                      f"stream must be an int cudaStream_t handle or None; got {type(stream).__name__} "
                      "(for a torch.cuda.Stream, pass its .cuda_stream)")
    if stream < 0:
        raise refusal(ValueError, "stream", f"stream = {stream}; expected a cudaStream_t handle (an int >= 0)")
    return stream


def dlpack_stream(handle: int) -> int:
    """The DLPack spelling of a cudaStream_t handle, for __dlpack__(stream=...)."""
    return DLPACK_LEGACY_DEFAULT_STREAM if handle == 0 else handle


def device_operand(value, argument: str, stream_handle: int, *, floating: bool = True):
    """One tensor argument as the C++ module's attention calls take it.

    * NumPy arrays pass as they are, except bfloat16 (module docstring): ``ml_dtypes.bfloat16``
      arrays pass as their uint16 view, and bare uint16 arrays of `floating` arguments (every
      tensor but the int32 index) are refused, since these calls have no ``dtype="bfloat16"``
      to mark them as bfloat16 bits.
    * CUDA arrays (``__dlpack_device__()`` says CUDA) pass as the DLPack capsule exported for
      the call's stream: the producer makes the data ready on that stream (torch waits on its
      current stream when it differs), so the kernels read finished inputs.
    * Other DLPack arrays (torch CPU tensors, ...) pass as they are; nanobind imports them.

    A torch tensor that requires grad is detached first (same memory): DLPack export refuses
    such tensors, and these calls are outside autograd anyway."""
    if isinstance(value, np.ndarray):
        if is_ml_bfloat16(value):
            return value.view(np.uint16)
        if floating and value.dtype == np.uint16:
            raise refusal(TypeError, argument,
                          f"{argument} has dtype uint16; expected float64, float32, float16 or bfloat16 "
                          "(ml_dtypes.bfloat16 for NumPy; uint16 bfloat16 bits are taken only by "
                          "attention_forward/backward with dtype=\"bfloat16\")")
        return value
    if getattr(value, "requires_grad", False) and hasattr(value, "detach"):
        value = value.detach()
    dlpack_device = getattr(value, "__dlpack_device__", None)
    if dlpack_device is None or not hasattr(value, "__dlpack__"):
        raise refusal(TypeError, argument,
                      f"{argument} must be an array with DLPack support (a torch tensor, a NumPy array, ...); "
                      f"got {type(value).__name__}")
    if int(dlpack_device()[0]) == DLPACK_CUDA:
        return value.__dlpack__(stream=dlpack_stream(stream_handle))
    return value


def any_ml_bfloat16(values) -> bool:
    """Whether any of `values` is an ml_dtypes bfloat16 NumPy array (the call then passes
    bfloat16 as uint16 bits)."""
    return any(isinstance(v, np.ndarray) and is_ml_bfloat16(v) for v in values)
