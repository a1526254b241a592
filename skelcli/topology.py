"""Skeleton topologies as values: :class:`Topology`, the built-in layouts, and TOML layouts.

A topology says what a clip's joint axis means: joint names, the kinematic tree (``parents``, -1 for
the one root), body parts (each listed along its kinematic chain: SLiM's tube masking and bone-aware
scaling, spec/slim.md 3.1-3.2), left/right mirror pairs, the centring joint, the coordinate
dimensions (2 or 3) and whether a confidence channel follows them. Every HDF5 store records its
topology (``/`` attr ``topology``, JSON); the loader, the encoder's joint count and input channels,
masking and the augmentations read it from there.

Built in (sources: spec/formats.md section 5): ``ntu25`` (Kinect v2, NTU RGB+D / PKU-MMD),
``kinect20`` (Kinect v1: NW-UCLA, UTKinect), ``coco17`` (2-D pose estimators, pyskl HRNet),
``openpose18`` (Kinetics-skeleton / ST-GCN), ``h36m17`` (Human3.6M, VideoPose3D order),
``mediapipe33`` (MediaPipe Pose). A user layout comes from a TOML file (:func:`load_topology`)::

    name = "my_rig"
    dims = 3                    # 2 or 3
    confidence = false          # true: a score channel follows the coordinates
    center = "pelvis"           # name or index
    joints = ["pelvis", "spine", "head", "l_hand", "r_hand"]
    parents = ["", "pelvis", "spine", "spine", "spine"]   # "" (or -1) for the root; names or indices
    mirror = [["l_hand", "r_hand"]]
    [parts]                     # every joint in exactly one part, each part along its chain
    trunk = ["pelvis", "spine", "head"]
    left_arm = ["l_hand"]
    right_arm = ["r_hand"]

The module-level constants below (``NUM_JOINTS``, ``PARENTS``, ``BODY_PARTS``, ...) are the ``ntu25``
values, kept for the NTU/PKU readers, which only ever see that layout. NTU references: joint table
spec/mamp-and-data.md G.1, bone list G.2, SLiM parts and mirror pairs spec/slim.md 3.1-3.2.
"""

from __future__ import annotations

NUM_JOINTS = 25

JOINT_NAMES: tuple[str, ...] = (
    "SpineBase", "SpineMid", "Neck", "Head",
    "ShoulderLeft", "ElbowLeft", "WristLeft", "HandLeft",
    "ShoulderRight", "ElbowRight", "WristRight", "HandRight",
    "HipLeft", "KneeLeft", "AnkleLeft", "FootLeft",
    "HipRight", "KneeRight", "AnkleRight", "FootRight",
    "SpineShoulder", "HandTipLeft", "ThumbLeft", "HandTipRight", "ThumbRight",
)
JOINT_INDEX: dict[str, int] = {name: i for i, name in enumerate(JOINT_NAMES)}

#: MAMP's preprocessing origin: SpineMid of actor 1 in its first valid frame (spec D.5).
ORIGIN_JOINT = JOINT_INDEX["SpineMid"]
#: Root of the kinematic tree used for forward kinematics (SpineBase).
ROOT_JOINT = JOINT_INDEX["SpineBase"]

#: Parent of every joint in a tree rooted at SpineBase (-1 = root). Same table as SLiM's
#: bone-aware scaling (spec/slim.md 3.2): hand tips and thumbs hang off the hands.
PARENTS: tuple[int, ...] = (
    -1, 0, 20, 2,          # SpineBase, SpineMid<-SpineBase, Neck<-SpineShoulder, Head<-Neck
    20, 4, 5, 6,           # left arm from SpineShoulder
    20, 8, 9, 10,          # right arm
    0, 12, 13, 14,         # left leg from SpineBase
    0, 16, 17, 18,         # right leg
    1,                     # SpineShoulder <- SpineMid
    7, 7, 11, 11,          # HandTipLeft, ThumbLeft <- HandLeft; HandTipRight, ThumbRight <- HandRight
)

