"""Procedural generator of genuine raw NTU RGB+D (``.skeleton``) and PKU-MMD (``.txt``) files.

The files follow the real text formats byte for byte in layout (spec/mamp-and-data.md D.1, D.2 and F),
so ``skel prepare`` can be exercised end to end without the real datasets, and the motions are
class-dependent so pretraining and probing have something learnable.

How a sample is made
--------------------
1. **Body.** A Kinect v2 skeleton in NTU joint order (``skelcli.topology``), rest pose in a body frame
   (x = the person's right, y = up, z = backward), scaled per subject (height and arm / leg / torso
   proportions drawn from a seeded RNG keyed by the subject id).
2. **Motion.** Every class is a deterministic function of its id (and ``SynthSettings.motion_seed``):
   an archetype (one arm, both arms, legs, bow / squat, head and torso, locomotion, jump) picks 2-4
   joint-angle degrees of freedom, each driven by ``centre + amplitude * sin(2 pi f t + phase)`` under
   a smooth start/stop envelope, plus an optional whole-body translation and turn. Per sample: speed,
   amplitude, duration and start phase vary. Forward kinematics over ``topological_order()`` gives
   world joints; the feet are kept on the floor.
3. **Two persons** (NTU A050-A060, A106-A120; PKU-MMD I actions 12, 14, 16, 18, 21, 24, 26, 27): a
   second body with its own program, the two facing each other, their distance following a
   class-specific approach / retreat curve.
4. **Cameras.** Three per setup, yaw 0 / -45 / +45 degrees (C001 / C002 / C003; PKU M / L / R) about
   the performance area, 2.9-3.8 m away, seeded per setup. Replication R001 faces C002, R002 faces
   C003, so C001 sees 45-degree views (as described in the NTU RGB+D paper). Camera space is the
   Kinect one: x to the sensor's left, y up, z away from the sensor.
5. **Kinect fields.** depthX/depthY (512x424) and colorX/colorY (1920x1080) from pinhole projections
   whose constants were fitted (least squares) to the public sample S001C001P001R001A001 and its
   neighbours; orientation quaternions (W, X, Y, Z) = the global rotation of the segment that starts
   at the joint, composed with a rest frame whose y axis lies along the bone to the joint's first
   child (leaf joints get 0 0 0 0, as in the real files); trackingState 2, some 1.
6. **Faults** (exact counts: ``round(rate * files)`` files per kind, chosen by the seeded RNG):
   ``spurious_body`` (an extra body present for 1-11 frames, caught by the length rule of spec D.4),
   ``noise_body`` (an extra long-lived body whose x range exceeds 0.8 x its y range in ~90 % of its
   frames, caught by the spread rule), ``zero_frames`` (frames with bodyCount 0), ``id_switch`` (the
   actor continues under a new body id from some frame on; intervals do not overlap),
   ``jitter`` (large noise on a few joints in some frames, marked inferred), ``no_body``
   (frameCount > 0 but every frame has bodyCount 0; these files are listed in the report).

Choices made where the spec is silent ([UNKNOWN]/[VERIFY], all settings or documented here):
- Camera-id to yaw mapping (above); PKU views L / M / R = yaw -45 / 0 / +45 degrees.
- PKU-MMD cross-view: views M and R train, L tests ([VERIFY] against the official split lists).
- PKU-MMD II interaction classes are unknown: none are generated as two-person for ``pku-mmd-v2``.
- PKU file names are ``NNNN-V`` in both phases (phase II's real names look like ``A10N08-L``).
- The split files reproduce the official layout including its header spelling "Validataion".
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Optional, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from skelcli.errors import SkelError
from skelcli.topology import NUM_JOINTS, PARENTS, topological_order

DATASETS: tuple[str, ...] = ("ntu60", "ntu120", "pku-mmd-v1", "pku-mmd-v2")

FPS = 30.0
FAULT_KINDS: tuple[str, ...] = ("spurious_body", "noise_body", "zero_frames", "id_switch", "jitter", "no_body")

# --- dataset facts (spec D.2, D.6, F; PKU interaction ids from shared/realdata/SOURCES.md) -------------
NUM_CLASSES = {"ntu60": 60, "ntu120": 120, "pku-mmd-v1": 51, "pku-mmd-v2": 41}
NUM_SETUPS = {"ntu60": 17, "ntu120": 32}
NUM_SUBJECTS = {"ntu60": 40, "ntu120": 106, "pku-mmd-v1": 66, "pku-mmd-v2": 13}
_NTU60_XSUB_TRAIN = (1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38)
_NTU120_XSUB_TRAIN = _NTU60_XSUB_TRAIN + (
    45, 46, 47, 49, 50, 52, 53, 54, 55, 56, 57, 58, 59, 70, 74, 78, 80, 81, 82, 83, 84, 85,
    86, 89, 91, 92, 93, 94, 95, 97, 98, 100, 103,
)
_PKU1_INTERACTIONS = (12, 14, 16, 18, 21, 24, 26, 27)
PKU_VIEWS = ("L", "M", "R")

# --- Kinect v2 projection, fitted to public sample files (see module docstring) ----------------------
DEPTH_F, DEPTH_CX, DEPTH_CY = 366.7, 257.1, 208.7
COLOR_F, COLOR_CX, COLOR_CY = 1053.0, 975.4, 563.3
DEPTH_W, DEPTH_H = 512, 424
_BODY_ID_BASE = 72057594037927936  # 2**56: real Kinect tracking ids are 7205759403793xxxx

CAMERA_YAW_DEG = {1: 0.0, 2: -45.0, 3: 45.0}
PKU_VIEW_YAW_DEG = {"L": -45.0, "M": 0.0, "R": 45.0}
REPLICATION_FACING_CAMERA = {1: 2, 2: 3}


def interaction_classes(dataset: str) -> frozenset[int]:
    """1-based action ids performed by two persons (spec D.4 and the NTU120 list A106-A120)."""
    if dataset == "ntu60":
        return frozenset(range(50, 61))
    if dataset == "ntu120":
        return frozenset(range(50, 61)) | frozenset(range(106, 121))
    if dataset == "pku-mmd-v1":
        return frozenset(_PKU1_INTERACTIONS)
    return frozenset()


# ======================================================================================================
# Settings and report
# ======================================================================================================


class FaultRates(BaseModel):
    """Fraction of files that get each fault (exact count = round(rate * files)); spec D.4 names them."""

    model_config = ConfigDict(extra="forbid")
    spurious_body: float = Field(0.05, ge=0, le=1, description="extra body present for <= 11 frames")
    noise_body: float = Field(0.05, ge=0, le=1, description="extra body with x-spread > 0.8 y-spread")
    zero_frames: float = Field(0.05, ge=0, le=1, description="some frames have bodyCount 0")
    id_switch: float = Field(0.05, ge=0, le=1, description="actor continues under a new body id")
    jitter: float = Field(0.05, ge=0, le=1, description="large noise on a few joints in some frames")
    no_body: float = Field(0.02, ge=0, le=1, description="every frame has bodyCount 0")

    @classmethod
    def none(cls) -> "FaultRates":
        return cls(spurious_body=0, noise_body=0, zero_frames=0, id_switch=0, jitter=0, no_body=0)


class SynthSettings(BaseModel):
    """What ``synthesize`` writes. Defaults give ~144 small NTU files (a few seconds)."""

    model_config = ConfigDict(extra="forbid")
    classes: int = Field(6, ge=1, description="number of action classes (ignored when class_ids is set)")
    class_ids: Optional[list[int]] = Field(None, description="explicit 1-based action ids")
    subjects: int = Field(2, ge=1, description="performers; NTU picks alternate xsub train / test ids")
    setups: int = Field(2, ge=1, description="NTU setups (odd and even ids, so xset is non-empty)")
    cameras: int = Field(3, ge=1, le=3, description="cameras per setup (NTU C001-C003, PKU M/L/R)")
    replications: int = Field(2, ge=1, le=2, description="NTU R001/R002; PKU: rounds per subject")
    samples_per_class: Optional[int] = Field(
        None, ge=1, description="performances per class (each written once per camera); default all combos"
    )
    min_frames: int = Field(40, ge=12)
    max_frames: int = Field(300, ge=12)
    seed: int = Field(0, ge=0, description="sample-level randomness (subjects, noise, faults)")
    motion_seed: int = Field(0, ge=0, description="defines the class motion programs")
    sensor_noise: float = Field(0.002, ge=0, description="std of joint noise in metres")
    inferred_rate: float = Field(0.05, ge=0, le=1, description="fraction of joints with trackingState 1")
    faults: FaultRates = Field(default_factory=FaultRates)
    idle_frames: tuple[int, int] = Field((20, 60), description="PKU: idle frames between actions")
    difficulty: Literal["easy", "medium", "hard"] = Field(
        "easy",
        description="easy: every class its own archetype / pose, small nuisance; medium: the easy classes with the "
        "large nuisance of hard; hard: pairs of classes that share pose and energy and differ only in "
        "coordination (see HARD_VARIANT_PHASES), plus large nuisance variation",
    )

    @model_validator(mode="after")
    def _check(self) -> "SynthSettings":
        if self.min_frames > self.max_frames:
            raise ValueError(f"min_frames {self.min_frames} > max_frames {self.max_frames}")
        if self.idle_frames[0] < 1 or self.idle_frames[0] > self.idle_frames[1]:
            raise ValueError("idle_frames must be (lo, hi) with 1 <= lo <= hi")
        return self


class SynthReport(BaseModel):
    """What ``synthesize`` wrote."""

    dataset: str
    out: str
    files: list[str] = Field(description="paths relative to `out`")
    n_files: int
    bytes: int
    class_ids: list[int]
    frames: int = Field(description="total frames written (NTU: per file; PKU: per long video)")
    faults: dict[str, int]
    faults_by_file: dict[str, list[str]]
    no_body_files: list[str]
    clips: int = Field(0, description="PKU: labelled action instances")
    seconds: float


# ======================================================================================================
# Skeleton, rotations, forward kinematics
# ======================================================================================================

_L_ARM, _R_ARM = (4, 5, 6, 7, 21, 22), (8, 9, 10, 11, 23, 24)
_LEGS, _TORSO = (12, 13, 14, 15, 16, 17, 18, 19), (1, 20, 2, 3)


def _rest_offsets() -> np.ndarray:
    """Offset of every joint from its parent in the rest pose, metres, body frame; (25, 3), 1.75 m adult."""
    o = np.zeros((NUM_JOINTS, 3))
    o[1] = (0, 0.26, 0)            # SpineMid <- SpineBase
    o[20] = (0, 0.20, 0)           # SpineShoulder <- SpineMid
    o[2] = (0, 0.07, 0)            # Neck
    o[3] = (0, 0.13, 0)            # Head
    o[4], o[8] = (-0.17, -0.04, 0), (0.17, -0.04, 0)          # shoulders (left = -x)
    o[5], o[9] = (-0.02, -0.28, 0), (0.02, -0.28, 0)          # elbows
    o[6], o[10] = (0, -0.25, 0), (0, -0.25, 0)                # wrists
    o[7], o[11] = (0, -0.08, 0), (0, -0.08, 0)                # hands
    o[21], o[23] = (0, -0.08, -0.01), (0, -0.08, -0.01)       # hand tips
    o[22], o[24] = (0.02, -0.03, -0.04), (-0.02, -0.03, -0.04)  # thumbs, inward and forward
    o[12], o[16] = (-0.08, -0.06, 0), (0.08, -0.06, 0)        # hips
    o[13], o[17] = (0, -0.42, 0), (0, -0.42, 0)               # knees
    o[14], o[18] = (0, -0.40, 0.01), (0, -0.40, 0.01)         # ankles
    o[15], o[19] = (0, -0.06, -0.12), (0, -0.06, -0.12)       # feet, forward (= -z)
    return o


_REST = _rest_offsets()
_ORDER = topological_order()
_CHILDREN: list[list[int]] = [[c for c, p in enumerate(PARENTS) if p == j] for j in range(NUM_JOINTS)]
#: joint -> the child whose bone direction is the y axis of the joint's orientation (-1 for leaves)
_PRIMARY_CHILD = [min(ch) if ch else -1 for ch in _CHILDREN]


def _rot_axis(axis: int, a: np.ndarray) -> np.ndarray:
    """Rotation matrices about x (0), y (1) or z (2) by angles ``a`` (...,) -> (..., 3, 3)."""
    c, s = np.cos(a), np.sin(a)
    one, zero = np.ones_like(a), np.zeros_like(a)
    if axis == 0:
        m = [one, zero, zero, zero, c, -s, zero, s, c]
    elif axis == 1:
        m = [c, zero, s, zero, one, zero, -s, zero, c]
    else:
        m = [c, -s, zero, s, c, zero, zero, zero, one]
    return np.stack(m, -1).reshape(*np.shape(a), 3, 3)


def _euler(angles: np.ndarray) -> np.ndarray:
    """Local joint rotations Rz @ Rx @ Ry from angles (..., 3) ordered (x, y, z) -> (..., 3, 3)."""
    return _rot_axis(2, angles[..., 2]) @ _rot_axis(0, angles[..., 0]) @ _rot_axis(1, angles[..., 1])


def _align_y(d: np.ndarray) -> np.ndarray:
    """Rotation taking the unit y axis onto direction ``d`` (3,) -> (3, 3) (Rodrigues)."""
    d = d / np.linalg.norm(d)
    y = np.array([0.0, 1.0, 0.0])
    v, c = np.cross(y, d), float(y @ d)
    if c < -0.999999:  # antiparallel: half turn about z
        return np.diag([-1.0, -1.0, 1.0])
    k = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + k + k @ k / (1 + c)


_REST_FRAMES = np.stack(
    [_align_y(_REST[ch]) if ch >= 0 else np.eye(3) for ch in _PRIMARY_CHILD]
)  # (25, 3, 3)


def forward_kinematics(offsets: np.ndarray, local: np.ndarray, root_pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Joint positions and global segment rotations.

    offsets: (25, 3) bone offsets from the parent (body frame); local: (T, 25, 3, 3) local rotations
    (row j rotates the segment that starts at joint j); root_pos: (T, 3).
    Returns positions (T, 25, 3) and global rotations (T, 25, 3, 3): p_c = p_j + G_j @ offset_c for
    every child c of j, and G_c = G_j @ L_c.
    """
    T = local.shape[0]
    pos = np.zeros((T, NUM_JOINTS, 3))
    glob = np.zeros((T, NUM_JOINTS, 3, 3))
    for j in _ORDER:
        p = PARENTS[j]
        if p < 0:
            pos[:, j] = root_pos
            glob[:, j] = local[:, j]
        else:
            pos[:, j] = pos[:, p] + glob[:, p] @ offsets[j]
            glob[:, j] = glob[:, p] @ local[:, j]
    return pos, glob


