"""Skeleton clips with each method's token masks: an animated GIF or a contact-sheet PNG (issue 16 item 2).

Pipeline of :func:`render_clip`:

1. read one sample of a prepared store by name (:func:`load_clip`): joints ``(T, M, V, C)``;
2. put it through the encoder's evaluation view (:func:`clip_view`: ``clips.test_view``, centre crop
   ``test_crop`` and linear resize to the encoder's ``num_frames``), so that token ``(t, v)`` covers
   frames ``[t * t_patch, (t + 1) * t_patch)`` of joint ``v`` of the drawn frames;
3. compute the overlay once (:func:`mask_tokens`): the method's real masking function, called with a
   ``torch.Generator`` seeded by ``--seed``, on the ``M`` person sequences as the methods see them;
4. draw (:func:`draw_gif` / :func:`draw_sheet`): the drawing only reads that ``(M, n_t, V)`` array.

Choices, named here as the design asks:

* Projection: the camera's own view. Kinect camera space has x to the sensor's left, y up, z away
  from the sensor, so the image shows ``(-x, y)`` (a person facing the camera has their left hand on
  the right of the picture, as in the RGB video). Equal axis scales, limits fixed over the whole clip.
* Without ``--method-checkpoint`` the view is the MAMP paper encoder's (120 frames, 4-frame patches,
  test crop 0.95), mask ratio 0.9, tau from the data file's dataset (``mae.dataset_tau``), and the
  SLiM tube options are :class:`~skelcli.methods.slim.SlimSettings` defaults.
* Tube masking draws what SLiM does for one *masked global view* per person sequence: a ratio from
  ``stratified_ratios(P, *mask_ratio)``, then ``semantic_tube_masking(ratios, n_t, global_min_patches,
  max(1, int(global_max_patches * n_t * V)), mask_max_tries)``. SLiM itself masks only half of its
  global views, picks one person per clip and masks training crops, not the test view; the overlay
  shows the masking pattern on the clip the encoder would see at evaluation time.
* Masking in MAE / MAMP / GFP runs on every person row (an all-zero second person is still a row of
  the batch), so :func:`mask_tokens` masks both rows; only non-empty persons are drawn and counted.
"""

from __future__ import annotations

import difflib
import importlib
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from skelcli.topology import NTU25, Topology
from skelcli.errors import SkelError

MASK_KINDS = ("none", "random", "motion", "tube")
#: The masking each pretraining method trains with (gfp.py: ``motion_aware_masking``, as MAMP).
METHOD_MASK = {"mae": "random", "mamp": "motion", "gfp": "motion", "slim": "tube"}
#: Most frames in a GIF (the view is subsampled evenly beyond this) and panels of a contact sheet.
GIF_MAX_FRAMES = 64
SHEET_PANELS = 12
SHEET_MAX_PANELS = 36
PERSON_COLOURS = ("#1f77b4", "#2ca02c")
MASK_COLOUR = "#d62728"
#: Kinect v2 records at 30 frames per second: the GIF plays the clip at its real speed.
KINECT_FPS = 30.0


@dataclass(frozen=True)
class MaskOptions:
    """Parameters of the three maskings.

    ratio: mask ratio of random / motion-aware masking (``len_keep = int(L * (1 - ratio))``).
    tau: motion-aware temperature (<= 0 falls back to random masking, as in MAMP).
    tube_ratio: SLiM's (lo, hi) range of a masked view's ratio; tube_min_patches: minimum tube area;
    tube_max_patches: per-tube area cap as a fraction of the n_t x V grid; tube_max_tries: failures
    in a row that end a view.
    """

    ratio: float = 0.9
    tau: float = 0.80
    tube_ratio: tuple[float, float] = (0.5, 0.9)
    tube_min_patches: int = 8
    tube_max_patches: float = 0.5
    tube_max_tries: int = 10


def _slim_defaults() -> MaskOptions:
    from skelcli.methods.slim import SlimSettings

    s = SlimSettings()
    return MaskOptions(
        tube_ratio=tuple(s.mask_ratio), tube_min_patches=s.global_min_patches,
        tube_max_patches=s.global_max_patches, tube_max_tries=s.mask_max_tries,
    )


