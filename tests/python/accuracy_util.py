"""What several Python test files share to measure accuracy (a helper, not a test file)."""

import numpy as np


def relative_error(value: np.ndarray, reference: np.ndarray) -> float:
    """||value - reference|| / ||reference||, SPEC §5's measure; a test whose reference is all
    zeros measures nothing, so that is a test error."""
    reference_norm = np.linalg.norm(reference)
    assert reference_norm > 0, "the reference is all zeros: the test's mask hides everything"
    return float(np.linalg.norm(value - reference) / reference_norm)
