"""`skel prepare`: raw NTU RGB+D 60/120 or PKU-MMD I/II files -> one HDF5 store (see store.py).

Raw dirs are searched recursively; files are parsed in a process pool; samples are streamed into
the store in sorted-name order (deterministic output). Bad files are reported, counted, stored in
/rejected and skipped; the store holds every good sample.

Interrupts: Ctrl-C (SIGINT) and, inside :func:`sigterm_raises`, SIGTERM stop the run with the
temporary ``<out>.tmp-<pid>`` removed and an existing ``out`` untouched; pool workers never print
for them (see :func:`_worker_init`). Temporary files left by killed runs are removed by the next run.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import signal
import stat
import sys
import threading
import time
from contextlib import ExitStack, closing, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import numpy as np

from skelcli.errors import SkelError

KINDS = ("ntu60", "ntu120", "pku-mmd-v1", "pku-mmd-v2")
NTU_CLASSES = {"ntu60": 60, "ntu120": 120}
#: Files that ship with the datasets and are ignored without a report.
_IGNORED_SUFFIXES = {".xlsx", ".md", ".pdf", ".zip", ".csv"}
#: ``--verify-inputs``: how a re-run decides that the raw files are unchanged (see prepare_dataset).
VERIFY_INPUTS = ("stat", "hash")


class Terminated(KeyboardInterrupt):
    """SIGTERM received inside :func:`sigterm_raises` (a KeyboardInterrupt, so cleanup that handles
    Ctrl-C handles it too)."""


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread (further SIGTERMs
    are ignored while that unwinds); the previous handler is restored after. No-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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
    """Every regular file under the raw dirs (recursive, sorted; names starting with "." skipped).

    Symlinks are followed. A directory reached a second time within one --raw dir (a symlink loop
    such as ``ln -s . raw/again``, or a second link to it) is not scanned again; that entry goes to
    ``rejected`` with a reason, as do unreadable dirs, dangling or looping symlinks
    (``ln -s loop raw/loop``) and entries that are not regular files (named pipes, sockets, devices).
    """
    if not raw_dirs:
        raise SkelError("no --raw directory given")
    files: list[Path] = []
    for d in raw_dirs:
        d = Path(d)
        if not d.exists():
            raise SkelError(f"--raw {d} does not exist" + (" (a dangling or looping symlink)" if d.is_symlink() else ""))
        if not d.is_dir():
            raise SkelError(f"--raw {d} is not a directory")
        if not os.access(d, os.R_OK | os.X_OK):
            raise SkelError(f"--raw {d} is not readable")

        def onerror(exc: OSError) -> None:
            rejected.append((str(exc.filename), f"unreadable directory: {exc.strerror}"))

        seen: set[tuple[int, int]] = set()
        for root, dirs, names in os.walk(d, onerror=onerror, followlinks=True):
            try:
                st = os.stat(root)
            except OSError as exc:
                rejected.append((root, f"unreadable directory: {exc.strerror}"))
                dirs.clear()
                continue
            if (st.st_dev, st.st_ino) in seen:
                rejected.append((root, "directory already scanned (a symlink loop or a second link to it)"))
                dirs.clear()
                continue
            seen.add((st.st_dev, st.st_ino))
            dirs.sort()
            for n in sorted(names):
                if n.startswith("."):
                    continue
                p = Path(root) / n
                reason = _not_a_file(p)
                if reason:
                    rejected.append((str(p), reason))
                else:
                    files.append(p)
    return files


def _not_a_file(p: Path) -> Optional[str]:
    """Why ``p`` (a non-directory entry of the scan) cannot be read as a raw file, or None."""
    try:
        st = p.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symlink loop (too many levels of symbolic links)"
        if exc.errno == errno.ENOENT and p.is_symlink():
            return "dangling symlink (its target does not exist)"
        return f"unreadable: {exc.strerror}"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file (a named pipe, socket or device)"
    return None


def _fingerprint(kind: str, files: Sequence[Path], settings, extra: str = "", digests: Optional[dict[Path, str]] = None) -> str:
    """sha256 over kind, skelcli version, settings, ``extra`` and, per file (sorted by name), its name,
    size and mtime, or, when ``digests`` ({path: content digest}) is given, name, size and digest."""
    from skelcli import __version__

    h = hashlib.sha256()
    h.update(f"{kind}\0skelcli {__version__}\0".encode())
    h.update(settings.model_dump_json().encode())
    h.update(extra.encode())
    for p in sorted(files, key=lambda p: (p.name, str(p))):
        st = p.stat()
        third = digests[p] if digests is not None else st.st_mtime_ns
        h.update(f"{p.name}\0{st.st_size}\0{third}\n".encode())
    return h.hexdigest()


def _file_digest(path: str) -> str:
    """blake2b-128 of the file's bytes, read in 1 MiB blocks ("unreadable: <reason>" on an OSError)."""
    h = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as exc:
        return f"unreadable: {exc.strerror}"
    return h.hexdigest()


