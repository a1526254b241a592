"""SLiM's own downstream protocols: the linear-head grid and the weighted k-NN (spec/protocols-and-checkpoints.md 1, 2.1).

Citation keys: [S path] = KAIST-VICLab/SLiM at 2b8bb41. The pieces, in the order a clip meets them:

1. **Buffer** [S slim/data/datasets/ntu.py ``_prepare_buffer``, ``__getitem__``]: the frames whose
   signed sum over (M, V, C) is non-zero, in order; ``valid`` = their count (before padding); clips
   shorter than ``pad_min_frames`` (150) lengthened by ping-pong copies
   (:func:`skelcli.data.augment.pingpong_pad`). Person mask = |coordinates| summed over the whole
   buffer > 1e-5. (:func:`slim_buffer`)
2. **View** [S slim/data/augmentations.py DownstreamAugmentation]: the deterministic test branch
   (:func:`slim_test_view`) or the random train branch (:func:`slim_train_view`). Both persons of a
   clip get the same frames. Downstream clips are not re-centred.
3. **Features** [S slim/models/vision_transformer.py ``get_intermediate_layers``, slim/eval/linear.py,
   slim/eval/utils.py, slim/eval/knn.py]: persons encoded as separate sequences; per block the
   final-norm CLS and the token mean of the patch tokens (registers dropped), summed over non-empty
   persons for the linear heads, side by side for the k-NN. (:func:`slim_features`)
4. **Linear grid** [S slim/eval/linear.py]: :func:`head_grid`, :func:`linear_input`,
   :func:`slim_linear_grid`.
5. **k-NN** [S slim/eval/knn.py]: :func:`slim_knn_features`, :func:`weighted_knn_vote`, :func:`slim_knn`.

Layouts: raw clips (N, M, T_max, V, C) zero-padded after ``valid`` frames (a
:class:`~skelcli.data.clips.ClipBatch`); buffers (N, T', M, V, C); views (N, M, W, V, C).
Accuracies are fractions in [0, 1] (the official scripts print percentages).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np
import torch

from skelcli.errors import SkelError

#: The official test branch's fixed parameters [S slim/data/augmentations.py ``_test_sampling``]:
#: p_interval [0.95] and thres 64 (a constant, not the window ``out_size``).
TEST_CROP = 0.95
TEST_THRES = 64
#: ``NTU_Classification(min_buffer=150)`` in every official downstream script.
PAD_MIN_FRAMES = 150
#: The person mask threshold [S slim/data/datasets/ntu.py ``valid_person_mask = body_sum > 1e-5``].
PERSON_EPS = 1e-5


# ---------------------------------------------------------------------------------------- buffer
@dataclass
class SlimBuffer:
    """The official per-clip buffer, batched.

    frames: (N, T', M, V, C) the non-zero frames of each clip first, ping-pong padded, zeros after
    ``padded`` frames; valid: (N,) long count of non-zero frames (before padding); padded: (N,) long
    buffer length; person_mask: (N, M) bool, person m's |coordinates| summed over the buffer > 1e-5.
    """

    frames: torch.Tensor
    valid: torch.Tensor
    padded: torch.Tensor
    person_mask: torch.Tensor


def slim_buffer(batch, pad_min_frames: int = PAD_MIN_FRAMES) -> SlimBuffer:
    """``_prepare_buffer`` [S slim/data/datasets/ntu.py] for a :class:`~skelcli.data.clips.ClipBatch`.

    Keeps the frames (inside each clip's ``valid``) whose signed sum over (M, V, C) is non-zero, in
    order (a clip without any keeps all its frames), then appends time-reversed copies until the
    buffer has at least ``pad_min_frames`` frames (0 = off). Returns a :class:`SlimBuffer`.
    """
    from skelcli.data.augment import pingpong_pad

    joints = batch.joints
    n, m, t, v, c = joints.shape
    dev = joints.device
    length = batch.valid.to(dev).long().clamp(min=1, max=t)
    inside = torch.arange(t, device=dev)[None, :] < length[:, None]  # (N, T)
    keep = (joints.sum(dim=(1, 3, 4)) != 0) & inside
    count = keep.sum(dim=1)
    keep = torch.where((count > 0)[:, None], keep, inside)
    count = torch.where(count > 0, count, length)
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)  # kept frames first, in order
    seq = joints.permute(0, 2, 1, 3, 4).reshape(n, t, m * v, c)  # (N, T, M*V, C)
    seq = torch.gather(seq, 1, order[:, :, None, None].expand(-1, -1, m * v, c))
    seq = seq * (torch.arange(t, device=dev)[None, :] < count[:, None])[:, :, None, None].to(seq.dtype)
    buf, padded = pingpong_pad(seq, count, pad_min_frames)
    buf = buf.reshape(n, buf.shape[1], m, v, c)
    mask = buf.abs().sum(dim=(1, 3, 4)) > PERSON_EPS
    return SlimBuffer(buf, count, padded, mask)


def _as_buffer(batch_or_buffer, pad_min_frames: int) -> SlimBuffer:
    return batch_or_buffer if isinstance(batch_or_buffer, SlimBuffer) else slim_buffer(batch_or_buffer, pad_min_frames)


def _gather_view(buf: SlimBuffer, start: torch.Tensor, rel: torch.Tensor) -> torch.Tensor:
    """Buffer frames at ``start`` (N,) long + ``rel`` (N, W) float32 positions -> (N, M, W, V, C).

    Integer ``rel`` copies frames exactly; fractional ones interpolate linearly as ``F.interpolate``
    does, (1 - l) * x[i0] + l * x[i0 + 1] with l = rel - floor(rel) (relative to the crop start, so
    the weights are PyTorch's)."""
    frames = buf.frames
    n, tb, m, v, c = frames.shape
    dev = frames.device
    rel = rel.to(dev, torch.float32)
    i0 = rel.floor()
    lam = (rel - i0)[:, :, None, None]
    lo = (start.to(dev)[:, None] + i0.long()).clamp(0, tb - 1)
    hi = (lo + 1).clamp(max=tb - 1)
    seq = frames.reshape(n, tb, m * v, c)
    ex = (-1, -1, m * v, c)
    a = torch.gather(seq, 1, lo[:, :, None, None].expand(*ex))
    b = torch.gather(seq, 1, hi[:, :, None, None].expand(*ex))
    out = a * (1 - lam).to(a.dtype) + b * lam.to(a.dtype)
    return out.reshape(n, -1, m, v, c).permute(0, 2, 1, 3, 4).contiguous()


def _interp_positions(length: torch.Tensor, window: int) -> torch.Tensor:
    """``F.interpolate(mode='linear', align_corners=False)`` of ``length`` consecutive frames to
    ``window`` as source positions (N, window) in [0, length - 1] (PyTorch clamps the source index at
    0 and reuses the last frame past the end)."""
    j = torch.arange(window, dtype=torch.float64, device=length.device)[None, :]
    lf = length.to(torch.float32)[:, None]
    scale = (lf / window).to(torch.float64)  # a float32 scale, the index in float64: PyTorch's CPU kernel, to ~1 ulp
    src = (scale * (j + 0.5) - 0.5).clamp(min=0.0).to(torch.float32)
    return torch.minimum(src, lf - 1)


# ------------------------------------------------------------------------------------------ views
def slim_test_view(batch, frames: int = 64, *, pad_min_frames: int = PAD_MIN_FRAMES, p: float = TEST_CROP,
                   thres: int = TEST_THRES) -> torch.Tensor:
    """The official deterministic test view [S slim/data/augmentations.py ``_test_sampling`` ->
    ``_valid_crop_resize``, ``len(p_interval) == 1`` branch].

    batch: a ClipBatch (joints (N, M, T_max, V, C), valid (N,)) or a :class:`SlimBuffer`. With V the
    clip's non-zero frames: L = min(max(floor(V * 0.95), 64), V) (64 = ``thres``, a constant of the
    official code independent of ``frames``), offset = int((1 - 0.95) * V / 2) (= int(0.025 V));

    * L >= frames: buffer frames floor(i * L / frames) + offset, i = 0..frames-1, no interpolation;
    * L < frames: buffer frames offset .. offset + L - 1, linearly interpolated to ``frames``
      (``F.interpolate`` linear, align_corners=False); for short clips this reads into the ping-pong
      padding.

    Returns (N, M, frames, V, C); both persons get the same frames.
    """
    buf = _as_buffer(batch, pad_min_frames)
    vf = buf.valid.cpu().to(torch.float64)  # positions on the CPU (float64 arithmetic as numpy's)
    length = torch.minimum(torch.clamp(torch.floor(vf * p), min=thres), vf).long()
    offset = torch.floor((1 - p) * vf / 2).long()  # int() truncation of a non-negative number
    i = torch.arange(frames, device=length.device)[None, :]
    stepped = torch.div(i * length[:, None], frames, rounding_mode="floor").to(torch.float32)
    interp = _interp_positions(length, frames)
    rel = torch.where((length >= frames)[:, None], stepped, interp)
    return _gather_view(buf, offset, rel)


slim_test_view.__test__ = False  # type: ignore[attr-defined]  # not a pytest test when imported


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
    """U[0, 1) float64 draws on the CPU (seeded by ``generator`` when given)."""
    return torch.rand(shape, dtype=torch.float64, generator=generator)


def _train_positions(valid: torch.Tensor, window: int, p_range: tuple[float, float], thres: int,
                     generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The train branch's crop start (N,) long and frame positions in the crop (N, window) float32, on the CPU [S slim/data/augmentations.py
    ``_valid_crop_resize``, ``len(p_interval) == 2`` branch]:

    p ~ U[p_lo, p_hi); L = min(max(floor(V p), thres), V); start ~ randint(0, V - L + 1); then

    * L < window: frames 0..L-1 interpolated to ``window`` (linear, align_corners=False);
    * window <= L < 2 window: frames j + offset_j, offset = cumsum of L - window distinct "skip" slots
      drawn from window + 1 (no two dropped frames are adjacent; a skip in the last slot drops the
      last frame);
    * L >= 2 window: bins b_i = floor(i L / window), one frame at b_i + randint(b_{i+1} - b_i).
    """
    n = valid.shape[0]
    vf = valid.to(torch.float64)
    lo, hi = p_range
    p = _uniform((n,), generator) * (hi - lo) + lo
    length = torch.minimum(torch.clamp(torch.floor(vf * p), min=thres), vf).long()
    start = torch.floor(_uniform((n,), generator) * (valid - length + 1).to(torch.float64)).long()

    j = torch.arange(window)[None, :]
    interp = _interp_positions(length, window)

    ranks = torch.argsort(torch.argsort(_uniform((n, window + 1), generator), dim=1), dim=1)
    slots = (ranks < (length - window).clamp(min=0)[:, None]).long()
    skip = (j + torch.cumsum(slots, dim=1)[:, :window]).to(torch.float32)

    bins = torch.div(torch.arange(window + 1)[None, :] * length[:, None], window, rounding_mode="floor")
    size = (bins[:, 1:] - bins[:, :window]).to(torch.float64)
    segment = (bins[:, :window] + torch.floor(_uniform((n, window), generator) * size).long()).to(torch.float32)

    rel = torch.where((length < window)[:, None], interp, torch.where((length < 2 * window)[:, None], skip, segment))
    return start, rel


def slim_train_view(batch, recipe, topo=None, generator: torch.Generator | None = None, *, frames: int | None = None) -> torch.Tensor:
    """DownstreamAugmentation's train branch [S slim/data/augmentations.py DownstreamAugmentation.__call__,
    ``_train_sampling``, ``spatial_flip``, ``random_scale``, ``random_rot``, ``gaussian_noise``].

    batch: a ClipBatch (joints (N, M, T_max, V, C), valid (N,)) or a :class:`SlimBuffer`; recipe: a
    :class:`~skelcli.eval.recipes.SlimDownstreamView`; topo: the clips' :class:`~skelcli.topology.Topology`
    (None = ``ntu25``); frames: view length (None = ``recipe.frames``, else 64).

    Per clip: random crop (p ~ U[crop_min, crop_max] of the valid frames, at least ``min_crop_frames``)
    resampled to ``frames`` (:func:`_train_positions`), then, each with its probability and the same
    draw for both persons (the official transforms act on the whole (C, T, V, M) array): mirror;
    bone-aware scaling (``scale_mode``) whose factors are drawn **per person** (``random_scale`` loops
    over M); rotation R = Rz(gamma) Ry(beta) Rx(alpha) with alpha, gamma ~ U(+-tilt), beta ~ U(+-yaw);
    Gaussian noise ``noise_sigma``. No re-centring. 2-D layouts rotate in the image plane by gamma only
    and a score channel after the coordinates is left untouched (as
    :func:`skelcli.data.augment.skeleton_augment`). Empty persons stay all-zero (the official code adds
    noise to them too, but its person mask drops them, and persons are encoded independently, so the
    features are the same).

    All random numbers are drawn on the CPU from ``generator`` (reproducible across devices).
    Returns (N, M, frames, V, C).
    """
    from skelcli.data.augment import bone_scale, mirror, rotation_matrices
    from skelcli.topology import get_topology

    topo = get_topology(topo)
    window = int(frames or recipe.frames or 64)
    buf = _as_buffer(batch, recipe.pad_min_frames)
    dev = buf.frames.device
    start, rel = _train_positions(buf.valid.cpu(), window, (recipe.crop_min, recipe.crop_max), recipe.min_crop_frames, generator)
    x = _gather_view(buf, start, rel)  # (N, M, W, V, C)
    n, m, w, v, c = x.shape
    d = min(topo.dims, c)
    dt = x.dtype

    def chance(prob: float) -> torch.Tensor:
        return (_uniform((n,), generator) < prob).to(dev)

    def each(mask: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
        return torch.where(mask.reshape(-1, *([1] * (old.dim() - 1))), new, old)

    if recipe.mirror_p > 0:
        x = each(chance(recipe.mirror_p), mirror(x, topo), x)
    if recipe.scale_p > 0 and topo.scale_groups:
        apply = chance(recipe.scale_p)
        lo, hi = recipe.scale_range
        groups = len(topo.scale_groups)
        factors = (_uniform((n * m, groups), generator) * (hi - lo) + lo).to(device=dev, dtype=dt)
        scaled = bone_scale(x.reshape(n * m, w, v, c), factors, topo, recipe.scale_mode).reshape(n, m, w, v, c)
        x = each(apply, scaled, x)  # not applied = untouched ("official" scaling with factors 1 is no identity)
    if recipe.rotate_p > 0:
        apply = chance(recipe.rotate_p)
        alpha = (_uniform((n,), generator) * 2 - 1) * recipe.tilt
        gamma = (_uniform((n,), generator) * 2 - 1) * recipe.tilt
        beta = (_uniform((n,), generator) * 2 - 1) * recipe.yaw
        if topo.dims == 3:
            rot = rotation_matrices(alpha, beta, gamma)
        else:  # in-plane: the x-y block of Rz(gamma)
            zero = torch.zeros_like(gamma)
            rot = rotation_matrices(zero, zero, gamma)[:, :2, :2]
        rot = rot.to(device=dev, dtype=dt)
        coords = torch.einsum("nij,nmtvj->nmtvi", rot, x[..., :d])
        coords = each(apply, coords, x[..., :d])
        x = coords if d == c else torch.cat([coords, x[..., d:]], dim=-1)
    if recipe.noise_p > 0 and recipe.noise_sigma > 0:
        apply = chance(recipe.noise_p).to(dt)
        noise = torch.randn((n, m, w, v, d), generator=generator).to(device=dev, dtype=dt) * recipe.noise_sigma
        keep = apply[:, None] * buf.person_mask.to(dt)  # (N, M): empty persons stay zero
        noise = noise * keep[:, :, None, None, None]
        x = x[..., :d] + noise if d == c else torch.cat([x[..., :d] + noise, x[..., d:]], dim=-1)
    return x


# --------------------------------------------------------------------------------------- features
def slim_features(encoder: torch.nn.Module, views: torch.Tensor, n_last: int, person_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """SLiM's per-block features of views (N, M, T, V, C) [S slim/eval/utils.py ModelWithIntermediateLayers,
    ``evaluate``; slim/eval/linear.py ``eval_linear``; slim/eval/knn.py ``extract_features_ntu``].

    The persons are encoded as N*M separate sequences (person-minor, as the official
    ``x.permute(0, 4, 1, 2, 3).view(B * M, ...)``) through
    :meth:`~skelcli.models.encoder.SkeletonEncoder.get_intermediate_layers` (final norm on every
    block); CLS = token 0, patch tokens = after the ``num_prefix`` CLS/register tokens.
    ``person_mask`` (N, M) bool: the non-empty persons (None = |views| summed over the clip > 1e-5;
    callers holding the raw clips pass :attr:`SlimBuffer.person_mask`, the official mask).

    Returns float32 tensors:

    * ``cls`` (N, n_last, D): per block (oldest first) the CLS summed over non-empty persons;
    * ``patch`` (N, D): the last block's patch-token mean summed over non-empty persons;
    * ``cls_person`` / ``patch_person`` (N, M, D): the last block's per-person CLS / patch mean, empty
      persons zeroed (the k-NN feature);
    * ``person_mask`` (N, M) bool.

    No grad or autocast handling here (the callers decide: the frozen probes run it under no_grad,
    the semi-supervised fine-tune trains through it).
    """
    cfg = getattr(encoder, "config", None)
    if cfg is not None and not cfg.use_cls:
        raise SkelError("the SLiM protocols need an encoder with a CLS token (use_cls); this encoder has none "
                        "(use the mamp or skel recipe)")
    n, m, t, v, c = views.shape
    if person_mask is None:
        person_mask = views.reshape(n, m, -1).abs().sum(dim=-1) > PERSON_EPS
    w = person_mask.to(device=views.device, dtype=torch.float32)[:, :, None]  # (N, M, 1)
    prefix = cfg.num_prefix if cfg is not None else 1
    outs = encoder.get_intermediate_layers(views.reshape(n * m, t, v, c), n_last)
    cls_blocks = [out[:, 0].float().reshape(n, m, -1) * w for out in outs]  # each (N, M, D)
    patch_person = outs[-1][:, prefix:].float().mean(dim=1).reshape(n, m, -1) * w
    return {
        "cls": torch.stack([b.sum(dim=1) for b in cls_blocks], dim=1),
        "patch": patch_person.sum(dim=1),
        "cls_person": cls_blocks[-1],
        "patch_person": patch_person,
        "person_mask": person_mask.bool(),
    }


def linear_input(feats: dict[str, torch.Tensor], n: int, avgpool: bool) -> torch.Tensor:
    """``create_linear_input`` [S slim/eval/linear.py]: the CLS of the last ``n`` blocks concatenated
    oldest first, then (``avgpool``) the last block's patch mean: (N, D * (n + avgpool)), float32.
    ``feats`` from :func:`slim_features` with ``n_last >= n``."""
    cls = feats["cls"]
    if n > cls.shape[1]:
        raise ValueError(f"linear_input needs {n} blocks, the features hold {cls.shape[1]}")
    parts = [cls[:, -n:].reshape(cls.shape[0], -1)]
    if avgpool:
        parts.append(feats["patch"])
    return torch.cat(parts, dim=-1).float()


# --------------------------------------------------------------------------------------- head grid
@dataclass(frozen=True)
class HeadSpec:
    """One linear head of the grid: ``n`` last blocks, ``avgpool``, base ``lr``, ``scaled_lr`` =
    lr * batch_size / lr_base_batch, and its official ModuleDict ``key``."""

    n: int
    avgpool: bool
    lr: float
    scaled_lr: float
    key: str

    def in_dim(self, dim: int) -> int:
        return dim * (self.n + int(self.avgpool))


def head_key(n: int, avgpool: bool, scaled_lr: float) -> str:
    """``f"classifier_{n}_blocks_avgpool_{avgpool}_lr_{lr:.5f}".replace(".", "_")`` [S slim/eval/linear.py
    ``setup_linear_classifiers``]."""
    return f"classifier_{n}_blocks_avgpool_{avgpool}_lr_{scaled_lr:.5f}".replace(".", "_")


def head_grid(recipe) -> list[HeadSpec]:
    """The heads ``setup_linear_classifiers`` [S slim/eval/linear.py] builds: for n in
    ``n_last_blocks``, avgpool in ``avgpool``, lr in ``learning_rates`` (that loop order), lr scaled by
    ``batch_size / lr_base_batch`` (``scale_lr``: ``lr * batch / 256.0``).

    With ``recipe.official_key_collision`` a later head whose key already exists replaces the earlier
    one **at the earlier one's position** (assignment into the ModuleDict), so at batch 64 the 5e-5
    head replaces the 2e-5 head (both ``lr_0_00001``): 48 heads; 52 at batch 256. Without it every
    combination is returned (keys may repeat)."""
    specs: list[HeadSpec] = []
    slot: dict[str, int] = {}
    for n in recipe.n_last_blocks:
        for avgpool in recipe.avgpool:
            for lr in recipe.learning_rates:
                scaled = lr * recipe.batch_size / recipe.lr_base_batch
                spec = HeadSpec(int(n), bool(avgpool), float(lr), float(scaled), head_key(int(n), bool(avgpool), scaled))
                if recipe.official_key_collision and spec.key in slot:
                    specs[slot[spec.key]] = spec
                    continue
                slot[spec.key] = len(specs)
                specs.append(spec)
    return specs


# ----------------------------------------------------------------------------------- linear grid
def slim_autocast(device: torch.device, precision: str):
    """The autocast of SLiM's evaluation recipes: fp16 on CUDA for ``precision == "fp16"`` (the teacher's
    param_dtype, [S slim/eval/setup.py]), bf16 when asked for explicitly, else a no-op (CPU runs fp32)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if device.type == "cuda" and precision == "fp16":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def _guess_topology(split, topology=None):
    """The clips' topology: ``topology`` if given, else the split's own (:func:`~skelcli.eval.features.load_split`
    sets it), else ``ntu25`` for 25 joints x 3-D (hand-built splits)."""
    from skelcli.topology import NTU25, get_topology

    own = topology if topology is not None else getattr(split, "topology", None)
    if own is not None:
        return get_topology(own)
    v, c = split.joints.shape[2], split.joints.shape[3]
    if v == NTU25.num_joints and c == NTU25.channels:
        return NTU25
    raise SkelError(f"cannot tell the joint layout of {v} joints x {c} values for the SLiM train view "
                    "(mirror / bone scaling); pass topology=")


