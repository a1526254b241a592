"""The MAE-style decoder shared by MAE and MAMP (spec/mamp-and-data.md A.7).

Encoder output of the visible tokens (B, K, D) -> ``decoder_embed`` Linear(D -> Dd) -> append
L - K copies of a learnable mask token -> unshuffle with ``ids_restore`` into the original
(time-major, l = t * V + v) token order -> add the decoder's own learnable joint and temporal
position embeddings -> ``depth`` transformer :class:`~skelcli.models.layers.Block` s over all L
tokens -> LayerNorm -> Linear(Dd -> t_patch * C). Output (B, L, t_patch * C).

Paper sizes (spec A.9): depth 3 = 2,453,004 parameters, depth 5 = 4,032,524 (width 256, 8 heads,
750 tokens, 12 outputs per token).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from skelcli.models.layers import Block, init_weights, trunc_normal_
from skelcli.settings import StrictModel


class DecoderConfig(StrictModel):
    """Width/depth of the pretraining decoder; defaults = MAMP NTU60 (spec A.7: depth 3, width 256, 8 heads)."""

    dim: int = Field(256, ge=8)
    depth: int = Field(3, ge=1, description="3 for NTU60, 5 for NTU120 and PKU (spec A.7); resolved per dataset by the presets")
    heads: int = Field(8, ge=1)
    mlp_ratio: float = 4.0


class MaskedDecoder(nn.Module):
    """Reconstruct a per-token target from the visible tokens' encodings (spec A.7)."""

    def __init__(self, enc_dim: int, num_segments: int, num_joints: int, out_dim: int, config: DecoderConfig | None = None) -> None:
        super().__init__()
        cfg = config or DecoderConfig()
        self.config = cfg
        self.num_segments = num_segments
        self.num_joints = num_joints
        d = cfg.dim
        self.decoder_embed = nn.Linear(enc_dim, d)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, 1, num_joints, d))
        self.decoder_temp_embed = nn.Parameter(torch.zeros(1, num_segments, 1, d))
        # The decoder's drop-path rate is 0 in pretraining (spec A.4).
        self.blocks = nn.ModuleList(Block(d, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(d)
        self.pred = nn.Linear(d, out_dim)
        self.apply(init_weights)
        for p in (self.mask_token, self.decoder_pos_embed, self.decoder_temp_embed):
            trunc_normal_(p)

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """latent: (B, K, D_enc) visible-token encodings in ``ids_keep`` order; ids_restore: (B, L).

        Returns predictions (B, L, out_dim) in the original token order.
        """
        x = self.decoder_embed(latent)
        b, k, d = x.shape
        length = ids_restore.shape[1]
        x = torch.cat([x, self.mask_token.to(x.dtype).expand(b, length - k, d)], dim=1)
        x = torch.gather(x, 1, ids_restore[..., None].expand(-1, -1, d))
        x = x.reshape(b, self.num_segments, self.num_joints, d) + self.decoder_pos_embed + self.decoder_temp_embed
        x = x.reshape(b, length, d)
        for blk in self.blocks:
            x = blk(x)
        return self.pred(self.norm(x))
