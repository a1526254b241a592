"""VICReg variance and covariance terms (Bardes et al., ICLR 2022, eq. 1 and 4), as GFP uses them.

GFP (spec/gfp.md 3.2) applies them to the Target Generation Network's outputs of each level to stop
the jointly trained predictor/target pair from collapsing:

* variance  v(Z) = 1/C * sum_i max(0, gamma - sqrt(Var(Z[:, i]) + eps))   (hinge on the per-dimension std)
* covariance c(Z) = 1/C * sum_{i != k} Cov(Z)[i, k]^2                       (off-diagonal decorrelation)

``Z`` is (R, C): R rows (GFP: batch x tokens of one level), C feature dimensions. Var/Cov are the
unbiased sample statistics over the rows, as in VICReg. Computed in float32 with autocast switched
off, so under bf16 autocast the (C, R) x (R, C) covariance product still accumulates in fp32 (under
bf16 it measured a 13% error in the logged covariance term).
This module defines no method; it is a loss library that ``gfp.py`` imports.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch


def _fp32(z: torch.Tensor):
    """A context with autocast off on ``z``'s device type (a no-op where autocast is not on)."""
    if torch.is_autocast_enabled(z.device.type):
        return torch.autocast(device_type=z.device.type, enabled=False)
    return nullcontext()


def feature_std(z: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Per-dimension standard deviation sqrt(Var(Z[:, i]) + eps) over the rows. z: (R, C) -> (C,)."""
    with _fp32(z):
        z = z.float()
        return torch.sqrt(z.var(dim=0, unbiased=True) + eps)


def variance_loss(z: torch.Tensor, gamma: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """VICReg variance hinge (eq. 1): mean over dimensions of max(0, gamma - std). z: (R, C), R >= 2.

    Zero when every dimension has std >= gamma; gamma (up to eps) when the rows are all equal.
    """
    if z.shape[0] < 2:
        raise ValueError("the variance term needs at least 2 rows")
    return variance_hinge(feature_std(z, eps), gamma)


def variance_hinge(std: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """The variance term from per-dimension stds (C,): mean over dimensions of max(0, gamma - std)."""
    return torch.relu(gamma - std).mean()


def covariance_loss(z: torch.Tensor) -> torch.Tensor:
    """VICReg covariance term (eq. 4): sum of squared off-diagonal covariances / C. z: (R, C), R >= 2.

    One (C, R) x (R, C) product; the off-diagonal sum is the full sum minus the diagonal.
    """
    r, c = z.shape
    if r < 2:
        raise ValueError("the covariance term needs at least 2 rows")
    with _fp32(z):
        z = z.float()
        zc = z - z.mean(dim=0, keepdim=True)
        cov = (zc.T @ zc) / (r - 1)
        return (cov.pow(2).sum() - cov.diagonal().pow(2).sum()) / c