def _split_features(encoder, split, n_last: int, frames: int, *, device: torch.device, precision: str,
                    batch_size: int = 256, pad_min_frames: int = PAD_MIN_FRAMES,
                    keep: tuple[str, ...] = ("cls", "patch")) -> dict[str, torch.Tensor]:
    """The ``keep`` entries of :func:`slim_features` for every clip of ``split`` in the official test
    view, concatenated (on ``device``)."""
    parts: list[dict[str, torch.Tensor]] = []
    with torch.no_grad():
        for start in range(0, len(split), batch_size):
            idx = np.arange(start, min(start + batch_size, len(split)))
            buf = slim_buffer(split.batch(idx, device), pad_min_frames)
            views = slim_test_view(buf, frames)
            with slim_autocast(device, precision):
                f = slim_features(encoder, views, n_last, buf.person_mask)
            parts.append({k: f[k] for k in keep})
    return {k: torch.cat([p[k] for p in parts], dim=0) for k in parts[0]}


def _top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(dim=1) == labels).double().mean()) if len(labels) else float("nan")


def _pick_best(values: list[float]) -> int:
    """Index of the maximum, strict ``>`` so the first wins (``evaluate_linear_classifiers``); the
    official loop starts from 0 and so names no head when all score 0; here the first head is chosen."""
    best, idx = -math.inf, 0
    for i, v in enumerate(values):
        if v > best:
            best, idx = v, i
    return idx


