"""Checks that need an interpreter in which nothing is imported yet (what `import flashmask`
itself loads): test_into.py and test_torch_op.py share this one runner (a helper, not a test
file)."""

import subprocess
import sys

# The probes' first check after `import sys, flashmask`: the import itself must not load torch.
ASSERT_NO_TORCH = "assert 'torch' not in sys.modules, 'import flashmask imported torch'\n"


def run_in_fresh_interpreter(code: str) -> str:
    """Runs `code` as `python -c` in a new interpreter of this one's executable (so the same
    environment and installed flashmask), fails the test with the probe's stderr unless it exits
    with 0, and returns what it printed, stripped."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()
