"""forward_into / backward_into on the CPU: NumPy arrays (always) and torch CPU tensors (when
torch is installed), written in place, against attention_forward / attention_backward on the
same values (one CPU path, so the bits agree) and the float64 reference; refusals raise the
documented exception before anything is written; `import flashmask` loads neither torch nor
CUDA. The CUDA side is tests/python/test_cuda.py."""

import numpy as np
import pytest

import flashmask
from flashmask import masks

from accuracy_util import float64_of, relative_error, storage_of
from fresh_interpreter import ASSERT_NO_TORCH, run_in_fresh_interpreter

try:
    import torch
except ImportError:  # the torch CPU tests skip; everything else runs on NumPy alone
    torch = None

try:
    import ml_dtypes
except ImportError:
    ml_dtypes = None

THREADS = 2  # the test machine's cores
# SPEC §5's float32 bound (16-bit results are compared bit for bit with the NumPy path here).
FLOAT32_TOLERANCE = 1e-5

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")


def poisoned(shape, dtype) -> np.ndarray:
    """An output buffer full of NaN, so that an element the library never wrote shows."""
    return np.full(shape, np.nan, dtype=np.float32).astype(dtype)


def bhsd_view(values: np.ndarray) -> np.ndarray:
    """[B, N, H, D] values held in [B, H, N, D] storage: a strided view with a contiguous last
    dimension, as a framework's transposed tensor."""
    return np.ascontiguousarray(values.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)


def random_problem(rng, dtype, batch=2, q_heads=4, kv_heads=2, head_dim=64, gradients_measurable=False):
    """gradients_measurable: every row sees at least two keys (Nk >= 2, columns 0 and 1 masked
    nowhere), so that the float64 reference's dQ and dK are not all zeros and a relative error
    means something. Without it, a mask under which no row sees two keys (always so when Nk = 1:
    a softmax over one key has zero gradient) leaves them exactly zero."""
    nq = int(rng.integers(1, 90))
    nk = int(rng.integers(2 if gradients_measurable else 1, 90))
    q = rng.standard_normal((batch, nq, q_heads, head_dim), dtype=np.float32).astype(dtype)
    k = rng.standard_normal((batch, nk, kv_heads, head_dim), dtype=np.float32).astype(dtype)
    v = rng.standard_normal((batch, nk, kv_heads, head_dim), dtype=np.float32).astype(dtype)
    dout = rng.standard_normal(q.shape, dtype=np.float32).astype(dtype)
    # Per-KV-head random intervals (C = 4, not causal): empty, partial and full tiles alike.
    indices = rng.integers(0, nq + 1, size=(batch, kv_heads, nk, 4)).astype(np.int32)
    if gradients_measurable:
        indices[:, :, :2] = (nq, nq, 0, 0)  # lower [Nq, Nq) and upper [0, 0): both empty
    return q, k, v, dout, indices


NUMPY_DTYPES = ["float64", "float32", "float16", "bfloat16"]
# float64 runs in float64 arithmetic (src/cpu/float64.hpp): only summation order differs from the
# reference's.
FLOAT64_TOLERANCE = 1e-12


def numpy_dtype(name: str):
    if name == "bfloat16":
        if ml_dtypes is None:
            pytest.skip("ml_dtypes is not installed")
        return ml_dtypes.bfloat16
    return np.dtype(name)


@pytest.mark.parametrize("dtype_name", NUMPY_DTYPES)
def test_numpy_into_matches_the_allocating_calls(dtype_name, rng):
    dtype = numpy_dtype(dtype_name)
    q, k, v, dout, indices = random_problem(rng, dtype)
    scale = float(rng.uniform(0.5, 2.0) / np.sqrt(q.shape[3]))
    expected_out, expected_lse = flashmask.attention_forward(q, k, v, indices, scale=scale, num_threads=THREADS)
    expected_grads = flashmask.attention_backward(dout, q, k, v, expected_out, expected_lse, indices, scale=scale,
                                                  num_threads=THREADS)

    # Outputs as strided [B, H, N, D] views, inputs too: the strides travel as they are.
    q_view, k_view, v_view, dout_view = (bhsd_view(x) for x in (q, k, v, dout))
    out = bhsd_view(poisoned(q.shape, dtype))
    lse = poisoned(expected_lse.shape, np.float32)
    flashmask.forward_into(q_view, k_view, v_view, out, lse, indices, scale=scale, num_threads=THREADS)
    np.testing.assert_array_equal(out, expected_out)
    np.testing.assert_array_equal(lse, expected_lse)

    grads = [bhsd_view(poisoned(x.shape, dtype)) for x in (q, k, v)]
    flashmask.backward_into(dout_view, q_view, k_view, v_view, out, lse, *grads, indices, scale=scale,
                            num_threads=THREADS)
    for name, grad, expected in zip(("dq", "dk", "dv"), grads, expected_grads):
        np.testing.assert_array_equal(grad, expected, err_msg=name)


