"""bench/bench_attention.py --merge: results of several runs joined into one file, on a machine
without PyTorch as well (the device's results come back to one), without measuring anything.
Input: a committed SPEC §6 results file, joined with itself."""

import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "bench_attention.py"
RESULTS = ROOT / "bench" / "results" / "h100-2026-12-07-981d24a-a.json"


def run_bench(*arguments):
    return subprocess.run([sys.executable, str(BENCH), *arguments], cwd=ROOT / "bench", capture_output=True,
                          text=True, timeout=120)


def test_merge_joins_runs_and_keeps_their_figures(tmp_path):
    out = tmp_path / "merged.md"
    done = run_bench("--merge", str(RESULTS), str(RESULTS), "--out", str(out), "--commit", "test")
    assert done.returncode == 0, done.stderr
    source = json.loads(RESULTS.read_text())
    merged = json.loads(out.with_suffix(".json").read_text())
    assert len(merged["rows"]) == 2 * len(source["rows"])
    for part in (0, 1):
        for got, want in zip(merged["rows"][part * len(source["rows"]):], source["rows"]):
            assert (got["config"], got["mask"]) == (want["config"], want["mask"])
            assert got["results"]["flashmask"]["backward_tflops"] == want["results"]["flashmask"]["backward_tflops"]
    table = out.read_text()
    assert "a#1" in table and "a#2" in table


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None, reason="PyTorch is installed: measuring may run")
def test_measuring_without_pytorch_refuses_with_a_message():
    done = run_bench("--configs", "a")
    assert done.returncode == 2
    assert "needs PyTorch" in done.stderr + done.stdout
