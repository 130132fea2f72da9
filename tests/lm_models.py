"""Tiny language models for the target-selection tests: a transformer block and an LSTM.

Both read token ids ``(batch, seq)`` and return logits ``(batch, seq, vocab)``; every weight
tensor kind outside Linear/Conv appears once: ``MultiheadAttention.in_proj_weight`` (3E x E),
LSTM ``weight_ih_l*`` / ``weight_hh_l*`` (4H x in), and an Embedding tied to the output head.
"""

from __future__ import annotations

import torch
from torch import nn

VOCAB = 11
SEQ = 6


class TinyTransformerLM(nn.Module):
    """Embedding → self-attention → feed-forward → head, the head tied to the embedding."""

    def __init__(self, d: int = 8, heads: int = 2, ff: int = 16, tied: bool = True) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.norm1 = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, ff), nn.ReLU(), nn.Linear(ff, d))
        self.norm2 = nn.LayerNorm(d)
        self.head = nn.Linear(d, VOCAB, bias=False)
        if tied:
            self.head.weight = self.emb.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.emb(x)  # (B, L, d)
        a, _ = self.attn(h, h, h, need_weights=False)
        h = self.norm1(h + a)
        h = self.norm2(h + self.ff(h))
        return self.head(h)  # (B, L, vocab)


class TinyLSTMLM(nn.Module):
    """Embedding → 2-layer LSTM → head."""

    def __init__(self, d: int = 8, hidden: int = 12, layers: int = 2) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, d)
        self.rnn = nn.LSTM(d, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, VOCAB)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn(self.emb(x))  # (B, L, hidden)
        return self.head(h)


def make_lm(kind: str, seed: int = 0) -> nn.Module:
    """A seeded ``"transformer"`` or ``"lstm"`` model."""
    torch.manual_seed(seed)
    return TinyTransformerLM() if kind == "transformer" else TinyLSTMLM()


def lm_batch(step: int, batch: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens and next-token targets of a deterministic toy sequence task."""
    g = torch.Generator().manual_seed(500 + step)
    x = torch.randint(0, VOCAB, (batch, SEQ), generator=g)
    return x, (x + 1) % VOCAB


def lm_step(model: nn.Module, opt: torch.optim.Optimizer, step: int) -> float:
    """One training step on :func:`lm_batch`; returns the loss."""
    x, y = lm_batch(step)
    loss = nn.functional.cross_entropy(model(x).reshape(-1, VOCAB), y.reshape(-1))
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()
