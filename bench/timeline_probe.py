"""Where one flashmask call's time goes between its kernels: every kernel, memset and copy of one
forward and one backward (after warm-ups), from the CUDA activity trace of torch.profiler, with
its start within the call, its duration and the idle gap before it; then the call's span, the
sum of its kernels and the gaps (bench/NOTES.md, session 25).

    python3 bench/timeline_probe.py --mask share_question --seqlen 8192 --batch 2 --heads 32

Not a benchmark (bench_attention.py is): the trace's timestamps carry the profiler's own
overhead, and one call is one sample. It answers what a call is made of, not how fast it is.
"""

from __future__ import annotations

import argparse

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

import flashmask
from spec_densities import SPEC_DENSITY_SEED

WARMUPS = 3
NAME_WIDTH = 70


def device_events(prof) -> list:
    events = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    return sorted(events, key=lambda e: e.time_range.start)


def short_name(name: str) -> str:
    name = name.replace("flashmask::cuda::", "").replace("void ", "")
    return name if len(name) <= NAME_WIDTH else name[: NAME_WIDTH - 3] + "..."


def report(phase: str, events: list) -> None:
    if not events:
        print(f"{phase}: no device activity recorded")
        return
    begin = events[0].time_range.start
    end = max(e.time_range.end for e in events)
    busy = sum(e.time_range.end - e.time_range.start for e in events)
    print(f"\n{phase}: {len(events)} device activities, span {end - begin:.1f} us, "
          f"busy {busy:.1f} us, idle {end - begin - busy:.1f} us")
    print(f"{'start us':>9} {'dur us':>9} {'gap us':>7}  name")
    previous_end = begin
    for e in events:
        gap = e.time_range.start - previous_end
        print(f"{e.time_range.start - begin:9.1f} {e.time_range.end - e.time_range.start:9.1f} {gap:7.1f}  "
              f"{short_name(e.name)}")
        previous_end = max(previous_end, e.time_range.end)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seqlen", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--mask", choices=flashmask.catalogue_names(), default="share_question")
    parser.add_argument("--seed", type=int, default=SPEC_DENSITY_SEED, help="catalogue seed (default: the benchmark's)")
    args = parser.parse_args()

    torch.manual_seed(0)
    shape = (args.batch, args.seqlen, args.heads, args.head_dim)  # BSHD
    q, k, v, dout = (torch.randn(shape, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    mask = flashmask.catalogue(args.mask, args.seqlen, args.seed)
    indices = None
    if mask.startend_row_indices is not None:
        one = torch.from_numpy(mask.startend_row_indices).cuda()
        indices = one.expand(args.batch, *one.shape[1:]).contiguous()

    def forward():
        qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))
        return flashmask.flashmask_attention(qg, kg, vg, indices, causal=bool(mask.causal))

    for _ in range(WARMUPS):
        forward().backward(dout)
    torch.cuda.synchronize()

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        out = forward()
        torch.cuda.synchronize()
    report(f"forward, {args.mask}, BSHD {shape}", device_events(prof))
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        out.backward(dout)
        torch.cuda.synchronize()
    report(f"backward, {args.mask}, BSHD {shape}", device_events(prof))


if __name__ == "__main__":
    main()
