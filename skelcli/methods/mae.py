"""Masked skeleton modeling: the shared MAE-style method and plain MAE (spec/mamp-and-data.md A.6-A.8).

:class:`MaskedSkeletonModel` holds everything MAE and MAMP share: the view (``clips.train_view``
crop 0.5-1 / min 64 frames, resize, rotation 0.3 in train mode), persons as independent
sequences (N, M, T, V, C) -> (N*M, T, V, C) with empty persons included (spec A.1, 0.4), masking,
the encoder over the visible tokens only, :class:`~skelcli.methods.decoder.MaskedDecoder` over all
tokens, per-patch target normalisation and the masked-token MSE. Subclasses choose the target
(:meth:`MaskedSkeletonModel.target`) and the masking (:meth:`MaskedSkeletonModel.make_mask`).

MAE (the "standard masked skeleton modeling" baseline, spec A.8): uniform random masking, target =
patched raw coordinates.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from skelcli.data.clips import ClipBatch
from skelcli.methods.base import DatasetInfo, PretrainMethod, register
from skelcli.methods.decoder import DecoderConfig, MaskedDecoder
from skelcli.models.encoder import EncoderConfig, patchify
from skelcli.models.masking import MaskResult, random_masking
from skelcli.settings import StrictModel

# Per-dataset recipe values (spec A.6 tau; A.7 decoder depth).
_TAU = {"ntu60": 0.80, "ntu120": 0.75, "pku-mmd-v1": 0.80, "pku-mmd-v2": 0.80}
_DECODER_DEPTH = {"ntu60": 3, "ntu120": 5, "pku-mmd-v1": 5, "pku-mmd-v2": 5}


def dataset_tau(dataset: str) -> float:
    """MAMP's motion-aware temperature for a dataset (spec A.6: 0.80 NTU60/PKU, 0.75 NTU120)."""
    return _TAU.get(dataset, 0.80)


def dataset_decoder_depth(dataset: str) -> int:
    """MAMP's decoder depth for a dataset (spec A.7: 3 NTU60, 5 NTU120 and PKU)."""
    return _DECODER_DEPTH.get(dataset, 3)


def recipe_preset(preset: str, dataset: str) -> dict[str, Any]:
    """Data/optim/runtime sections of the MAMP recipe shared by the masked-modeling methods.

    ``paper`` = spec B exactly (400 epochs, batch 128, AdamW (0.9, 0.95), wd 0.05, lr 1e-3 -> 5e-4,
    20 warmup epochs, no clipping, checkpoint every 20 epochs). ``small`` = a CPU-sized variant for
    tests and the demo: 16 frames of 4-frame patches (100 tokens, 10 visible), width 32, depth 2,
    batch 32, lr 3e-3, 150 epochs. On the demo's data (`skel synth ntu60 --difficulty medium`, 16
    classes, 377 xsub training clips: 1,650 steps; 77-90 s on one core for MAE / MAMP, 147-172 s for GFP) MAE, MAMP and GFP each beat a
    random encoder of the same shape by more than 5 points in both the linear and the kNN probe on 2
    seeds (docs/benchmarks.md, "The demo"). Batch 32 is what made it: at batch 64 (750 steps, the
    same samples) GFP gained +5.0 linear / -2.4 kNN points and MAMP +7.2 / +7.2; at batch 32 GFP gained
    +13.0 / +16.8. The methods share the schedule so that the demo compares them at one budget.
    """
    if preset == "paper":
        return {
            "data": {"batch_size": 128, "crop_min": 0.5, "crop_max": 1.0, "min_crop_frames": 64, "rotation": 0.3},
            "optim": {"lr": 1e-3, "min_lr": 5e-4, "betas": (0.9, 0.95), "weight_decay": 0.05,
                      "warmup_epochs": 20, "epochs": 400, "grad_clip": None},
            "runtime": {"checkpoint_every": 20},
        }
    if preset == "small":
        return {
            "data": {"batch_size": 32, "crop_min": 0.5, "crop_max": 1.0, "min_crop_frames": 64, "rotation": 0.3},
            "optim": {"lr": 3e-3, "min_lr": 5e-4, "betas": (0.9, 0.95), "weight_decay": 0.05,
                      "warmup_epochs": 5, "epochs": 150, "grad_clip": None},
            "runtime": {"checkpoint_every": 50, "log_every": 10},
        }
    from skelcli.errors import SkelError

    raise SkelError(f"unknown preset {preset!r}; available: paper, small")


SMALL_ENCODER = {"num_frames": 16, "t_patch": 4, "dim": 32, "depth": 2, "heads": 4}
SMALL_DECODER = {"dim": 32, "depth": 1, "heads": 4}


def small_encoder_config() -> EncoderConfig:
    """The encoder of the pretraining ``small`` preset (used by --from-scratch / --random-init without a checkpoint)."""
    return EncoderConfig(**SMALL_ENCODER)


class MaskedModelingSettings(StrictModel):
    """Settings shared by MAE and MAMP; defaults = the MAMP paper model (spec A.5, A.7, B)."""

    encoder: EncoderConfig = EncoderConfig()
    decoder: DecoderConfig = DecoderConfig()
    mask_ratio: float = Field(0.9, gt=0, lt=1, description="fraction of tokens masked; 74 of 750 stay visible at 0.9")
    norm_target: bool = Field(True, description="normalise each target patch by its mean and unbiased variance (norm_skes_loss)")
    norm_eps: float = Field(1e-6, gt=0)

    @classmethod
    def preset(cls, preset: str, dataset: str) -> dict[str, Any]:
        out = recipe_preset(preset, dataset)
        method: dict[str, Any] = {"decoder": {"depth": dataset_decoder_depth(dataset)}}
        if preset == "small":
            method = {"encoder": dict(SMALL_ENCODER), "decoder": dict(SMALL_DECODER)}
        out["method"] = method
        return out


