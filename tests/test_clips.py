"""Batched crop / resize / rotation of the MAMP feeder (spec/mamp-and-data.md E)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from skelcli.data.clips import (
    CropWindows,
    crop_resize,
    crop_windows,
    random_rotation,
    resample_windows,
    rotation_matrices,
    test_view,
    train_view,
)
from skelcli.errors import SkelError
from skelcli.data.clips import ClipBatch
from skelcli.settings import DataSettings
from skelcli.topology import BONES


def ramp_clips(valid: list[int], t_max: int | None = None, m: int = 2, v: int = 3, c: int = 3, fn=lambda t: t) -> torch.Tensor:
    """(N, M, T_max, V, C) clips whose every coordinate at frame t is fn(t) (zero after valid)."""
    t_max = t_max or max(valid)
    x = torch.zeros(len(valid), m, t_max, v, c)
    for n, length in enumerate(valid):
        t = torch.arange(length, dtype=torch.float32)
        x[n, :, :length] = fn(t)[None, :, None, None]
    return x


def random_clips(valid: torch.Tensor, t_max: int, m: int = 2, v: int = 25, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(valid), m, t_max, v, 3, generator=g)
    mask = torch.arange(t_max)[None, :] < valid[:, None]
    return x * mask[:, None, :, None, None]


# ------------------------------------------------------------------------------ resize by hand
def test_downsample_10_to_4_by_hand():
    # test crop 0.95 on 10 frames: b = int(0.05 * 10 / 2) = 0, so the crop is all 10 frames.
    # scale 10/4 = 2.5; source s_i = 2.5 (i + 0.5) - 0.5 = 0.75, 3.25, 5.75, 8.25.
    x = ramp_clips([10], t_max=12, fn=lambda t: t * t)
    out, win = crop_resize(x, torch.tensor([10]), 4, train=False, return_windows=True)
    assert win.start.tolist() == [0] and win.length.tolist() == [10]
    # lerp of t^2: 0.25*0 + 0.75*1, 0.75*9 + 0.25*16, 0.25*25 + 0.75*36, 0.75*64 + 0.25*81
    expected = torch.tensor([0.75, 10.75, 33.25, 68.25])
    assert out.shape == (1, 2, 4, 3, 3)
    torch.testing.assert_close(out[0, 1, :, 2, 1], expected)
    torch.testing.assert_close(out, expected[None, None, :, None, None].expand_as(out))


def test_upsample_3_to_6_by_hand():
    # scale 0.5: s = -0.25 (clamped to 0), 0.25, 0.75, 1.25, 1.75, 2.25 (-> floor 2, neighbour clamped to 2)
    x = ramp_clips([3], t_max=5, fn=lambda t: t * t)
    out = resample_windows(x, CropWindows(torch.tensor([0]), torch.tensor([3])), 6)
    torch.testing.assert_close(out[0, 0, :, 0, 0], torch.tensor([0.0, 0.25, 0.75, 1.75, 3.25, 4.0]))


def test_window_offset_is_respected():
    x = ramp_clips([20], fn=lambda t: t)
    out = resample_windows(x, CropWindows(torch.tensor([5]), torch.tensor([8])), 8)  # identity resize
    torch.testing.assert_close(out[0, 0, :, 0, 0], torch.arange(5.0, 13.0))


def test_matches_torch_interpolate_per_sample():
    valid = torch.tensor([1, 2, 7, 40, 64, 119, 120, 121, 250, 300])
    x = random_clips(valid, 300)
    for train in (True, False):
        g = torch.Generator().manual_seed(3)
        out, win = crop_resize(x, valid, 120, train=train, generator=g, return_windows=True)
        for n in range(len(valid)):
            s, length = int(win.start[n]), int(win.length[n])
            crop = x[n, :, s : s + length]  # (M, L, V, C)
            grid = crop.permute(0, 2, 3, 1).reshape(1, 1, -1, length)  # the reference's (C*V*M, L) grid
            ref = F.interpolate(grid, size=(grid.shape[2], 120), mode="bilinear", align_corners=False)
            ref = ref.reshape(2, 25, 3, 120).permute(0, 3, 1, 2)
            torch.testing.assert_close(out[n], ref, rtol=0, atol=1e-6)


def test_interpolation_weights_match_torch_exactly():
    # An identity-matrix input makes the output equal to the interpolation weights themselves.
    for length in (3, 10, 33, 97, 250, 299):
        eye = torch.eye(length)  # (L, L): row j is frame-index j's indicator over time
        ref = F.interpolate(eye[None], size=120, mode="linear", align_corners=False)[0]  # (L, 120)
        x = eye.T.reshape(1, 1, length, length, 1).expand(1, 1, length, length, 1)  # frame t, "joint" j
        ours = resample_windows(x.contiguous(), CropWindows(torch.tensor([0]), torch.tensor([length])), 120)
        assert torch.equal(ours[0, 0, :, :, 0].T, ref)


# ------------------------------------------------------------------------------ crop windows
def test_centre_crop_bounds():
    valid = torch.arange(1, 401)
    win = crop_windows(valid, train=False, test_crop=0.95)
    for v, s, length in zip(valid.tolist(), win.start.tolist(), win.length.tolist()):
        b = int((1 - 0.95) * v / 2)  # the reference's arithmetic
        assert (s, length) == (b, v - 2 * b)
    assert crop_windows(torch.tensor([100]), train=False).start.item() == 2  # int(2.5) = 2
    assert crop_windows(torch.tensor([300]), train=False).length.item() == 300 - 2 * 7  # int(7.5) = 7
    win = crop_windows(torch.tensor([100]), train=False, test_crop=0.5)
    assert (win.start.item(), win.length.item()) == (25, 50)


def test_train_crop_length_rules_over_many_draws():
    g = torch.Generator().manual_seed(0)
    valid = torch.tensor([1, 5, 63, 64, 65, 100, 127, 128, 200, 300]).repeat(500)
    win = crop_windows(valid, train=True, generator=g)
    start, length = win.start, win.length
    assert torch.all(length <= valid)
    assert torch.all(length >= torch.clamp(valid, max=64))
    assert torch.all(length >= torch.floor(valid * 0.5))
    assert torch.all(start >= 0) and torch.all(start + length <= valid)
    # clips shorter than min_frames are taken whole
    short = valid < 64
    assert torch.all(length[short] == valid[short]) and torch.all(start[short] == 0)
    # long clips: lengths cover [valid/2, valid], starts cover both ends of their range
    long300 = valid == 300
    assert length[long300].min() <= 155 and length[long300].max() >= 295
    assert start[long300].min() == 0
    assert (start[long300] == (valid - length)[long300]).any()


def test_train_crop_fixed_ratio():
    g = torch.Generator().manual_seed(1)
    valid = torch.full((2000,), 200)
    win = crop_windows(valid, train=True, p_min=0.5, p_max=0.5, generator=g)
    assert torch.all(win.length == 100)
    counts = torch.bincount(win.start, minlength=101)
    assert counts.shape[0] == 101 and counts[0] > 0 and counts[100] > 0  # start uniform on [0, 100]
    full = crop_windows(valid, train=True, p_min=1.0, p_max=1.0, generator=g)
    assert torch.all(full.length == 200) and torch.all(full.start == 0)


def test_zero_and_one_frame_clips():
    x = ramp_clips([1, 5], t_max=5, fn=lambda t: t + 1)
    x = torch.cat([torch.zeros(1, *x.shape[1:]), x])  # a zero-length clip first
    valid = torch.tensor([0, 1, 5])
    for train in (True, False):
        out = crop_resize(x, valid, 8, train=train, generator=torch.Generator().manual_seed(0))
        assert out.shape == (3, 2, 8, 3, 3)
        assert torch.all(out[0] == 0)
        assert torch.all(out[1] == 1)  # one frame repeated
        assert torch.isfinite(out).all()


# ------------------------------------------------------------------------------ rotation
def spec_matrix(ax: float, ay: float, az: float) -> np.ndarray:
    """R = Rz Ry Rx written out from the rows listed in spec E."""
    c, s = math.cos(ax), math.sin(ax)
    rx = np.array([[1, 0, 0], [0, c, s], [0, -s, c]])
    c, s = math.cos(ay), math.sin(ay)
    ry = np.array([[c, 0, -s], [0, 1, 0], [s, 0, c]])
    c, s = math.cos(az), math.sin(az)
    rz = np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]])
    return rz @ ry @ rx


def test_rotation_matrices_match_spec_and_are_rotations():
    angles = torch.tensor([[0.1, -0.2, 0.3], [0.0, 0.0, 0.0], [-0.3, 0.25, -0.05]], dtype=torch.float64)
    rot = rotation_matrices(angles)
    for a, r in zip(angles.tolist(), rot):
        np.testing.assert_allclose(r.numpy(), spec_matrix(*a), atol=1e-12)
    eye = torch.eye(3, dtype=torch.float64).expand(3, 3, 3)
    torch.testing.assert_close(rot @ rot.transpose(1, 2), eye)
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(3, dtype=torch.float64))
    # a pure x rotation by the spec's Rx sends (0, 1, 0) to (0, cos, -sin)
    rx = rotation_matrices(torch.tensor([[0.2, 0.0, 0.0]], dtype=torch.float64))[0]
    torch.testing.assert_close(rx @ torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64),
                               torch.tensor([0.0, math.cos(0.2), -math.sin(0.2)], dtype=torch.float64))


def test_random_rotation_properties():
    valid = torch.tensor([30, 50, 50, 10])
    x = random_clips(valid, 50)
    x[1, 1] = 0  # an empty second person
    g = torch.Generator().manual_seed(5)
    y = random_rotation(x, 0.3, generator=g)
    assert y.shape == x.shape
    assert torch.all(y[1, 1] == 0)  # zero person stays zero
    assert torch.all(y[0, :, 30:] == 0)  # padding stays zero
    # same rotation for every frame and both persons: recover R from one sample by least squares
    for n in range(4):
        pts_x = x[n, :, : valid[n]].reshape(-1, 3).double()
        pts_y = y[n, :, : valid[n]].reshape(-1, 3).double()
        sol = torch.linalg.lstsq(pts_x, pts_y).solution  # pts_y = pts_x @ R^T
        torch.testing.assert_close(pts_x @ sol, pts_y, atol=1e-5, rtol=0)
        rot = sol.T
        torch.testing.assert_close(rot @ rot.T, torch.eye(3, dtype=torch.float64), atol=1e-5, rtol=0)
        assert abs(torch.linalg.det(rot).item() - 1) < 1e-5
        # angles within +-0.3: the rotation angle of Rz Ry Rx is bounded by |ax|+|ay|+|az| <= 0.9
        assert math.acos(max(-1.0, min(1.0, (torch.trace(rot).item() - 1) / 2))) <= 0.9 + 1e-6
    # bone lengths are preserved
    for child, parent in BONES:
        before = (x[..., child, :] - x[..., parent, :]).norm(dim=-1)
        after = (y[..., child, :] - y[..., parent, :]).norm(dim=-1)
        torch.testing.assert_close(before, after, atol=1e-5, rtol=1e-5)


def test_rotation_angles_one_draw_per_sample():
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(200, 1, 1, 1, 3)
    x[..., 0] = 1.0  # the unit x vector: its image is R's first column
    y = random_rotation(x, 0.3, generator=g)[:, 0, 0, 0]  # (N, 3) = (cy cz, -cy sz, sy)
    ay = torch.asin(y[:, 2])
    az = torch.atan2(-y[:, 1], y[:, 0])
    assert ay.abs().max() <= 0.3 + 1e-5 and az.abs().max() <= 0.3 + 1e-5
    assert ay.abs().max() > 0.25 and az.abs().max() > 0.25  # the range is used
    assert len(set(ay.tolist())) == 200  # a new draw per sample


# ------------------------------------------------------------------------------ views, determinism
def test_train_and_test_views():
    valid = torch.tensor([40, 300, 120, 64])
    batch = ClipBatch(random_clips(valid, 300), valid, torch.tensor([0, 1, 2, 3]))
    batch.joints[2, 1] = 0
    data = DataSettings()
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    a, b = train_view(batch, 120, data, generator=g1), train_view(batch, 120, data, generator=g2)
    assert a.shape == (4, 2, 120, 25, 3)
    assert torch.equal(a, b)  # same seed, same view
    c = train_view(batch, 120, data, generator=g1)  # the generator moved on
    assert not torch.equal(a, c)
    assert torch.all(a[2, 1] == 0)
    # no rotation and a full crop = plain resize of the whole clip = the test view at test_crop 1
    plain = DataSettings(rotation=0.0, crop_min=1.0, crop_max=1.0)
    torch.testing.assert_close(train_view(batch, 64, plain), test_view(batch, 64, test_crop=1.0))
    t = test_view(batch, 120)
    assert t.shape == (4, 2, 120, 25, 3)
    assert torch.equal(t, test_view(batch, 120))  # deterministic


def test_global_rng_used_without_generator():
    valid = torch.tensor([200, 150])
    x = random_clips(valid, 200)
    torch.manual_seed(11)
    a = crop_resize(x, valid, 32, train=True)
    torch.manual_seed(11)
    b = crop_resize(x, valid, 32, train=True)
    assert torch.equal(a, b)


def test_bad_arguments():
    with pytest.raises(SkelError, match="crop_min"):
        crop_windows(torch.tensor([10]), train=True, p_min=0.8, p_max=0.5)
    with pytest.raises(SkelError, match="test_crop"):
        crop_windows(torch.tensor([10]), train=False, test_crop=0.0)
    with pytest.raises(ValueError):
        resample_windows(torch.zeros(2, 3, 4), CropWindows(torch.tensor([0]), torch.tensor([1])), 4)
    with pytest.raises(ValueError):
        random_rotation(torch.zeros(1, 1, 2, 2, 2))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_for_a_seed():
    valid = torch.tensor([40, 300, 120, 64])
    x = random_clips(valid, 300)
    data = DataSettings()
    cpu = train_view(ClipBatch(x, valid, valid), 120, data, generator=torch.Generator().manual_seed(2))
    gpu_batch = ClipBatch(x.cuda(), valid.cuda(), valid.cuda())
    gpu = train_view(gpu_batch, 120, data, generator=torch.Generator().manual_seed(2))
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=1e-5)
