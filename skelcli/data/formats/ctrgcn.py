"""``ctrgcn-npz``: the NTU ``.npz`` files of CTR-GCN / CrosSCLR / SLiM / MAMP (spec/formats.md 2).

Layout: an uncompressed ``np.savez`` with ``x_train`` / ``x_test`` (N, T_max, M * V * C) float32 and
``y_train`` / ``y_test`` (N, K) one-hot (K = 60 or 120 for NTU). A frame row is persons, then
joints, then coordinates: ``x.reshape(N, T, M, V, C)`` is already this toolkit's (T, M, V, C).
With ``ntu25``, M = 150 / 75 = 2; with another ``--topology``, M = D / (V * C) must be an integer.

* protocol: ``--protocol`` per ``--raw`` (xsub, xview, xset); without it the file name decides when it
  is unambiguous: ``*_XSub`` / ``*_CSub`` / ``NTU60_CS`` / ``NTU120_CS`` -> xsub, ``*_XView`` /
  ``NTU60_CV`` -> xview, ``*_XSet`` / ``*_CSet`` / ``NTU120_CV`` (SLiM's name for X-Set) -> xset;
* names ``{protocol}_{train|test}_{index:06d}`` (the files carry no clip names); splits protocol ->
  train / test. Two files (xsub and xview) hold the same clips twice, under different names;
* frames: the zero padding after the last non-zero frame is cut (a zero frame inside a clip stays);
* labels: a row with exactly one 1 and zeros elsewhere, else the clip is rejected;
* persons: NTU60 zero-fills a lone actor's slot 2 (counted as one actor by ``prepare``); NTU120
  (K = 120) copies actor 1 into slot 2: such a clip keeps the copy, exactly as ``skel prepare ntu120``
  does by default, and records one actor;
* the arrays are streamed row by row from the archive, so a 20 GB NTU120 file is not loaded whole.
"""

from __future__ import annotations

import ast
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from skelcli.data.formats import PERSONS, Clip, Importer, ImportOptions, Imported, register, resolve_topology
from skelcli.errors import SkelError
from skelcli.topology import Topology

PROTOCOLS = ("xsub", "xview", "xset")
KEYS = ("x_train", "y_train", "x_test", "y_test")
#: Rows read from the archive at a time.
CHUNK_ROWS = 32

_NAME = re.compile(r"^(?P<prefix>.*?)_(?P<tag>xsub|csub|xview|xset|cset|cs|cv)$", re.IGNORECASE)
_NTU = re.compile(r"^ntu(60|120)$", re.IGNORECASE)


def protocol_from_name(path: Path) -> Optional[str]:
    """The protocol a file name states unambiguously (module docstring), else None."""
    m = _NAME.match(path.stem)
    if not m:
        return None
    tag, prefix = m["tag"].lower(), m["prefix"].lower()
    if tag in ("xsub", "csub"):
        return "xsub"
    if tag == "xview":
        return "xview"
    if tag in ("xset", "cset"):
        return "xset"
    if prefix == "ntu60":
        return {"cs": "xsub", "cv": "xview"}[tag]
    if prefix == "ntu120":
        return {"cs": "xsub", "cv": "xset"}[tag]  # SLiM names NTU120's X-Set file NTU120_CV
    return None


def _dataset_of(path: Path) -> str:
    m = _NAME.match(path.stem)
    prefix = m["prefix"] if m else path.stem
    return prefix.lower() if _NTU.match(prefix) else prefix


@dataclass
class _Header:
    shape: tuple[int, ...]
    fortran: bool
    dtype: np.dtype


def _read_header(fh, where: str) -> _Header:
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(fh)
        else:  # (3, 0): a utf-8 header, laid out as 2.0; numpy has no public reader for it
            size = int.from_bytes(fh.read(4), "little")
            head = ast.literal_eval(fh.read(size).decode("utf-8"))
            shape, fortran, dtype = head["shape"], head["fortran_order"], fmt.descr_to_dtype(head["descr"])
    except Exception as exc:  # a corrupt member
        raise SkelError(f"ctrgcn-npz: {where} is not a readable .npy array ({exc})") from None
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise SkelError(f"ctrgcn-npz: {where} holds Python objects (needs pickle, refused); expected numbers")
    if dtype.kind not in "fiub":
        raise SkelError(f"ctrgcn-npz: {where} has dtype {dtype}, expected numbers")
    return _Header(tuple(int(s) for s in shape), bool(fortran), dtype)


