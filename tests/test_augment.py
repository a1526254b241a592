"""SLiM views and skeleton-aware augmentations (spec/slim.md 2.1, 2.5, 3.2)."""

from __future__ import annotations

import math

import pytest
import torch

from skelcli import topology
from skelcli.data.augment import (
    AugmentConfig,
    ViewConfig,
    axis_drop,
    bone_scale,
    center_on_origin,
    crop_threshold,
    gather_frames,
    make_views,
    mirror,
    pingpong_pad,
    resample_positions,
    rotation_matrices,
    select_person,
    skeleton_augment,
)

LEFT_ARM = (4, 5, 6, 7, 21, 22)
RIGHT_ARM = (8, 9, 10, 11, 23, 24)


def _skeleton(b: int = 4, t: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, t, 25, 3, generator=torch.Generator().manual_seed(seed))


def test_mirroring_twice_is_identity_and_maps_left_arm_onto_right() -> None:
    x = _skeleton()
    y = mirror(x)
    torch.testing.assert_close(mirror(y), x)
    for left, right in zip(LEFT_ARM, RIGHT_ARM):
        torch.testing.assert_close(y[..., right, 0], -x[..., left, 0])
        torch.testing.assert_close(y[..., right, 1:], x[..., left, 1:])
        torch.testing.assert_close(y[..., left, 0], -x[..., right, 0])
    # joints on the midline stay in place, x negated
    torch.testing.assert_close(y[..., 3, :], x[..., 3, :] * torch.tensor([-1.0, 1.0, 1.0]))


def test_bone_scaling_keeps_directions_and_scales_lengths_by_group() -> None:
    x = _skeleton(3, 5)
    factors = torch.tensor([[0.9, 1.1, 1.15], [1.0, 1.0, 1.0], [1.15, 0.85, 0.95]])
    y = bone_scale(x, factors)
    group_of = {j: g for g, joints in enumerate(topology.SCALE_GROUPS.values()) for j in joints}
    root = topology.ROOT_JOINT
    torch.testing.assert_close(y[:, :, root], x[:, :, root])  # root trajectory kept
    for child, parent in topology.BONES:
        bx = x[:, :, child] - x[:, :, parent]
        by = y[:, :, child] - y[:, :, parent]
        f = factors[:, group_of[child]][:, None, None]
        torch.testing.assert_close(by, bx * f, rtol=1e-5, atol=1e-5)  # same direction, length x factor
    torch.testing.assert_close(y[1], x[1], rtol=1e-5, atol=1e-5)  # factor 1 changes nothing


def test_rotation_is_rz_ry_rx() -> None:
    a, b, g = torch.tensor([0.2]), torch.tensor([-0.3]), torch.tensor([0.1])
    r = rotation_matrices(a, b, g)[0]
    torch.testing.assert_close(r @ r.t(), torch.eye(3), atol=1e-6, rtol=0)
    assert math.isclose(float(torch.det(r)), 1.0, abs_tol=1e-6)
    # yaw only: rotation about the vertical y axis keeps y
    ry = rotation_matrices(torch.zeros(1), torch.tensor([0.5]), torch.zeros(1))[0]
    v = torch.tensor([1.0, 2.0, 0.0])
    out = ry @ v
    assert math.isclose(float(out[1]), 2.0, abs_tol=1e-6)
    assert math.isclose(float(out[0]), math.cos(0.5), abs_tol=1e-6)
    assert math.isclose(float(out[2]), -math.sin(0.5), abs_tol=1e-6)


def test_skeleton_augment_off_is_identity_and_rotation_keeps_bone_lengths() -> None:
    x = _skeleton()
    off = AugmentConfig(mirror_p=0, scale_p=0, rotate_p=0)
    torch.testing.assert_close(skeleton_augment(x, off), x)
    rot_only = AugmentConfig(mirror_p=0, scale_p=0, rotate_p=1.0)
    y = skeleton_augment(x, rot_only)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(y, x)


def test_axis_drop_zeroes_exactly_one_axis() -> None:
    x = _skeleton(64).abs() + 0.1
    y = axis_drop(x, 1.0)
    zero_axes = (y == 0).all(dim=(1, 2)).sum(dim=1)
    assert bool((zero_axes == 1).all())


def test_pingpong_pad_hand_computed() -> None:
    x = torch.arange(5, dtype=torch.float32).reshape(1, 5, 1, 1).expand(2, 5, 1, 1).clone()
    x[1, 3:] = 0
    valid = torch.tensor([5, 3])
    out, padded = pingpong_pad(x, valid, min_frames=8)
    assert padded.tolist() == [10, 9]
    assert out[0, :10, 0, 0].tolist() == [0, 1, 2, 3, 4, 4, 3, 2, 1, 0]
    assert out[1, :9, 0, 0].tolist() == [0, 1, 2, 2, 1, 0, 0, 1, 2]
    assert out[1, 9:].abs().sum() == 0


def test_person_selection_and_centering() -> None:
    joints = torch.zeros(2, 2, 10, 25, 3)
    joints[0, 1] = 1.0  # clip 0: only person 1 present
    joints[1, 0] = 2.0  # clip 1: only person 0 present
    for _ in range(5):
        x = select_person(joints, torch.tensor([10, 10]))
        assert bool((x[0] == 1).all()) and bool((x[1] == 2).all())
    y = center_on_origin(_skeleton())
    assert float(y[:, 0, topology.ORIGIN_JOINT].abs().max()) == 0.0


