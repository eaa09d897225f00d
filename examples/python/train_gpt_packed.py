"""Train a small GPT on packed documents twice: with flashmask's causal-document mask, and with
SDPA and the equivalent dense boolean mask. Same initial weights, same batches in the same
order; prints both loss curves, their largest difference and the median step time of each,
and writes the curves to --out (.json or .csv).

Packing puts several documents in one row of --seq-len tokens. Each document must attend only
to its own earlier tokens, and its positions restart at 0, so a packed row trains exactly as
its documents would one by one. flashmask holds that mask in O(N) (one int32 per key: the row
where its document ends); SDPA needs the dense O(N^2) mask.

    # the GPU run (the defaults): bf16 autocast, 300 steps of 8 x 4096 tokens
    python examples/python/train_gpt_packed.py --out gpt_packed_cuda.json
    # a quick CPU check (float32): the two curves agree to float32 rounding
    python examples/python/train_gpt_packed.py --device cpu --steps 20 --seq-len 256 --batch 4 \
        --d-model 256 --heads 4 --out gpt_packed_cpu.json

See docs/examples.md for the outputs.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from flashmask import torch_masks
from tiny_gpt import TinyGPT, causal_document_dense, flashmask_attend, sdpa_attend, torch_device

# Cross-entropy ignores these targets: the last token of a document has no next token in it.
IGNORE_TARGET = -100


# --------------------------------------------------------------------------------------------
# Synthetic but learnable documents
# --------------------------------------------------------------------------------------------


@dataclass
class DocumentSource:
    """Documents that a model can learn two things from: a fixed sparse Markov chain over the
    vocabulary (each token has a few likely successors: bigram statistics, learnt early), and
    repetition (each document repeats a short pattern drawn from the chain: after the first
    period the rest is predictable by looking back within the document, which needs
    attention and is exactly what the document mask must not let leak across documents).

    Everything is drawn from a torch.Generator seeded per step, so that both runs see the same
    batches in the same order without sharing any state."""

    vocab_size: int
    seq_len: int
    seed: int
    successors_per_token: int = 3
    min_pattern: int = 2
    max_pattern: int = 12

    def __post_init__(self):
        chain = torch.Generator().manual_seed(self.seed)
        self.successors = torch.randint(self.vocab_size, (self.vocab_size, self.successors_per_token),
                                        generator=chain)
        self.successor_weights = torch.rand(self.vocab_size, self.successors_per_token, generator=chain) + 0.1
        # Documents from very short to half a row, so that rows hold a handful to dozens of them.
        self.min_document = max(4, self.seq_len // 64)
        self.max_document = max(self.min_document + 1, self.seq_len // 2)

    def _document(self, length: int, generator: torch.Generator) -> torch.Tensor:
        period = int(torch.randint(self.min_pattern, self.max_pattern + 1, (1,), generator=generator))
        pattern = [int(torch.randint(self.vocab_size, (1,), generator=generator))]
        for _ in range(period - 1):
            choice = torch.multinomial(self.successor_weights[pattern[-1]], 1, generator=generator)
            pattern.append(int(self.successors[pattern[-1], choice]))
        return torch.tensor(pattern).repeat(math.ceil(length / period))[:length]

    def batch(self, step: int, batch_size: int):
        """tokens, targets and position_ids, int64 [batch_size, seq_len], on the CPU. The last
        document of a row is cut to fit (a cut document is still a valid document)."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        tokens, positions = [], []
        for _ in range(batch_size):
            row_tokens, row_positions, filled = [], [], 0
            while filled < self.seq_len:
                wanted = int(torch.randint(self.min_document, self.max_document + 1, (1,), generator=generator))
                length = min(wanted, self.seq_len - filled)
                row_tokens.append(self._document(length, generator))
                row_positions.append(torch.arange(length))
                filled += length
            tokens.append(torch.cat(row_tokens))
            positions.append(torch.cat(row_positions))
        tokens, position_ids = torch.stack(tokens), torch.stack(positions)
        # Next-token targets, except where the next token starts another document (or the row ends).
        targets = torch.full_like(tokens, IGNORE_TARGET)
        continues = position_ids[:, 1:] != 0
        targets[:, :-1] = torch.where(continues, tokens[:, 1:], IGNORE_TARGET)
        return tokens, targets, position_ids


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def learning_rate(step: int, steps: int, peak: float) -> float:
    """Linear warm-up over the first tenth of the run, then constant: enough for a short run."""
    warmup = max(1, steps // 10)
    return peak * min(1.0, (step + 1) / warmup)


def synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train(name: str, model: TinyGPT, source: DocumentSource, args, device: torch.device):
    """Trains `model` in place; returns (losses, step_seconds). `name` picks the attention."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1, betas=(0.9, 0.95))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    losses, seconds = [], []
    for step in range(args.steps):
        tokens, targets, position_ids = (t.to(device) for t in source.batch(step, args.batch))
        # The mask is data, built per batch from the position ids the packer wrote. It is built
        # outside the timed region: the timing compares attention, not mask construction.
        if name == "flashmask":
            attend = flashmask_attend(torch_masks.causal_document(position_ids=position_ids))
        else:
            attend = sdpa_attend(causal_document_dense(position_ids))
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr)

        synchronize(device)
        start = time.perf_counter()
        with autocast:
            logits = model(tokens, position_ids, attend)
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_TARGET)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
        losses.append(loss.item())
    return losses, seconds


def build_model(args, device: torch.device) -> TinyGPT:
    # Same seed, built on the CPU then moved: both runs start from identical weights.
    torch.manual_seed(args.seed)
    return TinyGPT(args.vocab, args.seq_len, args.d_model, args.layers, args.heads).to(device)


def check_masks_agree(source: DocumentSource, args, device: torch.device):
    """The dense mask handed to SDPA is written independently of flashmask; make sure the two
    describe the same visibility before comparing any losses."""
    _, _, position_ids = source.batch(0, args.batch)
    position_ids = position_ids.to(device)
    mask = torch_masks.causal_document(position_ids=position_ids)
    if not torch.equal(torch_masks.to_dense(mask), causal_document_dense(position_ids)):
        sys.exit("the flashmask mask and the dense SDPA mask differ: the comparison would be meaningless")


def write_curves(path: Path, args, losses, seconds, summary):
    rows = [{"step": step, "loss_flashmask": losses["flashmask"][step], "loss_sdpa": losses["sdpa"][step],
             "seconds_flashmask": seconds["flashmask"][step], "seconds_sdpa": seconds["sdpa"][step]}
            for step in range(args.steps)]
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        config = {**vars(args), "out": str(path)}
        path.write_text(json.dumps({"config": config, "summary": summary, "steps": rows}, indent=1) + "\n")


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda",
                        help="cuda: bf16 autocast; cpu: float32 (default: cuda)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seq-len", type=int, default=4096, help="tokens per packed row")
    parser.add_argument("--batch", type=int, default=8, help="packed rows per step")
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8, help="head dim = d_model / heads (64 or 128 on CUDA)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the curves here (.json or .csv)")
    parser.add_argument("--quiet", action="store_true", help="print only the summary, not every step")
    return parser.parse_args()


def main():
    args = parse_arguments()
    device = torch_device(args.device)
    source = DocumentSource(args.vocab, args.seq_len, args.seed)
    check_masks_agree(source, args, device)
    dtype = "bfloat16 autocast" if device.type == "cuda" else "float32"
    print(f"device {device} ({dtype}), {args.steps} steps of {args.batch} x {args.seq_len} tokens, "
          f"d_model {args.d_model}, {args.heads} heads of {args.d_model // args.heads}, {args.layers} layers")

    # One run after the other (not interleaved), so that neither sees the other's caches warm.
    losses, seconds = {}, {}
    for name in ("flashmask", "sdpa"):
        losses[name], seconds[name] = train(name, build_model(args, device), source, args, device)

    if not args.quiet:
        print(f"{'step':>5} {'flashmask':>10} {'sdpa':>10} {'|diff|':>10}")
        for step, (a, b) in enumerate(zip(losses["flashmask"], losses["sdpa"])):
            print(f"{step:5d} {a:10.6f} {b:10.6f} {abs(a - b):10.3e}")
    differences = [abs(a - b) for a, b in zip(losses["flashmask"], losses["sdpa"])]
    # The first steps pay for allocation and kernel selection: the median skips past them.
    summary = {
        "max_abs_loss_difference": max(differences),
        "final_loss_flashmask": losses["flashmask"][-1],
        "final_loss_sdpa": losses["sdpa"][-1],
        "median_step_seconds_flashmask": statistics.median(seconds["flashmask"]),
        "median_step_seconds_sdpa": statistics.median(seconds["sdpa"]),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
    }
    print(f"loss: first {losses['flashmask'][0]:.4f}, final flashmask {summary['final_loss_flashmask']:.4f} / "
          f"sdpa {summary['final_loss_sdpa']:.4f}; max |loss difference| {summary['max_abs_loss_difference']:.3e}")
    print(f"median step: flashmask {summary['median_step_seconds_flashmask'] * 1e3:.1f} ms, "
          f"sdpa + dense mask {summary['median_step_seconds_sdpa'] * 1e3:.1f} ms")
    if args.out is not None:
        write_curves(args.out, args, losses, seconds, summary)
        print(f"curves written to {args.out}")


if __name__ == "__main__":
    main()
