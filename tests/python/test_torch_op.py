"""flashmask.flashmask_attention, the torch operator (python/flashmask/torch_op.py).

CPU (always, when torch is installed): every catalogue mask against SDPA with the dense mask,
forward and backward; forward and backward within SPEC §5 of the float64 reference for masks
of every layout (builder Masks, random index tensors per head, window_size,
None), Nq != Nk, GQA and BHSD views, float64 included; torch.autograd.gradcheck in float64 with
its default tolerances (and in float32 on the tiled path: see test_gradcheck_float32);
torch.library.opcheck of both operators; window_size's index tensor equal to the C++ builder's;
torch.compile(fullgraph=True, dynamic=True) with no graph break and no recompilation across
sequence lengths and masks, results equal to eager; every refused input raising
TypeError/ValueError naming the argument before the library is reached, in eager mode, in the
fake (meta) implementations and under torch.compile; `import flashmask` importing no torch.

CUDA (skipped without a GPU or a build with kernels): eager, the current stream, torch.compile,
CUDA graph capture/replay, and every catalogue mask against SDPA with the dense mask, forward
and backward.
"""

import os
from typing import NamedTuple

import numpy as np
import pytest

import flashmask
from flashmask import masks

from accuracy_util import float64_of, random_intervals, storage_of
from fresh_interpreter import ASSERT_NO_TORCH, run_in_fresh_interpreter

torch = pytest.importorskip("torch")
from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: E402  (after the importorskip)

import torch._dynamo.testing  # noqa: E402  (CompileCounterWithBackend)

from flashmask import torch_op  # noqa: E402

TORCH_DTYPES = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16,
                "bfloat16": torch.bfloat16}
FLOAT32_TOLERANCE = 1e-5  # SPEC §5
# float64 inputs run in float64 arithmetic (src/cpu/float64.hpp): only summation order differs
# from the reference's (the C++ tests' kFloat64Bound).
FLOAT64_TOLERANCE = 1e-12
# The LSE is float32 arithmetic summed in another order than the reference's (as test_cuda.py).
LSE_TOLERANCE = 1e-4
# An explicit scale around the default 1/sqrt(D).
SCALE_SPREAD = (0.5, 2.0)
# Sequence lengths of the random problems: from a few rows to several CPU tiles, never a
# multiple of one on purpose. 16-bit checks start higher: with very few query rows the ratio of
# an error to the naive computation's strays past SPEC §5's 2x in a few percent of draws (see
# test_cuda.py's single-row case).
LENGTHS = (1, 150)
LENGTHS_16_BIT = (24, 150)


# --- problems -------------------------------------------------------------------------------------


class Problem(NamedTuple):
    """Leaves that require grad (in [B, H, N, D] storage when bhsd), the BSHD views the operator
    gets, and dout."""
    leaves: tuple
    q: "torch.Tensor"
    k: "torch.Tensor"
    v: "torch.Tensor"
    dout: "torch.Tensor"


def random_tensor(rng, shape, dtype, device="cpu", bhsd=False):
    """Fresh normals of BSHD `shape` as a leaf that requires grad, and its BSHD view: with bhsd
    the leaf is [B, H, N, D] storage and the view is leaf.transpose(1, 2)."""
    values = rng.standard_normal(shape, dtype=np.float64 if dtype == torch.float64 else np.float32)
    if bhsd:
        values = np.ascontiguousarray(values.transpose(0, 2, 1, 3))
    leaf = torch.from_numpy(values).to(device=device, dtype=dtype).requires_grad_(True)
    return leaf, (leaf.transpose(1, 2) if bhsd else leaf)


def random_problem(rng, dtype, batch, nq, nk, q_heads, kv_heads, head_dim, device="cpu", bhsd=False) -> Problem:
    q_leaf, q = random_tensor(rng, (batch, nq, q_heads, head_dim), dtype, device, bhsd)
    k_leaf, k = random_tensor(rng, (batch, nk, kv_heads, head_dim), dtype, device, bhsd)
    v_leaf, v = random_tensor(rng, (batch, nk, kv_heads, head_dim), dtype, device, bhsd)
    numpy_dtype = np.float64 if dtype == torch.float64 else np.float32
    dout = torch.from_numpy(rng.standard_normal((batch, nq, q_heads, head_dim), dtype=numpy_dtype)).to(device, dtype)
    return Problem((q_leaf, k_leaf, v_leaf), q, k, v, dout)


def random_window(rng, nq, nk):
    """(left, right): unbounded (-1), zero, or anything up to past both lengths."""
    def bound():
        return int(rng.choice([-1, 0, int(rng.integers(0, nq + nk + 2))]))
    return bound(), bound()


class MaskCase(NamedTuple):
    """One mask as flashmask_attention takes it (`arguments`) and as the NumPy reference takes
    it (`reference`: an index array or a Mask, and causal)."""
    arguments: dict
    reference: tuple


def torch_indices(indices: np.ndarray, device="cpu"):
    return torch.from_numpy(np.ascontiguousarray(indices)).to(device)


def _intervals_case(rng, shape, causal, slots, heads_of):
    batch, nq, nk, q_heads, kv_heads = shape
    indices = random_intervals(rng, batch, heads_of(q_heads, kv_heads), nq, nk, slots)
    return MaskCase(dict(startend_row_indices=torch_indices(indices), causal=causal), (indices, causal))


