"""The training data loader: a split of a prepared HDF5 file -> batches of raw variable-length clips.

Data flow (DESIGN.md "Data flow"): the split is read into memory once as one ragged array of frames
plus offsets (no 300-frame padding); when it would exceed a memory budget, clips are instead read
lazily per batch from the HDF5 file (one file handle per process, never shared across ``fork``).
A background thread pads the next batches into (pinned) host tensors while the current step runs;
the main thread hands them to the device with ``non_blocking=True``. Crop / resize / rotation are
*not* done here: methods do them on the training device with :mod:`skelcli.data.clips`.

Layouts: stored frames are (F, M=2, V=25, C=3) float32 with ``offsets`` (n+1) so that clip i is
``frames[offsets[i]:offsets[i+1]]``; a batch is a :class:`~skelcli.methods.base.ClipBatch` with
joints (N, M, T_max, V, C) zero-padded to the longest clip of the batch, valid (N,), label (N,).

Ordering and sharding follow ``torch.utils.data.DistributedSampler``: the permutation of epoch e
is ``randperm(n)`` from a generator seeded with ``seed + e``; it is padded (by repeating its head)
to a multiple of ``world_size`` and rank r takes ``indices[r::world_size]``.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from skelcli.errors import SkelError
from skelcli.data.clips import ClipBatch

_BYTES_PER_FRAME_VALUE = 4  # float32

# One read-only h5py handle per (process id, file): a handle opened before a fork is never reused
# by the child (HDF5 handles are not fork-safe), the child opens its own.
_HANDLES: dict[tuple[int, str], object] = {}
_HANDLES_LOCK = threading.Lock()


def _h5_handle(path: Path):
    import h5py

    key = (os.getpid(), str(path))
    with _HANDLES_LOCK:
        handle = _HANDLES.get(key)
        if handle is None or not handle.id.valid:
            handle = h5py.File(path, "r", rdcc_nbytes=64 * 1024 * 1024)
            _HANDLES[key] = handle
    return handle


class ClipDataset:
    """A split's clips, in memory or read lazily from the HDF5 file.

    In memory: ``ClipDataset(joints, offsets, labels, names=None, valid=None)`` with joints
    (F, M, V, C) float32 frames of all clips concatenated, offsets (n+1,) int64 starting at 0,
    labels (n,). ``valid`` (n,) defaults to the stored lengths ``offsets[1:] - offsets[:-1]``.
    """

    def __init__(
        self,
        joints: np.ndarray | torch.Tensor,
        offsets: np.ndarray | Sequence[int],
        labels: np.ndarray | Sequence[int],
        names: Sequence[str] | None = None,
        valid: np.ndarray | Sequence[int] | None = None,
    ) -> None:
        frames = torch.as_tensor(np.ascontiguousarray(joints) if isinstance(joints, np.ndarray) else joints)
        if frames.ndim != 4:
            raise SkelError(f"clip frames must be (F, M, V, C), got shape {tuple(frames.shape)}")
        offsets = np.asarray(offsets, dtype=np.int64)
        self._init_index(offsets, labels, names, valid, frames.shape[0])
        self._frames: torch.Tensor | None = frames.to(torch.float32).contiguous()
        self._frame_shape = tuple(frames.shape[1:])
        self._path: Path | None = None
        self._file_offsets: np.ndarray | None = None

    def _init_index(self, offsets: np.ndarray, labels, names, valid, total_frames: int) -> None:
        if offsets.ndim != 1 or offsets.size < 1 or offsets[0] != 0 or np.any(np.diff(offsets) < 0):
            raise SkelError("clip offsets must be a non-decreasing 1-D array of n+1 entries starting at 0")
        if offsets[-1] != total_frames:
            raise SkelError(f"offsets end at {offsets[-1]} but there are {total_frames} frames")
        n = offsets.size - 1
        self.offsets = offsets
        self.lengths = np.diff(offsets)
        self.labels = np.asarray(labels, dtype=np.int64)
        if self.labels.shape != (n,):
            raise SkelError(f"{self.labels.size} labels for {n} clips")
        self.names = list(names) if names is not None else [str(i) for i in range(n)]
        if len(self.names) != n:
            raise SkelError(f"{len(self.names)} names for {n} clips")
        self.valid = self.lengths.copy() if valid is None else np.minimum(np.asarray(valid, dtype=np.int64), self.lengths)

    # ------------------------------------------------------------------ construction from a store
    @classmethod
    def from_store(
        cls,
        path: str | Path,
        protocol: str,
        part: str,
        limit: int | None = None,
        memory_budget_gb: float = 8.0,
    ) -> "ClipDataset":
        """The clips of split ``protocol``/``part`` (e.g. "xsub"/"train") of a prepared file.

        Reads them into memory with ``store.read_samples`` when the split's frames take at most
        ``memory_budget_gb``; otherwise keeps only the index and reads per batch from the file.
        ``limit`` keeps the first N clips of the split (debugging).
        """
        from skelcli.data import store

        path = Path(path)
        store.open_info(path)  # schema check: a foreign or newer file fails here with a clear message
        indices = np.asarray(store.split_indices(path, protocol, part), dtype=np.int64)
        if limit is not None:
            indices = indices[:limit]
        if indices.size == 0:
            raise SkelError(f"{path}: split {protocol}/{part} is empty")
        import h5py

        with h5py.File(path, "r") as f:
            file_offsets = np.asarray(f["offsets"][...], dtype=np.int64)
            frame_shape = tuple(f["joints"].shape[1:])
        lengths = file_offsets[indices + 1] - file_offsets[indices]
        nbytes = int(lengths.sum()) * int(np.prod(frame_shape)) * _BYTES_PER_FRAME_VALUE
        if nbytes <= memory_budget_gb * 1024**3:
            s = store.read_samples(path, indices)
            return cls(s.joints, s.offsets, s.labels, names=list(s.names), valid=s.valid_frames)
        return cls._lazy(path, indices, file_offsets, frame_shape)

    @classmethod
    def _lazy(cls, path: Path, indices: np.ndarray, file_offsets: np.ndarray, frame_shape: tuple) -> "ClipDataset":
        handle = _h5_handle(path)
        self = cls.__new__(cls)
        lengths = file_offsets[indices + 1] - file_offsets[indices]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        labels = np.asarray(handle["label"][...], dtype=np.int64)[indices]
        names = [str(n) for n in handle["name"].asstr()[...][indices]]
        self._init_index(offsets, labels, names, None, int(offsets[-1]))  # stored clips are all valid frames
        self._frames = None
        self._frame_shape = frame_shape
        self._path = path
        self._file_offsets = file_offsets[indices]
        return self

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.labels)

    @property
    def in_memory(self) -> bool:
        return self._frames is not None

    @property
    def nbytes(self) -> int:
        """Bytes of the split's frames (whether or not they are held in memory)."""
        return int(self.lengths.sum()) * int(np.prod(self._frame_shape)) * _BYTES_PER_FRAME_VALUE

    def clip(self, i: int) -> torch.Tensor:
        """Clip ``i`` as stored: (L, M, V, C) float32."""
        if self._frames is not None:
            return self._frames[self.offsets[i] : self.offsets[i + 1]]
        start = int(self._file_offsets[i])
        data = _h5_handle(self._path)["joints"][start : start + int(self.lengths[i])]
        return torch.from_numpy(np.asarray(data, dtype=np.float32))

    def collate(
        self, indices: Sequence[int] | np.ndarray, pin_memory: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pad clips ``indices`` into host tensors: joints (N, M, T_max, V, C) float32 zero-padded
        to the longest clip, valid (N,) long, label (N,) long (pinned when ``pin_memory``)."""
        indices = np.asarray(indices, dtype=np.int64)
        t_max = max(int(self.lengths[indices].max()), 1) if indices.size else 1
        m, v, c = self._frame_shape
        if self._frames is not None and self._frames.shape[0] > 0:
            joints = self._gather_padded(indices, t_max, pin_memory)
        else:
            joints = torch.zeros((indices.size, m, t_max, v, c), dtype=torch.float32, pin_memory=pin_memory)
            file_order = self._file_offsets[indices] if self._file_offsets is not None else indices
            for k in np.argsort(file_order, kind="stable"):  # file order suits the HDF5 chunk cache
                i = int(indices[k])
                if self.lengths[i]:
                    joints[k, :, : self.lengths[i]].copy_(self.clip(i).transpose(0, 1))
        valid = torch.from_numpy(self.valid[indices])
        label = torch.from_numpy(self.labels[indices])
        if pin_memory:
            valid, label = valid.pin_memory(), label.pin_memory()
        return joints, valid, label

    def _gather_padded(self, indices: np.ndarray, t_max: int, pin_memory: bool) -> torch.Tensor:
        """In-memory padding as one row gather: output row (k, m, t) <- frame offsets[i_k] + t,
        person m, of the frames viewed as (F*M, V*C) rows; rows past a clip's end are then zeroed."""
        m, v, c = self._frame_shape
        n = indices.size
        t = np.arange(t_max, dtype=np.int64)
        frame = self.offsets[indices][:, None] + t[None, :]  # (N, T_max)
        inside = t[None, :] < self.lengths[indices][:, None]
        frame = np.where(inside, frame, 0)
        rows = torch.from_numpy((frame[:, None, :] * m + np.arange(m)[None, :, None]).reshape(-1))  # (N*M*T_max,)
        joints = torch.empty((n, m, t_max, v, c), dtype=torch.float32, pin_memory=pin_memory)
        flat = joints.view(n * m * t_max, v * c)
        torch.index_select(self._frames.view(-1, v * c), 0, rows, out=flat)
        for k, length in enumerate(self.lengths[indices].tolist()):
            if length < t_max:
                joints[k, :, length:] = 0.0  # a memset per clip; cheaper than a masked pass
        return joints


# ---------------------------------------------------------------------------------------- loader
@dataclass
class LoaderStats:
    """Timing of one pass over the loader (seconds): ``wait_s`` is the time the consumer spent
    blocked on data (what the engine should log), ``prepare_s`` the background padding/reading."""

    batches: int = 0
    samples: int = 0
    wait_s: float = 0.0
    prepare_s: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {"batches": self.batches, "samples": self.samples, "wait_s": self.wait_s, "prepare_s": self.prepare_s}


_END = object()


class ClipLoader:
    """Iterable of :class:`ClipBatch` on ``device``, deterministic for a seed.

    shuffle: a new permutation per epoch (``set_epoch``); drop_last: drop this rank's final short
    batch; rank/world_size: DistributedSampler-style sharding; prefetch: batches prepared ahead by a
    background thread (0 = prepare in the calling thread). After each yielded batch,
    ``last_indices`` holds its dataset indices and ``last_wait_s`` the seconds spent waiting for it;
    ``stats`` accumulates over the current pass.
    """

    def __init__(
        self,
        dataset: ClipDataset,
        batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = True,
        seed: int = 0,
        device: str | torch.device = "cpu",
        rank: int = 0,
        world_size: int = 1,
        prefetch: int = 2,
    ) -> None:
        if batch_size < 1:
            raise SkelError(f"batch size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise SkelError(f"rank {rank} is not in [0, world_size={world_size})")
        if len(dataset) == 0:
            raise SkelError("the dataset has no clips")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.device = torch.device(device)
        self.rank = rank
        self.world_size = world_size
        self.prefetch = max(0, int(prefetch))
        self.epoch = 0
        self.start_batch = 0
        self.pin_memory = self.device.type == "cuda" and torch.cuda.is_available()
        self.last_indices: np.ndarray | None = None
        self.last_wait_s = 0.0
        self.stats = LoaderStats()
        if len(self) == 0:
            raise SkelError(
                f"{len(dataset)} clips give no full batch of {batch_size} per rank (world size {world_size}); "
                "lower the batch size or disable drop_last"
            )

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the shuffle of ``epoch`` (seed + epoch), as ``DistributedSampler.set_epoch``.
        ``start_batch`` > 0 makes the next pass begin at that batch of the epoch without reading
        the ones before it (mid-epoch resume); later passes start at 0 again."""
        self.epoch = int(epoch)
        self.start_batch = max(0, int(start_batch))

    @property
    def samples_per_rank(self) -> int:
        return -(-len(self.dataset) // self.world_size)

    def __len__(self) -> int:
        per_rank = self.samples_per_rank
        return per_rank // self.batch_size if self.drop_last else -(-per_rank // self.batch_size)

    def epoch_indices(self) -> np.ndarray:
        """This rank's dataset indices for the current epoch, in order (before batching)."""
        n = len(self.dataset)
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=gen).numpy()
        else:
            order = np.arange(n)
        total = self.samples_per_rank * self.world_size
        if total > n:  # pad by repeating the head (as many times as needed)
            order = np.concatenate([order, np.resize(order, total - n)])
        return order[self.rank : total : self.world_size].astype(np.int64)

    def _batches(self) -> list[np.ndarray]:
        order = self.epoch_indices()
        first, self.start_batch = self.start_batch, 0
        return [order[b * self.batch_size : (b + 1) * self.batch_size] for b in range(first, len(self))]

    def _to_device(self, host: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> ClipBatch:
        joints, valid, label = host
        if self.device.type == "cpu":
            return ClipBatch(joints, valid, label)
        nb = self.pin_memory
        return ClipBatch(
            joints.to(self.device, non_blocking=nb), valid.to(self.device, non_blocking=nb), label.to(self.device, non_blocking=nb)
        )

    def __iter__(self) -> Iterator[ClipBatch]:
        self.stats = LoaderStats()
        batches = self._batches()
        if self.prefetch == 0:
            yield from self._iter_sync(batches)
        else:
            yield from self._iter_threaded(batches)

    def _record(self, idx: np.ndarray, wait: float, prepare: float) -> None:
        self.last_indices = idx
        self.last_wait_s = wait
        self.stats.batches += 1
        self.stats.samples += int(idx.size)
        self.stats.wait_s += wait
        self.stats.prepare_s += prepare

    def _iter_sync(self, batches: list[np.ndarray]) -> Iterator[ClipBatch]:
        for idx in batches:
            t0 = time.perf_counter()
            batch = self._to_device(self.dataset.collate(idx, self.pin_memory))
            elapsed = time.perf_counter() - t0
            self._record(idx, elapsed, elapsed)
            yield batch

    def _iter_threaded(self, batches: list[np.ndarray]) -> Iterator[ClipBatch]:
        slots: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def put(item: object) -> bool:
            while not stop.is_set():
                try:
                    slots.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    continue
            return False

        def work() -> None:
            try:
                for idx in batches:
                    t0 = time.perf_counter()
                    host = self.dataset.collate(idx, self.pin_memory)
                    if not put((idx, host, time.perf_counter() - t0)):
                        return
                put(_END)
            except BaseException as exc:  # handed to the consumer, re-raised there
                put(exc)

        worker = threading.Thread(target=work, name="skelcli-loader", daemon=True)
        worker.start()
        try:
            while True:
                t0 = time.perf_counter()
                item = slots.get()
                if item is _END:
                    break
                if isinstance(item, BaseException):
                    raise item
                idx, host, prepare = item
                batch = self._to_device(host)
                self._record(idx, time.perf_counter() - t0, prepare)
                yield batch
        finally:
            stop.set()
            worker.join(timeout=5.0)
