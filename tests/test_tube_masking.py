"""Semantic tube masking (spec/slim.md 3.1): tube shape, budget, stratified ratios."""

from __future__ import annotations

import torch

from skelcli import topology
from skelcli.models.tube_masking import global_view_ratios, semantic_tube_masking, stratified_ratios

V = topology.NUM_JOINTS


def _tube_cells(tube) -> set[tuple[int, int]]:
    return {(t, j) for t in range(tube.t0, tube.t0 + tube.h) for j in tube.joints()}


def test_every_tube_is_a_connected_chain_of_one_part_over_contiguous_frames() -> None:
    gen = torch.Generator().manual_seed(0)
    ratios = stratified_ratios(64, generator=gen)
    for n_t, min_p in ((8, 8), (4, 4), (2, 2), (1, 1)):
        mask, tubes = semantic_tube_masking(ratios, n_t, min_p, 100, generator=gen, return_tubes=True)
        grid = mask.reshape(-1, n_t, V)
        for i, view_tubes in enumerate(tubes):
            union: set[tuple[int, int]] = set()
            for tube in view_tubes:
                chain = topology.BODY_PARTS[tube.part]
                joints = tube.joints()
                assert 1 <= tube.w == len(joints) <= len(chain)
                # contiguous along the part's listed chain (spec 3.1): consecutive members are
                # parent/child, or the two end effectors of one hand (hand tip, thumb: siblings)
                assert joints == chain[tube.c0 : tube.c0 + tube.w]
                for a, b in zip(joints, joints[1:]):
                    pa, pb = topology.PARENTS[a], topology.PARENTS[b]
                    assert pb == a or pa == b or (pa == pb and pa in chain), (a, b)
                assert 0 <= tube.t0 and 1 <= tube.h and tube.t0 + tube.h <= n_t
                union |= _tube_cells(tube)
            got = {(t, j) for t, j in grid[i].nonzero().tolist()}
            assert got == union


def test_ratio_within_budget_and_close_to_target() -> None:
    gen = torch.Generator().manual_seed(1)
    ratios = stratified_ratios(400, 0.5, 0.9, generator=gen)
    mask = semantic_tube_masking(ratios, 8, 8, 100, generator=gen)
    count = mask.sum(1)
    budget = (ratios * 200).long()
    assert bool((count <= budget).all())
    # tubes stop only after 10 failed tries in a row, so the shortfall stays small on average
    assert float((budget - count).float().mean()) < 0.05 * 200
    assert bool((count >= 0.6 * budget).all())


def test_token_order_is_time_major() -> None:
    gen = torch.Generator().manual_seed(2)
    mask, tubes = semantic_tube_masking(torch.tensor([0.3]), 8, 8, 100, generator=gen, return_tubes=True)
    tube = tubes[0][0]
    for t, j in _tube_cells(tube):
        assert bool(mask[0, t * V + j])


def test_zero_ratio_leaves_view_unmasked() -> None:
    mask = semantic_tube_masking(torch.tensor([0.0, 0.9]), 8, 8, 100)
    assert int(mask[0].sum()) == 0 and int(mask[1].sum()) > 0


def test_stratified_ratios_cover_each_subinterval_once() -> None:
    r = stratified_ratios(8, 0.5, 0.9, generator=torch.Generator().manual_seed(3)).sort().values
    edges = torch.linspace(0.5, 0.9, 9)
    assert bool(((r >= edges[:-1]) & (r <= edges[1:])).all())


def test_half_of_global_views_masked() -> None:
    r = global_view_ratios(16, 0.5, generator=torch.Generator().manual_seed(4))
    assert int((r > 0).sum()) == 8
    assert bool(((r == 0) | ((r >= 0.5) & (r <= 0.9))).all())


def test_masks_of_a_fixed_seed_are_the_recorded_ones() -> None:
    """The numpy bookkeeping (since 2026-12-06) and the block-drawn, per-proposal version after it
    reproduce the torch implementation before them draw for draw: this seed's masks and tubes were
    recorded from that version, so a training run and its resume see the same masks as before. The next
    numbers of the generator (recorded from the per-round numpy version) show that the blocks leave it
    exactly where one ``torch.rand(k, 5)`` per round did; randomised layouts, budgets and topologies
    were compared with that version in 3,000 cases (equal masks, tubes and generator state)."""
    import hashlib

    g = torch.Generator().manual_seed(7)
    ratios = torch.tensor([0.0, 0.5, 0.62, 0.9, 0.75, 0.55, 0.81, 0.3])
    mask, tubes = semantic_tube_masking(ratios, 8, 4, 40, 10, generator=g, return_tubes=True)
    assert mask.dtype == torch.bool and mask.shape == (8, 8 * V)
    assert mask.sum(1).tolist() == [0, 100, 124, 180, 150, 110, 162, 60]
    assert hashlib.sha256(mask.numpy().tobytes()).hexdigest()[:16] == "80f64d1416bc13e7"
    assert [(t.part, t.c0, t.w, t.t0, t.h) for t in tubes[1]][:4] == [
        ("right_arm", 3, 2, 0, 8), ("right_leg", 0, 2, 0, 8), ("trunk", 0, 5, 5, 2), ("right_arm", 1, 5, 0, 3)]
    assert torch.rand(2, generator=g).tolist() == [0.48594945669174194, 0.7299397587776184]
    with torch.random.fork_rng():  # the global stream (generator=None) too
        torch.manual_seed(7)
        assert torch.equal(semantic_tube_masking(ratios, 8, 4, 40, 10), mask)
        assert torch.rand(2).tolist() == [0.48594945669174194, 0.7299397587776184]