def _document_case(rng, shape):
    batch, nq, nk, _, _ = shape
    assert nq == nk, "a document mask is square"
    cut = int(rng.integers(0, nk + 1))
    mask = masks.causal_document([length for length in (cut, nk - cut) if length > 0])
    # A builder's Mask holding a torch tensor (B = 1): flashmask_attention broadcasts it.
    torch_mask = flashmask.Mask(torch_indices(mask.startend_row_indices), mask.causal)
    return MaskCase(dict(startend_row_indices=torch_mask), (mask, False))


def _window_case(rng, shape, causal):
    batch, nq, nk, _, _ = shape
    window = random_window(rng, nq, nk)
    return MaskCase(dict(window_size=window, causal=causal), (masks.window(nq, nk, *window, causal=causal), False))


# Each: (rng, (B, Nq, Nk, Hq, Hk)) -> MaskCase.
MASK_CASES = {
    "full": lambda rng, s: MaskCase(dict(causal=False), (None, False)),
    "causal": lambda rng, s: MaskCase(dict(causal=True), (None, True)),
    "causal_document_builder_mask": _document_case,
    "causal_c1_per_kv_head": lambda rng, s: _intervals_case(rng, s, True, 1, lambda hq, hk: hk),
    "causal_c2_one_head": lambda rng, s: _intervals_case(rng, s, True, 2, lambda hq, hk: 1),
    "bidirectional_c2_per_q_head": lambda rng, s: _intervals_case(rng, s, False, 2, lambda hq, hk: hq),
    "bidirectional_c4_per_kv_head": lambda rng, s: _intervals_case(rng, s, False, 4, lambda hq, hk: hk),
    "window": lambda rng, s: _window_case(rng, s, False),
    "causal_window": lambda rng, s: _window_case(rng, s, True),
}


# --- reference ------------------------------------------------------------------------------------


def relative_error_or_rms(value: np.ndarray, reference: np.ndarray) -> float:
    """||value - reference|| / ||reference||; for a reference that is exactly zero, the RMS of
    the value instead (an absolute error for quantities of order 1). dQ and dK are exactly zero
    when every row sees at most one key (window_size=(0, 0), say: a softmax over one key does
    not depend on its score), and the float32 result there is cancellation noise of order
    1e-7, which no relative measure can judge. (accuracy_util.relative_error, which the NumPy
    and CUDA tests use, treats a zero reference as a test error instead.)"""
    reference_norm = np.linalg.norm(reference)
    if reference_norm == 0:
        return float(np.linalg.norm(value) / np.sqrt(max(value.size, 1)))
    return float(np.linalg.norm(value - reference) / reference_norm)


def assert_within_spec(problem: Problem, results, mask_reference, scale, dtype_name: str):
    """out, dq, dk, dv (BSHD tensors) within SPEC §5 of the float64 reference on the same input
    values: 1e-5 for float32, 1e-12 for float64, spec_bound(dtype, naive error) for 16-bit dtypes."""
    indices, causal = mask_reference
    values = [float64_of(x) for x in (problem.q, problem.k, problem.v, problem.dout)]
    # The library's scale is a float32 (SPEC §1), explicit or 1/sqrt(D); the reference takes that
    # value (float64 results would show the difference).
    scale = float(np.float32(scale if scale is not None else 1 / np.sqrt(values[0].shape[3])))
    reference_out, _ = flashmask.reference_forward(*values[:3], indices, causal=causal, scale=scale)
    reference_grads = flashmask.reference_backward(values[3], *values[:3], indices, causal=causal, scale=scale)
    references = (reference_out, *reference_grads)
    if dtype_name == "float32":
        bounds = [FLOAT32_TOLERANCE] * 4
    elif dtype_name == "float64":
        bounds = [FLOAT64_TOLERANCE] * 4
    else:
        storage = [storage_of(x, dtype_name) for x in (problem.q, problem.k, problem.v, problem.dout)]
        dtype_argument = "bfloat16" if dtype_name == "bfloat16" else None
        naive_out = flashmask.naive_forward(*storage[:3], indices, causal=causal, scale=scale, dtype=dtype_argument)
        naive_grads = flashmask.naive_backward(storage[3], *storage[:3], indices, causal=causal, scale=scale,
                                               dtype=dtype_argument)
        bounds = [flashmask.spec_bound(dtype_name, relative_error_or_rms(naive, reference))
                  for naive, reference in zip((naive_out, *naive_grads), references)]
    for name, result, reference, bound in zip(("out", "dq", "dk", "dv"), results, references, bounds):
        error = relative_error_or_rms(float64_of(result), reference)
        assert error < bound, f"{name}: relative error {error:.3g} >= {bound:.3g}"


def run_forward_backward(problem: Problem, **arguments):
    """flashmask_attention's out, then (dq, dk, dv) of the BSHD views through autograd."""
    out = flashmask.flashmask_attention(problem.q, problem.k, problem.v, **arguments)
    out.backward(problem.dout)
    grads = tuple(leaf.grad.transpose(1, 2) if view is not leaf else leaf.grad
                  for leaf, view in zip(problem.leaves, (problem.q, problem.k, problem.v)))
    return out, grads


# --- CPU: results ---------------------------------------------------------------------------------


class Case(NamedTuple):
    mask: str        # a key of MASK_CASES
    dtype: str
    q_heads: int
    kv_heads: int
    head_dim: int
    square: bool     # Nq == Nk (else drawn independently)
    bhsd: bool       # [B, H, N, D] storage passed as .transpose(1, 2)
    explicit_scale: bool


