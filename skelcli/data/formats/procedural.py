"""Procedural action clips in any :class:`~skelcli.topology.Topology`, for ``skel synth FORMAT``.

The NTU / PKU-MMD generator (:mod:`skelcli.data.synthetic`) animates a human Kinect v2 body; this one
needs nothing but the layout's tree, parts and mirror pairs, so it serves every built-in and every
user topology:

* rest pose: each bone gets a fixed length (0.10-0.30) and direction drawn from the topology's name
  (same layout, same body); the right side is the mirror image (x negated) of the left;
* class c moves each body part p with a sinusoid of its own frequency, phase and direction vector
  a[c, p] ~ N(0, 0.4); a joint's displacement grows with its depth in the part's chain, so motion is
  coordinated along limbs (what the class is);
* nuisance per clip: duration 40-80 frames, body scale 0.85-1.15, a rotation (about the vertical axis
  in 3-D, in the image plane in 2-D, +-0.4 rad), a translation, and joint noise (std 0.01);
* 2-D layouts keep x and y; with a confidence channel the score is U(0.6, 1.0) and 2 % of joints are
  missed (score 0 and coordinates 0, as pose estimators write them).

Coordinates are in "body units" (about metres, y up); each format writer maps them to its own
space (pixels, normalised image coordinates, ...).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from skelcli.topology import Topology


@dataclass
class ProcClip:
    """One procedural clip: joints float32 (T, M, V, C) in the topology's channels, label 0-based,
    subject 1.., view 1.. (for the formats whose splits use them), split "train" or "test"."""

    name: str
    joints: np.ndarray
    label: int
    subject: int
    view: int
    split: str


def _layout_rng(topology: Topology) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(topology.name.encode()) ^ topology.num_joints)


def rest_pose(topology: Topology) -> np.ndarray:
    """(V, 3) rest positions: forward kinematics of per-bone offsets, left/right mirrored."""
    rng = _layout_rng(topology)
    v = topology.num_joints
    offsets = np.zeros((v, 3))
    for j in range(v):
        d = rng.normal(size=3)
        d[1] = abs(d[1]) if j % 2 else -abs(d[1])  # some bones up, some down: not a flat fan
        offsets[j] = d / np.linalg.norm(d) * rng.uniform(0.10, 0.30)
    perm = topology.mirror_permutation()
    for a, b in topology.mirror_pairs:
        offsets[b] = offsets[a] * np.array([-1.0, 1.0, 1.0])
    for j in range(v):  # a joint that is its own mirror image sits on the midline
        if perm[j] == j:
            offsets[j, 0] = 0.0
    pos = np.zeros((v, 3))
    for j in topology.topological_order():
        p = topology.parents[j]
        pos[j] = (pos[p] if p >= 0 else 0.0) + (offsets[j] if p >= 0 else 0.0)
    return pos


def _chain_depth(topology: Topology) -> np.ndarray:
    """(V,) position of each joint along its part, scaled to (0, 1]."""
    depth = np.zeros(topology.num_joints)
    for _, joints in topology.parts:
        for k, j in enumerate(joints):
            depth[j] = (k + 1) / len(joints)
    return depth


def procedural_clips(topology: Topology, classes: int = 6, per_class: int = 8, seed: int = 0,
                     frames: tuple[int, int] = (40, 80), subjects: int = 4, views: int = 3) -> list[ProcClip]:
    """``classes * per_class`` clips named ``c{class:03d}_s{subject:02d}_v{view}_{k:03d}``; subjects
    alternate train (odd) / test (even)."""
    rest = rest_pose(topology)
    depth = _chain_depth(topology)
    part_of = np.zeros(topology.num_joints, dtype=np.int64)
    for p, (_, joints) in enumerate(topology.parts):
        part_of[list(joints)] = p
    n_parts = len(topology.parts)
    motion = np.random.default_rng(1000 + classes)  # class programs: fixed for a class count
    freq = motion.uniform(0.5, 3.0, (classes, n_parts))
    phase = motion.uniform(0, 2 * np.pi, (classes, n_parts))
    amp = motion.normal(0, 0.4, (classes, n_parts, 3))
    rng = np.random.default_rng(seed)
    out: list[ProcClip] = []
    for c in range(classes):
        for k in range(per_class):
            subject = 1 + k % subjects  # train / test subjects alternate
            view = 1 + (k + k // subjects) % views  # and every view comes within a class's first clips
            t = int(rng.integers(frames[0], frames[1] + 1))
            tau = np.linspace(0, 1, t)[:, None] * rng.uniform(0.8, 1.25)
            wave = np.sin(2 * np.pi * freq[c][None, :] * tau + phase[c][None, :])  # (T, P)
            disp = wave[:, part_of, None] * amp[c][part_of][None] * depth[None, :, None]  # (T, V, 3)
            x = (rest[None] + disp) * rng.uniform(0.85, 1.15)
            angle = rng.uniform(-0.4, 0.4)
            ca, sa = np.cos(angle), np.sin(angle)
            if topology.dims == 3:
                rot = np.array([[ca, 0, sa], [0, 1, 0], [-sa, 0, ca]])
            else:
                rot = np.array([[ca, -sa, 0], [sa, ca, 0], [0, 0, 1]])
            x = x @ rot.T + rng.normal(0, 0.3, 3) * np.array([1, 0.2, 1]) + rng.normal(0, 0.01, x.shape)
            coords = x[..., : topology.dims]
            if topology.confidence:
                score = rng.uniform(0.6, 1.0, (t, topology.num_joints, 1))
                missed = rng.random((t, topology.num_joints)) < 0.02
                score[missed] = 0.0
                coords = np.where(missed[..., None], 0.0, coords)
                coords = np.concatenate([coords, score], axis=-1)
            joints = coords[:, None].astype(np.float32)  # (T, 1, V, C)
            out.append(ProcClip(f"c{c:03d}_s{subject:02d}_v{view}_{k:03d}", joints, c, subject, view,
                                "train" if subject % 2 else "test"))
    return out


__all__ = ["ProcClip", "procedural_clips", "rest_pose"]
