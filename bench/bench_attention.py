#!/usr/bin/env python3
"""Side-by-side GPU attention benchmark, SPEC §6: flashmask against its peers, in one process.

For each standard configuration (SPEC §6: bf16, D = 128, Hq = Hk; (a) B=2, H=32, N=8192;
(b) B=1, H=16, N=32768) and each of the twelve catalogue masks (SPEC §3, with the benchmark
parameters of flashmask.catalogue at the seed whose densities are SPEC §6's: bench/spec_densities.py),
forward and backward are timed for

    flashmask  flashmask.forward_into / backward_into (the CUDA kernels)
    flex       torch.compile(flex_attention) with a BlockMask from create_block_mask; ONE
               mask_mod reads each column's canonical intervals from tensors, so a single
               compiled kernel serves every mask of a configuration (recompiles are counted)
    cudnn      SDPA, SDPBackend.CUDNN_ATTENTION (full and causal only)
    flash      SDPA, SDPBackend.FLASH_ATTENTION (full and causal only; issue #3's target)
    dense      SDPA with a dense boolean [N, N] mask, SDPBackend.EFFICIENT_ATTENTION

Effective TFLOP/s count visible pairs only (forward 4·D·Hq·pairs, backward 2.5x that). Every
figure is the median of --reps (>= 100 for results) CUDA-event timings after warm-up, on random
normal inputs. Forward is timed as in training (autograd on, LSE kept); backward is timed alone,
on a forward's saved outputs (flashmask: backward_into on out/lse; torch peers:
torch.autograd.grad with retain_graph).

Before timing, each peer is checked once per mask: its forward on sampled query rows against a
float32 reference built from the same column rule (itself checked against flashmask.to_dense),
and its gradients against FlexAttention's; a peer computing the wrong mask cannot look fast.

Also measured: flashmask's per-call preprocessing (the device block summaries, when the module
exposes a hook for it) against create_block_mask, twice: CUDA events around one call (host
dispatch included, what a caller waits for) and the GPU's own time (PREPROCESS_CALLS_PER_GRAPH
calls captured into one CUDA graph, replay time / calls); and the peak memory of forward +
backward against SDPA with no mask (torch's allocator plus the CUDA default pool's high-water
mark, which is where flashmask's stream-ordered scratch lives).

Needs PyTorch with CUDA and the flashmask package (its mask builders; the CUDA entry points are
optional: without them flashmask's columns read 'n/a' and the peers are still measured).

    python3 bench/bench_attention.py --configs a,b --out bench/results/h100-DATE.md --commit abc1234
    python3 bench/bench_attention.py --quick                       # config a, 20 reps: a smoke run
    python3 bench/bench_attention.py --preprocess-only --configs a,b  # preprocessing figures only
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import faulthandler
import json
import math
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

try:
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    TORCH_IMPORT_ERROR: Optional[ImportError] = None
except ImportError as error:
    # --merge joins results files and needs none of it: it runs where the results come back to,
    # a machine without PyTorch. Every measurement refuses to start instead (main()).
    torch = None
    TORCH_IMPORT_ERROR = error

import flashmask
from flashmask._arrays import device_operand
from mask_columns import COLUMN_BOUND_FIELDS, column_bounds
from spec_densities import SPEC_DENSITY_SEED

# ---------------------------------------------------------------------------------------------
# The measurement contract (SPEC §6)
# ---------------------------------------------------------------------------------------------

HEAD_DIM = 128
DTYPE = torch.bfloat16 if torch is not None else None
FORWARD_FLOPS_PER_PAIR_PER_DIM = 4      # QK^T and PV, 2 flops per multiply-add
BACKWARD_FLOPS_OVER_FORWARD = 2.5       # SPEC §6's convention (5 matrix products over 2)
MIN_RESULT_REPS = 100                   # SPEC §6: median of at least 100 repetitions
QUICK_REPS = 20                         # --quick: a smoke run, not a result
# Untimed calls before each timed series: a tenth of the repetitions, at least 3, so that
# clocks, caches and lazily initialised state (cuBLAS/cuDNN handles, allocator pools) settle.
WARMUP_REPS_DIVISOR = 10
MIN_WARMUP_CALLS = 3


@dataclass(frozen=True)
class Config:
    name: str
    batch: int
    heads: int
    n: int
    # Issue #3 target: every masked run at least this fraction of flashmask's own full-mask
    # effective TFLOP/s (0.6 at 8K, 0.8 at 32K).
    own_full_target: float


STANDARD_CONFIGS = {
    "a": Config("a", batch=2, heads=32, n=8192, own_full_target=0.6),
    "b": Config("b", batch=1, heads=16, n=32768, own_full_target=0.8),
}

# Issue #3's other targets, reported beside the numbers.
PREPROCESS_MAX_FRACTION_OF_FORWARD = 0.02
PREPROCESS_MIN_SPEEDUP_OVER_BLOCK_MASK = 100.0
PEAK_MEMORY_MAX_RATIO_TO_SDPA = 1.10

# The preprocessing's GPU time: this many hook calls captured back to back into one CUDA graph,
# whose replay is timed. One call's kernel takes microseconds; 20 make a replay long enough
# (tens of microseconds) that the CUDA events' ~0.5 us resolution and the graph's own launch
# are a small part of it, and keep capture and replay quick.
PREPROCESS_CALLS_PER_GRAPH = 20
# --preprocess-only times flashmask's forward only for the ratio preprocessing / forward, whose
# order of magnitude (the 2 % target) is what counts: this many repetitions suffice.
PREPROCESS_ONLY_FORWARD_REPS = 20
MODE_FULL, MODE_PREPROCESS_ONLY = "full", "preprocess-only"   # meta["mode"]

# Implementations, in table order. SDPA backends without a mask only run the two masks they
# can express (is_causal).
FLASHMASK, FLEX, CUDNN, FLASH, DENSE = "flashmask", "flex", "cudnn", "flash", "dense"
IMPLEMENTATIONS = (FLASHMASK, FLEX, CUDNN, FLASH, DENSE)
UNMASKED_SDPA = {CUDNN: SDPBackend.CUDNN_ATTENTION, FLASH: SDPBackend.FLASH_ATTENTION} if torch is not None else {}
MASKS_WITHOUT_INDICES = ("full", "causal")

# Correctness checks (bf16 against float32 / against another bf16 kernel). A wrong mask gives
# errors of order 1; bf16 rounding gives ~4e-3 on the forward and ~1e-2 between two kernels'
# gradients. Above these the row is marked MISMATCH (and still timed).
FORWARD_ROW_TOLERANCE = 2e-2
GRADIENT_TOLERANCE = 5e-2
REFERENCE_ROWS = 64             # sampled query rows per check (plus the first and the last)
# Exhaustive check of the column rule against flashmask.to_dense up to this many mask elements
# (8K x 8K = 64 MiB on the host); above it the visible-pair count is compared instead.
DENSE_CHECK_MAX_ELEMENTS = 8192 * 8192

# The benchmark's device; a constant so that a CPU smoke test of the plumbing can swap it.
BENCH_DEVICE = torch.device("cuda") if torch is not None else None

NOT_APPLICABLE = "—"      # the peer cannot express this mask
UNAVAILABLE = "n/a"       # the implementation is missing from this build / machine
OUT_OF_MEMORY = "OOM"
ERROR_NOTE_CHARS = 160   # of an exception's first line, kept in a log line or a table note


# What a flashmask call raises when it refuses or fails (a CUDA error is a RuntimeError).
FLASHMASK_CALL_ERRORS = (NotImplementedError, RuntimeError, ValueError, TypeError)


def log(message: str) -> None:
    print(message, flush=True)


def error_note(error: BaseException) -> str:
    """An exception as one short line: its type and the start of its first line."""
    lines = str(error).splitlines()
    return f"{type(error).__name__}: {lines[0][:ERROR_NOTE_CHARS] if lines else ''}"


# ---------------------------------------------------------------------------------------------
# Masks: the column rule, shared by FlexAttention's mask_mod, the dense mask and the reference
# ---------------------------------------------------------------------------------------------


def column_rule_visible(q_idx, kv_idx, bounds: Sequence[torch.Tensor]):
    """Row q_idx may see key kv_idx unless it lies in one of the column's two masked intervals
    [lower_start, lower_end) or [upper_start, upper_end) (causal folded into the upper one)."""
    lower_start, lower_end, upper_start, upper_end = (b[kv_idx] for b in bounds)
    in_lower = (q_idx >= lower_start) & (q_idx < lower_end)
    in_upper = (q_idx >= upper_start) & (q_idx < upper_end)
    return ~(in_lower | in_upper)


def dense_visibility(bounds: Sequence[torch.Tensor], rows: torch.Tensor, n: int) -> torch.Tensor:
    """bool [len(rows), N] on the bounds' device: True = visible."""
    keys = torch.arange(n, device=rows.device)
    return column_rule_visible(rows[:, None], keys[None, :], bounds)


