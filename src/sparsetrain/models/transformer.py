"""A small GPT-style causal transformer for character-level language modelling.

References:
    Radford et al. 2019, "Language Models are Unsupervised Multitask Learners" (GPT-2: pre-norm
    blocks, GELU MLP of 4x width, learned positions, the head tied to the token embedding, normal
    init with std 0.02 and residual projections scaled by 1/sqrt(2 * layers)).

Parameter names, for ``include``/``exclude`` patterns: ``tok_emb.weight``, ``pos_emb``,
``blocks.{i}.attn.qkv.weight`` (query, key and value stacked: 3d x d), ``blocks.{i}.attn.proj``,
``blocks.{i}.mlp.fc``, ``blocks.{i}.mlp.proj``, norms ``ln1``/``ln2``/``ln_f``; the head
``head.weight`` is the embedding. ``include=["blocks.*"]`` selects exactly the attention and MLP
projections.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sparsetrain.models._registry import expect_rank, register_model


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention with a causal mask (``scaled_dot_product_attention``)."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        if d % heads:
            raise ValueError(f"width {d} is not divisible by heads={heads}")
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, heads, L, d/heads)
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


class FeedForward(nn.Module):
    """``fc → GELU → proj``, ``mult`` times the width inside."""

    def __init__(self, d: int, mult: int) -> None:
        super().__init__()
        self.fc = nn.Linear(d, mult * d)
        self.proj = nn.Linear(mult * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    """Pre-norm residual block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``."""

    def __init__(self, d: int, heads: int, mult: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = CausalSelfAttention(d, heads)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = FeedForward(d, mult)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class CausalTransformer(nn.Module):
    """Token ids ``(B, L)`` → next-token logits ``(B, L, vocab)``.

    Args:
        vocab: Vocabulary size.
        context: Longest sequence (positions learned up to it).
        width: Model width ``d``.
        layers: Number of blocks.
        heads: Attention heads.
        mlp_mult: MLP hidden width as a multiple of ``d``.

    >>> model = CausalTransformer(vocab=11, context=8, width=16, layers=1, heads=2)
    >>> model(torch.zeros(2, 5, dtype=torch.long)).shape
    torch.Size([2, 5, 11])
    """

    def __init__(
        self, vocab: int, context: int, width: int, layers: int, heads: int, mlp_mult: int = 4
    ) -> None:
        super().__init__()
        self.tok_emb = nn.Embedding(vocab, width)
        self.pos_emb = nn.Parameter(torch.zeros(context, width))
        self.blocks = nn.ModuleList(Block(width, heads, mlp_mult) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.tok_emb.weight
        self._init(layers)

    def _init(self, layers: int) -> None:
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() >= 2:
                resid = name.endswith(("attn.proj.weight", "mlp.proj.weight"))
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * layers) if resid else 0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[1]
        if n > self.pos_emb.shape[0]:
            raise ValueError(
                f"sequence of {n} tokens is longer than context {self.pos_emb.shape[0]}"
            )
        x = self.tok_emb(tokens) + self.pos_emb[:n]
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


@register_model(
    "gpt_tiny", description="GPT-style causal transformer for character LMs (2 x 64 wide)"
)
def gpt_tiny(
    *,
    num_classes: int,
    input_shape: tuple[int, ...],
    width: int = 64,
    layers: int = 2,
    heads: int = 4,
    mlp_mult: int = 4,
) -> CausalTransformer:
    """A :class:`CausalTransformer`: ``num_classes`` is the vocabulary, ``input_shape`` ``(L,)``."""
    expect_rank("gpt_tiny", input_shape, 1, "(64,) (tokens per example)")
    return CausalTransformer(num_classes, input_shape[0], width, layers, heads, mlp_mult)
