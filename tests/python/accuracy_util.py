"""What several Python test files share: random index tensors and accuracy measures (a
helper, not a test file).

The tensor helpers take torch tensors but import torch only when called: test_attention.py
imports this module in environments without torch."""

import numpy as np


def random_intervals(rng, batch, mask_heads, nq, nk, slots) -> np.ndarray:
    """Random int32 [B, Hm, Nk, C] in [0, Nq], each pair's bounds sorted in about half of the
    columns so that empty and non-empty intervals both occur."""
    shape = (batch, mask_heads, nk, slots)
    indices = rng.integers(0, nq + 1, size=shape).astype(np.int32)
    if slots >= 2:
        sort_pairs = rng.random(shape[:3]) < 0.5
        pairs = indices.reshape(shape[:3] + (slots // 2, 2))
        pairs[sort_pairs] = np.sort(pairs[sort_pairs], axis=-1)
    return indices


def relative_error(value: np.ndarray, reference: np.ndarray) -> float:
    """||value - reference|| / ||reference||, SPEC §5's measure; a test whose reference is all
    zeros measures nothing, so that is a test error."""
    reference_norm = np.linalg.norm(reference)
    assert reference_norm > 0, "the reference is all zeros: the test's mask hides everything"
    return float(np.linalg.norm(value - reference) / reference_norm)


def float64_of(tensor) -> np.ndarray:
    """A torch tensor's values (any device, any float dtype) as a float64 NumPy array."""
    import torch

    return tensor.detach().to(torch.float64).cpu().numpy()


def storage_of(tensor, dtype_name: str) -> np.ndarray:
    """A torch tensor's values as flashmask's naive_* take them: float16/float32 arrays, or the
    uint16 bits of bfloat16 (NumPy has no bfloat16)."""
    import torch

    if dtype_name == "bfloat16":
        return tensor.detach().contiguous().view(torch.int16).cpu().numpy().view(np.uint16)
    return tensor.detach().contiguous().cpu().numpy()
