"""Fresh random inputs every run: one session seed, from FLASHMASK_SEED when set (to replay a
failure) or drawn at random, printed in pytest's header and summary. Each test's generator is
derived from the session seed and the test's id, so one test replays alone with the same
numbers."""

import os
import random
import zlib

import numpy as np
import pytest

SEED_VARIABLE = "FLASHMASK_SEED"
# Seeds are drawn below 2**32 so they are easy to read and to paste back.
SEED_RANGE = 2**32


def _session_seed() -> int:
    given = os.environ.get(SEED_VARIABLE)
    return int(given) if given else random.SystemRandom().randrange(SEED_RANGE)


SESSION_SEED = _session_seed()


def pytest_report_header(config):
    return f"flashmask random seed: {SESSION_SEED} (replay with {SEED_VARIABLE}={SESSION_SEED})"


@pytest.fixture
def seed(request) -> int:
    """This test's seed: the session seed mixed with the test's id."""
    return (SESSION_SEED + zlib.crc32(request.node.nodeid.encode())) % SEED_RANGE


@pytest.fixture
def rng(seed) -> np.random.Generator:
    return np.random.default_rng(seed)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    # The header is hidden under -q (as scripts/test runs pytest); the summary is not.
    terminalreporter.write_line(f"flashmask random seed: {SESSION_SEED} (replay with {SEED_VARIABLE}={SESSION_SEED})")
