"""Transformer building blocks shared by every encoder and decoder.

Tokens are (B, L, D). Attention runs through ``torch.nn.functional.scaled_dot_product_attention``
so fused kernels (flash / memory-efficient on CUDA, the fused CPU kernel) are used where available.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop the residual branch per row of the batch (each person independently)."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class DropPath(nn.Module):
    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.p, self.training)


class Mlp(nn.Module):
    """Linear -> exact GELU -> Linear (ViT / MAMP feed-forward, spec/mamp-and-data.md A.4)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwiGLU(nn.Module):
    """Fused SwiGLU feed-forward (DINOv2 rule: hidden = round8(2/3 * mlp_ratio * dim); 688 for 256).

    spec/slim.md 2.3: ``w12`` maps D -> 2H, ``silu(x1) * x2`` then ``w3`` maps H -> D.
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


def swiglu_hidden(dim: int, mlp_ratio: float) -> int:
    """DINOv2's SwiGLU width: 2/3 of the GELU hidden size, rounded up to a multiple of 8."""
    hidden = int(dim * mlp_ratio * 2 / 3)
    return (hidden + 7) // 8 * 8


def rope_tables(positions: torch.Tensor, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables for 1-D rotary embeddings.

    positions: (B, L) integer temporal indices. Returns cos, sin of shape (B, 1, L, head_dim), the
    frequencies base^(-2i/head_dim) repeated for the two halves (rotate-half convention).
    """
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions.to(torch.float32)[..., None] * inv_freq  # (B, L, head_dim/2)
    angles = torch.cat([angles, angles], dim=-1)[:, None]  # (B, 1, L, head_dim)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, L, Dh) queries or keys by the tables from :func:`rope_tables`."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection and SDPA.

    With ``rope`` given as (cos, sin, num_prefix), queries and keys of the tokens after the first
    ``num_prefix`` (CLS / registers) are rotated; prefix tokens are not (spec/slim.md 2.2).
    """

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: tuple | None = None) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, H, L, Dh)
        if rope is not None:
            cos, sin, p = rope
            q = torch.cat([q[:, :, :p], apply_rope(q[:, :, p:], cos, sin)], dim=2)
            k = torch.cat([k[:, :, :p], apply_rope(k[:, :, p:], cos, sin)], dim=2)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-norm transformer block: x + DropPath(Attn(LN(x))), then x + DropPath(FFN(LN(x)))."""

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_ratio: float = 4.0,
        ffn: str = "gelu",
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        if ffn == "gelu":
            self.mlp: nn.Module = Mlp(dim, int(dim * mlp_ratio))
        elif ffn == "swiglu":
            self.mlp = SwiGLU(dim, swiglu_hidden(dim, mlp_ratio))
        else:
            raise ValueError(f"unknown feed-forward {ffn!r}")
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, rope: tuple | None = None) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), rope))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def init_weights(module: nn.Module) -> None:
    """MAE/MAMP init (spec A.9): xavier-uniform Linear weights, zero biases; LayerNorm 1/0."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def trunc_normal_(t: torch.Tensor, std: float = 0.02) -> torch.Tensor:
    """Truncated normal at +-2 (absolute, as timm): in effect untruncated for std 0.02."""
    return nn.init.trunc_normal_(t, std=std, a=-2.0, b=2.0)


def stochastic_depth_rates(max_rate: float, depth: int) -> list[float]:
    """Drop-path rates rising linearly from 0 to ``max_rate`` over the blocks (spec A.4)."""
    if depth <= 1:
        return [max_rate] * depth
    return [max_rate * i / (depth - 1) for i in range(depth)]


__all__ = [
    "Attention", "Block", "DropPath", "Mlp", "SwiGLU", "apply_rope", "drop_path", "init_weights",
    "rope_tables", "stochastic_depth_rates", "swiglu_hidden", "trunc_normal_", "math",
]
