"""NTU RGB+D 60/120 raw `.skeleton` reader, denoiser and two-actor assembly.

Follows spec/mamp-and-data.md section D (the SGN/CTR-GCN/MAMP preprocessing lineage):

* D.1 parse: frame count, per frame a body count, per body a 10-field info line, a joint-count line
  (25) and 25 joint lines of 12 numbers. Every structural field is checked; xyz are converted to
  float, the other 9 joint fields are checked to hold only numeric characters (a full float
  conversion of all 12 columns would cost ~3x the parse time; see examples/bench_parse.py).
* D.3 frames with 0 bodies are dropped; bodies are keyed by their id string; a body's interval is
  its first valid-frame index followed by +1 per later appearance (compacted, as the reference).
* D.4 denoising of multi-body samples (length rule, spread rule, motion order) and the two-actor
  assembly with the "min(ends) - max(starts) <= 0 is no overlap" rule; all-zero frames dropped.
* D.5 translation to SpineMid of actor 1 at its first non-zero frame; frames where an actor was
  all-zero are reset to zero afterwards; then the empty-second-actor convention (zeros / copy).

Output per sample: float32 ``(frames, M=2, V=25, C=3)`` in metres, NTU joint order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from skelcli.errors import SkelError
from skelcli.topology import NUM_JOINTS, ORIGIN_JOINT

NAME_RE = re.compile(r"^S(\d{3})C(\d{3})P(\d{3})R(\d{3})A(\d{3})$")

#: spec D.6: NTU60 cross-subject training performer ids (20).
NTU60_XSUB_TRAIN = (1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38)
#: spec D.6: NTU120 cross-subject training performer ids (53).
NTU120_XSUB_TRAIN = NTU60_XSUB_TRAIN + (
    45, 46, 47, 49, 50, 52, 53, 54, 55, 56, 57, 58, 59, 70, 74, 78, 80, 81, 82, 83, 84, 85,
    86, 89, 91, 92, 93, 94, 95, 97, 98, 100, 103,
)
#: spec D.6: NTU60 cross-view training cameras.
NTU60_XVIEW_TRAIN_CAMERAS = (2, 3)

# Characters a joint line may hold: these, and whitespace (_WHITESPACE: what bytes.split() splits on).
_NUMBER_CHARS = b"0123456789eE.+-"
_WHITESPACE = b" \t\n\r\x0b\x0c"
_NUMERIC_CHARS = re.compile(b"[^" + re.escape(_NUMBER_CHARS + _WHITESPACE) + b"]")


class NtuPrepareSettings(BaseModel):
    """Every threshold and rule of the NTU preprocessing (spec D.4, D.5); stored as JSON in the HDF5 attrs."""

    model_config = ConfigDict(extra="forbid")

    noise_len_thres: int = Field(11, description="drop bodies present in <= this many frames (D.4 step 1)")
    noise_spr_thres1: float = Field(0.8, description="a frame is valid if x-spread <= thres1 * y-spread (D.4 step 2)")
    noise_spr_thres2: float = Field(0.69754, description="drop a body whose invalid-frame ratio >= thres2 (D.4 step 2)")
    second_actor: Literal["zeros", "copy"] = Field(
        "zeros", description="single-actor samples: fill actor 2 with zeros (NTU60 ref) or a copy of actor 1 (NTU120 ref)"
    )
    translate: bool = Field(True, description="subtract SpineMid of actor 1 at its first non-zero frame (D.5)")
    exclude_missing_list: bool = Field(
        True, description="with --missing-list: also reject samples named on the list (the reference excludes them)"
    )

    @classmethod
    def for_dataset(cls, dataset: str, **overrides) -> "NtuPrepareSettings":
        """Reference defaults: NTU60 fills a missing actor 2 with zeros, NTU120 copies actor 1 (spec D.5)."""
        base = {"second_actor": "copy" if dataset == "ntu120" else "zeros"}
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)


@dataclass(frozen=True)
class NtuName:
    """Fields of a sample name SsssCcccPpppRrrrAaaa (spec D.2)."""

    name: str
    setup: int
    camera: int
    subject: int
    replication: int
    action: int

    @property
    def label(self) -> int:
        """0-based class index (action - 1)."""
        return self.action - 1


def parse_name(name: str) -> NtuName:
    """Parse `S001C002P003R002A013` (a `.skeleton` suffix is stripped); SkelError on anything else."""
    stem = name[: -len(".skeleton")] if name.endswith(".skeleton") else name
    m = NAME_RE.match(stem)
    if m is None:
        raise SkelError(f"unexpected NTU sample name {name!r} (want SsssCcccPpppRrrrAaaa)")
    s, c, p, r, a = (int(g) for g in m.groups())
    if min(s, c, p, r, a) < 1:
        raise SkelError(f"unexpected NTU sample name {name!r} (ids start at 1)")
    return NtuName(stem, s, c, p, r, a)


@dataclass
class RawBody:
    """One tracked body of a `.skeleton` file: joints over the frames it appears in (D.3).

    joints: float32 (n, 25, 3) in metres; interval: valid-frame indices (compacted, see D.3).
    """

    body_id: str
    joints: np.ndarray
    interval: list[int]
    motion: float = 0.0


@dataclass
class RawSkeleton:
    """A parsed `.skeleton` file.

    frame_count: the header value; body_counts: per raw frame; bodies: by id, in first-seen order,
    over the valid (>= 1 body) frames only; num_valid_frames: frames with >= 1 body.
    """

    frame_count: int
    body_counts: list[int]
    bodies: dict[str, RawBody] = field(default_factory=dict)
    num_valid_frames: int = 0


def _int_field(line: bytes, what: str, lineno: int) -> int:
    parts = line.split()
    if len(parts) != 1:
        raise SkelError(f"line {lineno}: expected the {what} (one integer), got {line[:60]!r}")
    try:
        return int(parts[0])
    except ValueError:
        raise SkelError(f"line {lineno}: {what} is not an integer: {parts[0][:30]!r}") from None


_IS_WHITESPACE = np.zeros(256, dtype=bool)
_IS_WHITESPACE[list(_WHITESPACE)] = True


def _tokens_per_line(blob: bytes) -> np.ndarray:
    """len(line.split()) of each line of ``blob`` (lines joined by b"\\n"), vectorised over the bytes."""
    raw = np.frombuffer(blob, dtype=np.uint8)
    ws = _IS_WHITESPACE[raw]
    starts = ~ws
    starts[1:] &= ws[:-1]  # a token starts where a non-space follows a space (or the blob starts)
    before = np.concatenate([[0], np.cumsum(starts)])  # tokens started before each byte offset
    ends = np.flatnonzero(raw == 10)
    return before[np.concatenate([ends, [len(raw)]])] - before[np.concatenate([[0], ends + 1])]


def _check_numeric(blob: bytes) -> None:
    """SkelError if a joint-line token is not a number. Real files hold `NaN` in the pixel fields of
    untracked joints (e.g. S018C001P045R001A116), so NaN/inf tokens are accepted here."""
    if not blob.translate(None, _NUMBER_CHARS + _WHITESPACE):
        return  # only digits, signs, exponents, points and spaces: nothing to look at closer
    for m in _NUMERIC_CHARS.finditer(blob):
        a = blob.rfind(b" ", 0, m.start()) + 1
        a = max(a, blob.rfind(b"\n", 0, m.start()) + 1, blob.rfind(b"\t", 0, m.start()) + 1)
        e = len(blob)
        for sep in (b" ", b"\n", b"\t"):
            k = blob.find(sep, m.end())
            if k != -1:
                e = min(e, k)
        token = blob[a:e]
        try:
            float(token)
        except ValueError:
            raise SkelError(f"non-numeric token {token[:30]!r} in a joint line") from None


def parse_skeleton_bytes(raw: bytes) -> RawSkeleton:
    """Parse the text of one `.skeleton` file (spec D.1). LF and CRLF are both accepted.

    Raises SkelError naming the line for: empty file, bad frame/body/joint count, a body-info line
    that is not 10 fields, a joint line that is not 12 numbers, non-numeric tokens, truncation and
    trailing content.
    """
    lines = raw.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise SkelError("empty file")
    n_lines = len(lines)
    frame_count = _int_field(lines[0], "frame count", 1)
    if frame_count < 0:
        raise SkelError(f"line 1: negative frame count {frame_count}")
    i = 1
    body_counts: list[int] = []
    joint_starts: list[int] = []
    body_keys: list[str] = []
    for f in range(frame_count):
        if i >= n_lines:
            raise SkelError(f"truncated: header says {frame_count} frames, file ends in frame {f + 1}")
        nb = _int_field(lines[i], "body count", i + 1)
        if nb < 0:
            raise SkelError(f"line {i + 1}: negative body count {nb}")
        body_counts.append(nb)
        i += 1
        for _ in range(nb):
            if i + 2 + NUM_JOINTS > n_lines:
                raise SkelError(f"truncated: file ends inside a body of frame {f + 1}")
            info = lines[i].split()
            if len(info) != 10:
                raise SkelError(f"line {i + 1}: body-info line has {len(info)} fields, expected 10")
            body_keys.append(info[0].decode("ascii", "replace"))
            nj = _int_field(lines[i + 1], "joint count", i + 2)
            if nj != NUM_JOINTS:
                raise SkelError(f"line {i + 2}: joint count {nj}, expected {NUM_JOINTS}")
            joint_starts.append(i + 2)
            i += 2 + NUM_JOINTS
    if i != n_lines:
        raise SkelError(f"line {i + 1}: {n_lines - i} unexpected trailing line(s) after the last frame")

    n_bodies = len(joint_starts)
    if n_bodies:
        joint_lines = [ln for s in joint_starts for ln in lines[s : s + NUM_JOINTS]]
        blob = b"\n".join(joint_lines)
        widths = _tokens_per_line(blob)
        bad = np.flatnonzero(widths != 12)
        if len(bad):
            body, j = divmod(int(bad[0]), NUM_JOINTS)
            lineno = joint_starts[body] + j + 1
            raise SkelError(f"line {lineno}: joint line has {int(widths[bad[0]])} numbers, expected 12")
        _check_numeric(blob)
        tokens = blob.split()  # 12 per line: x, y, z are tokens 0, 1, 2 of every 12
        try:
            xyz = np.stack([np.fromiter(map(float, tokens[c::12]), dtype=np.float64, count=len(joint_lines)) for c in range(3)],
                           axis=1).astype(np.float32)
        except ValueError as exc:
            raise SkelError(f"non-numeric joint coordinate ({exc})") from None
        if not np.isfinite(xyz).all():
            raise SkelError("non-finite joint coordinate")
        xyz = xyz.reshape(n_bodies, NUM_JOINTS, 3)
    else:
        xyz = np.zeros((0, NUM_JOINTS, 3), dtype=np.float32)

    # D.3: drop 0-body frames, renumber the rest, group by body id (compacted intervals).
    per_body: dict[str, tuple[list[int], list[int]]] = {}
    valid = 0
    k = 0
    for nb in body_counts:
        if nb == 0:
            continue
        for _ in range(nb):
            key = body_keys[k]
            rows, interval = per_body.setdefault(key, ([], []))
            rows.append(k)
            interval.append(valid if not interval else interval[-1] + 1)
            k += 1
        valid += 1
    bodies = {key: RawBody(key, xyz[rows], interval) for key, (rows, interval) in per_body.items()}
    return RawSkeleton(frame_count, body_counts, bodies, valid)


def read_skeleton(path: str | Path) -> RawSkeleton:
    """Read and parse one `.skeleton` file (see :func:`parse_skeleton_bytes`)."""
    return parse_skeleton_bytes(Path(path).read_bytes())


def _motion(joints: np.ndarray) -> float:
    """Sum over x, y, z of the variance pooled over frames and joints (D.3). joints: (n, 25, 3)."""
    return float(np.sum(np.var(joints.reshape(-1, 3), axis=0)))


def _spread_valid_frames(joints: np.ndarray, thres1: float) -> np.ndarray:
    """Frames whose x-spread <= thres1 * y-spread over the 25 joints (D.4 step 2). joints: (n, 25, 3)."""
    x, y = joints[:, :, 0], joints[:, :, 1]
    return np.nonzero((x.max(1) - x.min(1)) <= thres1 * (y.max(1) - y.min(1)))[0]


@dataclass
class DenoiseResult:
    """Output of :func:`denoise`: joints float32 (frames, 2, 25, 3) before translation.

    two_actor_layout is False when a single body was kept (the reference's 75-wide array).
    """

    joints: np.ndarray
    two_actor_layout: bool
    notes: list[str]


def denoise(skel: RawSkeleton, settings: NtuPrepareSettings) -> DenoiseResult:
    """Body selection and two-actor assembly of spec D.4.

    Raises SkelError when no frame has a body, or when the length rule removes every body (the
    reference code would crash on this; we reject the sample).
    """
    bodies = dict(skel.bodies)
    notes: list[str] = []
    if not bodies:
        raise SkelError("no body in any frame")
    if len(bodies) == 1:
        body = next(iter(bodies.values()))
        return DenoiseResult(_one_actor(body.joints), False, notes)

    for b in bodies.values():
        b.motion = _motion(b.joints)
    # Step 1: length.
    for key in list(bodies):
        if len(bodies[key].interval) <= settings.noise_len_thres:
            notes.append(f"length: dropped body {key} ({len(bodies[key].interval)} frames)")
            del bodies[key]
    if not bodies:
        raise SkelError(f"denoising removed every body (all present in <= {settings.noise_len_thres} frames)")
    if len(bodies) > 1:
        # Step 2: spread, in first-seen order, while more than one body remains.
        for key in list(bodies):
            if len(bodies) == 1:
                break
            b = bodies[key]
            valid = _spread_valid_frames(b.joints, settings.noise_spr_thres1)
            n = len(b.interval)
            n_noise = n - len(valid)
            if n_noise == 0:
                continue
            if n_noise / float(n) >= settings.noise_spr_thres2:
                notes.append(f"spread: dropped body {key} (noise ratio {n_noise / n:.3f})")
                del bodies[key]
            else:
                b.motion = min(b.motion, _motion(b.joints[valid]))
    if len(bodies) == 1:
        return DenoiseResult(_one_actor(next(iter(bodies.values())).joints), False, notes)

    # Step 3: order by motion (descending; stable for ties, like Python's sorted).
    ordered = sorted(bodies.values(), key=lambda b: b.motion, reverse=True)
    # Step 4: two-actor assembly over the valid frames.
    out = np.zeros((skel.num_valid_frames, 2, NUM_JOINTS, 3), dtype=np.float32)
    a1 = ordered[0]
    s1, e1 = a1.interval[0], a1.interval[-1]
    out[s1 : e1 + 1, 0] = a1.joints
    s2, e2 = 0, 0  # actor 2's initial (virtual) interval, as the reference
    for b in ordered[1:]:
        s, e = b.interval[0], b.interval[-1]
        if min(e1, e) - max(s1, s) <= 0:
            out[s : e + 1, 0] = b.joints
            s1, e1 = min(s, s1), max(e, e1)
        elif min(e2, e) - max(s2, s) <= 0:
            out[s : e + 1, 1] = b.joints
            s2, e2 = min(s, s2), max(e, e2)
        else:
            notes.append(f"assembly: dropped body {b.body_id} (overlaps both actors)")
    # Step 5: drop frames where both actors are absent.
    keep = np.any(out.reshape(len(out), -1) != 0, axis=1)
    if not keep.all():
        notes.append(f"dropped {int((~keep).sum())} all-zero frame(s)")
        out = out[keep]
    return DenoiseResult(out, True, notes)


def _one_actor(joints: np.ndarray) -> np.ndarray:
    out = np.zeros((len(joints), 2, NUM_JOINTS, 3), dtype=np.float32)
    out[:, 0] = joints
    return out


def translate(res: DenoiseResult, settings: NtuPrepareSettings) -> tuple[np.ndarray, int]:
    """Spec D.5 translation plus the empty-second-actor convention.

    Returns (joints float32 (frames, 2, 25, 3), num_actors). num_actors counts the actor slots that
    hold data before the "copy" convention (a copied actor 2 does not count).
    """
    j = res.joints.copy()
    if len(j) == 0:
        raise SkelError("no frame left after denoising")
    flat = j.reshape(len(j), 2, -1)
    present1 = np.any(flat[:, 0] != 0, axis=1)
    present2 = np.any(flat[:, 1] != 0, axis=1)
    if settings.translate:
        first = int(np.argmax(present1)) if present1.any() else 0
        origin = j[first, 0, ORIGIN_JOINT].copy()
        if res.two_actor_layout:
            j -= origin
            j[~present1, 0] = 0
            j[~present2, 1] = 0
        else:
            j[:, 0] -= origin
    num_actors = 2 if (res.two_actor_layout and present2.any()) else 1
    if not res.two_actor_layout and settings.second_actor == "copy":
        j[:, 1] = j[:, 0]
    return j, num_actors


@dataclass
class NtuSample:
    """One preprocessed NTU sample: joints float32 (frames, 2, 25, 3), metres, NTU joint order."""

    meta: NtuName
    joints: np.ndarray
    num_actors: int
    raw_frames: int
    notes: list[str]


def load_sample(path: str | Path, settings: NtuPrepareSettings) -> NtuSample:
    """Parse, denoise and translate one `.skeleton` file (spec D.1-D.5). SkelError on bad input."""
    path = Path(path)
    meta = parse_name(path.name)
    skel = read_skeleton(path)
    res = denoise(skel, settings)
    joints, num_actors = translate(res, settings)
    return NtuSample(meta, joints, num_actors, skel.frame_count, res.notes)


def read_missing_list(path: str | Path) -> set[str]:
    """Sample names in an official missing-skeleton list (prose header lines are ignored)."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as exc:
        raise SkelError(f"cannot read missing list {path}: {exc.strerror}") from None
    return {t for t in text.split() if NAME_RE.match(t)}


def ntu_splits(dataset: str, subjects: np.ndarray, cameras: np.ndarray, setups: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """Split index arrays (spec D.6): ntu60 -> xsub, xview; ntu120 -> xsub, xset. Indices are int32, sorted."""
    idx = np.arange(len(subjects), dtype=np.int32)
    if dataset == "ntu60":
        sub_train = np.isin(subjects, NTU60_XSUB_TRAIN)
        cam_train = np.isin(cameras, NTU60_XVIEW_TRAIN_CAMERAS)
        return {
            "xsub": {"train": idx[sub_train], "test": idx[~sub_train]},
            "xview": {"train": idx[cam_train], "test": idx[~cam_train]},
        }
    if dataset == "ntu120":
        sub_train = np.isin(subjects, NTU120_XSUB_TRAIN)
        set_train = (setups % 2) == 0
        return {
            "xsub": {"train": idx[sub_train], "test": idx[~sub_train]},
            "xset": {"train": idx[set_train], "test": idx[~set_train]},
        }
    raise SkelError(f"unknown NTU dataset {dataset!r}")


def in_ntu60(meta: NtuName) -> bool:
    """NTU60 holds setups S001-S017 and actions A001-A060 (spec D.2)."""
    return meta.setup <= 17 and meta.action <= 60


def format_skeleton(frames: list[list[tuple[str, np.ndarray]]], newline: str = "\n") -> str:
    """Write `.skeleton` text (spec D.1) for ``frames`` = per frame a list of (body_id, joints).

    joints: (25, 3) camera-space xyz in metres, or (25, 12) full joint lines. Fields this writer
    does not know (pixels, orientation) are 0; trackingState is 2. The inverse of the parser; used
    by tests to craft multi-body files.
    """
    out = [str(len(frames))]
    for bodies in frames:
        out.append(str(len(bodies)))
        for body_id, joints in bodies:
            j = np.asarray(joints, dtype=np.float64)
            out.append(f"{body_id} 0 1 1 1 1 0 0.0 0.0 2")
            out.append(str(NUM_JOINTS))
            for row in j:
                if len(row) == 12:
                    out.append(" ".join(repr(float(v)) if k < 11 else str(int(v)) for k, v in enumerate(row)))
                else:
                    x, y, z = (repr(float(v)) for v in row[:3])
                    out.append(f"{x} {y} {z} 0 0 0 0 0 0 0 0 2")
    return newline.join(out) + newline