def slim_linear_grid(
    encoder: torch.nn.Module,
    train_split,
    test_split,
    recipe,
    *,
    val_split=None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    on_eval: Callable[[int, float], None] | None = None,
    topology=None,
) -> dict[str, Any]:
    """SLiM's linear evaluation [S slim/eval/linear.py ``run_eval_linear``, ``eval_linear``,
    ``evaluate_linear_classifiers``] of a frozen encoder.

    Splits: :class:`~skelcli.eval.features.SplitData`; recipe: :class:`~skelcli.eval.recipes.SlimLinearRecipe`.
    Every head of :func:`head_grid` trains together: a Linear (weight N(0, ``head_init_std``), bias 0)
    on :func:`linear_input`; loss = sum of the heads' cross-entropies; SGD (``momentum``,
    ``weight_decay``) with one param group per head at its scaled lr; ``CosineAnnealingLR`` to 0 over
    ``iterations``, stepped every iteration, no warmup. Batches of ``batch_size`` clips come from an
    infinite stream of seeded shuffles of the train split (a batch may straddle two passes, as with the
    official sharded infinite sampler, so nothing is dropped before the end); a batch_size larger than
    the split trains on the whole split as one batch each iteration (``note`` says so). Each batch:
    :func:`slim_train_view` -> frozen encoder (eval mode, no_grad, fp16 autocast on CUDA when
    ``precision == "fp16"``) -> :func:`slim_features` with the buffer's person mask.

    Test (and ``val_split``) features are computed once in :func:`slim_test_view`. Evaluation after
    every ``eval_every`` iterations and after the last one; ``on_eval(iterations_done, best_test_top1)``.
    ``topology``: the clips' layout for mirroring / bone scaling (None: see :func:`_guess_topology`).

    Returns (JSON-ready apart from ``logits_best``): ``heads`` (list of {key, n, avgpool, lr, scaled_lr,
    test_top1, val_top1}), ``num_heads``, ``best`` (max final test top-1, first wins: {key, n, avgpool,
    lr, scaled_lr, test_top1}; the paper's number), ``val_chosen`` (max val top-1, its test_top1; None
    without ``val_split``), ``history`` ([{iteration, best_test_top1}]), ``iterations``, ``batch_size``,
    ``batch_size_used``, ``note``, ``logits_best`` (numpy (n_test, C) float32, the best head's final
    test logits).
    """
    from skelcli.eval.features import resolve_device

    dev = resolve_device(device)
    topo = _guess_topology(train_split, topology)
    n_train = len(train_split)
    if n_train == 0:
        raise SkelError("the SLiM linear grid needs at least one training clip")
    num_classes = int(train_split.num_classes)
    specs = head_grid(recipe)
    n_last = max(s.n for s in specs)
    was_training = encoder.training
    encoder.eval().to(dev)
    cfg = encoder.config
    frames = int(recipe.frames or cfg.num_frames)
    dim = int(cfg.dim)

    init = torch.Generator().manual_seed(seed)
    heads = torch.nn.ModuleList()
    for s in specs:
        lin = torch.nn.Linear(s.in_dim(dim), num_classes)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=init) * recipe.head_init_std)
            lin.bias.zero_()
        heads.append(lin)
    heads.to(dev)
    opt = torch.optim.SGD([{"params": h.parameters(), "lr": s.scaled_lr} for h, s in zip(heads, specs)],
                          lr=specs[0].scaled_lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=recipe.iterations, eta_min=0)

    common = dict(device=dev, precision=recipe.precision, pad_min_frames=recipe.pad_min_frames)
    test_f = _split_features(encoder, test_split, n_last, frames, **common)
    test_y = torch.from_numpy(np.asarray(test_split.labels, dtype=np.int64)).to(dev)
    val_f = val_y = None
    if val_split is not None and len(val_split):
        val_f = _split_features(encoder, val_split, n_last, frames, **common)
        val_y = torch.from_numpy(np.asarray(val_split.labels, dtype=np.int64)).to(dev)

    def evaluate(feats) -> list[torch.Tensor]:
        with torch.no_grad():
            return [h(linear_input(feats, s.n, s.avgpool)) for h, s in zip(heads, specs)]

    batch = min(recipe.batch_size, n_train)
    note = None
    if recipe.batch_size > n_train:
        note = (f"batch_size {recipe.batch_size} > {n_train} training clips: each iteration trains on the whole split "
                "as one batch (lrs still scaled by the recipe's batch_size)")
    order_rng = np.random.default_rng(seed)
    view_gen = torch.Generator().manual_seed(seed)
    stream = np.empty(0, dtype=np.int64)
    history: list[dict[str, Any]] = []
    test_top1: list[float] = [0.0] * len(specs)
    last_logits: list[torch.Tensor] = []
    for it in range(recipe.iterations):
        if batch == n_train and recipe.batch_size > n_train:
            rows = order_rng.permutation(n_train)
        else:
            while stream.size < batch:
                stream = np.concatenate([stream, order_rng.permutation(n_train)])
            rows, stream = stream[:batch], stream[batch:]
        clips = train_split.batch(rows, dev)
        with torch.no_grad():
            buf = slim_buffer(clips, recipe.pad_min_frames)
            views = slim_train_view(buf, recipe, topo, view_gen, frames=frames)
            with slim_autocast(dev, recipe.precision):
                feats = slim_features(encoder, views, n_last, buf.person_mask)
            feats = {k: v.float() if v.is_floating_point() else v for k, v in feats.items()}
        loss = sum(torch.nn.functional.cross_entropy(h(linear_input(feats, s.n, s.avgpool)), clips.label)
                   for h, s in zip(heads, specs))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        done = it + 1
        if done % recipe.eval_every == 0 or done == recipe.iterations:
            last_logits = evaluate(test_f)
            test_top1 = [_top1(lg, test_y) for lg in last_logits]
            best_now = max(test_top1)
            history.append({"iteration": done, "best_test_top1": best_now})
            if on_eval is not None:
                on_eval(done, best_now)
    encoder.train(was_training)

    val_top1: list[float | None] = [None] * len(specs)
    if val_f is not None:
        val_top1 = [_top1(lg, val_y) for lg in evaluate(val_f)]
    rows_out = [{**asdict(s), "test_top1": test_top1[i], "val_top1": val_top1[i]} for i, s in enumerate(specs)]
    b = _pick_best(test_top1)
    best = {k: rows_out[b][k] for k in ("key", "n", "avgpool", "lr", "scaled_lr", "test_top1")}
    val_chosen = None
    if val_f is not None:
        vi = _pick_best([float(v) for v in val_top1])  # type: ignore[arg-type]
        val_chosen = {k: rows_out[vi][k] for k in ("key", "n", "avgpool", "lr", "scaled_lr", "test_top1", "val_top1")}
    return {
        "heads": rows_out,
        "num_heads": len(specs),
        "best": best,
        "val_chosen": val_chosen,
        "history": history,
        "iterations": int(recipe.iterations),
        "batch_size": int(recipe.batch_size),
        "batch_size_used": int(batch),
        "note": note,
        "logits_best": last_logits[b].float().cpu().numpy(),
    }


