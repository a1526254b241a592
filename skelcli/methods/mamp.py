"""MAMP: masked motion prediction (Mao et al., ICCV 2023; spec/mamp-and-data.md A.6-A.8).

Same model as MAE (:class:`~skelcli.methods.mae.MaskedSkeletonModel`) with two differences:

* motion-aware masking: tokens are hidden with probability proportional to softmax of their
  normalised motion at temperature ``tau`` (Gumbel top-k, spec A.6) -- high motion is masked more
  often; ``tau <= 0`` falls back to uniform random masking;
* the target is the forward frame difference at stride ``motion_stride`` (x[t+s] - x[t], the last
  s frames 0), cut into patches and normalised per patch (spec A.8).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from skelcli.methods.base import register
from skelcli.methods.mae import MaskedModelingSettings, MaskedSkeletonModel, dataset_tau
from skelcli.models.encoder import patchify
from skelcli.models.masking import MaskResult, motion_aware_masking


class MAMPSettings(MaskedModelingSettings):
    """MAMP settings; defaults = NTU60 paper values (tau 0.80, decoder depth 3; spec A.6, A.7)."""

    name: Literal["mamp"] = "mamp"
    tau: float = Field(0.80, description="motion-aware masking temperature (0.80 NTU60/PKU, 0.75 NTU120); <= 0 = random masking")
    motion_stride: int = Field(1, ge=1, description="frame stride of the motion target (spec A.8)")

    @classmethod
    def preset(cls, preset: str, dataset: str) -> dict[str, Any]:
        out = super().preset(preset, dataset)
        out["method"]["tau"] = dataset_tau(dataset)
        return out


def motion_target(x: torch.Tensor, t_patch: int, stride: int = 1) -> torch.Tensor:
    """Patched forward frame differences (spec A.8).

    x: (B, T, V, C). M[t] = x[t + stride] - x[t] for t < T - stride, 0 for the last ``stride``
    frames. Returns (B, T/l * V, l*C) in time-major token order, l*C ordered frame-major then xyz.
    """
    motion = torch.zeros_like(x)
    motion[:, :-stride] = x[:, stride:] - x[:, :-stride]
    b, t, v, c = x.shape
    return patchify(motion, t_patch).reshape(b, (t // t_patch) * v, t_patch * c)


@register
class MAMP(MaskedSkeletonModel):
    """Masked motion prediction with motion-aware masking."""

    name: ClassVar[str] = "mamp"
    settings_cls: ClassVar[type] = MAMPSettings

    def target(self, x: torch.Tensor) -> torch.Tensor:
        return motion_target(x, self.settings.encoder.t_patch, self.settings.motion_stride)

    def make_mask(self, x: torch.Tensor) -> MaskResult:
        s = self.settings
        u = self.mask_uniforms(x.shape[0], s.encoder.num_tokens)
        return motion_aware_masking(x, s.encoder.t_patch, s.mask_ratio, s.tau, uniforms=u)