@dataclass
class MaskCase:
    name: str
    mask: flashmask.Mask
    pairs_per_sequence: int     # visible (query, key) pairs of one sequence and head
    density: float
    indices: Optional[torch.Tensor]    # int32 [B, 1, N, C] on the device, or None


def batch_indices(indices: Optional[np.ndarray], batch: int, device: torch.device) -> Optional[torch.Tensor]:
    """One sequence's index array (int32 [1, Hm, N, C], a builder's) as the batch's own device
    tensor [batch, Hm, N, C]; None (full / causal) stays None."""
    if indices is None:
        return None
    one = torch.from_numpy(np.ascontiguousarray(indices)).to(device)
    return one.expand(batch, *one.shape[1:]).contiguous()


def build_mask_case(name: str, config: Config, seed: int, bounds_buffers: List[torch.Tensor],
                    device: torch.device) -> Tuple[MaskCase, List[str]]:
    """The catalogue mask, its canonical bounds copied INTO the persistent buffers that the
    compiled mask_mod reads (same tensors for every mask: no recompile), and the index tensor
    for flashmask. Returns the case and the problems found while checking the column rule."""
    n = config.n
    mask = flashmask.catalogue(name, n, seed)
    pairs = flashmask.visible_pairs(mask, nq=n, nk=n)
    bounds = torch.from_numpy(column_bounds(mask, n)).to(device)
    for buffer, values in zip(bounds_buffers, bounds):
        buffer.copy_(values)
    indices = batch_indices(mask.startend_row_indices, config.batch, device)
    problems = []
    # The column rule must be the library's mask: every element at 8K, the pair count always.
    all_rows = torch.arange(n, device=device)
    counted = 0
    chunk = max(1, (1 << 26) // n)   # rows per chunk: 64 Mi elements of bool at a time
    exhaustive = n * n <= DENSE_CHECK_MAX_ELEMENTS
    reference = torch.from_numpy(flashmask.to_dense(mask, nq=n, nk=n)).to(device) if exhaustive else None
    for start in range(0, n, chunk):
        visible = dense_visibility(bounds_buffers, all_rows[start:start + chunk], n)
        counted += int(visible.sum())
        if reference is not None and not torch.equal(visible, reference[start:start + chunk]):
            problems.append(f"column rule differs from flashmask.to_dense in rows {start}..")
            reference = None
    if counted != pairs:
        problems.append(f"column rule counts {counted} visible pairs, flashmask.visible_pairs {pairs}")
    return MaskCase(name, mask, pairs, pairs / (n * n), indices), problems


# ---------------------------------------------------------------------------------------------
# Timing and memory
# ---------------------------------------------------------------------------------------------


def warmup_calls(reps: int) -> int:
    """Untimed calls before a series of `reps` timed ones."""
    return max(MIN_WARMUP_CALLS, reps // WARMUP_REPS_DIVISOR)


def median_ms(fn: Callable[[], object], reps: int, warmup: int) -> float:
    """Median of `reps` CUDA-event timings of fn() on the current stream, after `warmup` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for start, end in zip(starts, ends):
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))


GPU_STATE_QUERY = "--query-gpu=clocks.sm,temperature.gpu,power.draw"


def gpu_state() -> str:
    """The GPU's SM clock, temperature and power draw now, as nvidia-smi reports them
    ("1980 MHz, 54 C, 412.3 W"); "" where nvidia-smi cannot say. Taken after each timing: the
    peers run for minutes between flashmask's masks (dense-mask SDPA ~30 s a mask at 32K), and a
    clock that drops under that load moves the ratios between masks (bench/NOTES.md, session 9:
    the benchmark timed flashmask 6-12 % slower than a probe run alone)."""
    try:
        index = torch.cuda.current_device()
        result = subprocess.run(["nvidia-smi", f"--id={index}", GPU_STATE_QUERY, "--format=csv,noheader,nounits"],
                                capture_output=True, text=True, check=True, timeout=10)
        clock, temperature, power = (v.strip() for v in result.stdout.strip().split(","))
        return f"{clock} MHz, {temperature} C, {power} W"
    except (OSError, ValueError, RuntimeError, subprocess.SubprocessError):  # RuntimeError: no CUDA device
        return ""


def host_median_ms(fn: Callable[[], object], reps: int) -> float:
    """Median wall time of a host-driven call that ends on the device (create_block_mask)."""
    fn()  # warm-up: vmap tracing, allocator growth
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


class GraphCaptureFailed(Exception):
    """The calls could not be captured into a CUDA graph; the message says why."""


def graph_median_ms_per_call(call: Callable[[int], object], calls_per_graph: int, reps: int, warmup: int) -> float:
    """The GPU's time for one call(stream_handle), without the host's dispatch between calls.

    `calls_per_graph` calls are captured back to back into one CUDA graph on a side stream, each
    handed that stream's cudaStream_t (so everything they enqueue is captured); the graph's
    replay is timed with CUDA events (median_ms: median of `reps` replays after `warmup`), and
    that median is divided by `calls_per_graph`. The graph's node-to-node latency is included,
    so the figure bounds the calls' device work from above. Raises GraphCaptureFailed (naming
    the cause) when the calls cannot be captured: they synchronise, allocate outside the
    stream's order, or make another stream wait."""
    if calls_per_graph < 1:
        raise ValueError(f"calls_per_graph = {calls_per_graph}; expected at least 1")
    capture_stream = torch.cuda.Stream()
    capture_stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    # The outer stream context restores the current stream even when torch.cuda.graph's exit
    # fails (its capture_end raises before it restores the stream).
    with torch.cuda.stream(capture_stream):
        # Eager calls on the capture stream first (torch's CUDA graph recipe), so lazily
        # initialised state (module loading, the stream's memory pool) is not met in the capture.
        for _ in range(warmup):
            call(capture_stream.cuda_stream)
        try:
            # thread_local: only this thread's calls (the hook's) can invalidate the capture.
            with torch.cuda.graph(graph, stream=capture_stream, capture_error_mode="thread_local"):
                for _ in range(calls_per_graph):
                    call(capture_stream.cuda_stream)
        except FLASHMASK_CALL_ERRORS as error:
            raise GraphCaptureFailed(error_note(error)) from error
    torch.cuda.current_stream().wait_stream(capture_stream)
    replay_ms = median_ms(graph.replay, reps, warmup)
    return replay_ms / calls_per_graph


class DefaultPoolHighWater:
    """High-water mark of the device's default memory pool, where cudaMallocAsync (flashmask's
    DeviceScratch) allocates. torch's caching allocator uses cudaMalloc and does not see it.
    Read through the driver API, which every CUDA process has; None when that fails."""

    USED_MEM_HIGH = 8  # CU_MEMPOOL_ATTR_USED_MEM_HIGH (cuda.h, CUmemPool_attribute)

    def __init__(self, device_index: Optional[int]):
        self.pool = None
        if device_index is None:
            return
        try:
            self.driver = ctypes.CDLL("libcuda.so.1")
            device = ctypes.c_int()
            pool = ctypes.c_void_p()
            if (self.driver.cuInit(0) == 0 and self.driver.cuDeviceGet(ctypes.byref(device), device_index) == 0
                    and self.driver.cuDeviceGetDefaultMemPool(ctypes.byref(pool), device) == 0):
                self.pool = pool
        except OSError:
            pass

    def reset(self) -> None:
        if self.pool is not None:
            zero = ctypes.c_uint64(0)
            self.driver.cuMemPoolSetAttribute(self.pool, self.USED_MEM_HIGH, ctypes.byref(zero))

    def high(self) -> Optional[int]:
        if self.pool is None:
            return None
        value = ctypes.c_uint64(0)
        if self.driver.cuMemPoolGetAttribute(self.pool, self.USED_MEM_HIGH, ctypes.byref(value)) != 0:
            return None
        return int(value.value)


def peak_bytes_above_inputs(run: Callable[[], object], pool: DefaultPoolHighWater) -> Tuple[int, Optional[int]]:
    """Peak bytes that one forward + backward allocates beyond what is already live (the
    inputs): torch's allocator peak, and separately the default pool's high-water mark."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    live = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    pool.reset()
    result = run()
    torch.cuda.synchronize()
    del result
    return torch.cuda.max_memory_allocated() - live, pool.high()


# ---------------------------------------------------------------------------------------------
# The implementations
# ---------------------------------------------------------------------------------------------


class Unavailable(Exception):
    """The implementation cannot run here (not built, no kernel, not supported)."""


@dataclass
class Problem:
    """One configuration's tensors, shared by every implementation (BSHD, bf16, random normal)."""
    config: Config
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    dout: torch.Tensor
    scale: float

    @property
    def bhsd(self):  # the torch peers' layout, as views of the same tensors
        return self.q.transpose(1, 2), self.k.transpose(1, 2), self.v.transpose(1, 2)

    def input_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.q, self.k, self.v, self.dout))


