"""SLiM multi-view generation and skeleton-aware augmentations as batched tensor ops.

Everything here runs on the training device and is vectorised over the batch: no Python loop
over samples or frames (the only loops are over the fixed, small number of views and over the
25 joints' kinematic table, which is turned into one matrix).

Layouts: raw clips ``(N, M, T_max, V, C)`` zero-padded after ``valid`` frames; single-person
sequences ``(N, T, V, C)``; views ``(B, W, V, C)`` with ``W`` the view's frame count.
Coordinates are NTU camera space (x right, y up, z depth), so the vertical axis is y. Every function
that needs the joint layout takes a :class:`~skelcli.topology.Topology` (default ``ntu25``); only the
first ``topology.dims`` channels are coordinates, a confidence channel after them is carried along
untouched. In 2-D (image x, y): mirroring negates x and swaps the mirror pairs, bone-aware scaling
works on 2-D bones alike, the rotation is the in-plane one by gamma (tilt and yaw have no meaning
for image coordinates), noise and axis drop touch x and y only (docs/data.md).

Sources: spec/slim.md 2.1 (person choice, centring, ping-pong padding), 2.5 (crop-and-resample,
global/local views), 3.2 (mirroring, bone-aware scaling, rotation, view-specific noise/axis drop).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from skelcli import topology
from skelcli.engine.hostside import host_side
from skelcli.topology import NTU25, Topology

# ----------------------------------------------------------------------------- clip preparation


def select_person(joints: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """One random non-empty person per clip (spec/slim.md 2.1 step 2).

    joints: (N, M, T, V, C); valid: (N,). A person is non-empty when any coordinate inside the
    valid frames is non-zero; a clip with no non-empty person falls back to person 0.
    Returns (N, T, V, C).
    """
    n, m, t = joints.shape[:3]
    inside = torch.arange(t, device=joints.device)[None, :] < valid[:, None]  # (N, T)
    nonzero = (joints.abs().sum(dim=(3, 4)) > 0) & inside[:, None, :]  # (N, M, T)
    present = nonzero.any(dim=2)  # (N, M)
    present[:, 0] |= ~present.any(dim=1)
    scores = torch.rand(n, m, device=joints.device).masked_fill(~present, -1.0)
    person = scores.argmax(dim=1)
    return joints[torch.arange(n, device=joints.device), person]


def center_on_origin(x: torch.Tensor, joint: int = topology.ORIGIN_JOINT, dims: int | None = None) -> torch.Tensor:
    """Subtract the position of ``joint`` (SpineMid; a topology's ``center``) at frame 0 from every
    joint and frame; with ``dims`` only from the first ``dims`` channels (the coordinates).

    x: (N, T, V, C) -> (N, T, V, C) (spec/slim.md 2.1 step 2).
    """
    if dims is None or dims == x.shape[-1]:
        return x - x[:, :1, joint : joint + 1, :]
    return torch.cat([x[..., :dims] - x[:, :1, joint : joint + 1, :dims], x[..., dims:]], dim=-1)


def pingpong_pad(x: torch.Tensor, valid: torch.Tensor, min_frames: int = 150) -> tuple[torch.Tensor, torch.Tensor]:
    """Lengthen short clips with time-reversed copies (spec/slim.md 2.1 step 1).

    x: (N, T, V, C) with ``valid`` (N,) valid frames. Frame t of the output is frame
    ``t mod 2n`` of the sequence 0..n-1, n-1..0 (n = valid), up to the smallest multiple of n that
    reaches ``min_frames``. Returns (padded (N, T', V, C), padded_len (N,)); the croppers still use
    the original ``valid`` as the clip length. ``min_frames=0`` turns padding off.
    """
    valid = valid.clamp(min=1)
    if min_frames <= 0:
        return x, valid
    n_rep = torch.div(min_frames + valid - 1, valid, rounding_mode="floor").clamp(min=1)
    padded_len = torch.maximum(valid * n_rep, valid)
    t_out = max(int(padded_len.max()), x.shape[1])
    t = torch.arange(t_out, device=x.device)[None, :]  # (1, T')
    period = 2 * valid[:, None]
    phase = t % period
    idx = torch.where(phase < valid[:, None], phase, period - 1 - phase).clamp(max=x.shape[1] - 1)
    out = torch.gather(x, 1, idx[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3]))
    out = out * (t < padded_len[:, None])[:, :, None, None]
    return out, padded_len


# ----------------------------------------------------------------------------- crop and resample


def crop_threshold(window: int) -> int:
    """Minimum crop length thres = max(8, min(16, window)) (spec/slim.md 2.5)."""
    return max(8, min(16, window))


def sample_crops(
    range_start: torch.Tensor,
    range_len: torch.Tensor,
    window: int,
    p_range: tuple[float, float],
    limit: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one temporal crop per sample inside [range_start, range_start + range_len).

    Crop length = clamp(floor(range_len * p), thres, range_len) with p ~ U[p_lo, p_hi] and
    thres = :func:`crop_threshold`; when range_len < thres the crop keeps thres frames (read from
    the ping-pong padding, capped by ``limit`` = the padded length). The start is uniform.
    Returns (start (N,), length (N,)) long.
    """
    n = range_len.shape[0]
    dev = range_len.device
    p = torch.empty(n, device=dev).uniform_(*p_range)
    thres = crop_threshold(window)
    length = torch.floor(range_len.float() * p).long()
    length = torch.maximum(torch.minimum(length, range_len), torch.full_like(length, thres))
    if limit is not None:
        length = torch.minimum(length, limit - range_start).clamp(min=1)
    slack = (range_len - length).clamp(min=0)
    start = range_start + torch.floor(torch.rand(n, device=dev) * (slack + 1).float()).long().clamp(max=slack)
    return start, length


def resample_positions(length: torch.Tensor, window: int) -> torch.Tensor:
    """Fractional frame positions (N, window) inside a crop of ``length`` frames (spec/slim.md 2.5).

    * length <= window: all frames, linearly interpolated to ``window`` (positions j*(L-1)/(W-1));
    * window < length < 2*window: ``window`` consecutive frames with random skips (a random sorted
      subset of the crop's frames);
    * length >= 2*window: segment sampling, one frame at a random offset in each of ``window``
      equal segments.
    """
    n = length.shape[0]
    dev = length.device
    lf = length.float()[:, None]
    j = torch.arange(window, device=dev, dtype=torch.float32)[None, :]
    interp = j * (lf - 1).clamp(min=0) / max(window - 1, 1)

    t_max = max(int(length.max()), window)
    scores = torch.rand(n, t_max, device=dev)
    scores = scores.masked_fill(torch.arange(t_max, device=dev)[None, :] >= length[:, None], 2.0)
    skip = scores.topk(window, dim=1, largest=False).indices.sort(dim=1).values.float()

    seg_lo = torch.floor(j * lf / window)
    seg_hi = torch.floor((j + 1) * lf / window)
    segment = torch.minimum(seg_lo + torch.floor(torch.rand(n, window, device=dev) * (seg_hi - seg_lo)), seg_hi - 1)

    small = (length <= window)[:, None]
    mid = ((length > window) & (length < 2 * window))[:, None]
    return torch.where(small, interp, torch.where(mid, skip, segment))


def gather_frames(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Linear interpolation in time. x: (N, T, V, C); positions (N, W) float -> (N, W, V, C)."""
    t = x.shape[1]
    pos = positions.clamp(0, t - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=t - 1)
    w = (pos - lo.float())[:, :, None, None].to(x.dtype)
    ex = (-1, -1, x.shape[2], x.shape[3])
    a = torch.gather(x, 1, lo[:, :, None, None].expand(*ex))
    b = torch.gather(x, 1, hi[:, :, None, None].expand(*ex))
    return a + (b - a) * w


def crop_resample(
    x: torch.Tensor,
    range_start: torch.Tensor,
    range_len: torch.Tensor,
    window: int,
    p_range: tuple[float, float],
    limit: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Crop inside a range and resample to ``window`` frames.

    x: (N, T, V, C). Returns (view (N, window, V, C), crop start (N,), crop length (N,)).
    """
    start, length = sample_crops(range_start, range_len, window, p_range, limit)
    pos = resample_positions(length, window) + start[:, None].float()
    return gather_frames(x, pos), start, length


# ----------------------------------------------------------------------------- augmentations


def mirror(x: torch.Tensor, topo: Topology = NTU25) -> torch.Tensor:
    """Skeleton-aware mirroring: swap left/right joints and negate x (spec/slim.md 3.2 item 1).

    x: (..., V, C) -> (..., V, C).
    """
    perm = torch.tensor(topo.mirror_permutation(), device=x.device)
    sign = torch.ones(x.shape[-1], device=x.device, dtype=x.dtype)
    sign[0] = -1
    return x.index_select(-2, perm) * sign


@lru_cache(maxsize=32)
def _ancestor_matrix(device: torch.device, topo: Topology = NTU25) -> torch.Tensor:
    """(V, V) float: A[j, k] = 1 when bone k (child joint k) lies on the path from the root to j.
    Cached per (device, topology): it sits in SLiM's per-view augmentation; callers only read it."""
    v = topo.num_joints
    a = torch.zeros(v, v)
    for j in topo.topological_order():
        p = topo.parents[j]
        if p >= 0:
            a[j] = a[p]
            a[j, j] = 1.0
    return a.to(device)


@lru_cache(maxsize=32)
def _index_order_matrices(device: torch.device, topo: Topology = NTU25) -> tuple[torch.Tensor, torch.Tensor]:
    """SLiM's official ``random_scale`` as matrices: it rebuilds joint v = 1, 2, ... in index order as
    ``new[parent] + scaled bone``, where a parent with a higher index is still all zeros. Returns
    (A (V, V), r (V,)): new_j = r_j * x_root + sum_k A[j, k] * scaled_bone_k."""
    v = topo.num_joints
    a, r = torch.zeros(v, v), torch.zeros(v)
    root = topo.root
    r[root] = 1.0
    for j in range(v):
        p = topo.parents[j]
        if p < 0:
            continue
        if p < j or p == root:  # rebuilt already (or the root, kept from the start)
            a[j], r[j] = a[p], r[p]
        a[j, j] = 1.0
    return a.to(device), r.to(device)


def _scale_group_index(topo: Topology = NTU25) -> list[int]:
    """Group index per child joint (``ntu25``: 0 torso, 1 arms, 2 legs); -1 for the root."""
    idx = [-1] * topo.num_joints
    for g, joints in enumerate(topo.scale_groups.values()):
        for j in joints:
            idx[j] = g
    return idx


def bone_scale(x: torch.Tensor, factors: torch.Tensor, topo: Topology = NTU25, mode: str = "kinematic") -> torch.Tensor:
    """Bone-aware scaling by forward kinematics (spec/slim.md 3.2 item 2).

    x: (B, T, V, C); factors: (B, G) with one factor per ``topo.scale_groups`` group (``ntu25``:
    torso, arms, legs). Every bone (child - parent, ``topo.parents``) is scaled by its child's group
    factor and the skeleton is rebuilt from the root, whose trajectory is kept:
    y_j = x_root + sum over bones k on the root->j path of s_k * (x_k - x_parent(k)).
    Only the first ``topo.dims`` channels are scaled.

    ``mode="official"`` reproduces SLiM's released ``random_scale`` (slim/data/augmentations.py), which
    rebuilds joints in index order: a joint whose parent has a higher index (NTU: Neck, both shoulders
    hang off SpineShoulder, joint 20) is placed relative to the origin instead of its parent, and so
    is everything below it (:func:`_index_order_matrices`).
    """
    if mode not in ("kinematic", "official"):
        raise ValueError(f"bone_scale mode must be 'kinematic' or 'official', got {mode!r}")
    if x.shape[-1] > topo.dims:
        return torch.cat([bone_scale(x[..., : topo.dims], factors, topo, mode), x[..., topo.dims :]], dim=-1)
    root = topo.root
    parents = torch.tensor([max(p, 0) for p in topo.parents], device=x.device)
    bones = x - x.index_select(2, parents)  # root row becomes 0
    group = torch.tensor([max(g, 0) for g in _scale_group_index(topo)], device=x.device)
    s = factors.to(x.dtype).index_select(1, group)  # (B, V)
    s[:, root] = 0.0
    if mode == "official":
        anc, keep_root = (t.to(x.dtype) for t in _index_order_matrices(x.device, topo))
        rebuilt = torch.einsum("jk,bk,btkc->btjc", anc, s, bones)
        return keep_root[None, None, :, None] * x[:, :, root : root + 1] + rebuilt
    anc = _ancestor_matrix(x.device, topo).to(x.dtype)
    rebuilt = torch.einsum("jk,bk,btkc->btjc", anc, s, bones)
    return x[:, :, root : root + 1] + rebuilt


def rotation_matrices(alpha: torch.Tensor, beta: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """R = Rz(gamma) @ Ry(beta) @ Rx(alpha) for (B,) angles -> (B, 3, 3) (spec/slim.md 3.2 item 3)."""
    ca, sa, cb, sb, cg, sg = alpha.cos(), alpha.sin(), beta.cos(), beta.sin(), gamma.cos(), gamma.sin()
    one, zero = torch.ones_like(alpha), torch.zeros_like(alpha)
    rx = torch.stack([one, zero, zero, zero, ca, -sa, zero, sa, ca], -1).reshape(-1, 3, 3)
    ry = torch.stack([cb, zero, sb, zero, one, zero, -sb, zero, cb], -1).reshape(-1, 3, 3)
    rz = torch.stack([cg, -sg, zero, sg, cg, zero, zero, zero, one], -1).reshape(-1, 3, 3)
    return rz @ ry @ rx


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of the skeleton-aware augmentations (spec/slim.md 3.2)."""

    mirror_p: float = 0.5
    scale_p: float = 0.5
    scale_range: tuple[float, float] = (0.85, 1.15)
    rotate_p: float = 0.5
    tilt: float = 0.3  # |alpha|, |gamma| in radians
    yaw: float = 0.3  # |beta| about the vertical axis: 0.3 as coded; the paper figure says pi
    scale_mode: str = "official"  # bone_scale's mode: "official" (SLiM's index-order rebuild) or "kinematic"


def skeleton_augment(x: torch.Tensor, cfg: AugmentConfig, topo: Topology = NTU25) -> torch.Tensor:
    """Mirror, bone-scale, rotate (each with its probability, per sample, in that order); 2-D layouts
    rotate in the image plane by gamma only.

    x: (B, W, V, C) -> (B, W, V, C).
    """
    b, dev, dt = x.shape[0], x.device, x.dtype
    if cfg.mirror_p > 0:
        flip = torch.rand(b, device=dev) < cfg.mirror_p
        x = torch.where(flip[:, None, None, None], mirror(x, topo), x)
    if cfg.scale_p > 0:
        lo, hi = cfg.scale_range
        factors = torch.empty(b, len(topo.scale_groups), device=dev).uniform_(lo, hi)
        apply = torch.rand(b, device=dev) < cfg.scale_p
        factors = torch.where(apply[:, None], factors, torch.ones_like(factors))
        scaled = bone_scale(x, factors, topo, cfg.scale_mode)
        # Factors of 1 are the identity for the kinematic rebuild, but not for the official index-order
        # one (joints hanging off a later-index parent move to the origin): skipped samples keep x.
        x = torch.where(apply[:, None, None, None], scaled, x) if cfg.scale_mode == "official" else scaled
    if cfg.rotate_p > 0:
        alpha = torch.empty(b, device=dev).uniform_(-cfg.tilt, cfg.tilt)
        beta = torch.empty(b, device=dev).uniform_(-cfg.yaw, cfg.yaw)
        gamma = torch.empty(b, device=dev).uniform_(-cfg.tilt, cfg.tilt)
        apply = (torch.rand(b, device=dev) < cfg.rotate_p).to(alpha.dtype)
        if topo.dims == 3:
            rot = rotation_matrices(alpha * apply, beta * apply, gamma * apply).to(dt)
            coords = torch.einsum("bij,btvj->btvi", rot, x[..., :3])
        else:  # in-plane: the x-y block of Rz(gamma)
            zero = torch.zeros_like(gamma)
            rot = rotation_matrices(zero, zero, gamma * apply)[:, :2, :2].to(dt)
            coords = torch.einsum("bij,btvj->btvi", rot, x[..., :2])
        x = coords if x.shape[-1] == topo.dims else torch.cat([coords, x[..., topo.dims :]], dim=-1)
    return x


def add_noise(x: torch.Tensor, sigma: float, p: float, dims: int | None = None) -> torch.Tensor:
    """Gaussian noise of std ``sigma`` on each sample with probability ``p``; with ``dims`` on the
    first ``dims`` channels (the coordinates) only. x: (B, W, V, C)."""
    if sigma <= 0 or p <= 0:
        return x
    apply = (torch.rand(x.shape[0], device=x.device) < p).to(x.dtype)[:, None, None, None]
    if dims is not None and dims < x.shape[-1]:
        return torch.cat([x[..., :dims] + torch.randn_like(x[..., :dims]) * sigma * apply, x[..., dims:]], dim=-1)
    return x + torch.randn_like(x) * sigma * apply


def axis_drop(x: torch.Tensor, p: float, dims: int | None = None) -> torch.Tensor:
    """Zero one random coordinate axis (x, y or z; of the first ``dims`` channels when given) of each
    sample with probability ``p``."""
    if p <= 0:
        return x
    b, c = x.shape[0], x.shape[-1]
    axis = torch.randint(dims or c, (b,), device=x.device)
    apply = torch.rand(b, device=x.device) < p
    keep = ~(torch.nn.functional.one_hot(axis, c).bool() & apply[:, None])
    return x * keep.to(x.dtype)[:, None, None, :]


# ----------------------------------------------------------------------------- multi-view


@dataclass(frozen=True)
class ViewConfig:
    """Global/local view layout and view-specific extras (spec/slim.md 2.5 and 3.2)."""

    global_frames: int = 64
    global_crop: tuple[float, float] = (0.5, 1.0)
    local_frames: tuple[int, ...] = (32, 16, 16, 8)
    local_crops: tuple[tuple[float, float], ...] = ((0.35, 0.70), (0.15, 0.40), (0.15, 0.40), (0.05, 0.20))
    pad_min_frames: int = 150
    g1_noise: tuple[float, float] = (0.01, 1.0)  # (sigma, p)
    g2_noise: tuple[float, float] = (0.05, 0.1)
    g2_axis_drop: float = 0.2
    local_noise: tuple[float, float] = (0.01, 0.5)
    augment: AugmentConfig = AugmentConfig()
    topology: Topology = NTU25


@dataclass
class MultiView:
    """The views of one batch of N clips.

    globals_: (2, N, Wg, V, C), view g of clip n at [g, n].
    locals_: one tensor per local slot s (slot order = for g in (0, 1): ``local_frames``), each
    (N, W_s, V, C); ``local_parent[s]`` is the global view that slot s was cropped from.
    global_range / local_range: (start, length) pairs of (N,) long raw-frame ranges.
    """

    globals_: torch.Tensor
    locals_: list[torch.Tensor]
    local_parent: list[int]
    global_range: list[tuple[torch.Tensor, torch.Tensor]]
    local_range: list[tuple[torch.Tensor, torch.Tensor]]


@host_side  # data-dependent crops and draws: eager under --compile (engine/hostside.py)
def make_views(joints: torch.Tensor, valid: torch.Tensor, cfg: ViewConfig) -> MultiView:
    """Build SLiM's 2 global + 2 x len(local_frames) local views from raw clips.

    joints: (N, M, T_max, V, C) zero-padded; valid: (N,). One random non-empty person, centred on
    the topology's centre joint (SpineMid) at frame 0, ping-pong padded; then per clip two independent global crops and, inside
    each global crop's frame range, the local crops; then the skeleton-aware augmentations and the
    view-specific noise / axis drop (spec/slim.md 2.1, 2.5, 3.2).
    """
    valid = valid.to(joints.device).long().clamp(min=1, max=joints.shape[2])
    topo = cfg.topology
    x = center_on_origin(select_person(joints, valid), topo.center, topo.dims)
    x, padded_len = pingpong_pad(x, valid, cfg.pad_min_frames)
    zero = torch.zeros_like(valid)
    globals_, granges = [], []
    for _ in range(2):
        view, s, length = crop_resample(x, zero, valid, cfg.global_frames, cfg.global_crop, padded_len)
        globals_.append(view)
        granges.append((s, length))
    locals_, lranges, parents = [], [], []
    for g in range(2):
        gs, gl = granges[g]
        for w, pr in zip(cfg.local_frames, cfg.local_crops):
            view, s, length = crop_resample(x, gs, gl, w, pr, padded_len)
            locals_.append(view)
            lranges.append((s, length))
            parents.append(g)

    aug = cfg.augment
    d = topo.dims
    g1 = add_noise(skeleton_augment(globals_[0], aug, topo), *cfg.g1_noise, dims=d)
    g2 = axis_drop(add_noise(skeleton_augment(globals_[1], aug, topo), *cfg.g2_noise, dims=d), cfg.g2_axis_drop, dims=d)
    locals_ = [add_noise(skeleton_augment(v, aug, topo), *cfg.local_noise, dims=d) for v in locals_]
    return MultiView(torch.stack([g1, g2]), locals_, parents, granges, lranges)


__all__ = [
    "AugmentConfig", "MultiView", "ViewConfig", "add_noise", "axis_drop", "bone_scale", "center_on_origin",
    "crop_resample", "crop_threshold", "gather_frames", "make_views", "mirror", "pingpong_pad",
    "resample_positions", "rotation_matrices", "sample_crops", "select_person", "skeleton_augment",
]