class MAESettings(MaskedModelingSettings):
    """Plain MAE on skeletons: random masking, coordinate target (spec A.8, ``model_mae``)."""

    name: Literal["mae"] = "mae"


def normalize_patches(y: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(y - mean) / sqrt(var + eps) over the last axis, var unbiased (spec A.8 norm_skes_loss).

    y: (B, L, l*C). An all-zero patch stays zero.
    """
    mean = y.mean(dim=-1, keepdim=True)
    var = y.var(dim=-1, keepdim=True, unbiased=True)
    return (y - mean) / torch.sqrt(var + eps)


FEATURE_STD_THRESHOLD = 1e-3  # collapse alarm on ``feature_std`` (see MaskedSkeletonModel.collapse_indicators)


def pooled_feature_std(feats: torch.Tensor) -> torch.Tensor | None:
    """Std over the batch of the token-mean features, averaged over dims; detached, fp32. feats: (B, L, D).
    None for a batch of one row (no std)."""
    pooled = feats.detach().float().mean(dim=1)
    if pooled.shape[0] < 2:
        return None
    return pooled.std(dim=0).mean()


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error per token, averaged over masked tokens only (spec A.8).

    pred, target: (B, L, l*C); mask: (B, L) with 1 = masked. Returns sum(mask * e) / sum(mask)
    over the whole batch, so each masked token weighs the same.
    """
    err = (pred.float() - target.float()).pow(2).mean(dim=-1)
    return (err * mask).sum() / mask.sum()


class MaskedSkeletonModel(PretrainMethod):
    """Shared MAE/MAMP machinery; subclasses define :meth:`target` and may override :meth:`make_mask`."""

    pretraining_only: ClassVar[tuple[str, ...]] = ("decoder",)
    #: MAE and MAMP: the official MAMP scripts train without AMP (fp32).
    recipe_precision: ClassVar[str] = "fp32"

    def __init__(self, settings: MaskedModelingSettings, data: DatasetInfo) -> None:
        super().__init__(settings, data)
        enc = settings.encoder
        self.decoder = MaskedDecoder(enc.dim, enc.num_segments, enc.num_joints, enc.t_patch * enc.in_chans, settings.decoder)
        self._feature_std: torch.Tensor | None = None

    # ----------------------------------------------------------------- hooks
    def target(self, x: torch.Tensor) -> torch.Tensor:
        """Per-token regression target before normalisation: (B, T, V, C) -> (B, L, l*C)."""
        raise TypeError(f"{type(self).__name__} must define target(x)")

    def make_mask(self, x: torch.Tensor) -> MaskResult:
        """Which tokens to hide; x: (B, T, V, C). Uniform random by default (MAE)."""
        cfg = self.settings.encoder
        u = self.mask_uniforms(x.shape[0], cfg.num_tokens)
        return random_masking(x.shape[0], cfg.num_tokens, self.settings.mask_ratio, x.device, uniforms=u)

    # ----------------------------------------------------------------- forward
    def reconstruct(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss on an already-augmented batch. x: (N, M, T, V, C) -> {"loss", "pred", "target", "mask"}.

        Persons become independent sequences (N*M, T, V, C), row n*M + m (spec A.1).
        """
        x = x.flatten(0, 1).float()
        with torch.no_grad():
            target = self.target(x)
            if self.settings.norm_target:
                target = normalize_patches(target, self.settings.norm_eps)
            mask = self.make_mask(x)
        latent = self.encoder.forward_features(x, ids_keep=mask.ids_keep)
        self._feature_std = pooled_feature_std(latent)
        pred = self.decoder(latent, mask.ids_restore)
        loss = masked_mse(pred, target, mask.mask)
        return {"loss": loss, "pred": pred, "target": target, "mask": mask.mask}

    def forward(self, batch: ClipBatch) -> dict[str, torch.Tensor]:
        out = self.reconstruct(self.view(batch))
        return {"loss": out["loss"]}

    def log_metrics(self) -> dict[str, float]:
        """``feature_std``: std over the batch of the token-mean encoder output, mean over dims (collapse -> 0)."""
        return {} if self._feature_std is None else {"feature_std": float(self._feature_std)}

    def collapse_indicators(self) -> dict[str, float]:
        # Measured healthy (tests' TINY CLI runs, small preset, 30 steps, CPU): MAE 0.20-0.65, MAMP 0.18-0.64;
        # an encoder mapping every clip to the same output gives 0. Threshold 1e-3: two orders below.
        return {"feature_std": FEATURE_STD_THRESHOLD}


@register
class MAE(MaskedSkeletonModel):
    """MAE baseline: random masking, target = patched coordinates (spec A.8 ``model_mae``)."""

    name: ClassVar[str] = "mae"
    settings_cls: ClassVar[type] = MAESettings

    def target(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        return patchify(x, self.settings.encoder.t_patch).reshape(b, -1, self.settings.encoder.t_patch * x.shape[-1])
