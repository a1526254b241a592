"""A straightforward fp32 eager MAMP model: the baseline of ``skel benchmark --baseline eager``.

Written plainly after the reference repository's structure as described in
spec/mamp-and-data.md A (not copied): Conv2d patch embedding with kernel = stride = (4, 1),
factorised learnable position embeddings, pre-norm blocks with **explicit**
softmax(Q K^T * scale) V attention (no fused kernel), encoder on the 74 visible tokens,
a decoder over all 750 tokens, the per-patch normalised stride-1 motion target, MSE on masked
tokens. It exists only to answer "is our MAMP step at least as fast as the obvious
implementation?" (issue 8); it is never used for training.

Input layout: (N, C=3, T=120, V=25, M=2), as the reference feeder yields it (spec A.1).
"""

from __future__ import annotations

import torch
from torch import nn


class RefAttention(nn.Module):
    """Multi-head self-attention with the attention matrix materialised (spec A.4)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, H, N, Dh)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(x)


class RefBlock(nn.Module):
    """Pre-norm ViT block: LN -> attention -> residual, LN -> MLP(GELU) -> residual."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = RefAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ReferenceMAMP(nn.Module):
    """MAMP pretraining model, reference structure (spec A.2-A.8). Paper size by default.

    ``forward(x)`` takes (N, 3, T, V, M) and returns the scalar masked-motion loss.
    """

    def __init__(
        self,
        frames: int = 120,
        joints: int = 25,
        t_patch: int = 4,
        dim: int = 256,
        depth: int = 8,
        heads: int = 8,
        decoder_depth: int = 3,
        mask_ratio: float = 0.9,
        tau: float = 0.80,
    ) -> None:
        super().__init__()
        self.t_patch, self.mask_ratio, self.tau = t_patch, mask_ratio, tau
        self.segments = frames // t_patch
        self.joints = joints
        self.patch_embed = nn.Conv2d(3, dim, kernel_size=(t_patch, 1), stride=(t_patch, 1))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1, joints, dim))
        self.temp_embed = nn.Parameter(torch.zeros(1, self.segments, 1, dim))
        self.blocks = nn.ModuleList(RefBlock(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.decoder_embed = nn.Linear(dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, 1, joints, dim))
        self.decoder_temp_embed = nn.Parameter(torch.zeros(1, self.segments, 1, dim))
        self.decoder_blocks = nn.ModuleList(RefBlock(dim, heads) for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(dim)
        self.decoder_pred = nn.Linear(dim, t_patch * 3)
        for p in (self.pos_embed, self.temp_embed, self.mask_token, self.decoder_pos_embed, self.decoder_temp_embed):
            nn.init.trunc_normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, V, 3) -> (B, Tp*V, t_patch*3), time-major tokens, frame-major then xyz."""
        b, t, v, c = x.shape
        x = x.reshape(b, t // self.t_patch, self.t_patch, v, c).permute(0, 1, 3, 2, 4)
        return x.reshape(b, (t // self.t_patch) * v, self.t_patch * c)

    def masking(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Motion-aware Gumbel-top-k masking (spec A.6). x: (B, T, V, 3).

        Returns ids_keep (B, K), ids_restore (B, L), mask (B, L) with 1 = masked.
        """
        p = self.patches(x).reshape(x.shape[0], self.segments, self.joints, -1)
        d = (p[:, 1:] - p[:, :-1]).abs().mean(dim=-1)
        d = torch.cat([d[:, :1], d], dim=1).flatten(1)  # (B, L)
        b, length = d.shape
        keep = int(length * (1 - self.mask_ratio))
        s = d / (self.tau * d.max(dim=1, keepdim=True).values + 1e-10)
        logp = torch.log_softmax(s, dim=1)
        u = torch.rand_like(logp)
        score = logp - torch.log(-torch.log(u + 1e-10) + 1e-10)
        ids_shuffle = torch.argsort(score, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        mask = torch.ones(b, length, device=x.device)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        return ids_shuffle[:, :keep], ids_restore, mask

    def forward_encoder(self, x: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """x: (B, T, V, 3) -> (B, K, D) visible tokens through the blocks."""
        tok = self.patch_embed(x.permute(0, 3, 1, 2))  # (B, D, Tp, V)
        tok = tok.permute(0, 2, 3, 1) + self.pos_embed + self.temp_embed  # (B, Tp, V, D)
        b, tp, v, d = tok.shape
        tok = tok.reshape(b, tp * v, d)
        tok = torch.gather(tok, 1, ids_keep.unsqueeze(-1).expand(-1, -1, d))
        for blk in self.blocks:
            tok = blk(tok)
        return self.norm(tok)

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """(B, K, D) -> (B, L, t_patch*3) predictions for every token."""
        y = self.decoder_embed(latent)
        b, k, d = y.shape
        length = ids_restore.shape[1]
        y = torch.cat([y, self.mask_token.expand(b, length - k, d)], dim=1)
        y = torch.gather(y, 1, ids_restore.unsqueeze(-1).expand(-1, -1, d))
        y = y.reshape(b, self.segments, self.joints, d) + self.decoder_pos_embed + self.decoder_temp_embed
        y = y.reshape(b, length, d)
        for blk in self.decoder_blocks:
            y = blk(y)
        return self.decoder_pred(self.decoder_norm(y))

    def target(self, x: torch.Tensor) -> torch.Tensor:
        """Stride-1 forward frame difference, patched, normalised per patch (spec A.8)."""
        motion = torch.zeros_like(x)
        motion[:, :-1] = x[:, 1:] - x[:, :-1]
        y = self.patches(motion)
        mean = y.mean(dim=-1, keepdim=True)
        var = y.var(dim=-1, keepdim=True)
        return (y - mean) / (var + 1e-6) ** 0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, 3, T, V, M) -> scalar loss (MSE over masked tokens)."""
        n, c, t, v, m = x.shape
        x = x.permute(0, 4, 2, 3, 1).reshape(n * m, t, v, c)
        ids_keep, ids_restore, mask = self.masking(x)
        pred = self.forward_decoder(self.forward_encoder(x, ids_keep), ids_restore)
        err = ((pred - self.target(x)) ** 2).mean(dim=-1)
        return (err * mask).sum() / mask.sum()
