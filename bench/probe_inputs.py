"""The problem a GPU probe runs (profile_attention.py, timeline_probe.py): its command-line
arguments and its inputs, one catalogue mask at a SPEC §6 size in bf16 BSHD, the same for every
probe so that their figures describe the same calls."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Optional

import torch

import flashmask
from spec_densities import SPEC_DENSITY_SEED


def add_problem_arguments(parser: argparse.ArgumentParser, default_mask: str) -> None:
    parser.add_argument("--seqlen", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--mask", choices=flashmask.catalogue_names(), default=default_mask)
    parser.add_argument("--seed", type=int, default=SPEC_DENSITY_SEED, help="catalogue seed (default: the benchmark's)")


@dataclass
class ProbeProblem:
    shape: tuple  # (B, N, H, D), BSHD
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    dout: torch.Tensor
    causal: bool
    indices: Optional[torch.Tensor]  # startend_row_indices on the GPU, [B, Hm, N, C]; None for full / causal


def make_problem(args: argparse.Namespace) -> ProbeProblem:
    """Random bf16 inputs (torch seed 0) and the catalogue mask at the benchmark's density seed."""
    torch.manual_seed(0)
    shape = (args.batch, args.seqlen, args.heads, args.head_dim)
    q, k, v, dout = (torch.randn(shape, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    mask = flashmask.catalogue(args.mask, args.seqlen, args.seed)
    indices = None
    if mask.startend_row_indices is not None:
        one = torch.from_numpy(mask.startend_row_indices).cuda()
        indices = one.expand(args.batch, *one.shape[1:]).contiguous()
    return ProbeProblem(shape, q, k, v, dout, bool(mask.causal), indices)