def _quat_from_matrix(m: np.ndarray) -> np.ndarray:
    """Unit quaternions (W, X, Y, Z) with W >= 0 from rotation matrices (..., 3, 3) -> (..., 4)."""
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    q = np.stack(
        [
            np.sqrt(np.maximum(0, 1 + m00 + m11 + m22)) / 2,
            np.sqrt(np.maximum(0, 1 + m00 - m11 - m22)) / 2,
            np.sqrt(np.maximum(0, 1 - m00 + m11 - m22)) / 2,
            np.sqrt(np.maximum(0, 1 - m00 - m11 + m22)) / 2,
        ],
        -1,
    )
    # Signs of x, y, z relative to w from the off-diagonal terms; pick the largest component as pivot.
    big = np.argmax(q, -1)
    out = np.empty_like(q)
    s21, s02, s10 = m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]
    a01, a02, a12 = m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1]
    cases = [
        (q[..., 0], s21, s02, s10, 0),
        (s21, q[..., 1], a01, a02, 1),
        (s02, a01, q[..., 2], a12, 2),
        (s10, a02, a12, q[..., 3], 3),
    ]
    for w, x, y, z, k in cases:
        sel = big == k
        piv = q[..., k][sel]
        vals = [w[sel], x[sel], y[sel], z[sel]]
        for i in range(4):
            out[..., i][sel] = piv if i == k else vals[i] / (4 * piv)
    out *= np.where(out[..., :1] < 0, -1.0, 1.0)
    return out / np.linalg.norm(out, axis=-1, keepdims=True)


# ======================================================================================================
# Subjects, classes, motion programs
# ======================================================================================================


def subject_offsets(subject: int, seed: int = 0) -> np.ndarray:
    """Per-subject bone offsets (25, 3): overall height 1.50-1.95 m, arm / leg / torso proportions +-6 %."""
    rng = np.random.default_rng([seed, 1, subject])
    scale = float(np.clip(rng.normal(1.0, 0.06), 0.86, 1.12))
    off = _REST * scale
    for group in (_L_ARM + _R_ARM, _LEGS, _TORSO):
        off[list(group)] *= float(np.clip(rng.normal(1.0, 0.03), 0.94, 1.06))
    off[[4, 8], 0] *= float(np.clip(rng.normal(1.0, 0.06), 0.88, 1.12))  # shoulder width
    off[[12, 16], 0] *= float(np.clip(rng.normal(1.0, 0.06), 0.88, 1.12))  # hip width
    return off


