#!/usr/bin/env python3
"""The library's key order (src/cuda/common/key_order.cuh) measured per mask: forward_into /
backward_into with key_order "natural", "sorted" and "auto", and "auto-graph" ("auto" replayed from a CUDA
graph), where the choice is made on the device (both orders' launches queued, the one not chosen
returning at once). What the sort buys where it pays (random eviction), and what "auto" costs
where it does not. Results are compared with the natural order's (bf16, two summation orders).

    python3 bench/key_order_probe.py --configs b --masks random_eviction,share_question,causal_document
    python3 bench/key_order_probe.py --kernels --orders natural,auto --masks share_question

--kernels lists instead, per mask and order, every kernel one forward and one backward call
launch with its mean GPU time (torch.profiler over --reps calls), and the calls' GPU span: where
a key order's extra time goes.
"""

from __future__ import annotations

import argparse

import torch

import flashmask
from bench_attention import (BACKWARD_FLOPS_OVER_FORWARD, FORWARD_FLOPS_PER_PAIR_PER_DIM, HEAD_DIM,
                             STANDARD_CONFIGS, FlashMaskEntryPoints, MaskCase, batch_indices, flashmask_runner,
                             make_problem, median_ms, relative_error, warmup_calls)
from spec_densities import SPEC_DENSITY_SEED

# bf16 outputs of two summation orders differ by rounding only (~4e-3 relative); a wrong
# permutation or mask gives errors of order 1.
SAME_RESULT_TOLERANCE = 2e-2
ORDERS = ("natural", "sorted", "auto")


def tflops(pairs: int, config, ms: float, backward: bool) -> float:
    flops = FORWARD_FLOPS_PER_PAIR_PER_DIM * HEAD_DIM * config.heads * pairs * config.batch
    return flops * (BACKWARD_FLOPS_OVER_FORWARD if backward else 1.0) / (ms * 1e9)


def graph_of(fn):
    """fn captured into a CUDA graph (after a warm-up call on a side stream), as a replay callable."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def print_kernels(title: str, call, reps: int) -> None:
    """Every kernel `call` launches, with its mean GPU time over `reps` calls (after warm-up), and
    the mean of the calls' CUDA-event spans, which also counts the gaps between the kernels."""
    import warnings

    from torch.profiler import ProfilerActivity, profile

    warnings.filterwarnings("ignore", message="Warning: Profiler clears events")  # one cycle is all we take

    span_ms = median_ms(call, reps, warmup_calls(reps))
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            call()
        torch.cuda.synchronize()
    rows = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    kernel_us = sum(e.self_device_time_total for e in rows) / reps
    print(f"\n{title}: span {span_ms * 1e3:.1f} us (median), kernels {kernel_us:.1f} us per call")
    for e in sorted(rows, key=lambda e: -e.self_device_time_total):
        print(f"  {e.self_device_time_total / reps:9.1f} us  x{e.count / reps:.0f}  {e.key[:110]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="b")
    parser.add_argument("--masks", default="random_eviction,share_question,causal_document")
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=SPEC_DENSITY_SEED, help="catalogue seed (default: the benchmark's)")
    parser.add_argument("--orders", default=",".join(ORDERS + ("auto-graph",)),
                        help="key orders in the order they run; repeat one to see drift, e.g. natural,auto,natural,auto")
    parser.add_argument("--kernels", action="store_true", help="list each call's kernels and their GPU times")
    args = parser.parse_args()
    entry = FlashMaskEntryPoints()
    if entry.missing:
        raise SystemExit(entry.missing)
    device = torch.device("cuda")
    generator = torch.Generator(device=device).manual_seed(0)
    warmup = warmup_calls(args.reps)

    if args.kernels:
        print(f"GPU: {torch.cuda.get_device_name()}; each call's kernels, mean GPU time per call over {args.reps} "
              f"calls (torch.profiler); span: median of {args.reps} CUDA-event timings of the whole call")
    else:
        print(f"GPU: {torch.cuda.get_device_name()}; median of {args.reps} CUDA-event timings; forward / backward "
              f"TFLOP/s (visible pairs, SPEC §6); own full = over the full mask's first figure in this run")
        print("| config | mask | key order | TFLOP/s | own full | ms fwd / bwd | "
              "max rel. error O / dQ / dK / dV vs natural |")
        print("|---|---|---|---|---|---|---|")
    for config_name in args.configs.split(","):
        config = STANDARD_CONFIGS[config_name]
        n = config.n
        problem = make_problem(config, device, generator)
        full_figures = None
        for name in ["full"] + args.masks.split(","):
            mask = flashmask.catalogue(name, n, args.seed)
            pairs = flashmask.visible_pairs(mask, nq=n, nk=n)
            case = MaskCase(name, mask, pairs, pairs / (n * n),
                            batch_indices(mask.startend_row_indices, config.batch, device))
            natural = None
            for order in args.orders.split(","):
                runner = flashmask_runner(problem, case, mask.causal, entry, key_order=order.split("-")[0])
                if args.kernels:
                    for direction, call in (("forward", runner.forward), ("backward", runner.backward)):
                        print_kernels(f"{config_name} {name} {order} {direction}", call, args.reps)
                    del runner
                    continue
                forward, backward = runner.forward, runner.backward
                if order.endswith("-graph"):
                    forward, backward = graph_of(runner.forward), graph_of(runner.backward)
                forward_ms = median_ms(forward, args.reps, warmup)
                backward_ms = median_ms(backward, args.reps, warmup)
                out = runner.forward().clone()
                grads = [g.clone() for g in runner.backward()]
                figures = (tflops(pairs, config, forward_ms, False), tflops(pairs, config, backward_ms, True))
                if natural is None:
                    natural = (out, grads)
                    errors = "—"
                else:
                    values = [relative_error(out, natural[0])] + [relative_error(g, r) for g, r in zip(grads, natural[1])]
                    errors = " / ".join(f"{e:.1e}" for e in values)
                    if max(values) > SAME_RESULT_TOLERANCE:
                        errors += " MISMATCH"
                if name == "full" and full_figures is None:
                    full_figures = figures
                own = "/".join(f"{f / full:.2f}" for f, full in zip(figures, full_figures))
                print(f"| {config_name} | {name} | {order} | {figures[0]:.0f} / {figures[1]:.0f} | {own} | "
                      f"{forward_ms:.3f} / {backward_ms:.3f} | {errors} |", flush=True)
                del runner, out, grads
            del natural
        del problem
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