#: (child, parent) bones of the tree above: 24 edges.
BONES: tuple[tuple[int, int], ...] = tuple((c, p) for c, p in enumerate(PARENTS) if p >= 0)

#: The 2s-AGCN / CTR-GCN / MAMP-feeder bone list (0-based; spec G.2), rooted at SpineShoulder,
#: including its self-pair (20, 20). Kept for compatibility with bone-stream features.
NTU_BONE_PAIRS: tuple[tuple[int, int], ...] = tuple(
    (c - 1, p - 1)
    for c, p in (
        (1, 2), (2, 21), (3, 21), (4, 3), (5, 21), (6, 5), (7, 6), (8, 7), (9, 21), (10, 9),
        (11, 10), (12, 11), (13, 1), (14, 13), (15, 14), (16, 15), (17, 1), (18, 17), (19, 18),
        (20, 19), (22, 23), (21, 21), (23, 8), (24, 25), (25, 12),
    )
)

#: Body parts as kinematic chains, each listed along the chain (spec/slim.md 3.1).
BODY_PARTS: dict[str, tuple[int, ...]] = {
    "trunk": (0, 1, 20, 2, 3),
    "left_arm": (4, 5, 6, 7, 21, 22),
    "right_arm": (8, 9, 10, 11, 23, 24),
    "left_leg": (12, 13, 14, 15),
    "right_leg": (16, 17, 18, 19),
}

#: Scaling groups of bone-aware scaling, by child joint (spec/slim.md 3.2).
SCALE_GROUPS: dict[str, tuple[int, ...]] = {
    "torso": (1, 20, 2, 3),
    "arms": (4, 5, 6, 7, 8, 9, 10, 11, 21, 22, 23, 24),
    "legs": (12, 13, 14, 15, 16, 17, 18, 19),
}

#: Left/right mirror pairs (0-based; spec/slim.md 3.2 lists them 1-based).
MIRROR_PAIRS: tuple[tuple[int, int], ...] = (
    (4, 8), (5, 9), (6, 10), (7, 11), (12, 16), (13, 17), (14, 18), (15, 19), (21, 23), (22, 24),
)


def mirror_permutation() -> list[int]:
    """Index permutation that swaps every left joint with its right counterpart."""
    return NTU25.mirror_permutation()


def topological_order() -> list[int]:
    """Joints ordered so that every parent comes before its children (for forward kinematics)."""
    return _tree_order(PARENTS)


# ============================================================================ topologies as values

from dataclasses import dataclass, field  # noqa: E402
from functools import cached_property  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Mapping, Sequence  # noqa: E402

from skelcli.errors import SkelError  # noqa: E402


