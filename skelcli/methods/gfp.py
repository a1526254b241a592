"""GFP: hierarchical general feature prediction with a jointly trained Target Generation Network.

Sun et al., "Towards Efficient General Feature Prediction in Masked Skeleton Modeling", ICCV 2025
(arXiv 2509.03609). No official code exists; every choice the paper leaves open is a setting of
:class:`GfpSettings` and the recommended option of spec/gfp.md section 7 is the default.

Per person-sequence batch (B = N*M, T, V, C), time-major tokens l = t*V + v (spec/gfp.md 2.6, 8)::

    x ─patchify(l)─> S*V tokens ─motion-aware mask 90%─> K visible ─encoder─> h (B, K, D)
    h ─Linear─> + mask tokens, unshuffle, + decoder PEs ─> E (B, S, V, Dd)
      └ avgpool_T(k1) ─blocks─> head ─> P1 (B, S/k1 * V, Ct)          paper: 150 targets (20 frames/joint)
          └ avgpool_T(k2) ─blocks─> head ─> P2                         paper:  75 targets (40 frames/joint)
              └ avgpool_T(k3) ─blocks─> head ─> P3                     paper:  25 targets (whole clip/joint)
                  └ mean over all tokens ─blocks─> head ─> P4 (B, 1, Ct)  global target
    motion(x) (full, unmasked) ─group into the same windows─> per-level MLP ─> Z1..Z4  (no stop-gradient)
    L = lambda * MSE(P, Z) + sum_j [cov_weight * Cov(Z_j) + var_weight * Var(Z_j)]

Choices (spec/gfp.md section 7, [UNKNOWN]/[INFERRED] in the paper; setting in brackets):

1. t1/t2/t3 = 5/10/30 are cumulative kernels in *patch* units: stage kernels 5, 2, 3, then a mean
   over joints -> 150/75/25/1 = 251 targets [``pool_kernels``; None = derived from the segment
   count by :func:`derive_pool_kernels`, which gives (5, 2, 3) for 30 segments].
2. Decoder blocks per level 2/1/1/1, width 256, 8 heads, FFN 1024 (reproduces the 1.57 GFLOPs)
   [``level_blocks``, ``decoder_dim``, ``decoder_heads``, ``decoder_mlp_ratio``].
3. Pooling starts on E_N before any decoder block; later levels pool the previous level's decoder
   output (true cascade); the global level averages all remaining tokens (= joint mean after
   level 3) [fixed: required by the FLOP budget].
4. Target dim C_t = C_p = 256, a LayerNorm + Linear(Dd -> C_t) head per level [``target_dim``,
   ``head_norm``]. Decoder embedding Linear(D -> Dd), mask token and learned joint + temporal
   decoder PEs as MAMP (spec A.7).
5. TGN input = frame-level motion x[t+1] - x[t] of the full unmasked clip (last frame 0), grouped
   into each level's windows (per joint 20/40/120 frames, global = whole clip) and flattened;
   per-level MLP Linear-BN-ReLU-Linear-BN-ReLU-Linear, hidden 512/512/512/2048 [``tgn_input``
   ("motion" | "position"), ``tgn_hidden``, ``tgn_layers``]. TGN Linear layers keep PyTorch's
   default init (as VICReg's expander); the decoder uses the MAE init.
6. No stop-gradient and no EMA: the prediction loss trains both decoder and TGN [fixed].
7. MSE = squared error averaged over channels (F.mse_loss style), averaged over all stacked targets
   (M = 251 per sequence, and over the batch) [``loss_reduction`` = "stacked" | "per_level" (mean per
   level, then averaged over levels); ``pred_channels`` = "mean" | "sum" (the literal (1/M)||P - Z||_F^2,
   C_t times stronger against the variance term: it collapsed the targets at paper size, target std
   0.045-0.058 against 0.15-0.21 with "mean", issue 17; ``--set method.pred_channels=sum``)].
8. VICReg variance (gamma 1, eps 1e-4) and covariance terms per level on the TGN outputs only,
   rows = batch x tokens of the level [``var_gamma``, ``var_eps``].
9. Weights lambda = 5, cov = 5, var = 1 [``pred_weight``, ``cov_weight``, ``var_weight``] ([VERIFY]
   a possible cov/var swap: watch ``target_std_*`` in the metrics).
10. Motion-aware masking ratio 0.9, tau 0.80 NTU60/PKU, 0.75 NTU120 [``mask_ratio``, ``tau``;
    tau resolved per dataset by :meth:`GfpSettings.preset`].
11. Recipe = MAMP's (400 epochs, AdamW (0.9, 0.95), wd 0.05, lr 1e-3 -> 5e-4, 20 warmup, batch
    128, crop + rotation augmentation) [preset "paper"].
14. Persons are independent sequences (N*M rows, empty persons included as in MAMP) in encoder and TGN.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from skelcli.data.clips import ClipBatch
from skelcli.methods.base import DatasetInfo, PretrainMethod, register
from skelcli.methods.mae import SMALL_DECODER, SMALL_ENCODER, dataset_tau, recipe_preset
from skelcli.methods.vicreg import covariance_loss, feature_std, variance_hinge
from skelcli.models.encoder import EncoderConfig
from skelcli.models.layers import Block, init_weights, trunc_normal_
from skelcli.models.masking import MaskResult, motion_aware_masking
from skelcli.settings import StrictModel


# ---------------------------------------------------------------------------------------------- layout
def _prime_factors(n: int) -> list[int]:
    out, p = [], 2
    while p * p <= n:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    if n > 1:
        out.append(n)
    return out


def derive_pool_kernels(num_segments: int, stages: int = 3) -> tuple[int, ...]:
    """Stage kernels (in patch units) that tile ``num_segments`` down to 1 in ``stages`` steps.

    The prime factors are merged (two smallest first) until there are ``stages``, then ordered
    largest first and the rest ascending; missing stages get kernel 1. 30 -> (5, 2, 3) (the paper,
    spec/gfp.md 2.4), 8 -> (2, 2, 2), 16 -> (4, 2, 2), 6 -> (3, 2, 1).
    """
    factors = sorted(_prime_factors(num_segments))
    while len(factors) > stages:
        factors = sorted([factors[0] * factors[1]] + factors[2:])
    ordered = [factors[-1]] + factors[:-1] if factors else []
    return tuple(ordered + [1] * (stages - len(ordered)))


class GfpSettings(StrictModel):
    """GFP settings; defaults = the paper configuration with the spec/gfp.md section 7 choices (see module doc)."""

    name: Literal["gfp"] = "gfp"
    encoder: EncoderConfig = EncoderConfig()
    mask_ratio: float = Field(0.9, gt=0, lt=1, description="motion-aware mask ratio (74 of 750 visible at 0.9)")
    tau: float = Field(0.80, description="motion-aware temperature; 0.80 NTU60/PKU, 0.75 NTU120 (resolved by the preset); <= 0 = random")
    pool_kernels: tuple[int, ...] | None = Field(
        None, description="temporal pooling kernel per local level, in patch units; None = derive_pool_kernels (5, 2, 3 for 30 segments)"
    )
    level_blocks: tuple[int, ...] = Field((2, 1, 1, 1), description="decoder blocks per level (local levels, then global)")
    decoder_dim: int = Field(256, ge=8)
    decoder_heads: int = Field(8, ge=1)
    decoder_mlp_ratio: float = Field(4.0, gt=0)
    head_norm: bool = Field(True, description="LayerNorm before each level's linear head (MAE decoder_norm)")
    target_dim: int = Field(256, ge=2, description="C_t = C_p, the prediction/target dimension of every level")
    tgn_input: Literal["motion", "position"] = Field(
        "motion", description="TGN reads frame differences (paper) or raw coordinates (ablation)"
    )
    tgn_hidden: tuple[int, ...] = Field((512, 512, 512, 2048), description="TGN hidden width per level (local levels, then global)")
    tgn_layers: int = Field(3, ge=1, description="Linear layers per TGN MLP (Linear-BN-ReLU between them)")
    loss_reduction: Literal["stacked", "per_level"] = Field(
        "stacked", description="MSE mean over all stacked targets, or per level then averaged"
    )
    pred_channels: Literal["sum", "mean"] = Field(
        "mean", description="'mean': squared error averaged over the C_t channels (F.mse_loss); 'sum': summed, the literal "
        "(1/M)||.||_F^2, which collapsed the targets at paper size (issue 17)"
    )
    pred_weight: float = Field(5.0, ge=0, description="lambda on the prediction MSE")
    cov_weight: float = Field(5.0, ge=0, description="VICReg covariance weight (alpha)")
    var_weight: float = Field(1.0, ge=0, description="VICReg variance weight (beta)")
    var_gamma: float = Field(1.0, gt=0, description="target std of the variance hinge")
    var_eps: float = Field(1e-4, gt=0)

    def resolved_pool_kernels(self) -> tuple[int, ...]:
        return self.pool_kernels if self.pool_kernels is not None else derive_pool_kernels(self.encoder.num_segments)

    @model_validator(mode="after")
    def _check_levels(self) -> "GfpSettings":
        kernels = self.resolved_pool_kernels()
        segments = self.encoder.num_segments
        if not kernels or any(k < 1 for k in kernels):
            raise ValueError(f"pool_kernels must be positive integers, got {kernels}")
        count = segments
        for k in kernels:
            if count % k:
                raise ValueError(
                    f"pool_kernels {kernels} do not tile {segments} temporal segments "
                    f"({self.encoder.num_frames} frames / t_patch {self.encoder.t_patch}): {count} is not divisible by {k}"
                )
            count //= k
        levels = len(kernels) + 1
        if len(self.level_blocks) != levels or any(n < 0 for n in self.level_blocks):
            raise ValueError(f"level_blocks needs {levels} non-negative entries (one per level, global last), got {self.level_blocks}")
        if len(self.tgn_hidden) != levels:
            raise ValueError(f"tgn_hidden needs {levels} entries (one per level, global last), got {self.tgn_hidden}")
        if self.decoder_dim % self.decoder_heads:
            raise ValueError(f"decoder_dim {self.decoder_dim} is not divisible by decoder_heads {self.decoder_heads}")
        return self

    def level_shapes(self) -> list[tuple[int, int]]:
        """(time steps, joints) of each level's token grid, global last. Paper: (6,25) (3,25) (1,25) (1,1)."""
        t, v = self.encoder.num_segments, self.encoder.num_joints
        shapes = []
        for k in self.resolved_pool_kernels():
            t //= k
            shapes.append((t, v))
        return shapes + [(1, 1)]

    def level_frames(self) -> list[int]:
        """Frames of one joint's trajectory covered by a token of each local level (paper 20/40/120)."""
        frames, out = self.encoder.t_patch, []
        for k in self.resolved_pool_kernels():
            frames *= k
            out.append(frames)
        return out

    @classmethod
    def preset(cls, preset: str, dataset: str) -> dict[str, Any]:
        """"paper" = spec/gfp.md 4.1 (= the MAMP recipe); "small" = MAMP's small preset sizes (fair demo)."""
        out = recipe_preset(preset, dataset)
        method: dict[str, Any] = {"tau": dataset_tau(dataset)}
        if preset == "small":
            method.update(
                encoder=dict(SMALL_ENCODER),
                decoder_dim=SMALL_DECODER["dim"],
                decoder_heads=SMALL_DECODER["heads"],
                level_blocks=(1, 1, 1, 1),
                target_dim=32,
                # The spec's anti-collapse guard (spec/gfp.md 7 #9: var 5 / cov 1, MSE averaged over
                # channels). With the paper's literal weights the local-level target std fell to
                # 0.05 on the toy problem and the probe lost to a random encoder on one of two seeds;
                # with the guard the std stays at 0.95-0.99 and the probe beats it on both (docs/gfp.md).
                var_weight=5.0,
                cov_weight=1.0,
                pred_channels="mean",
                tgn_hidden=(128, 128, 128, 512),
            )
        out["method"] = method
        return out


