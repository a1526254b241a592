"""PKU-MMD phase I / II raw readers and clip cutting (spec/mamp-and-data.md section F).

Raw layout (searched recursively under each --raw dir):

* skeleton files ``<video>.txt`` in a folder named ``skeleton`` / ``PKU_Skeleton_Renew`` (or any folder
  listed in :attr:`PkuPrepareSettings.skeleton_dirs`): one frame per line, 150 floats = person 1's 25
  joints (x, y, z) then person 2's (all zeros when absent), Kinect v2 / NTU joint order;
* label files ``<video>.txt`` in ``label`` / ``Train_Label_PKU_final`` / ``Label``: rows
  ``action_id,start,end,confidence``;
* split files ``cross-subject.txt`` / ``cross_subject.txt`` / ``cross_subject_v2.txt`` (and ``view``):
  line 2 is the comma+space separated list of training videos; every other video is test (as MAMP).

Clips are skeleton rows [start, end) (end excluded, values used as 0-based rows), of which the first
:attr:`PkuPrepareSettings.max_frames` (300, as the reference's ``max_frame``; None keeps all) are kept;
class = action_id - 1 in :data:`REFERENCE_COLUMNS` (51) classes for both phases, as the reference's
one-hot columns (ids absent from the data, e.g. phase II's gaps, are unused classes); all-zero clips are
skipped. No denoising and no centring: samples keep raw camera coordinates (spec F "Not done for PKU"),
recorded as ``centered=False`` in the provenance.
Output per clip: float32 (frames <= max_frames, 2, 25, 3).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from skelcli.errors import SkelError

V1_NAME_RE = re.compile(r"^(\d{4})-([LMR])$")
V2_NAME_RE = re.compile(r"^A(\d{2})N(\d{2})-([LMR])$")
SPLIT_FILE_RE = re.compile(r"^cross[-_](subject|view)(?:[-_]v2)?\.txt$", re.IGNORECASE)
VIEW_INDEX = {"L": 1, "M": 2, "R": 3}

#: spec F: Phase I has 51 real classes, Phase II 41 (its action ids are not 1..41: see REFERENCE_COLUMNS).
NUM_CLASSES = {"pku-mmd-v1": 51, "pku-mmd-v2": 41}
#: The reference (MAMP ``data/pku_v*/pku_gendata.py``) writes one-hot labels with 51 columns for both
#: phases, label = action_id - 1: the class count of a PKU store (more only if an id exceeds 51).
REFERENCE_COLUMNS = 51
#: The reference's ``max_frame``: it keeps the first 300 frames of a clip.
REFERENCE_MAX_FRAMES = 300


class PkuPrepareSettings(BaseModel):
    """Rules of the PKU-MMD clip extraction (spec F); stored as JSON in the HDF5 attrs."""

    model_config = ConfigDict(extra="forbid")

    skeleton_dirs: list[str] = Field(["skeleton", "PKU_Skeleton_Renew", "skeletons"], description="folder names holding skeleton files")
    label_dirs: list[str] = Field(["label", "labels", "Label", "Train_Label_PKU_final", "Label_PKUMMD_v2"], description="folder names holding label files")
    skip_all_zero_clips: bool = Field(True, description="skip clips whose values are all zero (spec F)")
    max_frames: Optional[int] = Field(
        REFERENCE_MAX_FRAMES, ge=1,
        description="keep the first max_frames frames of a clip (the reference's max_frame = 300); None keeps the whole clip",
    )
    label_remap: Literal["never", "auto"] = Field(
        "never",
        description="never (the reference): label = action_id - 1, num_classes = max(51, largest id); auto (the previous "
        "default): action_id - 1 when every id is in 1..the phase's real class count (51 / 41), else the sorted "
        "raw ids mapped to 0..k-1",
    )
    centered: bool = Field(False, description="provenance flag: PKU samples are not centred (spec F)")


def video_info(video: str, dataset: str) -> tuple[int, int]:
    """(sequence, view) of a video id: ``0002-L`` (phase I naming) or ``A10N08-L`` (phase II naming).

    Both namings are accepted for either phase (the clip cutting does not depend on it; copies of
    phase II circulate under both). SkelError for anything else.
    """
    m = V1_NAME_RE.match(video) or V2_NAME_RE.match(video)
    if m is None:
        raise SkelError(f"unexpected PKU-MMD video name {video!r} (want NNNN-L|M|R or AxxNyy-L|M|R)")
    g = m.groups()
    # Phase II ids AxxNyy are stored as xx*100 + yy so the sequence stays one integer.
    sequence = int(g[0]) if len(g) == 2 else int(g[0]) * 100 + int(g[1])
    return sequence, VIEW_INDEX[g[-1]]


def read_skeleton_txt(path: str | Path) -> np.ndarray:
    """One PKU skeleton file -> float32 (frames, 2, 25, 3). SkelError on a bad row (named)."""
    raw = Path(path).read_bytes()
    lines = raw.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise SkelError("empty file")
    rows = [ln.split() for ln in lines]
    for k, r in enumerate(rows):
        if len(r) != 150:
            raise SkelError(f"line {k + 1}: {len(r)} numbers, expected 150")
    try:
        arr = np.array(rows, dtype=np.float64).astype(np.float32)
    except ValueError:
        for k, r in enumerate(rows):
            try:
                [float(t) for t in r]
            except ValueError:
                raise SkelError(f"line {k + 1}: non-numeric token") from None
        raise
    if not np.isfinite(arr).all():
        raise SkelError("non-finite value")
    return arr.reshape(len(rows), 2, 25, 3)


def read_labels(path: str | Path, errors: list[str] | None = None) -> list[tuple[int, int, int]]:
    """Label rows ``action,start,end[,confidence]`` -> [(action, start, end)].

    A bad row raises SkelError, or, when an ``errors`` list is given, is described there and skipped.
    """
    out = []
    for k, line in enumerate(Path(path).read_text(errors="replace").splitlines()):
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(",")]
        problem = None
        if len(parts) not in (3, 4):
            problem = f"line {k + 1}: expected action,start,end,confidence, got {line[:60]!r}"
        else:
            try:
                out.append((int(parts[0]), int(parts[1]), int(parts[2])))
            except ValueError:
                problem = f"line {k + 1}: non-integer field in {line[:60]!r}"
        if problem is not None:
            if errors is None:
                raise SkelError(problem)
            errors.append(problem)
    return out


def read_split_file(path: str | Path) -> set[str]:
    """Training videos of a PKU split file: line 2, comma(+space) separated (spec F)."""
    lines = Path(path).read_text(errors="replace").splitlines()
    if len(lines) < 2:
        raise SkelError(f"split file {Path(path).name}: expected the training list on line 2")
    return {t.strip() for t in lines[1].split(",") if t.strip()}


@dataclass
class PkuClip:
    """One clip: joints float32 (frames, 2, 25, 3), raw camera coordinates (not centred)."""

    name: str
    video: str
    action: int
    joints: np.ndarray
    num_actors: int
    raw_frames: int = 0  #: rows of the label range before the max_frames cut (0: not recorded)


def cut_clips(video: str, skeleton: np.ndarray, labels: list[tuple[int, int, int]], settings: PkuPrepareSettings) -> tuple[list[PkuClip], list[tuple[str, str]]]:
    """Cut clips rows [start, end) of a video's (frames, 2, 25, 3) array (spec F).

    Only the first ``settings.max_frames`` rows of a clip are kept (all when None). A clip is all-zero,
    and skipped, when its kept rows are (the reference tests the whole clip before cutting and would
    store a zero sample when only rows past max_frames hold values).

    Returns (clips, rejected) where rejected is [(clip name, reason)] for empty/out-of-range/all-zero rows.
    """
    clips: list[PkuClip] = []
    rejected: list[tuple[str, str]] = []
    n = len(skeleton)
    for i, (action, start, end) in enumerate(labels):
        name = f"{video}_{i:03d}"
        if action < 1:
            rejected.append((name, f"label row {i + 1}: action id {action} < 1"))
            continue
        if start < 0 or end <= start:
            rejected.append((name, f"label row {i + 1}: empty range [{start}, {end})"))
            continue
        if start >= n:
            rejected.append((name, f"label row {i + 1}: start {start} beyond the {n} skeleton frames"))
            continue
        clip = skeleton[start:end]
        raw_frames = len(clip)
        if settings.max_frames is not None and len(clip) > settings.max_frames:
            if settings.skip_all_zero_clips and np.any(clip) and not np.any(clip[: settings.max_frames]):
                rejected.append((name, f"all-zero in its first {settings.max_frames} frames (max_frames)"))
                continue
            clip = clip[: settings.max_frames]
        if settings.skip_all_zero_clips and not np.any(clip):
            rejected.append((name, "all-zero clip"))
            continue
        num_actors = 2 if np.any(clip[:, 1]) else 1
        clips.append(PkuClip(name, video, action, np.ascontiguousarray(clip), num_actors, raw_frames))
    return clips, rejected


def label_mapping(actions: list[int], num_classes: int, settings: PkuPrepareSettings) -> dict[int, int]:
    """Raw action id -> 0-based label (see PkuPrepareSettings.label_remap; ``num_classes`` is the
    phase's real class count, used by "auto" only). Ids < 1 are left out (their clips are rejected)."""
    ids = sorted({a for a in actions if a >= 1})
    if settings.label_remap == "never" or all(a <= num_classes for a in ids):
        return {a: a - 1 for a in ids}
    return {a: k for k, a in enumerate(ids)}


def store_num_classes(mapping: dict[int, int], num_classes: int, settings: PkuPrepareSettings) -> int:
    """Class count of the store: "never": max(51, largest id) (the reference's 51 columns); "auto": the
    phase's real count ``num_classes``, or the number of ids when they were remapped past it."""
    if settings.label_remap == "never":
        return max([REFERENCE_COLUMNS, *(label + 1 for label in mapping.values())])
    if mapping and max(mapping.values()) >= num_classes:
        return max(num_classes, len(mapping))
    return num_classes


def class_names(mapping: dict[int, int], n_classes: int) -> list[str]:
    """One name per label 0..n_classes-1: the PKU-MMD action name (:data:`skelcli.data.actions.PKU_ACTIONS`)
    of the raw action id of each label, marked "(unused)" for ids absent from the data (e.g. the ids
    phase II does not use); ``A0xx`` for an id beyond the official 51."""
    from skelcli.data.actions import PKU_ACTIONS

    def name(action: int) -> str:
        return PKU_ACTIONS[action - 1] if 1 <= action <= len(PKU_ACTIONS) else f"A{action:03d}"

    label_to_action = {label: action for action, label in mapping.items()}
    rule_identity = all(label == action - 1 for action, label in mapping.items())
    names = []
    for label in range(n_classes):
        if label in label_to_action:
            names.append(name(label_to_action[label]))
        else:  # with labels = action id - 1 the gap's id is known
            names.append(f"{name(label + 1)} (unused)" if rule_identity else "(unused)")
    return names
