"""Masking (spec/mamp-and-data.md A.6): keep count, motion-aware statistics, empty persons."""

from __future__ import annotations

import torch

from skelcli.models.masking import keep_count, motion_aware_masking, random_masking


def test_keep_count_is_74_of_750_at_ratio_09():
    # 1 - 0.9 is 0.0999... in floating point, so int(750 * 0.0999...) = 74 (spec 0.1).
    assert keep_count(750, 0.9) == 74
    x = torch.randn(3, 120, 25, 3)
    res = motion_aware_masking(x, 4, 0.9, 0.8, generator=torch.Generator().manual_seed(0))
    assert res.ids_keep.shape == (3, 74)
    assert res.mask.shape == (3, 750)
    assert torch.all(res.mask.sum(dim=1) == 676)
    # ids_keep are exactly the visible (mask == 0) positions
    for b in range(3):
        visible = torch.nonzero(res.mask[b] == 0).flatten()
        assert torch.equal(torch.sort(res.ids_keep[b]).values, visible)
    # ids_restore inverts the shuffle: restore(order) is the identity on positions
    rnd = random_masking(2, 750, 0.9, generator=torch.Generator().manual_seed(1))
    assert rnd.ids_keep.shape == (2, 74)
    assert torch.all(torch.sort(rnd.ids_restore, dim=1).values == torch.arange(750))


def test_motion_aware_masks_high_motion_tokens_more_often():
    """Joints 0-4 oscillate, the rest stand still: their tokens must be masked clearly more often."""
    torch.manual_seed(0)
    t, v = 40, 25
    x = torch.zeros(1, t, v, 3)
    x[:, :, :, 1] = 1.0  # static offset (no motion)
    phase = torch.arange(t, dtype=torch.float32)
    x[0, :, :5, 0] = torch.sin(phase * 0.7)[:, None]  # high motion on joints 0-4
    gen = torch.Generator().manual_seed(123)
    counts = torch.zeros(10 * v)
    draws = 300
    for _ in range(draws):
        counts += motion_aware_masking(x, 4, 0.5, 0.8, generator=gen).mask[0]
    freq = (counts / draws).reshape(10, v)
    high, low = freq[:, :5].mean().item(), freq[:, 5:].mean().item()
    assert high > low + 0.2, (high, low)
    # the prior is weak (max/min probability ratio e^(1/tau)): low-motion tokens are still masked sometimes
    assert low > 0.2


def test_all_zero_person_masks_uniformly():
    """An empty person has d = 0 everywhere -> uniform pi: the draw equals plain random masking."""
    x = torch.zeros(2, 32, 25, 3)
    a = motion_aware_masking(x, 4, 0.9, 0.8, generator=torch.Generator().manual_seed(7))
    b = random_masking(2, 200, 0.9, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.mask, b.mask)
    assert torch.equal(a.ids_keep, b.ids_keep)
