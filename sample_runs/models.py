"""Model factories for the sample runs (importable as ``sample_runs.models:bn_cnn`` / ``:ln_transformer``).

Both take a batch of digit images shaped ``(N, 1, 8, 8)`` with pixel values scaled to [0, 1] and return
``(N, 10)`` logits. They are deliberately tiny (≈ 14 K and ≈ 18 K parameters) so that one checkpoint per
epoch stays small enough to commit, and both trace with ``torch.fx.symbolic_trace``.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn

NUM_CLASSES = 10
IMAGE_SIDE = 8


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    # No conv bias: BatchNorm's mean subtraction would cancel it, and without it the conv weight is
    # exactly scale-invariant (the property normscope's invariance analysis looks for).
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            bn=nn.BatchNorm2d(out_channels),
            relu=nn.ReLU(),
        )
    )


class BNCNN(nn.Module):
    """Three conv→BatchNorm→ReLU blocks (16, 32, 32 channels), two 2×2 max-pools, global average pool,
    and a linear head. The head is the only weight that is *not* scale-invariant."""

    def __init__(self, channels: tuple[int, int, int] = (16, 32, 32), num_classes: int = NUM_CLASSES):
        super().__init__()
        c1, c2, c3 = channels
        self.block1 = _conv_bn_relu(1, c1)
        self.block2 = _conv_bn_relu(c1, c2)
        self.pool1 = nn.MaxPool2d(2)  # 8×8 → 4×4
        self.block3 = _conv_bn_relu(c2, c3)
        self.pool2 = nn.MaxPool2d(2)  # 4×4 → 2×2
        self.head = nn.Linear(c3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.block2(self.block1(x)))
        x = self.pool2(self.block3(x))
        return self.head(x.mean(dim=(2, 3)))


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused qkv projection (written out so fx can trace it)."""

    def __init__(self, d_model: int, num_heads: int):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model {d_model} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens = x.size(0), x.size(1)
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # each (batch, heads, tokens, head_dim)
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.head_dim), dim=-1)
        mixed = (weights @ v).transpose(1, 2).reshape(batch, tokens, self.num_heads * self.head_dim)
        return self.proj(mixed)


class PreLNBlock(nn.Module):
    """x + Attn(LN(x)), then x + MLP(LN(x)): the residual stream itself is never normalized."""

    def __init__(self, d_model: int, num_heads: int, mlp_ratio: int = 2):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, num_heads)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, mlp_ratio * d_model), nn.GELU(), nn.Linear(mlp_ratio * d_model, d_model)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class RowTransformer(nn.Module):
    """Reads the 8×8 image as 8 row tokens of 8 pixels: linear embedding + learned positions,
    pre-LN blocks, a final LayerNorm, mean over tokens, linear head."""

    def __init__(
        self,
        d_model: int = 32,
        num_heads: int = 4,
        num_blocks: int = 2,
        num_classes: int = NUM_CLASSES,
    ):
        super().__init__()
        self.embed = nn.Linear(IMAGE_SIDE, d_model)
        self.pos = nn.Parameter(torch.zeros(1, IMAGE_SIDE, d_model))
        nn.init.normal_(self.pos, std=0.02)
        self.blocks = nn.ModuleList(PreLNBlock(d_model, num_heads) for _ in range(num_blocks))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x.reshape(x.size(0), IMAGE_SIDE, IMAGE_SIDE)) + self.pos
        for block in self.blocks:
            tokens = block(tokens)
        return self.head(self.ln_f(tokens).mean(dim=1))


def bn_cnn() -> BNCNN:
    """The BatchNorm CNN of run ``digits_bn_cnn_sgd`` (and ``digits_bn_cnn_lightning``)."""
    return BNCNN()


def ln_transformer() -> RowTransformer:
    """The pre-LN transformer of run ``digits_ln_transformer_adamw``."""
    return RowTransformer()
