"""Random small problems on the CPU path against an attention written here from SPEC §2's table
alone (not the library's reference): every layout, hostile index values, GQA with every mask-head
count, Nq != Nk including 0, any scale, both backward modes. Each case must give no NaN, the
reference's LSE (-inf where a row sees nothing) and float32 results within SPEC §5's 1e-5.
That bound holds outright, also where a gradient is carried by a few rows over one or two keys at
a large scale (nearly one-hot, where dS = P (dP - delta) cancels): the CPU backward forms dP and
delta in double. Until session 29 it took dP in float32, as the naive float32 computation does,
and this test allowed 3x the naive error or twice a first-order rounding floor there; in 9,000
cases after the change the worst error was 1.3e-6 (bench/NOTES.md, session 29)."""

import numpy as np

import flashmask

CASES = 1000
MAX_SEQUENCE = 80            # rows and keys: several 64-row tiles, ragged ends, and 0
HEAD_DIMS = (8, 16, 32, 64)
FLOAT32_BOUND = 1e-5         # SPEC §5, float32 inputs
LSE_TOLERANCE = 1e-4         # absolute, on values of order 1-10
# Relative errors are taken over a floor: where every row sees at most one key the exact dQ and
# dK are 0 (exact_attention() gives exactly 0 there), and the floor asks for |error| < 1e-14.
NORM_FLOOR = 1e-9


def visible_pairs(indices, causal: bool, nq: int, nk: int) -> np.ndarray:
    """[Nq, Nk] booleans for one (batch, mask head) column table [Nk, C], per SPEC §2."""
    rows = np.arange(nq)[:, None]
    slots = indices.shape[-1]

    def hidden(start, end):
        return (rows >= start[None, :]) & (rows < end[None, :])

    everything, nothing = np.full(nk, nq), np.zeros(nk, dtype=np.int64)
    if causal and slots == 1:
        masked = hidden(indices[:, 0], everything)
    elif causal and slots == 2:
        masked = hidden(indices[:, 0], indices[:, 1])
    elif slots == 2:
        masked = hidden(indices[:, 0], everything) | hidden(nothing, indices[:, 1])
    else:
        masked = hidden(indices[:, 0], indices[:, 1]) | hidden(indices[:, 2], indices[:, 3])
    return ~masked


def exact_attention(q, k, v, dout, indices, causal: bool, scale: float):
    """O, LSE, dQ, dK, dV in float64, one (batch, query head) at a time. delta is sum_j P_j dP_j, so
    that a row over one key (P = 1) gets dS = 0 exactly, as the float32 path gives it."""
    batch, nq, q_heads, _ = q.shape
    nk, kv_heads = k.shape[1], k.shape[2]
    group = q_heads // kv_heads
    out = np.zeros((batch, nq, q_heads, v.shape[3]))
    lse = np.full((batch, q_heads, nq), -np.inf)
    dq, dk, dv = np.zeros(q.shape), np.zeros(k.shape), np.zeros(v.shape)
    if nq == 0 or nk == 0:
        return out, lse, dq, dk, dv
    for b in range(batch):
        for h in range(q_heads):
            g = h // group
            visible = np.ones((nq, nk), dtype=bool)
            if indices is not None:
                mask_heads = indices.shape[1]
                mask_head = 0 if mask_heads == 1 else (g if mask_heads == kv_heads else h)
                visible = visible_pairs(indices[b, mask_head], causal, nq, nk)
            if causal:  # bottom-right diagonal
                visible &= np.arange(nk)[None, :] <= np.arange(nq)[:, None] + (nk - nq)
            qh, kg, vg, do = (x.astype(np.float64) for x in (q[b, :, h], k[b, :, g], v[b, :, g], dout[b, :, h]))
            scores = np.where(visible, qh @ kg.T * scale, -np.inf)
            row_max = scores.max(axis=1, keepdims=True)
            sees = np.isfinite(row_max[:, 0])
            weights = np.where(visible, np.exp(scores - np.where(sees[:, None], row_max, 0.0)), 0.0)
            sums = weights.sum(axis=1, keepdims=True)
            p = weights / np.where(sums > 0, sums, 1.0)
            o = p @ vg
            out[b, :, h] = o
            lse[b, h] = np.where(sees, row_max[:, 0] + np.log(np.where(sums[:, 0] > 0, sums[:, 0], 1.0)), -np.inf)
            dp = do @ vg.T
            ds = p * (dp - (p * dp).sum(axis=1, keepdims=True)) * scale
            dq[b, :, h] = ds @ kg
            dk[b, :, g] += ds.T @ qh
            dv[b, :, g] += p.T @ do
    return out, lse, dq, dk, dv


def relative_error(got, want) -> float:
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), NORM_FLOOR))


def random_case(rng):
    batch, kv_heads = int(rng.integers(1, 3)), int(rng.integers(1, 3))
    q_heads = kv_heads * int(rng.choice([1, 2, 3]))
    nq, nk = int(rng.integers(0, MAX_SEQUENCE)), int(rng.integers(0, MAX_SEQUENCE))
    dim = int(rng.choice(HEAD_DIMS))
    causal = bool(rng.integers(0, 2))
    indices = None
    if rng.integers(0, 4) > 0:
        slots = int(rng.choice([1, 2] if causal else [2, 4]))
        mask_heads = int(rng.choice(sorted({1, kv_heads, q_heads})))
        # Hostile on purpose: below 0, above Nq, start after end.
        indices = rng.integers(-3, nq + 4, size=(batch, mask_heads, nk, slots)).astype(np.int32)
    q = rng.standard_normal((batch, nq, q_heads, dim)).astype(np.float32)
    k = rng.standard_normal((batch, nk, kv_heads, dim)).astype(np.float32)
    v = rng.standard_normal((batch, nk, kv_heads, dim)).astype(np.float32)
    dout = rng.standard_normal((batch, nq, q_heads, dim)).astype(np.float32)
    return q, k, v, dout, indices, causal, float(rng.uniform(0.05, 0.5)), bool(rng.integers(0, 2))


def test_random_problems_match_an_attention_written_from_the_spec(rng):
    for case in range(CASES):
        q, k, v, dout, indices, causal, scale, deterministic = random_case(rng)
        described = (f"case {case}: q {q.shape} k {k.shape} indices {None if indices is None else indices.shape} "
                     f"causal {causal} scale {scale:.3f} deterministic {deterministic}")
        out, lse = flashmask.attention_forward(q, k, v, indices, causal=causal, scale=scale)
        dq, dk, dv = flashmask.attention_backward(dout, q, k, v, out, lse, indices, causal=causal, scale=scale,
                                                  deterministic=deterministic)
        want_out, want_lse, want_dq, want_dk, want_dv = exact_attention(q, k, v, dout, indices, causal, scale)
        for name, got in (("out", out), ("lse", lse), ("dq", dq), ("dk", dk), ("dv", dv)):
            assert not np.isnan(got).any(), f"{described}: NaN in {name}"
        assert np.array_equal(np.isneginf(lse), np.isneginf(want_lse)), f"{described}: rows that see nothing differ"
        finite = np.isfinite(want_lse)
        assert np.allclose(lse[finite], want_lse[finite], rtol=0, atol=LSE_TOLERANCE), f"{described}: lse"
        for name, got, want in (("out", out, want_out), ("dq", dq, want_dq), ("dk", dk, want_dk), ("dv", dv, want_dv)):
            error = relative_error(got, want)
            assert error < FLOAT32_BOUND, f"{described}: {name} relative error {error:.2e}"
