"""A small GPT shared by the examples, with the attention passed in as a function.

The model never decides how attention is masked: each forward call takes an `attend(q, k, v)`
callable. The examples build one from flashmask (an O(N) column-interval mask) and one from
SDPA with the equivalent dense boolean mask, and run the *same* weights through both; any
difference in the outputs then comes from the attention alone.

q, k and v are handed to `attend` in BSHD ([batch, tokens, heads, head_dim]), flashmask's
layout; they are views of the fused QKV projection (last dimension contiguous), which
flashmask takes without a copy. The SDPA adapter transposes them to BHSD itself.
"""

from __future__ import annotations

import sys
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

import flashmask

# attend(q, k, v) -> out, all BSHD; out is [B, N, H, D].
Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

# GPT-2's initialisation: small weights keep the residual stream well scaled at init.
INIT_STD = 0.02


def torch_device(name: str) -> torch.device:
    """The --device of an example; exits with a hint when CUDA is asked for but torch sees no GPU."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda, but torch sees no GPU; pass --device cpu")
    return device


def flashmask_attend(mask: flashmask.Mask) -> Attend:
    """Attention under a flashmask Mask whose index tensor has the batch's B (or none)."""
    def attend(q, k, v):
        return flashmask.flashmask_attention(q, k, v, mask.startend_row_indices, causal=mask.causal)
    return attend


def sdpa_attend(dense_visible: torch.Tensor | None = None, *, is_causal: bool = False) -> Attend:
    """Attention with torch's scaled_dot_product_attention: a bool mask [B, 1, N, N] (True =
    visible, broadcast over heads) or plain causal attention."""
    def attend(q, k, v):
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             attn_mask=dense_visible, is_causal=is_causal)
        return out.transpose(1, 2)
    return attend


def causal_document_dense(position_ids: torch.Tensor) -> torch.Tensor:
    """The causal-document mask as an SDPA user writes it, straight from position ids that
    restart at 0 at each document: same document and key not after the query. Bool
    [B, 1, N, N], True = visible. Deliberately independent of flashmask.torch_masks, so that
    the comparison checks flashmask's builder too."""
    document_id = (position_ids == 0).cumsum(dim=1)                     # [B, N]
    same_document = document_id[:, :, None] == document_id[:, None, :]  # [B, Nq, Nk]
    n = position_ids.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool, device=position_ids.device).tril()
    return (same_document & causal).unsqueeze(1)


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, mlp_ratio: int):
        super().__init__()
        self.n_heads = n_heads
        self.attention_norm = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.attention_out = nn.Linear(d_model, d_model, bias=False)
        self.mlp_norm = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, mlp_ratio * d_model), nn.GELU(),
                                 nn.Linear(mlp_ratio * d_model, d_model))

    def forward(self, x: torch.Tensor, attend: Attend) -> torch.Tensor:
        batch, n, d_model = x.shape
        qkv = self.qkv(self.attention_norm(x)).view(batch, n, 3, self.n_heads, d_model // self.n_heads)
        q, k, v = qkv.unbind(2)  # BSHD views: no copy before the attention
        x = x + self.attention_out(attend(q, k, v).reshape(batch, n, d_model))
        return x + self.mlp(self.mlp_norm(x))


class TinyGPT(nn.Module):
    """Pre-norm GPT with learned absolute positions. Positions come from the caller
    (`position_ids`) so that packed documents each start again at position 0, exactly as if
    each had been run alone."""

    def __init__(self, vocab_size: int, max_positions: int, d_model: int, n_layers: int, n_heads: int,
                 mlp_ratio: int = 4):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model = {d_model} is not a multiple of n_heads = {n_heads}")
        self.token_embedding = nn.Embedding(vocab_size, d_model)
        self.position_embedding = nn.Embedding(max_positions, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, mlp_ratio) for _ in range(n_layers))
        self.final_norm = nn.LayerNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        self.lm_head.weight = self.token_embedding.weight  # tied, as in GPT-2
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=INIT_STD)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    def hidden_states(self, tokens: torch.Tensor, position_ids: torch.Tensor, attend: Attend) -> torch.Tensor:
        x = self.token_embedding(tokens) + self.position_embedding(position_ids)
        for block in self.blocks:
            x = block(x, attend)
        return self.final_norm(x)

    def forward(self, tokens: torch.Tensor, position_ids: torch.Tensor, attend: Attend) -> torch.Tensor:
        """Logits [B, N, vocab]."""
        return self.lm_head(self.hidden_states(tokens, position_ids, attend))


__all__ = ["Attend", "Block", "TinyGPT", "causal_document_dense", "flashmask_attend", "sdpa_attend"]
