"""Backward time of flashmask_attention with and without deterministic=True (8K, B 2, H 32,
D 128, bf16; full and causal masks), CUDA events, median of 20 after 5 warm-up calls. The
autograd call includes the preprocessing and the dQ conversion, so the figures sit below
bench_attention.py's. Used for bench/NOTES.md (session 5); run on a GPU with the package installed."""
import torch, flashmask
torch.manual_seed(0)
B, N, H, D = 2, 8192, 32, 128
q, k, v = (torch.randn(B, N, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
do = torch.randn(B, N, H, D, device="cuda", dtype=torch.bfloat16)
for causal in (False, True):
    for det in (False, True):
        out = flashmask.flashmask_attention(q, k, v, causal=causal, deterministic=det)
        times = []
        for i in range(25):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record(); torch.autograd.grad(out, (q, k, v), do, retain_graph=True); e.record()
            torch.cuda.synchronize(); times.append(s.elapsed_time(e))
        ms = sorted(times[5:])[len(times[5:]) // 2]
        flops = 2.5 * 4 * D * H * B * N * N * (0.5 if causal else 1.0)
        print(f"causal={causal} deterministic={det}: backward {ms:.3f} ms, {flops / ms / 1e9:.0f} TFLOP/s")
