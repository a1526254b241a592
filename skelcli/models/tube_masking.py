"""Semantic tube masking (SLiM, spec/slim.md 3.1).

A tube is a contiguous sub-chain of one body part (``Topology.parts``, each listed along its
kinematic chain; ``ntu25`` by default, any layout's parts otherwise) masked over a contiguous span of temporal segments. Tubes are
added until the budget int(N * ratio) of the view's N = n_t * V tokens is met or a tube fails
``max_tries`` times in a row, so the achieved ratio can fall slightly short of the target.

Generation runs in rounds: each round proposes one tube for every view that is still active, in
view order (the order the uniforms are drawn in).

Masks are (B, n_t * V) bool in time-major token order (index t * V + v), True = masked.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from skelcli.engine.hostside import host_side
from skelcli.topology import NTU25, Topology


@dataclass(frozen=True)
class Tube:
    """One accepted tube: ``part`` name, chain positions [c0, c0 + w) and segments [t0, t0 + h)."""

    part: str
    c0: int
    w: int
    t0: int
    h: int

    def joints(self, topo: Topology = NTU25) -> tuple[int, ...]:
        return topo.body_parts[self.part][self.c0 : self.c0 + self.w]


@lru_cache(maxsize=16)
def _subchain_table(topo: Topology = NTU25) -> tuple[torch.Tensor, torch.Tensor, list[tuple[str, int, int]]]:
    """All contiguous sub-chains: joint masks (S, V) bool, lengths (S,), and (part, c0, w) per row."""
    rows, lengths, names = [], [], []
    for part, chain in topo.parts:
        for w in range(1, len(chain) + 1):
            for c0 in range(len(chain) - w + 1):
                m = torch.zeros(topo.num_joints, dtype=torch.bool)
                m[list(chain[c0 : c0 + w])] = True
                rows.append(m)
                lengths.append(w)
                names.append((part, c0, w))
    return torch.stack(rows), torch.tensor(lengths), names


@lru_cache(maxsize=16)
def _row_offsets(topo: Topology = NTU25) -> tuple[np.ndarray, np.ndarray]:
    """Part sizes (P,) and the first table row of each (part, w) as a (P, max size) table."""
    sizes = [len(c) for _, c in topo.parts]
    offsets, base = [], 0
    for n in sizes:
        per_w = [0]
        for w in range(1, n):
            per_w.append(per_w[-1] + n - w + 1)  # a part's rows are grouped by w, n - w + 1 per w
        offsets.append([base + o for o in per_w] + [0] * (max(sizes) - n))
        base += n * (n + 1) // 2
    return np.array(sizes, dtype=np.int64), np.array(offsets, dtype=np.int64)


@lru_cache(maxsize=16)
def _chain_bits(topo: Topology = NTU25) -> list[int]:
    """Each sub-chain of :func:`_subchain_table` as an integer with bit j set for joint j."""
    return [sum(1 << j for j in np.flatnonzero(row).tolist()) for row in _subchain_table(topo)[0].numpy()]


_F32 = struct.Struct("f")


def _to_f32(x: float) -> float:
    """``x`` rounded to the nearest float32 (IEEE 754 binary32, ties to even), as a Python float."""
    return _F32.unpack(_F32.pack(x))[0]


def _floor_long(x: np.ndarray) -> np.ndarray:
    return np.floor(x).astype(np.int64)


def _subchain_index(u_part: np.ndarray, u_w: np.ndarray, u_c0: np.ndarray, topo: Topology = NTU25) -> np.ndarray:
    """Map float32 uniforms to a table row: part uniform, w ~ U{1..|part|}, start uniform.

    Every product is taken in float32 (as torch promotes a float32 tensor times an int64 one), so the
    rows are those of the float32 arithmetic whatever numpy's promotion rules."""
    sizes, offsets = _row_offsets(topo)
    f32 = np.float32
    part = np.minimum(_floor_long(u_part * f32(len(sizes))), len(sizes) - 1)
    n = sizes[part]
    w = np.minimum(_floor_long(u_w * n.astype(f32)) + 1, n)
    c0 = np.minimum(_floor_long(u_c0 * (n - w + 1).astype(f32)), n - w)
    return offsets[part, w - 1] + c0