def _digests(paths: Sequence[Path], workers: int, progress: bool, label: str) -> dict[Path, str]:
    """{path: _file_digest(path)}, hashed in the process pool."""
    with closing(_pool_map(_file_digest, [str(p) for p in paths], workers, progress, label)) as results:
        return dict(zip(paths, results))


def _stored_source(out: Path) -> dict:
    """The ``source`` attrs of an existing store ({} when there is none or it cannot be read)."""
    from skelcli.data.store import open_info

    try:
        return open_info(out).source
    except (SkelError, OSError, KeyError, ValueError):
        return {}


def _is_up_to_date(out: Path, force: bool, verify_inputs: str, fp: str, content_fp: Optional[str], notes: list[str]) -> bool:
    """Whether the store at ``out`` was built from the same inputs (see prepare_dataset)."""
    if force or not out.exists():
        return False
    source = _stored_source(out)
    if verify_inputs == "hash":
        if not source.get("content_fingerprint"):
            if source:
                notes.append("the existing store records no content hashes (it was built with --verify-inputs stat): rebuilt to record them")
            return False
        return source["content_fingerprint"] == content_fp
    return source.get("fingerprint") == fp


def _worker_init(parent: int) -> None:
    """Signals in a pool worker: SIGINT and SIGTERM are ignored, since Ctrl-C, ``timeout``, Slurm or
    systemd signal the whole process group or cgroup and the parent handles them; a worker that died
    of them could hold a queue lock the parent's shutdown waits for. The pool ends its workers with
    SIGKILL (:class:`_Worker`). When the parent is killed outright (kill -9) the worker is killed
    too (Linux PR_SET_PDEATHSIG; elsewhere SIGPIPE ends it silently on its next result), so no orphan
    is left and no BrokenPipeError traceback is printed."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before prctl
        os._exit(1)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


def _fork_pool(workers: int):
    """A fork-context multiprocessing Pool of :class:`_Worker` processes set up by :func:`_worker_init`.
    SIGINT/SIGTERM are blocked while it forks, so a worker never runs the parent's handlers."""
    import multiprocessing.pool

    ctx = multiprocessing.get_context("fork")

    class _Worker(ctx.Process):
        """A worker that ignores SIGTERM: ``terminate()`` (what Pool.terminate calls) sends SIGKILL."""

        def terminate(self) -> None:
            self.kill()

    class _Pool(multiprocessing.pool.Pool):
        @staticmethod
        def Process(ctx, *args, **kwds):  # the stdlib hook that makes the pool's worker processes
            return _Worker(*args, **kwds)

    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        return _Pool(workers, initializer=_worker_init, initargs=(os.getpid(),), context=ctx)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _pool_map(fn, jobs: list, workers: int, progress: bool, label: str) -> Iterator:
    """Ordered map over jobs, in a process pool when workers > 1, with a files/s bar (plain progress
    lines when the console is not a terminal, :mod:`skelcli.progress`). Closing the generator (or an
    exception in it) terminates the pool."""
    with ExitStack() as stack:
        bar = None
        if progress:
            from skelcli.cli._app import console
            from skelcli.progress import step_progress

            bar = step_progress(label, len(jobs), console=console, fields=("rate",))
            stack.callback(bar.close)
        t0 = time.perf_counter()
        if workers > 1 and len(jobs) > 1:
            pool = stack.enter_context(_fork_pool(workers))
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


