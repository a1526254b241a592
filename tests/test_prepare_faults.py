"""`skel prepare` under hostile conditions (issue 12): signals, stale temporary files, same-size edits
with a kept mtime, bad --out paths and symlink loops under --raw.

Every test checks the exit code, the message, that no traceback is printed and that a good store
written before is byte-identical after a run that fails, is interrupted or has nothing to do. The signal tests run `python -m skelcli prepare` as a
real process (its own session, so group signals stay off pytest) on 400 copies of one raw file
(about 2 s of parsing with 2 workers) and signal it once its first progress line is out, that is
once the temporary file exists and the pool is returning results.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from skelcli.cli import app
from skelcli.data.ntu import format_skeleton
from skelcli.data.store import open_info, read_rejected, read_samples

#: One pytest-xdist worker runs this whole file (its module fixture is built once; make test uses --dist loadgroup).
pytestmark = pytest.mark.xdist_group("prepare_faults")

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
#: Generous: the machine running the suite may be loaded.
TIMEOUT_S = 60


def write_raw(d: Path, n: int, frames: int = 14) -> list[Path]:
    """``n`` valid NTU60 files (copies of one 1-actor performance under distinct names) in ``d``."""
    d.mkdir(parents=True, exist_ok=True)
    base = np.zeros((25, 3))
    base[:, 0] = np.linspace(-0.2, 0.2, 25)
    base[:, 1] = np.linspace(-0.8, 0.8, 25)
    base[:, 2] = 3.0
    text = format_skeleton([[("11", base + 0.05 * np.sin(0.3 * t))] for t in range(frames)])
    paths = []
    for i in range(n):
        p = d / f"S001C001P{1 + i % 40:03d}R{1 + i // 40 % 2:03d}A{1 + i // 80:03d}.skeleton"
        p.write_text(text)
        paths.append(p)
    return paths


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_clean(output: str) -> None:
    assert "Traceback" not in output and "BrokenPipe" not in output and "KeyboardInterrupt" not in output, output


@pytest.fixture
def good(tmp_path) -> Path:
    """A good store at tmp_path/out/ntu60.h5, built from 3 small raw files."""
    write_raw(tmp_path / "small", 3)
    out = tmp_path / "out" / "ntu60.h5"
    r = run("prepare", "ntu60", "--raw", tmp_path / "small", "--out", out, "--workers", 1)
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def big_raw(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("big") / "raw"
    write_raw(d, 400, frames=100)
    return d


class Prepare:
    """`python -m skelcli prepare ...` in its own session, its output collected by a thread."""

    def __init__(self, *args) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1", SKEL_WIDTH="200")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "skelcli", "prepare", *map(str, args)], cwd=ROOT, env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
            # as from an interactive shell: pytest-xdist workers ignore SIGINT, and an ignored SIGINT is
            # inherited (Python then installs no KeyboardInterrupt handler, as a background job expects)
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self.reader.start()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, predicate, what: str) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while not predicate():
            assert self.proc.poll() is None, f"prepare ended (rc {self.proc.returncode}) before {what}:\n{self.output}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{self.output}"
            time.sleep(0.01)

    def finish(self) -> int:
        """Exit code, once the process and everything holding its output (pool workers) are gone."""
        rc = self.proc.wait(timeout=TIMEOUT_S)
        self.reader.join(timeout=TIMEOUT_S)
        assert not self.reader.is_alive(), f"output still open {TIMEOUT_S} s after exit (a worker left running?)"
        return rc

    def children(self) -> list[int]:
        try:
            return [int(p) for p in Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()]
        except OSError:
            return []  # no /proc children file here: the worker check is skipped


@pytest.fixture
def spawn():
    """``spawn(*args)`` -> a running :class:`Prepare`; at teardown what is left of its process group
    (after a failed test) is killed."""
    started: list[Prepare] = []

    def start(*args) -> Prepare:
        started.append(Prepare(*args))
        return started[-1]

    yield start
    for p in started:
        try:
            os.killpg(p.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.proc.wait()


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


def assert_workers_end(workers: list[int]) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not all(gone(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert all(gone(w) for w in workers), f"pool workers still running: {workers}"


def temp_files(out: Path) -> list[Path]:
    return sorted(out.parent.glob(out.name + ".tmp-*"))


def start_and_wait_running(spawn, big_raw: Path, out: Path) -> tuple[Prepare, list[int]]:
    p = spawn("ntu60", "--raw", big_raw, "--out", out, "--workers", 2)
    p.wait_for(lambda: "prepare ntu60: " in p.output, "the first progress line")
    assert temp_files(out) == [out.with_name(f"{out.name}.tmp-{p.proc.pid}")]
    workers = p.children()
    return p, workers


@pytest.mark.parametrize(
    "sig, to_group, code",
    [(signal.SIGTERM, False, 143), (signal.SIGTERM, True, 143), (signal.SIGINT, True, 130)],
    ids=["sigterm-to-process", "sigterm-to-group", "ctrl-c-to-group"],
)
def test_signal_cleans_up_and_keeps_old_store(good, big_raw, spawn, sig, to_group, code):
    before = good.read_bytes()
    p, workers = start_and_wait_running(spawn, big_raw, good)
    (os.killpg if to_group else os.kill)(p.proc.pid, sig)
    assert p.finish() == code, p.output
    assert_clean(p.output)
    assert "error: interrupted" in p.output
    assert temp_files(good) == []
    assert good.read_bytes() == before
    assert_workers_end(workers)


def test_kill_9_leaves_temp_file_that_the_next_run_removes(good, big_raw, spawn):
    before = good.read_bytes()
    p, workers = start_and_wait_running(spawn, big_raw, good)
    os.kill(p.proc.pid, signal.SIGKILL)
    assert p.finish() == -signal.SIGKILL  # finish() also waits for the workers to let go of the output
    assert_clean(p.output)
    stale = temp_files(good)
    assert stale == [good.with_name(f"{good.name}.tmp-{p.proc.pid}")]
    assert good.read_bytes() == before
    assert_workers_end(workers)
    r = run("prepare", "ntu60", "--raw", good.parent.parent / "small", "--out", good, "--workers", 1)
    assert r.exit_code == 0, r.output
    assert_clean(r.output)
    assert f"removed {stale[0]}" in r.output and "up-to-date" in r.output
    assert temp_files(good) == [] and good.read_bytes() == before


def test_stale_temp_of_dead_pid_removed_live_one_kept(good, spawn):
    before = good.read_bytes()
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: its PID is free
    dead = good.with_name(f"{good.name}.tmp-{child.pid}")
    live = good.with_name(f"{good.name}.tmp-{os.getpid()}")
    other = good.with_name(f"other.h5.tmp-{child.pid}")
    for f in (dead, live, other):
        f.write_bytes(b"partial")
    p = spawn("ntu60", "--raw", good.parent.parent / "small", "--out", good, "--workers", 1)
    assert p.finish() == 0, p.output
    assert_clean(p.output)
    assert not dead.exists() and live.exists() and other.exists()
    assert f"removed {dead}" in p.output
    assert f"left {live} alone" in p.output
    assert good.read_bytes() == before  # the inputs are unchanged: up-to-date, not rewritten


def test_verify_inputs_hash_sees_same_size_edit_with_kept_mtime(good, tmp_path):
    raw = tmp_path / "small"
    prep = ("prepare", "ntu60", "--raw", raw, "--out", good, "--workers", 1)
    before = good.read_bytes()
    r = run(*prep, "--verify-inputs", "hash")  # built with stat: no hashes stored yet
    assert r.exit_code == 0 and "(written)" in r.output and "no content hashes" in r.output, r.output
    assert open_info(good).source["verify_inputs"] == "hash"
    r = run(*prep, "--verify-inputs", "hash")
    assert r.exit_code == 0 and "up-to-date" in r.output, r.output

    target = sorted(raw.iterdir())[0]  # sample 0 of the store (names are sorted)
    joints_before = read_samples(good, [0]).joints
    st = target.stat()
    text = target.read_text()
    edited = text.replace(" 3.", " 4.", 1)  # a same-size edit: joint 0's z in frame 0 moves by a metre
    assert edited != text and len(edited) == len(text)
    target.write_text(edited)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert target.stat().st_size == st.st_size and target.stat().st_mtime_ns == st.st_mtime_ns

    hashed = good.read_bytes()
    r = run(*prep)  # stat (the default) cannot see it
    assert r.exit_code == 0 and "up-to-date" in r.output, r.output
    assert good.read_bytes() == hashed
    r = run(*prep, "--verify-inputs", "hash")
    assert r.exit_code == 0 and "(written)" in r.output, r.output
    assert_clean(r.output)
    assert good.read_bytes() != before
    assert not np.allclose(read_samples(good, [0]).joints, joints_before)  # the edit is in the store

    # an mtime-only change: hash compares contents (up-to-date), stat sees a new mtime (rebuilds)
    rebuilt = good.read_bytes()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    r = run(*prep, "--verify-inputs", "hash")
    assert r.exit_code == 0 and "up-to-date" in r.output, r.output
    assert good.read_bytes() == rebuilt
    r = run(*prep)
    assert r.exit_code == 0 and "(written)" in r.output, r.output


def test_out_is_a_directory(good, tmp_path):
    before = good.read_bytes()
    r = run("prepare", "ntu60", "--raw", tmp_path / "small", "--out", good.parent, "--workers", 1)
    assert r.exit_code == 2, r.output
    assert_clean(r.output)
    assert f"--out {good.parent} is a folder; give a file name" in r.output
    assert sorted(p.name for p in good.parent.iterdir()) == ["ntu60.h5"] and good.read_bytes() == before


def test_out_under_a_file(good, tmp_path):
    before = good.read_bytes()
    r = run("prepare", "ntu60", "--raw", tmp_path / "small", "--out", good / "x.h5", "--workers", 1)
    assert r.exit_code == 2, r.output
    assert_clean(r.output)
    assert f"{good} is a file" in r.output
    assert good.read_bytes() == before and temp_files(good) == []


def test_out_in_unwritable_folder(good, tmp_path, monkeypatch):
    before = good.read_bytes()
    folder = good.parent
    if os.geteuid() == 0:  # root may write anywhere: simulate the permission check's answer
        real = os.access

        def access(path, mode, *a, **kw):
            return False if Path(path) == folder and mode & os.W_OK else real(path, mode, *a, **kw)

        monkeypatch.setattr(os, "access", access)
    else:
        folder.chmod(0o555)
    try:
        r = run("prepare", "ntu60", "--raw", tmp_path / "small", "--out", good, "--workers", 1, "--force")
    finally:
        folder.chmod(0o755)
    assert r.exit_code == 2, r.output
    assert_clean(r.output)
    assert f"folder {folder} is not writable" in r.output
    assert good.read_bytes() == before and temp_files(good) == []


def test_out_that_is_not_an_hdf5_file_is_never_overwritten(good, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    for extra in ((), ("--force",)):
        r = run("prepare", "ntu60", "--raw", tmp_path / "small", "--out", notes, "--workers", 1, *extra)
        assert r.exit_code == 2, r.output
        assert_clean(r.output)
        assert "exists and is not an HDF5 file" in r.output
    assert notes.read_text() == "my notes"


def test_json_that_cannot_be_written_fails_before_any_work(good, tmp_path):
    r = run("prepare", "ntu60", "--raw", tmp_path / "small", "--out", tmp_path / "new.h5", "--workers", 1, "--json", good / "r.json")
    assert r.exit_code == 2, r.output
    assert_clean(r.output)
    assert "--json" in r.output and not (tmp_path / "new.h5").exists()


def test_symlink_loops_under_raw_are_rejected_not_fatal(good, tmp_path):
    raw = tmp_path / "small"
    (raw / "loop").symlink_to("loop")
    (raw / "a").symlink_to("b")
    (raw / "b").symlink_to("a")
    (raw / "S001C001P009R001A001.skeleton").symlink_to("S001C001P009R001A001.skeleton")
    (raw / "again").symlink_to(".")
    (raw / "sub").mkdir()
    (raw / "sub" / "up").symlink_to("..")
    (raw / "dangling.skeleton").symlink_to(tmp_path / "nowhere")
    shutil.copy(sorted(raw.glob("*.skeleton"))[0], raw / "sub" / "S001C001P010R001A001.skeleton")
    r = run("prepare", "ntu60", "--raw", raw, "--out", good, "--workers", 1)
    assert r.exit_code == 0, r.output
    assert_clean(r.output)
    assert "rejected: symlink loop" in r.output and "rejected: directory already scanned" in r.output
    rej = dict(read_rejected(good))
    for name in ("loop", "a", "b", "S001C001P009R001A001.skeleton"):
        assert rej[str(raw / name)].startswith("symlink loop"), rej
    assert rej[str(raw / "again")].startswith("directory already scanned")
    assert rej[str(raw / "sub" / "up")].startswith("directory already scanned")
    assert rej[str(raw / "dangling.skeleton")].startswith("dangling symlink")
    assert open_info(good).num_samples == 4  # the 3 files + the copy in sub/, each once
    written = good.read_bytes()
    r = run("prepare", "ntu60", "--raw", raw, "--out", good, "--workers", 1)
    assert r.exit_code == 0 and "up-to-date" in r.output, r.output
    assert good.read_bytes() == written


def test_verify_inputs_hash_pku_split_file_edit(tmp_path):
    raw = tmp_path / "pku"
    shutil.copytree(Path(__file__).parent / "fixtures" / "pku", raw)
    out = tmp_path / "pku.h5"
    prep = ("prepare", "pku-mmd-v1", "--raw", raw, "--out", out, "--workers", 2, "--verify-inputs", "hash")
    r = run(*prep)
    assert r.exit_code == 0 and "(written)" in r.output, r.output
    assert "no content hashes" not in r.output  # a new store: nothing to note
    written = out.read_bytes()
    r = run(*prep)
    assert r.exit_code == 0 and "up-to-date" in r.output, r.output
    assert out.read_bytes() == written
    split = raw / "cross-subject.txt"
    st = split.stat()
    text = split.read_text()
    swapped = text.replace("0001-L", "0001-X", 1)  # same size, same mtime: the split list changed
    assert swapped != text and len(swapped) == len(text)
    split.write_text(swapped)
    os.utime(split, ns=(st.st_atime_ns, st.st_mtime_ns))
    r = run(*prep[:-2])  # stat
    assert r.exit_code == 0 and "up-to-date" in r.output, r.output
    r = run(*prep)
    assert r.exit_code == 0 and "(written)" in r.output, r.output
    assert_clean(r.output)