@dataclass(frozen=True)
class ClipSetup:
    """The encoder's view (``num_frames`` frames in ``t_patch``-frame tokens, centre crop ``test_crop``)
    and the masking to overlay (``mask`` one of :data:`MASK_KINDS`). ``method``: the checkpoint's
    method name, None without a checkpoint."""

    num_frames: int = 120
    t_patch: int = 4
    test_crop: float = 0.95
    mask: str = "none"
    options: MaskOptions = field(default_factory=MaskOptions)
    method: str | None = None
    #: The data's joint layout (bones drawn, tube-masking parts, 2-D or camera-space drawing).
    topology: Topology = NTU25

    @property
    def n_t(self) -> int:
        return self.num_frames // self.t_patch


@dataclass
class Clip:
    """One stored sample: joints float32 (T, M, V, C) as stored; its name, label and title text."""

    name: str
    label: int
    action: str
    joints: np.ndarray

    @property
    def title(self) -> str:
        return f"{self.name} — {self.action}"


@dataclass
class ClipResult:
    """What :func:`render_clip` wrote: ``frames`` images (GIF frames or sheet panels) of the
    ``num_frames``-frame view; ``masked_share`` = masked tokens / tokens of the drawn persons
    (None for ``mask="none"``); ``mask`` (P, n_t, V) bool of all person rows."""

    path: Path
    frames: int
    num_frames: int
    mask_kind: str
    masked_share: float | None
    mask: torch.Tensor
    persons: list[int]


# --------------------------------------------------------------------------------------------- inputs
def output_kind(out: str | Path) -> str:
    """"gif", "mp4" (animations) or "png" (contact sheet) from the name's extension; SkelError for any other."""
    suffix = Path(out).suffix.lower()
    if suffix not in (".gif", ".mp4", ".png"):
        raise SkelError(f"--out {out}: the name must end with .gif or .mp4 (animation) or .png (contact sheet), "
                        f"got {suffix or 'no extension'!r}")
    return suffix[1:]


def require_viz() -> None:
    """Import matplotlib and imageio; the ImportError of a missing one propagates (the CLI names the extra)."""
    for module in ("matplotlib", "matplotlib.backends.backend_agg", "imageio.v3"):
        importlib.import_module(module)


def load_clip(data: str | Path, name: str) -> Clip:
    """The sample called ``name`` in the store ``data`` (joints (T, M, V, C) float32). SkelError for an
    unknown name, listing close or first names of the file."""
    from skelcli.data.store import open_info, open_store, read_samples

    info = open_info(data)
    with open_store(data) as f:
        names = [str(n) for n in f["name"].asstr()[()]]
    try:
        index = names.index(name)
    except ValueError:
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
        shown = close or names[:5]
        more = f", ... ({len(names)} samples)" if len(names) > len(shown) else ""
        raise SkelError(f"--name {name!r} is not in {Path(data).name}; {'close' if close else 'available'}: {', '.join(shown)}{more}") from None
    s = read_samples(data, [index])
    label = int(s.labels[0])
    names_list = info.class_names or []
    action = names_list[label] if 0 <= label < len(names_list) else f"class {label}"
    return Clip(name=name, label=label, action=action, joints=s.joints)