class _Archive:
    """One ``.npz``: member headers without reading the data, whole small arrays, streamed rows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            with zipfile.ZipFile(path) as zf:
                members = set(zf.namelist())
                missing = [k for k in KEYS if f"{k}.npy" not in members]
                if missing:
                    have = sorted(m[:-4] for m in members if m.endswith(".npy"))
                    raise SkelError(f"ctrgcn-npz: {path.name} lacks key(s) {', '.join(missing)} (has "
                                    f"{', '.join(have) or 'none'}); a CTR-GCN file holds {', '.join(KEYS)}")
                self.headers = {}
                for k in KEYS:
                    with zf.open(f"{k}.npy") as fh:
                        self.headers[k] = _read_header(fh, f"{path.name}:{k}")
        except zipfile.BadZipFile:
            raise SkelError(f"ctrgcn-npz: {path} is not a .npz archive (np.savez)") from None
        except OSError as exc:
            raise SkelError(f"ctrgcn-npz: cannot read {path}: {exc.strerror or exc}") from None

    def load(self, key: str) -> np.ndarray:
        try:
            with np.load(self.path, allow_pickle=False) as z:
                return z[key]
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise SkelError(f"ctrgcn-npz: cannot read {self.path.name}:{key} ({exc})") from None

    def rows(self, key: str) -> Iterator[np.ndarray]:
        """The rows of ``key`` (C order: each row contiguous) one at a time."""
        h = self.headers[key]
        if h.fortran:
            yield from self.load(key)
            return
        row_shape = h.shape[1:]
        row_bytes = int(np.prod(row_shape, dtype=np.int64)) * h.dtype.itemsize
        n = h.shape[0]
        with zipfile.ZipFile(self.path) as zf, zf.open(f"{key}.npy") as fh:
            _read_header(fh, f"{self.path.name}:{key}")
            done = 0
            while done < n:
                k = min(CHUNK_ROWS, n - done)
                buf = fh.read(k * row_bytes)
                if len(buf) != k * row_bytes:
                    raise SkelError(f"ctrgcn-npz: {self.path.name}:{key} ends early (truncated archive)")
                block = np.frombuffer(buf, dtype=h.dtype).reshape(k, *row_shape)
                for r in block:
                    yield r
                done += k


def one_hot_label(row: np.ndarray) -> tuple[Optional[int], str]:
    """(label, "") for a row with exactly one 1 and zeros elsewhere, else (None, reason)."""
    ones = np.flatnonzero(row == 1)
    other = np.flatnonzero((row != 0) & (row != 1))
    if len(ones) == 1 and len(other) == 0:
        return int(ones[0]), ""
    if len(other):
        return None, f"label row is not one-hot (value {row[other[0]].item()!r} at class {int(other[0])})"
    return None, f"label row is not one-hot ({len(ones)} ones)"


@register
class CtrgcnNpzImporter(Importer):
    name = "ctrgcn-npz"
    default_topology = "ntu25"
    help = "CTR-GCN / SLiM NTU .npz: x_train/x_test (N, T, 150), y_train/y_test one-hot; --protocol per --raw"

    def read(self, raws: Sequence[Path], options: ImportOptions) -> Imported:
        topo = resolve_topology(options, self.default_topology)
        raws = [Path(r) for r in raws]
        protocols = [p.lower() for p in options.protocols]
        warnings: list[str] = []
        if protocols and len(protocols) != len(raws):
            raise SkelError(f"ctrgcn-npz: give one --protocol per --raw ({len(raws)} files, {len(protocols)} protocols)")
        if not protocols:
            for raw in raws:
                guess = protocol_from_name(raw)
                if guess is None:
                    raise SkelError(f"ctrgcn-npz: cannot tell the protocol of {raw.name} from its name; pass "
                                    f"--protocol {' | '.join(PROTOCOLS)} after each --raw")
                protocols.append(guess)
        for raw, proto in zip(raws, protocols):
            if proto not in PROTOCOLS:
                raise SkelError(f"ctrgcn-npz: unknown protocol {proto!r} for {raw.name}; choose one of {', '.join(PROTOCOLS)}")
            hint = protocol_from_name(raw)
            if hint is not None and hint != proto:
                warnings.append(f"{raw.name}: --protocol {proto} but the file name suggests {hint}; using {proto}")
        dup = sorted({p for p in protocols if protocols.count(p) > 1})
        if dup:
            raise SkelError(f"ctrgcn-npz: protocol {dup[0]} given for two files; each --raw needs its own protocol")
        for raw in raws:
            if not raw.is_file():
                raise SkelError(f"ctrgcn-npz: --raw {raw} is not a file (give the .npz)")

        per_person = topo.num_joints * topo.channels
        archives: list[tuple[_Archive, str, dict[str, np.ndarray], int]] = []
        classes: Optional[int] = None
        for raw, proto in zip(raws, protocols):
            arc = _Archive(raw)
            labels: dict[str, np.ndarray] = {}
            persons = None
            for part in ("train", "test"):
                hx, hy = arc.headers[f"x_{part}"], arc.headers[f"y_{part}"]
                if len(hx.shape) != 3:
                    raise SkelError(f"ctrgcn-npz: {raw.name}: x_{part} has shape {hx.shape}, expected (N, T, M*V*C)")
                if len(hy.shape) != 2:
                    raise SkelError(f"ctrgcn-npz: {raw.name}: y_{part} has shape {hy.shape}, expected (N, K) one-hot")
                if hx.shape[0] != hy.shape[0]:
                    raise SkelError(f"ctrgcn-npz: {raw.name}: x_{part} has {hx.shape[0]} clips, y_{part} {hy.shape[0]} labels")
                d = hx.shape[2]
                if d == 0 or d % per_person:
                    raise SkelError(f"ctrgcn-npz: {raw.name}: x_{part} holds {d} values per frame, not a multiple of "
                                    f"{per_person} (topology {topo.name}: {topo.num_joints} joints x {topo.channels}); "
                                    "pass the matching --topology")
                if persons is not None and d // per_person != persons:
                    raise SkelError(f"ctrgcn-npz: {raw.name}: x_train and x_test differ in persons per frame")
                persons = d // per_person
                k = hy.shape[1]
                if classes is not None and k != classes:
                    raise SkelError(f"ctrgcn-npz: {raw.name}: y_{part} has {k} classes, expected {classes} "
                                    "(every label array must have the same width)")
                classes = k
                labels[part] = arc.load(f"y_{part}")
            archives.append((arc, proto, labels, int(persons)))
        num_classes = int(classes or 0)
        if num_classes == 0:
            raise SkelError(f"ctrgcn-npz: {raws[0].name}: the label arrays have no class column")

        dataset = _dataset_of(raws[0])
        class_names = None
        if dataset in ("ntu60", "ntu120"):
            from skelcli.data.actions import action_names

            names = action_names(dataset)
            class_names = names if names is not None and len(names) == num_classes else None

        splits = {proto: {part: [f"{proto}_{part}_{i:06d}" for i in range(arc.headers[f"x_{part}"].shape[0])]
                          for part in ("train", "test")}
                  for arc, proto, _, _ in archives}
        total = sum(arc.headers[f"x_{part}"].shape[0] for arc, _, _, _ in archives for part in ("train", "test"))
        rejected: list[tuple[str, str]] = []
        copied = num_classes == 120

        def clips() -> Iterator[Clip]:
            v, c = topo.num_joints, topo.channels
            for arc, proto, labels, m in archives:
                for part in ("train", "test"):
                    y = labels[part]
                    for i, row in enumerate(arc.rows(f"x_{part}")):
                        name = f"{proto}_{part}_{i:06d}"
                        label, why = one_hot_label(y[i])
                        if label is None:
                            rejected.append((name, why))
                            continue
                        joints = np.asarray(row, dtype=np.float32).reshape(len(row), m, v, c)
                        valid = np.flatnonzero(joints.reshape(len(joints), -1).any(axis=1))
                        joints = joints[: valid[-1] + 1] if len(valid) else joints[:1]
                        meta: dict[str, int] = {}
                        if copied and m >= PERSONS and joints[:, 0].any() and np.array_equal(joints[:, 0], joints[:, 1]):
                            meta["num_actors"] = 1  # NTU120's copied lone actor (kept, as skel prepare ntu120 does)
                        yield Clip(name, np.array(joints), label, meta)

        preprocessing: dict[str, Any] = {
            "coord_space": "camera_m",
            "coordinates": "as in the file (CTR-GCN: translated to SpineMid of actor 1's first frame)",
            "frames": "zero padding after the last non-zero frame removed",
            "labels": "one-hot rows -> class index",
        }
        if copied:
            preprocessing["second_actor"] = "copy (NTU120 layout: a lone actor is copied into slot 2, num_actors 1)"
        source = {"files": {proto: str(arc.path.resolve()) for arc, proto, _, _ in archives},
                  "t_max": {proto: arc.headers["x_train"].shape[1] for arc, proto, _, _ in archives}}
        return Imported(dataset=dataset, topology=topo, clips=clips(), num_classes=num_classes, splits=splits,
                        rejected=rejected, class_names=class_names, source=source, preprocessing=preprocessing,
                        total=total, warnings=warnings)

    def write_synthetic(self, out: Path, clips, topology: Topology, **kwargs: Any) -> list[Path]:
        """One ``SYNTH_XSub.npz``: every clip padded with zeros to the longest clip and to two persons,
        flattened to (T_max, 2 * V * C); labels one-hot float64; train / test from each clip's split."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        v, c = topology.num_joints, topology.channels
        t_max = max((len(p.joints) for p in clips), default=1)
        k = max((int(p.label) for p in clips), default=0) + 1
        arrays: dict[str, np.ndarray] = {}
        for part in ("train", "test"):
            chosen = [p for p in clips if p.split == part]
            x = np.zeros((len(chosen), t_max, PERSONS, v, c), dtype=np.float32)
            y = np.zeros((len(chosen), k), dtype=np.float64)
            for i, p in enumerate(chosen):
                j = np.asarray(p.joints, dtype=np.float32)
                keep = min(j.shape[1], PERSONS)
                x[i, : len(j), :keep] = j[:, :keep]
                y[i, int(p.label)] = 1.0
            arrays[f"x_{part}"] = x.reshape(len(chosen), t_max, PERSONS * v * c)
            arrays[f"y_{part}"] = y
        path = out / "SYNTH_XSub.npz"
        np.savez(path, **arrays)
        return [path]


__all__ = ["CtrgcnNpzImporter", "PROTOCOLS", "one_hot_label", "protocol_from_name"]