@dataclass(frozen=True)
class Topology:
    """One joint layout. Frozen and hashable, so per-topology tables can be cached on it.

    joint_names: V names; parents: V parent indices (-1 for the one root); parts: (name, joints)
    pairs covering every joint once, each listed along its chain; mirror_pairs: (left, right) index
    pairs; center: the joint clips are centred on; dims: 2 or 3 coordinates; confidence: a score
    channel follows the coordinates, so a frame is (V, dims + 1).
    """

    name: str
    joint_names: tuple[str, ...]
    parents: tuple[int, ...]
    parts: tuple[tuple[str, tuple[int, ...]], ...]
    mirror_pairs: tuple[tuple[int, int], ...]
    center: int
    dims: int = 3
    confidence: bool = False
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        problems = validate(self)
        if problems:
            raise SkelError(f"topology {self.name!r}: " + "; ".join(problems))

    # ------------------------------------------------------------------ derived values
    @property
    def num_joints(self) -> int:
        return len(self.joint_names)

    @property
    def channels(self) -> int:
        """Values per joint and frame: the coordinates, then the confidence when there is one."""
        return self.dims + int(self.confidence)

    @property
    def root(self) -> int:
        return self.parents.index(-1)

    @property
    def bones(self) -> tuple[tuple[int, int], ...]:
        """(child, parent) pairs of the tree."""
        return tuple((c, p) for c, p in enumerate(self.parents) if p >= 0)

    @property
    def body_parts(self) -> dict[str, tuple[int, ...]]:
        return dict(self.parts)

    def mirror_permutation(self) -> list[int]:
        """Index permutation that swaps every left joint with its right counterpart."""
        perm = list(range(self.num_joints))
        for a, b in self.mirror_pairs:
            perm[a], perm[b] = b, a
        return perm

    def topological_order(self) -> list[int]:
        """Joints ordered so that every parent comes before its children (for forward kinematics)."""
        return _tree_order(self.parents)

    @cached_property
    def scale_groups(self) -> dict[str, tuple[int, ...]]:
        """Groups of bone-aware scaling by child joint (spec/slim.md 3.2): a part and its mirror image
        form one group (both arms scale alike), a self-symmetric part is a group alone; the root,
        which has no bone, is in none. For ``ntu25`` this gives torso / arms / legs exactly."""
        perm = self.mirror_permutation()
        sets = {name: frozenset(j) for name, j in self.parts}
        groups: dict[str, tuple[int, ...]] = {}
        used: set[str] = set()
        for name, joints in self.parts:
            if name in used:
                continue
            image = frozenset(perm[j] for j in joints)
            partner = next((n for n, s in sets.items() if s == image and n != name and n not in used), None)
            members = list(joints) + (list(dict(self.parts)[partner]) if partner else [])
            used.update({name, partner} - {None})
            key = _side_free(name) if partner else name
            kept = tuple(j for j in members if self.parents[j] >= 0)
            if kept:
                groups[key] = kept
        return groups

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "joint_names": list(self.joint_names), "parents": list(self.parents),
                "parts": {n: list(j) for n, j in self.parts}, "mirror_pairs": [list(p) for p in self.mirror_pairs],
                "center": self.center, "dims": self.dims, "confidence": self.confidence, "description": self.description}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "topology") -> "Topology":
        """From :meth:`to_dict`'s form, or a TOML table (names may stand for indices)."""
        known = {"name", "joint_names", "joints", "parents", "parts", "mirror_pairs", "mirror", "center", "dims",
                 "confidence", "description"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise SkelError(f"{source}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}")
        names = d.get("joint_names", d.get("joints"))
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
            raise SkelError(f"{source}: 'joints' must be a non-empty list of joint names")
        index = {n: i for i, n in enumerate(names)}

        def joint(value: Any, what: str) -> int:
            if isinstance(value, bool):
                raise SkelError(f"{source}: {what}: {value!r} is not a joint")
            if isinstance(value, int):
                if value == -1 and what.startswith("parents"):
                    return -1
                if not 0 <= value < len(names):
                    raise SkelError(f"{source}: {what}: joint index {value} out of range 0..{len(names) - 1}")
                return value
            if isinstance(value, str):
                if value == "" and what.startswith("parents"):
                    return -1
                if value not in index:
                    raise SkelError(f"{source}: {what}: unknown joint {value!r}")
                return index[value]
            raise SkelError(f"{source}: {what}: {value!r} is not a joint name or index")

        for key in ("parents", "parts", "center"):
            if key not in d:
                raise SkelError(f"{source}: missing key {key!r}")
        parents = d["parents"]
        if not isinstance(parents, list):
            raise SkelError(f"{source}: 'parents' must be a list")
        parts = d["parts"]
        if not isinstance(parts, Mapping) or not parts:
            raise SkelError(f"{source}: 'parts' must be a table of part name -> joints")
        pairs = d.get("mirror_pairs", d.get("mirror", []))
        if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
            raise SkelError(f"{source}: 'mirror' must be a list of [left, right] pairs")
        dims = d.get("dims", 3)
        confidence = d.get("confidence", False)
        if not isinstance(confidence, bool):
            raise SkelError(f"{source}: 'confidence' must be true or false")
        for part, joints in parts.items():
            if not isinstance(joints, list) or not joints:
                raise SkelError(f"{source}: part {part!r} must be a non-empty list of joints")
        return cls(
            name=str(d.get("name") or Path(source).stem),
            joint_names=tuple(names),
            parents=tuple(joint(p, f"parents[{i}]") for i, p in enumerate(parents)),
            parts=tuple((str(n), tuple(joint(j, f"part {n}") for j in js)) for n, js in parts.items()),
            mirror_pairs=tuple((joint(a, "mirror"), joint(b, "mirror")) for a, b in pairs),
            center=joint(d["center"], "center"),
            dims=dims if isinstance(dims, int) and not isinstance(dims, bool) else -1,
            confidence=confidence,
            description=str(d.get("description", "")),
        )

    def with_channels(self, dims: int | None = None, confidence: bool | None = None) -> "Topology":
        """The same layout with other coordinate dims / confidence (e.g. COCO-17 as 2-D + score)."""
        d = self.to_dict()
        d["dims"] = self.dims if dims is None else dims
        d["confidence"] = self.confidence if confidence is None else confidence
        return Topology.from_dict(d)

    def describe(self) -> str:
        kind = f"{self.dims}-D" + (" + confidence" if self.confidence else "")
        return f"{self.name}: {self.num_joints} joints, {kind}, centre {self.joint_names[self.center]}"


def _side_free(name: str) -> str:
    for prefix in ("left_", "right_", "l_", "r_"):
        if name.lower().startswith(prefix):
            return name[len(prefix):] + "s"
    return name


def _tree_order(parents: Sequence[int]) -> list[int]:
    """Parents-first order of a parent list: repeated sweeps in index order, each placing the joints
    whose parent is placed. Joints that never reach a root (a cycle) are left out."""
    order: list[int] = []
    placed = [False] * len(parents)
    progress = True
    while progress and len(order) < len(parents):
        progress = False
        for j, p in enumerate(parents):
            if not placed[j] and (p < 0 or (0 <= p < len(parents) and placed[p])):
                order.append(j)
                placed[j] = progress = True
    return order


def validate(t: Topology) -> list[str]:
    """Every problem of ``t`` as a short sentence (empty when valid): one root, a tree, parts that
    cover every joint once, mirror pairs that map the tree and the parts onto themselves."""
    v = len(t.joint_names)
    out: list[str] = []
    if len(set(t.joint_names)) != v:
        dup = sorted({n for n in t.joint_names if t.joint_names.count(n) > 1})
        out.append(f"duplicate joint names {dup}")
    if t.dims not in (2, 3):
        out.append(f"dims must be 2 or 3, got {t.dims}")
    if len(t.parents) != v:
        return out + [f"{len(t.parents)} parents for {v} joints"]
    bad = [p for p in t.parents if not -1 <= p < v]
    if bad:
        return out + [f"parent index {bad[0]} out of range"]
    roots = [j for j, p in enumerate(t.parents) if p == -1]
    if len(roots) != 1:
        out.append(f"needs exactly one root (parent -1), found {len(roots)}: {[t.joint_names[r] for r in roots]}")
    reached = set(_tree_order(t.parents))
    if len(roots) == 1 and len(reached) != v:
        loose = [t.joint_names[j] for j in range(v) if j not in reached]
        out.append(f"not a tree: joints {loose} do not reach the root (a cycle in parents)")
    if not 0 <= t.center < v:
        out.append(f"center {t.center} out of range")
    seen: dict[int, str] = {}
    for name, joints in t.parts:
        for j in joints:
            if not 0 <= j < v:
                out.append(f"part {name!r}: joint index {j} out of range")
            elif j in seen:
                out.append(f"joint {t.joint_names[j]!r} is in parts {seen[j]!r} and {name!r}")
            else:
                seen[j] = name
    missing = [t.joint_names[j] for j in range(v) if j not in seen]
    if missing:
        out.append(f"parts do not cover joints {missing}")
    in_pair: set[int] = set()
    for a, b in t.mirror_pairs:
        if not (0 <= a < v and 0 <= b < v) or a == b:
            out.append(f"mirror pair ({a}, {b}) is not two distinct joints")
            continue
        if a in in_pair or b in in_pair:
            out.append(f"joint {t.joint_names[a if a in in_pair else b]!r} is in two mirror pairs")
        in_pair.update((a, b))
    if out:
        return out
    perm = t.mirror_permutation()
    for j, p in enumerate(t.parents):
        mp = perm[p] if p >= 0 else -1
        if t.parents[perm[j]] != mp:
            out.append(f"mirror pairs are not symmetric: {t.joint_names[j]!r} hangs off "
                       f"{t.joint_names[p] if p >= 0 else 'nothing'} but its mirror {t.joint_names[perm[j]]!r} does not hang off "
                       f"{t.joint_names[mp] if mp >= 0 else 'nothing'}")
            break
    sets = [frozenset(j) for _, j in t.parts]
    for name, joints in t.parts:
        if frozenset(perm[j] for j in joints) not in sets:
            out.append(f"mirror image of part {name!r} is not a part")
            break
    return out


def _t(name: str, joints: str, parents: Sequence[int], parts: Mapping[str, Sequence[int]], mirror: Sequence[tuple[int, int]],
       center: int, dims: int = 3, confidence: bool = False, description: str = "") -> Topology:
    return Topology(name, tuple(joints.split()), tuple(parents), tuple((n, tuple(j)) for n, j in parts.items()),
                    tuple(mirror), center, dims, confidence, description)


NTU25 = Topology(
    "ntu25", JOINT_NAMES, PARENTS, tuple(BODY_PARTS.items()), MIRROR_PAIRS, ORIGIN_JOINT, 3, False,
    "Kinect v2, NTU RGB+D 60/120 and PKU-MMD (spec/mamp-and-data.md G.1; parts and mirror pairs spec/slim.md 3.1-3.2)",
)

# spec/formats.md 5.2 (Kinect SDK 1.x order; parents from CTR-GCN graph/ucla.py; centre Spine as its feeder).
KINECT20 = _t(
    "kinect20",
    "HipCenter Spine ShoulderCenter Head ShoulderLeft ElbowLeft WristLeft HandLeft ShoulderRight ElbowRight "
    "WristRight HandRight HipLeft KneeLeft AnkleLeft FootLeft HipRight KneeRight AnkleRight FootRight",
    (1, 2, -1, 2, 2, 4, 5, 6, 2, 8, 9, 10, 0, 12, 13, 14, 0, 16, 17, 18),
    {"trunk": (0, 1, 2, 3), "left_arm": (4, 5, 6, 7), "right_arm": (8, 9, 10, 11),
     "left_leg": (12, 13, 14, 15), "right_leg": (16, 17, 18, 19)},
    ((4, 8), (5, 9), (6, 10), (7, 11), (12, 16), (13, 17), (14, 18), (15, 19)), 1, 3, False,
    "Kinect v1 (NW-UCLA, UTKinect), spec/formats.md 5.2",
)

# spec/formats.md 5.3 (COCO names; pyskl `coco` parents; centre 0); 2-D pixels + detector score.
COCO17 = _t(
    "coco17",
    "nose left_eye right_eye left_ear right_ear left_shoulder right_shoulder left_elbow right_elbow "
    "left_wrist right_wrist left_hip right_hip left_knee right_knee left_ankle right_ankle",
    (-1, 0, 0, 1, 2, 0, 0, 5, 6, 7, 8, 5, 6, 11, 12, 13, 14),
    {"head": (3, 1, 0, 2, 4), "left_arm": (5, 7, 9), "right_arm": (6, 8, 10),
     "left_leg": (11, 13, 15), "right_leg": (12, 14, 16)},
    ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)), 0, 2, True,
    "COCO-17 keypoints of 2-D pose estimators (pyskl HRNet), spec/formats.md 5.3",
)

