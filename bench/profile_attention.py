"""One forward + backward of flashmask (any catalogue mask) and, for full and causal, of SDPA's
FlashAttention-2 backend on the same inputs, for a profiler to pick kernels out of
(scripts/profile-kernels.sh; bench/NOTES.md):

    ncu --set full -k regex:'backward_dkdv|flash_bwd_dq_dk_dv' --launch-skip 2 -c 2 \
        -o bwd python3 bench/profile_attention.py --mask full

Not a benchmark (bench_attention.py is): it runs each side once after one warm-up, so that the
profiler sees exactly one launch of each kernel per side after the warm-up's.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import flashmask
from probe_inputs import add_problem_arguments, make_problem


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_problem_arguments(parser, default_mask="full")
    parser.add_argument("--sides", default="flashmask,flash",
                        help="comma-separated: flashmask, flash (SDPA FA2: full and causal only, else left out)")
    args = parser.parse_args()

    problem = make_problem(args)
    shape, q, k, v, dout = problem.shape, problem.q, problem.k, problem.v, problem.dout
    causal, indices = problem.causal, problem.indices
    sides = [side for side in args.sides.split(",") if side != "flash" or indices is None]

    def flashmask_step() -> None:
        qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))
        out = flashmask.flashmask_attention(qg, kg, vg, indices, causal=causal)
        out.backward(dout)

    def flash_step() -> None:
        qg, kg, vg = (t.detach().transpose(1, 2).requires_grad_() for t in (q, k, v))
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            out = F.scaled_dot_product_attention(qg, kg, vg, is_causal=causal)
        out.backward(dout.transpose(1, 2))

    steps = {"flashmask": flashmask_step, "flash": flash_step}
    for side in sides:
        steps[side]()  # warm-up: --launch-skip 2 leaves these two backward launches out (1 with one side)
    torch.cuda.synchronize()
    for side in sides:
        steps[side]()
    torch.cuda.synchronize()
    print("profiled sides:", ", ".join(sides), "mask", args.mask, "shape BSHD", shape)


if __name__ == "__main__":
    main()
