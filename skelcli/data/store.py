"""The HDF5 skeleton store (DESIGN.md "HDF5 layout", schema_version 2).

::

    / attrs: schema="skelcli.skeletons", schema_version=2, dataset, num_classes, created_by,
             preprocessing (JSON), source (JSON), class_names (optional JSON list),
             topology (JSON, :meth:`skelcli.topology.Topology.to_dict`)
    /joints            float32 (total_frames, 2, V, C), chunked + compressed; V joints and C values
                       (coordinates, then the confidence if the topology has one) of the topology
    /offsets           int64 (N+1)     sample i = joints[offsets[i]:offsets[i+1]]
    /label             int16 (N)       0-based
    /meta/{setup,camera,subject,replication,num_actors}   int16 (N)
    /name              str (N)
    /splits/<protocol>/{train,test}   int32 sorted indices
    /rejected/{name,reason}           str (R)

Version 1 files (no ``topology`` attr) are the ``ntu25`` layout, (frames, 2, 25, 3); they read as before.
Two person slots always: importers keep the two most present / highest-scoring persons.

Writes are atomic: everything goes to ``<out>.tmp-<pid>`` and is moved over ``out`` with
``os.replace`` only when complete; on any exception (KeyboardInterrupt included) the temporary
file is removed and an existing ``out`` is untouched. A process killed outright (``kill -9``, power
loss) leaves its temporary file behind: :func:`clean_temp_files` removes those of dead processes.
"""

from __future__ import annotations

import json
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Optional, Union

import numpy as np

from skelcli import __version__
from skelcli.errors import SkelError
from skelcli.topology import NTU25, Topology

SCHEMA = "skelcli.skeletons"
SCHEMA_VERSION = 2
META_FIELDS = ("setup", "camera", "subject", "replication", "num_actors")
#: Frame shape of the ``ntu25`` layout (and of every schema-1 file).
FRAME_SHAPE = (2, 25, 3)
#: Frames per /joints chunk: 256 x 600 B = 150 KB raw per chunk.
CHUNK_FRAMES = 256
#: Compression of /joints: lzf. Measured with examples/bench_parse.py on the 63 real NTU files
#: x20 (see docs/benchmarks.md): lzf 0.177 of the 300-frame padded float32 size with the fastest
#: decode (~2.4x gzip); gzip-1/4+shuffle 0.135 but ~2.4x slower reads; lzf+shuffle 0.148.
#: lzf ships with h5py (other HDF5 readers need the lzf plugin).
COMPRESSION = {"compression": "lzf"}


@dataclass
class Sample:
    """One sample to write: joints float32 (frames, 2, V, C) of the store's topology; meta fields use -1
    for unknown."""

    name: str
    joints: np.ndarray
    label: int
    setup: int = -1
    camera: int = -1
    subject: int = -1
    replication: int = -1
    num_actors: int = 1


@dataclass
class StoreInfo:
    """Summary of a store: split sizes are protocols[protocol][part] -> count."""

    path: Path
    dataset: str
    num_classes: int
    num_samples: int
    protocols: dict[str, dict[str, int]]
    schema_version: int
    preprocessing: dict
    source: dict
    class_names: Optional[list[str]]
    topology: Topology = NTU25


@dataclass
class SampleSet:
    """Samples read from a store.

    joints: float32 (F, 2, V, C), all samples concatenated; sample k = joints[offsets[k]:offsets[k+1]].
    offsets: int64 (n+1); labels: int64 (n); names: n strings; valid_frames: int64 (n) frame counts.
    """

    joints: np.ndarray
    offsets: np.ndarray
    labels: np.ndarray
    names: list[str]
    valid_frames: np.ndarray


SplitsArg = Union[Mapping[str, Mapping[str, np.ndarray]], Callable[[list[str], dict[str, np.ndarray]], Mapping[str, Mapping[str, np.ndarray]]]]


