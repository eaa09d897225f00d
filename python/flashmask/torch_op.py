"""flashmask_attention for PyTorch: masked attention as a differentiable, compilable operator.

    import torch, flashmask
    out = flashmask.flashmask_attention(q, k, v, startend_row_indices, causal=True)

q [B, Nq, Hq, D], k [B, Nk, Hk, D], v [B, Nk, Hk, Dv] (BSHD; a [B, H, N, D] tensor passes as
``x.transpose(1, 2)``), out [B, Nq, Hq, Dv] contiguous in q's dtype. The mask arguments mean
what they mean in Paddle's ``flashmask_attention`` (SPEC §2): ``startend_row_indices`` int32
[B, Hm, Nk, C] on the tensors' device, or None for full (causal = False) or plain causal
attention; ``window_size`` builds the index tensor of a sliding window on the device.

Two operators of the ``flashmask`` namespace carry the computation, registered with
``torch.library.custom_op``: ``flashmask::forward -> (out, lse)`` and
``flashmask::backward -> (dq, dk, dv)``. They allocate their outputs (no Nq x Nk memory) and
call flashmask.forward_into / backward_into: on the CPU with every core, on CUDA on the
current stream of the tensors' device (so CUDA graph capture records them). Each has a fake
(meta) implementation computing only shapes, dtypes and strides from the inputs' metadata,
symbolic sizes welcome, so ``torch.compile(fullgraph=True, dynamic=True)`` traces through
them without a graph break and without specialising on sequence lengths or mask values.
``register_autograd`` makes ``flashmask::forward`` differentiable in q, k and v (the index
tensor is an integer input and gets no gradient; the LSE is marked non-differentiable).

Importing this module imports torch; ``import flashmask`` does not (flashmask_attention is
resolved lazily from the package).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from ._arrays import refusal
from .attention import backward_into, forward_into
from .masks import _SLOTS_FOR_CAUSAL, Mask, mask_arguments

__all__ = ["flashmask_attention", "window_indices"]

_FUNCTION = "flashmask_attention"
_Q_LAYOUT = "[B, Nq, Hq, D]"
_K_LAYOUT = "[B, Nk, Hk, D]"
_V_LAYOUT = "[B, Nk, Hk, Dv]"
_INDEX_LAYOUT = "[B, Hm, Nk, C]"

# What the library takes (SPEC §1, §2); float32 and float64 only on the CPU path (float64 in
# float64 arithmetic throughout: what torch.autograd.gradcheck needs).
_ATTENTION_DTYPES = (torch.bfloat16, torch.float16, torch.float32, torch.float64)
_CPU_ONLY_DTYPES = (torch.float32, torch.float64)
_CUDA = "cuda"  # the device type whose kernels refuse _CPU_ONLY_DTYPES (meta tensors pass: shapes only)
_INDEX_DTYPE = torch.int32


# --------------------------------------------------------------------------------------------
# Refusals from metadata alone
# --------------------------------------------------------------------------------------------


def _refused(exception_type: type, argument: str, message: str) -> Exception:
    """An exception like the library's: the message names the argument, `argument` holds it.

    While torch.compile traces, the exception is a plain one: Dynamo cannot trace setting an
    attribute on an exception (it would report that instead of the refusal). Without
    fullgraph, Dynamo raises this exception as it is (the message names the argument); with
    fullgraph, its own error quotes the message."""
    text = f"{_FUNCTION}: {argument}: {message}"
    if torch.compiler.is_compiling():
        return exception_type(text)
    return refusal(exception_type, argument, text)


def _refuse_bad_operands(q: Tensor, k: Tensor, v: Tensor, indices: Optional[Tensor], causal: bool) -> None:
    """Raises TypeError (dtype) or ValueError (rank, shape, device, strides, Hq % Hk) naming the
    first bad argument, from the tensors' metadata only.

    The library checks the same (src/api/dispatch.cpp) before it writes anything; this copy
    exists because the fake implementations must refuse under torch.compile, where no data
    reaches the library, and because the outputs are allocated from these shapes before the
    library is called. Comparisons of sizes are written so that, on symbolic sizes, they add
    guards (equalities, divisibility) rather than specialise on a value."""
    for name, tensor, layout in (("q", q, _Q_LAYOUT), ("k", k, _K_LAYOUT), ("v", v, _V_LAYOUT)):
        if tensor.dim() != 4:
            raise _refused(ValueError, name,
                           f"rank {tensor.dim()} (shape {list(tensor.shape)}), expected rank 4 {layout}")
    operands = [("k", k), ("v", v)] + ([("startend_row_indices", indices)] if indices is not None else [])
    for name, tensor in operands:
        if tensor.device != q.device:
            raise _refused(ValueError, name, f"is on {tensor.device}, expected {q.device} (the device of q): all "
                                             "tensors of a call must be on one device")

    if q.dtype not in _ATTENTION_DTYPES:
        raise _refused(TypeError, "q", f"dtype {q.dtype}, expected torch.bfloat16, torch.float16, torch.float32 "
                                       "or torch.float64 (float32 and float64 on the CPU only)")
    if q.dtype in _CPU_ONLY_DTYPES and q.device.type == _CUDA:
        raise _refused(TypeError, "q", f"dtype {q.dtype} on {q.device}, expected torch.bfloat16 or torch.float16 "
                                       f"({q.dtype} is taken on the CPU only)")
    for name, tensor in (("k", k), ("v", v)):
        if tensor.dtype != q.dtype:
            raise _refused(TypeError, name, f"dtype {tensor.dtype}, expected {q.dtype} (the dtype of q)")

    for name, tensor in (("q", q), ("k", k), ("v", v)):
        # The stride is tested first: when it is 1, as nearly always, a symbolic head dim is
        # never compared (no guard on it).
        if tensor.stride(-1) != 1 and tensor.shape[-1] > 1:
            raise _refused(ValueError, name, f"strides {list(tensor.stride())}, expected stride 1 in the last "
                                             "dimension (contiguous rows; a [B, H, N, D] tensor passes as "
                                             "x.transpose(1, 2), but not x[..., ::2])")

    batch, _, q_heads, head_dim = q.shape
    _, nk, kv_heads, _ = k.shape
    if k.shape[0] != batch or k.shape[3] != head_dim:
        raise _refused(ValueError, "k",
                       f"shape {list(k.shape)}, expected {_K_LAYOUT} with B and D of q {list(q.shape)}")
    if v.shape[0] != batch or v.shape[1] != nk or v.shape[2] != kv_heads:
        raise _refused(ValueError, "v", f"shape {list(v.shape)}, expected {_V_LAYOUT} with B of q {list(q.shape)} and "
                                        f"Nk, Hk of k {list(k.shape)}")
    if kv_heads < 1 or q_heads % kv_heads != 0:
        raise _refused(ValueError, "k", f"Hk = {kv_heads} does not divide Hq = {q_heads}; expected Hq % Hk == 0 "
                                        "(grouped-query attention)")
    if indices is not None:
        _refuse_bad_indices(indices, causal, batch, nk, q_heads, kv_heads)


def _refuse_bad_indices(indices: Tensor, causal: bool, batch, nk, q_heads, kv_heads) -> None:
    name = "startend_row_indices"
    if indices.dtype != _INDEX_DTYPE:
        raise _refused(TypeError, name, f"dtype {indices.dtype}, expected torch.int32")
    if indices.dim() != 4:
        raise _refused(ValueError, name, f"rank {indices.dim()} (shape {list(indices.shape)}), expected rank 4 "
                                         f"{_INDEX_LAYOUT}")
    index_batch, mask_heads, columns, slots = indices.shape
    if index_batch != batch:
        raise _refused(ValueError, name, f"shape {list(indices.shape)}, expected B = {batch} (that of q) in "
                                         f"{_INDEX_LAYOUT}")
    if not (mask_heads == 1 or mask_heads == kv_heads or mask_heads == q_heads):
        raise _refused(ValueError, name, f"head dimension is Hm = {mask_heads}, expected 1, Hk = {kv_heads} or "
                                         f"Hq = {q_heads}")
    if columns != nk:
        raise _refused(ValueError, name, f"key dimension is {columns}, expected Nk = {nk} (that of k)")
    allowed = _SLOTS_FOR_CAUSAL[bool(causal)]
    if not any(slots == count for count in allowed):
        raise _refused(ValueError, name, f"C = {slots} with causal = {bool(causal)}, expected C in {allowed} "
                                         "(SPEC §2)")


# --------------------------------------------------------------------------------------------
# The operators
# --------------------------------------------------------------------------------------------


def _cuda_stream(tensor: Tensor) -> Optional[int]:
    """The cudaStream_t the library runs on: torch's current stream of the tensor's device (the
    capture stream inside torch.cuda.graph), None on the CPU."""
    return torch.cuda.current_stream(tensor.device).cuda_stream if tensor.device.type == _CUDA else None


def _forward_outputs(q: Tensor, v: Tensor) -> Tuple[Tensor, Tensor]:
    """Uninitialised (out [B, Nq, Hq, Dv] in q's dtype, lse float32 [B, Hq, Nq]), contiguous:
    the same call makes the real outputs and the fake ones."""
    batch, nq, q_heads, _ = q.shape
    out = q.new_empty((batch, nq, q_heads, v.shape[3]))
    lse = q.new_empty((batch, q_heads, nq), dtype=torch.float32)
    return out, lse


def _backward_outputs(q: Tensor, k: Tensor, v: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Uninitialised (dq, dk, dv) shaped, typed and (where dense) strided like q, k, v: a
    [B, H, N, D] tensor's transposed view gets its gradient in the same layout."""
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


@torch.library.custom_op("flashmask::forward", mutates_args=())
def attention_forward_op(q: Tensor, k: Tensor, v: Tensor, startend_row_indices: Optional[Tensor], causal: bool,
                         scale: Optional[float], deterministic: bool) -> Tuple[Tensor, Tensor]:
    """(out, lse) of masked attention. `scale` None = 1/sqrt(D), resolved by the library.
    `deterministic` is not used by the forward pass: it rides along to the backward."""
    _refuse_bad_operands(q, k, v, startend_row_indices, causal)
    out, lse = _forward_outputs(q, v)
    forward_into(q, k, v, out, lse, startend_row_indices, causal=causal, scale=scale, stream=_cuda_stream(q))
    return out, lse


@attention_forward_op.register_fake
def _attention_forward_fake(q, k, v, startend_row_indices, causal, scale, deterministic):
    _refuse_bad_operands(q, k, v, startend_row_indices, causal)
    return _forward_outputs(q, v)


@torch.library.custom_op("flashmask::backward", mutates_args=())
def attention_backward_op(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                          startend_row_indices: Optional[Tensor], causal: bool, scale: Optional[float],
                          deterministic: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """(dq, dk, dv) of masked attention, from flashmask::forward's (out, lse) on the same inputs."""
    _refuse_bad_operands(q, k, v, startend_row_indices, causal)
    dq, dk, dv = _backward_outputs(q, k, v)
    backward_into(dout, q, k, v, out, lse, dq, dk, dv, startend_row_indices, causal=causal, scale=scale,
                  deterministic=deterministic, stream=_cuda_stream(q))
    return dq, dk, dv


@attention_backward_op.register_fake
def _attention_backward_fake(dout, q, k, v, out, lse, startend_row_indices, causal, scale, deterministic):
    _refuse_bad_operands(q, k, v, startend_row_indices, causal)
    return _backward_outputs(q, k, v)


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, startend_row_indices, causal, scale, deterministic = inputs
    out, lse = output
    # The backward kernel has no LSE gradient term: a loss through the LSE would get a wrong
    # gradient silently, so the LSE carries none (it is for inspection and merging).
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, out, lse, startend_row_indices)
    ctx.causal = causal
    ctx.scale = scale
    ctx.deterministic = deterministic


def _differentiate(ctx, grad_out: Tensor, grad_lse: Optional[Tensor]):
    q, k, v, out, lse, startend_row_indices = ctx.saved_tensors
    if grad_out.stride(-1) != 1:
        # e.g. the expanded gradient of out.sum() (all strides 0); the library reads rows.
        grad_out = grad_out.contiguous()
    dq, dk, dv = attention_backward_op(grad_out, q, k, v, out, lse, startend_row_indices, ctx.causal, ctx.scale,
                                       ctx.deterministic)
    # One gradient per input of flashmask::forward: none for the index tensor and the options.
    return dq, dk, dv, None, None, None, None


attention_forward_op.register_autograd(_differentiate, setup_context=_setup_context)


# --------------------------------------------------------------------------------------------
# window_size
# --------------------------------------------------------------------------------------------


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _window_bounds(window_size, where: Optional[str] = None) -> Tuple[int, int]:
    """(left, right) from Paddle's / FlashAttention's window_size: one int w means (w, w), or a
    pair; a negative bound is unbounded. The one parser of window_size: flashmask_attention's
    (where None: its refusal) and the mask builders' (where: the builder's name)."""
    if _is_int(window_size):
        return int(window_size), int(window_size)
    if isinstance(window_size, (tuple, list)) and len(window_size) == 2 and all(_is_int(b) for b in window_size):
        return int(window_size[0]), int(window_size[1])
    message = (f"got {window_size!r}, expected a pair (left, right) of ints or one int for both (a negative "
               "bound is unbounded)")
    if where is None:
        raise _refused(TypeError, "window_size", message)
    raise refusal(TypeError, "window_size", f"{where}: window_size: {message}")


def window_indices(nq, nk, window_size, causal: bool = False, *, batch=1,
                   device: Union[str, torch.device, None] = None) -> Tensor:
    """The index tensor of ``window_size = (left, right)`` (SPEC §2): row i sees key j only if
    i + (Nk - Nq) - left <= j <= i + (Nk - Nq) + right (the window follows the bottom-right
    aligned diagonal, as causal does); with causal, right = 0. A negative bound is unbounded.

    int32 [batch, 1, Nk, C] on `device`, built there with torch ops (C = 1 with causal: LTS;
    C = 2 without: LTS, UTE). The same values as flashmask.masks.window(nq, nk, left, right,
    causal), broadcast over the batch (stride 0). Sizes may be symbolic under torch.compile."""
    left, right = _window_bounds(window_size)
    offset = nk - nq  # bottom-right alignment
    # A bound wider than both sequences is unbounded; clamping to [0, Nq] below does the rest
    # (int64 arithmetic, so no overflow for any int32 bound).
    unbounded = nq + nk + 1
    left = unbounded if left < 0 else left
    right = unbounded if right < 0 else right
    columns = torch.arange(nk, device=device, dtype=torch.int64)
    # Key j is hidden from rows >= j - offset + left + 1 (below the window) ...
    slots = [(columns - offset + left + 1).clamp(0, nq)]
    if not causal:
        # ... and from rows < j - offset - right (above it). With causal the diagonal does that.
        slots.append((columns - offset - right).clamp(0, nq))
    indices = torch.stack(slots, dim=-1).to(_INDEX_DTYPE)
    return indices.view(1, 1, nk, len(slots)).expand(batch, 1, nk, len(slots))


# --------------------------------------------------------------------------------------------
# The public function
# --------------------------------------------------------------------------------------------


def _require_tensor(value, argument: str) -> None:
    if not isinstance(value, Tensor):
        raise _refused(TypeError, argument, f"got {type(value).__name__}, expected a torch.Tensor")


def _mask_operands(q: Tensor, k: Tensor, v: Tensor, startend_row_indices, causal,
                   window_size) -> Tuple[Optional[Tensor], bool]:
    """(index tensor or None, causal) for flashmask::forward from the public arguments."""
    if window_size is not None:
        if startend_row_indices is not None:
            raise _refused(ValueError, "window_size", "given together with startend_row_indices; expected one of "
                                                      "them (window_size builds the index tensor)")
        causal = bool(causal)
        _refuse_bad_operands(q, k, v, None, causal)  # the sizes the window is built from are sound
        return window_indices(q.shape[1], k.shape[1], window_size, causal, batch=q.shape[0], device=q.device), causal
    if isinstance(startend_row_indices, Mask):
        # A builder's Mask (B = 1) is broadcast over the batch; its causal flag is the mask's.
        indices, causal = mask_arguments(startend_row_indices, causal, q.shape[0], any_array=True)
    else:
        indices, causal = startend_row_indices, bool(causal)
    if indices is not None and not isinstance(indices, Tensor):
        raise _refused(TypeError, "startend_row_indices",
                       f"got {type(indices).__name__}, expected a torch.Tensor (int32 {_INDEX_LAYOUT} on the device "
                       "of q) or None; move a NumPy index array once with torch.from_numpy(a).to(q.device)")
    return indices, causal


def flashmask_attention(q: Tensor, k: Tensor, v: Tensor, startend_row_indices: Union[Tensor, Mask, None] = None, *,
                        causal: bool = False, window_size: Union[int, Sequence[int], None] = None,
                        scale: Optional[float] = None, return_lse: bool = False,
                        deterministic: bool = False) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Masked attention, differentiable in q, k and v; eager, torch.compile and CUDA graphs.

    q [B, Nq, Hq, D], k [B, Nk, Hk, D], v [B, Nk, Hk, Dv] on one device, any strides with a
    contiguous last dimension (BHSD tensors: pass ``x.transpose(1, 2)``; transpose the output
    back the same way). Hq % Hk == 0 (grouped-query attention). dtypes: bfloat16, float16;
    float32 and float64 on the CPU too (float64 in float64 arithmetic, for gradcheck).
    Returns out [B, Nq, Hq, Dv] (contiguous, q's dtype), or (out, lse) with return_lse, lse
    float32 [B, Hq, Nq] (natural log of the softmax denominator, scale applied; -inf for a row
    that sees no key; no gradient flows through it).

    startend_row_indices: int32 [B, Hm, Nk, C] on q's device (Hm in {1, Hk, Hq}; C in {1, 2}
    with causal, {2, 4} without), as in Paddle's flashmask_attention (SPEC §2); or a
    flashmask.Mask holding such a tensor with B = 1 (broadcast over the batch; its causal
    flag applies); or None: full attention, or plain causal with causal=True (the diagonal
    aligned bottom-right when Nq != Nk).
    window_size: (left, right) or one int for both: row i sees keys i - left .. i + right, both
    shifted by Nk - Nq when Nq != Nk (the bottom-right aligned diagonal, as window_indices
    builds it); right = 0 with causal; negative = unbounded; not together with
    startend_row_indices.
    scale: None = 1/sqrt(D). deterministic: identical gradient bits on every run (the CPU
    path always is).

    Refusals, before any kernel runs: TypeError (a dtype, a non-tensor argument), ValueError
    (a shape, a device mismatch, a last dimension that is not contiguous, Hq % Hk != 0, the
    index tensor's shape or C, window_size with startend_row_indices); the message names the
    argument and the exception's `argument` attribute holds it. NotImplementedError for what
    this build cannot run (CUDA tensors without CUDA kernels; a CUDA head dim without a kernel).
    """
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        _require_tensor(tensor, name)
    indices, causal = _mask_operands(q, k, v, startend_row_indices, causal, window_size)
    # The operators refuse the same, but from inside a fake implementation torch.compile reports
    # a refusal as its own TorchRuntimeError; raised here, in traced Python, it stays a
    # TypeError/ValueError under torch.compile without fullgraph.
    _refuse_bad_operands(q, k, v, indices, causal)
    out, lse = attention_forward_op(q, k, v, indices, causal, None if scale is None else float(scale),
                                    bool(deterministic))
    return (out, lse) if return_lse else out