# ---------------------------------------------------------------------------------------------- decoder
class GfpDecoder(nn.Module):
    """Cascaded multi-granularity feature predictor (spec/gfp.md 2.4).

    ``forward(latent (B, K, D_enc), ids_restore (B, S*V))`` -> list of per-level predictions
    (B, n_j, C_t), tokens time-major within a level; the global level has n = 1.
    """

    def __init__(self, enc_dim: int, num_segments: int, num_joints: int, settings: GfpSettings) -> None:
        super().__init__()
        d = settings.decoder_dim
        self.num_segments, self.num_joints = num_segments, num_joints
        self.kernels = settings.resolved_pool_kernels()
        self.decoder_embed = nn.Linear(enc_dim, d)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, 1, num_joints, d))
        self.decoder_temp_embed = nn.Parameter(torch.zeros(1, num_segments, 1, d))
        self.levels = nn.ModuleList(
            nn.ModuleList(Block(d, settings.decoder_heads, settings.decoder_mlp_ratio) for _ in range(n)) for n in settings.level_blocks
        )
        self.norms = nn.ModuleList(nn.LayerNorm(d) if settings.head_norm else nn.Identity() for _ in settings.level_blocks)
        self.heads = nn.ModuleList(nn.Linear(d, settings.target_dim) for _ in settings.level_blocks)
        self.apply(init_weights)
        for p in (self.mask_token, self.decoder_pos_embed, self.decoder_temp_embed):
            trunc_normal_(p)

    def full_sequence(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """E_N: visible encodings back in place, mask tokens elsewhere, + decoder PEs. -> (B, S, V, Dd)."""
        x = self.decoder_embed(latent)
        b, k, d = x.shape
        length = ids_restore.shape[1]
        x = torch.cat([x, self.mask_token.to(x.dtype).expand(b, length - k, d)], dim=1)
        x = torch.gather(x, 1, ids_restore[..., None].expand(-1, -1, d))
        return x.reshape(b, self.num_segments, self.num_joints, d) + self.decoder_pos_embed + self.decoder_temp_embed

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> list[torch.Tensor]:
        return self.decode(self.full_sequence(latent, ids_restore))

    def decode(self, grid: torch.Tensor) -> list[torch.Tensor]:
        """grid: (B, S, V, Dd) -> per-level predictions. Each level pools the previous level's output."""
        b, _, _, d = grid.shape
        preds = []
        for j, blocks in enumerate(self.levels):
            t, v = grid.shape[1], grid.shape[2]
            if j < len(self.kernels):
                k = self.kernels[j]
                grid = grid.reshape(b, t // k, k, v, d).mean(dim=2)
            else:
                grid = grid.mean(dim=(1, 2), keepdim=True)
            t, v = grid.shape[1], grid.shape[2]
            h = grid.reshape(b, t * v, d)
            for blk in blocks:
                h = blk(h)
            preds.append(self.heads[j](self.norms[j](h)))
            grid = h.reshape(b, t, v, d)
        return preds


# ---------------------------------------------------------------------------------------------- TGN
def level_mlp(in_dim: int, hidden: int, out_dim: int, layers: int) -> nn.Sequential:
    """Linear-BN-ReLU repeated ``layers - 1`` times, then Linear (VICReg expander style, spec/gfp.md 7 #5)."""
    mods: list[nn.Module] = []
    d = in_dim
    for _ in range(layers - 1):
        mods += [nn.Linear(d, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
        d = hidden
    mods.append(nn.Linear(d, out_dim))
    return nn.Sequential(*mods)


def frame_motion(x: torch.Tensor) -> torch.Tensor:
    """x[t+1] - x[t], last frame zero (MAMP motion, spec A.8). (B, T, V, C) -> (B, T, V, C)."""
    return torch.cat([x[:, 1:] - x[:, :-1], torch.zeros_like(x[:, :1])], dim=1)


class TargetGenerator(nn.Module):
    """Target Generation Network (spec/gfp.md 2.5): one MLP per level on the full clip's motion windows.

    Level j (local) groups each joint's trajectory into windows of ``level_frames[j]`` frames,
    flattened frame-major then xyz -> (B, T/w * V, w*C), time-major like the prediction tokens; the
    global level flattens the whole clip (B, 1, T*V*C). ``forward(x (B, T, V, C))`` -> list of
    (B, n_j, C_t). Every row goes through the level's BatchNorm (rows = batch x tokens).
    """

    def __init__(self, settings: GfpSettings) -> None:
        super().__init__()
        enc = settings.encoder
        self.source = settings.tgn_input
        self.windows = settings.level_frames()
        self.num_frames, self.num_joints, self.in_chans = enc.num_frames, enc.num_joints, enc.in_chans
        in_dims = [w * enc.in_chans for w in self.windows] + [enc.num_frames * enc.num_joints * enc.in_chans]
        self.mlps = nn.ModuleList(
            level_mlp(i, h, settings.target_dim, settings.tgn_layers) for i, h in zip(in_dims, settings.tgn_hidden)
        )

    def group(self, m: torch.Tensor) -> list[torch.Tensor]:
        """(B, T, V, C) motion -> per-level window inputs (B, n_j, in_j)."""
        b, t, v, c = m.shape
        out = []
        for w in self.windows:
            out.append(m.reshape(b, t // w, w, v, c).permute(0, 1, 3, 2, 4).reshape(b, (t // w) * v, w * c))
        out.append(m.reshape(b, 1, t * v * c))
        return out

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        m = frame_motion(x) if self.source == "motion" else x
        targets = []
        for inp, mlp in zip(self.group(m), self.mlps):
            b, n, d = inp.shape
            targets.append(mlp(inp.reshape(b * n, d)).reshape(b, n, -1))
        return targets


# ---------------------------------------------------------------------------------------------- loss
def prediction_loss(
    preds: list[torch.Tensor], targets: list[torch.Tensor], reduction: str = "stacked", channels: str = "sum"
) -> torch.Tensor:
    """Squared error summed (or averaged, ``channels="mean"``) over channels; then the mean over all
    stacked targets ("stacked", (1/M)||P - Z||_F^2 per sequence, spec/gfp.md 3.1) or the mean of
    per-level means ("per_level"). preds, targets: per level (B, n_j, C_t)."""
    errs = [(p.float() - z.float()).pow(2) for p, z in zip(preds, targets)]
    errs = [e.sum(dim=-1) if channels == "sum" else e.mean(dim=-1) for e in errs]  # (B, n_j)
    if reduction == "stacked":
        return torch.cat(errs, dim=1).mean()
    return torch.stack([e.mean() for e in errs]).mean()


# ---------------------------------------------------------------------------------------------- method
TARGET_STD_THRESHOLD = 0.1  # collapse alarm on target_std_* (GFP.collapse_indicators)


@register
class GFP(PretrainMethod):
    """GFP pretraining (see the module docstring for the architecture and every setting)."""

    name: ClassVar[str] = "gfp"
    settings_cls: ClassVar[type] = GfpSettings
    pretraining_only: ClassVar[tuple[str, ...]] = ("decoder", "tgn")
    #: [INFERRED] The GFP paper names no precision; its recipe is MAMP's (spec/gfp.md 4.1), and MAMP's
    #: scripts train in fp32, so fp32 is the faithful default.
    recipe_precision: ClassVar[str] = "fp32"

    def __init__(self, settings: GfpSettings, data: DatasetInfo) -> None:
        super().__init__(settings, data)
        enc = settings.encoder
        self.decoder = GfpDecoder(enc.dim, enc.num_segments, enc.num_joints, settings)
        self.tgn = TargetGenerator(settings)
        self._target_std: list[torch.Tensor] = []

    def make_mask(self, x: torch.Tensor) -> MaskResult:
        """Motion-aware masking (MAMP, spec A.6); x: (B, T, V, C)."""
        s = self.settings
        u = self.mask_uniforms(x.shape[0], s.encoder.num_tokens)
        return motion_aware_masking(x, s.encoder.t_patch, s.mask_ratio, s.tau, uniforms=u)

    def predict(self, x: torch.Tensor, mask: MaskResult | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor], MaskResult]:
        """x: (B, T, V, C) person-sequences -> (predictions, targets, mask); per level (B, n_j, C_t)."""
        x = x.float()
        if mask is None:
            with torch.no_grad():
                mask = self.make_mask(x)
        p = self.encoder.config.num_prefix
        latent = self.encoder.forward_features(x, ids_keep=mask.ids_keep)[:, p:]
        preds = self.decoder(latent, mask.ids_restore)
        targets = self.tgn(x)
        return preds, targets, mask

    def loss_terms(self, preds: list[torch.Tensor], targets: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """lambda * MSE + sum over levels of (cov_weight * Cov + var_weight * Var) on the targets."""
        s = self.settings
        pred = prediction_loss(preds, targets, s.loss_reduction, s.pred_channels)
        var = torch.zeros((), device=pred.device)
        cov = torch.zeros((), device=pred.device)
        stds = []
        for z in targets:
            rows = z.reshape(-1, z.shape[-1])
            std = feature_std(rows, s.var_eps)  # the variance term's stds (B * tokens rows), logged too
            var = var + variance_hinge(std, s.var_gamma)
            cov = cov + covariance_loss(rows)
            stds.append(std.detach().mean())
        self._target_std = stds
        loss = s.pred_weight * pred + s.cov_weight * cov + s.var_weight * var
        return {"loss": loss, "pred_loss": pred.detach(), "var_loss": var.detach(), "cov_loss": cov.detach()}

    def forward(self, batch: ClipBatch) -> dict[str, torch.Tensor]:
        x = self.view(batch).flatten(0, 1)
        preds, targets, _ = self.predict(x)
        return self.loss_terms(preds, targets)

    def _std_names(self) -> list[str]:
        levels = len(self.settings.level_blocks)
        return [f"target_std_l{j + 1}" for j in range(levels - 1)] + ["target_std_global"]

    def log_metrics(self) -> dict[str, float]:
        """Mean per-dimension std of each level's targets from the last step (collapse -> 0)."""
        return {n: float(v) for n, v in zip(self._std_names(), self._target_std)}

    def collapse_indicators(self) -> dict[str, float]:
        """Every level's target std. Threshold 0.1 (issue 17): healthy at paper size with channel-mean MSE
        0.15-0.21, the collapsed literal loss (channel sum) 0.045-0.058; the small preset holds 0.95-0.99
        on the demo data, TGN init starts near 0.3; the tests' TINY CLI runs (small preset, 30 steps) 0.30-0.69,
        and 0.06-0.09 on the local levels with var/cov off at lr 0.02 (tests/test_collapse.py)."""
        return {n: TARGET_STD_THRESHOLD for n in self._std_names()}


def module_flops(method: GFP, x: torch.Tensor) -> dict[str, int]:
    """Forward FLOPs (2 x multiply-adds) of encoder, decoder and TGN for a batch x (B, T, V, C).

    Counted with ``torch.utils.flop_counter.FlopCounterMode`` under the math SDPA backend (the fused
    CPU kernel reports attention as zero FLOPs, DESIGN.md "Traps").
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    was_training = method.training
    method.eval()
    out: dict[str, int] = {}
    try:
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
            mask = method.make_mask(x)
            with FlopCounterMode(display=False) as fc:
                latent = method.encoder.forward_features(x, ids_keep=mask.ids_keep)
            out["encoder"] = fc.get_total_flops()
            with FlopCounterMode(display=False) as fc:
                method.decoder(latent, mask.ids_restore)
            out["decoder"] = fc.get_total_flops()
            with FlopCounterMode(display=False) as fc:
                method.tgn(x)
            out["tgn"] = fc.get_total_flops()
    finally:
        method.train(was_training)
    return out
