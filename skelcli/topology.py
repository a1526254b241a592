"""Kinect v2 skeleton topology in NTU RGB+D joint order: the one source of truth.

Joint indices are 0-based here (the NTU documentation numbers them 1..25).
References: NTU RGB+D joint table (spec/mamp-and-data.md G.1), bone list of 2s-AGCN/CTR-GCN
(spec G.2), SLiM body-part chains and mirror pairs (spec/slim.md 3.1, 3.2).
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
    perm = list(range(NUM_JOINTS))
    for a, b in MIRROR_PAIRS:
        perm[a], perm[b] = b, a
    return perm


def topological_order() -> list[int]:
    """Joints ordered so that every parent comes before its children (for forward kinematics)."""
    order: list[int] = []
    placed = [False] * NUM_JOINTS
    while len(order) < NUM_JOINTS:
        for j, p in enumerate(PARENTS):
            if not placed[j] and (p < 0 or placed[p]):
                order.append(j)
                placed[j] = True
    return order
