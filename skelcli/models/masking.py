"""Token masking for masked skeleton modeling (spec/mamp-and-data.md A.6).

Shared MAE mechanics: a score per token, argsort ascending, the first ``len_keep`` tokens stay
visible. ``len_keep = int(L * (1 - ratio))``: at L = 750 and ratio 0.9 that is **74** (1 - 0.9 is
0.0999... in floating point), so 676 tokens are masked.

Layouts: tokens are indexed time-major, l = t * V + v, L = Tp * V. ``mask`` is (B, L) float with
1 = masked (removed), 0 = visible, in the original token order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from skelcli.models.encoder import patchify


@dataclass
class MaskResult:
    """ids_keep (B, K) visible token indices; ids_restore (B, L) inverse permutation of the
    shuffle; mask (B, L) float, 1 = masked."""

    ids_keep: torch.Tensor
    ids_restore: torch.Tensor
    mask: torch.Tensor


def keep_count(num_tokens: int, ratio: float) -> int:
    """Visible tokens per sequence, exactly as the reference computes it (74 for 750 at 0.9)."""
    return int(num_tokens * (1 - ratio))


def mask_from_scores(scores: torch.Tensor, ratio: float) -> MaskResult:
    """Keep the ``keep_count`` lowest-scoring tokens. scores: (B, L)."""
    b, length = scores.shape
    keep = keep_count(length, ratio)
    ids_shuffle = torch.argsort(scores, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :keep]
    mask = torch.ones(b, length, device=scores.device)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return MaskResult(ids_keep, ids_restore, mask)


def random_masking(
    batch: int,
    num_tokens: int,
    ratio: float,
    device=None,
    generator: torch.Generator | None = None,
    uniforms: torch.Tensor | None = None,
) -> MaskResult:
    """Uniform random masking (MAE; MAMP when tau <= 0).

    uniforms: optional pre-drawn (batch, num_tokens) U[0, 1) scores (sample-keyed randomness,
    :mod:`skelcli.engine.rng`) used instead of drawing.
    """
    if uniforms is not None:
        _check_shape(uniforms, (batch, num_tokens))
        scores = uniforms.to(device=device if device is not None else uniforms.device, dtype=torch.float32)
    else:
        scores = torch.rand(batch, num_tokens, device=device, generator=generator)
    return mask_from_scores(scores, ratio)


def _check_shape(uniforms: torch.Tensor, shape: tuple[int, int]) -> None:
    if tuple(uniforms.shape) != shape:
        raise ValueError(f"pre-drawn uniforms must have shape {shape}, got {tuple(uniforms.shape)}")


def patch_motion(x: torch.Tensor, t_patch: int) -> torch.Tensor:
    """Motion magnitude per token, the prior of motion-aware masking (spec A.6).

    x: (B, T, V, C) raw coordinates. d[t, v] = mean over the l*C numbers of |P[t] - P[t-1]|
    (a displacement of one segment = l frames); segment 0 borrows segment 1. Returns (B, Tp*V).
    """
    p = patchify(x, t_patch)  # (B, Tp, V, l*C)
    d = (p[:, 1:] - p[:, :-1]).abs().mean(dim=-1)  # (B, Tp-1, V)
    d = torch.cat([d[:, :1], d], dim=1)
    return d.flatten(1)


def motion_aware_masking(
    x: torch.Tensor,
    t_patch: int,
    ratio: float,
    tau: float,
    generator: torch.Generator | None = None,
    uniforms: torch.Tensor | None = None,
) -> MaskResult:
    """MAMP motion-aware masking: high-motion tokens are masked more often (spec A.6).

    x: (B, T, V, C). Scaled motion s = d / (tau * max d + 1e-10), pi = softmax(s); the score
    log pi + Gumbel noise is sorted ascending, so the masked set is a draw without replacement
    with probability proportional to pi. An all-zero person has uniform pi (random masking).
    ``uniforms``: optional pre-drawn (B, L) U[0, 1) numbers for the Gumbel noise (or the random
    scores when tau <= 0) used instead of drawing.
    """
    if tau <= 0:
        return random_masking(x.shape[0], (x.shape[1] // t_patch) * x.shape[2], ratio, x.device, generator, uniforms)
    d = patch_motion(x.float(), t_patch)
    s = d / (tau * d.amax(dim=1, keepdim=True) + 1e-10)
    log_pi = torch.log_softmax(s, dim=1)
    if uniforms is not None:
        _check_shape(uniforms, tuple(d.shape))
        u = uniforms.to(device=x.device, dtype=d.dtype)
    else:
        u = torch.rand(d.shape, device=x.device, generator=generator)
    gumbel = -torch.log(-torch.log(u + 1e-10) + 1e-10)
    return mask_from_scores(log_pi + gumbel, ratio)