def resolve_setup(mask: str | None, checkpoint: str | Path | None, dataset: str | None) -> ClipSetup:
    """The view and masking to draw.

    Without ``checkpoint``: the MAMP paper view (120 frames, t_patch 4), ``mask`` (default "none"),
    ratio 0.9, tau of ``dataset``, SLiM's default tube options. With one: ``encoder_config``
    (num_frames, t_patch), ``settings.data.test_crop`` and the method's own options (mask_ratio, tau,
    SLiM's mask_ratio range / global_min_patches / global_max_patches / mask_max_tries); ``mask``
    defaults to the method's own masking (:data:`METHOD_MASK`).
    """
    from skelcli.methods.mae import dataset_tau

    if mask is not None and mask not in MASK_KINDS:
        raise SkelError(f"--mask {mask!r}: choose one of {', '.join(MASK_KINDS)}")
    options = replace(_slim_defaults(), tau=dataset_tau(dataset or "ntu60"))
    if checkpoint is None:
        return ClipSetup(mask=mask or "none", options=options)

    from skelcli.engine.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    method = str(ckpt.get("method", "unknown"))
    enc = ckpt.get("encoder_config") or {}
    settings = ckpt.get("settings") or {}
    ms = settings.get("method") or {}
    num_frames, t_patch = int(enc.get("num_frames", 120)), int(enc.get("t_patch", 4))
    if t_patch < 1 or num_frames < t_patch or num_frames % t_patch:
        raise SkelError(f"{checkpoint}: encoder_config num_frames {num_frames} is not a multiple of t_patch {t_patch}")
    test_crop = float((settings.get("data") or {}).get("test_crop", 0.95))
    if isinstance(ms.get("mask_ratio"), (int, float)):
        options = replace(options, ratio=float(ms["mask_ratio"]))
    if isinstance(ms.get("tau"), (int, float)):
        options = replace(options, tau=float(ms["tau"]))
    if method == "slim":
        lo, hi = ms.get("mask_ratio", options.tube_ratio)
        options = replace(
            options, tube_ratio=(float(lo), float(hi)),
            tube_min_patches=int(ms.get("global_min_patches", options.tube_min_patches)),
            tube_max_patches=float(ms.get("global_max_patches", options.tube_max_patches)),
            tube_max_tries=int(ms.get("mask_max_tries", options.tube_max_tries)),
        )
    kind = mask or METHOD_MASK.get(method, "none")
    return ClipSetup(num_frames, t_patch, test_crop, kind, options, method)


def clip_view(joints: np.ndarray, num_frames: int, test_crop: float = 0.95) -> torch.Tensor:
    """The evaluation view the encoder sees (``clips.test_view``): joints (T, M, V, C) as stored ->
    (M, num_frames, V, C) float32, centre crop keeping ``test_crop`` of the frames, linearly resized."""
    from skelcli.data.clips import ClipBatch, test_view

    x = torch.from_numpy(np.ascontiguousarray(joints, dtype=np.float32)).permute(1, 0, 2, 3)[None]  # (1, M, T, V, C)
    batch = ClipBatch(x, torch.tensor([x.shape[2]]), torch.zeros(1, dtype=torch.long))
    return test_view(batch, num_frames, test_crop)[0]


# --------------------------------------------------------------------------------------------- overlay
def mask_tokens(view: torch.Tensor, kind: str, *, t_patch: int, seed: int, options: MaskOptions = MaskOptions(),
                topo: Topology = NTU25) -> torch.Tensor:
    """The tokens each method's masking hides, for the P person sequences of one clip.

    view: (P, T, V, C) person sequences (T a multiple of ``t_patch``). Returns (P, n_t, V) bool,
    n_t = T // t_patch, True = masked; token (t, v) is joint v over frames [t * l, (t + 1) * l).
    The real masking function runs once on the whole (P, ...) batch with
    ``torch.Generator().manual_seed(seed)``:

    * "random": ``random_masking(P, n_t * V, ratio)`` (MAE);
    * "motion": ``motion_aware_masking(view, t_patch, ratio, tau)`` (MAMP, GFP);
    * "tube": ``stratified_ratios(P, *tube_ratio)`` then ``semantic_tube_masking`` (SLiM's masked
      global view; see the module docstring);
    * "none": all False.
    """
    from skelcli.models.masking import motion_aware_masking, random_masking
    from skelcli.models.tube_masking import semantic_tube_masking, stratified_ratios

    p, t, v, _ = view.shape
    if t % t_patch:
        raise SkelError(f"{t} frames are not a multiple of the temporal patch {t_patch}")
    n_t = t // t_patch
    gen = torch.Generator().manual_seed(seed)
    o = options
    if kind == "none":
        return torch.zeros(p, n_t, v, dtype=torch.bool)
    if kind == "random":
        flat = random_masking(p, n_t * v, o.ratio, generator=gen).mask.bool()
    elif kind == "motion":
        flat = motion_aware_masking(view.float(), t_patch, o.ratio, o.tau, generator=gen).mask.bool()
    elif kind == "tube":
        if v != topo.num_joints:
            raise SkelError(f"tube masking of the {topo.name} layout needs {topo.num_joints} joints, got {v}")
        ratios = stratified_ratios(p, *o.tube_ratio, generator=gen)
        max_patches = max(1, int(o.tube_max_patches * n_t * v))
        flat = semantic_tube_masking(ratios, n_t, o.tube_min_patches, max_patches, o.tube_max_tries, generator=gen, topo=topo)
    else:
        raise SkelError(f"--mask {kind!r}: choose one of {', '.join(MASK_KINDS)}")
    return flat.reshape(p, n_t, v)