CPU_CASES = [
    Case("full", "float32", 4, 4, 64, False, False, False),
    Case("causal", "float32", 4, 1, 40, False, True, True),
    Case("causal_document_builder_mask", "float32", 4, 2, 64, True, False, False),
    Case("causal_c1_per_kv_head", "bfloat16", 4, 2, 64, True, True, False),
    Case("causal_c2_one_head", "float16", 2, 2, 64, False, False, True),
    Case("bidirectional_c2_per_q_head", "float32", 6, 3, 32, False, True, False),
    Case("bidirectional_c4_per_kv_head", "bfloat16", 4, 2, 64, False, True, True),
    Case("window", "float32", 4, 2, 64, False, True, False),
    Case("causal_window", "float16", 4, 4, 64, False, False, False),
    Case("causal_c2_one_head", "float64", 4, 2, 64, False, True, True),
    Case("bidirectional_c4_per_kv_head", "float64", 4, 2, 32, False, False, False),
]


@pytest.mark.parametrize("case", CPU_CASES, ids=lambda c: f"{c.mask}-{c.dtype}{'-bhsd' if c.bhsd else ''}")
def test_forward_and_backward_match_the_reference(case: Case, rng):
    lengths = LENGTHS if case.dtype in ("float32", "float64") else LENGTHS_16_BIT
    nq = int(rng.integers(*lengths))
    nk = nq if case.square else int(rng.integers(*lengths))
    batch = 2
    problem = random_problem(rng, TORCH_DTYPES[case.dtype], batch, nq, nk, case.q_heads, case.kv_heads,
                             case.head_dim, bhsd=case.bhsd)
    mask = MASK_CASES[case.mask](rng, (batch, nq, nk, case.q_heads, case.kv_heads))
    scale = float(rng.uniform(*SCALE_SPREAD) / np.sqrt(case.head_dim)) if case.explicit_scale else None
    out, grads = run_forward_backward(problem, **mask.arguments, scale=scale)
    assert out.shape == (batch, nq, case.q_heads, case.head_dim) and out.dtype == problem.q.dtype
    assert out.is_contiguous()
    if case.bhsd:  # the gradient of a transposed view comes back in the leaf's own layout
        assert all(leaf.grad.is_contiguous() for leaf in problem.leaves)
    assert_within_spec(problem, (out, *grads), mask.reference, scale, case.dtype)


def test_return_lse_and_rows_that_see_no_key(rng):
    """(out, lse): lse float32 [B, Hq, Nq] as the reference's, with no gradient; a row hidden
    from every key has out = 0, lse = -inf and passes no gradient."""
    batch, n, heads, dim = 2, int(rng.integers(8, 100)), 4, 64
    problem = random_problem(rng, torch.float32, batch, n, n, heads, heads, dim)
    indices = random_intervals(rng, batch, 1, n, n, 2)
    hidden_row = int(rng.integers(0, n))
    indices[:, :, :, 0] = np.minimum(indices[:, :, :, 0], hidden_row)  # LTS <= row: hidden below ...
    indices[:, :, :, 1] = np.maximum(indices[:, :, :, 1], hidden_row + 1)  # ... and above (LTE > row)
    out, lse = flashmask.flashmask_attention(problem.q, problem.k, problem.v, torch_indices(indices), causal=True,
                                             return_lse=True)
    assert lse.shape == (batch, heads, n) and lse.dtype == torch.float32 and not lse.requires_grad
    reference_out, reference_lse = flashmask.reference_forward(*(float64_of(x) for x in problem[1:4]), indices,
                                                               causal=True)
    visible = np.isfinite(reference_lse)
    assert not visible[:, :, hidden_row].any(), "the test's mask must hide the row from every key"
    np.testing.assert_array_equal(np.isfinite(lse.numpy()), visible)
    np.testing.assert_allclose(lse.numpy()[visible], reference_lse[visible], rtol=LSE_TOLERANCE, atol=LSE_TOLERANCE)
    assert torch.all(out[:, hidden_row] == 0)
    assert relative_error_or_rms(float64_of(out), reference_out) < FLOAT32_TOLERANCE
    out.backward(problem.dout)
    assert torch.all(problem.leaves[0].grad[:, hidden_row] == 0)
    assert all(torch.isfinite(leaf.grad).all() for leaf in problem.leaves)


def test_deterministic_backward_gives_identical_bits(rng):
    n = int(rng.integers(20, 120))
    problem = random_problem(rng, torch.bfloat16, 2, n, n, 4, 2, 64)
    runs = []
    for _ in range(2):
        for leaf in problem.leaves:
            leaf.grad = None
        _, grads = run_forward_backward(problem, causal=True, deterministic=True)
        runs.append([g.clone() for g in grads])
    for first, second in zip(*runs):
        assert torch.equal(first, second)


def test_the_gradient_of_a_sum_passes_an_expanded_gradient(rng):
    """out.sum()'s gradient is a stride-0 expansion, which the library refuses as an operand:
    the backward makes it contiguous first."""
    n = int(rng.integers(2, 60))
    problem = random_problem(rng, torch.float32, 1, n, n, 2, 2, 16)
    out = flashmask.flashmask_attention(problem.q, problem.k, problem.v, causal=True)
    out.sum().backward()
    grads = [leaf.grad for leaf in problem.leaves]
    assert_within_spec(problem._replace(dout=torch.ones_like(out)), (out, *grads), (None, True), None, "float32")


# --- CPU: gradcheck ---------------------------------------------------------------------------------

