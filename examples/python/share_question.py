"""One prompt and several answers in one packed row, scored in ONE forward pass, as DPO and
reward-model training do: the share-question mask lets every answer see the prompt and itself,
never another answer, so the prompt is encoded once instead of once per answer.

The example computes, for each answer, its sequence log-probability under a small GPT and a
scalar reward (a linear head on the answer's last token), plus the gradient of a DPO-style
weighted sum of the log-probabilities; then it runs each (prompt + answer) on its own with
plain causal attention (SDPA, is_causal=True) and checks that every number agrees within the
dtype's rounding. As a contrast it also scores the packed row with plain causal attention,
where later answers see earlier ones and the scores go wrong.

    python examples/python/share_question.py --device cpu     # float32
    python examples/python/share_question.py --device cuda    # bf16 autocast

See docs/examples.md for the output.
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F
from torch import nn

from flashmask import torch_masks
from tiny_gpt import Attend, TinyGPT, flashmask_attend, sdpa_attend, torch_device

# Largest relative difference accepted between the packed and the separate runs. float32
# differs only in summation order; bf16 autocast rounds every projection (~3 significant digits).
RELATIVE_TOLERANCE = {"cpu": 1e-4, "cuda": 3e-2}


class ScoredGPT(nn.Module):
    """A GPT with a reward head: what a DPO policy (log-probabilities) and a reward model (a
    scalar per sequence) both need from one forward pass."""

    def __init__(self, vocab_size: int, max_positions: int, d_model: int, n_layers: int, n_heads: int):
        super().__init__()
        self.gpt = TinyGPT(vocab_size, max_positions, d_model, n_layers, n_heads)
        self.reward_head = nn.Linear(d_model, 1)

    def forward(self, tokens, position_ids, attend: Attend):
        """Log-probabilities [B, N, vocab] (float32) and per-token rewards [B, N]."""
        hidden = self.gpt.hidden_states(tokens, position_ids, attend)
        log_probs = F.log_softmax(self.gpt.lm_head(hidden).float(), dim=-1)
        return log_probs, self.reward_head(hidden).float().squeeze(-1)


def answer_scores(log_probs, rewards, tokens, question_length: int, answer_starts, answer_lengths):
    """Per answer: the sum of log p(answer token | question, earlier tokens of that answer),
    and the reward read at the answer's last token. Works for the packed row (answers one
    after another) and for a single (question + answer) row alike (one answer at offset Q).

    The first token of every answer is predicted from the question's LAST token, not from the
    token before it in the packed row (which is the end of the previous answer): the one place
    where scoring a packed row differs from scoring a plain sequence."""
    log_probabilities, answer_rewards = [], []
    for start, length in zip(answer_starts, answer_lengths):
        predicted_from = torch.cat([torch.tensor([question_length - 1]), torch.arange(start, start + length - 1)])
        targets = tokens[0, start:start + length]
        log_probabilities.append(log_probs[0, predicted_from.to(targets.device), targets].sum())
        answer_rewards.append(rewards[0, start + length - 1])
    return torch.stack(log_probabilities), torch.stack(answer_rewards)


def packed_row(question, answers, device):
    """tokens, position_ids [1, N] and the answers' start offsets. Each answer's positions
    continue from the question's, as they would in (question + answer) alone."""
    q = len(question)
    tokens = torch.cat([question, *answers]).unsqueeze(0)
    positions = torch.cat([torch.arange(q)] + [torch.arange(q, q + len(a)) for a in answers]).unsqueeze(0)
    starts = (q + torch.tensor([0] + [len(a) for a in answers[:-1]]).cumsum(0)).tolist()
    return tokens.to(device), positions.to(device), starts


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def gradients(model: nn.Module, loss: torch.Tensor) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="cpu: float32; cuda: bf16 autocast (default: cpu)")
    parser.add_argument("--question-length", type=int, default=97)
    parser.add_argument("--answer-lengths", type=int, nargs="+", default=[40, 73, 18, 55])
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main():
    args = parse_arguments()
    device = torch_device(args.device)
    print(f"seed {args.seed}")
    torch.manual_seed(args.seed)
    longest = args.question_length + sum(args.answer_lengths)
    model = ScoredGPT(args.vocab, longest, args.d_model, args.layers, args.heads).to(device)
    question = torch.randint(args.vocab, (args.question_length,))
    answers = [torch.randint(args.vocab, (n,)) for n in args.answer_lengths]
    # DPO weighs the chosen answer +1 and a rejected one -1; random weights test every answer's gradient.
    answer_weights = torch.randn(len(answers), device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    # ONE forward over the packed row, under the share-question mask built from the lengths.
    tokens, position_ids, starts = packed_row(question, answers, device)
    mask = torch_masks.share_question([args.question_length], [args.answer_lengths], device=device)
    print(f"packed row: question {args.question_length} + answers {args.answer_lengths} = {tokens.shape[1]} "
          f"tokens; mask {mask.startend_row_indices.dtype} {list(mask.startend_row_indices.shape)}, "
          f"causal={mask.causal}")
    with autocast:
        log_probs, rewards = model(tokens, position_ids, flashmask_attend(mask))
    packed_log_p, packed_reward = answer_scores(log_probs, rewards, tokens, args.question_length, starts,
                                                args.answer_lengths)
    packed_gradient = gradients(model, (answer_weights * packed_log_p).sum())

    # The reference: each (question + answer) alone, plain causal attention, as many forwards as answers.
    separate_log_p, separate_reward = [], []
    for answer in answers:
        tokens_alone, positions_alone, _ = packed_row(question, [answer], device)
        with autocast:
            log_probs, rewards = model(tokens_alone, positions_alone, sdpa_attend(is_causal=True))
        log_p, reward = answer_scores(log_probs, rewards, tokens_alone, args.question_length,
                                      [args.question_length], [len(answer)])
        separate_log_p.append(log_p)
        separate_reward.append(reward)
    separate_log_p, separate_reward = torch.cat(separate_log_p), torch.cat(separate_reward)
    separate_gradient = gradients(model, (answer_weights * separate_log_p).sum())

    # The contrast: the packed row with plain causal attention lets answer k see answers 1..k-1.
    with torch.no_grad(), autocast:
        log_probs, rewards = model(tokens, position_ids, sdpa_attend(is_causal=True))
    leaky_log_p, _ = answer_scores(log_probs, rewards, tokens, args.question_length, starts, args.answer_lengths)

    print(f"{'answer':>6} {'length':>6} {'log p packed':>13} {'log p alone':>13} {'reward packed':>14} "
          f"{'reward alone':>13} {'log p, causal-only packing':>27}")
    for i, length in enumerate(args.answer_lengths):
        print(f"{i:6d} {length:6d} {packed_log_p[i].item():13.5f} {separate_log_p[i].item():13.5f} "
              f"{packed_reward[i].item():14.6f} {separate_reward[i].item():13.6f} {leaky_log_p[i].item():27.5f}")
    checks = {
        "log-probabilities": relative_difference(packed_log_p.detach(), separate_log_p.detach()),
        "rewards": relative_difference(packed_reward.detach(), separate_reward.detach()),
        "gradient of the weighted log-probabilities": relative_difference(packed_gradient, separate_gradient),
    }
    tolerance = RELATIVE_TOLERANCE[device.type]
    for name, difference in checks.items():
        print(f"packed vs separate, {name}: max relative difference {difference:.2e} (tolerance {tolerance:.0e})")
    print(f"causal-only packing instead (answers see earlier answers): max relative difference of the "
          f"log-probabilities {relative_difference(leaky_log_p, separate_log_p.detach()):.2e}")
    failed = [name for name, difference in checks.items() if not difference <= tolerance]
    if failed:
        sys.exit(f"packed and separate scores disagree: {', '.join(failed)}")
    print(f"OK: one packed forward scores {len(answers)} answers as {len(answers)} separate forwards do")


if __name__ == "__main__":
    main()
