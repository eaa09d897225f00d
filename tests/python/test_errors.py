"""Every bad input of SPEC §2 refused from Python with the documented exception: TypeError for a
wrong dtype, ValueError for a wrong shape, option or value, each message naming the argument
(also kept as the exception's `argument` attribute). One test each."""

import numpy as np
import pytest

import flashmask
from flashmask import masks


def tensors(rng, batch=1, nq=24, nk=24, q_heads=2, kv_heads=2, dim=64, dtype=np.float32):
    q = rng.standard_normal((batch, nq, q_heads, dim), dtype=np.float32).astype(dtype)
    k = rng.standard_normal((batch, nk, kv_heads, dim), dtype=np.float32).astype(dtype)
    v = rng.standard_normal((batch, nk, kv_heads, dim), dtype=np.float32).astype(dtype)
    return q, k, v


def valid_indices(rng, batch, mask_heads, nq, nk, slots):
    return rng.integers(0, nq + 1, size=(batch, mask_heads, nk, slots)).astype(np.int32)


def assert_names(refused, argument):
    error = refused.value
    assert error.argument == argument, str(error)
    assert argument in str(error)


# --- dtypes: TypeError -------------------------------------------------------------------------


def test_query_of_an_unsupported_dtype(rng):
    q, k, v = tensors(rng)
    with pytest.raises(TypeError) as refused:
        flashmask.attention_forward(q.astype(np.int64), k, v)
    assert_names(refused, "q")
    assert "int64" in str(refused.value) and "float64" in str(refused.value)  # given, and the expected list


def test_float64_key_with_a_float32_query(rng):
    q, k, v = tensors(rng)
    with pytest.raises(TypeError) as refused:
        flashmask.attention_forward(q, k.astype(np.float64), v)
    assert_names(refused, "k")
    assert "float64" in str(refused.value)


def test_key_of_another_dtype_than_the_query(rng):
    q, k, v = tensors(rng)
    with pytest.raises(TypeError) as refused:
        flashmask.attention_forward(q, k.astype(np.float16), v)
    assert_names(refused, "k")


def test_uint16_without_the_bfloat16_flag(rng):
    q, k, v = (x.view(np.uint16)[..., ::2] for x in tensors(rng))
    with pytest.raises(TypeError) as refused:
        flashmask.attention_forward(q, k, v)
    assert_names(refused, "q")


def test_lse_of_the_wrong_dtype_in_backward(rng):
    q, k, v = tensors(rng)
    out, lse = flashmask.attention_forward(q, k, v)
    with pytest.raises(TypeError) as refused:
        flashmask.attention_backward(np.ones_like(out), q, k, v, out, lse.astype(np.float64))
    assert_names(refused, "lse")


def test_index_tensor_of_the_wrong_dtype(rng):
    q, k, v = tensors(rng)
    indices = valid_indices(rng, 1, 1, 24, 24, 1).astype(np.int64)
    with pytest.raises(TypeError) as refused:
        flashmask.attention_forward(q, k, v, indices, causal=True)
    assert_names(refused, "startend_row_indices")


def test_a_list_instead_of_an_array(rng):
    q, k, v = tensors(rng)
    with pytest.raises(TypeError) as refused:
        flashmask.attention_forward(q.tolist(), k, v)
    assert_names(refused, "q")


# --- shapes and options: ValueError ------------------------------------------------------------


def test_index_tensor_of_the_wrong_rank(rng):
    q, k, v = tensors(rng)
    indices = valid_indices(rng, 1, 1, 24, 24, 1)[0]
    with pytest.raises(ValueError) as refused:
        flashmask.attention_forward(q, k, v, indices, causal=True)
    assert_names(refused, "startend_row_indices")
    assert "rank" in str(refused.value)


def test_index_tensor_with_the_wrong_key_length(rng):
    q, k, v = tensors(rng)
    indices = valid_indices(rng, 1, 1, 24, 23, 1)
    with pytest.raises(ValueError) as refused:
        flashmask.attention_forward(q, k, v, indices, causal=True)
    assert_names(refused, "startend_row_indices")


def test_index_tensor_with_the_wrong_batch(rng):
    q, k, v = tensors(rng, batch=2)
    indices = valid_indices(rng, 3, 1, 24, 24, 1)
    with pytest.raises(ValueError) as refused:
        flashmask.attention_forward(q, k, v, indices, causal=True)
    assert_names(refused, "startend_row_indices")


@pytest.mark.parametrize("causal,slots", [(True, 4), (True, 3), (False, 1), (False, 3)])
def test_a_slot_count_not_allowed_with_causal(causal, slots, rng):
    q, k, v = tensors(rng)
    indices = valid_indices(rng, 1, 1, 24, 24, slots)
    with pytest.raises(ValueError) as refused:
        flashmask.attention_forward(q, k, v, indices, causal=causal)
    assert_names(refused, "startend_row_indices")
    assert f"C = {slots}" in str(refused.value)