# Degrees of freedom: name -> (joint, axis, lo, hi) in radians; axis 0 = x (flexion: positive moves a
# hanging limb forward), 1 = y (twist), 2 = z (lateral: negative moves the left side outward).
_DOFS: dict[str, tuple[int, int, float, float]] = {
    "l_sh_flex": (4, 0, -0.6, 2.6), "l_sh_abd": (4, 2, -2.4, 0.1), "l_sh_rot": (4, 1, -0.8, 0.8),
    "r_sh_flex": (8, 0, -0.6, 2.6), "r_sh_abd": (8, 2, -0.1, 2.4), "r_sh_rot": (8, 1, -0.8, 0.8),
    "l_elbow": (5, 0, 0.0, 2.3), "r_elbow": (9, 0, 0.0, 2.3),
    "l_wrist": (6, 0, -0.7, 0.7), "r_wrist": (10, 0, -0.7, 0.7),
    "l_hip_flex": (12, 0, -0.4, 1.6), "l_hip_abd": (12, 2, -0.7, 0.05),
    "r_hip_flex": (16, 0, -0.4, 1.6), "r_hip_abd": (16, 2, -0.05, 0.7),
    "l_knee": (13, 0, -2.0, 0.0), "r_knee": (17, 0, -2.0, 0.0),
    "l_ankle": (14, 0, -0.3, 0.4), "r_ankle": (18, 0, -0.3, 0.4),
    "spine_bend": (1, 0, -1.1, 0.2), "spine_side": (1, 2, -0.45, 0.45), "spine_twist": (1, 1, -0.7, 0.7),
    "neck_nod": (2, 0, -0.6, 0.35), "neck_turn": (2, 1, -0.9, 0.9),
}
_ARCHETYPES: dict[str, tuple[str, ...]] = {
    "right_arm": ("r_sh_flex", "r_sh_abd", "r_sh_rot", "r_elbow", "r_wrist"),
    "left_arm": ("l_sh_flex", "l_sh_abd", "l_sh_rot", "l_elbow", "l_wrist"),
    "both_arms": ("l_sh_flex", "r_sh_flex", "l_sh_abd", "r_sh_abd", "l_elbow", "r_elbow"),
    "legs": ("l_hip_flex", "r_hip_flex", "l_knee", "r_knee", "l_hip_abd", "r_hip_abd", "l_ankle"),
    "bow_squat": ("spine_bend", "l_hip_flex", "r_hip_flex", "l_knee", "r_knee", "neck_nod"),
    "head_torso": ("neck_nod", "neck_turn", "spine_twist", "spine_side", "spine_bend"),
    "locomotion": ("l_hip_flex", "r_hip_flex", "l_knee", "r_knee", "l_sh_flex", "r_sh_flex"),
    "jump": ("l_knee", "r_knee", "l_hip_flex", "r_hip_flex", "l_sh_abd", "r_sh_abd"),
}
_ARCH_NAMES = tuple(_ARCHETYPES)
# Which DOFs pair up with a mirrored, optionally anti-phase partner (both-arm / locomotion archetypes).
_MIRROR = {"l_sh_flex": "r_sh_flex", "l_sh_abd": "r_sh_abd", "l_elbow": "r_elbow", "l_hip_flex": "r_hip_flex",
           "l_knee": "r_knee", "l_hip_abd": "r_hip_abd"}


@dataclass(frozen=True)
class DofProgram:
    """theta(t) = env(t) * (centre + amplitude * sin(2 pi * freq * t + phase)); t in seconds."""

    dof: str
    centre: float
    amplitude: float
    freq: float
    phase: float


@dataclass(frozen=True)
class MotionProgram:
    """One person's motion for a class: joint-angle programs plus whole-body translation and turn."""

    archetype: str
    dofs: tuple[DofProgram, ...]
    translation: tuple[float, float, float]   # body frame displacement over the action (x right, y up, z back), m
    hop: float                               # vertical hop amplitude, m (jump archetype)
    hop_freq: float
    turn: float                              # total yaw change over the action, rad
    duration: float                          # mean duration, frames


@dataclass(frozen=True)
class ClassProgram:
    """A class: the main actor's program, an optional partner program and the pair's distance curve."""

    class_id: int
    actor: MotionProgram
    partner: Optional[MotionProgram]
    distance: tuple[float, float]            # (start distance, change over the action), m


def _motion_program(rng: np.random.Generator, archetype: str, duration: float) -> MotionProgram:
    pool = _ARCHETYPES[archetype]
    n = int(rng.integers(2, 5))
    names = [str(x) for x in rng.choice(pool, size=min(n, len(pool)), replace=False)]
    if rng.random() < 0.3:
        names.append(str(rng.choice(list(_DOFS))))
    base_freq = float(rng.uniform(0.35, 1.6))  # Hz: the class tempo
    dofs: list[DofProgram] = []
    seen: set[str] = set()
    mirrored = archetype in ("both_arms", "locomotion", "jump") or rng.random() < 0.2
    anti = archetype == "locomotion" or (mirrored and rng.random() < 0.5)
    for name in names:
        if name in seen:
            continue
        _, _, lo, hi = _DOFS[name]
        span = hi - lo
        centre = float(rng.uniform(lo + 0.3 * span, hi - 0.3 * span))
        if archetype == "locomotion":  # walking swings the limbs about an upright posture
            centre = float(np.clip(rng.uniform(-0.1, 0.25), lo, hi)) if name.endswith("flex") else lo * 0.25 + hi * 0.25
        amp = float(rng.uniform(0.25, 0.5) * span / 2)
        # Several DOFs of one class share the tempo (coordinated motion), some run at a harmonic.
        freq = base_freq * float(rng.choice([1.0, 1.0, 2.0, 0.5]))
        phase = float(rng.uniform(0, 2 * np.pi))
        dofs.append(DofProgram(name, centre, amp, freq, phase))
        seen.add(name)
        partner = _MIRROR.get(name) or next((k for k, v in _MIRROR.items() if v == name), None)
        if mirrored and partner and partner not in seen:
            _, _, plo, phi = _DOFS[partner]
            pc = -centre if (name.endswith("abd")) else centre  # abduction mirrors sign
            pc = float(np.clip(pc, plo, phi))
            dofs.append(DofProgram(partner, pc, amp, freq, phase + (np.pi if anti else 0.0)))
            seen.add(partner)
    moves = archetype == "locomotion" or rng.random() < 0.25
    if moves:
        d = float(rng.uniform(0.3, 0.8)) * float(rng.choice([-1.0, 1.0]))
        tr = (d, 0.0, 0.0) if rng.random() < 0.35 else (0.0, 0.0, d)
    else:
        tr = (0.0, 0.0, 0.0)
    hop = float(rng.uniform(0.08, 0.25)) if archetype == "jump" else 0.0
    turn = float(rng.uniform(-1.5, 1.5)) if rng.random() < 0.15 else 0.0
    return MotionProgram(archetype, tuple(dofs), tr, hop, base_freq, turn, duration)


def _wide_fraction(prog: MotionProgram) -> float:
    """Fraction of frames of a canonical front-view sample where x range > 0.6 * y range (spec D.4 uses 0.8)."""
    pos, _ = _animate(prog, _REST, int(prog.duration), _Variation(1.2, 1.2, 0.0, np.zeros((NUM_JOINTS, 3))))
    return float((np.ptp(pos[..., 0], 1) > 0.6 * np.ptp(pos[..., 1], 1)).mean())


def _keep_narrow(prog: MotionProgram) -> MotionProgram:
    """Shrink a program's poses until a real actor would survive the denoiser's spread rule (spec D.4).

    Arms held out sideways for most of a clip make x range > 0.8 * y range in most frames, and the
    reference pipeline would then drop the actor whenever a second body is present.
    """
    for _ in range(8):
        if _wide_fraction(prog) <= 0.3:
            break
        dofs = tuple(
            DofProgram(d.dof, float(np.clip(0.8 * d.centre, *_DOFS[d.dof][2:])), 0.85 * d.amplitude, d.freq, d.phase)
            for d in prog.dofs
        )
        prog = MotionProgram(prog.archetype, dofs, prog.translation, prog.hop, prog.hop_freq, prog.turn, prog.duration)
    return prog


# ---- difficulty "hard": classes in families (pairs) that differ only in coordination ---------------
#: Phase of DOF B relative to DOF A for the classes of a family: in phase vs anti-phase, i.e. the limb
#: swings along one or the other diagonal (raise-and-open vs raise-and-close) with the same mean pose,
#: range of every angle and tempo. Measured choice: with 4 variants (adding pi/2 and 3pi/2, the same
#: loop traversed in opposite directions) neither a random nor a briefly pretrained small encoder got
#: past the family level, so the check could not show anything.
HARD_VARIANT_PHASES: tuple[float, ...] = (0.0, np.pi)
#: Coordinated DOF pairs a family is built on (same limb or mirrored limbs); every pair moves an
#: extremity visibly (a twist about a bone's own axis, e.g. neck_turn, would not).
_HARD_PAIRS: tuple[tuple[str, str], ...] = (
    ("r_sh_flex", "r_sh_abd"), ("l_sh_flex", "l_sh_abd"), ("r_sh_flex", "r_elbow"), ("l_sh_flex", "l_elbow"),
    ("l_sh_flex", "r_sh_flex"), ("l_hip_flex", "r_hip_flex"), ("r_hip_flex", "r_knee"), ("spine_bend", "spine_side"),
    ("l_sh_abd", "r_sh_abd"), ("spine_twist", "r_sh_flex"), ("l_elbow", "r_elbow"), ("l_hip_flex", "l_knee"),
)