def make_problem(config: Config, device: torch.device, generator: torch.Generator) -> Problem:
    shape = (config.batch, config.n, config.heads, HEAD_DIM)

    def normal(requires_grad: bool) -> torch.Tensor:
        t = torch.randn(shape, device=device, dtype=DTYPE, generator=generator)
        return t.requires_grad_(requires_grad)

    return Problem(config, normal(True), normal(True), normal(True), normal(False), 1.0 / math.sqrt(HEAD_DIM))


@dataclass
class Runner:
    """One implementation on one mask: forward() returns O in BSHD; backward() the gradients
    (dq, dk, dv) of the last forward's outputs; run_both() one forward + backward for memory."""
    forward: Callable[[], torch.Tensor]
    backward: Callable[[], Tuple[torch.Tensor, ...]]
    run_both: Callable[[], object]


def autograd_runner(problem: Problem, attention: Callable) -> Runner:
    """A torch peer: `attention(q, k, v)` on BHSD views, differentiated by autograd."""
    leaves = (problem.q, problem.k, problem.v)
    saved = {}

    def forward():
        out = attention(*problem.bhsd)
        saved["out"] = out
        return out.transpose(1, 2)

    def backward():
        return torch.autograd.grad(saved["out"], leaves, problem.dout.transpose(1, 2), retain_graph=True)

    def run_both():
        out = attention(*problem.bhsd)
        return torch.autograd.grad(out, leaves, problem.dout.transpose(1, 2))

    return Runner(forward, backward, run_both)


class FlashMaskEntryPoints:
    """flashmask.forward_into / backward_into, or why they are missing."""

    def __init__(self):
        self.forward_into = getattr(flashmask, "forward_into", None)
        self.backward_into = getattr(flashmask, "backward_into", None)
        self.preprocess = self._find_preprocess_hook()
        self.missing: Optional[str] = None
        if self.forward_into is None or self.backward_into is None:
            self.missing = "flashmask.forward_into/backward_into are not in this build"
        elif not flashmask.cuda_available():
            # Not called at all then: a CPU-only module handed CUDA tensors must refuse them, but
            # one seen here (2026-11-25, FLASHMASK_CUDA=OFF) crashed instead.
            self.missing = "flashmask.cuda_available() is False (a module built without the CUDA kernels)"

    @staticmethod
    def _find_preprocess_hook():
        # The per-call preprocessing alone, if the module exposes it:
        # forward_preprocessing_cuda(startend_row_indices, *, causal, nq, q_heads, stream) runs
        # on `stream` what forward_into does before its kernel (see bench/README.md).
        for owner in (flashmask, getattr(flashmask, "_flashmask", None)):
            hook = getattr(owner, "forward_preprocessing_cuda", None)
            if hook is not None:
                return hook
        return None


def flashmask_runner(problem: Problem, case: MaskCase, causal: bool, entry: FlashMaskEntryPoints,
                     key_order: Optional[str] = None) -> Runner:
    """key_order: forward_into's option; None leaves the library's default (and runs modules
    that predate the option)."""
    if entry.missing:
        raise Unavailable(entry.missing)
    q, k, v, dout = (t.detach() for t in (problem.q, problem.k, problem.v, problem.dout))
    b, n, h, _ = q.shape
    out = torch.empty_like(q)
    lse = torch.empty((b, h, n), device=q.device, dtype=torch.float32)
    grads = tuple(torch.empty_like(t) for t in (q, k, v))
    options = dict(causal=causal, scale=problem.scale)
    if key_order is not None:
        options["key_order"] = key_order

    def stream() -> int:
        return torch.cuda.current_stream().cuda_stream

    def forward():
        entry.forward_into(q, k, v, out, lse, case.indices, stream=stream(), **options)
        return out

    def backward():
        entry.backward_into(dout, q, k, v, out, lse, *grads, case.indices, stream=stream(), **options)
        return grads

    def run_both():
        o, l = torch.empty_like(q), torch.empty_like(lse)
        g = tuple(torch.empty_like(t) for t in (q, k, v))
        entry.forward_into(q, k, v, o, l, case.indices, stream=stream(), **options)
        entry.backward_into(dout, q, k, v, o, l, *g, case.indices, stream=stream(), **options)
        return o, l, g

    try:
        forward()
        torch.cuda.synchronize()
    except FLASHMASK_CALL_ERRORS as error:
        raise Unavailable(f"{type(error).__name__}: {error}") from error
    return Runner(forward, backward, run_both)


def preprocessing_call(case: MaskCase, config: Config, entry: FlashMaskEntryPoints) -> Callable[[int], None]:
    """One call of flashmask's per-call preprocessing on the stream whose cudaStream_t it is
    handed, with the index tensor passed as forward_into passes it: exported through DLPack for
    that stream (device_operand, forward_into's helper), so any wait the export adds is on that
    same stream, which a call being captured into a CUDA graph requires."""
    def call(stream_handle: int) -> None:
        indices = None if case.indices is None else device_operand(
            case.indices, "startend_row_indices", stream_handle, floating=False)
        entry.preprocess(indices, causal=case.mask.causal, nq=config.n, q_heads=config.heads,
                         head_dim=HEAD_DIM, stream=stream_handle)
    return call