def describe_mask(setup: ClipSetup) -> str:
    """One line naming the masking and its parameters, for the figure."""
    o = setup.options
    grid = f"{setup.n_t} x {setup.topology.num_joints} tokens of {setup.t_patch} frames"
    if setup.mask == "random":
        return f"random masking (MAE), ratio {o.ratio:.2f}; {grid}"
    if setup.mask == "motion":
        return f"motion-aware masking (MAMP), ratio {o.ratio:.2f}, tau {o.tau:.2f}; {grid}"
    if setup.mask == "tube":
        return f"semantic tube masking (SLiM), ratio U[{o.tube_ratio[0]:.2f}, {o.tube_ratio[1]:.2f}]; {grid}"
    return f"no mask; {setup.num_frames}-frame view"


# --------------------------------------------------------------------------------------------- drawing
def present_persons(view: torch.Tensor) -> list[int]:
    """Persons to draw: view (M, T, V, C); every person with a non-zero coordinate (person 0 always)."""
    nonzero = view.abs().flatten(1).amax(dim=1) > 0
    return [m for m in range(view.shape[0]) if m == 0 or bool(nonzero[m])]


def camera_xy(view: torch.Tensor, topo: Topology = NTU25) -> np.ndarray:
    """(M, T, V, C) joints -> (M, T, V, 2) drawing coordinates, y up: 3-D camera space as the camera
    sees it (-x, y); 2-D image coordinates (y down) as (x, -y)."""
    xy = view[..., :2].numpy().astype(np.float64).copy()
    xy[..., 0 if topo.dims == 3 else 1] *= -1
    return xy


def fixed_limits(xy: np.ndarray, aspect: float) -> tuple[tuple[float, float], tuple[float, float]]:
    """Axis limits covering every point of xy (..., 2) over the whole clip, with a margin, widened along
    one axis so that width / height = ``aspect`` (equal scales fill the panel exactly)."""
    pts = xy.reshape(-1, 2)
    lo, hi = pts.min(0), pts.max(0)
    centre, span = (lo + hi) / 2, np.maximum(hi - lo, 0.2)
    margin = 0.08 * span.max() + 0.05
    w, h = span[0] + 2 * margin, span[1] + 2 * margin
    if w / h < aspect:
        w = h * aspect
    else:
        h = w / aspect
    return (centre[0] - w / 2, centre[0] + w / 2), (centre[1] - h / 2, centre[1] + h / 2)


def _panel_aspect(xy: np.ndarray) -> float:
    """Width / height of the data (with margins), kept between a portrait 0.6 and a wide 2.0."""
    pts = xy.reshape(-1, 2)
    span = np.maximum(pts.max(0) - pts.min(0), 0.2)
    return float(np.clip((span[0] + 0.3) / (span[1] + 0.3), 0.6, 2.0))


class _SkeletonArtists:
    """The artists of one skeleton panel: bones (LineCollection), visible and masked joints (scatter)
    per drawn person, updated in place per frame."""

    def __init__(self, ax, persons: list[int], small: bool = False, bones: np.ndarray | None = None) -> None:
        from matplotlib.collections import LineCollection

        self.persons = persons
        self.bone_index = np.asarray(bones if bones is not None else NTU25.bones)
        self.bones, self.joints, self.masked = [], [], []
        lw, js, ms = (1.4, 6, 22) if small else (2.2, 12, 42)
        for k, m in enumerate(persons):
            colour = PERSON_COLOURS[k % len(PERSON_COLOURS)]
            lc = LineCollection([], colors=colour, linewidths=lw, capstyle="round", zorder=2)
            ax.add_collection(lc)
            self.bones.append(lc)
            self.joints.append(ax.scatter([], [], s=js, c=colour, zorder=3, linewidths=0))
            self.masked.append(ax.scatter([], [], s=ms, c=MASK_COLOUR, marker="o", edgecolors="black", linewidths=0.6, zorder=4))

    def update(self, xy: np.ndarray, frame: int, masked: np.ndarray | None) -> None:
        """xy (M, T, V, 2); masked (M, V) bool of this frame, or None."""
        bones = self.bone_index
        for k, m in enumerate(self.persons):
            pts = xy[m, frame]
            self.bones[k].set_segments(np.stack([pts[bones[:, 0]], pts[bones[:, 1]]], axis=1))
            hidden = masked[m] if masked is not None else np.zeros(len(pts), dtype=bool)
            self.joints[k].set_offsets(pts[~hidden])
            self.masked[k].set_offsets(pts[hidden] if hidden.any() else np.empty((0, 2)))