def hard_family(class_id: int) -> tuple[int, int]:
    """(family, variant) of a 1-based class id in ``difficulty="hard"``: ids 1-2 are family 0, 3-4 family 1, ..."""
    return (class_id - 1) // len(HARD_VARIANT_PHASES), (class_id - 1) % len(HARD_VARIANT_PHASES)


def _hard_program(family: int, variant: int, dataset: str, motion_seed: int) -> MotionProgram:
    """The actor program of one hard class: the family fixes the DOF pair, centres, amplitudes and tempo,
    the variant only the relative phase of the pair (``HARD_VARIANT_PHASES``)."""
    pairs = np.random.default_rng([motion_seed, 11]).permutation(len(_HARD_PAIRS))
    a, b = _HARD_PAIRS[int(pairs[family % len(_HARD_PAIRS)])]
    rng = np.random.default_rng([motion_seed, 10, DATASETS.index(dataset) if dataset in DATASETS else 0, family])
    freq = float(rng.uniform(0.45, 0.9))  # Hz, shared by the family
    shape = []
    for name in (a, b):
        _, _, lo, hi = _DOFS[name]
        span = hi - lo
        shape.append((name, float(rng.uniform(lo + 0.35 * span, hi - 0.35 * span)), float(rng.uniform(0.3, 0.45) * span / 2)))
    duration = float(rng.uniform(90, 150))

    def make(v: int, shrink: float) -> MotionProgram:
        dofs = tuple(
            DofProgram(n, float(np.clip(c * shrink, *_DOFS[n][2:])), amp * shrink, freq, (0.0, HARD_VARIANT_PHASES[v])[i])
            for i, (n, c, amp) in enumerate(shape)
        )
        return MotionProgram("hard_pair", dofs, (0.0, 0.0, 0.0), 0.0, freq, 0.0, duration)

    # One shrink factor for the whole family (spread rule of spec D.4, as in _keep_narrow), so the
    # variants keep identical poses ranges and energies.
    shrink = 1.0
    for _ in range(8):
        if max(_wide_fraction(make(v, shrink)) for v in range(len(HARD_VARIANT_PHASES))) <= 0.3:
            break
        shrink *= 0.85
    return make(variant, shrink)


@functools.lru_cache(maxsize=512)
def class_program(class_id: int, dataset: str = "ntu60", motion_seed: int = 0, difficulty: str = "easy") -> ClassProgram:
    """The deterministic motion program of a 1-based class id (same for every sample and camera)."""
    rng = np.random.default_rng([motion_seed, 2, DATASETS.index(dataset) if dataset in DATASETS else 0, class_id])
    archetype = _ARCH_NAMES[int(rng.integers(len(_ARCH_NAMES)))]
    duration = float(rng.uniform(60, 160))
    actor = _keep_narrow(_motion_program(rng, archetype, duration))
    if difficulty == "hard":
        actor = _hard_program(*hard_family(class_id), dataset, motion_seed)
    if class_id in interaction_classes(dataset):
        partner_arch = _ARCH_NAMES[int(rng.integers(len(_ARCH_NAMES)))]
        partner = _keep_narrow(_motion_program(rng, partner_arch, duration))
        d0 = float(rng.uniform(0.8, 1.8))
        dd = float(rng.uniform(-0.6, 0.6)) if rng.random() < 0.5 else 0.0
        dd = float(np.clip(dd, 0.6 - d0, 2.2 - d0))
        return ClassProgram(class_id, actor, partner, (d0, dd))
    return ClassProgram(class_id, actor, None, (0.0, 0.0))


def _envelope(T: int) -> np.ndarray:
    """Smooth start/stop: 0 -> 1 over the first ~15 % of frames, 1 -> 0 over the last ~15 %."""
    u = (np.arange(T) + 0.5) / T
    r = 0.15
    up = np.clip(u / r, 0, 1)
    down = np.clip((1 - u) / r, 0, 1)
    s = lambda x: x * x * (3 - 2 * x)  # noqa: E731  (smoothstep)
    return s(up) * s(down)


@dataclass
class _Variation:
    speed: float
    amp: float
    phase: float
    pose_noise: np.ndarray  # (25, 3) small static angle offsets
    extra: tuple[DofProgram, ...] = ()  # per-sample distractor motions (difficulty "hard")


def _variation(rng: np.random.Generator, difficulty: str = "easy") -> _Variation:
    """Per-sample nuisance. "hard": wider speed / amplitude ranges, a uniformly random start phase (so the
    clip may start anywhere in the cycle), more pose noise and 2 distractor DOFs with their own tempo."""
    if difficulty in ("medium", "hard"):
        speed, amp, phase = float(rng.uniform(0.7, 1.4)), float(rng.uniform(0.75, 1.25)), float(rng.uniform(0, 2 * np.pi))
        pose_noise = rng.normal(0.0, 0.08, (NUM_JOINTS, 3))
        extra = []
        for name in rng.choice(list(_DOFS), size=2, replace=False):
            _, _, lo, hi = _DOFS[str(name)]
            span = hi - lo
            extra.append(DofProgram(str(name), float(rng.uniform(-0.1, 0.1) * span), float(rng.uniform(0.08, 0.2) * span),
                                    float(rng.uniform(0.3, 1.2)), float(rng.uniform(0, 2 * np.pi))))
        return _Variation(speed, amp, phase, pose_noise, tuple(extra))
    return _Variation(
        speed=float(rng.uniform(0.8, 1.25)),
        amp=float(rng.uniform(0.8, 1.2)),
        phase=float(rng.uniform(-0.6, 0.6)),
        pose_noise=rng.normal(0.0, 0.05, (NUM_JOINTS, 3)),
    )


def _animate(prog: MotionProgram, offsets: np.ndarray, T: int, var: _Variation) -> tuple[np.ndarray, np.ndarray]:
    """One person in the body frame: positions (T, 25, 3) with feet on the floor (y = 0), rotations (T, 25, 3, 3)."""
    t = np.arange(T) / FPS
    env = _envelope(T)
    angles = np.broadcast_to(var.pose_noise, (T, NUM_JOINTS, 3)).copy()
    angles[:, 4, 2] += -0.12  # arms slightly away from the body at rest
    angles[:, 8, 2] += 0.12
    for d in prog.dofs:
        j, ax, lo, hi = _DOFS[d.dof]
        wave = d.centre + var.amp * d.amplitude * np.sin(2 * np.pi * d.freq * var.speed * t + d.phase + var.phase)
        angles[:, j, ax] += env * np.clip(wave, lo, hi)
    for d in var.extra:  # distractors: their own tempo, not scaled by the sample's speed / amplitude
        j, ax, lo, hi = _DOFS[d.dof]
        angles[:, j, ax] += env * (d.centre + d.amplitude * np.sin(2 * np.pi * d.freq * t + d.phase))
    local = _euler(angles)
    pos, glob = forward_kinematics(offsets, local, np.zeros((T, 3)))
    # Feet on the floor: lift the body so the lowest ankle / foot joint touches y = 0 in every frame.
    pos[..., 1] -= pos[:, [14, 15, 18, 19], 1].min(axis=1, keepdims=True)
    if prog.hop:
        hop = prog.hop * var.amp * np.abs(np.sin(np.pi * prog.hop_freq * var.speed * t + var.phase)) * env
        pos[..., 1] += hop[:, None]
    ramp = np.cumsum(env) / max(env.sum(), 1e-9)
    pos += (ramp[:, None] * np.asarray(prog.translation) * var.amp)[:, None, :]
    if prog.turn:
        yaw = _rot_axis(1, prog.turn * ramp)  # (T, 3, 3) about the vertical through the root
        root = pos[:, :1, :].copy()
        pos = np.einsum("tij,tvj->tvi", yaw, pos - root) + root
        glob = yaw[:, None] @ glob
    return pos, glob


# ======================================================================================================
# Scenes and cameras
# ======================================================================================================


@dataclass(frozen=True)
class Camera:
    """A Kinect v2 pose in the world frame (y up, floor y = 0); ``rotation`` maps world to camera axes."""

    position: np.ndarray  # (3,)
    rotation: np.ndarray  # (3, 3) rows = camera x (sensor's left), y (up), z (viewing direction)

    def to_camera(self, pts: np.ndarray) -> np.ndarray:
        """World points (..., 3) -> camera-space points (..., 3)."""
        return (pts - self.position) @ self.rotation.T