# spec/formats.md 5.4 (OpenPose names; ST-GCN `openpose` parents, hips off the shoulders; centre Neck).
OPENPOSE18 = _t(
    "openpose18",
    "Nose Neck RShoulder RElbow RWrist LShoulder LElbow LWrist RHip RKnee RAnkle LHip LKnee LAnkle REye LEye REar LEar",
    (1, -1, 1, 2, 3, 1, 5, 6, 2, 8, 9, 5, 11, 12, 0, 0, 14, 15),
    {"head": (16, 14, 0, 15, 17), "torso": (1,), "right_arm": (2, 3, 4), "left_arm": (5, 6, 7),
     "right_leg": (8, 9, 10), "left_leg": (11, 12, 13)},
    ((2, 5), (3, 6), (4, 7), (8, 11), (9, 12), (10, 13), (14, 15), (16, 17)), 1, 2, True,
    "OpenPose COCO-18 (Kinetics-skeleton, ST-GCN), spec/formats.md 5.4",
)

# spec/formats.md 5.6 (VideoPose3D 17-joint order; centre the pelvis).
H36M17 = _t(
    "h36m17",
    "Hip RHip RKnee RFoot LHip LKnee LFoot Spine Thorax Neck Head LShoulder LElbow LWrist RShoulder RElbow RWrist",
    (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 9, 8, 11, 12, 8, 14, 15),
    {"trunk": (0, 7, 8, 9, 10), "right_leg": (1, 2, 3), "left_leg": (4, 5, 6),
     "left_arm": (11, 12, 13), "right_arm": (14, 15, 16)},
    ((1, 4), (2, 5), (3, 6), (11, 14), (12, 15), (13, 16)), 0, 3, False,
    "Human3.6M 17 joints in VideoPose3D order, spec/formats.md 5.6",
)