def _h5_detail(exc: BaseException) -> str:
    """The useful part of an h5py error: "Unable to ... (truncated file: eof = 10)" -> "truncated file: eof = 10"."""
    text = str(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc).strip()
    m = re.search(r"truncated file: eof = (\d+).*stored_eof = (\d+)", text)
    if m:
        return f"truncated: {m.group(1)} of {m.group(2)} bytes"
    m = re.search(r"\(([^()]*)\)\s*$", text)
    return m.group(1) if m else text


def _open_checked(path: str | Path):
    """The store at ``path`` opened read-only after the schema checks; every failure is a SkelError
    naming the file (missing, a folder, not HDF5, truncated or unreadable, foreign, newer schema)."""
    import h5py

    path = Path(path)
    if not path.exists():
        raise SkelError(f"no such file: {path}")
    if path.is_dir():
        raise SkelError(f"{path} is a folder, not an HDF5 file written by `skel prepare`")
    try:
        is_hdf5 = h5py.is_hdf5(str(path))
    except OSError as exc:
        raise SkelError(f"{path}: cannot read the file ({exc.strerror or exc})") from None
    if not is_hdf5:
        raise SkelError(f"{path} is not an HDF5 file (expected a store written by `skel prepare`)")
    try:
        f = h5py.File(str(path), "r")
    except OSError as exc:
        raise SkelError(f"{path}: cannot open the HDF5 file ({_h5_detail(exc)}); the file is truncated or corrupt: "
                        "re-run `skel prepare` with --force") from None
    try:
        schema = f.attrs.get("schema")
        version = int(f.attrs.get("schema_version", -1))
    except (OSError, KeyError, TypeError, ValueError) as exc:
        f.close()
        raise SkelError(f"{path}: cannot read the file's attributes ({_h5_detail(exc)})") from None
    if isinstance(schema, bytes):
        schema = schema.decode()
    if schema != SCHEMA:
        f.close()
        raise SkelError(f"{path} is an HDF5 file but not a skelcli skeleton store (schema attr {schema!r})")
    if version > SCHEMA_VERSION:
        f.close()
        raise SkelError(
            f"{path} has schema_version {version}, newer than this skelcli supports ({SCHEMA_VERSION}); upgrade skelcli"
        )
    if version < 1:
        f.close()
        raise SkelError(f"{path} has an invalid schema_version {version}")
    return f


@contextmanager
def open_store(path: str | Path) -> Iterator:
    """``with open_store(path) as f:`` the checked, read-only store. h5py failures inside the block (a
    missing dataset, a chunk that does not decode) become one SkelError naming the file."""
    f = _open_checked(path)
    try:
        yield f
    except (OSError, KeyError) as exc:
        raise SkelError(f"{path}: cannot read the store ({_h5_detail(exc)}); the file is incomplete or corrupt "
                        "(`skel info --verify` checks it; re-run `skel prepare` with --force)") from None
    finally:
        f.close()


def _json_attr(f, key: str, default):
    v = f.attrs.get(key)
    if v is None:
        return default
    if isinstance(v, bytes):
        v = v.decode()
    try:
        return json.loads(v)
    except ValueError:
        raise SkelError(f"{f.filename}: attribute {key!r} is not valid JSON; the file is corrupt") from None


def open_info(path: str | Path) -> StoreInfo:
    """Validate the schema and return a :class:`StoreInfo`. SkelError for a non-HDF5 file, a foreign
    HDF5 file, or a newer schema_version."""
    with open_store(path) as f:
        protocols = {p: {part: int(f["splits"][p][part].shape[0]) for part in f["splits"][p]} for p in f.get("splits", {})}
        return StoreInfo(
            path=Path(path),
            dataset=str(f.attrs["dataset"]),
            num_classes=int(f.attrs["num_classes"]),
            num_samples=int(f["offsets"].shape[0] - 1),
            protocols=protocols,
            schema_version=int(f.attrs["schema_version"]),
            preprocessing=_json_attr(f, "preprocessing", {}),
            source=_json_attr(f, "source", {}),
            class_names=_json_attr(f, "class_names", None),
            topology=_topology_attr(f),
        )


