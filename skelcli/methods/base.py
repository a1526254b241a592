"""The method interface and registry (solo-learn style): one small module per method.

A method owns the shared :class:`~skelcli.models.encoder.SkeletonEncoder` plus whatever it needs
only for pretraining (decoder, target network, teacher, heads). The engine calls

* ``method.forward(batch) -> dict`` of scalar tensors with at least ``"loss"`` (train mode; the
  method does its own on-device augmentation / view generation from the raw clips);
* ``method.after_step(step, total_steps)`` after every optimizer step (EMA updates);
* ``method.downstream_encoder()`` for the encoder that probe / finetune / retrieve use (SLiM: the
  teacher);
* ``method.param_groups(weight_decay)`` for AdamW groups (default: no decay on 1-D parameters and
  biases, timm ``add_weight_decay`` as in spec/mamp-and-data.md B).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from skelcli.data import clips
from skelcli.data.clips import ClipBatch
from skelcli.models.encoder import EncoderConfig, SkeletonEncoder
from skelcli.settings import DataSettings
from skelcli.topology import NTU25, Topology

_REGISTRY: dict[str, type["PretrainMethod"]] = {}


@dataclass
class DatasetInfo:
    """What a method may need to know about the data: its name (for per-dataset defaults), classes, layout."""

    dataset: str = "ntu60"
    num_classes: int = 60
    #: The data's joint layout (the store's topology attr): masking and augmentations follow it.
    topology: Topology = NTU25


def register(cls: type["PretrainMethod"]) -> type["PretrainMethod"]:
    """Class decorator: make a method available by its ``name``."""
    if cls.name in _REGISTRY:
        raise ValueError(f"method {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def get_method(name: str) -> type["PretrainMethod"]:
    try:
        return _REGISTRY[name]
    except KeyError:
        from skelcli.errors import SkelError

        raise SkelError(f"unknown method {name!r}; available: {', '.join(sorted(_REGISTRY))}") from None


def available_methods() -> list[str]:
    return sorted(_REGISTRY)


def weight_decay_groups(named_params, weight_decay: float, lr_scale: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """AdamW groups: no decay on 1-D params and ``*.bias`` (timm add_weight_decay); position
    embeddings and mask tokens (>1-D) do get decay (spec B). ``lr_scale`` maps a name prefix to an
    lr multiplier (stored in the group as ``lr_scale``)."""
    groups: dict[tuple[bool, float], list] = {}
    for name, p in named_params:
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1 or name.endswith(".bias")
        scale = 1.0
        for prefix, s in (lr_scale or {}).items():
            if name.startswith(prefix):
                scale = s
        groups.setdefault((no_decay, scale), []).append(p)
    return [
        {"params": ps, "weight_decay": 0.0 if nd else weight_decay, "lr_scale": sc, "apply_wd": not nd}
        for (nd, sc), ps in groups.items()
    ]


class PretrainMethod(nn.Module):
    """Base class of every pretraining method.

    Subclasses set ``name`` and ``settings_cls`` and build ``self.encoder`` from
    ``settings.encoder``. ``pretraining_only`` names the submodules dropped after pretraining.
    """

    name: ClassVar[str]
    settings_cls: ClassVar[type]
    pretraining_only: ClassVar[tuple[str, ...]] = ()
    #: The precision the method's official recipe trains in ("fp32", "bf16" or "fp16"); what
    #: ``runtime.precision = "auto"`` follows on CUDA (:func:`skelcli.engine.dist.resolve_precision`).
    #: A class attribute, not a settings field, so run folders written before it still resume.
    recipe_precision: ClassVar[str] = "fp32"

    def __init__(self, settings: Any, data: DatasetInfo) -> None:
        super().__init__()
        self.settings = settings
        self.data = data
        # Augmentation parameters of the run (crop, rotation); the engine sets the run's DataSettings.
        self.data_settings: DataSettings = DataSettings()
        self.encoder = SkeletonEncoder(settings.encoder)

    @property
    def encoder_config(self) -> EncoderConfig:
        return self.encoder.config

    # Set by the training engine before each forward: a :class:`skelcli.engine.rng.SampleDraws` for
    # this batch, or None (then the global RNG is used). Sample-keyed draws make crops, rotations
    # and masks independent of the process count (issue 7 parity).
    sample_draws: Any = None

    def mask_uniforms(self, rows: int, num_tokens: int) -> torch.Tensor | None:
        """(rows, num_tokens) pre-drawn uniforms of the "mask" stream for the N*M person sequences
        of this batch, or None without sample-keyed draws."""
        draws = self.sample_draws
        return None if draws is None else draws.rows("mask", rows, num_tokens)

    def view(self, batch: ClipBatch) -> torch.Tensor:
        """Raw clips -> model input (N, M, T, V, C): MAMP's random crop/resize/rotation in train mode
        (spec/mamp-and-data.md E via ``clips.train_view``), the centre test crop otherwise."""
        frames = self.encoder.config.num_frames
        if self.training:
            return clips.train_view(batch, frames, self.data_settings, draws=self.sample_draws, dims=self.data.topology.dims)
        return clips.test_view(batch, frames, self.data_settings.test_crop)

    def forward(self, batch: ClipBatch) -> dict[str, torch.Tensor]:  # pragma: no cover - interface
        raise TypeError(f"{type(self).__name__} must define forward(batch) -> dict of losses")

    def after_step(self, step: int, total_steps: int) -> None:
        """Called after each optimizer step (EMA updates); nothing by default."""

    def on_epoch_start(self, epoch: int) -> None:
        """Called at the start of every epoch (e.g. freezing the prototype layer)."""

    def on_resume(self, step: int, total_steps: int) -> None:
        """Called after a checkpoint of ``step`` optimizer steps was restored, before the next step:
        restore schedule-driven state that is not in the state dict (SLiM's teacher temperature)."""

    def downstream_encoder(self) -> SkeletonEncoder:
        return self.encoder

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        return weight_decay_groups(self.named_parameters(), weight_decay)

    def clip_groups(self) -> list[list[nn.Parameter]]:
        """Parameter groups whose gradient norms ``optim.grad_clip`` clips separately; one group (every
        parameter, a global norm) by default."""
        return [list(self.parameters())]

    def log_metrics(self) -> dict[str, float]:
        """Extra per-step scalars to log (e.g. GFP target std); empty by default."""
        return {}

    def collapse_indicators(self) -> dict[str, float]:
        """Which :meth:`log_metrics` keys signal a representation collapse, with the threshold below
        which a value counts as collapsed (the engine's collapse alarm, ``runtime.collapse_patience``
        log intervals in a row). Empty by default: no alarm."""
        return {}