def make_camera(yaw_deg: float, distance: float, height: float, target_height: float) -> Camera:
    """Camera on a circle of ``distance`` around the origin at ``yaw_deg``, looking at (0, target_height, 0)."""
    a = np.deg2rad(yaw_deg)
    pos = np.array([distance * np.sin(a), height, distance * np.cos(a)])
    z = np.array([0.0, target_height, 0.0]) - pos
    z /= np.linalg.norm(z)
    x = np.cross([0.0, 1.0, 0.0], z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return Camera(pos, np.stack([x, y, z]))


def setup_cameras(setup: int, seed: int = 0, pku: bool = False) -> dict[int, Camera]:
    """Cameras 1..3 of a setup: yaw 0 / -45 / +45 deg, 2.9-3.8 m (PKU 2.2-3.0 m), heights seeded per setup."""
    rng = np.random.default_rng([seed, 3, setup])
    dist = float(rng.uniform(2.2, 3.0) if pku else rng.uniform(2.9, 3.8))
    height = float(rng.uniform(0.7, 1.2))
    target = float(rng.uniform(0.6, 0.95))
    return {c: make_camera(CAMERA_YAW_DEG[c], dist * float(rng.uniform(0.95, 1.05)), height, target) for c in (1, 2, 3)}


def project_depth(p: np.ndarray) -> np.ndarray:
    """Camera-space points (..., 3) -> depth-image pixels (..., 2) in the 512x424 frame."""
    z = np.maximum(p[..., 2], 1e-3)
    return np.stack([DEPTH_CX + DEPTH_F * p[..., 0] / z, DEPTH_CY - DEPTH_F * p[..., 1] / z], -1)


def project_color(p: np.ndarray) -> np.ndarray:
    """Camera-space points (..., 3) -> colour-image pixels (..., 2) in the 1920x1080 frame."""
    z = np.maximum(p[..., 2], 1e-3)
    return np.stack([COLOR_CX + COLOR_F * p[..., 0] / z, COLOR_CY - COLOR_F * p[..., 1] / z], -1)


@dataclass
class Performance:
    """One performance in world space, shared by all cameras.

    joints: (T, M, 25, 3) world positions; rotations: (T, M, 25, 3, 3) global segment rotations
    (world axes); lean: (T, M, 2) Kinect leanX / leanY.
    """

    class_id: int
    joints: np.ndarray
    rotations: np.ndarray
    lean: np.ndarray


def _yaw_about_y(theta: float) -> np.ndarray:
    """Body-to-world rotation for a person facing direction (sin theta, 0, cos theta)."""
    # body x (right) -> (-cos, 0, sin); body y -> y; body z (back) -> -(sin, 0, cos)
    return np.array([[-np.cos(theta), 0, -np.sin(theta)], [0, 1, 0], [np.sin(theta), 0, -np.cos(theta)]])


def _place(pos: np.ndarray, glob: np.ndarray, facing: float, origin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r = _yaw_about_y(facing)
    return pos @ r.T + origin, r @ glob


def _lean(pos_body: np.ndarray) -> np.ndarray:
    """Kinect-like lean (T, 2) in [-1, 1] from the spine direction in the body frame."""
    v = pos_body[:, 20] - pos_body[:, 0]
    v = v / np.linalg.norm(v, axis=-1, keepdims=True)
    return np.clip(np.stack([v[:, 0] * 2, -v[:, 2] * 2], -1), -1, 1)


def make_performance(
    program: ClassProgram,
    subject: int,
    facing_deg: float,
    rng: np.random.Generator,
    *,
    seed: int = 0,
    min_frames: int = 40,
    max_frames: int = 300,
    frames: Optional[int] = None,
    partner_subject: Optional[int] = None,
    origin: Optional[np.ndarray] = None,
    facing_noise: float = 0.1,
    difficulty: str = "easy",
) -> Performance:
    """Animate a class program for a subject in world space; ``rng`` draws the per-sample variation.

    The actor (or the pair's midpoint) stands at ``origin`` (default: within ~15 cm of the world origin,
    drawn from ``rng``) facing yaw ``facing_deg`` (+ N(0, facing_noise) rad). Returns world joints
    (T, M, 25, 3), M = 1 or 2.
    """
    var = _variation(rng, difficulty)
    mean_frames = program.actor.duration * rng.uniform(0.75, 1.3) / var.speed
    T = frames or int(np.clip(round(mean_frames), min_frames, max_frames))
    facing = np.deg2rad(facing_deg) + float(rng.normal(0, facing_noise))
    shift = np.array([rng.normal(0, 0.15), 0.0, rng.normal(0, 0.15)])
    base = shift if origin is None else np.asarray(origin, dtype=float)
    pos1, glob1 = _animate(program.actor, subject_offsets(subject, seed), T, var)
    if program.partner is None:
        w1, g1 = _place(pos1, glob1, facing, base)
        return Performance(program.class_id, w1[:, None], g1[:, None], _lean(pos1)[:, None])
    # Two persons face each other along the axis perpendicular to the facing direction.
    other = partner_subject if partner_subject is not None else subject + 1000
    pos2, glob2 = _animate(program.partner, subject_offsets(other, seed), T, _variation(rng, difficulty))
    d0, dd = program.distance
    dist = d0 + dd * (np.cumsum(_envelope(T)) / max(_envelope(T).sum(), 1e-9))
    # Actor 1 faces +axis, actor 2 faces -axis; the pair stands side by side for the 0-degree camera
    # (C001 / PKU M), and the replication decides who is on which side.
    axis_yaw = np.deg2rad(90.0 if facing_deg <= 0 else -90.0) + float(rng.normal(0, facing_noise))
    axis = np.array([np.sin(axis_yaw), 0.0, np.cos(axis_yaw)])
    w1, g1 = _place(pos1, glob1, axis_yaw, base)
    w2, g2 = _place(pos2, glob2, axis_yaw + np.pi, base)
    w1 -= (dist / 2)[:, None, None] * axis
    w2 += (dist / 2)[:, None, None] * axis
    joints = np.stack([w1, w2], 1)
    rots = np.stack([g1, g2], 1)
    return Performance(program.class_id, joints, rots, np.stack([_lean(pos1), _lean(pos2)], 1))


def generate_sequence(
    class_id: int,
    *,
    dataset: str = "ntu60",
    subject: int = 1,
    setup: int = 1,
    camera: int = 1,
    replication: int = 1,
    seed: int = 0,
    motion_seed: int = 0,
    frames: Optional[int] = None,
    min_frames: int = 40,
    max_frames: int = 300,
    difficulty: str = "easy",
) -> np.ndarray:
    """Camera-space joints of one clean sample, (T, M, 25, 3) float32 metres, M = 1 or 2 actors.

    Fast and in memory (no faults, no sensor noise, no text): for benchmarks and tests. The same
    arguments give the same motion as the NTU file ``synthesize`` writes for that sample name (before
    noise); for PKU datasets it gives a stand-alone clip (PKU files embed clips in long videos).
    """
    if dataset not in DATASETS or camera not in CAMERA_YAW_DEG or replication not in REPLICATION_FACING_CAMERA:
        raise SkelError(f"bad sample: dataset {dataset!r}, camera {camera}, replication {replication}")
    prog = class_program(class_id, dataset, motion_seed, difficulty)
    rng = _performance_rng(seed, dataset, class_id, subject, setup, replication)
    perf = make_performance(
        prog, subject, CAMERA_YAW_DEG[REPLICATION_FACING_CAMERA[replication]], rng,
        seed=seed, min_frames=min_frames, max_frames=max_frames, frames=frames,
        **_hard_placement(difficulty),
    )
    cam = setup_cameras(setup, seed, pku=dataset.startswith("pku"))[camera]
    return cam.to_camera(perf.joints).astype(np.float32)


def _hard_placement(difficulty: str) -> dict:
    """make_performance keyword arguments of a difficulty: "hard" turns the actor +-20 deg (1 sd) off the
    nominal facing direction instead of +-6 deg."""
    if difficulty in ("medium", "hard"):
        return {"difficulty": difficulty, "facing_noise": 0.35}
    return {}


def _performance_rng(seed: int, dataset: str, class_id: int, subject: int, setup: int, rep: int) -> np.random.Generator:
    return np.random.default_rng([seed, 4, DATASETS.index(dataset), class_id, subject, setup, rep])


# ======================================================================================================
# Bodies and the .skeleton writer
# ======================================================================================================


@dataclass
class BodyTrack:
    """One Kinect body in one camera file.

    start: first frame index; joints: (L, 25, 3) camera-space metres for frames start..start+L-1;
    quats: (L, 25, 4) orientation (W, X, Y, Z) or None (written as zeros); tracking: (L, 25) joint
    trackingState or None (all 2); lean: (L, 2) or None. Pixel fields are derived from ``joints``.
    """

    body_id: int
    start: int
    joints: np.ndarray
    quats: Optional[np.ndarray] = None
    tracking: Optional[np.ndarray] = None
    lean: Optional[np.ndarray] = None
    #: handLeftConfidence, handLeftState, handRightConfidence, handRightState
    hands: tuple[int, int, int, int] = (1, 1, 1, 1)
    tracking_state: int = 2
    present: Optional[np.ndarray] = None  # (L,) bool; False drops the body from that frame

    @property
    def length(self) -> int:
        return int(self.joints.shape[0])


_JOINT_FMT = "%.7g %.7g %.7g %.7g %.7g %.7g %.7g %.7g %.7g %.7g %.7g %d\n"


def _clipped_edges(depth_px: np.ndarray) -> np.ndarray:
    """Kinect FrameEdges bitmask per frame from depth pixels (L, 25, 2): right 1, left 2, top 4, bottom 8."""
    u, v = depth_px[..., 0], depth_px[..., 1]
    return (
        (u.max(-1) >= DEPTH_W) * 1 + (u.min(-1) < 0) * 2 + (v.min(-1) < 0) * 4 + (v.max(-1) >= DEPTH_H) * 8
    ).astype(np.int64)


def format_ntu_skeleton(bodies: Sequence[BodyTrack], n_frames: int) -> str:
    """The text of a ``.skeleton`` file (spec D.1) for ``n_frames`` frames holding ``bodies``."""
    per_body = []
    for b in bodies:
        L = b.length
        depth = project_depth(b.joints)
        color = project_color(b.joints)
        quats = b.quats if b.quats is not None else np.zeros((L, NUM_JOINTS, 4))
        track = b.tracking if b.tracking is not None else np.full((L, NUM_JOINTS), 2)
        lean = b.lean if b.lean is not None else np.zeros((L, 2))
        rows = np.concatenate([b.joints, depth, color, quats, track[..., None]], -1)  # (L, 25, 12)
        info = np.zeros((L, 9))
        info[:, 0] = _clipped_edges(depth)
        info[:, 1:5] = b.hands
        info[:, 5] = 0  # isRestricted
        info[:, 6:8] = lean
        info[:, 8] = b.tracking_state
        vals = np.concatenate([info, np.full((L, 1), 25.0), rows.reshape(L, -1)], 1)  # (L, 310)
        present = b.present if b.present is not None else np.ones(L, bool)
        per_body.append((b, vals, present))
    body_head = "{id} %d %d %d %d %d %d %.7g %.7g %d\n%d\n" + _JOINT_FMT * NUM_JOINTS
    parts: list[str] = [f"{n_frames}\n"]
    for f in range(n_frames):
        here = [
            (b, vals[f - b.start])
            for b, vals, pres in per_body
            if b.start <= f < b.start + b.length and pres[f - b.start]
        ]
        if not here:
            parts.append("0\n")
            continue
        tmpl = "%d\n" + "".join(body_head.replace("{id}", str(b.body_id)) for b, _ in here)
        values = np.concatenate([[len(here)]] + [v for _, v in here])
        parts.append(tmpl % tuple(values.tolist()))
    return "".join(parts)


def write_ntu_skeleton(path: Path, bodies: Sequence[BodyTrack], n_frames: int) -> int:
    """Write one ``.skeleton`` file (LF line endings); returns its size in bytes."""
    data = format_ntu_skeleton(bodies, n_frames).encode("ascii")
    Path(path).write_bytes(data)
    return len(data)


def _orientations(rotations_cam: np.ndarray) -> np.ndarray:
    """Joint quaternions (T, 25, 4) from global segment rotations in camera axes (T, 25, 3, 3); leaves 0."""
    q = _quat_from_matrix(rotations_cam @ _REST_FRAMES)
    leaves = [j for j in range(NUM_JOINTS) if _PRIMARY_CHILD[j] < 0]
    q[:, leaves] = 0.0
    return q


def _new_body_id(rng: np.random.Generator) -> int:
    return _BODY_ID_BASE + 9000 + int(rng.integers(0, 9000))


def _actor_tracks(perf: Performance, cam: Camera, rng: np.random.Generator, s: SynthSettings) -> list[BodyTrack]:
    T, M = perf.joints.shape[:2]
    tracks = []
    for m in range(M):
        joints = cam.to_camera(perf.joints[:, m]) + rng.normal(0, s.sensor_noise, (T, NUM_JOINTS, 3))
        rot_cam = cam.rotation[None, None] @ perf.rotations[:, m]
        tracking = np.where(rng.random((T, NUM_JOINTS)) < s.inferred_rate, 1, 2)
        hands = (1, 1, 1, 1) if rng.random() < 0.7 else (0, 0, 1, 1)
        tracks.append(BodyTrack(_new_body_id(rng), 0, joints, _orientations(rot_cam), tracking, perf.lean[:, m], hands))
    return tracks


def _spurious_body(perf: Performance, cam: Camera, rng: np.random.Generator, n_frames: int) -> BodyTrack:
    """A body seen for 1-11 frames (spec D.4 length rule drops bodies present in <= 11 frames)."""
    L = int(rng.integers(1, 12))
    L = min(L, n_frames)
    start = int(rng.integers(0, n_frames - L + 1))
    src = perf.joints[start : start + L, 0]
    shift = np.array([rng.uniform(-1.2, 1.2), 0.0, rng.uniform(-1.0, 1.0)])
    joints = cam.to_camera(src + shift) + rng.normal(0, 0.03, (L, NUM_JOINTS, 3))
    tracking = np.where(rng.random((L, NUM_JOINTS)) < 0.5, 1, 2)
    return BodyTrack(_new_body_id(rng), start, joints, None, tracking, None, (0, 0, 0, 0))


def _noise_body(cam: Camera, rng: np.random.Generator, n_frames: int) -> BodyTrack:
    """A long-lived 'object' body whose x range is > 0.8 x its y range in ~90 % of its frames."""
    L = int(rng.integers(max(12, n_frames // 2), n_frames + 1)) if n_frames >= 12 else n_frames
    start = int(rng.integers(0, n_frames - L + 1))
    centre = np.array([rng.uniform(-1.5, 1.5), rng.uniform(0.3, 0.9), rng.uniform(-1.2, 0.8)])
    shape = rng.uniform(-0.5, 0.5, (NUM_JOINTS, 3)) * np.array([1.2, 0.35, 0.4])
    world = centre + shape + rng.normal(0, 0.02, (L, NUM_JOINTS, 3))
    upright = rng.random(L) < 0.1  # a few frames look body-like (tall, narrow)
    tall = shape[:, [1, 0, 2]] * np.array([0.3, 3.0, 1.0])
    world[upright] = centre + tall + rng.normal(0, 0.02, (int(upright.sum()), NUM_JOINTS, 3))
    tracking = np.where(rng.random((L, NUM_JOINTS)) < 0.6, 1, 2)
    return BodyTrack(_new_body_id(rng), start, cam.to_camera(world), None, tracking, None, (0, 0, 0, 0))


def _apply_faults(
    kinds: list[str], tracks: list[BodyTrack], perf: Performance, cam: Camera, rng: np.random.Generator, T: int
) -> list[BodyTrack]:
    """Apply the assigned faults to a camera file's bodies (``no_body`` is handled by the caller)."""
    out = list(tracks)
    if "jitter" in kinds:
        for b in tracks:
            frames = rng.random(T) < 0.15
            joints = rng.random((T, NUM_JOINTS)) < 0.15
            hit = frames[:, None] & joints
            b.joints = b.joints + hit[..., None] * rng.normal(0, 0.06, (T, NUM_JOINTS, 3))
            b.tracking = np.where(hit, 1, b.tracking)
    if "id_switch" in kinds and T >= 30:
        b = tracks[0]
        k = int(rng.integers(13, T - 12))  # both parts longer than the 11-frame length threshold
        second = BodyTrack(
            _new_body_id(rng) + 1, k, b.joints[k:], b.quats[k:], b.tracking[k:], b.lean[k:], b.hands, b.tracking_state
        )
        b.joints, b.quats, b.tracking, b.lean = b.joints[:k], b.quats[:k], b.tracking[:k], b.lean[:k]
        out.append(second)
    if "spurious_body" in kinds:
        out.append(_spurious_body(perf, cam, rng, T))
    if "noise_body" in kinds:
        out.append(_noise_body(cam, rng, T))
    if "zero_frames" in kinds:
        n0 = int(rng.integers(1, max(2, min(8, T // 10))))
        where = rng.random()
        if where < 0.4:
            blank = np.arange(n0)
        elif where < 0.7:
            blank = np.arange(T - n0, T)
        else:
            blank = rng.choice(np.arange(1, T - 1), size=n0, replace=False)
        for b in out:
            idx = blank - b.start
            idx = idx[(idx >= 0) & (idx < b.length)]
            pres = b.present if b.present is not None else np.ones(b.length, bool)
            pres = pres.copy()
            pres[idx] = False
            b.present = pres
    return out


# ======================================================================================================
# Sample plans
# ======================================================================================================


def _interleave(a: Sequence[int], b: Sequence[int]) -> list[int]:
    out: list[int] = []
    for x, y in zip(a, b):
        out += [x, y]
    n = len(out) // 2
    return out + list(a[n:]) + list(b[n:])


def default_class_ids(dataset: str, n: int, difficulty: str = "easy") -> list[int]:
    """n action ids spread over the dataset's classes, with >= 1 two-person class where the dataset has them.

    difficulty "hard": the first n single-person ids (1, 2, 3, ...), so whole families of classes
    (``hard_family``) are present; n beyond the single-person ids falls back to the spread.
    """
    total = NUM_CLASSES[dataset]
    if n > total:
        raise SkelError(f"{dataset} has {total} classes; asked for {n}")
    if difficulty == "hard":
        single_ids = [c for c in range(1, total + 1) if c not in interaction_classes(dataset)]
        if n <= len(single_ids):
            return single_ids[:n]
    inter = sorted(interaction_classes(dataset))
    single = [c for c in range(1, total + 1) if c not in inter]
    n_inter = 0 if not inter else min(len(inter), max(1, round(n * len(inter) / total)))
    n_single = n - n_inter
    if n_single > len(single):
        n_single, n_inter = len(single), n - len(single)
    pick = lambda seq, k: [seq[int(i)] for i in np.linspace(0, len(seq) - 1, k).round()] if k else []  # noqa: E731
    return sorted(pick(single, n_single) + pick(inter, n_inter))


def subject_ids(dataset: str, n: int) -> list[int]:
    """n performer ids alternating between cross-subject train and test ids (spec D.6)."""
    total = NUM_SUBJECTS[dataset]
    if n > total:
        raise SkelError(f"{dataset} has {total} performers; asked for {n}")
    if dataset in ("ntu60", "ntu120"):
        train = _NTU60_XSUB_TRAIN if dataset == "ntu60" else _NTU120_XSUB_TRAIN
        test = [i for i in range(1, total + 1) if i not in train]
        return _interleave(list(train), test)[:n]
    return list(range(1, n + 1))


def setup_ids(dataset: str, n: int) -> list[int]:
    """n setup ids alternating odd / even (so NTU120 cross-setup is non-empty); NTU120 also reaches S018+."""
    total = NUM_SETUPS.get(dataset, 99)
    if n > total:
        raise SkelError(f"{dataset} has {total} setups; asked for {n}")
    if dataset == "ntu120":
        low, high = list(range(1, 18)), list(range(18, 33))  # second download archive: S018-S032
        return sorted(_interleave(low, high)[:n])
    return list(range(1, n + 1))


def ntu_name(setup: int, camera: int, subject: int, replication: int, action: int) -> str:
    """Sample name SsssCcccPpppRrrrAaaa (spec D.2)."""
    return f"S{setup:03d}C{camera:03d}P{subject:03d}R{replication:03d}A{action:03d}"


def _assign_faults(names: list[str], rates: FaultRates, rng: np.random.Generator) -> dict[str, list[str]]:
    """Exactly round(rate * files) files per fault kind; no-body files get no other fault."""
    n = len(names)
    by_file: dict[str, list[str]] = {nm: [] for nm in names}
    n_empty = int(round(rates.no_body * n))
    order = rng.permutation(n)
    empty = set(order[:n_empty].tolist())
    for i in empty:
        by_file[names[i]].append("no_body")
    rest = np.array([i for i in range(n) if i not in empty], dtype=np.int64)
    for kind in FAULT_KINDS[:-1]:
        k = min(int(round(getattr(rates, kind) * n)), len(rest))
        for i in rng.permutation(rest)[:k].tolist():
            by_file[names[i]].append(kind)
    return by_file


# ======================================================================================================
# Public entry point
# ======================================================================================================


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise SkelError(f"--out {out} exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not force:
        raise SkelError(f"output directory {out} is not empty (use --force to write into it)")
    out.mkdir(parents=True, exist_ok=True)


def synthesize(
    dataset: str,
    out: Path,
    settings: Optional[SynthSettings] = None,
    *,
    force: bool = False,
    progress: Optional[Callable[[int, int], None]] = None,
    workers: Optional[int] = None,
) -> SynthReport:
    """Write a synthetic raw dataset to ``out`` and return what was written.

    NTU: ``out/SsssCcccPpppRrrrAaaa.skeleton``. PKU-MMD: ``out/skeleton/NNNN-V.txt``,
    ``out/label/NNNN-V.txt`` and the split files (spec F). Byte-identical for the same settings.
    ``progress(done, total)`` is called after every file. NTU files are written by ``workers``
    processes (None: :func:`synth_workers` decides), with the same bytes for any count.
    """
    if dataset not in DATASETS:
        raise SkelError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if workers is not None and workers < 1:
        raise SkelError(f"--workers must be >= 1, got {workers}")
    s = settings or SynthSettings()
    out = Path(out)
    class_ids = sorted(set(s.class_ids)) if s.class_ids else default_class_ids(dataset, s.classes, s.difficulty)
    bad = [c for c in class_ids if not 1 <= c <= NUM_CLASSES[dataset]]
    if bad:
        raise SkelError(f"class ids {bad} are outside 1..{NUM_CLASSES[dataset]} for {dataset}")
    _check_out(out, force)
    t0 = time.perf_counter()
    if dataset.startswith("pku"):
        rep = _synthesize_pku(dataset, out, s, class_ids, progress)
    else:
        rep = _synthesize_ntu(dataset, out, s, class_ids, progress, workers)
    rep.seconds = round(time.perf_counter() - t0, 3)
    return rep


def _ntu_performance_files(job: tuple) -> list[tuple[int, int]]:
    """Write the camera files of one NTU performance (setup, subject, replication of one action);
    returns (bytes, frames) per file. Each performance and each file draws from a generator of its own
    ids, so the bytes do not depend on which process writes which performance."""
    dataset, out, s, program, cams, (a, st, sub, r), files = job
    rng = _performance_rng(s.seed, dataset, a, sub, st, r)
    perf = make_performance(
        program, sub, CAMERA_YAW_DEG[REPLICATION_FACING_CAMERA[r]], rng,
        seed=s.seed, min_frames=s.min_frames, max_frames=s.max_frames, **_hard_placement(s.difficulty),
    )
    T = perf.joints.shape[0]
    written = []
    for c, name, kinds in files:
        file_rng = np.random.default_rng([s.seed, 6, DATASETS.index(dataset), a, st, sub, r, c])
        if "no_body" in kinds:
            bodies: list[BodyTrack] = []
        else:
            tracks = _actor_tracks(perf, cams[c], file_rng, s)
            bodies = _apply_faults(kinds, tracks, perf, cams[c], file_rng, T)
        written.append((write_ntu_skeleton(out / f"{name}.skeleton", bodies, T), T))
    return written


#: Below this many files one process writes them all (a worker's start costs about half a second).
PARALLEL_MIN_FILES = 96


def synth_workers(n_files: int, workers: int | None) -> int:
    """Processes for ``n_files``: ``workers`` if given, else up to 2 on a machine with 2+ cores when
    there are at least PARALLEL_MIN_FILES files (formatting the text files is most of the time)."""
    import os

    if workers is not None:
        return workers
    return min(2, os.cpu_count() or 1) if n_files >= PARALLEL_MIN_FILES else 1


def _synthesize_ntu(dataset: str, out: Path, s: SynthSettings, class_ids: list[int], progress,
                    workers: int | None = None) -> SynthReport:
    subjects = subject_ids(dataset, s.subjects)
    setups = setup_ids(dataset, s.setups)
    # Diagonal order: the first few combos already vary subject (xsub train / test), setup and replication.
    grid = [(i, j, k) for i in range(len(setups)) for j in range(len(subjects)) for k in range(s.replications)]
    grid.sort(key=lambda g: (sum(g), -g[1], -g[0], g))
    combos = [(setups[i], subjects[j], k + 1) for i, j, k in grid]
    if s.samples_per_class:
        combos = [combos[i % len(combos)] for i in range(min(s.samples_per_class, len(combos)))]
    cameras = list(range(1, s.cameras + 1))
    items = [(a, st, sub, r, c) for a in class_ids for st, sub, r in combos for c in cameras]
    names = [ntu_name(st, c, sub, r, a) for a, st, sub, r, c in items]
    fault_rng = np.random.default_rng([s.seed, 5])
    by_file = _assign_faults(names, s.faults, fault_rng)
    programs = {a: class_program(a, dataset, s.motion_seed, s.difficulty) for a in class_ids}
    cams = {st: setup_cameras(st, s.seed) for st in setups}
    performances: dict[tuple, list] = {}  # (a, st, sub, r) -> its camera files, in the file order
    for (a, st, sub, r, c), name in zip(items, names):
        performances.setdefault((a, st, sub, r), []).append((c, name, by_file[name]))
    jobs = [(dataset, out, s, programs[key[0]], cams[key[1]], key, files) for key, files in performances.items()]
    n_proc = synth_workers(len(items), workers)
    total_bytes = total_frames = done = 0
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    from contextlib import nullcontext

    with ProcessPoolExecutor(n_proc, mp_context=mp.get_context("spawn")) if n_proc > 1 else nullcontext() as pool:
        results = (pool.map(_ntu_performance_files, jobs, chunksize=max(1, len(jobs) // (8 * n_proc))) if pool
                   else map(_ntu_performance_files, jobs))
        for written in results:  # in job order, so progress counts files as they are done
            for size, frames in written:
                total_bytes, total_frames, done = total_bytes + size, total_frames + frames, done + 1
                if progress:
                    progress(done, len(items))
    counts = {k: sum(k in v for v in by_file.values()) for k in FAULT_KINDS}
    return SynthReport(
        dataset=dataset, out=str(out), files=[f"{n}.skeleton" for n in names], n_files=len(names),
        bytes=total_bytes, class_ids=class_ids, frames=total_frames, faults=counts,
        faults_by_file={k: v for k, v in by_file.items() if v},
        no_body_files=[f"{n}.skeleton" for n in names if "no_body" in by_file[n]], seconds=0.0,
    )


# ======================================================================================================
# PKU-MMD
# ======================================================================================================

PKU_SPLIT_FILES = {
    "pku-mmd-v1": ("cross-subject.txt", "cross-view.txt"),
    "pku-mmd-v2": ("cross_subject_v2.txt", "cross_view_v2.txt"),
}
PKU_XVIEW_TRAIN = ("M", "R")


def _split_text(train: list[str], test: list[str]) -> str:
    """Official split-file layout: header, train ids joined by ', ' (trailing ', '), header, test ids."""
    return "Training videos: \n" + "".join(f"{v}, " for v in train) + "\nValidataion videos: \n" + "".join(
        f"{v}, " for v in test
    ) + "\n"


def _idle(offsets: np.ndarray, T: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Standing still with slight sway: body-frame positions (T, 25, 3), feet on the floor."""
    sway = DofProgram("spine_side", 0.0, 0.03, 0.3, float(rng.uniform(0, 6)))
    still = MotionProgram("idle", (sway,), (0, 0, 0), 0, 1, 0, T)
    return _animate(still, offsets, T, _Variation(1.0, 1.0, 0.0, rng.normal(0, 0.03, (NUM_JOINTS, 3))))


def _synthesize_pku(dataset: str, out: Path, s: SynthSettings, class_ids: list[int], progress) -> SynthReport:
    inter = interaction_classes(dataset)
    kinds = [[c for c in class_ids if c not in inter], [c for c in class_ids if c in inter]]
    subjects = subject_ids(dataset, s.subjects)
    rounds = s.samples_per_class or len(subjects) * s.replications
    views = [("M", "L", "R")[i] for i in range(s.cameras)]
    cams_by_view = {"M": 1, "L": 2, "R": 3}  # same yaws as NTU cameras 1 / 2 / 3
    programs = {a: class_program(a, dataset, s.motion_seed, s.difficulty) for a in class_ids}
    train_subjects = set(subjects[0::2])  # alternate subjects train / test so both lists are non-empty
    fault_rng = np.random.default_rng([s.seed, 5])
    sequences = []  # (sequence number, subject, class list)
    seq_no = 0
    for kind in kinds:
        if not kind:
            continue
        for k in range(rounds):
            seq_no += 1
            order = np.random.default_rng([s.seed, 7, seq_no]).permutation(kind).tolist()
            sequences.append((seq_no, subjects[k % len(subjects)], order))
    views = [v for v in PKU_VIEWS if v in views]  # file order L, M, R as in the official lists
    names = [f"{n:04d}-{v}" for n, _, _ in sequences for v in views]
    by_file = _assign_faults(names, FaultRates.none().model_copy(update={"jitter": s.faults.jitter}), fault_rng)
    (out / "skeleton").mkdir(exist_ok=True)
    (out / "label").mkdir(exist_ok=True)
    total_bytes = total_frames = clips = 0
    done = 0
    for seq, subject, order in sequences:
        rng = np.random.default_rng([s.seed, 8, DATASETS.index(dataset), seq])
        cams = setup_cameras(seq, s.seed, pku=True)
        two = programs[order[0]].partner is not None
        facing = float(rng.normal(0, 10))
        off1, off2 = subject_offsets(subject, s.seed), subject_offsets(subject + 1000, s.seed)
        chunks: list[np.ndarray] = []  # world (t, 2, 25, 3), actor 2 NaN when absent
        labels: list[tuple[int, int, int, int]] = []
        t = 0
        base = np.array([rng.normal(0, 0.2), 0.0, rng.normal(0, 0.2)])
        for a in order + [None]:
            n_idle = int(rng.integers(s.idle_frames[0], s.idle_frames[1] + 1))
            if two:
                # The pair waits at the distance the next action starts from (1.5 m after the last one).
                half = (programs[a].distance[0] if a is not None else 1.5) / 2
                axis_yaw = np.deg2rad(90.0 if facing <= 0 else -90.0)
                axis = np.array([np.sin(axis_yaw), 0.0, np.cos(axis_yaw)])
                idle1 = _place(*_idle(off1, n_idle, rng), axis_yaw, base - half * axis)[0]
                idle2 = _place(*_idle(off2, n_idle, rng), axis_yaw + np.pi, base + half * axis)[0]
                chunks.append(np.stack([idle1, idle2], 1))
            else:
                idle1 = _place(*_idle(off1, n_idle, rng), np.deg2rad(facing), base)[0]
                chunks.append(np.stack([idle1, np.full_like(idle1, np.nan)], 1))
            t += n_idle
            if a is None:
                break
            perf = make_performance(
                programs[a], subject, facing, rng, seed=s.seed, min_frames=s.min_frames, max_frames=s.max_frames,
                origin=base, facing_noise=0.0, difficulty=s.difficulty,
            )
            j = perf.joints
            if j.shape[1] == 1:
                j = np.concatenate([j, np.full_like(j, np.nan)], 1)
            chunks.append(j)
            labels.append((a, t, t + j.shape[0], int(rng.choice([1, 2], p=[0.15, 0.85]))))
            t += j.shape[0]
            clips += 1
        world = np.concatenate(chunks)  # (T, 2, 25, 3)
        T = world.shape[0]
        for v in views:
            name = f"{seq:04d}-{v}"
            vrng = np.random.default_rng([s.seed, 9, DATASETS.index(dataset), seq, cams_by_view[v]])
            cam = cams[cams_by_view[v]]
            pts = cam.to_camera(world) + vrng.normal(0, s.sensor_noise, world.shape)
            if "jitter" in by_file[name]:
                hit = (vrng.random((T, 1, 1, 1)) < 0.15) & (vrng.random((T, 2, NUM_JOINTS, 1)) < 0.15)
                pts = pts + hit * vrng.normal(0, 0.06, pts.shape)
            pts = np.nan_to_num(pts, nan=0.0).reshape(T, 150)
            text = (("%.6f " * 149 + "%.6f\n") * T) % tuple(pts.ravel().tolist())
            data = text.encode("ascii")
            (out / "skeleton" / f"{name}.txt").write_bytes(data)
            lab = "".join(f"{a},{st},{en},{cf}\n" for a, st, en, cf in labels).encode("ascii")
            (out / "label" / f"{name}.txt").write_bytes(lab)
            total_bytes += len(data) + len(lab)
            total_frames += T
            done += 1
            if progress:
                progress(done, len(names))
    xsub_train = [f"{n:04d}-{v}" for n, sub, _ in sequences for v in views if sub in train_subjects]
    xview_train = [f"{n:04d}-{v}" for n, _, _ in sequences for v in views if v in PKU_XVIEW_TRAIN]
    files = [f"skeleton/{n}.txt" for n in names] + [f"label/{n}.txt" for n in names]
    for fname, train in zip(PKU_SPLIT_FILES[dataset], (xsub_train, xview_train)):
        test = [n for n in names if n not in set(train)]
        data = _split_text(train, test).encode("ascii")
        (out / fname).write_bytes(data)
        total_bytes += len(data)
        files.append(fname)
    counts = {k: sum(k in v for v in by_file.values()) for k in FAULT_KINDS}
    return SynthReport(
        dataset=dataset, out=str(out), files=files, n_files=len(files), bytes=total_bytes, class_ids=class_ids,
        frames=total_frames, faults=counts, faults_by_file={k: v for k, v in by_file.items() if v},
        no_body_files=[], clips=clips * len(views), seconds=0.0,
    )