# torch.autograd.gradcheck compares the backward with central differences of the forward. On
# float64 tensors the CPU path computes in float64 throughout (src/cpu/float64.hpp; the backward
# recomputes the LSE in double rather than reading the float32 one), so gradcheck runs with its
# own defaults: step 1e-6, atol 1e-5, rtol 1e-3, and its checks of undefined output gradients.
# Every case has GQA (Hq / Hk = 2); Nq != Nk unless the mask needs a square problem; BHSD views
# alternate with BSHD tensors.
GRADCHECK_CASES = [  # (mask, BHSD views)
    ("bidirectional_c4_per_kv_head", True),
    ("causal_c2_one_head", False),
    ("causal", True),
    ("causal_window", False),
    ("bidirectional_c2_per_q_head", True),
    ("causal_document_builder_mask", False),
]
SQUARE_MASKS = ("causal_document_builder_mask",)  # masks built for Nq == Nk
KEY_LENGTH_OFFSETS = (-2, -1, 1, 2, 3)  # Nk - Nq of the other cases: shorter and longer key sequences


def gradcheck_problem(rng, dtype, mask_name, bhsd):
    """A small random problem (torch.autograd.gradcheck perturbs every input element) and a
    function of the three leaves that returns flashmask_attention's out."""
    batch, q_heads, kv_heads = 2, 4, 2
    nq = int(rng.integers(4, 12))
    nk = nq if mask_name in SQUARE_MASKS else nq + int(rng.choice(KEY_LENGTH_OFFSETS))
    head_dim = int(rng.integers(2, 7))
    problem = random_problem(rng, dtype, batch, nq, nk, q_heads, kv_heads, head_dim, bhsd=bhsd)
    arguments = MASK_CASES[mask_name](rng, (batch, nq, nk, q_heads, kv_heads)).arguments

    def attention(q_leaf, k_leaf, v_leaf):
        views = [leaf.transpose(1, 2) if view is not leaf else leaf
                 for leaf, view in zip((q_leaf, k_leaf, v_leaf), (problem.q, problem.k, problem.v))]
        return flashmask.flashmask_attention(*views, **arguments)

    return problem, attention


@pytest.mark.parametrize("mask_name, bhsd", GRADCHECK_CASES)
def test_gradcheck(mask_name, bhsd, rng):
    problem, attention = gradcheck_problem(rng, torch.float64, mask_name, bhsd)
    assert all(leaf.dtype == torch.float64 for leaf in problem.leaves)
    assert torch.autograd.gradcheck(attention, problem.leaves)


# The float64 path above is its own implementation; this checks the tiled path users run (float32
# arithmetic) the same way, with tolerances set by float32 arithmetic: a difference quotient with
# step h carries the forward's rounding, about FLOAT32_EPSILON * |out| per evaluation, divided by
# h. With h = 1e-3 that is ~1e-4; the tolerance leaves a factor GRADCHECK_MARGIN above it, while a
# wrong gradient (a missing scale, a head summed into the wrong KV head, a transposed operand) is
# off by O(1). The truncation error, O(h^2) ~ 1e-6, is negligible.
GRADCHECK_STEP = 1e-3
GRADCHECK_MARGIN = 10
GRADCHECK_TOLERANCE = GRADCHECK_MARGIN * float(np.finfo(np.float32).eps) / GRADCHECK_STEP


@pytest.mark.parametrize("mask_name, bhsd", GRADCHECK_CASES[:3])
def test_gradcheck_float32(mask_name, bhsd, rng):
    problem, attention = gradcheck_problem(rng, torch.float32, mask_name, bhsd)
    with pytest.warns(UserWarning, match="double precision"):  # torch's note on float32 gradcheck
        assert torch.autograd.gradcheck(attention, problem.leaves, eps=GRADCHECK_STEP, atol=GRADCHECK_TOLERANCE,
                                        rtol=GRADCHECK_TOLERANCE, nondet_tol=0.0)


# --- CPU: opcheck -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mask_name", ["causal", "bidirectional_c4_per_kv_head", "causal_c1_per_kv_head"])
def test_opcheck(mask_name, rng):
    """torch.library.opcheck of flashmask::forward (with autograd) and flashmask::backward:
    schema, fake implementation (shapes, dtypes, strides, symbolic sizes), autograd
    registration and AOT dispatch."""
    nq, nk = (int(n) for n in rng.integers(2, 70, size=2))
    batch, q_heads, kv_heads, head_dim = 2, 4, 2, 32
    problem = random_problem(rng, torch.float32, batch, nq, nk, q_heads, kv_heads, head_dim, bhsd=True)
    mask = MASK_CASES[mask_name](rng, (batch, nq, nk, q_heads, kv_heads)).arguments
    indices, causal = mask.get("startend_row_indices"), mask["causal"]
    scale = float(rng.uniform(*SCALE_SPREAD) / np.sqrt(head_dim))
    forward_arguments = (problem.q, problem.k, problem.v, indices, causal, scale, False)
    torch.library.opcheck(torch.ops.flashmask.forward.default, forward_arguments)
    out, lse = torch.ops.flashmask.forward.default(*forward_arguments)
    detached = [x.detach() for x in (problem.q, problem.k, problem.v)]
    torch.library.opcheck(torch.ops.flashmask.backward.default,
                          (problem.dout, *detached, out.detach(), lse, indices, causal, scale, True))


# --- CPU: window_size -------------------------------------------------------------------------------


@pytest.mark.parametrize("causal", [False, True])
def test_window_indices_equal_the_cpp_builder(causal, rng):
    for _ in range(50):
        nq, nk = (int(n) for n in rng.integers(1, 300, size=2))
        left, right = random_window(rng, nq, nk)
        if rng.random() < 0.1:
            left, right = (2**31 - 1, 2**31 - 1)  # the int32 extreme
        built = torch_op.window_indices(nq, nk, (left, right), causal, batch=3)
        expected = masks.window(nq, nk, left, right, causal).startend_row_indices
        assert built.dtype == torch.int32 and built.shape == (3,) + expected.shape[1:]
        for entry in range(3):
            np.testing.assert_array_equal(built[entry:entry + 1].numpy(), expected,
                                          err_msg=f"nq={nq} nk={nk} window=({left}, {right}) causal={causal}")


