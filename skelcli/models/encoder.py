"""The one configurable skeleton transformer encoder used by every method.

Input per person-sequence: ``x`` of shape (B, T, V, C) with B = N*M (persons are independent
sequences, spec/mamp-and-data.md A.1). Temporal patching cuts each joint's trajectory into
segments of ``t_patch`` frames: Tp = T / t_patch segments, L = Tp * V tokens, flattened
time-major (token index l = t * V + v, spec A.2). A token is a linear map of its t_patch * C
numbers (equivalent to MAMP's Conv2d with kernel = stride = (t_patch, 1)).

Two configurations matter:

* MAE / MAMP / GFP (spec A.2-A.5): T=120, t_patch=4 -> 750 tokens, learnable factorised joint and
  temporal position embeddings added before masking, GELU MLP, no CLS. During pretraining only
  the visible tokens (``ids_keep``) go through the blocks. 6,336,000 parameters at paper size.
* SLiM (spec/slim.md 2.2-2.3): T=64, t_patch=8 -> 200 tokens, a learnable mask token substituted
  for masked patch embeddings *before* the joint embedding, learnable joint embedding (plus one for
  CLS), rotary temporal positions on patch tokens only, CLS + 4 register tokens in front,
  SwiGLU (hidden 688), LayerNorm eps 1e-6. About 6.37 M parameters.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from skelcli.models.layers import Block, init_weights, rope_tables, stochastic_depth_rates, trunc_normal_
from skelcli.settings import StrictModel


class EncoderConfig(StrictModel):
    """Shape and options of :class:`SkeletonEncoder`. Defaults = the MAMP paper encoder (spec A.5)."""

    num_frames: int = Field(120, ge=1, le=10_000, description="input frames T (learned temporal PE needs exactly this)")
    t_patch: int = Field(4, ge=1, description="frames per token l")
    num_joints: int = Field(25, ge=1, le=1024)
    in_chans: int = Field(3, ge=1, le=16)
    # Upper bounds far above any published skeleton encoder (paper: 256 x 8): a typo or a damaged
    # checkpoint config fails here instead of allocating tens of GB.
    dim: int = Field(256, ge=8, le=16_384)
    depth: int = Field(8, ge=1, le=256)
    heads: int = Field(8, ge=1, le=1024)
    mlp_ratio: float = Field(4.0, gt=0, le=64)
    ffn: Literal["gelu", "swiglu"] = "gelu"
    temporal_pos: Literal["learned", "rope"] = "learned"
    use_cls: bool = False
    num_registers: int = Field(0, ge=0, le=1024)
    mask_token: bool = Field(False, description="learnable mask token substituted before the joint embedding (SLiM)")
    qkv_bias: bool = True
    norm_eps: float = 1e-5
    drop_path: float = Field(0.0, ge=0, lt=1)
    rope_base: float = 10000.0
    pool: Literal["mean", "cls_mean"] = Field(
        "mean", description="downstream feature: mean of all tokens (MAMP) or CLS || mean patch tokens (SLiM)"
    )
    init: Literal["mamp", "slim"] = Field(
        "mamp", description="initialisation: MAMP's (xavier Linear, trunc-normal 0.02 embeddings) or SLiM's "
        "official init_weights_vit_timm (trunc-normal 0.02 Linear, CLS / registers N(0, 1e-6), mask token 0)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> "EncoderConfig":
        """Cross-field rules, checked at parse time so that ``--set`` and config files fail naming the fields."""
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        if self.temporal_pos == "rope" and (self.dim // self.heads) % 2:
            raise ValueError(f"temporal_pos='rope' needs an even head width dim / heads, got {self.dim} / {self.heads}")
        if self.num_frames % self.t_patch:
            raise ValueError(f"num_frames ({self.num_frames}) must be a multiple of t_patch ({self.t_patch})")
        if self.pool == "cls_mean" and not self.use_cls:
            raise ValueError("pool='cls_mean' needs use_cls=True")
        return self

    @property
    def num_segments(self) -> int:
        return self.num_frames // self.t_patch

    @property
    def num_tokens(self) -> int:
        return self.num_segments * self.num_joints

    @property
    def num_prefix(self) -> int:
        return int(self.use_cls) + self.num_registers

    @property
    def feature_dim(self) -> int:
        return 2 * self.dim if self.pool == "cls_mean" else self.dim


def patchify(x: torch.Tensor, t_patch: int) -> torch.Tensor:
    """(B, T, V, C) -> (B, T/l, V, l*C); the l*C numbers are ordered frame-major then xyz (spec A.6)."""
    b, t, v, c = x.shape
    if t % t_patch:
        raise ValueError(f"{t} frames are not a multiple of the temporal patch {t_patch}")
    return x.reshape(b, t // t_patch, t_patch, v, c).permute(0, 1, 3, 2, 4).reshape(b, t // t_patch, v, t_patch * c)


class SkeletonEncoder(nn.Module):
    """Skeleton transformer; see the module docstring for the two standard configurations."""

    def __init__(self, config: EncoderConfig | None = None) -> None:
        super().__init__()
        cfg = config or EncoderConfig()
        if cfg.num_frames % cfg.t_patch:
            raise ValueError(f"num_frames {cfg.num_frames} must be a multiple of t_patch {cfg.t_patch}")
        if cfg.pool == "cls_mean" and not cfg.use_cls:
            raise ValueError("pool='cls_mean' needs use_cls=True")
        self.config = cfg
        d = cfg.dim
        self.patch_embed = nn.Linear(cfg.t_patch * cfg.in_chans, d)
        self.joint_embed = nn.Parameter(torch.zeros(1, 1, cfg.num_joints, d))
        if cfg.temporal_pos == "learned":
            self.temp_embed = nn.Parameter(torch.zeros(1, cfg.num_segments, 1, d))
        else:
            self.register_parameter("temp_embed", None)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d)) if cfg.use_cls else None
        # SLiM gives CLS its own row of the position table (spec/slim.md 2.2: 26 rows).
        self.cls_pos = nn.Parameter(torch.zeros(1, 1, d)) if cfg.use_cls else None
        self.registers = nn.Parameter(torch.zeros(1, cfg.num_registers, d)) if cfg.num_registers else None
        self.mask_embed = nn.Parameter(torch.zeros(1, 1, d)) if cfg.mask_token else None
        rates = stochastic_depth_rates(cfg.drop_path, cfg.depth)
        self.blocks = nn.ModuleList(
            Block(d, cfg.heads, cfg.mlp_ratio, cfg.ffn, cfg.qkv_bias, rates[i], cfg.norm_eps) for i in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(d, eps=cfg.norm_eps)
        self._init()

    def _init(self) -> None:
        patch_state = {k: v.clone() for k, v in self.patch_embed.state_dict().items()}
        if self.config.init == "slim":
            # SLiM's DinoVisionTransformer.init_weights (slim/models/vision_transformer.py): every Linear
            # trunc-normal 0.02 with zero bias, the position table trunc-normal 0.02, CLS and registers
            # N(0, 1e-6), the mask token left at 0; LayerNorm 1 / 0.
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    trunc_normal_(m.weight)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                elif isinstance(m, nn.LayerNorm):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
            embeds, tiny = (self.joint_embed, self.temp_embed, self.cls_pos), (self.cls_token, self.registers)
        else:
            self.apply(init_weights)
            embeds, tiny = (self.joint_embed, self.temp_embed, self.cls_token, self.cls_pos, self.registers, self.mask_embed), ()
        # The patch embedding keeps PyTorch's default init, as MAMP's and SLiM's Conv2d do (spec A.9).
        self.patch_embed.load_state_dict(patch_state)
        for p in embeds:
            if p is not None:
                trunc_normal_(p)
        for p in tiny:
            if p is not None:
                nn.init.normal_(p, std=1e-6)

    # ------------------------------------------------------------------ tokens
    def embed(self, x: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Patch tokens with positions, before masking or blocks.

        x: (B, T, V, C). token_mask: optional (B, L) bool, True = replaced by the mask token before
        the joint embedding (SLiM). Returns (B, L, D), L = T/l * V, time-major.
        """
        cfg = self.config
        tok = self.patch_embed(patchify(x, cfg.t_patch))  # (B, Tp, V, D)
        b, tp, v, d = tok.shape
        if token_mask is not None:
            if self.mask_embed is None:
                raise ValueError("this encoder was built without a mask token (mask_token=False)")
            tok = torch.where(token_mask.reshape(b, tp, v, 1), self.mask_embed.to(tok.dtype).expand(b, tp, v, d), tok)
        tok = tok + self.joint_embed
        if self.temp_embed is not None:
            if tp != self.temp_embed.shape[1]:
                raise ValueError(f"learned temporal embedding expects {self.temp_embed.shape[1] * cfg.t_patch} frames, got {tp * cfg.t_patch}")
            tok = tok + self.temp_embed
        return tok.reshape(b, tp * v, d)

    def _prefix(self, b: int) -> torch.Tensor | None:
        parts = []
        if self.cls_token is not None:
            parts.append((self.cls_token + self.cls_pos).expand(b, -1, -1))
        if self.registers is not None:
            parts.append(self.registers.expand(b, -1, -1))
        return torch.cat(parts, dim=1) if parts else None

    def run_blocks(self, tokens: torch.Tensor, token_index: torch.Tensor | None = None) -> torch.Tensor:
        """Prepend CLS/registers, run the blocks and the final norm.

        tokens: (B, L', D) patch tokens (all, or a visible subset). token_index: (B, L') original
        token indices of those tokens (needed for RoPE; defaults to 0..L'-1). Returns
        (B, P + L', D) with P = num_prefix tokens first.
        """
        tokens, rope = self._block_inputs(tokens, token_index)
        for blk in self.blocks:
            tokens = blk(tokens, rope)
        return self.norm(tokens)

    def _block_inputs(self, tokens: torch.Tensor, token_index: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple | None]:
        """The blocks' input: CLS/registers prepended to ``tokens`` (B, L', D) -> (B, P + L', D), and
        the RoPE tables (cos, sin, num_prefix) of ``token_index`` (None without RoPE)."""
        cfg = self.config
        b, n, _ = tokens.shape
        prefix = self._prefix(b)
        if prefix is not None:
            tokens = torch.cat([prefix.to(tokens.dtype), tokens], dim=1)
        rope = None
        if cfg.temporal_pos == "rope":
            if token_index is None:
                token_index = torch.arange(n, device=tokens.device).expand(b, n)
            cos, sin = rope_tables(torch.div(token_index, cfg.num_joints, rounding_mode="floor"), cfg.dim // cfg.heads, cfg.rope_base)
            rope = (cos, sin, cfg.num_prefix)
        return tokens, rope

    def get_intermediate_layers(self, x: torch.Tensor, n: int = 1) -> list[torch.Tensor]:
        """Outputs of the last ``n`` blocks for full, unmasked clips, each through the final norm.

        DINOv2 / SLiM ``get_intermediate_layers(x, n, norm=True)`` [S slim/models/vision_transformer.py]:
        x (B, T, V, C) -> a list of ``n`` tensors (B, P + L, D), oldest block first, prefix tokens
        (CLS, registers) first as in :meth:`run_blocks`; the last element equals
        :meth:`forward_features` ``(x)``. Splitting off CLS / patch tokens is the caller's job.
        """
        depth = len(self.blocks)
        if not 1 <= n <= depth:
            raise ValueError(f"n must be in 1..{depth} (the encoder's depth), got {n}")
        tokens, rope = self._block_inputs(self.embed(x))
        outputs = []
        for i, blk in enumerate(self.blocks):
            tokens = blk(tokens, rope)
            if i >= depth - n:
                outputs.append(self.norm(tokens))
        return outputs

    def forward_features(
        self,
        x: torch.Tensor,
        ids_keep: torch.Tensor | None = None,
        token_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Encode a batch of person-sequences.

        x: (B, T, V, C). ids_keep: optional (B, K) indices of the visible tokens (MAE-style
        masking: only those go through the blocks). token_mask: optional (B, L) bool for mask-token
        substitution (SLiM-style: every token goes through the blocks). Returns (B, P + K or L, D).
        """
        tokens = self.embed(x, token_mask)
        index = None
        if ids_keep is not None:
            tokens = torch.gather(tokens, 1, ids_keep[..., None].expand(-1, -1, tokens.shape[-1]))
            index = ids_keep
        return self.run_blocks(tokens, index)

    def pool(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, P + L, D) -> (B, feature_dim): mean of the tokens (MAMP) or CLS || mean patch (SLiM)."""
        p = self.config.num_prefix
        patch_mean = feats[:, p:].mean(dim=1)
        if self.config.pool == "cls_mean":
            return torch.cat([feats[:, 0], patch_mean], dim=-1)
        return patch_mean

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Downstream features of full, unmasked clips: (B, T, V, C) -> (B, feature_dim)."""
        return self.pool(self.forward_features(x))

    @property
    def feature_dim(self) -> int:
        return self.config.feature_dim


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