def test_float64_arrays_match_the_reference(rng):
    """float64 NumPy arrays of fresh float64 normals (not float32 values widened): out, dq, dk, dv
    within FLOAT64_TOLERANCE of the float64 reference, and lse (float32) within its rounding."""
    batch, q_heads, kv_heads, head_dim = 2, 4, 2, 48
    nq, nk = (int(n) for n in rng.integers(1, 150, size=2))
    q = rng.standard_normal((batch, nq, q_heads, head_dim))
    k, v = (rng.standard_normal((batch, nk, kv_heads, head_dim)) for _ in range(2))
    dout = rng.standard_normal(q.shape)
    indices = rng.integers(0, nq + 1, size=(batch, kv_heads, nk, 4)).astype(np.int32)
    scale = float(rng.uniform(0.5, 2.0) / np.sqrt(head_dim))
    out, lse = flashmask.attention_forward(q, k, v, indices, scale=scale, num_threads=THREADS)
    assert out.dtype == np.float64 and lse.dtype == np.float32
    grads = flashmask.attention_backward(dout, q, k, v, out, lse, indices, scale=scale, num_threads=THREADS)
    # The library's scale is a float32 (SPEC §1): the reference takes the same value.
    ref_scale = float(np.float32(scale))
    ref_out, ref_lse = flashmask.reference_forward(q, k, v, indices, scale=ref_scale)
    ref_grads = flashmask.reference_backward(dout, q, k, v, indices, scale=ref_scale)
    for name, value, ref in zip(("out", "dq", "dk", "dv"), (out, *grads), (ref_out, *ref_grads)):
        assert value.dtype == np.float64, name
        error = np.linalg.norm(value - ref) / max(np.linalg.norm(ref), np.finfo(np.float64).tiny)
        assert error < FLOAT64_TOLERANCE, (name, error)
    np.testing.assert_allclose(lse, ref_lse, rtol=float(np.finfo(np.float32).eps), atol=0)


