#!/usr/bin/env python3
"""Would reading the keys in another order lift the sparse masks? A probe of bench/NOTES.md's
key-reordering idea that needs no kernel change.

Attention is exact under any permutation of the keys: O and LSE sum over keys, dK / dV are per
key. Sorting the key columns by their interval bounds inside windows of W keys clusters each
key block's bounds, so Partial tiles become Full or Skipped ones (bench/work_efficiency.py
counts it). Here the permutation is applied outside the library: K and V gathered into new
tensors, the mask written as its non-causal C = 4 column bounds and permuted the same way, the
unchanged kernels run, and dK / dV scattered back. The kernel times show what a kernel that
reads K / V through the permutation (no copies) would reach; the gather and scatter are timed
apart. O and the gradients are compared with the unpermuted run's.

    python3 bench/reorder_probe.py --configs a,b --masks random_eviction,share_question --windows 1024 2048
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

import flashmask
from bench_attention import (BACKWARD_FLOPS_OVER_FORWARD, FORWARD_FLOPS_PER_PAIR_PER_DIM, HEAD_DIM,
                             STANDARD_CONFIGS, FlashMaskEntryPoints, MaskCase, batch_indices, flashmask_runner,
                             make_problem, median_ms, relative_error, warmup_calls)
from mask_columns import column_bounds
from work_efficiency import KERNEL_TILES, efficiency, four_slot_indices, reorder_permutation

# bf16 outputs of two summation orders differ by rounding only (~4e-3 relative); a wrong
# permutation or mask gives errors of order 1.
SAME_RESULT_TOLERANCE = 2e-2


def tflops(pairs: int, config, ms: float, backward: bool) -> float:
    flops = FORWARD_FLOPS_PER_PAIR_PER_DIM * HEAD_DIM * config.heads * pairs * config.batch
    return flops * (BACKWARD_FLOPS_OVER_FORWARD if backward else 1.0) / (ms * 1e9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="a,b")
    parser.add_argument("--masks", default="random_eviction,share_question,causal_document")
    parser.add_argument("--windows", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--reps", type=int, default=50)
    args = parser.parse_args()
    entry = FlashMaskEntryPoints()
    if entry.missing:
        raise SystemExit(entry.missing)
    device = torch.device("cuda")
    generator = torch.Generator(device=device).manual_seed(0)
    warmup = warmup_calls(args.reps)

    print(f"GPU: {torch.cuda.get_device_name()}; median of {args.reps}; forward / backward TFLOP/s "
          f"(visible pairs, SPEC §6); own full = over the full mask's figure in this run")
    print("| config | mask | key order | work eff. fwd / bwd | TFLOP/s | own full | gather + scatter ms "
          "| kernel ms fwd / bwd | max rel. error O / dQ / dK / dV |")
    print("|---|---|---|---|---|---|---|---|---|")
    for config_name in args.configs.split(","):
        config = STANDARD_CONFIGS[config_name]
        n = config.n
        problem = make_problem(config, device, generator)
        full_figures = None
        for name in ["full"] + args.masks.split(","):
            mask = flashmask.catalogue(name, n, 0)
            pairs = flashmask.visible_pairs(mask, nq=n, nk=n)
            indices = batch_indices(mask.startend_row_indices, config.batch, device)
            case = MaskCase(name, mask, pairs, pairs / (n * n), indices)
            runner = flashmask_runner(problem, case, mask.causal, entry)
            forward_ms = median_ms(runner.forward, args.reps, warmup)
            backward_ms = median_ms(runner.backward, args.reps, warmup)
            out = runner.forward().clone()
            grads = [g.clone() for g in runner.backward()]
            figures = (tflops(pairs, config, forward_ms, False), tflops(pairs, config, backward_ms, True))
            if name == "full":
                full_figures = figures
            efficiencies = [efficiency(mask.startend_row_indices, mask.causal, n, tile) for tile in KERNEL_TILES]

            def row(order, effs, figs, copy_ms, kernel_ms, errors):
                own = "/".join(f"{f / full:.2f}" for f, full in zip(figs, full_figures))
                print(f"| {config_name} | {name} | {order} | {effs[0]:.3f} / {effs[1]:.3f} | "
                      f"{figs[0]:.0f} / {figs[1]:.0f} | {own} | {copy_ms} | {kernel_ms[0]:.3f} / {kernel_ms[1]:.3f} | "
                      f"{errors} |", flush=True)

            row("as is", efficiencies, figures, "—", (forward_ms, backward_ms), "—")
            if name == "full":
                continue
            bounds = column_bounds(mask, n)
            for window in args.windows:
                permutation_np = reorder_permutation(bounds, window)
                permuted_indices = four_slot_indices(bounds, permutation_np)
                effs = [efficiency(permuted_indices, False, n, tile) for tile in KERNEL_TILES]
                permutation = torch.from_numpy(permutation_np).to(device)
                k_perm = problem.k.detach().index_select(1, permutation)
                v_perm = problem.v.detach().index_select(1, permutation)
                permuted_case = MaskCase(name, mask, pairs, case.density,
                                         batch_indices(permuted_indices, config.batch, device))
                permuted_problem = dataclasses.replace(problem, k=k_perm, v=v_perm)
                permuted = flashmask_runner(permuted_problem, permuted_case, False, entry)
                f_ms = median_ms(permuted.forward, args.reps, warmup)
                b_ms = median_ms(permuted.backward, args.reps, warmup)
                out_p = permuted.forward().clone()
                dq_p, dk_p, dv_p = (g.clone() for g in permuted.backward())
                dk = torch.empty_like(dk_p).index_copy_(1, permutation, dk_p)
                dv = torch.empty_like(dv_p).index_copy_(1, permutation, dv_p)
                errors = [relative_error(out_p, out), relative_error(dq_p, grads[0]),
                          relative_error(dk, grads[1]), relative_error(dv, grads[2])]
                verdict = "" if max(errors) <= SAME_RESULT_TOLERANCE else " MISMATCH"

                def gather_scatter():
                    problem.k.detach().index_select(1, permutation)
                    problem.v.detach().index_select(1, permutation)
                    dk.index_copy_(1, permutation, dk_p)
                    dv.index_copy_(1, permutation, dv_p)
                copy_ms = median_ms(gather_scatter, args.reps, warmup)
                figs = (tflops(pairs, config, f_ms, False), tflops(pairs, config, b_ms, True))
                row(f"sorted in {window}", effs, figs, f"{copy_ms:.3f}", (f_ms, b_ms),
                    " / ".join(f"{e:.1e}" for e in errors) + verdict)
                del k_perm, v_perm, permuted, out_p, dq_p, dk_p, dv_p, dk, dv
            del runner, out, grads
        del problem
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
