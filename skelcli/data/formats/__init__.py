"""Importers of the skeleton formats the field exchanges (spec/formats.md), and their synthetic writers.

``skel prepare FORMAT --raw PATH [--raw PATH ...] [--topology NAME|FILE.toml] --out FILE.h5`` for
FORMAT in :data:`FORMATS` goes through :func:`prepare_format`: the format's :class:`Importer` turns
its raw files into :class:`Clip` s (T, M, V, C) plus the source's own split names, and this module
checks every clip against the topology, keeps two person slots, writes the HDF5 store atomically
(``skelcli.data.store``: schema 2, topology attr) with a progress bar, and returns a
:class:`skelcli.data.prepare.PrepareReport`. A bad entry is never fatal: the importer (or the checks
here) puts ``(name, reason)`` in ``/rejected`` and goes on.

``skel synth FORMAT --out PATH`` writes procedural clips (:mod:`.procedural`) in the format, through
the importer's ``write_synthetic``, so every path is tested without downloads.

Layout conventions shared by every importer:

* coordinates in the source's own units (pixels, normalised image, metres), never rescaled here;
  the confidence channel, when the topology has one, is the last value of a joint;
* persons: at most two slots; an importer orders persons most important first (most valid frames,
  highest score) and the extra ones are dropped, a lone person gets a zero second slot;
* frames: leading and trailing all-zero frames are trimmed; a clip with no non-zero frame is rejected.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Optional, Sequence

import numpy as np

from skelcli.errors import SkelError
from skelcli.topology import Topology, get_topology

#: Person slots in a store (the encoder's M).
PERSONS = 2


@dataclass
class Clip:
    """One imported clip: joints float32 (T, M, V, C) with M >= 1 persons, most important first; label
    0-based; meta: any of subject / camera / setup / replication (ints, -1 unknown), and num_actors
    when the importer knows it better than "persons with a non-zero value" (NTU120's copied actor)."""

    name: str
    joints: np.ndarray
    label: int
    meta: dict[str, int] = field(default_factory=dict)


@dataclass
class ImportOptions:
    """What ``skel prepare FORMAT`` passes to an importer.

    topology: the user's ``--topology`` (None: the format's default); protocols: ``--protocol``
    values, one per ``--raw`` where the format needs it (ctrgcn-npz); split_seed / test_fraction:
    random stratified splits where the source has none (arrays)."""

    topology: Optional[Topology] = None
    protocols: list[str] = field(default_factory=list)
    split_seed: int = 0
    test_fraction: float = 0.2


@dataclass
class Imported:
    """An importer's answer. ``clips`` is consumed once, in order; ``rejected`` may grow while it is
    consumed. ``splits``: protocol -> part ("train" / "test") -> clip names, in the source's names
    (e.g. pyskl's ``xsub_train`` / ``xsub_val`` become protocol ``xsub``, parts train / test);
    names that were rejected are dropped from the splits silently. ``total``: clips expected, for the
    progress bar (None when unknown)."""

    dataset: str
    topology: Topology
    clips: Iterator[Clip]
    num_classes: int
    splits: dict[str, dict[str, list[str]]]
    rejected: list[tuple[str, str]] = field(default_factory=list)
    class_names: Optional[list[str]] = None
    source: dict[str, Any] = field(default_factory=dict)
    preprocessing: dict[str, Any] = field(default_factory=dict)
    total: Optional[int] = None
    warnings: list[str] = field(default_factory=list)


class Importer(ABC):
    """One format. Subclasses set ``name``, ``default_topology`` and ``help``, and implement
    :meth:`read` and :meth:`write_synthetic`."""

    name: ClassVar[str]
    default_topology: ClassVar[str]
    help: ClassVar[str]

    @abstractmethod
    def read(self, raws: Sequence[Path], options: ImportOptions) -> Imported:
        """The format's clips, splits and rejections for the ``--raw`` paths."""

    @abstractmethod
    def write_synthetic(self, out: Path, clips: Sequence["ProcClip"], topology: Topology, **kwargs: Any) -> list[Path]:  # noqa: F821
        """Write procedural ``clips`` in this format under ``out``; returns the files written."""


_REGISTRY: dict[str, Importer] = {}


def register(cls: type[Importer]) -> type[Importer]:
    """Class decorator: make a format available to ``skel prepare`` / ``skel synth`` by its name."""
    if cls.name in _REGISTRY:
        raise ValueError(f"format {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls()
    return cls


def _load_all() -> None:
    import importlib

    for module in ("pyskl", "ctrgcn", "kinetics", "nwucla", "arrays"):
        try:
            importlib.import_module(f"skelcli.data.formats.{module}")
        except ModuleNotFoundError as exc:  # a format module not present in this build
            if exc.name != f"skelcli.data.formats.{module}":
                raise


def formats() -> dict[str, Importer]:
    """Every registered format by name."""
    _load_all()
    return dict(_REGISTRY)


#: The format names ``skel prepare`` accepts besides the raw NTU / PKU-MMD kinds.
FORMATS = ("pyskl", "ctrgcn-npz", "kinetics-skeleton", "nw-ucla", "arrays")


def get_importer(name: str) -> Importer:
    known = formats()
    if name not in known:
        raise SkelError(f"unknown format {name!r}; choose one of {', '.join(sorted(known))}")
    return known[name]


# ----------------------------------------------------------------------------- shared clip checks


def trim_zero_frames(joints: np.ndarray) -> np.ndarray:
    """Drop leading and trailing frames whose every value is 0; joints (T, ...)."""
    nz = np.flatnonzero(joints.reshape(len(joints), -1).any(axis=1))
    if len(nz) == 0:
        return joints[:0]
    return joints[nz[0] : nz[-1] + 1]


def to_slots(joints: np.ndarray) -> tuple[np.ndarray, int]:
    """(T, M, V, C) -> ((T, 2, V, C) float32, persons present): the first two persons are kept, a
    missing second slot is zeros; a person is present when any of its values is non-zero."""
    t, m, v, c = joints.shape
    out = np.zeros((t, PERSONS, v, c), dtype=np.float32)
    keep = min(m, PERSONS)
    out[:, :keep] = joints[:, :keep]
    present = int(sum(bool(np.any(out[:, p])) for p in range(PERSONS)))
    return out, present


def check_clip(clip: Clip, topology: Topology, num_classes: int) -> Optional[str]:
    """Why ``clip`` cannot be stored (None when it can): shape against the topology, frames, NaN /
    infinite values, label range."""
    j = clip.joints
    if not isinstance(j, np.ndarray) or j.ndim != 4:
        return f"joints must be (T, M, V, C), got shape {getattr(j, 'shape', None)}"
    t, m, v, c = j.shape
    if v != topology.num_joints:
        return f"{v} joints, topology {topology.name} has {topology.num_joints}"
    if c != topology.channels:
        return f"{c} values per joint, topology {topology.name} has {topology.channels} ({topology.describe()})"
    if t == 0 or m == 0:
        return f"empty clip ({t} frames, {m} persons)"
    if not np.isfinite(j).all():
        return "NaN or infinite coordinates"
    if not 0 <= int(clip.label) < num_classes:
        return f"label {clip.label} outside 0..{num_classes - 1}"
    return None


# ----------------------------------------------------------------------------- prepare FORMAT


def prepare_format(
    fmt: str,
    raws: Sequence[Path],
    out: Path,
    options: Optional[ImportOptions] = None,
    *,
    force: bool = False,
    progress: bool = False,
):
    """Import ``raws`` of format ``fmt`` into the store ``out`` (atomic) and return a PrepareReport."""
    from skelcli.data.prepare import PrepareReport, _check_out, _count_reasons
    from skelcli.data.store import Sample, clean_temp_files, open_info, write_store

    importer = get_importer(fmt)
    options = options or ImportOptions()
    if not raws:
        raise SkelError("give at least one --raw PATH")
    for raw in raws:
        if not Path(raw).exists():
            raise SkelError(f"--raw {raw}: no such file or folder")
    out = Path(out)
    _check_out(out)
    if out.exists() and not force:
        raise SkelError(f"--out {out} exists; pass --force to rebuild it (the old file stays until the new one is complete)")
    t0 = time.perf_counter()
    removed, _ = clean_temp_files(out)
    imp = importer.read([Path(r) for r in raws], options)
    topo = imp.topology
    rejected = imp.rejected
    names: list[str] = []
    seen: set[str] = set()
    frames: list[int] = []
    bar = None
    if progress:
        from skelcli.progress import step_progress

        bar = step_progress(f"prepare {fmt}", imp.total or 0)

    def samples() -> Iterator[Sample]:
        done = 0
        for clip in imp.clips:
            done += 1
            if bar is not None:
                bar.update(completed=done)
            why = check_clip(clip, topo, imp.num_classes)
            if why is None and clip.name in seen:
                why = "duplicate clip name"
            if why is None:
                joints = trim_zero_frames(clip.joints.astype(np.float32, copy=False))
                if len(joints) == 0:
                    why = "every frame is zero (no person detected)"
            if why is not None:
                rejected.append((clip.name, why))
                continue
            slots, present = to_slots(joints)
            seen.add(clip.name)
            names.append(clip.name)
            frames.append(len(slots))
            meta = {k: int(clip.meta.get(k, -1)) for k in ("setup", "camera", "subject", "replication")}
            actors = int(clip.meta.get("num_actors", present))  # an importer that knows better (a copied actor) says so
            yield Sample(name=clip.name, joints=slots, label=int(clip.label), num_actors=max(actors, 1), **meta)

    def splits(stored: list[str], _meta) -> dict[str, dict[str, np.ndarray]]:
        index = {n: i for i, n in enumerate(stored)}
        return {proto: {part: np.asarray(sorted(index[n] for n in members if n in index), dtype=np.int32)
                        for part, members in parts.items()}
                for proto, parts in imp.splits.items()}

    try:
        n = write_store(out, samples(), dataset=imp.dataset, num_classes=imp.num_classes, splits=splits,
                        rejected=lambda: rejected, preprocessing={"format": fmt, **imp.preprocessing},
                        source={"format": fmt, "raw": [str(Path(r).resolve()) for r in raws], **imp.source},
                        force=True, class_names=imp.class_names, topology=topo)
    except SkelError:
        raise
    finally:
        if bar is not None:
            bar.close()
    if n == 0:
        out.unlink(missing_ok=True)
        examples = "; ".join(f"{a}: {b}" for a, b in rejected[:3])
        raise SkelError(f"no valid clip found in {', '.join(map(str, raws))} ({len(rejected)} rejected{': ' + examples if examples else ''})")
    info = open_info(out)
    dt = time.perf_counter() - t0
    mb = sum(_size(Path(r)) for r in raws) / 1e6
    fr = np.asarray(frames, dtype=np.float64)
    warnings = [f"removed {p}: left by an interrupted run whose process is gone" for p in removed] + imp.warnings
    return PrepareReport(
        dataset=f"{fmt} ({imp.dataset}, {topo.name})", out=str(out), status="written", kept=n,
        rejected=_count_reasons(rejected), skipped_other_dataset=0, splits=info.protocols,
        frames={"min": float(fr.min()), "mean": float(fr.mean()), "max": float(fr.max()), "total": float(fr.sum())},
        files=sum(_count_files(Path(r)) for r in raws), megabytes=round(mb, 3), seconds=round(dt, 3),
        mb_per_s=round(mb / dt, 2) if dt > 0 else 0.0, workers=1, rejected_examples=[tuple(r) for r in rejected[:20]],
        warnings=warnings,
    )


def _size(p: Path) -> int:
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def _count_files(p: Path) -> int:
    return 1 if p.is_file() else sum(1 for f in p.rglob("*") if f.is_file())


def resolve_topology(options: ImportOptions, default: str) -> Topology:
    """The user's --topology, else the format's default layout."""
    return options.topology if options.topology is not None else get_topology(default)


# ----------------------------------------------------------------------------- synth FORMAT


def synthesize_format(fmt: str, out: Path, *, topology: Optional[Topology] = None, classes: int = 6,
                      per_class: int = 8, seed: int = 0, force: bool = False,
                      progress: Optional[Callable[[int, int], None]] = None) -> dict[str, Any]:
    """Procedural clips in ``topology`` (the format's default when None) written in format ``fmt``
    under ``out``. Returns a small report (files, clips, classes, topology, seconds)."""
    from skelcli.data.formats.procedural import procedural_clips

    importer = get_importer(fmt)
    if classes < 1 or per_class < 1:
        raise SkelError(f"--classes and --per-class must be at least 1, got {classes} and {per_class}")
    topo = topology if topology is not None else get_topology(importer.default_topology)
    out = Path(out)
    if out.exists() and (out.is_file() or any(out.iterdir())) and not force:
        raise SkelError(f"{out} exists and is not empty; pass --force to write into it")
    t0 = time.perf_counter()
    clips = procedural_clips(topo, classes=classes, per_class=per_class, seed=seed)
    files = importer.write_synthetic(out, clips, topo)
    if progress is not None:
        progress(len(files), len(files))
    return {"format": fmt, "out": str(out), "files": len(files), "clips": len(clips), "classes": classes,
            "topology": topo.name, "bytes": sum(_size(f) for f in files), "seconds": round(time.perf_counter() - t0, 3)}


__all__ = ["Clip", "FORMATS", "ImportOptions", "Imported", "Importer", "PERSONS", "check_clip", "formats",
           "get_importer", "prepare_format", "register", "resolve_topology", "synthesize_format", "to_slots",
           "trim_zero_frames"]