@host_side  # Python / numpy bookkeeping: eager under --compile (engine/hostside.py)
def semantic_tube_masking(
    ratios: torch.Tensor,
    n_t: int,
    min_patches: int,
    max_patches: int,
    max_tries: int = 10,
    generator: torch.Generator | None = None,
    return_tubes: bool = False,
    topo: Topology = NTU25,
) -> torch.Tensor | tuple[torch.Tensor, list[list[Tube]]]:
    """Semantic tube masks for len(ratios) views of an (n_t x V) token grid.

    ratios: (B,) target mask ratios (0 = leave the view unmasked). Per tube (spec/slim.md 3.1):
    pick a part uniformly and a contiguous sub-chain of width w ~ U{1..|part|}; draw an area
    a ~ U[min_patches, min(remaining, max_patches)], height h = clip(round(a / w), 1, n_t) and a
    uniform start segment; accept when it masks >= 1 new cell and the new cells fit the remaining
    budget, else retry (up to ``max_tries`` failures in a row end the view).

    Draws: rounds over the views still active, in index order, five float32 uniforms per proposal from
    ``torch.rand`` (``generator`` or torch's global CPU stream), as ``torch.rand(k, 5)`` per round would
    give them. torch's CPU ``uniform_`` fills element by element from one stream, so the uniforms are
    drawn in blocks and the generator is then set to exactly where the per-round draws would have left
    it (tests/test_tube_masking.py holds masks recorded from the per-round version). The part, width and
    start of every proposal are computed for the whole block in float32 numpy; what depends on a view's
    remaining budget runs per proposal in Python, each float32 product, sum and quotient taken in double
    and rounded to float32 (exact: a double holds 2 x 24 + 2 bits), and a view's mask is an integer with
    one bit per token. A SLiM small-preset step's three calls took 10.5 ms with per-round numpy arrays and
    take 2.0 ms so (AMD EPYC, one thread; the step is about 110 ms).

    Returns the (B, n_t * V) bool mask (time-major), and with ``return_tubes`` also the accepted
    tubes per view.
    """
    v = topo.num_joints
    ratios_np = ratios.detach().float().cpu().numpy()
    b = ratios_np.shape[0]
    budget = (torch.from_numpy(ratios_np) * (n_t * v)).long().tolist()  # int(N * ratio), torch's float32 product
    _, widths_t, names = _subchain_table(topo)
    chain_bits, widths = _chain_bits(topo), widths_t.tolist()
    ones = [0] * (n_t + 1)  # ones[h]: bit 0 of each of h consecutive segments
    for h in range(1, n_t + 1):
        ones[h] = ones[h - 1] | (1 << ((h - 1) * v))
    remaining, masks, fails = list(budget), [0] * b, [0] * b
    tubes: list[list[Tube]] = [[] for _ in range(b)]
    to_f32 = _to_f32
    gen = generator if generator is not None else torch.default_generator
    state = gen.get_state()
    block_rows, used = max(64, 24 * b), 0  # about one block per call at SLiM's budgets
    rows: list[int] = []
    u3: list[float] = []
    u4: list[float] = []
    active = [i for i in range(b) if remaining[i] > 0]
    while active:
        if used + len(active) > len(rows):  # one more block of proposals, continuing the stream
            u = torch.rand(block_rows, 5, generator=gen).numpy()
            rows += _subchain_index(u[:, 0], u[:, 1], u[:, 2], topo).tolist()
            u3 += u[:, 3].tolist()
            u4 += u[:, 4].tolist()
        for i in active:
            r, rem = rows[used], remaining[i]
            w = widths[r]
            hi = min(rem, max_patches)
            lo = min(min_patches, hi)
            area = to_f32(lo + to_f32(u3[used] * (hi - lo)))
            h = min(max(round(to_f32(area / w)), 1), n_t)
            t0 = min(math.floor(to_f32(u4[used] * (n_t - h + 1))), n_t - h)
            used += 1
            cells = (chain_bits[r] * ones[h]) << (t0 * v)
            new = (cells & ~masks[i]).bit_count()
            if 1 <= new <= rem:
                masks[i] |= cells
                remaining[i] = rem - new
                fails[i] = 0
                if return_tubes:
                    part, c0, ww = names[r]
                    tubes[i].append(Tube(part, c0, ww, t0, h))
            else:
                fails[i] += 1
        active = [i for i in active if remaining[i] > 0 and fails[i] < max_tries]
    gen.set_state(state)
    if used:
        torch.rand(used, 5, generator=gen)  # leave the stream where the per-round draws would have
    nbytes = (n_t * v + 7) // 8
    packed = np.frombuffer(b"".join(m.to_bytes(nbytes, "little") for m in masks), dtype=np.uint8).reshape(b, nbytes)
    flat = torch.from_numpy(np.unpackbits(packed, axis=1, count=n_t * v, bitorder="little").astype(bool))
    return (flat, tubes) if return_tubes else flat


def stratified_ratios(n: int, lo: float = 0.5, hi: float = 0.9, generator: torch.Generator | None = None,
                      shuffle: bool = True) -> torch.Tensor:
    """n ratios, the i-th uniform in the i-th of n equal sub-intervals of [lo, hi] (spec 2.6), shuffled
    unless ``shuffle`` is False (SLiM's local views: ``slim/data/collate.py`` keeps them in order)."""
    if n <= 0:
        return torch.zeros(0)
    edges = torch.linspace(lo, hi, n + 1)
    r = edges[:-1] + torch.rand(n, generator=generator) * (edges[1:] - edges[:-1])
    return r[torch.randperm(n, generator=generator)] if shuffle else r


def global_view_ratios(
    n_views: int, mask_probability: float = 0.5, lo: float = 0.5, hi: float = 0.9, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Ratios for the 2B global views: int(n_views * p) of them masked with stratified ratios in
    [lo, hi], the rest 0 (unmasked), in a random assignment (spec/slim.md 2.6, DINOv2 collate)."""
    n_masked = int(n_views * mask_probability)
    ratios = torch.zeros(n_views)
    ratios[:n_masked] = stratified_ratios(n_masked, lo, hi, generator)
    return ratios[torch.randperm(n_views, generator=generator)]


__all__ = ["Tube", "global_view_ratios", "semantic_tube_masking", "stratified_ratios"]