def _topology_attr(f) -> Topology:
    """The store's topology; ``ntu25`` for schema-1 files, which have none."""
    d = _json_attr(f, "topology", None)
    if d is None:
        return NTU25
    try:
        return Topology.from_dict(d, source=f"{f.filename}: topology attr")
    except SkelError as exc:
        raise SkelError(f"{exc}; the file is corrupt") from None


def read_topology(path: str | Path) -> Topology:
    """The topology recorded in the store at ``path`` (``ntu25`` for schema-1 files)."""
    with open_store(path) as f:
        return _topology_attr(f)


def split_indices(path: str | Path, protocol: str, part: str) -> np.ndarray:
    """Indices (int64, sorted) of split ``protocol`` / ``part`` ("train" or "test")."""
    with open_store(path) as f:
        splits = f.get("splits")
        available = sorted(splits) if splits is not None else []
        if protocol not in available:
            raise SkelError(f"unknown protocol {protocol!r} for {Path(path).name}; available: {', '.join(available) or 'none'}")
        if part not in splits[protocol]:
            raise SkelError(f"unknown split part {part!r}; available: {', '.join(sorted(splits[protocol]))}")
        return splits[protocol][part][()].astype(np.int64)


def read_labels(path: str | Path, indices=None) -> np.ndarray:
    """Labels (int64) of samples ``indices`` (all samples when None), without reading /joints."""
    with open_store(path) as f:
        labels = f["label"][()].astype(np.int64)
    if indices is None:
        return labels
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if len(idx) and (idx.min() < 0 or idx.max() >= len(labels)):
        raise SkelError(f"sample index out of range 0..{len(labels) - 1}")
    return labels[idx]


def _runs(sorted_idx: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) runs of consecutive indices in a sorted unique array."""
    if len(sorted_idx) == 0:
        return []
    breaks = np.nonzero(np.diff(sorted_idx) != 1)[0]
    starts = np.concatenate([[0], breaks + 1])
    ends = np.concatenate([breaks + 1, [len(sorted_idx)]])
    return [(int(sorted_idx[s]), int(sorted_idx[e - 1]) + 1) for s, e in zip(starts, ends)]


def read_samples(path: str | Path, indices) -> SampleSet:
    """Read samples ``indices`` (any order, duplicates allowed) into one :class:`SampleSet`, in the
    order given.

    The file is read in sorted order: runs of consecutive samples are one slice read each, and when
    the needed frames cover at least half of the span between the first and last needed sample,
    the whole span is read at once (one pass over the chunks instead of one read per sample).
    """
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    with open_store(path) as f:
        offsets = f["offsets"][()]
        n = len(offsets) - 1
        if len(idx) and (idx.min() < 0 or idx.max() >= n):
            raise SkelError(f"sample index out of range 0..{n - 1}")
        labels_all = f["label"][()]
        names_all = f["name"].asstr()[()] if len(idx) else np.array([], dtype=object)
        uniq = np.unique(idx)
        lengths = offsets[1:] - offsets[:-1]
        frame_shape = tuple(f["joints"].shape[1:])
        if len(uniq) == 0:
            block = np.zeros((0, *frame_shape), dtype=np.float32)
            starts_in_block = np.zeros(0, dtype=np.int64)
        else:
            span_lo, span_hi = int(offsets[uniq[0]]), int(offsets[uniq[-1] + 1])
            needed = int(lengths[uniq].sum())
            if needed * 2 >= span_hi - span_lo:
                block = f["joints"][span_lo:span_hi]
                starts_in_block = offsets[uniq] - span_lo
            else:
                parts, starts_in_block, pos = [], np.empty(len(uniq), dtype=np.int64), 0
                k = 0
                for a, b in _runs(uniq):
                    lo, hi = int(offsets[a]), int(offsets[b])
                    parts.append(f["joints"][lo:hi])
                    for s in range(a, b):
                        starts_in_block[k] = pos + offsets[s] - lo
                        k += 1
                    pos += hi - lo
                block = np.concatenate(parts) if parts else np.zeros((0, *frame_shape), np.float32)
        where = np.searchsorted(uniq, idx)
        lens = lengths[idx]
        out_offsets = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum(lens, out=out_offsets[1:])
        contiguous = len(idx) > 0 and idx[0] == uniq[0] and len(idx) == len(uniq) and np.all(np.diff(idx) == 1)
        if contiguous and len(block) == int(lengths[idx].sum()):
            joints = block  # a dense, in-order request: the span read is the answer
        else:
            shift = starts_in_block[where] - out_offsets[:-1]
            gather = np.arange(int(out_offsets[-1]), dtype=np.int64) + np.repeat(shift, lens)
            joints = block[gather] if len(idx) else block
        return SampleSet(
            joints=np.ascontiguousarray(joints, dtype=np.float32),
            offsets=out_offsets,
            labels=labels_all[idx].astype(np.int64),
            names=[str(names_all[i]) for i in idx],
            valid_frames=lens.astype(np.int64),
        )


def temp_path(out: Path) -> Path:
    """The temporary path a write goes to before the atomic rename."""
    return out.with_name(f"{out.name}.tmp-{os.getpid()}")


def clean_temp_files(out: Path) -> tuple[list[Path], list[Path]]:
    """Remove the ``<out>.tmp-<pid>`` files of processes that no longer exist; return (removed, kept).

    A PID counts as alive when ``os.kill(pid, 0)`` succeeds or is refused (EPERM: another user's
    process); those files are kept, as are names whose PID is 0 or out of range. PIDs are those of
    this machine: a temporary file written from another host onto a shared disk looks dead here.
    """
    out = Path(out)
    pattern = re.compile(re.escape(out.name) + r"\.tmp-(\d+)")
    removed: list[Path] = []
    kept: list[Path] = []
    try:
        entries = sorted(out.parent.iterdir())
    except OSError:
        return removed, kept
    for p in entries:
        m = pattern.fullmatch(p.name)
        if not m:
            continue
        pid = int(m.group(1))
        if pid > 0 and _process_gone(pid):
            try:
                p.unlink()
            except OSError:
                continue
            removed.append(p)
        else:
            kept.append(p)
    return removed, kept


def _process_gone(pid: int) -> bool:
    """True when no process ``pid`` exists (``os.kill(pid, 0)`` raises ProcessLookupError)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):
        return False
    return False