# spec/formats.md 5.7 (MediaPipe names; the spanning tree given there, rooted at the nose).
MEDIAPIPE33 = _t(
    "mediapipe33",
    "nose left_eye_inner left_eye left_eye_outer right_eye_inner right_eye right_eye_outer left_ear right_ear "
    "mouth_left mouth_right left_shoulder right_shoulder left_elbow right_elbow left_wrist right_wrist "
    "left_pinky right_pinky left_index right_index left_thumb right_thumb left_hip right_hip left_knee right_knee "
    "left_ankle right_ankle left_heel right_heel left_foot_index right_foot_index",
    (-1, 0, 1, 2, 0, 4, 5, 3, 6, 0, 0, 0, 0, 11, 12, 13, 14, 15, 16, 15, 16, 15, 16, 11, 12, 23, 24, 25, 26, 27, 28,
     27, 28),
    {"face": (7, 3, 2, 1, 0, 4, 5, 6, 8, 9, 10), "left_arm": (11, 13, 15, 17, 19, 21),
     "right_arm": (12, 14, 16, 18, 20, 22), "left_leg": (23, 25, 27, 29, 31), "right_leg": (24, 26, 28, 30, 32)},
    ((1, 4), (2, 5), (3, 6), (7, 8), (9, 10)) + tuple((11 + 2 * k, 12 + 2 * k) for k in range(11)), 0, 3, False,
    "MediaPipe Pose 33 landmarks, spec/formats.md 5.7",
)

BUILTIN: dict[str, Topology] = {t.name: t for t in (NTU25, KINECT20, COCO17, OPENPOSE18, H36M17, MEDIAPIPE33)}


def load_topology(path: str | Path) -> Topology:
    """A user topology from a TOML file (see the module docstring); SkelError naming the problem."""
    import tomllib

    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SkelError(f"no such topology file: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SkelError(f"cannot read topology file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SkelError(f"{path}: not valid TOML ({exc})") from None
    return Topology.from_dict(data, source=str(path))


def get_topology(spec: "str | Path | Topology | Mapping[str, Any] | None") -> Topology:
    """A built-in name, a ``.toml`` path, a :meth:`Topology.to_dict` mapping, or None (``ntu25``)."""
    if spec is None:
        return NTU25
    if isinstance(spec, Topology):
        return spec
    if isinstance(spec, Mapping):
        return Topology.from_dict(spec)
    text = str(spec)
    if text in BUILTIN:
        return BUILTIN[text]
    if text.endswith(".toml") or Path(text).is_file():
        return load_topology(text)
    raise SkelError(f"unknown topology {text!r}; built in: {', '.join(BUILTIN)}, or the path of a .toml file")
