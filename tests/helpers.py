"""Shared test helpers (importable from any test module: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import numpy as np


def toy_split(n_per: int, classes: int, seed: int):
    """A SplitData of clips whose class sets a constant pose offset: easy for any encoder.

    Clips of 12-19 frames, 2 persons (the second empty), 25 joints; person 0 = N(0, 0.1) + (c - C/2).
    """
    from skelcli.eval.features import SplitData

    rng = np.random.default_rng(seed)
    parts, labels = [], []
    for c in range(classes):
        for _ in range(n_per):
            t = int(rng.integers(12, 20))
            clip = np.zeros((t, 2, 25, 3), dtype=np.float32)
            clip[:, 0] = 0.1 * rng.normal(size=(t, 25, 3)) + (c - classes / 2)
            parts.append(clip)
            labels.append(c)
    lengths = np.array([p.shape[0] for p in parts])
    return SplitData(np.concatenate(parts), np.concatenate([[0], np.cumsum(lengths)]), np.array(labels), lengths, "toy", classes,
                     [f"s{i}" for i in range(len(labels))])