def _style_panel(ax, xlim, ylim) -> None:
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_aspect("equal", adjustable="box")
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_color("#bbbbbb")


def _draw_strip(ax, mask: np.ndarray, persons: list[int], t_patch: int):
    """Heat strip: rows = joints of each drawn person (joint 0 on top), columns = time patches, masked
    = dark. mask (M, n_t, V) bool. Returns the rectangle that marks the current patch."""
    from matplotlib.patches import Rectangle

    v = mask.shape[2]
    n_t = mask.shape[1]
    img = np.concatenate([mask[m].T for m in persons], axis=0).astype(float)  # (P*V, n_t)
    ax.imshow(img, cmap="Greys", vmin=0, vmax=1.25, aspect="auto", interpolation="nearest")
    for k in range(1, len(persons)):
        ax.axhline(k * v - 0.5, color="white", linewidth=2)
    ax.set_yticks([k * v + (v - 1) / 2 for k in range(len(persons))])
    ax.set_yticklabels([f"P{m + 1}" for m in persons], fontsize=7)
    for k, lab in enumerate(ax.get_yticklabels()):
        lab.set_color(PERSON_COLOURS[k % len(PERSON_COLOURS)])
    step = max(1, int(math.ceil(n_t / 10)))
    ax.set_xticks(range(0, n_t, step))
    ax.set_xticklabels([str(t + 1) for t in range(0, n_t, step)], fontsize=6)  # 1-based, as the panel labels
    ax.set_xlabel(f"time patch ({t_patch} frames)  ·  rows: {v} joints per person  ·  dark = masked", fontsize=7)
    ax.tick_params(length=2, pad=1)
    marker = Rectangle((-0.5, -0.5), 1, img.shape[0], fill=False, edgecolor="#ff7f0e", linewidth=1.6)
    ax.add_patch(marker)
    return marker


#: Height in inches of the header: title, mask description, legend.
HEADER_IN = 0.8


def _header(fig, height_in: float, title: str, setup: ClipSetup, persons: list[int]) -> None:
    """Title, the mask description and a one-row legend above the panels (never over a skeleton)."""
    from matplotlib.lines import Line2D

    def y(inches: float) -> float:
        return 1 - inches / height_in

    text = fig.text(0.5, y(0.08), title, fontsize=10, ha="center", va="top")
    renderer = fig.canvas.get_renderer()
    limit = 0.97 * fig.bbox.width
    while text.get_window_extent(renderer).width > limit and text.get_fontsize() > 6:  # long action names
        text.set_fontsize(text.get_fontsize() - 0.5)
    fig.text(0.5, y(0.34), describe_mask(setup), fontsize=7, ha="center", va="top", color="#444444")
    handles = [Line2D([], [], color=PERSON_COLOURS[k % 2], lw=2, label=f"person {m + 1}") for k, m in enumerate(persons)]
    if setup.mask != "none":
        handles.append(Line2D([], [], color="none", marker="o", markerfacecolor=MASK_COLOUR, markeredgecolor="black", label="masked joint"))
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, y(0.5)), ncol=len(handles), fontsize=7,
               frameon=False, handlelength=1.4, columnspacing=1.2, borderpad=0.1)


