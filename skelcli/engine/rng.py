"""Sample-keyed random draws: the same augmentation and masking whatever the process count (issue 7).

Under DDP each process sees a slice of the global batch. If every process drew its crops, rotations
and masking noise from its own generator, a 2-process run would augment sample ``i`` differently
from a 1-process run and the parameters would drift apart. Here the uniforms of a step are drawn
for the *whole global batch* from a CPU generator seeded identically on every rank with
``(run seed, epoch, step, stream)``, and each rank keeps the rows of its own samples. Sample ``i``
of global step ``s`` therefore gets the same numbers in every layout (1 process, N processes,
gradient accumulation), and a resumed run redraws exactly what an uninterrupted one would have.

Positions: the loader gives global step ``s`` the permutation slice ``perm[s*B:(s+1)*B]``
(``B`` = global batch) and rank ``r`` of ``W`` takes every ``W``-th entry, so micro-batch ``k``
(of size ``m``) of rank ``r`` holds the global positions ``(k*m + j)*W + r``, j < m
(:func:`rank_positions`).

The draws are float64 on the CPU (a few hundred kB per step at the paper size) and are moved to
the training device, so CPU and CUDA runs see the same numbers.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any, Sequence

import numpy as np
import torch

from skelcli.engine.hostside import host_side


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """All global RNG states as checkpoint-safe types (tensors, lists, numbers)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


def stream_seed(seed: int, epoch: int, step: int, stream: str) -> int:
    """A 63-bit generator seed for one named stream of one step (stable across processes and runs;
    Python's ``hash`` is salted per process, so sha256 is used)."""
    digest = hashlib.sha256(f"skelcli|{seed}|{epoch}|{step}|{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def rank_positions(micro_index: int, micro_batch: int, world_size: int, rank: int) -> torch.Tensor:
    """Global-batch positions (micro_batch,) long of micro-batch ``micro_index`` of ``rank``."""
    j = torch.arange(micro_batch, dtype=torch.long)
    return (micro_index * micro_batch + j) * world_size + rank


class SampleDraws:
    """Uniform draws for this process's rows of one global batch.

    seed, epoch, step: identify the step (the same on every rank); global_batch: B;
    positions: (n_local,) this process's positions within the global batch; device: where the
    returned tensors go. ``uniform(stream, shape)`` returns (n_local, *shape) float64 in [0, 1):
    row i is row ``positions[i]`` of a (B, *shape) draw from the stream's generator.
    Streams used by the masked-modeling methods: "crop" (2,), "rotation" (3,), "mask" (M, L).
    """

    def __init__(
        self,
        seed: int,
        epoch: int,
        step: int,
        global_batch: int,
        positions: torch.Tensor | Sequence[int],
        device: torch.device | str = "cpu",
    ) -> None:
        self.seed, self.epoch, self.step = int(seed), int(epoch), int(step)
        self.global_batch = int(global_batch)
        self.positions = torch.as_tensor(positions, dtype=torch.long).reshape(-1)
        if self.positions.numel() and (int(self.positions.min()) < 0 or int(self.positions.max()) >= self.global_batch):
            raise ValueError(f"positions must lie in [0, {self.global_batch})")
        self.device = torch.device(device)

    @property
    def n_local(self) -> int:
        return int(self.positions.numel())

    @host_side  # host-side seeding (sha256, a CPU Generator): eager under --compile (engine/hostside.py)
    def uniform(self, stream: str, shape: tuple[int, ...] = ()) -> torch.Tensor:
        gen = torch.Generator().manual_seed(stream_seed(self.seed, self.epoch, self.step, stream))
        full = torch.rand((self.global_batch, *shape), dtype=torch.float64, generator=gen)
        return full.index_select(0, self.positions).to(self.device)

    @host_side  # one graph break around the whole draw instead of one inside it
    def rows(self, stream: str, num_rows: int, width: int) -> torch.Tensor:
        """(num_rows, width) uniforms for per-sample sub-rows, e.g. the N*M person sequences of a
        batch of N clips (row n*R + k, R = num_rows / n_local)."""
        if num_rows % max(self.n_local, 1):
            raise ValueError(f"{num_rows} rows do not split over {self.n_local} samples")
        per = num_rows // max(self.n_local, 1)
        return self.uniform(stream, (per, width)).reshape(num_rows, width)


__all__ = ["SampleDraws", "rank_positions", "stream_seed", "seed_everything", "rng_state", "set_rng_state"]
