"""The training data loader: a split of a prepared HDF5 file -> batches of raw variable-length clips.

Data flow (DESIGN.md "Data flow"): the split is read into memory once as one ragged array of frames
plus offsets (no 300-frame padding); when it would exceed a memory budget, clips are instead read
lazily per batch from the HDF5 file (one file handle per process, never shared across ``fork``).
A background thread pads the next batches into (pinned) host tensors while the current step runs;
the main thread hands them to the device with ``non_blocking=True``. Crop / resize / rotation are
*not* done here: methods do them on the training device with :mod:`skelcli.data.clips`.

Parallel lazy reads (``ClipLoader(num_workers=N)``): the batch order is decided in the parent and N
worker processes (``torch.utils.data.DataLoader`` workers, at most ``N * prefetch`` batches in flight)
each open their own h5py handle and pad whole batches; batches arrive in order and are bit-identical
to ``num_workers=0``. Workers live for one pass and are shut down when it ends, breaks or raises, and
by ``close()`` / leaving a ``with`` block.

Shared decompressed cache (``ClipDataset.from_store(shared_cache=True | dir)``): the split's frames
are decompressed once into ``<file>.<protocol>-<part>-<n>.<fingerprint>.frames.npy`` (written
atomically by local rank 0, the other ranks wait on a barrier or on a lock file) and every process
maps it read-only, so the OS page cache holds one copy for all DDP ranks of a machine.

Layouts: stored frames are (F, M=2, V=25, C=3) float32 with ``offsets`` (n+1) so that clip i is
``frames[offsets[i]:offsets[i+1]]``; a batch is a :class:`~skelcli.methods.base.ClipBatch` with
joints (N, M, T_max, V, C) zero-padded to the longest clip of the batch, valid (N,), label (N,).

Ordering and sharding follow ``torch.utils.data.DistributedSampler``: the permutation of epoch e
is ``randperm(n)`` from a generator seeded with ``seed + e``; it is padded (by repeating its head)
to a multiple of ``world_size`` and rank r takes ``indices[r::world_size]``.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import queue
import threading
import time
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.utils.data

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
        self._mmap_path: Path | None = None

    def __getstate__(self) -> dict:
        """Pickled for worker processes: a mapped split travels as its cache path, not its frames."""
        state = dict(self.__dict__)
        if state.get("_mmap_path") is not None:
            state["_frames"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self.__dict__.get("_mmap_path") is not None and self._frames is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                self._frames = torch.from_numpy(np.load(self._mmap_path, mmap_mode="r"))

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
        shared_cache: bool | str | Path = False,
    ) -> "ClipDataset":
        """The clips of split ``protocol``/``part`` (e.g. "xsub"/"train") of a prepared file.

        Reads them into memory with ``store.read_samples`` when the split's frames take at most
        ``memory_budget_gb``; otherwise keeps only the index and reads per batch from the file.
        ``limit`` keeps the first N clips of the split (debugging).

        ``shared_cache`` (True: next to the file; a path: that folder) instead maps a decompressed
        copy of the split's frames read-only (written once, see :func:`shared_frames_cache`), whatever
        the memory budget: the ranks of a machine share one copy in the page cache. Inside a process
        group every rank must call this (there is a barrier).
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
        if shared_cache:
            folder = path.parent if shared_cache is True else Path(shared_cache)
            cache = shared_frames_cache(path, protocol, part, indices, folder)
            lazy = cls._lazy(path, indices, file_offsets, frame_shape)  # the index (labels, names) only
            with warnings.catch_warnings():  # a read-only map is what we want; torch warns about it
                warnings.simplefilter("ignore", UserWarning)
                frames = np.load(cache, mmap_mode="r")
                self = cls(frames, lazy.offsets, lazy.labels, names=lazy.names)
            self._mmap_path = cache
            return self
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
        self._mmap_path = None
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
        self, indices: Sequence[int] | np.ndarray, pin_memory: bool = False, shared: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pad clips ``indices`` into host tensors: joints (N, M, T_max, V, C) float32 zero-padded
        to the longest clip, valid (N,) long, label (N,) long (pinned when ``pin_memory``; joints
        allocated in shared memory when ``shared``, so a worker process hands them over uncopied)."""
        indices = np.asarray(indices, dtype=np.int64)
        t_max = max(int(self.lengths[indices].max()), 1) if indices.size else 1
        m, v, c = self._frame_shape
        if self._frames is not None:
            joints = _gather_padded(self._frames, self.offsets[indices], self.lengths[indices], t_max, pin_memory, shared)
        else:
            joints = self._read_padded(indices, t_max, pin_memory, shared)
        valid = torch.from_numpy(self.valid[indices])
        label = torch.from_numpy(self.labels[indices])
        if pin_memory:
            valid, label = valid.pin_memory(), label.pin_memory()
        return joints, valid, label

    def _read_padded(self, indices: np.ndarray, t_max: int, pin_memory: bool, shared: bool) -> torch.Tensor:
        """Lazy padding: the batch's clips are read from the file in file order (which suits the
        HDF5 chunk cache) into one staging block of (sum L, M, V, C) frames, then padded by the same
        single row gather as the in-memory path (not one transposed copy per clip)."""
        lengths = self.lengths[indices]
        file_start = self._file_offsets[indices]
        order = np.argsort(file_start, kind="stable")
        stage_start = np.empty(indices.size, dtype=np.int64)
        stage_start[order] = np.concatenate([[0], np.cumsum(lengths[order])[:-1]])
        stage = np.empty((int(lengths.sum()), *self._frame_shape), dtype=np.float32)
        dset = _h5_handle(self._path)["joints"]
        for k in order.tolist():
            if lengths[k]:
                a, s0, n = int(stage_start[k]), int(file_start[k]), int(lengths[k])
                stage[a : a + n] = dset[s0 : s0 + n]
        return _gather_padded(torch.from_numpy(stage), stage_start, lengths, t_max, pin_memory, shared)


def _gather_padded(frames: torch.Tensor, starts: np.ndarray, lengths: np.ndarray, t_max: int, pin_memory: bool,
                   shared: bool = False) -> torch.Tensor:
    """Pad N clips held in ``frames`` (F, M, V, C) -- clip k is ``frames[starts[k]:starts[k] + lengths[k]]``
    -- into (N, M, t_max, V, C) as one row gather: output row (k, m, t) <- frame starts[k] + t, person
    m, of the frames viewed as (F*M, V*C) rows; rows past a clip's end are then zeroed."""
    _, m, v, c = frames.shape
    n = len(starts)
    t = np.arange(t_max, dtype=np.int64)
    frame = np.asarray(starts, dtype=np.int64)[:, None] + t[None, :]  # (N, T_max)
    inside = t[None, :] < np.asarray(lengths)[:, None]
    frame = np.where(inside, frame, 0)
    rows = torch.from_numpy((frame[:, None, :] * m + np.arange(m)[None, :, None]).reshape(-1))  # (N*M*T_max,)
    shape = (n, m, t_max, v, c)
    joints = _shared_empty(shape) if shared else torch.empty(shape, dtype=torch.float32, pin_memory=pin_memory)
    if frames.shape[0] == 0 or n == 0:  # nothing to gather (empty clips only)
        return joints.zero_()
    flat = joints.view(n * m * t_max, v * c)
    torch.index_select(frames.reshape(-1, v * c), 0, rows, out=flat)
    for k, length in enumerate(np.asarray(lengths).tolist()):
        if length < t_max:
            joints[k, :, length:] = 0.0  # a memset per clip; cheaper than a masked pass
    return joints