# ---------------------------------------------------------------------------------------------- kNN
def slim_knn_features(encoder: torch.nn.Module, split, recipe, *, device: str | torch.device = "cpu",
                      batch_size: int | None = None) -> np.ndarray:
    """The k-NN feature of every clip of ``split`` [S slim/eval/knn.py ``extract_features_ntu``]: official
    test view, last block only, [CLS_p0, CLS_p1, ..., meanpatch_p0, meanpatch_p1, ...] with empty persons
    zeroed, L2-normalised: (n, 2 * M * D) float32 numpy. ``recipe``: a
    :class:`~skelcli.eval.recipes.SlimKnnRecipe` (``frames``, ``precision``, ``batch_size``)."""
    from skelcli.eval.features import resolve_device

    dev = resolve_device(device)
    was_training = encoder.training
    encoder.eval().to(dev)
    frames = int(getattr(recipe, "frames", None) or encoder.config.num_frames)
    pad = int(getattr(recipe, "pad_min_frames", PAD_MIN_FRAMES))
    f = _split_features(encoder, split, 1, frames, device=dev, precision=recipe.precision,
                        batch_size=int(batch_size or recipe.batch_size), pad_min_frames=pad, keep=("cls_person", "patch_person"))
    encoder.train(was_training)
    n = f["cls_person"].shape[0]
    x = torch.cat([f["cls_person"].reshape(n, -1), f["patch_person"].reshape(n, -1)], dim=1)
    return torch.nn.functional.normalize(x, dim=1, p=2).cpu().numpy().astype(np.float32)