def test_mask_heads_not_one_nor_kv_nor_query_heads(rng):
    q, k, v = tensors(rng, q_heads=8, kv_heads=2)
    indices = valid_indices(rng, 1, 4, 24, 24, 1)
    with pytest.raises(ValueError) as refused:
        flashmask.attention_forward(q, k, v, indices, causal=True)
    assert_names(refused, "startend_row_indices")
    assert "Hm = 4" in str(refused.value)


def test_query_heads_not_a_multiple_of_kv_heads(rng):
    q, k, v = tensors(rng, q_heads=3, kv_heads=2)
    with pytest.raises(ValueError) as refused:
        flashmask.attention_forward(q, k, v)
    assert_names(refused, "k")


def test_last_dimension_not_contiguous(rng):
    q, k, v = tensors(rng, dim=128)
    with pytest.raises(ValueError) as refused:
        flashmask.attention_forward(q[..., ::2], k[..., ::2], v[..., ::2])
    assert_names(refused, "q")
    assert "contiguous" in str(refused.value)


def test_query_of_the_wrong_rank(rng):
    q, k, v = tensors(rng)
    with pytest.raises(ValueError) as refused:
        flashmask.attention_forward(q[0], k, v)
    assert_names(refused, "q")


def test_key_with_another_batch_than_the_query(rng):
    q, _, _ = tensors(rng, batch=2)
    _, k, v = tensors(rng, batch=1)
    with pytest.raises(ValueError) as refused:
        flashmask.attention_forward(q, k, v)
    assert_names(refused, "k")


def test_a_zero_head_dim(rng):
    q, k, v = tensors(rng, dim=0)
    with pytest.raises(ValueError) as refused:
        flashmask.attention_forward(q, k, v)
    assert_names(refused, "q")
    assert "D = 0" in str(refused.value)


def test_key_with_another_head_dim_than_the_query(rng):
    q, _, v = tensors(rng, dim=64)
    _, k, _ = tensors(rng, dim=32)
    with pytest.raises(ValueError) as refused:
        flashmask.attention_forward(q, k, v)
    assert_names(refused, "k")


def test_output_gradient_of_another_shape_than_the_output(rng):
    q, k, v = tensors(rng)
    out, lse = flashmask.attention_forward(q, k, v)
    with pytest.raises(ValueError) as refused:
        flashmask.attention_backward(rng.standard_normal(out.shape[:-1] + (32,), dtype=np.float32), q, k, v, out, lse)
    assert_names(refused, "dout")


# --- values: validate_mask names (b, head, column, slot, value) --------------------------------


# Just outside [0, Nq] (where an off-by-one in the check would hide) and the int32 extremes.
BAD_VALUES = {"minus_one": lambda nq: -1, "nq_plus_one": lambda nq: nq + 1,
              "int32_min": lambda nq: -(2**31), "int32_max": lambda nq: 2**31 - 1}


@pytest.mark.parametrize("bad_value", BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_out_of_range_value_is_reported_with_its_position(bad_value, rng):
    batch, heads, nq, nk, slots = 2, 3, int(rng.integers(4, 50)), int(rng.integers(4, 50)), 4
    indices = valid_indices(rng, batch, heads, nq, nk, slots)
    flashmask.validate_mask(indices, causal=False, nq=nq)  # valid as drawn
    position = tuple(int(rng.integers(0, extent)) for extent in indices.shape)
    value = bad_value(nq)
    indices[position] = value
    # A second bad value later in (b, head, column, slot) order must not be the one reported.
    later = (batch - 1, heads - 1, nk - 1, slots - 1)
    if later != position:
        indices[later] = nq + 7
    with pytest.raises(ValueError) as refused:
        flashmask.validate_mask(indices, causal=False, nq=nq)
    assert_names(refused, "startend_row_indices")
    assert "({}, {}, {}, {}, {})".format(*position, value) in str(refused.value)


def test_validate_mask_refuses_a_slot_count(rng):
    indices = valid_indices(rng, 1, 1, 10, 10, 1)
    flashmask.validate_mask(indices, causal=True, nq=10)  # C = 1 is allowed with causal only
    with pytest.raises(ValueError) as refused:
        flashmask.validate_mask(indices, causal=False, nq=10)
    assert_names(refused, "startend_row_indices")


def test_from_dense_of_the_wrong_rank(rng):
    with pytest.raises(ValueError) as refused:
        flashmask.from_dense(rng.random((2, 3, 4)) < 0.5)
    assert_names(refused, "dense_mask")


def test_a_causal_flag_contradicting_the_mask(rng):
    q, k, v = tensors(rng)
    with pytest.raises(ValueError) as refused:
        flashmask.attention_forward(q, k, v, masks.document([24]), causal=True)
    assert_names(refused, "causal")
