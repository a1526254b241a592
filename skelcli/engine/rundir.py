"""Run folders: what ``skel pretrain`` and ``skel finetune`` promise about the files they leave behind.

A :class:`RunDir` owns one folder:

* ``.lock`` -- an exclusive ``flock`` held while a run writes there (a second run into the same folder is
  refused, naming the holder's PID; the kernel releases the lock when its process dies, so the lock file a
  killed run leaves behind is stale and taken over);
* ``settings.json`` -- written atomically (temporary file + rename); a damaged one is a one-line error;
* ``metrics.jsonl`` -- one JSON object per line; non-finite numbers are written as ``null`` and named in a
  ``nonfinite`` list (bare ``NaN`` is not JSON). On resume the log is cut back to the checkpoint's step:
  rows written after it (a run killed with -9, a fallback to an older checkpoint) and a torn last line move
  to ``metrics.cut-<UTC time>.jsonl``, so a finished run's log holds every step once;
* ``last.pt`` and ``checkpoint-NNNN.pt`` -- found newest first by :meth:`RunDir.find_resume`, which says
  why each unusable file was skipped.

:func:`open_run` applies the refusal rules shared by both commands.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterable

from skelcli.errors import SkelError
from skelcli.paths import atomic_write, check_out_dir, read_json_object

try:  # POSIX; elsewhere runs are not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

SETTINGS = "settings.json"
METRICS = "metrics.jsonl"
LOCK = ".lock"


def utc_stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime())


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: readers see the old or the new file."""
    atomic_write(path, lambda fh: fh.write(text.encode()))