def test_resample_rules() -> None:
    w = 16
    length = torch.tensor([10, 16, 24, 40, 300])
    pos = resample_positions(length, w)
    assert pos.shape == (5, w)
    torch.testing.assert_close(pos[0], torch.linspace(0, 9, w))  # shorter: all frames, interpolated
    torch.testing.assert_close(pos[1], torch.arange(16.0))
    mid = pos[2]  # 1x..2x: distinct frames with random skips
    assert bool((mid.diff() >= 1).all()) and mid.max() < 24 and bool((mid == mid.round()).all())
    for row, n in ((3, 40), (4, 300)):  # >= 2x: one frame inside each segment
        j = torch.arange(w, dtype=torch.float32)
        lo, hi = torch.floor(j * n / w), torch.floor((j + 1) * n / w)
        assert bool(((pos[row] >= lo) & (pos[row] < hi)).all())
    # linear interpolation between frames
    x = torch.arange(4.0).reshape(1, 4, 1, 1)
    assert gather_frames(x, torch.tensor([[0.5, 2.25, 3.0]])).flatten().tolist() == [0.5, 2.25, 3.0]
    assert crop_threshold(64) == 16 and crop_threshold(8) == 8


@pytest.mark.parametrize("pad", [150, 0])
def test_views_shapes_and_locals_inside_their_global_range(pad: int) -> None:
    torch.manual_seed(0)
    n = 6
    valid = torch.tensor([300, 120, 64, 40, 20, 16])
    joints = torch.randn(n, 2, 300, 25, 3)
    for i, v in enumerate(valid.tolist()):
        joints[i, :, v:] = 0
    cfg = ViewConfig(pad_min_frames=pad)
    for _ in range(5):
        views = make_views(joints, valid, cfg)
        assert views.globals_.shape == (2, n, 64, 25, 3)
        assert [v.shape[1] for v in views.locals_] == [32, 16, 16, 8] * 2
        assert views.local_parent == [0] * 4 + [1] * 4
        assert bool(torch.isfinite(views.globals_).all())
        for (gs, gl) in views.global_range:
            assert bool((gs >= 0).all()) and bool((gs + gl <= torch.maximum(valid, torch.full_like(valid, 16))).all())
            assert bool((gl >= torch.minimum(valid, torch.full_like(valid, 16))).all())
        for (ls, ll), parent in zip(views.local_range, views.local_parent):
            gs, gl = views.global_range[parent]
            assert bool((ls >= gs).all()) and bool((ls + ll <= gs + gl).all())
            assert bool((ll >= 1).all())


def test_bone_scale_official_mode_rebuilds_in_index_order_like_the_released_code():
    """SLiM's released random_scale rebuilds joint v = 1..24 as new[parent] + s * bone, so a joint whose
    parent has a higher index (Neck, both shoulders: parent SpineShoulder = 20) is placed from the origin.
    Hand-written loop of that rule on a hand-built skeleton; "kinematic" keeps every bone scaled instead."""
    import torch

    from skelcli.data.augment import bone_scale
    from skelcli.topology import NTU25

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 25, 3, generator=g)
    factors = torch.tensor([[1.1, 0.9, 1.05], [0.95, 1.0, 1.15]])
    group = {j: k for k, joints in enumerate(NTU25.scale_groups.values()) for j in joints}
    expected = torch.zeros_like(x)
    expected[:, :, 0] = x[:, :, 0]
    for v in range(1, 25):
        p = NTU25.parents[v]
        s = factors[:, group[v]][:, None, None]
        expected[:, :, v] = expected[:, :, p] + s * (x[:, :, v] - x[:, :, p])  # parent 20 still zero for v < 20
    official = bone_scale(x, factors, NTU25, "official")
    torch.testing.assert_close(official, expected)
    assert not torch.allclose(official[:, :, 2], x[:, :, 20] + factors[:, 0, None, None] * (x[:, :, 2] - x[:, :, 20]))
    kin = bone_scale(x, factors, NTU25, "kinematic")
    for c, p in NTU25.bones:
        s = factors[:, group[c]][:, None]
        torch.testing.assert_close((kin[:, :, c] - kin[:, :, p]).norm(dim=-1), s * (x[:, :, c] - x[:, :, p]).norm(dim=-1))
    torch.testing.assert_close(bone_scale(x, torch.ones(2, 3), NTU25, "kinematic"), x)


def test_official_bone_scaling_leaves_samples_it_does_not_scale_untouched():
    """With scale_mode "official" a factor of 1 is not the identity (the index-order rebuild moves the
    joints that hang off a later-index parent), so samples whose scaling draw says "skip" must keep their
    coordinates exactly: here no sample is scaled (p tiny) and nothing else is applied."""
    import torch

    from skelcli.data.augment import AugmentConfig, bone_scale, skeleton_augment

    torch.manual_seed(0)
    x = torch.randn(6, 4, 25, 3)
    cfg = AugmentConfig(mirror_p=0.0, scale_p=1e-12, rotate_p=0.0, scale_mode="official")
    assert torch.equal(skeleton_augment(x, cfg), x)
    assert not torch.allclose(bone_scale(x, torch.ones(6, 3), mode="official"), x)  # why the guard is needed
