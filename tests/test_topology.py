"""The Kinect v2 topology tables are consistent with each other and with the NTU documentation."""

from skelcli import topology as T


def test_joint_names_and_origin():
    assert len(T.JOINT_NAMES) == T.NUM_JOINTS == 25
    # NTU numbers joints 1..25: joint 2 is SpineMid (MAMP's origin), joint 21 is SpineShoulder.
    assert T.JOINT_NAMES[T.ORIGIN_JOINT] == "SpineMid" and T.ORIGIN_JOINT == 1
    assert T.JOINT_NAMES[20] == "SpineShoulder"


def test_parents_form_a_tree_rooted_at_spinebase():
    assert T.PARENTS[T.ROOT_JOINT] == -1
    assert sum(p < 0 for p in T.PARENTS) == 1
    for j in range(T.NUM_JOINTS):  # every joint reaches the root without a cycle
        seen, k = set(), j
        while k != T.ROOT_JOINT:
            assert k not in seen
            seen.add(k)
            k = T.PARENTS[k]
    assert len(T.BONES) == 24
    order = T.topological_order()
    pos = {j: i for i, j in enumerate(order)}
    assert sorted(order) == list(range(25))
    assert all(pos[p] < pos[c] for c, p in T.BONES)


def test_body_parts_are_chains_covering_every_joint_once():
    joints = [j for part in T.BODY_PARTS.values() for j in part]
    assert sorted(joints) == list(range(25))
    adjacent = {frozenset(b) for b in T.BONES}
    for name, chain in T.BODY_PARTS.items():
        for a, b in zip(chain, chain[1:]):
            # consecutive joints are connected, except the two hand extremities that both hang off the hand
            assert frozenset((a, b)) in adjacent or T.PARENTS[a] == T.PARENTS[b], (name, a, b)


def test_mirror_pairs_swap_left_and_right():
    perm = T.mirror_permutation()
    assert [perm[p] for p in perm] == list(range(25))  # an involution
    for a, b in T.MIRROR_PAIRS:
        assert "Left" in T.JOINT_NAMES[a] and T.JOINT_NAMES[b] == T.JOINT_NAMES[a].replace("Left", "Right")
    for j in range(25):  # midline joints map to themselves
        if "Left" not in T.JOINT_NAMES[j] and "Right" not in T.JOINT_NAMES[j]:
            assert perm[j] == j
    # the mirror maps the tree onto itself
    assert all(T.PARENTS[perm[c]] == perm[p] for c, p in T.BONES)


def test_scale_groups_cover_every_non_root_joint():
    children = sorted(j for g in T.SCALE_GROUPS.values() for j in g)
    assert children == [j for j in range(25) if j != T.ROOT_JOINT]


def test_ntu_bone_pairs_match_reference_list():
    assert len(T.NTU_BONE_PAIRS) == 25
    assert (20, 20) in T.NTU_BONE_PAIRS  # the root self-pair of the 2s-AGCN list