def _prepare_ntu(kind, raw_dirs, files, out, settings, workers, force, progress, missing_list, rejected, t0, verify_inputs, notes) -> PrepareReport:
    from skelcli.data.ntu import in_ntu60, ntu_splits, parse_name, read_missing_list
    from skelcli.data.store import Sample, write_store

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
    paths = [by_name[n] for n in names]
    fp = _fingerprint(kind, paths, settings, list_hash)
    content_fp = None
    if verify_inputs == "hash":
        content_fp = _fingerprint(kind, paths, settings, list_hash, _digests(paths, workers, progress, f"hash {kind} inputs"))
    if _is_up_to_date(out, force, verify_inputs, fp, content_fp, notes):
        return _up_to_date_report(kind, out, t0, verify_inputs)
    if not names:
        raise SkelError(f"no valid {kind} .skeleton files found under the --raw dirs")

    stats = {"bytes": 0, "frames": []}
    parsed_ok_listed: list[str] = []
    rejected_samples: list[str] = []

    def samples() -> Iterator[Sample]:
        jobs = [(str(by_name[n]), settings) for n in names]
        with closing(_pool_map(_ntu_job, jobs, workers, progress, f"prepare {kind}")) as results:
            for res in results:
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
        "verify_inputs": verify_inputs,
    }
    if content_fp is not None:
        source["content_fingerprint"] = content_fp
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


def _prepare_pku(kind, raw_dirs, files, out, settings, workers, force, progress, rejected, t0, verify_inputs, notes) -> PrepareReport:
    from skelcli.data.pku import (
        NUM_CLASSES, SPLIT_FILE_RE, class_names, label_mapping, read_labels, read_split_file, store_num_classes, video_info,
    )
    from skelcli.data.store import Sample, write_store

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
    paths = [skeletons[v] for v in videos] + [label_files[v] for v in videos if v in label_files]
    fp = _fingerprint(kind, paths, settings, extra)
    content_fp = None
    if verify_inputs == "hash":
        digests = _digests(paths + [chosen[k] for k in sorted(chosen)], workers, progress, f"hash {kind} inputs")
        content_extra = "".join(f"{k}={v.stat().st_size}:{digests[v]}" for k, v in sorted(chosen.items()))
        content_fp = _fingerprint(kind, paths, settings, content_extra, digests)
    if _is_up_to_date(out, force, verify_inputs, fp, content_fp, notes):
        return _up_to_date_report(kind, out, t0, verify_inputs)
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
    num_classes = store_num_classes(mapping, NUM_CLASSES[kind], settings)
    train_sets = {proto: read_split_file(p) for proto, p in chosen.items()}
    stats = {"bytes": 0, "frames": []}
    cut = {"clips": 0, "longest": 0}

    def samples() -> Iterator[Sample]:
        jobs = [(v, str(skeletons[v]), labels[v], settings) for v in videos if v in labels]
        with closing(_pool_map(_pku_job, jobs, workers, progress, f"prepare {kind}")) as results:
            for res in results:
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
                    if c.raw_frames > len(c.joints):
                        cut["clips"] += 1
                        cut["longest"] = max(cut["longest"], c.raw_frames)
                    yield Sample(c.name, c.joints, mapping[c.action], seq, view, -1, -1, c.num_actors)
        # write_store serialises the preprocessing attrs after the last sample: record the cut here.
        preprocessing["clips_cut_to_max_frames"] = cut["clips"]
        preprocessing["longest_cut_clip"] = cut["longest"]

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
        "verify_inputs": verify_inputs,
    }
    if content_fp is not None:
        source["content_fingerprint"] = content_fp
    preprocessing = {
        "settings": settings.model_dump(),
        "centered": settings.centered,
        "label_map": {str(k): v for k, v in mapping.items()},
        "label_rule": "action_id - 1" if settings.label_remap == "never" else "auto (action_id - 1, or sorted ids -> 0..k-1)",
        "max_frames": settings.max_frames,
        "spec": "spec/mamp-and-data.md F",
        "layout": "(frames, 2, 25, 3) metres, raw Kinect camera coordinates",
    }
    n = _write_nonempty(write_store, out, samples(), kind, num_classes, splits, rejected, preprocessing, source,
                        names=class_names(mapping, num_classes))
    rep = _report(kind, out, n, rejected, 0, stats, len(videos), workers, t0, None)
    if cut["clips"]:
        warnings.append(f"{cut['clips']} clip(s) longer than max_frames={settings.max_frames} (up to {cut['longest']} frames) "
                        "keep their first max_frames frames, as the reference does")
    rep.warnings.extend(warnings)
    return rep


# ------------------------------------------------------------------------------------ shared
class _NothingValid(Exception):
    pass