def test_one_int_window_means_both_sides(rng):
    nq, nk = (int(n) for n in rng.integers(1, 100, size=2))
    width = int(rng.integers(0, 50))
    assert torch.equal(torch_op.window_indices(nq, nk, width), torch_op.window_indices(nq, nk, (width, width)))


# --- CPU: torch.compile -----------------------------------------------------------------------------

COMPILE_LENGTHS = (40, 77, 130)  # three sequence lengths, none 0 or 1 (which torch specialises)
COMPILE_MASKS_PER_LENGTH = 10


def random_causal_mask(rng, n):
    """A fresh causal C = 1 mask of one of four catalogue kinds (same kind of index tensor,
    different values): what changes between the batches of a training run."""
    kind = int(rng.integers(0, 4))
    cut = int(rng.integers(1, n))
    if kind == 0:
        return masks.causal_document([cut, n - cut])
    if kind == 1:
        return masks.sliding_window(n, int(rng.integers(1, n + 1)))
    if kind == 2:
        answer = int(rng.integers(1, n - cut + 1))
        return masks.share_question([cut], [[answer, n - cut - answer]] if answer < n - cut else [[answer]])
    return masks.random_eviction(n, seed=int(rng.integers(0, 2**31)))


def batch_indices(mask, batch):
    """A builder's [1, 1, N, C] indices repeated over the batch, as a contiguous torch tensor."""
    return torch_indices(mask.startend_row_indices).repeat(batch, 1, 1, 1)


def attention_with_mask(q, k, v, indices):
    return flashmask.flashmask_attention(q, k, v, indices, causal=True)


def attention_with_window(q, k, v):
    return flashmask.flashmask_attention(q, k, v, window_size=(7, 3))


def deterministic_attention(q, k, v, indices):
    return flashmask.flashmask_attention(q, k, v, indices, causal=True, deterministic=True)


def compare_compiled(compiled, eager, problem: Problem, *mask_arguments):
    """The compiled function's out and gradients against eager mode's, bit for bit (one CPU
    path on the same values)."""
    results = []
    for function in (compiled, eager):
        for leaf in problem.leaves:
            leaf.grad = None
        out = function(problem.q, problem.k, problem.v, *mask_arguments)
        out.backward(problem.dout)
        results.append([out.detach()] + [leaf.grad.clone() for leaf in problem.leaves])
    for name, got, expected in zip(("out", "dq", "dk", "dv"), *results):
        assert torch.equal(got, expected), f"{name}: compiled and eager results differ"