def measure_preprocessing(row: "Row", case: MaskCase, config: Config, entry: FlashMaskEntryPoints,
                          reps: int) -> None:
    """flashmask's per-call preprocessing into `row`: preprocess_ms, CUDA events around one
    call on the current stream (the host's dispatch included), and preprocess_graph_ms, the
    GPU's own time per call (graph_median_ms_per_call). A refusal or a failed capture is
    recorded in row.problems; a failed capture leaves the per-call figure standing alone."""
    call = preprocessing_call(case, config, entry)
    warmup = warmup_calls(reps)
    try:
        row.preprocess_ms = median_ms(lambda: call(torch.cuda.current_stream().cuda_stream), reps, warmup)
    except FLASHMASK_CALL_ERRORS as error:
        row.problems.append(f"preprocess hook: {type(error).__name__}: {error}")
        return
    try:
        row.preprocess_graph_ms = graph_median_ms_per_call(call, PREPROCESS_CALLS_PER_GRAPH, reps, warmup)
    except GraphCaptureFailed as error:
        message = (f"preprocess GPU time: capturing {PREPROCESS_CALLS_PER_GRAPH} hook calls into a CUDA graph "
                   f"failed ({error}); only the per-call figure (host dispatch included) is reported")
        row.problems.append(message)  # printed with the mask's progress line and in the results
    except FLASHMASK_CALL_ERRORS as error:  # the eager calls on the side stream, or a replay
        row.problems.append(f"preprocess GPU time: {error_note(error)}")


def unmasked_sdpa_peak_bytes(problem: Problem, pool: DefaultPoolHighWater) -> Optional[int]:
    """The memory baseline: forward + backward of SDPA's FlashAttention-2 backend, no mask."""
    def sdpa(q, k, v):
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v)
    try:
        extra, _ = peak_bytes_above_inputs(autograd_runner(problem, sdpa).run_both, pool)
    except RuntimeError as error:
        log(f"SDPA FA2 memory baseline: {error_note(error)}")
        return None
    return problem.input_bytes() + extra


# ---------------------------------------------------------------------------------------------
# Correctness: forward on sampled rows against float32, gradients against FlexAttention
# ---------------------------------------------------------------------------------------------


def sampled_rows(n: int, generator: torch.Generator, device) -> torch.Tensor:
    drawn = torch.randint(0, n, (REFERENCE_ROWS,), generator=generator, device="cpu")
    return torch.unique(torch.cat([drawn, torch.tensor([0, n - 1])])).to(device)


def reference_rows(problem: Problem, bounds: Sequence[torch.Tensor], rows: torch.Tensor):
    """float32 attention output of the sampled query rows [B, R, H, D], and which rows see
    at least one key (a row that sees none is O = 0, SPEC §1)."""
    q = problem.q.detach()[:, rows].float()
    k, v = problem.k.detach().float(), problem.v.detach().float()
    scores = torch.einsum("brhd,bnhd->bhrn", q, k) * problem.scale
    visible = dense_visibility(bounds, rows, problem.config.n)
    scores = scores.masked_fill(~visible, float("-inf"))
    probabilities = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return torch.einsum("bhrn,bnhd->brhd", probabilities, v), visible.any(dim=-1)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().float(), ref.detach().float()
    denominator = float(torch.linalg.vector_norm(ref))
    numerator = float(torch.linalg.vector_norm(out - ref))
    return numerator / denominator if denominator > 0 else numerator


def gradient_error(grads: Sequence[torch.Tensor], reference: Sequence[torch.Tensor]) -> float:
    return max(relative_error(g, r) for g, r in zip(grads, reference))


# ---------------------------------------------------------------------------------------------
# One configuration
# ---------------------------------------------------------------------------------------------


@dataclass
class Measurement:
    forward_ms: Optional[float] = None
    backward_ms: Optional[float] = None
    status: str = ""                    # "" when measured, else NOT_APPLICABLE / UNAVAILABLE / OOM
    forward_error: Optional[float] = None   # sampled rows vs float32
    gradient_error: Optional[float] = None  # vs FlexAttention's gradients
    note: str = ""
    gpu_after_forward: str = ""   # gpu_state() right after the forward's timings
    gpu_after_backward: str = ""  # ... and the backward's


@dataclass
class Row:
    config: Config
    mask: str
    density: float
    pairs_per_sequence: int
    forward_flops: float
    results: Dict[str, Measurement] = field(default_factory=dict)
    preprocess_ms: Optional[float] = None        # CUDA events around one call: host dispatch included
    preprocess_graph_ms: Optional[float] = None  # the GPU's time per call (CUDA graph replay / calls)
    create_block_mask_ms: Optional[float] = None
    peak_bytes: Dict[str, Optional[int]] = field(default_factory=dict)  # incl. inputs
    sdpa_peak_bytes: Optional[int] = None  # SDPA FA2 without a mask, same problem, incl. inputs
    # Which run the row came from when --merge joins several (0 for a single run): ratios to a
    # full-mask row are taken within one run only.
    part: int = 0

    @property
    def label(self) -> str:
        return self.config.name + (f"#{self.part}" if self.part else "")
    problems: List[str] = field(default_factory=list)

    def tflops(self, impl: str, direction: str) -> Optional[float]:
        m = self.results.get(impl)
        ms = None if m is None else (m.forward_ms if direction == "fwd" else m.backward_ms)
        if ms is None:
            return None
        flops = self.forward_flops * (1.0 if direction == "fwd" else BACKWARD_FLOPS_OVER_FORWARD)
        return flops / (ms * 1e-3) / 1e12


class FlexCompileCounter:
    """Counts dynamo/AOT compilations, to prove one compiled kernel serves every mask."""

    @staticmethod
    def count() -> int:
        counters = torch._dynamo.utils.counters
        return int(counters["stats"]["unique_graphs"]) + int(counters["aot_autograd"]["total"])


def column_rule_mask_mod(n: int, device: torch.device) -> Tuple[List[torch.Tensor], Callable]:
    """FlexAttention's one mask_mod of a configuration and the four bound buffers it closes
    over; every mask copies its bounds into them (build_mask_case), so nothing recompiles."""
    bounds_buffers = [torch.empty(n, dtype=torch.int32, device=device) for _ in COLUMN_BOUND_FIELDS]

    def mask_mod(b, h, q_idx, kv_idx):
        return column_rule_visible(q_idx, kv_idx, bounds_buffers)
    return bounds_buffers, mask_mod


def mask_row(config: Config, case: MaskCase, problems: List[str]) -> Row:
    """The results row of one mask at one configuration, nothing measured yet."""
    forward_flops = FORWARD_FLOPS_PER_PAIR_PER_DIM * HEAD_DIM * config.heads * config.batch * case.pairs_per_sequence
    return Row(config, case.name, case.density, case.pairs_per_sequence, forward_flops, problems=problems)


def create_block_mask_ms(mask_mod: Callable, n: int, device: torch.device, reps: int) -> float:
    """Host wall time of FlexAttention's per-mask preprocessing, create_block_mask (median)."""
    return host_median_ms(lambda: create_block_mask(mask_mod, None, None, n, n, device=device), reps)


# What one implementation's measurement may raise and still leave the others to measure: a
# RuntimeError is e.g. no cuDNN kernel for this card (torch.OutOfMemoryError is one too).
MEASUREMENT_ERRORS = (Unavailable, RuntimeError)


def record_failure(measurement: Measurement, error: BaseException) -> None:
    """The status and note of a measurement that raised `error` (one of MEASUREMENT_ERRORS), for
    the full and the --preprocess-only loops alike: Unavailable keeps its whole message; out of
    memory is OOM, with the cached blocks freed for the next implementation; any other
    RuntimeError is UNAVAILABLE with error_note()."""
    if isinstance(error, Unavailable):
        measurement.status = UNAVAILABLE
        measurement.note = str(error)
    elif isinstance(error, torch.OutOfMemoryError):
        measurement.status = OUT_OF_MEMORY
        torch.cuda.empty_cache()
    else:
        measurement.status = UNAVAILABLE
        measurement.note = error_note(error)