def test_numpy_into_with_a_builder_mask_broadcast_over_the_batch(rng):
    n = int(rng.integers(8, 120))
    mask = masks.causal_document([n // 3, n - n // 3])
    batch, heads, dim = 3, 2, 64
    q, k, v = (rng.standard_normal((batch, n, heads, dim), dtype=np.float32) for _ in range(3))
    out, lse = poisoned(q.shape, np.float32), poisoned((batch, heads, n), np.float32)
    flashmask.forward_into(q, k, v, out, lse, mask, num_threads=THREADS)
    ref_out, ref_lse = flashmask.reference_forward(q, k, v, mask)
    assert np.linalg.norm(out - ref_out) / np.linalg.norm(ref_out) < FLOAT32_TOLERANCE
    np.testing.assert_allclose(lse, ref_lse, rtol=FLOAT32_TOLERANCE, atol=FLOAT32_TOLERANCE)


def test_the_stream_is_ignored_on_the_cpu(rng):
    q, k, v, _, indices = random_problem(rng, np.float32)
    results = []
    for stream in (None, 0, 12345):
        out, lse = poisoned(q.shape, np.float32), poisoned((q.shape[0], q.shape[2], q.shape[1]), np.float32)
        flashmask.forward_into(q, k, v, out, lse, indices, stream=stream, num_threads=THREADS)
        results.append((out, lse))
    for out, lse in results[1:]:
        np.testing.assert_array_equal(out, results[0][0])
        np.testing.assert_array_equal(lse, results[0][1])


def test_every_key_order_gives_the_same_bits_on_the_cpu(rng):
    """key_order picks the CUDA kernels' key order; the CPU path reads the keys in order for all."""
    q, k, v, dout, indices = random_problem(rng, np.float32)
    results = []
    for key_order in ("auto", "natural", "sorted"):
        out, lse = poisoned(q.shape, np.float32), poisoned((q.shape[0], q.shape[2], q.shape[1]), np.float32)
        flashmask.forward_into(q, k, v, out, lse, indices, num_threads=THREADS, key_order=key_order)
        grads = [poisoned(a.shape, np.float32) for a in (q, k, v)]
        flashmask.backward_into(dout, q, k, v, out, lse, *grads, indices, num_threads=THREADS, key_order=key_order)
        results.append([out, lse] + grads)
    for other in results[1:]:
        for got, expected in zip(other, results[0]):
            np.testing.assert_array_equal(got, expected)


# --- refusals ------------------------------------------------------------------------------------


def refused_forward(rng, exception, argument, **changes):
    """forward_into with one argument replaced; checks the exception, the argument it names,
    and that out and lse still hold their poison."""
    q, k, v, _, indices = random_problem(rng, np.float16)
    call = dict(q=q, k=k, v=v, out=poisoned(q.shape, np.float16),
                lse=poisoned((q.shape[0], q.shape[2], q.shape[1]), np.float32), startend_row_indices=indices)
    options = {name: changes.pop(name) for name in ("stream", "scale", "key_order") if name in changes}
    call.update(changes)
    with pytest.raises(exception) as refused:
        flashmask.forward_into(**call, **options)
    assert refused.value.argument == argument, str(refused.value)
    assert argument in str(refused.value)
    for name in ("out", "lse"):
        if isinstance(call[name], np.ndarray) and call[name].dtype.kind == "f":
            assert np.all(np.isnan(call[name].astype(np.float32))), f"{name} was written by a refused call"


def test_a_stream_that_is_not_an_int(rng):
    refused_forward(rng, TypeError, "stream", stream=1.5)


def test_a_negative_stream(rng):
    refused_forward(rng, ValueError, "stream", stream=-1)


def test_an_unknown_key_order(rng):
    refused_forward(rng, ValueError, "key_order", key_order="shuffled")


def test_something_that_is_not_an_array(rng):
    refused_forward(rng, TypeError, "k", k=[[1.0]])


def test_uint16_bits_without_a_dtype_flag(rng):
    q, _, _, _, _ = random_problem(rng, np.float16)
    refused_forward(rng, TypeError, "q", q=q.view(np.uint16))


def test_an_int64_index_array(rng):
    _, _, _, _, indices = random_problem(rng, np.float16)
    refused_forward(rng, TypeError, "startend_row_indices", startend_row_indices=indices.astype(np.int64))


def test_an_lse_of_the_wrong_shape(rng):
    refused_forward(rng, ValueError, "lse", lse=poisoned((1, 1, 1), np.float32))


def test_a_float64_output(rng):
    q, _, _, _, _ = random_problem(rng, np.float16)
    refused_forward(rng, TypeError, "out", out=poisoned(q.shape, np.float64))


def test_the_preprocessing_hook_refuses_a_host_index_array(rng):
    """_flashmask.forward_preprocessing_cuda (the benchmark's hook) runs on the GPU only: NumPy index
    arrays are refused (ValueError in a CUDA build, NotImplementedError in a CPU-only one)."""
    mask = masks.causal_document([10, 20])
    with pytest.raises((ValueError, NotImplementedError)) as refused:
        flashmask._flashmask.forward_preprocessing_cuda(mask.startend_row_indices, causal=True, nq=30, q_heads=4)
    assert refused.value.argument == "startend_row_indices"


# --- import ---------------------------------------------------------------------------------------


def test_import_loads_neither_torch_nor_cuda():
    """`import flashmask` in a fresh interpreter: no torch module, and no CUDA driver library
    mapped (the static CUDA runtime loads libcuda on its first call, which import makes none of)."""
    probe = ("import sys, flashmask\n" + ASSERT_NO_TORCH +
             "maps = open('/proc/self/maps').read() if sys.platform.startswith('linux') else ''\n"
             "assert 'libcuda.so' not in maps, 'import flashmask loaded the CUDA driver'\n"
             "print(flashmask.__version__)\n")
    assert run_in_fresh_interpreter(probe) == flashmask.__version__


# --- torch CPU tensors --------------------------------------------------------------------------


def torch_copy(values: np.ndarray, torch_dtype, bhsd: bool):
    tensor = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).to(torch_dtype)
    return tensor.transpose(1, 2).contiguous().transpose(1, 2) if bhsd else tensor


@needs_torch
@pytest.mark.parametrize("dtype_name", ["float64", "float32", "float16", "bfloat16"])
def test_torch_cpu_tensors(dtype_name, rng):
    """Torch tensors through DLPack: BHSD views keep their strides, bfloat16 arrives as
    bfloat16, inputs that require grad are read, and the results are the NumPy path's bits
    (float64, float32, float16) or within SPEC §5 of the float64 reference (bfloat16)."""
    torch_dtype = getattr(torch, dtype_name)
    q64, k64, v64, dout64, indices = random_problem(rng, np.float32, gradients_measurable=True)
    q, k, v, dout = (torch_copy(x, torch_dtype, bhsd=True) for x in (q64, k64, v64, dout64))
    q.requires_grad_(True)
    # A BHSD view is non-contiguous unless Nq == 1 (torch ignores strides of size-1 dims).
    assert q.stride(3) == 1 and (q.shape[1] == 1 or not q.is_contiguous())
    out = torch.full(q.shape, float("nan"), dtype=torch_dtype).transpose(1, 2).contiguous().transpose(1, 2)
    lse = torch.full((q.shape[0], q.shape[2], q.shape[1]), float("nan"))
    index_tensor = torch.from_numpy(indices)
    flashmask.forward_into(q, k, v, out, lse, index_tensor, num_threads=THREADS)
    grads = [torch.full(x.shape, float("nan"), dtype=torch_dtype) for x in (q, k, v)]
    flashmask.backward_into(dout, q, k, v, out, lse, *grads, index_tensor, num_threads=THREADS)
    for name, tensor in zip(("out", "lse", "dq", "dk", "dv"), (out, lse, *grads)):
        assert not torch.isnan(tensor.float()).any(), f"{name} has unwritten (NaN) elements"

    if dtype_name != "bfloat16":
        arrays = [x.detach().numpy() for x in (q, k, v, dout)]
        expected_out, expected_lse = flashmask.attention_forward(*arrays[:3], indices, num_threads=THREADS)
        np.testing.assert_array_equal(out.numpy(), expected_out)
        np.testing.assert_array_equal(lse.numpy(), expected_lse)
        expected = flashmask.attention_backward(arrays[3], *arrays[:3], expected_out, expected_lse, indices,
                                                num_threads=THREADS)
        for name, grad, want in zip(("dq", "dk", "dv"), grads, expected):
            np.testing.assert_array_equal(grad.numpy(), want, err_msg=name)
        return
    # bfloat16 (NumPy has none): the float64 reference on the same bfloat16 values.
    values = [float64_of(x) for x in (q, k, v, dout)]
    bits = [storage_of(x, "bfloat16") for x in (q, k, v, dout)]
    ref_out, _ = flashmask.reference_forward(*values[:3], indices)
    naive_out = flashmask.naive_forward(*bits[:3], indices, dtype="bfloat16")
    ref_grads = flashmask.reference_backward(values[3], *values[:3], indices)
    naive_grads = flashmask.naive_backward(bits[3], *bits[:3], indices, dtype="bfloat16")
    for name, value, ref, naive in zip(("out", "dq", "dk", "dv"), (out, *grads), (ref_out, *ref_grads),
                                       (naive_out, *naive_grads)):
        naive_error = relative_error(naive, ref)
        error = relative_error(float64_of(value), ref)
        assert error < flashmask.spec_bound("bfloat16", naive_error), (name, error, naive_error)


@needs_torch
def test_torch_mask_tensor_in_a_mask_is_expanded_over_the_batch(rng):
    n = int(rng.integers(8, 100))
    mask = masks.sliding_window(n, int(rng.integers(1, n + 1)))
    batch, heads, dim = 2, 2, 64
    q, k, v = (torch.from_numpy(rng.standard_normal((batch, n, heads, dim), dtype=np.float32)) for _ in range(3))
    out, lse = torch.full(q.shape, float("nan")), torch.full((batch, heads, n), float("nan"))
    flashmask.forward_into(q, k, v, out, lse, flashmask.Mask(torch.from_numpy(mask.startend_row_indices), True))
    expected_out, _ = flashmask.attention_forward(q.numpy(), k.numpy(), v.numpy(), mask)
    np.testing.assert_array_equal(out.numpy(), expected_out)


@needs_torch
def test_torch_int64_index_tensor_is_refused(rng):
    q, k, v, _, indices = random_problem(rng, np.float32)
    q, k, v = (torch.from_numpy(x) for x in (q, k, v))
    out, lse = torch.full(q.shape, float("nan")), torch.full((q.shape[0], q.shape[2], q.shape[1]), float("nan"))
    with pytest.raises(TypeError) as refused:
        flashmask.forward_into(q, k, v, out, lse, torch.from_numpy(indices).long())
    assert refused.value.argument == "startend_row_indices"
    assert torch.isnan(out).all() and torch.isnan(lse).all()