def json_safe(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with non-finite top-level floats replaced by None and listed under ``nonfinite``."""
    bad = [k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)]
    if not bad:
        return record
    out = {k: (None if k in bad else v) for k, v in record.items()}
    out["nonfinite"] = bad
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunDir:
    """One run folder (see the module docstring). ``path`` need not exist yet."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock_fd: int | None = None
        self._log = None
        self.notes: list[str] = []
        #: callables that receive every row logged after metrics.jsonl has it (e.g. a TensorBoard writer)
        self.mirrors: list[Any] = []

    # ------------------------------------------------------------------ files
    @property
    def settings_file(self) -> Path:
        return self.path / SETTINGS

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS

    def read_settings(self) -> dict[str, Any] | None:
        """The stored settings, None when there are none; SkelError naming the file when it is damaged."""
        f = self.settings_file
        if not f.exists():
            return None
        return read_json_object(f, "remove it or use --force (the old files move to old-<time>/)")

    def write_settings(self, settings: dict[str, Any]) -> None:
        write_text_atomic(self.settings_file, json.dumps(settings, indent=2) + "\n")

    def checkpoints(self) -> list[Path]:
        """Newest first: last.pt (written at epoch ends, see ``save_interval_s``, and on interruption), then checkpoint-NNNN.pt by number."""
        numbered = sorted(self.path.glob("checkpoint-*.pt"), key=lambda p: p.name, reverse=True)
        last = self.path / "last.pt"
        return ([last] if last.exists() else []) + numbered

    def find_resume(self, required: Iterable[str] = ("model", "optimizer")) -> tuple[Path | None, dict[str, Any] | None, list[str]]:
        """The newest checkpoint that loads and holds ``required`` keys: (path, checkpoint, notes on the
        files skipped and why); (None, None, notes) when there is none."""
        from skelcli.engine.checkpoint import load_checkpoint

        notes: list[str] = []
        for path in self.checkpoints():
            try:
                ckpt = load_checkpoint(path)
            except SkelError as exc:
                notes.append(f"skipped {path.name}: {exc}")
                continue
            missing = [k for k in required if k not in ckpt]
            if missing:
                notes.append(f"skipped {path.name}: holds no training state ({', '.join(missing)} missing)")
                continue
            return path, ckpt, notes
        return None, None, notes

    def move_aside(self, extra: Iterable[Path] = ()) -> Path | None:
        """Move checkpoints, metrics, settings (and ``extra`` paths) into ``old-<UTC time>/`` before a fresh
        run (``--force``) writes new ones; returns that folder (None when there was nothing)."""
        old = self.checkpoints() + [self.metrics_file, self.settings_file] + list(self.path.glob("metrics.cut-*.jsonl")) + list(extra)
        old = [p for p in dict.fromkeys(old) if p.exists()]
        if not old:
            return None
        stamp = utc_stamp()
        target = self.path / f"old-{stamp}"
        n = 1
        while target.exists():
            n += 1
            target = self.path / f"old-{stamp}-{n}"
        target.mkdir()
        for p in old:
            p.rename(target / p.name)
        return target

    # ------------------------------------------------------------------ lock
    def acquire(self) -> None:
        """Take the folder's exclusive lock (creating the folder); SkelError when another live run holds it."""
        check_out_dir(self.path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SkelError(f"cannot create run folder {self.path}: {exc.strerror or exc}") from None
        if fcntl is None or self._lock_fd is not None:
            return
        lock = self.path / LOCK
        while True:
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise SkelError(f"cannot write in run folder {self.path}: {exc.strerror or exc}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                who = f"process {holder.get('pid', '?')} on {holder.get('host', '?')}, started {holder.get('started', '?')}"
                raise SkelError(f"run folder {self.path} is in use by {who}; wait for it to finish or choose another --out") from None
            # the file may have been removed by its previous holder between open and flock: lock the current one
            try:
                same = os.stat(lock).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = _read_holder(fd)
        pid = previous.get("pid")
        if isinstance(pid, int) and pid != os.getpid() and previous.get("host") == socket.gethostname() and not _pid_alive(pid):
            self.notes.append(f"took over the stale lock of process {pid} (no longer running)")
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": utc_stamp()}).encode())
        self._lock_fd = fd

    def release(self) -> None:
        self.close_log()
        if self._lock_fd is None:
            return
        try:
            (self.path / LOCK).unlink(missing_ok=True)
        finally:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None

    def __enter__(self) -> "RunDir":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    # ------------------------------------------------------------------ log
    def open_log(self, resume_step: int | None = None) -> None:
        """Open metrics.jsonl for appending; with ``resume_step`` first cut it back to that step."""
        if resume_step is not None:
            self.cut_log(resume_step)
        self._log = open(self.metrics_file, "a")

    def cut_log(self, step: int) -> int:
        """Move rows with ``step`` greater than ``step`` (and unreadable lines) to metrics.cut-<time>.jsonl;
        returns how many rows moved."""
        f = self.metrics_file
        if not f.exists():
            return 0
        keep, cut = [], []
        for line in f.read_text().splitlines(keepends=True):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                late = isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] > step
            except json.JSONDecodeError:
                late = True
            (cut if late else keep).append(line if line.endswith("\n") else line + "\n")
        if cut:
            side = self.path / f"metrics.cut-{utc_stamp()}.jsonl"
            with open(side, "a") as fh:
                fh.writelines(cut)
            write_text_atomic(f, "".join(keep))
            self.notes.append(f"metrics.jsonl cut back to step {step}: {len(cut)} later row(s) moved to {side.name}")
        return len(cut)

    def log(self, record: dict[str, Any]) -> None:
        if self._log is not None:
            row = json_safe(record)
            self._log.write(json.dumps(row) + "\n")
            self._log.flush()
            for mirror in self.mirrors:
                mirror(row)

    def close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = json.loads(os.read(fd, 4096).decode() or "{}")
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def settings_differences(old: dict[str, Any], new: dict[str, Any], volatile: set[tuple[str, ...]] = frozenset(),
                         prefix: tuple[str, ...] = ()) -> list[str]:
    """Dotted names of the fields that differ between two settings dicts, ignoring ``volatile`` paths."""
    out: list[str] = []
    for key in sorted(set(old) | set(new)):
        path = prefix + (key,)
        if path[:2] in volatile or path[:1] in volatile:
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += settings_differences(a, b, volatile, path)
        elif a != b:
            out.append(".".join(path))
    return out


def open_run(run: RunDir, resolved: dict[str, Any], *, resume: str | Path | None, force: bool,
             volatile: set[tuple[str, ...]] = frozenset(), required: Iterable[str] = ("model", "optimizer"),
             has_work: bool | None = None, method: str | None = None) -> tuple[Path | None, dict[str, Any] | None, list[str]]:
    """The refusal rules of a run folder, applied before anything is written; returns the checkpoint to
    resume from as (path, checkpoint, notes) -- (None, None, notes) for a fresh run.

    * ``resume="auto"``: the newest usable checkpoint; a fresh run when the folder holds none at all;
      an error listing why each was skipped when every one is unusable.
    * ``resume=PATH``: that checkpoint (it must load and hold ``required``).
    * A checkpoint of another ``method`` cannot be resumed.
    * A checkpoint written with other settings, or a folder whose settings.json differs, is refused
      unless ``force``; a fresh run into a folder that holds checkpoints (``has_work``, by default
      "any checkpoint") is refused unless ``force``, which moves the old files aside.
    """
    from skelcli.engine.checkpoint import load_checkpoint

    check_out_dir(run.path)
    path: Path | None = None
    ckpt: dict[str, Any] | None = None
    notes: list[str] = []
    exists = run.path.is_dir()
    if resume == "auto":
        if exists:
            path, ckpt, notes = run.find_resume(required)
            if ckpt is None and notes and not force:
                raise SkelError(f"no usable checkpoint in {run.path}: " + "; ".join(notes)
                                + ". Use --force to start over (the old files move to old-<time>/)")
    elif resume is not None:
        path = Path(resume)
        ckpt = load_checkpoint(path)
        missing = [k for k in required if k not in ckpt]
        if missing:
            raise SkelError(f"{path}: checkpoint holds no training state ({', '.join(missing)} missing)")
    if ckpt is not None and method is not None and ckpt.get("method") != method:
        raise SkelError(f"{path}: checkpoint of method {ckpt.get('method')!r}, cannot resume a {method!r} run")
    if ckpt is not None and not force:
        diff = settings_differences(ckpt.get("settings", {}), resolved, volatile)
        if diff:
            raise SkelError(f"{path}: written with different settings ({', '.join(diff[:5])}); use --force to resume anyway")
    if exists and not force:
        old = run.read_settings()
        diff = settings_differences(old, resolved, volatile) if old is not None else []
        if diff:
            raise SkelError(f"run folder {run.path} holds a different configuration ({', '.join(diff[:5])}); use --force or another --out")
    if has_work is None:
        has_work = exists and bool(run.checkpoints())
    # Checkpoints are never overwritten by a fresh run, whether or not settings.json is there (copied
    # checkpoints, a lost settings file): only a resume continues them, and --force moves them aside.
    if ckpt is None and not force and has_work:
        raise SkelError(f"run folder {run.path} already holds checkpoints; use --resume auto to continue or --force to start "
                        "over (the old files are then moved to an old-<time> folder)")
    return path, ckpt, notes


class StopSignal:
    """SIGINT/SIGTERM -> ``received`` is set; the loop finishes its step, checkpoints and returns.
    A second SIGINT aborts at once. Only installed in the main thread."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:  # noqa: ANN001
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def __enter__(self) -> "StopSignal":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def exit_code(signal_name: str | None) -> int:
    """The shell's code for a run stopped by a signal: 130 for SIGINT, 143 for SIGTERM."""
    return 130 if signal_name == "SIGINT" else 143


__all__ = ["RunDir", "StopSignal", "open_run", "settings_differences", "write_text_atomic", "json_safe",
           "exit_code"]