def finish_mask_row(row: Row, rows: List[Row], stats: dict, mask_start: float, config_start: float,
                    on_row: Callable[[List[Row], dict], None]) -> None:
    """After one mask of a configuration: frees the cached blocks, appends and logs the row, and
    hands the rows so far to on_row (which writes the partial results)."""
    torch.cuda.empty_cache()
    rows.append(row)
    log(progress_line(row, time.perf_counter() - mask_start))
    stats["seconds"] = round(time.perf_counter() - config_start, 1)
    on_row(rows, stats)


def measure_config(config: Config, mask_names: Sequence[str], implementations: Sequence[str], args,
                   entry: FlashMaskEntryPoints, flex_compiled, pool: DefaultPoolHighWater,
                   on_row: Callable[[List[Row], dict], None] = lambda rows, stats: None) -> Tuple[List[Row], dict]:
    """Every mask of one configuration; on_row(rows so far, FlexAttention stats) after each mask,
    so that a run cut short still leaves its results."""
    device = BENCH_DEVICE
    generator = torch.Generator(device=device).manual_seed(args.input_seed)
    row_generator = torch.Generator().manual_seed(args.input_seed)
    problem = make_problem(config, device, generator)
    n = config.n

    bounds_buffers, mask_mod = column_rule_mask_mod(n, device)
    flex_stats = {"compiles_first_mask": None, "recompiles_after_first_mask": 0}
    rows: List[Row] = []
    warmup = warmup_calls(args.reps)
    config_start = time.perf_counter()
    sdpa_peak_bytes = unmasked_sdpa_peak_bytes(problem, pool) if FLASH in implementations else None

    for mask_name in mask_names:
        mask_start = time.perf_counter()
        case, problems = build_mask_case(mask_name, config, args.seed, bounds_buffers, device)
        row = mask_row(config, case, problems)
        row.sdpa_peak_bytes = sdpa_peak_bytes
        causal = case.mask.causal
        check_rows = sampled_rows(n, row_generator, device)
        reference_out, row_sees_a_key = reference_rows(problem, bounds_buffers, check_rows)
        flex_gradients = None

        block_mask = None
        if FLEX in implementations:
            block_mask = create_block_mask(mask_mod, None, None, n, n, device=device)
            row.create_block_mask_ms = create_block_mask_ms(mask_mod, n, device, args.block_mask_reps)

        if entry.preprocess is not None and FLASHMASK in implementations and not entry.missing:
            measure_preprocessing(row, case, config, entry, args.reps)

        dense_mask = None
        # FlexAttention first: its gradients are the cross-check for the others.
        for impl in sorted(implementations, key=lambda name: (name != FLEX, IMPLEMENTATIONS.index(name))):
            measurement = Measurement()
            row.results[impl] = measurement
            if impl in UNMASKED_SDPA and mask_name not in MASKS_WITHOUT_INDICES:
                measurement.status = NOT_APPLICABLE
                continue
            try:
                if impl == FLASHMASK:
                    runner = flashmask_runner(problem, case, causal, entry)
                elif impl == FLEX:
                    runner = autograd_runner(problem, lambda q, k, v: flex_compiled(q, k, v, block_mask=block_mask))
                elif impl in UNMASKED_SDPA:
                    backend = UNMASKED_SDPA[impl]

                    def sdpa(q, k, v, backend=backend):
                        with sdpa_kernel(backend):
                            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                    runner = autograd_runner(problem, sdpa)
                else:
                    dense_mask = dense_visibility(bounds_buffers, torch.arange(n, device=device), n)

                    def sdpa_dense(q, k, v):
                        with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION):
                            return F.scaled_dot_product_attention(q, k, v, attn_mask=dense_mask)
                    runner = autograd_runner(problem, sdpa_dense)

                compiles_before = FlexCompileCounter.count()
                out = runner.forward()
                rows_out = out[:, check_rows]
                checked = row_sees_a_key if impl == DENSE else torch.ones_like(row_sees_a_key)
                # SDPA with a boolean mask is undefined on rows that see no key: left out of its check.
                measurement.forward_error = relative_error(rows_out[:, checked], reference_out[:, checked])
                if impl == DENSE and not bool(row_sees_a_key.all()):
                    measurement.note = f"{int((~row_sees_a_key).sum())} sampled rows see no key: not checked"
                gradients = runner.backward()
                if impl == FLEX:
                    flex_gradients = tuple(g.detach().clone() for g in gradients)
                elif flex_gradients is not None:
                    measurement.gradient_error = gradient_error(gradients, flex_gradients)
                del out, rows_out, gradients
                if impl == FLEX:
                    compiled = FlexCompileCounter.count() - compiles_before
                    if flex_stats["compiles_first_mask"] is None:
                        flex_stats["compiles_first_mask"] = compiled
                    elif compiled:
                        flex_stats["recompiles_after_first_mask"] += compiled
                        row.problems.append(f"FlexAttention recompiled for this mask ({compiled} compilations)")

                measurement.forward_ms = median_ms(runner.forward, args.reps, warmup)
                measurement.gpu_after_forward = gpu_state()
                measurement.backward_ms = median_ms(runner.backward, args.reps, warmup)
                measurement.gpu_after_backward = gpu_state()
                if impl in (FLASHMASK, FLEX):
                    extra, pool_high = peak_bytes_above_inputs(runner.run_both, pool)
                    # Scratch in the default pool (flashmask's) and torch's peak may not overlap in
                    # time: their sum is an upper bound of the true peak. flashmask's buffer kept
                    # between calls (its dQ accumulator in compressible memory) counts whole.
                    scratch = (pool_high or 0) + (flashmask.cuda_cached_bytes() if impl == FLASHMASK else 0)
                    row.peak_bytes[impl] = problem.input_bytes() + extra + scratch
                del runner
            except MEASUREMENT_ERRORS as error:
                record_failure(measurement, error)
            finally:
                if impl == DENSE:
                    dense_mask = None
            bad_forward = measurement.forward_error is not None and measurement.forward_error > FORWARD_ROW_TOLERANCE
            bad_gradient = measurement.gradient_error is not None and measurement.gradient_error > GRADIENT_TOLERANCE
            if bad_forward or bad_gradient:
                row.problems.append(f"MISMATCH {impl}: forward rows {measurement.forward_error}, "
                                    f"gradients vs flex {measurement.gradient_error}")
        del block_mask, flex_gradients
        finish_mask_row(row, rows, flex_stats, mask_start, config_start, on_row)

    flex_stats["seconds"] = round(time.perf_counter() - config_start, 1)
    return rows, flex_stats


def measure_preprocess_config(config: Config, mask_names: Sequence[str], implementations: Sequence[str], args,
                              entry: FlashMaskEntryPoints,
                              on_row: Callable[[List[Row], dict], None] = lambda rows, stats: None
                              ) -> Tuple[List[Row], dict]:
    """--preprocess-only: every mask of one configuration, measuring only flashmask's
    preprocessing (per call and GPU time, --reps), flashmask's forward for the ratio
    (PREPROCESS_ONLY_FORWARD_REPS, not checked here: the full run checks it) and, when flex is
    in `implementations`, create_block_mask. No peers, no backward, no memory."""
    device = BENCH_DEVICE
    generator = torch.Generator(device=device).manual_seed(args.input_seed)
    problem = make_problem(config, device, generator)
    bounds_buffers, mask_mod = column_rule_mask_mod(config.n, device)
    stats: dict = {}
    rows: List[Row] = []
    config_start = time.perf_counter()
    for mask_name in mask_names:
        mask_start = time.perf_counter()
        case, problems = build_mask_case(mask_name, config, args.seed, bounds_buffers, device)
        row = mask_row(config, case, problems)
        if FLEX in implementations:
            row.create_block_mask_ms = create_block_mask_ms(mask_mod, config.n, device, args.block_mask_reps)
        measure_preprocessing(row, case, config, entry, args.reps)
        measurement = Measurement()
        row.results[FLASHMASK] = measurement
        try:
            runner = flashmask_runner(problem, case, case.mask.causal, entry)
            measurement.forward_ms = median_ms(runner.forward, PREPROCESS_ONLY_FORWARD_REPS,
                                               warmup_calls(PREPROCESS_ONLY_FORWARD_REPS))
            del runner
        except MEASUREMENT_ERRORS as error:
            record_failure(measurement, error)
        finish_mask_row(row, rows, stats, mask_start, config_start, on_row)
    stats["seconds"] = round(time.perf_counter() - config_start, 1)
    return rows, stats


# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------

NOT_RUN = "off"  # left out with --impls


def cell_tflops(row: Row, impl: str, direction: str) -> str:
    m = row.results.get(impl)
    if m is None:
        return NOT_RUN
    if m.status:
        return m.status
    value = row.tflops(impl, direction)
    if value is None:
        return ""
    return f"{value:.0f}" if value >= 10 else f"{value:.2g}"  # whole TFLOP/s on a GPU; small runs keep digits


def ratio(numerator: Optional[float], denominator: Optional[float]) -> Optional[float]:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def fmt(value: Optional[float], digits: int = 2) -> str:
    return UNAVAILABLE if value is None else f"{value:.{digits}f}"


def own_full(rows: Sequence[Row], row: Row, direction: str) -> Optional[float]:
    for other in rows:
        if other.config == row.config and other.part == row.part and other.mask == "full":
            return ratio(row.tflops(FLASHMASK, direction), other.tflops(FLASHMASK, direction))
    return None


def progress_line(row: Row, seconds: float) -> str:
    parts = [f"[{row.label}] {row.mask:<22} density {row.density:.3f}"]
    for impl in IMPLEMENTATIONS:
        if impl in row.results:
            parts.append(f"{impl} {cell_tflops(row, impl, 'fwd')}/{cell_tflops(row, impl, 'bwd')}")
    if row.preprocess_ms is not None:
        parts.append(f"preprocess {fmt(row.preprocess_ms, 4)} ms per call, {fmt(row.preprocess_graph_ms, 4)} ms GPU")
    flashmask = row.results.get(FLASHMASK)
    if flashmask is not None and flashmask.gpu_after_forward:
        parts.append(f"GPU after flashmask's forward: {flashmask.gpu_after_forward}")
    parts.append(f"({seconds:.1f} s)")
    for problem in row.problems:
        parts.append(f"\n    ! {problem}")
    return "  ".join(parts)


def compact_table(rows: Sequence[Row]) -> str:
    """The table printed last: TFLOP/s fwd/bwd per implementation and flashmask's ratios."""
    head = (f"{'cfg':<3} {'mask':<22} {'dens':>5} | " + " ".join(f"{i:>11}" for i in IMPLEMENTATIONS)
            + " | fm/flex    fm/fa2     fm/full")
    lines = ["effective TFLOP/s fwd/bwd (visible pairs only); ratios fwd/bwd", head, "-" * len(head)]
    for row in rows:
        cells = " ".join(f"{cell_tflops(row, i, 'fwd') + '/' + cell_tflops(row, i, 'bwd'):>11}" for i in IMPLEMENTATIONS)

        def pair(other: str) -> str:
            return "/".join(fmt(ratio(row.tflops(FLASHMASK, d), row.tflops(other, d))) for d in ("fwd", "bwd"))
        fa2 = pair(FLASH) if row.mask in MASKS_WITHOUT_INDICES else NOT_APPLICABLE
        full = "/".join(fmt(own_full(rows, row, d)) for d in ("fwd", "bwd"))
        lines.append(f"{row.label:<3} {row.mask:<22} {row.density:>5.2f} | {cells} | "
                     f"{pair(FLEX):<10} {fa2:<10} {full}")
    return "\n".join(lines)


def percent(value: Optional[float]) -> str:
    return UNAVAILABLE if value is None else f"{value:.2%}"


