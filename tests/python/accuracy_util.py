"""What several Python test files share to measure accuracy (a helper, not a test file).

The tensor helpers take torch tensors but import torch only when called: test_attention.py
imports this module in environments without torch."""

import numpy as np


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