def _os_reason(exc: OSError) -> str:
    """``Permission denied`` for an OSError, also for h5py's long "Unable to create file (...)" text."""
    return os.strerror(exc.errno) if exc.errno else str(exc)


def write_store(
    path: str | Path,
    samples: Iterable[Sample],
    *,
    dataset: str,
    num_classes: int,
    splits: SplitsArg,
    rejected: Iterable[tuple[str, str]] | Callable[[], Iterable[tuple[str, str]]],
    preprocessing: dict,
    source: dict,
    force: bool,
    class_names: Optional[list[str]] = None,
    topology: Optional[Topology] = None,
) -> int:
    """Stream ``samples`` into a new store at ``path`` atomically; return the number written.

    ``splits`` is either {protocol: {"train": idx, "test": idx}} or a callable
    ``(names, meta) -> that dict`` evaluated after all samples were written (meta holds the int
    arrays of META_FIELDS). ``rejected`` may likewise be a callable, evaluated at the end (so a
    streaming producer can fill it). An existing ``path`` is only replaced with ``force=True``.
    ``topology`` (default ``ntu25``) fixes the frame shape (2, V, C) every sample must have.
    """
    import h5py

    out = Path(path)
    if out.is_dir():
        raise SkelError(f"{out} is a directory; give the path of the .h5 file to write")
    if out.exists() and not force:
        raise SkelError(f"{out} exists; pass force=True (--force) to overwrite")
    topo = topology if topology is not None else NTU25
    frame_shape = (2, topo.num_joints, topo.channels)
    tmp = temp_path(out)
    str_dt = h5py.string_dtype("utf-8")
    try:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            f = h5py.File(str(tmp), "w")
        except OSError as exc:
            raise SkelError(f"cannot write {out}: {_os_reason(exc)}") from None
        with f:
            joints = f.create_dataset(
                "joints", shape=(0, *frame_shape), maxshape=(None, *frame_shape), dtype=np.float32,
                chunks=(CHUNK_FRAMES, *frame_shape), **COMPRESSION,
            )
            offsets = [0]
            labels: list[int] = []
            names: list[str] = []
            meta: dict[str, list[int]] = {k: [] for k in META_FIELDS}
            buf: list[np.ndarray] = []
            buffered = 0

            def flush() -> None:
                nonlocal buf, buffered
                if not buf:
                    return
                block = np.concatenate(buf)
                n0 = joints.shape[0]
                joints.resize(n0 + len(block), axis=0)
                joints[n0:] = block
                buf, buffered = [], 0

            for s in samples:
                j = np.asarray(s.joints, dtype=np.float32)
                if j.ndim != 4 or j.shape[1:] != frame_shape or len(j) == 0:
                    raise SkelError(f"sample {s.name}: joints shape {j.shape}, expected (frames>0, {', '.join(map(str, frame_shape))}) "
                                    f"for topology {topo.name}")
                buf.append(j)
                buffered += len(j)
                offsets.append(offsets[-1] + len(j))
                labels.append(int(s.label))
                names.append(s.name)
                for k in META_FIELDS:
                    meta[k].append(int(getattr(s, k)))
                if buffered >= 64 * CHUNK_FRAMES:
                    flush()
            flush()

            meta_arr = {k: np.asarray(v, dtype=np.int16) for k, v in meta.items()}
            f.create_dataset("offsets", data=np.asarray(offsets, dtype=np.int64))
            f.create_dataset("label", data=np.asarray(labels, dtype=np.int16))
            g = f.create_group("meta")
            for k, v in meta_arr.items():
                g.create_dataset(k, data=v)
            f.create_dataset("name", data=np.asarray(names, dtype=object), dtype=str_dt)
            split_dict = splits(names, meta_arr) if callable(splits) else splits
            sg = f.create_group("splits")
            for protocol, parts in split_dict.items():
                pg = sg.create_group(protocol)
                for part, ind in parts.items():
                    ind = np.asarray(ind, dtype=np.int32)
                    if len(ind) and (ind.min() < 0 or ind.max() >= len(names)):
                        raise SkelError(f"split {protocol}/{part}: index out of range")
                    pg.create_dataset(part, data=ind)
            rej = list(rejected() if callable(rejected) else rejected)
            rg = f.create_group("rejected")
            rg.create_dataset("name", data=np.asarray([r[0] for r in rej], dtype=object), dtype=str_dt)
            rg.create_dataset("reason", data=np.asarray([r[1] for r in rej], dtype=object), dtype=str_dt)
            f.attrs["schema"] = SCHEMA
            f.attrs["schema_version"] = SCHEMA_VERSION
            f.attrs["dataset"] = dataset
            f.attrs["num_classes"] = int(num_classes)
            f.attrs["created_by"] = f"skelcli {__version__}"
            f.attrs["preprocessing"] = json.dumps(preprocessing, sort_keys=True)
            f.attrs["source"] = json.dumps(source, sort_keys=True)
            if class_names is not None:
                f.attrs["class_names"] = json.dumps(list(class_names))
            f.attrs["topology"] = json.dumps(topo.to_dict())
        try:
            os.replace(tmp, out)
        except OSError as exc:
            raise SkelError(f"cannot move {tmp.name} over {out}: {_os_reason(exc)}") from None
    except OSError as exc:  # e.g. the disk filled up while writing the data
        tmp.unlink(missing_ok=True)
        raise SkelError(f"writing {out} failed: {_os_reason(exc)}; any previous {out.name} is unchanged") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return len(names)


def read_rejected(path: str | Path) -> list[tuple[str, str]]:
    """The /rejected table as [(name, reason)]."""
    with open_store(path) as f:
        if "rejected" not in f:
            return []
        return list(zip(f["rejected"]["name"].asstr()[()], f["rejected"]["reason"].asstr()[()]))


def read_fingerprint(path: str | Path) -> Optional[str]:
    """The input fingerprint recorded by `prepare` in the source attrs, or None if unreadable."""
    try:
        return open_info(path).source.get("fingerprint")
    except (SkelError, OSError, KeyError, ValueError):
        return None