def weighted_knn_vote(sim, gallery_labels, ks, temperature: float, num_classes: int) -> dict[int, torch.Tensor]:
    """``KnnModule.forward`` [S slim/eval/knn.py]: the max(ks) most similar gallery items (capped at the
    gallery size), weights = softmax over them of sim / ``temperature``, and for each k the class score
    = the sum of the first k neighbours' weights per class.

    sim: (Q, G) similarities (numpy or torch); gallery_labels: (G,) int. Returns {k: (Q, num_classes)
    float tensor}; argmax gives the prediction (ties toward the lower class index)."""
    sim = torch.as_tensor(sim)
    labels = torch.as_tensor(gallery_labels).long().to(sim.device)
    g = sim.shape[1]
    max_k = min(max(int(k) for k in ks), g)
    top, idx = sim.float().topk(max_k, dim=1, largest=True, sorted=True)
    weights = torch.softmax(top / temperature, dim=1)  # (Q, max_k)
    onehot = torch.nn.functional.one_hot(labels[idx], num_classes).to(weights.dtype)  # (Q, max_k, C)
    votes = onehot * weights[:, :, None]
    return {int(k): votes[:, : min(int(k), max_k)].sum(dim=1) for k in ks}


def slim_knn(encoder: torch.nn.Module, train_split, test_split, recipe, *, device: str | torch.device = "cpu") -> dict[str, Any]:
    """SLiM's weighted k-NN [S slim/eval/knn.py ``eval_knn_ntu``] (spec/protocols-and-checkpoints.md 2.1):
    gallery = ``train_split``, queries = ``test_split``, both :func:`slim_knn_features` (official test
    view); dot-product similarity; :func:`weighted_knn_vote` with ``recipe.ks`` and ``temperature``,
    queries in batches of ``recipe.batch_size``.

    Returns {"accuracy": {k: top-1 fraction}, "top1": accuracy at ``report_k``, "report_k", "ks",
    "feature_dim", "n_gallery", "n_query", "predictions": numpy (n_query,) at ``report_k``, "scores":
    (n_query, classes) vote scores at ``report_k``, "gallery_features" / "query_features": the L2-normalised
    features}. A k above the gallery size uses the whole gallery."""
    from skelcli.eval.features import resolve_device

    dev = resolve_device(device)
    ks = tuple(sorted({int(k) for k in recipe.ks} | {int(recipe.report_k)}))
    g_x = torch.from_numpy(slim_knn_features(encoder, train_split, recipe, device=dev)).to(dev)
    q_x = torch.from_numpy(slim_knn_features(encoder, test_split, recipe, device=dev)).to(dev)
    g_y = torch.from_numpy(np.asarray(train_split.labels, dtype=np.int64)).to(dev)
    q_y = np.asarray(test_split.labels, dtype=np.int64)
    num_classes = int(max(train_split.num_classes, int(g_y.max()) + 1 if len(g_y) else 0))
    preds: dict[int, list[np.ndarray]] = {k: [] for k in ks}
    report_scores: list[np.ndarray] = []
    for start in range(0, q_x.shape[0], recipe.batch_size):
        sim = q_x[start : start + recipe.batch_size] @ g_x.T
        for k, scores in weighted_knn_vote(sim, g_y, ks, recipe.temperature, num_classes).items():
            preds[k].append(scores.argmax(dim=1).cpu().numpy())
            if k == int(recipe.report_k):
                report_scores.append(scores.float().cpu().numpy())
    pred = {k: np.concatenate(v) if v else np.zeros(0, dtype=np.int64) for k, v in preds.items()}
    accuracy = {k: float((pred[k] == q_y).mean()) if len(q_y) else float("nan") for k in ks}
    return {
        "accuracy": accuracy,
        "top1": accuracy[int(recipe.report_k)],
        "report_k": int(recipe.report_k),
        "ks": [int(k) for k in ks],
        "feature_dim": int(g_x.shape[1]),
        "n_gallery": int(g_x.shape[0]),
        "n_query": int(q_x.shape[0]),
        "predictions": pred[int(recipe.report_k)].astype(np.int64),
        "scores": np.concatenate(report_scores) if report_scores else np.zeros((0, num_classes), np.float32),
        "gallery_features": g_x.cpu().numpy(),
        "query_features": q_x.cpu().numpy(),
    }


__all__ = [
    "HeadSpec", "SlimBuffer", "head_grid", "head_key", "linear_input", "slim_buffer", "slim_features", "slim_knn",
    "slim_knn_features", "slim_linear_grid", "slim_test_view", "slim_train_view", "weighted_knn_vote",
]
