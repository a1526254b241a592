"""Batched clip transforms of the MAMP feeder, run on whatever device the clips are on.

The reference feeder (spec/mamp-and-data.md E, ``feeder/tools.py``) crops and resizes one sample
at a time in numpy. Here the same arithmetic runs for a whole batch as tensor ops (gathers and a
batched matmul), so the augmentation of a 128-clip batch costs a few milliseconds on a CPU and
nothing noticeable on a GPU.

Layouts: clips are ``(N, M, T_max, V, C)`` float32, zero-padded after ``valid[n]`` frames
(``valid`` is ``(N,)`` long); outputs are ``(N, M, frames, V, C)``.

Random draws: with a ``generator`` the numbers are drawn on the generator's device and moved to
the clips' device, so a seeded run gives the same crops and rotations on CPU and CUDA; without
one, the global RNG of the clips' device is used. The draws are made in float64 so that
``floor(valid * p)`` matches the reference's numpy arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch

from skelcli.engine.hostside import host_side
from skelcli.errors import SkelError

if TYPE_CHECKING:  # pragma: no cover
    from skelcli.settings import DataSettings


@dataclass
class ClipBatch:
    """A training batch of raw clips, already on the training device.

    joints: (N, M, T_max, V, C) float32, zero-padded after ``valid`` frames (per sample).
    valid: (N,) long number of valid frames. label: (N,) long class index.
    """

    joints: torch.Tensor
    valid: torch.Tensor
    label: torch.Tensor

    def to(self, device: torch.device | str) -> "ClipBatch":
        return ClipBatch(self.joints.to(device, non_blocking=True), self.valid.to(device), self.label.to(device))

    def __len__(self) -> int:
        return self.joints.shape[0]


class CropWindows(NamedTuple):
    """Chosen crop per sample: frames ``[start, start + length)`` of the valid part. Both (N,) long."""

    start: torch.Tensor
    length: torch.Tensor


def _uniform(
    shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None, uniforms: torch.Tensor | None = None
) -> torch.Tensor:
    """U[0, 1) float64 draws of ``shape`` on ``device`` (drawn on the generator's device if given).

    ``uniforms``: pre-drawn numbers of exactly ``shape`` (sample-keyed draws, :mod:`skelcli.engine.rng`)
    used instead of a fresh draw."""
    if uniforms is not None:
        if tuple(uniforms.shape) != tuple(shape):
            raise ValueError(f"pre-drawn uniforms must have shape {tuple(shape)}, got {tuple(uniforms.shape)}")
        return uniforms.to(device=device, dtype=torch.float64)
    if generator is None:
        return torch.rand(shape, dtype=torch.float64, device=device)
    draw = torch.rand(shape, dtype=torch.float64, device=generator.device, generator=generator)
    return draw.to(device)


def crop_windows(
    valid: torch.Tensor,
    *,
    train: bool,
    p_min: float = 0.5,
    p_max: float = 1.0,
    min_frames: int = 64,
    test_crop: float = 0.95,
    generator: torch.Generator | None = None,
    uniforms: torch.Tensor | None = None,
) -> CropWindows:
    """Crop windows of the reference ``valid_crop_resize`` (spec E), for a batch.

    valid: (N,) number of valid frames per clip. A clip with ``valid <= 0`` is treated as one
    frame long (its output is then the padding frame 0, i.e. zeros): the zero-length guard.

    * train: p ~ U(p_min, p_max); length = min(max(floor(valid * p), min_frames), valid); start
      uniform over the integers [0, valid - length]. Clips shorter than ``min_frames`` are taken whole.
    * test: centre crop; b = int((1 - test_crop) * valid / 2) frames are dropped at each end
      (b = int(0.05 * valid / 2) for the reference test_crop 0.95); length = valid - 2b.

    uniforms: optional pre-drawn (N, 2) U[0, 1) numbers (column 0 -> p, column 1 -> start) used
    instead of drawing (sample-keyed randomness for distributed runs).
    """
    if not 0 < p_min <= p_max <= 1:
        raise SkelError(f"crop ratio range must satisfy 0 < crop_min <= crop_max <= 1, got {p_min}, {p_max}")
    n_valid = valid.to(torch.long).clamp(min=1)
    if train:
        pre = None if uniforms is None else uniforms.t()
        u = _uniform((2, n_valid.shape[0]), n_valid.device, generator, pre)
        p = p_min + (p_max - p_min) * u[0]
        length = torch.floor(n_valid.double() * p).long()
        length = torch.minimum(length.clamp(min=min_frames), n_valid)
        span = n_valid - length + 1  # number of possible starts
        start = torch.minimum(torch.floor(u[1] * span.double()).long(), span - 1)
    else:
        if not 0 < test_crop <= 1:
            raise SkelError(f"test_crop must be in (0, 1], got {test_crop}")
        # Same evaluation order as the reference: ((1 - p) * valid) / 2, truncated.
        border = torch.floor((1.0 - test_crop) * n_valid.double() / 2).long()
        start = border
        length = n_valid - 2 * border
    return CropWindows(start, length)


def resample_windows(joints: torch.Tensor, windows: CropWindows, out_frames: int) -> torch.Tensor:
    """Linearly resample each clip's window to ``out_frames`` frames.

    joints: (N, M, T_max, V, C). Returns (N, M, out_frames, V, C), same dtype and device.

    Matches ``F.interpolate(crop[None, None], size=(rows, out_frames), mode="bilinear",
    align_corners=False)`` of the reference (rows unchanged, so only time is interpolated):
    source coordinate s = (i + 0.5) * L / out - 0.5 clamped at 0, i0 = floor(s),
    i1 = min(i0 + 1, L - 1), output = (1 - w) x[i0] + w x[i1] with w = s - i0.
    """
    if joints.ndim != 5:
        raise ValueError(f"joints must be (N, M, T, V, C), got shape {tuple(joints.shape)}")
    n, m = joints.shape[:2]
    device = joints.device
    start = windows.start.to(device=device, dtype=torch.long)
    length = windows.length.to(device=device, dtype=torch.long)
    # PyTorch's upsample kernel computes scale = L / out in float32 and s = scale * (i + 0.5) - 0.5
    # with a fused multiply-add; doing the product and sum in float64 and rounding once to float32
    # reproduces its source coordinates bit for bit (checked in tests/test_clips.py).
    scale = (length.to(torch.float32) / out_frames).double()  # (N,)
    dst = torch.arange(out_frames, device=device, dtype=torch.float64) + 0.5
    src = (scale[:, None] * dst[None, :] - 0.5).to(torch.float32).clamp(min=0.0)  # (N, out)
    i0 = src.long()  # truncation = floor for src >= 0
    weight = (src - i0.to(torch.float32)).clamp(max=1.0)
    i1 = torch.minimum(i0 + 1, (length - 1)[:, None])
    i0 = torch.minimum(i0, (length - 1)[:, None])
    # Flat row gathers: row (n, m, t) of the (N*M*T_max, V*C) view; rows come out in (n, m, out) order.
    t_max = joints.shape[2]
    base = (torch.arange(n, device=device)[:, None] * m + torch.arange(m, device=device)[None, :]) * t_max  # (N, M)
    rows0 = (base[:, :, None] + (start[:, None] + i0)[:, None, :]).reshape(-1)  # (N*M*out,)
    rows1 = (base[:, :, None] + (start[:, None] + i1)[:, None, :]).reshape(-1)
    flat = joints.reshape(n * m * t_max, -1)
    x0, x1 = flat.index_select(0, rows0), flat.index_select(0, rows1)
    w = weight.to(joints.dtype)[:, None, :].expand(n, m, out_frames).reshape(-1, 1)
    # lerp = x0 + w (x1 - x0); equals the kernel's (1 - w) x0 + w x1 up to an ulp.
    return torch.lerp(x0, x1, w).reshape(n, m, out_frames, *joints.shape[3:])


def crop_resize(
    joints: torch.Tensor,
    valid: torch.Tensor,
    out_frames: int,
    *,
    train: bool,
    p_min: float = 0.5,
    p_max: float = 1.0,
    min_frames: int = 64,
    test_crop: float = 0.95,
    generator: torch.Generator | None = None,
    return_windows: bool = False,
    uniforms: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, CropWindows]:
    """Random (train) or centre (test) temporal crop, then linear resize to ``out_frames`` (spec E).

    joints: (N, M, T_max, V, C) zero-padded; valid: (N,). Returns (N, M, out_frames, V, C), and
    with ``return_windows=True`` also the :class:`CropWindows` that were used. ``uniforms``: optional
    pre-drawn (N, 2) numbers for the train crop (see :func:`crop_windows`).
    """
    windows = crop_windows(
        valid, train=train, p_min=p_min, p_max=p_max, min_frames=min_frames, test_crop=test_crop, generator=generator,
        uniforms=uniforms,
    )
    out = resample_windows(joints, windows, out_frames)
    return (out, windows) if return_windows else out


def rotation_matrices(angles: torch.Tensor) -> torch.Tensor:
    """R = Rz · Ry · Rx for angles (N, 3) = (θx, θy, θz); returns (N, 3, 3) (spec E, ``random_rot``).

    Rx = [[1,0,0],[0,c,s],[0,-s,c]], Ry = [[c,0,-s],[0,1,0],[s,0,c]], Rz = [[c,s,0],[-s,c,0],[0,0,1]].
    """
    cos, sin = angles.cos(), angles.sin()
    one, zero = torch.ones_like(cos[:, 0]), torch.zeros_like(cos[:, 0])

    def mat(rows: list[list[torch.Tensor]]) -> torch.Tensor:
        return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)

    cx, cy, cz = cos.unbind(-1)
    sx, sy, sz = sin.unbind(-1)
    rx = mat([[one, zero, zero], [zero, cx, sx], [zero, -sx, cx]])
    ry = mat([[cy, zero, -sy], [zero, one, zero], [sy, zero, cy]])
    rz = mat([[cz, sz, zero], [-sz, cz, zero], [zero, zero, one]])
    return rz @ ry @ rx


def rotate(x: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """Apply one (3, 3) rotation per sample to column vectors: x (N, M, T, V, 3), rot (N, 3, 3)."""
    n = x.shape[0]
    flat = x.reshape(n, -1, 3)
    # R @ (3, P) per sample: a batched matmul with the points as columns is several times faster on
    # CPU than (P, 3) @ R^T with its inner dimension of 3.
    return torch.bmm(rot.to(x.dtype), flat.transpose(1, 2)).transpose(1, 2).reshape(x.shape).contiguous()


def random_rotation(
    x: torch.Tensor, max_angle: float = 0.3, generator: torch.Generator | None = None, uniforms: torch.Tensor | None = None,
    dims: int = 3,
) -> torch.Tensor:
    """Random rotation about the origin, one draw per sample (spec E, ``random_rot``).

    x: (N, M, T, V, C) whose first ``dims`` channels are coordinates (any further channel, a
    confidence, is left as it is). 3-D: angles θx, θy, θz ~ U(-max_angle, max_angle), the same for
    every frame and both persons; R = Rz·Ry·Rx applied to column vectors. 2-D: only the in-plane
    rotation by θz (a 3-D rotation of image coordinates has no meaning), same draws. Linear, so zero
    persons and zero padding stay zero. Returns a new tensor of the same shape. ``uniforms``:
    optional pre-drawn (N, 3) U[0, 1) numbers (x, y, z) used instead of drawing.
    """
    if dims not in (2, 3) or x.shape[-1] < dims:
        raise ValueError(f"rotation needs 2-D or 3-D coordinates, got dims={dims}, C={x.shape[-1]}")
    angles = (_uniform((x.shape[0], 3), x.device, generator, uniforms) * 2 - 1) * max_angle
    if dims == 3 and x.shape[-1] == 3:
        return rotate(x, rotation_matrices(angles.to(torch.float32)))
    if dims == 3:
        rotated = rotate(x[..., :3].contiguous(), rotation_matrices(angles.to(torch.float32)))
    else:
        z = angles[:, 2].to(torch.float32)
        rot = torch.stack([torch.stack([z.cos(), z.sin()], -1), torch.stack([-z.sin(), z.cos()], -1)], -2)  # Rz's x-y block
        n = x.shape[0]
        flat = x[..., :2].reshape(n, -1, 2)
        rotated = torch.bmm(rot.to(x.dtype), flat.transpose(1, 2)).transpose(1, 2).reshape(*x.shape[:-1], 2)
    return torch.cat([rotated, x[..., dims:]], dim=-1)


@host_side  # data-dependent crops and host-side draws: eager under --compile (engine/hostside.py)
def train_view(
    batch: "ClipBatch", frames: int, data: "DataSettings", generator: torch.Generator | None = None, draws=None,
    dims: int = 3,
) -> torch.Tensor:
    """The training view of MAE/MAMP/GFP: random crop (p in [crop_min, crop_max], at least
    ``min_crop_frames``), resize to ``frames``, random rotation of ``data.rotation`` rad (spec E/B).

    batch.joints: (N, M, T_max, V, C). Returns (N, M, frames, V, C) on the batch's device.
    ``draws``: optional :class:`skelcli.engine.rng.SampleDraws` for this batch; when given, the crop
    and rotation numbers come from its "crop" (N, 2) and "rotation" (N, 3) streams (sample-keyed,
    identical whatever the process count) and ``generator`` is not used. ``dims``: coordinate
    dimensions of the layout (2: the rotation is in-plane, see :func:`random_rotation`).
    """
    crop_u = rot_u = None
    if draws is not None:
        crop_u = draws.uniform("crop", (2,))
        rot_u = draws.uniform("rotation", (3,)) if data.rotation > 0 else None
    clips = crop_resize(
        batch.joints,
        batch.valid,
        frames,
        train=True,
        p_min=data.crop_min,
        p_max=data.crop_max,
        min_frames=data.min_crop_frames,
        generator=generator,
        uniforms=crop_u,
    )
    if data.rotation > 0:
        clips = random_rotation(clips, data.rotation, generator=generator, uniforms=rot_u, dims=dims)
    return clips


def test_view(batch: "ClipBatch", frames: int, test_crop: float = 0.95) -> torch.Tensor:
    """The evaluation view: centre crop keeping ``test_crop`` of the valid frames, resize to
    ``frames``, no rotation (spec E). Returns (N, M, frames, V, C)."""
    return crop_resize(batch.joints, batch.valid, frames, train=False, test_crop=test_crop)


test_view.__test__ = False  # type: ignore[attr-defined]  # not a pytest test when imported