def _shared_empty(shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised float32 tensor in shared memory (as DataLoader's own collate allocates)."""
    storage = torch.empty(0)._typed_storage()._new_shared(int(np.prod(shape)), device="cpu")
    return torch.empty(0).new(storage).view(shape)


# ------------------------------------------------------------------------ shared decompressed cache
def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def shared_frames_cache(path: str | Path, protocol: str, part: str, indices: np.ndarray, folder: str | Path) -> Path:
    """The decompressed frames of clips ``indices`` of ``path`` as a ``.npy`` file in ``folder``
    (float32 (F, M, V, C), clips concatenated in the order of ``indices``), built if missing.

    Named ``<file>.<protocol>-<part>-<n>.<key>.frames.npy``, the key covering the file's fingerprint
    (resolved path, size, mtime) and the indices, so a changed file or split is never served stale;
    the builder removes older caches of the same file and split. Built into a temporary file and
    moved into place (``os.replace``) under an exclusive lock file, so a reader only ever sees a
    whole cache and concurrent processes build it once. In a torch.distributed process group the
    local rank 0 (``LOCAL_RANK``, else the group rank) builds it and the other ranks wait on a
    barrier (collective: every rank must call this); a rank that still finds no cache (another
    machine's folder) builds its own.
    """
    path = Path(path)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    from skelcli.eval.features import file_fingerprint  # resolved path, size, mtime_ns

    indices = np.asarray(indices, dtype=np.int64)
    key = hashlib.sha256(f"{file_fingerprint(path)}|{hashlib.sha256(indices.tobytes()).hexdigest()}".encode()).hexdigest()[:16]
    stem = f"{path.name}.{protocol}-{part}-{indices.size}"
    target = folder / f"{stem}.{key}.frames.npy"
    if _distributed():
        local = int(os.environ.get("LOCAL_RANK", torch.distributed.get_rank()))
        failure: BaseException | None = None
        if local == 0 and not target.exists():
            try:
                _build_frames_cache(path, indices, target, stem)
            except Exception as exc:  # reach the barrier anyway: the other ranks must not hang on it
                failure = exc
        torch.distributed.barrier()
        if failure is not None:
            raise failure
    if not target.exists():
        _build_frames_cache(path, indices, target, stem)
    return target


def _build_frames_cache(path: Path, indices: np.ndarray, target: Path, stem: str, clips_per_read: int = 1024) -> None:
    from skelcli.data import store

    lock_path = target.parent / f"{stem}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second builder waits here, then finds the cache
        try:
            if target.exists():
                return
            import h5py

            with h5py.File(path, "r") as f:
                file_offsets = np.asarray(f["offsets"][...], dtype=np.int64)
                frame_shape = tuple(f["joints"].shape[1:])
            total = int((file_offsets[indices + 1] - file_offsets[indices]).sum())
            tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
            try:
                out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(total, *frame_shape))
                pos = 0
                for lo in range(0, indices.size, clips_per_read):  # bounded memory: larger-than-RAM splits
                    block = store.read_samples(path, indices[lo : lo + clips_per_read]).joints
                    out[pos : pos + len(block)] = block
                    pos += len(block)
                out.flush()
                del out
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
            for old in target.parent.glob(f"{stem}.*.frames.npy"):  # earlier versions of the file
                if old != target:
                    old.unlink(missing_ok=True)  # open maps of it stay valid (POSIX)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


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
    background thread (0 = prepare in the calling thread); num_workers: worker processes that read and
    pad whole batches instead of the thread (0: none), ``prefetch`` batches each in flight, started by
    ``worker_context`` ("fork", "spawn", "forkserver"; None: the platform's default) for each pass;
    the batches are exactly those of num_workers=0. ``close()`` (or leaving a ``with`` block) ends a
    running pass and its workers. After each yielded batch,
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
        num_workers: int = 0,
        worker_context: str | None = None,
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
        if num_workers < 0:
            raise SkelError(f"num_workers must be >= 0, got {num_workers}")
        self.num_workers = int(num_workers)
        self.worker_context = worker_context
        self._passes: "weakref.WeakSet" = weakref.WeakSet()
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
        gen = self._iterate()
        self._passes.add(gen)
        return gen

    def _iterate(self) -> Iterator[ClipBatch]:
        self.stats = LoaderStats()
        batches = self._batches()
        if self.num_workers > 0:
            yield from self._iter_workers(batches)
        elif self.prefetch == 0:
            yield from self._iter_sync(batches)
        else:
            yield from self._iter_threaded(batches)

    def close(self) -> None:
        """End every running pass: its prefetch thread or worker processes stop (and are joined)."""
        for gen in list(self._passes):
            try:
                gen.close()
            except ValueError:  # running in another thread right now; it ends when that pass does
                pass

    def __enter__(self) -> "ClipLoader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

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

    def _iter_workers(self, batches: list[np.ndarray]) -> Iterator[ClipBatch]:
        from torch.utils.data import DataLoader

        if not batches:
            return
        loader = DataLoader(
            _BatchReader(self.dataset),
            batch_size=None,  # the sampler yields whole batches of indices, decided here
            sampler=batches,
            collate_fn=_as_is,
            num_workers=min(self.num_workers, len(batches)),
            prefetch_factor=max(1, self.prefetch),
            pin_memory=self.pin_memory,
            multiprocessing_context=self.worker_context,
            persistent_workers=False,
        )
        it = iter(loader)
        try:
            for idx in batches:
                t0 = time.perf_counter()
                joints, valid, label, prepare = next(it)
                batch = self._to_device((joints, valid, label))
                self._record(idx, time.perf_counter() - t0, prepare)
                yield batch
        finally:
            shutdown = getattr(it, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()  # joins the workers (terminates any that hang): no zombies left
            del it

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


class _BatchReader(torch.utils.data.Dataset):
    """A worker's view of the dataset: key = one batch's dataset indices -> its padded host tensors
    and the seconds spent (the lazy path opens one h5py handle per worker process)."""

    def __init__(self, dataset: ClipDataset) -> None:
        self.dataset = dataset

    def __getitem__(self, indices: np.ndarray):
        t0 = time.perf_counter()
        joints, valid, label = self.dataset.collate(indices, shared=torch.utils.data.get_worker_info() is not None)
        return joints, valid, label, time.perf_counter() - t0


def _as_is(item):
    return item
