"""Where one flashmask call's time goes between its kernels: every kernel, memset and copy of one
forward and one backward (after warm-ups), from the CUDA activity trace of torch.profiler, with
its start within the call, its duration and the idle gap before it; then the call's span, the
sum of its kernels and the gaps (bench/NOTES.md, session 25).

    python3 bench/timeline_probe.py --mask share_question --seqlen 8192 --batch 2 --heads 32

With --calls N (N >= 2) the forward and then the backward run N times back to back (no
synchronisation between, as a benchmark's timed loop does), and each call's period on the device
(from one call's main kernel to the next one's: the forward kernel, the backward's preprocess)
is split into its long kernels and the rest: the small kernels and launch gaps on the critical
path, which a kernel's speed does not change and the card's clock hardly moves.

Not a benchmark (bench_attention.py is): the trace's timestamps carry the profiler's own
overhead. It answers what a call is made of, not how fast it is.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

import flashmask
from probe_inputs import add_problem_arguments, make_problem

WARMUPS = 3
NAME_WIDTH = 70
LONG_KERNEL_US = 50.0  # a call's long kernels (forward; preprocess, dK/dV, dQ convert); the rest is overhead
# Where a period starts: the one long launch of this kernel in each call (under KeyOrder::Automatic
# the forward kernel is launched twice, and the launch of the order not chosen returns at once).
PERIOD_MARKERS = {"forward": "forward_kernel", "backward": "backward_preprocess_kernel"}


def device_events(prof) -> list:
    events = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    return sorted(events, key=lambda e: e.time_range.start)


def short_name(name: str) -> str:
    name = name.replace("flashmask::cuda::", "").replace("void ", "")
    return name if len(name) <= NAME_WIDTH else name[: NAME_WIDTH - 3] + "..."


def duration_us(e) -> float:
    return e.time_range.end - e.time_range.start


def busy_us(events: list) -> float:
    """The time at least one activity ran (activities on different streams can overlap)."""
    busy, covered_to = 0.0, float("-inf")
    for e in events:  # sorted by start
        start, end = max(e.time_range.start, covered_to), e.time_range.end
        if end > start:
            busy += end - start
        covered_to = max(covered_to, end)
    return busy


def report(phase: str, events: list) -> None:
    if not events:
        print(f"{phase}: no device activity recorded")
        return
    begin = events[0].time_range.start
    end = max(e.time_range.end for e in events)
    busy = busy_us(events)
    print(f"\n{phase}: {len(events)} device activities, span {end - begin:.1f} us, "
          f"busy {busy:.1f} us, idle {end - begin - busy:.1f} us")
    print(f"{'start us':>9} {'dur us':>9} {'gap us':>7}  name (gap 'beside': it started while another ran)")
    previous_end = begin
    for e in events:
        gap = e.time_range.start - previous_end
        gap_text = f"{gap:7.1f}" if gap >= 0 else f"{'beside':>7}"
        print(f"{e.time_range.start - begin:9.1f} {duration_us(e):9.1f} {gap_text}  "
              f"{short_name(e.name)}")
        previous_end = max(previous_end, e.time_range.end)


def report_periods(direction: str, events: list) -> None:
    """The steady-state periods of back-to-back calls in `direction`: each from one call's long
    PERIOD_MARKERS kernel to the next one's, split into its long kernels and the rest."""
    marker = PERIOD_MARKERS[direction]
    starts = [i for i, e in enumerate(events) if marker in e.name and duration_us(e) >= LONG_KERNEL_US]
    if len(starts) < 2:
        print(f"fewer than two long {marker} launches: no {direction} period to report")
        return
    print(f"\nperiods of back-to-back {direction} calls (long kernels: >= {LONG_KERNEL_US:.0f} us)")
    print(f"{'period us':>10} {'long us':>9} {'rest us':>8}")
    rests = []
    for first, following in zip(starts, starts[1:]):
        period = events[following].time_range.start - events[first].time_range.start
        long_kernels = sum(duration_us(e) for e in events[first:following] if duration_us(e) >= LONG_KERNEL_US)
        rests.append(period - long_kernels)
        print(f"{period:10.1f} {long_kernels:9.1f} {period - long_kernels:8.1f}")
    print(f"rest of a period (small kernels and gaps on the critical path): median "
          f"{statistics.median(rests):.1f} us over {len(rests)} periods")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_problem_arguments(parser, default_mask="share_question")
    parser.add_argument("--calls", type=int, default=1,
                        help="forward and backward calls profiled back to back; from 2 on, their periods are reported")
    args = parser.parse_args()
    if args.calls < 1:
        parser.error(f"--calls {args.calls}: expected at least 1")

    problem = make_problem(args)
    shape, dout = problem.shape, problem.dout

    def forward():
        leaves = tuple(t.detach().requires_grad_() for t in (problem.q, problem.k, problem.v))
        return flashmask.flashmask_attention(*leaves, problem.indices, causal=problem.causal), leaves

    for _ in range(WARMUPS):
        forward()[0].backward(dout)
    torch.cuda.synchronize()

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(args.calls):
            out, leaves = forward()  # the last call's graph is the backward's
        torch.cuda.synchronize()
    events = device_events(prof)
    report(f"forward x {args.calls}, {args.mask}, BSHD {shape}", events)
    if args.calls > 1:
        report_periods("forward", events)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for call in range(args.calls):  # autograd.grad: no accumulation kernels between the calls
            torch.autograd.grad(out, leaves, dout, retain_graph=call + 1 < args.calls)
        torch.cuda.synchronize()
    events = device_events(prof)
    report(f"backward x {args.calls}, {args.mask}, BSHD {shape}", events)
    if args.calls > 1:
        report_periods("backward", events)


if __name__ == "__main__":
    main()