def preprocess_table(rows: Sequence[Row]) -> List[str]:
    """The preprocessing table's markdown lines (in the results file; --preprocess-only also
    prints it last)."""
    lines = ["| config | mask | per call ms | GPU ms | flashmask forward ms | per call / forward | GPU / forward | "
             "create_block_mask ms | create_block_mask / per call |", "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        forward = row.results.get(FLASHMASK, Measurement()).forward_ms
        lines.append(f"| {row.label} | {row.mask} | {fmt(row.preprocess_ms, 4)} | {fmt(row.preprocess_graph_ms, 4)} | "
                     f"{fmt(forward, 3)} | {percent(ratio(row.preprocess_ms, forward))} | "
                     f"{percent(ratio(row.preprocess_graph_ms, forward))} | {fmt(row.create_block_mask_ms, 2)} | "
                     f"{fmt(ratio(row.create_block_mask_ms, row.preprocess_ms), 0)} |")
    return lines


def markdown(rows: Sequence[Row], flex_stats: Dict[str, dict], meta: dict) -> str:
    preprocess_only = meta.get("mode") == MODE_PREPROCESS_ONLY
    out = [f"# GPU attention benchmark: flashmask vs FlexAttention vs SDPA ({meta['date']})", ""]
    out += [f"- commit: {meta['commit']}", f"- GPU: {meta['gpu']}", f"- torch {meta['torch']}, triton {meta['triton']}, "
            f"cuDNN {meta['cudnn']}", f"- command: `{meta['command']}`",
            f"- timing: median of {meta['reps']} CUDA-event timings after warm-up; random normal bf16 inputs, "
            f"D = {HEAD_DIM}, Hq = Hk; mask seed {meta['seed']}"]
    if preprocess_only:
        out.append(f"- {MODE_PREPROCESS_ONLY}: flashmask's preprocessing, create_block_mask and flashmask's forward "
                   f"(median of {meta.get('forward_reps')}, for the ratio; not checked) only: no peers, no backward, "
                   "no memory")
    else:
        out.append("- effective TFLOP/s: visible pairs only, forward 4·D·Hq·pairs, backward 2.5× (SPEC §6)")
    out += [f"- flashmask: {meta['flashmask']}", ""]
    for name, stats in flex_stats.items():
        if "compiles_first_mask" in stats:
            out.append(f"- config {name}: FlexAttention compilations for the first mask {stats['compiles_first_mask']}, "
                       f"recompilations after it {stats['recompiles_after_first_mask']}; {stats['seconds']} s")
        else:
            out.append(f"- config {name}: {stats['seconds']} s")
    out.append("")

    def config_label(row: Row) -> str:
        c = row.config
        return f"{row.label} (B={c.batch}, H={c.heads}, N={c.n})"

    if not preprocess_only:
        out += ["## Effective TFLOP/s (forward / backward)", "",
                "| config | mask | density | flashmask | flex | cuDNN | FA2 | dense-mask SDPA |", "|---|---|---|---|---|---|---|---|"]
        for row in rows:
            cells = " | ".join(f"{cell_tflops(row, i, 'fwd')} / {cell_tflops(row, i, 'bwd')}" for i in IMPLEMENTATIONS)
            out.append(f"| {config_label(row)} | {row.mask} | {row.density:.3f} | {cells} |")

        out += ["", "## Ratios (flashmask over peer, forward / backward; own full = over flashmask's full-mask TFLOP/s)", "",
                "| config | mask | vs flex | vs cuDNN | vs FA2 | vs dense | vs own full (target) |", "|---|---|---|---|---|---|---|"]
        for row in rows:
            def pair(other: str) -> str:
                if other in UNMASKED_SDPA and row.mask not in MASKS_WITHOUT_INDICES:
                    return NOT_APPLICABLE
                return " / ".join(fmt(ratio(row.tflops(FLASHMASK, d), row.tflops(other, d))) for d in ("fwd", "bwd"))
            full = " / ".join(fmt(own_full(rows, row, d)) for d in ("fwd", "bwd"))
            out.append(f"| {row.label} | {row.mask} | {pair(FLEX)} | {pair(CUDNN)} | {pair(FLASH)} | {pair(DENSE)} | "
                       f"{full} (≥ {row.config.own_full_target}) |")
        out.append("")

    calls_per_graph = meta.get("preprocess_calls_per_graph", PREPROCESS_CALLS_PER_GRAPH)
    out += ["## Per-call preprocessing (flashmask block summaries vs FlexAttention create_block_mask)", "",
            f"Targets: under {PREPROCESS_MAX_FRACTION_OF_FORWARD:.0%} of the forward at 8K, and "
            f"≥ {PREPROCESS_MIN_SPEEDUP_OVER_BLOCK_MASK:.0f}× faster than create_block_mask. "
            "Per call: CUDA events around one call of the hook (what forward_into runs before its kernel), bound by "
            f"the host's dispatch. GPU: {calls_per_graph} calls captured into one CUDA graph, replay time / "
            f"{calls_per_graph}: the device's own time. create_block_mask: host wall time, over the per-call figure.", ""]
    out += preprocess_table(rows)

    if not preprocess_only:
        out += ["", "## Peak memory of forward + backward (GiB, inputs q, k, v, dout included)", "",
                f"Target: flashmask within {PEAK_MEMORY_MAX_RATIO_TO_SDPA:.2f}× of SDPA (FA2 backend) without a mask. "
                "flashmask's figure adds the CUDA default pool's high-water mark (its stream-ordered scratch) and the "
                "device memory it keeps between calls (`flashmask.cuda_cached_bytes()`) to torch's allocator peak: an "
                "upper bound.", "",
                "| config | mask | flashmask | flex | SDPA FA2, no mask | flashmask / SDPA |", "|---|---|---|---|---|---|"]
        gib = float(1 << 30)
        for row in rows:
            base = row.sdpa_peak_bytes
            fm_peak, flex_peak = row.peak_bytes.get(FLASHMASK), row.peak_bytes.get(FLEX)
            out.append(f"| {row.label} | {row.mask} | {fmt(None if fm_peak is None else fm_peak / gib, 3)} | "
                       f"{fmt(None if flex_peak is None else flex_peak / gib, 3)} | {fmt(None if base is None else base / gib, 3)} | "
                       f"{fmt(ratio(fm_peak, base), 3)} |")

        out += ["", "## GPU state after each timing (nvidia-smi: SM clock, temperature, power; forward / backward)", "",
                "| config | mask | " + " | ".join(IMPLEMENTATIONS) + " |", "|---|---|" + "---|" * len(IMPLEMENTATIONS)]
        for row in rows:
            cells = []
            for impl in IMPLEMENTATIONS:
                m = row.results.get(impl)
                states = [] if m is None else [state for state in (m.gpu_after_forward, m.gpu_after_backward) if state]
                cells.append(" / ".join(states) or "—")
            out.append(f"| {row.label} | {row.mask} | " + " | ".join(cells) + " |")

        out += ["", "## Correctness checks (before timing)", "",
                f"Forward: {REFERENCE_ROWS}+ sampled query rows against float32 (tolerance {FORWARD_ROW_TOLERANCE}); "
                f"gradients: max relative difference of dq, dk, dv to FlexAttention's (tolerance {GRADIENT_TOLERANCE}).", "",
                "| config | mask | implementation | forward rows | gradients vs flex | note |", "|---|---|---|---|---|---|"]
        for row in rows:
            for impl in IMPLEMENTATIONS:
                m = row.results.get(impl)
                if m is None or m.status == NOT_APPLICABLE:
                    continue
                note = m.status + (" " if m.status and m.note else "") + m.note
                out.append(f"| {row.label} | {row.mask} | {impl} | {fmt(m.forward_error, 4)} | "
                           f"{fmt(m.gradient_error, 4)} | {note.replace('|', '/')} |")
    problems = [f"- {row.label} {row.mask}: {p}" for row in rows for p in row.problems]
    if problems:
        out += ["", "## Problems", ""] + problems
    if not preprocess_only:
        out += ["", "## Compact table", "", "```text", compact_table(rows), "```"]
    out.append("")
    return "\n".join(out)


def as_json(rows: Sequence[Row], flex_stats: Dict[str, dict], meta: dict) -> dict:
    records = []
    for row in rows:
        forward_ms = row.results.get(FLASHMASK, Measurement()).forward_ms
        record = {"config": row.config.name, "batch": row.config.batch, "heads": row.config.heads, "n": row.config.n,
                  "mask": row.mask, "density": row.density, "pairs_per_sequence": row.pairs_per_sequence,
                  "forward_flops": row.forward_flops, "preprocess_ms": row.preprocess_ms,
                  "preprocess_graph_ms": row.preprocess_graph_ms,
                  "preprocess_share_of_forward": ratio(row.preprocess_ms, forward_ms),
                  "preprocess_graph_share_of_forward": ratio(row.preprocess_graph_ms, forward_ms),
                  "create_block_mask_over_preprocess": ratio(row.create_block_mask_ms, row.preprocess_ms),
                  "create_block_mask_ms": row.create_block_mask_ms, "peak_bytes": row.peak_bytes,
                  "sdpa_peak_bytes": row.sdpa_peak_bytes, "problems": row.problems, "results": {}}
        for impl, m in row.results.items():
            record["results"][impl] = {**m.__dict__, "forward_tflops": row.tflops(impl, "fwd"),
                                       "backward_tflops": row.tflops(impl, "bwd")}
        records.append(record)
    return {"meta": meta, "flex": flex_stats, "rows": records}


def save_results(path: str, rows: Sequence[Row], flex_stats: Dict[str, dict], meta: dict) -> str:
    """Writes the markdown results to `path` and the JSON beside it; returns the JSON's path."""
    with open(path, "w") as handle:
        handle.write(markdown(rows, flex_stats, meta))
    json_path = path[:-3] + ".json" if path.endswith(".md") else path + ".json"
    with open(json_path, "w") as handle:
        json.dump(as_json(rows, flex_stats, meta), handle, indent=1)
    return json_path


def load_results(path: str, part: int) -> Tuple[List[Row], Dict[str, dict], dict]:
    """Rows, FlexAttention stats and meta of a JSON written by save_results()."""
    with open(path) as handle:
        data = json.load(handle)
    rows = []
    for r in data["rows"]:
        config = STANDARD_CONFIGS.get(r["config"]) or Config(r["config"], r["batch"], r["heads"], r["n"], math.nan)
        row = Row(config, r["mask"], r["density"], r["pairs_per_sequence"], r["forward_flops"],
                  preprocess_ms=r["preprocess_ms"], preprocess_graph_ms=r.get("preprocess_graph_ms"),
                  create_block_mask_ms=r["create_block_mask_ms"],
                  peak_bytes=r["peak_bytes"], sdpa_peak_bytes=r.get("sdpa_peak_bytes"), problems=r["problems"],
                  part=part)
        for impl, m in r["results"].items():
            row.results[impl] = Measurement(**{k: v for k, v in m.items() if k in Measurement.__dataclass_fields__})
        rows.append(row)
    return rows, data["flex"], data["meta"]


def merge_results(paths: Sequence[str], out: str) -> Tuple[List[Row], dict]:
    """One results file from several runs' JSON (e.g. config b split over two device calls);
    returns its rows and meta. Rows keep their run (b#2, ...) when more than one is merged."""
    rows: List[Row] = []
    flex_stats: Dict[str, dict] = {}
    metas = []
    for index, path in enumerate(paths):
        part = index + 1 if len(paths) > 1 else 0
        part_rows, part_flex, meta = load_results(path, part)
        rows += part_rows
        for name, stats in part_flex.items():
            flex_stats[name + (f"#{part}" if part else "")] = stats
        metas.append(meta)
    merged = dict(metas[0])
    for key in ("date", "commit", "gpu", "command", "input_seed", "mode"):
        values = [str(m.get(key)) for m in metas]
        merged[key] = values[0] if len(set(values)) == 1 else "; ".join(f"#{i + 1}: {v}" for i, v in enumerate(values))
    save_results(out, rows, flex_stats, merged)
    return rows, merged


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (pass --commit)"


def parse_args(argv: Optional[Sequence[str]] = None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default=None, help="comma list of a, b (default a,b; --quick: a)")
    parser.add_argument("--masks", default=None, help="comma list of catalogue names (default: all twelve)")
    parser.add_argument("--impls", default=",".join(IMPLEMENTATIONS),
                        help=f"comma list of {', '.join(IMPLEMENTATIONS)} (default: all)")
    parser.add_argument("--reps", type=int, default=None, help=f"timed repetitions (default {MIN_RESULT_REPS})")
    parser.add_argument("--quick", action="store_true", help=f"config a and {QUICK_REPS} reps unless given: a smoke run")
    parser.add_argument("--block-mask-reps", type=int, default=5, help="create_block_mask timings (median)")
    parser.add_argument("--seed", type=int, default=SPEC_DENSITY_SEED,
                        help="catalogue mask seed (document lengths, ...); default: the one with SPEC §6's densities "
                             "(bench/spec_densities.py)")
    parser.add_argument("--input-seed", type=int, default=None, help="random input seed (default: drawn, printed)")
    parser.add_argument("--out", default=None, help="markdown results file (a .json is written beside it)")
    parser.add_argument("--commit", default=None, help="commit to record (default: git rev-parse)")
    parser.add_argument("--merge", nargs="+", metavar="JSON", default=None,
                        help="measure nothing: join the JSON results of several runs into --out")
    parser.add_argument("--preprocess-only", action="store_true",
                        help="measure only flashmask's preprocessing (per call and GPU time), create_block_mask "
                             f"(unless flex is left out of --impls) and flashmask's forward ({PREPROCESS_ONLY_FORWARD_REPS} "
                             "reps, for the ratio): every chosen mask and config, in seconds")
    parser.add_argument("--no-scratch-memory", action="store_true",
                        help="do not read the CUDA default pool's high-water mark (flashmask's scratch) "
                             "through the driver API")
    args = parser.parse_args(argv)
    args.configs = [c for c in (args.configs or ("a" if args.quick else "a,b")).split(",") if c]
    for name in args.configs:
        if name not in STANDARD_CONFIGS:
            parser.error(f"--configs: unknown configuration '{name}'; expected a comma list of {', '.join(STANDARD_CONFIGS)}")
    names = flashmask.catalogue_names()
    args.masks = [m for m in (args.masks or ",".join(names)).split(",") if m]
    for name in args.masks:
        if name not in names:
            parser.error(f"--masks: unknown mask '{name}'; expected a comma list of {', '.join(names)}")
    args.impls = [i for i in args.impls.split(",") if i]
    for name in args.impls:
        if name not in IMPLEMENTATIONS:
            parser.error(f"--impls: unknown implementation '{name}'; expected a comma list of {', '.join(IMPLEMENTATIONS)}")
    if args.reps is None:
        args.reps = QUICK_REPS if args.quick else MIN_RESULT_REPS
    if args.preprocess_only and FLASHMASK not in args.impls:
        parser.error(f"--preprocess-only measures flashmask: --impls {','.join(args.impls)} leaves it out")
    if args.reps < 1:
        parser.error(f"--reps: {args.reps}; expected at least 1 ({MIN_RESULT_REPS} for results)")
    if args.input_seed is None:
        args.input_seed = int.from_bytes(np.random.default_rng().bytes(4), "little")
    return args


def summary_table(rows: Sequence[Row], mode: Optional[str]) -> str:
    """What a run prints last: the compact table, or the preprocessing table for --preprocess-only."""
    return "\n".join(preprocess_table(rows)) if mode == MODE_PREPROCESS_ONLY else compact_table(rows)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.merge:
        if not args.out:
            log("bench_attention: --merge needs --out")
            return 2
        rows, merged_meta = merge_results(args.merge, args.out)
        log(f"wrote {args.out} from {len(args.merge)} runs")
        log(summary_table(rows, merged_meta.get("mode")))
        return 0
    faulthandler.enable()  # a crash in a native library prints the Python stack that led there
    if torch is None:
        log(f"bench_attention: measuring needs PyTorch ({TORCH_IMPORT_ERROR}); only --merge runs without it")
        return 2
    if not torch.cuda.is_available():
        log("bench_attention: no CUDA device; this benchmark runs on the GPU machine (scripts/gpu.sh bench)")
        return 2
    entry = FlashMaskEntryPoints()
    if args.preprocess_only and (entry.missing or entry.preprocess is None):
        log(f"bench_attention: --preprocess-only has nothing to measure: "
            f"{entry.missing or 'this flashmask module has no preprocess hook (forward_preprocessing_cuda)'}")
        return 2
    mode = MODE_PREPROCESS_ONLY if args.preprocess_only else MODE_FULL
    import triton
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": args.commit or git_commit(),
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__, "triton": triton.__version__,
        "cudnn": torch.backends.cudnn.version(),
        "command": " ".join(["bench/bench_attention.py"] + list(sys.argv[1:] if argv is None else argv)),
        "reps": args.reps, "seed": args.seed, "input_seed": args.input_seed, "mode": mode,
        "preprocess_calls_per_graph": PREPROCESS_CALLS_PER_GRAPH,
        "forward_reps": PREPROCESS_ONLY_FORWARD_REPS if args.preprocess_only else args.reps,
        "flashmask": entry.missing or ("forward_into/backward_into" + (", preprocess hook" if entry.preprocess
                                                                        else ", no preprocess hook")),
    }
    log(f"GPU {meta['gpu']}, torch {meta['torch']}, commit {meta['commit']}, reps {args.reps}, "
        f"input seed {args.input_seed}, mode {mode}; flashmask: {meta['flashmask']}")
    if args.reps < MIN_RESULT_REPS:
        log(f"note: {args.reps} reps is below SPEC §6's {MIN_RESULT_REPS}: a smoke run, not a result")
    if not args.preprocess_only:
        # dynamic=False: one specialised kernel per configuration, as a user at a fixed length gets.
        flex_compiled = torch.compile(flex_attention, dynamic=False)
        pool = DefaultPoolHighWater(None if args.no_scratch_memory else torch.cuda.current_device())
    rows: List[Row] = []
    flex_stats: Dict[str, dict] = {}
    for name in args.configs:
        config = STANDARD_CONFIGS[name]
        log(f"== config {name}: B={config.batch}, H={config.heads}, N={config.n}, D={HEAD_DIM}, bf16")

        def save_partial(config_rows, stats, name=name):
            if args.out:
                save_results(args.out, rows + config_rows, {**flex_stats, name: stats}, meta)
        if args.preprocess_only:
            config_rows, stats = measure_preprocess_config(config, args.masks, args.impls, args, entry, save_partial)
            log(f"== config {name}: {stats['seconds']} s")
        else:
            config_rows, stats = measure_config(config, args.masks, args.impls, args, entry, flex_compiled, pool,
                                                save_partial)
            log(f"== config {name}: {stats['seconds']} s; FlexAttention compilations for the first mask "
                f"{stats['compiles_first_mask']}, recompilations after it {stats['recompiles_after_first_mask']}")
        rows += config_rows
        flex_stats[name] = stats
    if args.out:
        log(f"wrote {args.out} and {save_results(args.out, rows, flex_stats, meta)}")
    problems = [p for row in rows for p in row.problems]
    log(f"problems: {len(problems)}" + "".join(f"\n  - {p}" for p in problems))
    log(summary_table(rows, mode))
    return 1 if any(p.startswith("MISMATCH") or "column rule" in p for p in problems) else 0


if __name__ == "__main__":
    sys.exit(main())
