"""`skel prepare`: raw NTU RGB+D 60/120 or PKU-MMD I/II files -> one HDF5 store (see store.py).

Raw dirs are searched recursively; files are parsed in a process pool; samples are streamed into
the store in sorted-name order (deterministic output). Bad files are reported, counted, stored in
/rejected and skipped; the store holds every good sample.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import numpy as np

from skelcli.errors import SkelError

KINDS = ("ntu60", "ntu120", "pku-mmd-v1", "pku-mmd-v2")
NTU_CLASSES = {"ntu60": 60, "ntu120": 120}
#: Files that ship with the datasets and are ignored without a report.
_IGNORED_SUFFIXES = {".xlsx", ".md", ".pdf", ".zip", ".csv"}


@dataclass
class PrepareReport:
    """What `prepare_dataset` did. status: "written" or "up-to-date" (no-op re-run)."""

    dataset: str
    out: str
    status: str
    kept: int
    rejected: dict[str, int]
    skipped_other_dataset: int
    splits: dict[str, dict[str, int]]
    frames: dict[str, float]
    files: int
    megabytes: float
    seconds: float
    mb_per_s: float
    workers: int
    rejected_examples: list[tuple[str, str]] = field(default_factory=list)
    missing_list: Optional[dict] = None
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def default_settings(kind: str, **overrides):
    """The settings model for ``kind`` with reference defaults (None overrides are ignored)."""
    from skelcli.data.ntu import NtuPrepareSettings
    from skelcli.data.pku import PkuPrepareSettings

    if kind in NTU_CLASSES:
        return NtuPrepareSettings.for_dataset(kind, **overrides)
    if kind.startswith("pku"):
        return PkuPrepareSettings(**{k: v for k, v in overrides.items() if v is not None})
    raise SkelError(f"unknown dataset kind {kind!r}; choose one of {', '.join(KINDS)}")


def _scan(raw_dirs: Sequence[Union[str, Path]], rejected: list[tuple[str, str]]) -> list[Path]:
    """Every regular file under the raw dirs (recursive, sorted). Unreadable dirs go to ``rejected``."""
    if not raw_dirs:
        raise SkelError("no --raw directory given")
    files: list[Path] = []
    for d in raw_dirs:
        d = Path(d)
        if not d.exists():
            raise SkelError(f"--raw {d} does not exist")
        if not d.is_dir():
            raise SkelError(f"--raw {d} is not a directory")
        if not os.access(d, os.R_OK | os.X_OK):
            raise SkelError(f"--raw {d} is not readable")

        def onerror(exc: OSError) -> None:
            rejected.append((str(exc.filename), f"unreadable directory: {exc.strerror}"))

        for root, dirs, names in os.walk(d, onerror=onerror):
            dirs.sort()
            for n in sorted(names):
                if not n.startswith("."):
                    files.append(Path(root) / n)
    return files


def _fingerprint(kind: str, files: Sequence[Path], settings, extra: str = "") -> str:
    from skelcli import __version__

    h = hashlib.sha256()
    h.update(f"{kind}\0skelcli {__version__}\0".encode())
    h.update(settings.model_dump_json().encode())
    h.update(extra.encode())
    for p in sorted(files, key=lambda p: (p.name, str(p))):
        st = p.stat()
        h.update(f"{p.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _pool_map(fn, jobs: list, workers: int, progress: bool, label: str) -> Iterator:
    """Ordered map over jobs, in a process pool when workers > 1, with a files/s bar (plain progress
    lines when the console is not a terminal, :mod:`skelcli.progress`)."""
    from contextlib import ExitStack

    with ExitStack() as stack:
        bar = None
        if progress:
            from skelcli.cli._app import console
            from skelcli.progress import step_progress

            bar = step_progress(label, len(jobs), console=console, fields=("rate",))
            stack.callback(bar.close)
        t0 = time.perf_counter()
        if workers > 1 and len(jobs) > 1:
            import multiprocessing as mp

            pool = stack.enter_context(mp.get_context("fork").Pool(workers))
            it = pool.imap(fn, jobs, chunksize=max(1, min(32, len(jobs) // (workers * 8) or 1)))
        else:
            it = map(fn, jobs)
        for k, res in enumerate(it, 1):
            if bar is not None:
                dt = time.perf_counter() - t0
                bar.update(completed=k, rate=f"{k / dt:.0f} files/s" if dt > 0 else "-")
            yield res


# ---------------------------------------------------------------------------------------- NTU
def _ntu_job(args) -> tuple:
    from skelcli.data.ntu import load_sample

    path, settings = args
    size = 0
    try:
        size = os.path.getsize(path)
        s = load_sample(path, settings)
        return ("ok", s.meta, s.joints, s.num_actors, size)
    except SkelError as exc:
        return ("rejected", Path(path).stem, str(exc), size)
    except OSError as exc:
        return ("rejected", Path(path).stem, f"unreadable file: {exc.strerror}", size)


def _prepare_ntu(kind, raw_dirs, files, out, settings, workers, force, progress, missing_list, rejected, t0) -> PrepareReport:
    from skelcli.data.ntu import in_ntu60, ntu_splits, parse_name, read_missing_list
    from skelcli.data.store import Sample, read_fingerprint, write_store

    by_name: dict[str, Path] = {}
    skipped_other = 0
    for p in files:
        if p.suffix.lower() in _IGNORED_SUFFIXES:
            continue
        if p.suffix != ".skeleton":
            rejected.append((str(p), "unexpected file name (not a .skeleton file)"))
            continue
        try:
            meta = parse_name(p.name)
        except SkelError:
            rejected.append((str(p), "unexpected file name (want SsssCcccPpppRrrrAaaa.skeleton)"))
            continue
        if kind == "ntu60" and not in_ntu60(meta):
            skipped_other += 1
            continue
        if meta.name in by_name:
            raise SkelError(f"duplicate sample {meta.name}: {by_name[meta.name]} and {p}")
        by_name[meta.name] = p
    names = sorted(by_name)
    listed: set[str] = set()
    list_hash = ""
    if missing_list is not None:
        listed = read_missing_list(missing_list)
        list_hash = hashlib.sha256("\n".join(sorted(listed)).encode()).hexdigest()
    fp = _fingerprint(kind, [by_name[n] for n in names], settings, list_hash)
    if Path(out).exists() and not force and read_fingerprint(out) == fp:
        return _up_to_date_report(kind, out, t0)
    if not names:
        raise SkelError(f"no valid {kind} .skeleton files found under the --raw dirs")

    stats = {"bytes": 0, "frames": []}
    parsed_ok_listed: list[str] = []
    rejected_samples: list[str] = []

    def samples() -> Iterator[Sample]:
        jobs = [(str(by_name[n]), settings) for n in names]
        for res in _pool_map(_ntu_job, jobs, workers, progress, f"prepare {kind}"):
            if res[0] == "rejected":
                _, name, reason, size = res
                stats["bytes"] += size
                rejected.append((name, reason))
                rejected_samples.append(name)
                continue
            _, meta, joints, num_actors, size = res
            stats["bytes"] += size
            if meta.name in listed:
                parsed_ok_listed.append(meta.name)
                if settings.exclude_missing_list:
                    rejected.append((meta.name, "on the missing-skeleton list"))
                    continue
            stats["frames"].append(len(joints))
            yield Sample(meta.name, joints, meta.label, meta.setup, meta.camera, meta.subject, meta.replication, num_actors)

    def splits(names_written, meta_arr):
        return ntu_splits(kind, meta_arr["subject"], meta_arr["camera"], meta_arr["setup"])

    source = {
        "raw_dirs": sorted({str(Path(d)) for d in raw_dirs}),
        "files": len(names),
        "skipped_other_dataset": skipped_other,
        "fingerprint": fp,
        "missing_list": str(missing_list) if missing_list else None,
    }
    preprocessing = {"settings": settings.model_dump(), "spec": "spec/mamp-and-data.md D.3-D.5", "layout": "(frames, 2, 25, 3) metres, NTU joint order"}
    n = _write_nonempty(write_store, out, samples(), kind, NTU_CLASSES[kind], splits, rejected, preprocessing, source)
    mlist = None
    if missing_list is not None:
        seen = set(names)
        mlist = {
            "listed": len(listed),
            "listed_not_in_raw": len(listed - seen),
            "listed_but_parsed_ok": sorted(parsed_ok_listed),
            "rejected_not_listed": sorted(set(rejected_samples) - listed),
        }
    return _report(kind, out, n, rejected, skipped_other, stats, len(names), workers, t0, mlist)


# ---------------------------------------------------------------------------------------- PKU
def _pku_job(args) -> tuple:
    from skelcli.data.pku import cut_clips, read_skeleton_txt

    video, path, labels, settings = args
    size = 0
    try:
        size = os.path.getsize(path)
        arr = read_skeleton_txt(path)
        clips, rej = cut_clips(video, arr, labels, settings)
        return ("ok", clips, rej, size)
    except SkelError as exc:
        return ("rejected", video, str(exc), size)
    except OSError as exc:
        return ("rejected", video, f"unreadable file: {exc.strerror}", size)


def _prepare_pku(kind, raw_dirs, files, out, settings, workers, force, progress, rejected, t0) -> PrepareReport:
    from skelcli.data.pku import NUM_CLASSES, SPLIT_FILE_RE, label_mapping, read_labels, read_split_file, video_info
    from skelcli.data.store import Sample, read_fingerprint, write_store

    skel_dirs, label_dirs = set(settings.skeleton_dirs), set(settings.label_dirs)
    skeletons: dict[str, Path] = {}
    label_files: dict[str, Path] = {}
    split_files: dict[str, list[Path]] = {"xsub": [], "xview": []}
    for p in files:
        m = SPLIT_FILE_RE.match(p.name)
        if m:
            split_files["xsub" if m.group(1).lower() == "subject" else "xview"].append(p)
            continue
        if p.suffix.lower() in _IGNORED_SUFFIXES:
            continue
        parent = p.parent.name
        if p.suffix != ".txt" or parent not in skel_dirs | label_dirs:
            rejected.append((str(p), "unexpected file (not a skeleton/label/split .txt)"))
            continue
        try:
            video_info(p.stem, kind)
        except SkelError as exc:
            rejected.append((str(p), str(exc)))
            continue
        target = skeletons if parent in skel_dirs else label_files
        if p.stem in target:
            raise SkelError(f"duplicate {'skeleton' if target is skeletons else 'label'} file {p.stem}: {target[p.stem]} and {p}")
        target[p.stem] = p
    videos = sorted(skeletons)
    # Version-matched split file: *_v2 for phase II, the others for phase I.
    chosen: dict[str, Path] = {}
    warnings: list[str] = []
    for proto, cands in split_files.items():
        want_v2 = kind == "pku-mmd-v2"
        match = [c for c in cands if ("v2" in c.stem.lower()) == want_v2]
        if match:
            chosen[proto] = sorted(match)[0]
        else:
            warnings.append(f"no {proto} split file found (cross-{'subject' if proto == 'xsub' else 'view'}{'_v2' if want_v2 else ''}.txt); protocol not stored")
    extra = "".join(f"{k}={v.stat().st_size}:{v.stat().st_mtime_ns}" for k, v in sorted(chosen.items()))
    fp = _fingerprint(kind, [skeletons[v] for v in videos] + [label_files[v] for v in videos if v in label_files], settings, extra)
    if Path(out).exists() and not force and read_fingerprint(out) == fp:
        return _up_to_date_report(kind, out, t0)
    if not videos:
        raise SkelError(f"no valid {kind} skeleton files found under the --raw dirs")

    labels: dict[str, list] = {}
    for v in videos:
        if v not in label_files:
            rejected.append((v, "no label file"))
            continue
        bad_rows: list[str] = []
        try:
            labels[v] = read_labels(label_files[v], errors=bad_rows)
        except OSError as exc:
            rejected.append((v, f"unreadable label file: {exc.strerror}"))
        rejected.extend((f"{v} label", f"bad label row, skipped: {msg}") for msg in bad_rows)
    mapping = label_mapping([a for rows in labels.values() for a, _, _ in rows], NUM_CLASSES[kind], settings)
    num_classes = max(NUM_CLASSES[kind], len(mapping)) if mapping and max(mapping.values()) >= NUM_CLASSES[kind] else NUM_CLASSES[kind]
    train_sets = {proto: read_split_file(p) for proto, p in chosen.items()}
    stats = {"bytes": 0, "frames": []}

    def samples() -> Iterator[Sample]:
        jobs = [(v, str(skeletons[v]), labels[v], settings) for v in videos if v in labels]
        for res in _pool_map(_pku_job, jobs, workers, progress, f"prepare {kind}"):
            if res[0] == "rejected":
                _, video, reason, size = res
                stats["bytes"] += size
                rejected.append((video, reason))
                continue
            _, clips, rej, size = res
            stats["bytes"] += size
            rejected.extend(rej)
            for c in clips:
                seq, view = video_info(c.video, kind)
                stats["frames"].append(len(c.joints))
                yield Sample(c.name, c.joints, mapping[c.action], seq, view, -1, -1, c.num_actors)

    def splits(names_written, meta_arr):
        vids = np.array([n.rsplit("_", 1)[0] for n in names_written], dtype=object)
        idx = np.arange(len(names_written), dtype=np.int32)
        out_splits = {}
        for proto, train in train_sets.items():
            is_train = np.array([v in train for v in vids], dtype=bool)
            out_splits[proto] = {"train": idx[is_train], "test": idx[~is_train]}
        return out_splits

    source = {
        "raw_dirs": sorted({str(Path(d)) for d in raw_dirs}),
        "files": len(videos),
        "split_files": {k: str(v) for k, v in chosen.items()},
        "fingerprint": fp,
    }
    preprocessing = {
        "settings": settings.model_dump(),
        "centered": settings.centered,
        "label_map": {str(k): v for k, v in mapping.items()},
        "spec": "spec/mamp-and-data.md F",
        "layout": "(frames, 2, 25, 3) metres, raw Kinect camera coordinates",
    }
    n = _write_nonempty(write_store, out, samples(), kind, num_classes, splits, rejected, preprocessing, source)
    rep = _report(kind, out, n, rejected, 0, stats, len(videos), workers, t0, None)
    rep.warnings.extend(warnings)
    return rep


# ------------------------------------------------------------------------------------ shared
class _NothingValid(Exception):
    pass


def _write_nonempty(write_store, out, samples, kind, num_classes, splits, rejected, preprocessing, source) -> int:
    def guarded():
        n = 0
        for s in samples:
            n += 1
            yield s
        if n == 0:
            raise _NothingValid()

    try:
        return write_store(
            out, guarded(), dataset=kind, num_classes=num_classes, splits=splits, rejected=lambda: rejected,
            preprocessing=preprocessing, source=source, force=True,
        )
    except _NothingValid:
        reasons = _count_reasons(rejected)
        top = ", ".join(f"{r} ({c})" for r, c in sorted(reasons.items(), key=lambda x: -x[1])[:3])
        raise SkelError(f"no valid {kind} sample found; {len(rejected)} rejected: {top}") from None


def _reason_key(reason: str) -> str:
    """Group rejection reasons: drop line numbers and quoted details."""
    r = re.sub(r"^line \d+: ", "", reason)
    r = re.sub(r"b?'[^']*'", "'...'", r)
    return re.sub(r"\d+", "N", r).strip()


def _count_reasons(rejected: list[tuple[str, str]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for _, reason in rejected:
        k = _reason_key(reason)
        out[k] = out.get(k, 0) + 1
    return out


def _report(kind, out, n, rejected, skipped_other, stats, files, workers, t0, mlist) -> PrepareReport:
    from skelcli.data.store import open_info

    info = open_info(out)
    fr = np.asarray(stats["frames"], dtype=np.float64)
    dt = time.perf_counter() - t0
    mb = stats["bytes"] / 1e6
    return PrepareReport(
        dataset=kind, out=str(out), status="written", kept=n, rejected=_count_reasons(rejected),
        skipped_other_dataset=skipped_other, splits=info.protocols,
        frames={"min": float(fr.min()), "mean": float(fr.mean()), "max": float(fr.max()), "total": float(fr.sum())} if len(fr) else {},
        files=files, megabytes=round(mb, 3), seconds=round(dt, 3), mb_per_s=round(mb / dt, 2) if dt > 0 else 0.0,
        workers=workers, rejected_examples=[tuple(r) for r in rejected[:20]], missing_list=mlist,
    )


def _up_to_date_report(kind, out, t0) -> PrepareReport:
    from skelcli.data.store import open_info, read_rejected

    info = open_info(out)
    rej = read_rejected(out)
    return PrepareReport(
        dataset=kind, out=str(out), status="up-to-date", kept=info.num_samples, rejected=_count_reasons(rej),
        skipped_other_dataset=int(info.source.get("skipped_other_dataset", 0)), splits=info.protocols, frames={},
        files=int(info.source.get("files", 0)), megabytes=0.0, seconds=round(time.perf_counter() - t0, 3), mb_per_s=0.0,
        workers=0, rejected_examples=[tuple(r) for r in rej[:20]],
        warnings=["inputs and settings unchanged since the last run: nothing to do (use --force to rebuild)"],
    )


def prepare_dataset(
    kind: str,
    raw_dirs: Sequence[Union[str, Path]],
    out: Union[str, Path],
    settings=None,
    workers: Optional[int] = None,
    force: bool = False,
    progress: bool = False,
    missing_list: Optional[Union[str, Path]] = None,
) -> PrepareReport:
    """Build the HDF5 store for ``kind`` (ntu60, ntu120, pku-mmd-v1, pku-mmd-v2) from raw dirs.

    A re-run whose inputs (file names, sizes, mtimes), settings and missing list are unchanged is a
    no-op (status "up-to-date") unless ``force``. SkelError on: unknown kind, missing --raw,
    duplicate sample names, nothing valid found.
    """
    if kind not in KINDS:
        raise SkelError(f"unknown dataset kind {kind!r}; choose one of {', '.join(KINDS)}")
    settings = settings if settings is not None else default_settings(kind)
    workers = int(workers) if workers else (os.cpu_count() or 1)
    if workers < 1:
        raise SkelError("--workers must be >= 1")
    if missing_list is not None and not kind.startswith("ntu"):
        raise SkelError("--missing-list applies to ntu60/ntu120 only")
    out = Path(out)
    t0 = time.perf_counter()
    rejected: list[tuple[str, str]] = []
    files = _scan(raw_dirs, rejected)
    if kind.startswith("ntu"):
        return _prepare_ntu(kind, raw_dirs, files, out, settings, workers, force, progress, missing_list, rejected, t0)
    return _prepare_pku(kind, raw_dirs, files, out, settings, workers, force, progress, rejected, t0)