@pytest.fixture
def fresh_dynamo():
    """Dynamo's caches emptied: each compile test counts its own compilations."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_compile_without_recompilation_across_lengths_and_masks(rng, fresh_dynamo):
    """fullgraph=True (a graph break would raise), dynamic=True: one compilation for three
    sequence lengths x ten masks, forward and backward, each result equal to eager mode's.
    The backend is aot_eager (AOTAutograd's graphs run as they are); the inductor test below
    compiles for real."""
    batch, q_heads, kv_heads, dim = 2, 4, 2, 16
    with_mask = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    with_window = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled_mask = torch.compile(attention_with_mask, backend=with_mask, fullgraph=True, dynamic=True)
    compiled_window = torch.compile(attention_with_window, backend=with_window, fullgraph=True, dynamic=True)
    for n in COMPILE_LENGTHS:
        for _ in range(COMPILE_MASKS_PER_LENGTH):
            problem = random_problem(rng, torch.float32, batch, n, n, q_heads, kv_heads, dim)
            compare_compiled(compiled_mask, attention_with_mask, problem, batch_indices(random_causal_mask(rng, n),
                                                                                        batch))
        problem = random_problem(rng, torch.float32, batch, n, n + int(rng.integers(2, 9)), q_heads, kv_heads, dim)
        compare_compiled(compiled_window, attention_with_window, problem)
    assert with_mask.frame_count == 1, f"{with_mask.frame_count} compilations for one function"
    assert with_window.frame_count == 1, f"{with_window.frame_count} compilations for one function"


def test_compile_with_inductor(rng, fresh_dynamo):
    """The default backend, fullgraph and dynamic: one compilation for three lengths, results
    equal to eager mode's."""
    batch, q_heads, kv_heads, dim = 1, 2, 1, 32
    counter = torch._dynamo.testing.CompileCounterWithBackend("inductor")
    compiled = torch.compile(attention_with_mask, backend=counter, fullgraph=True, dynamic=True)
    for n in COMPILE_LENGTHS:
        problem = random_problem(rng, torch.float32, batch, n, n, q_heads, kv_heads, dim, bhsd=True)
        compare_compiled(compiled, attention_with_mask, problem, batch_indices(random_causal_mask(rng, n), batch))
    assert counter.frame_count == 1


def test_compile_refusals_keep_their_message(rng, fresh_dynamo):
    """A refused input under torch.compile: without fullgraph the TypeError comes out with its
    message (Dynamo re-raises the exception it traced, which has no `argument` attribute); with
    fullgraph Dynamo's error quotes the refusal."""
    problem = random_problem(rng, torch.float32, 1, 16, 16, 2, 2, 16)
    wrong_dtype = problem.k.detach().half()
    compiled = torch.compile(attention_with_window, backend="aot_eager", dynamic=True)
    with pytest.raises(TypeError, match="flashmask_attention: k: dtype torch.float16"):
        compiled(problem.q, wrong_dtype, problem.v)
    compiled_full = torch.compile(attention_with_window, backend="aot_eager", fullgraph=True, dynamic=True)
    with pytest.raises(Exception, match="flashmask_attention: k: dtype torch.float16"):
        compiled_full(problem.q, wrong_dtype, problem.v)


# --- CPU: refusals ----------------------------------------------------------------------------------

# The valid problem each refusal changes one thing of: B = 2, N = 24, Hq = 4, Hk = 2, D = 32, a
# causal C = 2 index tensor per KV head.
REFUSAL_BATCH, REFUSAL_LENGTH, REFUSAL_Q_HEADS, REFUSAL_KV_HEADS, REFUSAL_DIM = 2, 24, 4, 2, 32


def valid_call(rng) -> dict:
    problem = random_problem(rng, torch.float32, REFUSAL_BATCH, REFUSAL_LENGTH, REFUSAL_LENGTH, REFUSAL_Q_HEADS,
                             REFUSAL_KV_HEADS, REFUSAL_DIM)
    indices = random_intervals(rng, REFUSAL_BATCH, REFUSAL_KV_HEADS, REFUSAL_LENGTH, REFUSAL_LENGTH, 2)
    return dict(q=problem.q.detach(), k=problem.k.detach(), v=problem.v.detach(),
                startend_row_indices=torch_indices(indices), causal=True)


def index_of_shape(call, batch=REFUSAL_BATCH, heads=REFUSAL_KV_HEADS, columns=REFUSAL_LENGTH, slots=2):
    return torch.zeros((batch, heads, columns, slots), dtype=torch.int32) + call["startend_row_indices"].view(-1)[0]


class Refusal(NamedTuple):
    exception: type
    argument: str
    change: object      # (call dict) -> the changes
    operator: bool      # the operator itself refuses it too (not only flashmask_attention's arguments)


REFUSALS = {
    "int32_q": Refusal(TypeError, "q", lambda c: dict(q=c["q"].detach().int()), True),
    "float64_k_with_float32_q": Refusal(TypeError, "k", lambda c: dict(k=c["k"].double()), True),
    "float16_k_with_float32_q": Refusal(TypeError, "k", lambda c: dict(k=c["k"].half()), True),
    "int64_index_tensor": Refusal(TypeError, "startend_row_indices",
                                  lambda c: dict(startend_row_indices=c["startend_row_indices"].long()), True),
    "q_of_rank_3": Refusal(ValueError, "q", lambda c: dict(q=c["q"][0]), True),
    "k_on_another_device": Refusal(ValueError, "k", lambda c: dict(k=c["k"].to("meta")), True),
    "index_tensor_on_another_device": Refusal(
        ValueError, "startend_row_indices", lambda c: dict(startend_row_indices=c["startend_row_indices"].to("meta")),
        True),
    "last_dimension_not_contiguous": Refusal(
        ValueError, "q", lambda c: dict(q=torch.cat([c["q"], c["q"]], dim=-1)[..., ::2]), True),
    "q_heads_not_a_multiple_of_kv_heads": Refusal(
        ValueError, "k", lambda c: dict(q=c["q"][:, :, :3], startend_row_indices=None), True),
    "key_length_of_v_differs": Refusal(ValueError, "v", lambda c: dict(v=c["v"][:, 1:]), True),
    "index_tensor_of_rank_3": Refusal(ValueError, "startend_row_indices",
                                      lambda c: dict(startend_row_indices=c["startend_row_indices"][0]), True),
    "index_tensor_of_another_batch": Refusal(ValueError, "startend_row_indices",
                                             lambda c: dict(startend_row_indices=index_of_shape(c, batch=3)), True),
    "index_tensor_with_three_heads": Refusal(ValueError, "startend_row_indices",
                                             lambda c: dict(startend_row_indices=index_of_shape(c, heads=3)), True),
    "index_tensor_of_another_key_length": Refusal(
        ValueError, "startend_row_indices", lambda c: dict(startend_row_indices=index_of_shape(c, columns=23)), True),
    "four_slots_with_causal": Refusal(ValueError, "startend_row_indices",
                                      lambda c: dict(startend_row_indices=index_of_shape(c, slots=4)), True),
    "window_size_with_an_index_tensor": Refusal(ValueError, "window_size", lambda c: dict(window_size=(2, 2)), False),
    "window_size_not_ints": Refusal(TypeError, "window_size",
                                    lambda c: dict(window_size=(2.0, 1), startend_row_indices=None), False),
    "numpy_index_array": Refusal(TypeError, "startend_row_indices",
                                 lambda c: dict(startend_row_indices=c["startend_row_indices"].numpy()), False),
    "list_as_v": Refusal(TypeError, "v", lambda c: dict(v=c["v"].tolist()), False),
}


@pytest.mark.parametrize("name", REFUSALS.keys())
def test_refused_before_the_library_is_reached(name, rng, monkeypatch):
    """flashmask_attention raises the refusal (type, argument name in the message and in
    `argument`) and never reaches forward_into; the operator called directly does the same,
    and so does its fake implementation on fake tensors (what torch.compile traces)."""
    refusal = REFUSALS[name]
    call = valid_call(rng)
    call.update(refusal.change(call))

    def library_reached(*args, **kwargs):
        raise AssertionError("forward_into was called with a refused argument")

    monkeypatch.setattr(torch_op, "forward_into", library_reached)
    q, k, v = call.pop("q"), call.pop("k"), call.pop("v")
    with pytest.raises(refusal.exception) as refused:
        flashmask.flashmask_attention(q, k, v, **call)
    assert refused.value.argument == refusal.argument
    assert f"flashmask_attention: {refusal.argument}:" in str(refused.value)
    if not refusal.operator:
        return
    operator_arguments = (q, k, v, call["startend_row_indices"], call["causal"], None, False)
    with pytest.raises(refusal.exception, match=f"flashmask_attention: {refusal.argument}:"):
        torch.ops.flashmask.forward.default(*operator_arguments)
    with FakeTensorMode(allow_non_fake_inputs=False) as mode:
        fake = [mode.from_tensor(x) if isinstance(x, torch.Tensor) else x for x in operator_arguments]
        with pytest.raises(refusal.exception, match=f"flashmask_attention: {refusal.argument}:"):
            torch.ops.flashmask.forward.default(*fake)


def test_meta_tensors_give_shapes_only(rng):
    """On the meta device (shape inference, e.g. a model built on meta): out and lse shapes,
    dtypes and strides, float32 included, nothing computed."""
    batch, nq, nk, q_heads, kv_heads, dim, value_dim = 2, 33, 20, 4, 2, 16, 24
    q = torch.empty(batch, q_heads, nq, dim, device="meta").transpose(1, 2)
    k = torch.empty(batch, nk, kv_heads, dim, device="meta")
    v = torch.empty(batch, nk, kv_heads, value_dim, device="meta")
    out, lse = flashmask.flashmask_attention(q, k, v, window_size=(4, 4), return_lse=True)
    assert out.shape == (batch, nq, q_heads, value_dim) and out.is_contiguous() and out.dtype == q.dtype
    assert lse.shape == (batch, q_heads, nq) and lse.dtype == torch.float32


# --- import -----------------------------------------------------------------------------------------


def test_the_torch_names_are_imported_on_first_use():
    """In a fresh interpreter: `import flashmask` and `from flashmask import *` import no torch;
    flashmask.flashmask_attention (and `from flashmask import flashmask_attention`) does, and is
    torch_op's function; an unknown name is still an AttributeError."""
    probe = ("import sys, flashmask\n"
             "from flashmask import *\n" + ASSERT_NO_TORCH +
             "assert 'flashmask_attention' in dir(flashmask)\n"
             "function = flashmask.flashmask_attention\n"
             "assert 'torch' in sys.modules\n"
             "from flashmask import flashmask_attention, torch_op\n"
             "assert function is flashmask_attention is torch_op.flashmask_attention\n"
             "assert not hasattr(flashmask, 'no_such_name')\n"
             "print('ok')\n")
    assert run_in_fresh_interpreter(probe) == "ok"


# --- CUDA -------------------------------------------------------------------------------------------

REQUIRE_CUDA = os.environ.get("FLASHMASK_REQUIRE_CUDA") == "1"


def cuda_usable() -> bool:
    return torch.cuda.is_available() and flashmask.cuda_available()


needs_cuda = pytest.mark.skipif(not cuda_usable() and not REQUIRE_CUDA,
                                reason="no CUDA device, or a flashmask build without CUDA kernels")

# SPEC §5's cap on any 16-bit relative error: the distance allowed between flashmask's results
# and SDPA's on the same bfloat16 inputs.
SPEC_CAP_16_BIT = 2e-2
CUDA_DTYPE = torch.bfloat16
# Warm-up iterations on a side stream before CUDA graph capture (torch's documented recipe:
# lazy initialisation and the autograd engine's first-use work must not be captured).
GRAPH_WARMUP_STEPS = 3


@needs_cuda
@pytest.mark.parametrize("mask_name", list(MASK_CASES))
def test_cuda_eager_matches_the_reference(mask_name, rng):
    nq, nk = int(rng.integers(*LENGTHS_16_BIT)), int(rng.integers(*LENGTHS_16_BIT))
    if mask_name == "causal_document_builder_mask":
        nk = nq
    batch, q_heads, kv_heads, dim = 2, 4, 2, 64
    problem = random_problem(rng, CUDA_DTYPE, batch, nq, nk, q_heads, kv_heads, dim, device="cuda",
                             bhsd=bool(rng.integers(0, 2)))
    mask = MASK_CASES[mask_name](rng, (batch, nq, nk, q_heads, kv_heads))
    arguments = dict(mask.arguments)
    if isinstance(arguments.get("startend_row_indices"), flashmask.Mask):
        indices, causal = arguments["startend_row_indices"]
        arguments["startend_row_indices"] = flashmask.Mask(indices.cuda(), causal)
    elif arguments.get("startend_row_indices") is not None:
        arguments["startend_row_indices"] = arguments["startend_row_indices"].cuda()
    out, grads = run_forward_backward(problem, **arguments)
    assert_within_spec(problem, (out, *grads), mask.reference, None, "bfloat16")


@needs_cuda
def test_cuda_runs_on_the_current_stream(rng):
    """Inputs written on a side stream and the operator called there: it must run on that
    stream (the current one), after the writes."""
    n, batch, heads, dim = 300, 1, 2, 64
    problem = random_problem(rng, CUDA_DTYPE, batch, n, n, heads, heads, dim, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())  # k and v were made on the default stream
    with torch.cuda.stream(side):
        torch.cuda._sleep(50_000_000)  # keeps the side stream busy while the inputs are rewritten there
        q = problem.q.detach() * 1.0
        out = flashmask.flashmask_attention(q, problem.k.detach(), problem.v.detach(), causal=True)
    torch.cuda.synchronize()
    reference_out, _ = flashmask.reference_forward(*(float64_of(x) for x in (q, problem.k, problem.v)), causal=True)
    assert relative_error_or_rms(float64_of(out), reference_out) < SPEC_CAP_16_BIT


def sdpa_reference(q, k, v, dout, dense_visible):
    """SDPA with a dense boolean mask (True = visible), BHSD, forward and backward, through the
    math backend: it gives 0 for a row that sees no key (qk_sparse has such rows), where the
    fused backends may give NaN."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    leaves = [x.detach().transpose(1, 2).contiguous().requires_grad_(True) for x in (q, k, v)]
    with sdpa_kernel([SDPBackend.MATH]):
        out = torch.nn.functional.scaled_dot_product_attention(*leaves, attn_mask=dense_visible)
    out.backward(dout.transpose(1, 2))
    return [out.transpose(1, 2)] + [leaf.grad.transpose(1, 2) for leaf in leaves]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
@pytest.mark.parametrize("name", masks.catalogue_names())
def test_every_catalogue_mask_against_sdpa(name, device, rng):
    """Each SPEC §3 mask, bfloat16: flashmask_attention within SPEC §5 of the float64
    reference, and within SPEC §5's 16-bit cap of SDPA with the same mask as a dense boolean
    tensor, out, dq, dk and dv."""
    n, batch, heads, dim = int(rng.integers(200, 400)), 2, 4, 128
    mask = masks.catalogue(name, n, seed=int(rng.integers(0, 2**31)))
    problem = random_problem(rng, torch.bfloat16, batch, n, n, heads, heads, dim, device=device)
    indices = None if mask.startend_row_indices is None else torch_indices(mask.startend_row_indices, device)
    out, grads = run_forward_backward(problem, startend_row_indices=flashmask.Mask(indices, mask.causal))
    results = (out, *grads)
    assert_within_spec(problem, results, (mask, False), None, "bfloat16")
    dense = torch.from_numpy(masks.to_dense(mask, nq=n, nk=n)).to(device)
    sdpa = sdpa_reference(problem.q, problem.k, problem.v, problem.dout, dense)
    for tensor_name, ours, theirs in zip(("out", "dq", "dk", "dv"), results, sdpa):
        difference = relative_error_or_rms(float64_of(ours), float64_of(theirs))
        assert difference < SPEC_CAP_16_BIT, f"{tensor_name}: {difference:.3g} from SDPA's"


@needs_cuda
def test_cuda_compile_without_recompilation(rng, fresh_dynamo):
    batch, q_heads, kv_heads, dim = 2, 4, 2, 64
    counter = torch._dynamo.testing.CompileCounterWithBackend("inductor")
    # Deterministic: the default CUDA backward adds dQ with atomics, in no fixed order.
    compiled = torch.compile(deterministic_attention, backend=counter, fullgraph=True, dynamic=True)
    for n in COMPILE_LENGTHS:
        for _ in range(3):
            problem = random_problem(rng, CUDA_DTYPE, batch, n, n, q_heads, kv_heads, dim, device="cuda")
            indices = batch_indices(random_causal_mask(rng, n), batch).cuda()
            compare_compiled(compiled, deterministic_attention, problem, indices)
    assert counter.frame_count == 1


@needs_cuda
def test_cuda_graph_capture_and_replay(rng):
    """Forward and backward captured in a CUDA graph, replayed on new input values written in
    place: the results equal eager mode's on those values (deterministic backward)."""
    n, batch, q_heads, kv_heads, dim = 257, 2, 4, 2, 128
    problem = random_problem(rng, CUDA_DTYPE, batch, n, n, q_heads, kv_heads, dim, device="cuda")
    inputs = [leaf for leaf in problem.leaves]
    indices = batch_indices(random_causal_mask(rng, n), batch).cuda()
    dout = problem.dout

    def step():
        out = deterministic_attention(*inputs, indices)
        return (out, *torch.autograd.grad(out, inputs, dout))

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(GRAPH_WARMUP_STEPS):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()

    fresh = random_problem(rng, CUDA_DTYPE, batch, n, n, q_heads, kv_heads, dim, device="cuda")
    with torch.no_grad():
        for static, new in zip(inputs + [dout], list(fresh.leaves) + [fresh.dout]):
            static.copy_(new)
        indices.copy_(batch_indices(random_causal_mask(rng, n), batch))
    graph.replay()
    torch.cuda.synchronize()
    expected = step()
    for name, got, want in zip(("out", "dq", "dk", "dv"), captured, expected):
        assert torch.equal(got, want), f"{name}: the replayed graph differs from eager mode"


@needs_cuda
def test_cuda_refusals(rng):
    problem = random_problem(rng, CUDA_DTYPE, 1, 32, 32, 2, 2, 64, device="cuda")
    q, k, v = (x.detach() for x in (problem.q, problem.k, problem.v))
    with pytest.raises(TypeError) as refused:
        flashmask.flashmask_attention(q.float(), k.float(), v.float())
    assert refused.value.argument == "q"
    with pytest.raises(ValueError) as refused:
        flashmask.flashmask_attention(q, k.cpu(), v)
    assert refused.value.argument == "k"
    indices = torch.full((1, 1, 32, 1), 32, dtype=torch.int32)  # on the CPU
    with pytest.raises(ValueError) as refused:
        flashmask.flashmask_attention(q, k, v, indices, causal=True)
    assert refused.value.argument == "startend_row_indices"
