"""The HDF5 skeleton store (DESIGN.md "HDF5 layout", schema_version 1).

::

    / attrs: schema="skelcli.skeletons", schema_version=1, dataset, num_classes, created_by,
             preprocessing (JSON), source (JSON), class_names (optional JSON list)
    /joints            float32 (total_frames, 2, 25, 3), chunked + compressed
    /offsets           int64 (N+1)     sample i = joints[offsets[i]:offsets[i+1]]
    /label             int16 (N)       0-based
    /meta/{setup,camera,subject,replication,num_actors}   int16 (N)
    /name              str (N)
    /splits/<protocol>/{train,test}   int32 sorted indices
    /rejected/{name,reason}           str (R)

Writes are atomic: everything goes to ``<out>.tmp-<pid>`` and is moved over ``out`` with
``os.replace`` only when complete; on any exception (KeyboardInterrupt included) the temporary
file is removed and an existing ``out`` is untouched.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Union

import numpy as np

from skelcli import __version__
from skelcli.errors import SkelError

SCHEMA = "skelcli.skeletons"
SCHEMA_VERSION = 1
META_FIELDS = ("setup", "camera", "subject", "replication", "num_actors")
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
    """One sample to write: joints float32 (frames, 2, 25, 3); meta fields use -1 for unknown."""

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


@dataclass
class SampleSet:
    """Samples read from a store.

    joints: float32 (F, 2, 25, 3), all samples concatenated; sample k = joints[offsets[k]:offsets[k+1]].
    offsets: int64 (n+1); labels: int64 (n); names: n strings; valid_frames: int64 (n) frame counts.
    """

    joints: np.ndarray
    offsets: np.ndarray
    labels: np.ndarray
    names: list[str]
    valid_frames: np.ndarray


SplitsArg = Union[Mapping[str, Mapping[str, np.ndarray]], Callable[[list[str], dict[str, np.ndarray]], Mapping[str, Mapping[str, np.ndarray]]]]


def _open_checked(path: str | Path):
    import h5py

    path = Path(path)
    if not path.exists():
        raise SkelError(f"no such file: {path}")
    if not h5py.is_hdf5(str(path)):
        raise SkelError(f"{path} is not an HDF5 file (expected a store written by `skel prepare`)")
    f = h5py.File(str(path), "r")
    schema = f.attrs.get("schema")
    if isinstance(schema, bytes):
        schema = schema.decode()
    if schema != SCHEMA:
        f.close()
        raise SkelError(f"{path} is an HDF5 file but not a skelcli skeleton store (schema attr {schema!r})")
    version = int(f.attrs.get("schema_version", -1))
    if version > SCHEMA_VERSION:
        f.close()
        raise SkelError(
            f"{path} has schema_version {version}, newer than this skelcli supports ({SCHEMA_VERSION}); upgrade skelcli"
        )
    if version < 1:
        f.close()
        raise SkelError(f"{path} has an invalid schema_version {version}")
    return f


def _json_attr(f, key: str, default):
    v = f.attrs.get(key)
    if v is None:
        return default
    if isinstance(v, bytes):
        v = v.decode()
    return json.loads(v)


def open_info(path: str | Path) -> StoreInfo:
    """Validate the schema and return a :class:`StoreInfo`. SkelError for a non-HDF5 file, a foreign
    HDF5 file, or a newer schema_version."""
    with _open_checked(path) as f:
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
        )


def split_indices(path: str | Path, protocol: str, part: str) -> np.ndarray:
    """Indices (int64, sorted) of split ``protocol`` / ``part`` ("train" or "test")."""
    with _open_checked(path) as f:
        splits = f.get("splits")
        available = sorted(splits) if splits is not None else []
        if protocol not in available:
            raise SkelError(f"unknown protocol {protocol!r} for {Path(path).name}; available: {', '.join(available) or 'none'}")
        if part not in splits[protocol]:
            raise SkelError(f"unknown split part {part!r}; available: {', '.join(sorted(splits[protocol]))}")
        return splits[protocol][part][()].astype(np.int64)


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
    with _open_checked(path) as f:
        offsets = f["offsets"][()]
        n = len(offsets) - 1
        if len(idx) and (idx.min() < 0 or idx.max() >= n):
            raise SkelError(f"sample index out of range 0..{n - 1}")
        labels_all = f["label"][()]
        names_all = f["name"].asstr()[()] if len(idx) else np.array([], dtype=object)
        uniq = np.unique(idx)
        lengths = offsets[1:] - offsets[:-1]
        if len(uniq) == 0:
            block = np.zeros((0, *FRAME_SHAPE), dtype=np.float32)
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
                block = np.concatenate(parts) if parts else np.zeros((0, *FRAME_SHAPE), np.float32)
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
) -> int:
    """Stream ``samples`` into a new store at ``path`` atomically; return the number written.

    ``splits`` is either {protocol: {"train": idx, "test": idx}} or a callable
    ``(names, meta) -> that dict`` evaluated after all samples were written (meta holds the int
    arrays of META_FIELDS). ``rejected`` may likewise be a callable, evaluated at the end (so a
    streaming producer can fill it). An existing ``path`` is only replaced with ``force=True``.
    """
    import h5py

    out = Path(path)
    if out.exists() and not force:
        raise SkelError(f"{out} exists; pass force=True (--force) to overwrite")
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(out)
    str_dt = h5py.string_dtype("utf-8")
    try:
        with h5py.File(str(tmp), "w") as f:
            joints = f.create_dataset(
                "joints", shape=(0, *FRAME_SHAPE), maxshape=(None, *FRAME_SHAPE), dtype=np.float32,
                chunks=(CHUNK_FRAMES, *FRAME_SHAPE), **COMPRESSION,
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
                if j.ndim != 4 or j.shape[1:] != FRAME_SHAPE or len(j) == 0:
                    raise SkelError(f"sample {s.name}: joints shape {j.shape}, expected (frames>0, 2, 25, 3)")
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
        os.replace(tmp, out)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise
    return len(names)


def read_rejected(path: str | Path) -> list[tuple[str, str]]:
    """The /rejected table as [(name, reason)]."""
    with _open_checked(path) as f:
        if "rejected" not in f:
            return []
        return list(zip(f["rejected"]["name"].asstr()[()], f["rejected"]["reason"].asstr()[()]))


def read_fingerprint(path: str | Path) -> Optional[str]:
    """The input fingerprint recorded by `prepare` in the source attrs, or None if unreadable."""
    try:
        return open_info(path).source.get("fingerprint")
    except (SkelError, OSError, KeyError, ValueError):
        return None
