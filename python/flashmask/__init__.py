"""flashmask: exact attention with FlashMask column-wise masks (Wang et al., ICLR 2025).

    import numpy as np, flashmask
    mask = flashmask.masks.causal_document([300, 200, 524])
    out, lse = flashmask.attention_forward(q, k, v, mask)          # q [B, N, H, D] float32/16
    dq, dk, dv = flashmask.attention_backward(dout, q, k, v, out, lse, mask)

On torch tensors (CPU or CUDA, through DLPack; outputs allocated by the caller, the index
tensor on the tensors' device):

    gpu_mask = flashmask.Mask(torch.from_numpy(mask.startend_row_indices).cuda(), mask.causal)
    stream = torch.cuda.current_stream().cuda_stream
    flashmask.forward_into(q, k, v, out, lse, gpu_mask, stream=stream)
    flashmask.backward_into(dout, q, k, v, out, lse, dq, dk, dv, gpu_mask, stream=stream)

For PyTorch users, a differentiable operator that works under torch.compile and in CUDA graphs
(docs/torch.md):

    out = flashmask.flashmask_attention(q, k, v, startend_row_indices, causal=True)

Needs only NumPy: `import flashmask` imports no PyTorch and does not initialise CUDA (the torch
names are imported on first use; see _LAZY_SUBMODULES). Refused
inputs raise TypeError (dtype), ValueError (shape, value, device, option) or
NotImplementedError (not in this build), with a message naming the argument; the exception's
`argument` attribute holds that name. A CUDA failure raises RuntimeError with CUDA's message.
"""

import importlib

from . import _flashmask, masks
from .attention import (attention_backward, attention_forward, backward_into, forward_into, naive_backward,
                        naive_forward, reference_backward, reference_forward, spec_bound)
from .masks import (
    BLOCK_SUMMARY_FIELDS,
    CPU_BLOCK_M,
    CPU_BLOCK_N,
    KEY_ORDER_WINDOW,
    Mask,
    TileCounts,
    block_summaries,
    catalogue,
    catalogue_names,
    check_mask_shape,
    from_dense,
    sorted_key_order,
    tile_counts,
    to_dense,
    validate_mask,
    visible_pairs,
)

__version__ = _flashmask.__version__


def cuda_available() -> bool:
    """Whether this build has CUDA kernels and a usable GPU (False for the CPU-only wheel).
    The first call initialises the CUDA driver; importing flashmask does not."""
    return bool(_flashmask.cuda_available())


def cuda_cached_bytes() -> int:
    """Device memory the CUDA path keeps between calls on the current device: with
    FLASHMASK_COMPRESSIBLE_SCRATCH=1 set before the first call (opt-in, being measured), the
    backward's dQ accumulator in compressible memory, as large as the largest one asked for
    (B * Hq * Nq * D float32s), where the device supports compression. Otherwise 0."""
    return int(_flashmask.cuda_cached_bytes())


def release_cuda_cache() -> None:
    """Frees the memory of cuda_cached_bytes() once the calls using it finish (waits for them)."""
    _flashmask.release_cuda_cache()


# Submodules that import torch, and the names the package exposes from each. They are imported
# on first access of one of these names (or of the submodule itself), never by `import
# flashmask`: PEP 562's module __getattr__ below. A torch module adds its names here, one line.
_LAZY_SUBMODULES = {
    "torch_op": ("flashmask_attention",),
    # Its builders share names with the NumPy ones (to_dense, from_dense, causal, full), so the
    # module is exposed as a whole: flashmask.torch_masks.causal_document(...).
    "torch_masks": (),
}
_LAZY_NAMES = {name: submodule for submodule, names in _LAZY_SUBMODULES.items() for name in names}


def __getattr__(name: str):
    """The lazily imported names of _LAZY_SUBMODULES (and the submodules themselves)."""
    submodule = _LAZY_NAMES.get(name, name if name in _LAZY_SUBMODULES else None)
    if submodule is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f".{submodule}", __name__)
    value = module if name == submodule else getattr(module, name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY_NAMES) | set(_LAZY_SUBMODULES))


# The lazy names are left out of __all__: `from flashmask import *` must not import torch.
__all__ = [
    "BLOCK_SUMMARY_FIELDS", "CPU_BLOCK_M", "CPU_BLOCK_N", "KEY_ORDER_WINDOW", "Mask", "TileCounts", "__version__",
    "attention_backward", "attention_forward", "backward_into", "block_summaries", "catalogue", "catalogue_names",
    "check_mask_shape", "cuda_available", "cuda_cached_bytes", "forward_into", "from_dense", "masks",
    "naive_backward", "naive_forward", "reference_backward", "reference_forward", "release_cuda_cache",
    "sorted_key_order", "spec_bound", "tile_counts", "to_dense", "validate_mask", "visible_pairs",
]