def _write_nonempty(write_store, out, samples, kind, num_classes, splits, rejected, preprocessing, source, names=None) -> int:
    """write_store with ``names`` (default: the dataset's action names) as class_names; SkelError when nothing valid."""
    from skelcli.data.actions import action_names

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
            preprocessing=preprocessing, source=source, force=True, class_names=names if names is not None else action_names(kind),
        )
    except _NothingValid:
        reasons = _count_reasons(rejected)
        top = ", ".join(f"{r} ({c})" for r, c in sorted(reasons.items(), key=lambda x: -x[1])[:3])
        raise SkelError(f"no valid {kind} sample found; {len(rejected)} rejected: {top}") from None
    finally:
        samples.close()  # stops the parser pool now, also when the write failed or was interrupted


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


def _up_to_date_report(kind, out, t0, verify_inputs) -> PrepareReport:
    from skelcli.data.store import open_info, read_rejected

    info = open_info(out)
    rej = read_rejected(out)
    compared = "file contents (blake2b)" if verify_inputs == "hash" else "file sizes and mtimes"
    return PrepareReport(
        dataset=kind, out=str(out), status="up-to-date", kept=info.num_samples, rejected=_count_reasons(rej),
        skipped_other_dataset=int(info.source.get("skipped_other_dataset", 0)), splits=info.protocols, frames={},
        files=int(info.source.get("files", 0)), megabytes=0.0, seconds=round(time.perf_counter() - t0, 3), mb_per_s=0.0,
        workers=0, rejected_examples=[tuple(r) for r in rej[:20]],
        warnings=[f"inputs ({compared}) and settings unchanged since the last run: nothing to do (use --force to rebuild)"],
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
    verify_inputs: str = "stat",
) -> PrepareReport:
    """Build the HDF5 store for ``kind`` (ntu60, ntu120, pku-mmd-v1, pku-mmd-v2) from raw dirs.

    A re-run whose inputs, settings and missing list are unchanged is a no-op (status "up-to-date")
    unless ``force``. ``verify_inputs`` says how inputs are compared: "stat" (default) by file name,
    size and mtime; "hash" by name, size and a blake2b digest of every raw file's bytes (one extra
    read of the raw data, before parsing), which catches a same-size edit whose mtime was kept
    (``rsync -t``, ``touch -r``) and ignores mtime-only changes. The store always records the stat
    fingerprint, and the content one when built with "hash": a "hash" run on a store built with
    "stat" rebuilds it once (there is nothing to compare), a "stat" run after "hash" compares sizes
    and mtimes.

    Temporary files ``<out>.tmp-<pid>`` of processes that no longer exist are removed first (a
    report warning names them). SkelError on: unknown kind, missing --raw, an ``out`` that is a
    directory or cannot be created, duplicate sample names, nothing valid found.
    """
    from skelcli.data.store import clean_temp_files

    if kind not in KINDS:
        raise SkelError(f"unknown dataset kind {kind!r}; choose one of {', '.join(KINDS)}")
    if verify_inputs not in VERIFY_INPUTS:
        raise SkelError(f"unknown --verify-inputs {verify_inputs!r}; choose one of {', '.join(VERIFY_INPUTS)}")
    settings = settings if settings is not None else default_settings(kind)
    workers = int(workers) if workers else (os.cpu_count() or 1)
    if workers < 1:
        raise SkelError("--workers must be >= 1")
    if missing_list is not None and not kind.startswith("ntu"):
        raise SkelError("--missing-list applies to ntu60/ntu120 only")
    out = Path(out)
    _check_out(out)
    t0 = time.perf_counter()
    removed, kept = clean_temp_files(out)
    notes = [f"removed {p}: left by an interrupted run whose process is gone" for p in removed]
    notes += [f"left {p} alone: its process is still running (another prepare writing {out.name}?)" for p in kept]
    rejected: list[tuple[str, str]] = []
    files = _scan(raw_dirs, rejected)
    if kind.startswith("ntu"):
        report = _prepare_ntu(kind, raw_dirs, files, out, settings, workers, force, progress, missing_list, rejected, t0, verify_inputs, notes)
    else:
        report = _prepare_pku(kind, raw_dirs, files, out, settings, workers, force, progress, rejected, t0, verify_inputs, notes)
    report.warnings[:0] = notes
    return report


def _check_out(out: Path) -> None:
    """SkelError unless ``out`` can be written (see :func:`skelcli.paths.check_out_file`), and unless an
    existing ``out`` is an HDF5 file: any other file there is never overwritten."""
    import h5py

    from skelcli.paths import check_out_file

    check_out_file(out, "--out")
    if out.is_file() and not h5py.is_hdf5(out):
        raise SkelError(f"--out {out} exists and is not an HDF5 file; refusing to overwrite it (remove it or choose another --out)")