def _rgb(fig) -> np.ndarray:
    """The figure rendered by Agg: (H, W, 3) uint8."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def _figure(width: float, height: float, dpi: int = 100):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def frame_indices(total: int, count: int) -> np.ndarray:
    """``count`` (at most ``total``) evenly spaced frame indices of 0..total-1, first and last included."""
    count = max(1, min(count, total))
    return np.unique(np.linspace(0, total - 1, count).round().astype(int))


def draw_gif(view: torch.Tensor, mask: torch.Tensor, setup: ClipSetup, title: str, frames: np.ndarray) -> list[np.ndarray]:
    """One RGB image (H, W, 3) uint8 per index of ``frames``. view (M, T, V, C); mask (M, n_t, V) bool."""
    persons = present_persons(view)
    xy = camera_xy(view, setup.topology)
    hidden = mask.numpy()
    with_mask = setup.mask != "none"
    aspect = _panel_aspect(xy[persons])
    panel_h = 3.8
    strip_h = 0.3 + 0.45 * len(persons) if with_mask else 0.0
    bottom_h = 0.45 if with_mask else 0.1  # the strip's x labels
    height = HEADER_IN + panel_h + (0.12 + strip_h if with_mask else 0) + bottom_h
    width = max(panel_h * aspect + 0.6, 5.0)
    fig = _figure(width, height)
    left, right = 0.45 / width, 1 - 0.15 / width
    ax = fig.add_axes([left, 1 - (HEADER_IN + panel_h) / height, right - left, panel_h / height])
    xlim, ylim = fixed_limits(xy[persons], ax.get_position().width * width / panel_h)
    _style_panel(ax, xlim, ylim)
    marker = None
    if with_mask:
        strip = fig.add_axes([left, bottom_h / height, right - left, strip_h / height])
        marker = _draw_strip(strip, hidden, persons, setup.t_patch)
    _header(fig, height, title, setup, persons)
    artists = _SkeletonArtists(ax, persons, bones=np.asarray(setup.topology.bones))
    label = ax.text(0.98, 0.02, "", transform=ax.transAxes, ha="right", va="bottom", fontsize=7, color="#444444")
    images = []
    n_frames = view.shape[1]
    for f in frames:
        t = int(f) // setup.t_patch
        artists.update(xy, int(f), hidden[:, t] if with_mask else None)
        label.set_text(f"frame {f + 1}/{n_frames} · patch {t + 1}/{setup.n_t}")
        if marker is not None:
            marker.set_x(t - 0.5)
        images.append(_rgb(fig))
    return images


def draw_sheet(view: torch.Tensor, mask: torch.Tensor, setup: ClipSetup, title: str, frames: np.ndarray) -> np.ndarray:
    """A contact sheet: one small panel per index of ``frames`` (3-4 per row) and the heat strip under
    them, the shown patches marked. view (M, T, V, C); mask (M, n_t, V) bool. Returns (H, W, 3) uint8."""
    persons = present_persons(view)
    xy = camera_xy(view, setup.topology)
    hidden = mask.numpy()
    with_mask = setup.mask != "none"
    aspect = _panel_aspect(xy[persons])
    n = len(frames)
    cols = min(n, 4 if aspect < 1.2 else 3)
    rows = int(math.ceil(n / cols))
    panel_h, panel_w, gap_w, title_h = 2.2, 2.2 * aspect, 0.1, 0.22
    strip_h = 0.3 + 0.45 * len(persons) if with_mask else 0.0
    bottom_h = 0.45 if with_mask else 0.1
    height = HEADER_IN + rows * (panel_h + title_h) + (0.15 + strip_h if with_mask else 0) + bottom_h
    width = max(cols * (panel_w + gap_w) + 0.5, 5.0)
    fig = _figure(width, height)
    x0 = (width - cols * (panel_w + gap_w) + gap_w) / 2
    xlim, ylim = fixed_limits(xy[persons], panel_w / panel_h)
    n_frames = view.shape[1]
    for i, f in enumerate(frames):
        r, c = divmod(i, cols)
        top_in = HEADER_IN + r * (panel_h + title_h) + title_h
        ax = fig.add_axes([(x0 + c * (panel_w + gap_w)) / width, 1 - (top_in + panel_h) / height, panel_w / width, panel_h / height])
        _style_panel(ax, xlim, ylim)
        t = int(f) // setup.t_patch
        _SkeletonArtists(ax, persons, small=True, bones=np.asarray(setup.topology.bones)).update(xy, int(f), hidden[:, t] if with_mask else None)
        ax.set_title(f"frame {f + 1}/{n_frames} · patch {t + 1}", fontsize=7, pad=2)
    if with_mask:
        strip = fig.add_axes([0.45 / width, bottom_h / height, 1 - 0.6 / width, strip_h / height])
        _draw_strip(strip, hidden, persons, setup.t_patch).remove()
        for f in frames:
            strip.axvline(int(f) // setup.t_patch, color="#ff7f0e", linewidth=0.8, alpha=0.8)
    _header(fig, height, title, setup, persons)
    return _rgb(fig)


# --------------------------------------------------------------------------------------------- entry
def render_clip(
    data: str | Path,
    name: str,
    out: str | Path,
    *,
    mask: str | None = None,
    checkpoint: str | Path | None = None,
    seed: int = 0,
    frames: int | None = None,
) -> ClipResult:
    """Draw sample ``name`` of the store ``data`` into ``out`` (.gif: animation of at most ``frames``
    (default 64) evenly spaced frames of the encoder's view; .png: contact sheet of ``frames``
    (default 12) panels), masked tokens highlighted as :func:`mask_tokens` draws them.

    ``mask``, ``checkpoint``: see :func:`resolve_setup`. The file is written atomically.
    """
    import imageio.v3 as iio

    from skelcli.data.store import open_info
    from skelcli.paths import atomic_write

    out = Path(out)
    kind = output_kind(out)
    if frames is not None and frames < 1:
        raise SkelError(f"--frames must be at least 1, got {frames}")
    info = open_info(data)
    setup = replace(resolve_setup(mask, checkpoint, info.dataset), topology=info.topology)
    clip = load_clip(data, name)
    view = clip_view(clip.joints, setup.num_frames, setup.test_crop)  # (M, F, V, C)
    hidden = mask_tokens(view, setup.mask, t_patch=setup.t_patch, seed=seed, options=setup.options, topo=setup.topology)  # (M, n_t, V)
    persons = present_persons(view)
    share = float(hidden[persons].float().mean()) if setup.mask != "none" else None

    n_frames = view.shape[1]
    out.parent.mkdir(parents=True, exist_ok=True)
    if kind in ("gif", "mp4"):
        idx = frame_indices(n_frames, frames or GIF_MAX_FRAMES)
        images = draw_gif(view, hidden, setup, clip.title, idx)
        seconds = len(clip.joints) * setup.test_crop / KINECT_FPS  # real duration of the cropped clip
        if kind == "mp4":
            _write_mp4(out, images, fps=len(idx) / max(seconds, 1e-3))
            return ClipResult(out, len(images), n_frames, setup.mask, share, hidden, persons)
        duration = max(20, int(round(1000 * seconds / len(idx))))
        payload = iio.imwrite("<bytes>", np.stack(images), extension=".gif", duration=duration, loop=0)
        count = len(images)
    else:
        idx = frame_indices(n_frames, min(frames or SHEET_PANELS, SHEET_MAX_PANELS))
        payload = iio.imwrite("<bytes>", draw_sheet(view, hidden, setup, clip.title, idx), extension=".png")
        count = len(idx)
    atomic_write(out, lambda fh: fh.write(payload))
    return ClipResult(out, count, n_frames, setup.mask, share, hidden, persons)


def _write_mp4(out: Path, images: list[np.ndarray], fps: float) -> None:
    """H.264 through imageio's ffmpeg plugin (the ``imageio-ffmpeg`` package of the [viz] extra), written to a
    temporary file in the same folder and renamed."""
    import os

    import imageio.v2 as iio2

    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        raise SkelError("--out *.mp4 needs imageio-ffmpeg: pip install 'skelcli[viz]' (or use .gif)") from None
    tmp = out.with_name(f".{out.stem}.tmp-{os.getpid()}{out.suffix}")
    try:
        iio2.mimwrite(tmp, images, fps=max(fps, 1.0), macro_block_size=2)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


__all__ = [
    "ClipResult", "ClipSetup", "MASK_KINDS", "METHOD_MASK", "MaskOptions", "clip_view", "draw_gif", "draw_sheet",
    "load_clip", "mask_tokens", "output_kind", "render_clip", "require_viz", "resolve_setup",
]
