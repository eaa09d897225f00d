"""How much the forward's last, partial wave of CTAs costs: the full-mask forward of flashmask and
of SDPA's FlashAttention-2 backend at head counts around a configuration's, whose grids end in
waves of different fullness (bench/NOTES.md, session 21).

Both kernels launch one CTA per (batch, head, 128-query block) and hold two CTAs per SM on an
H100 (132 SMs, 264 slots): at 8K with B = 2, H = 32 that is 4,096 CTAs, 15.52 waves, so the
last wave runs 136 CTAs on 264 slots. H = 31 leaves 3,968 CTAs (15.03 waves), H = 33 4,224
(16.00). Where the tail costs nothing, TFLOP/s does not move with H; where it does, it shows.

    python3 bench/wave_probe.py [--seqlen 8192 --batch 2 --heads 31,32,33 --reps 50]

A probe, not the benchmark (bench_attention.py is): it times the two forwards alone with the
benchmark's timer (median_ms(): the median of --reps CUDA-event timings after its warm-up),
interleaved head count by head count.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import flashmask
from bench_attention import median_ms, warmup_calls  # bench/, the script's own folder: the benchmark's timer

FORWARD_QUERY_BLOCK = 128  # query rows per forward CTA, flashmask's (forward_traits.hpp) and FA2's at D = 128


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seqlen", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--heads", default="31,32,33", help="comma-separated head counts")
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2, help="passes over the head counts")
    args = parser.parse_args()

    print(f"GPU: {torch.cuda.get_device_name()}; full-mask forward, bf16, B {args.batch}, N {args.seqlen}, "
          f"D {args.head_dim}; TFLOP/s = 4 D H N^2 B / median time")
    slots = 2 * torch.cuda.get_device_properties(0).multi_processor_count  # both kernels: two CTAs per SM
    print(f"round  heads  CTAs   waves({slots})  flashmask  FA2    ratio")
    for round_index in range(args.rounds):
        for heads in (int(h) for h in args.heads.split(",")):
            shape = (args.batch, args.seqlen, heads, args.head_dim)
            q, k, v = (torch.randn(shape, device="cuda", dtype=torch.bfloat16) for _ in range(3))
            qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))

            def ours() -> None:
                flashmask.flashmask_attention(q, k, v, None, causal=False)

            def fa2() -> None:
                with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                    F.scaled_dot_product_attention(qt, kt, vt)

            flops = 4.0 * args.head_dim * heads * args.seqlen * args.seqlen * args.batch
            ours_tflops = flops / median_ms(ours, args.reps, warmup_calls(args.reps)) / 1e9
            fa2_tflops = flops / median_ms(fa2, args.reps, warmup_calls(args.reps)) / 1e9
            ctas = args.batch * heads * -(-args.seqlen // FORWARD_QUERY_BLOCK)
            print(f"{round_index:5d}  {heads:5d}  {ctas:5d}  {ctas / slots:10.2f}  {ours_tflops:9.1f}  {fa2_tflops:5.1f}  "
                  f"{ours_tflops / fa2_tflops:5.3f}")


if __name__ == "__main__":
    main()
