"""Issue 12: nothing lost in a run folder -- locks, atomic settings, log cuts on resume, resumable
fine-tuning, and the messages a user reads when a run folder is in a bad state.

Subprocess tests run the real CLI (`python -m skelcli`) with one thread, so that the signal paths are
the ones a user hits; weights are compared exactly (same process layout, same machine)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from skelcli.cli._app import app
from skelcli.engine.checkpoint import load_checkpoint
from skelcli.engine.rundir import RunDir, json_safe
from skelcli.errors import SkelError

from helpers import StopAfter
from test_pretrain_cli import TINY

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "SKEL_WIDTH": "200"}


def _pretrain_args(data: Path, out: Path, epochs: int = 2) -> list[str]:
    args = ["pretrain", "--method", "mamp", "--data", str(data), "--split", "xsub", "--preset", "small",
            "--epochs", str(epochs), "--device", "cpu", "--out", str(out), "--no-progress"]
    for o in TINY:
        args += ["--set", o]
    return args


def _finetune_args(data: Path, out: Path, epochs: int) -> list[str]:
    return ["finetune", "--from-scratch", "-d", str(data), "--preset", "small", "--epochs", str(epochs), "--batch-size", "4",
            "--device", "cpu", "--out", str(out)]


def _cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "skelcli", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=ENV)


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if predicate():
            return
        time.sleep(0.02)


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _tensors(path: Path, keys=("encoder", "head")) -> dict[str, torch.Tensor]:
    ckpt = load_checkpoint(path)
    return {f"{k}.{n}": t for k in keys for n, t in ckpt[k].items()}


# ------------------------------------------------------------------ fine-tuning
def test_finetune_sigterm_then_resume_reaches_the_uninterrupted_weights(data_file, tmp_path):
    """SIGTERM mid-run saves last.pt and exits 143 without a traceback; --resume auto ends with the
    same finetuned.pt weights (bit for bit) and the same per-epoch log as an uninterrupted run."""
    epochs = 30  # 2 steps per epoch on the 9 tiny training clips
    ref = subprocess.run([sys.executable, "-m", "skelcli", *_finetune_args(data_file, tmp_path / "ref", epochs)],
                         capture_output=True, text=True, env=ENV, timeout=300)
    assert ref.returncode == 0, ref.stdout[-2000:] + ref.stderr[-2000:]

    out = tmp_path / "run"
    proc = _cli(*_finetune_args(data_file, out, epochs))
    _wait_for(lambda: (out / "metrics.jsonl").exists() and '"kind": "epoch"' in (out / "metrics.jsonl").read_text(), proc)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert "Traceback" not in output, output[-3000:]
    assert proc.returncode == 143, output[-3000:]
    assert "interrupted by SIGTERM" in output and "--resume auto" in output
    state = load_checkpoint(out / "last.pt")
    assert 1 <= state["epoch"] < epochs and not (out / "finetuned.pt").exists()

    # without --resume the folder is refused, and nothing in it changes
    before = (out / "last.pt").read_bytes()
    r = CliRunner().invoke(app, _finetune_args(data_file, out, epochs))
    assert r.exit_code == 2 and "already holds checkpoints" in r.output and "Traceback" not in r.output, r.output
    assert (out / "last.pt").read_bytes() == before

    done = subprocess.run([sys.executable, "-m", "skelcli", *_finetune_args(data_file, out, epochs), "--resume", "auto"],
                          capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    a, b = _tensors(tmp_path / "ref" / "finetuned.pt"), _tensors(out / "finetuned.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ref_rows = [r for r in _rows(tmp_path / "ref" / "metrics.jsonl") if r["kind"] == "epoch"]
    rows = [r for r in _rows(out / "metrics.jsonl") if r["kind"] == "epoch"]
    assert [r["epoch"] for r in rows] == list(range(1, epochs + 1))
    assert [r["loss"] for r in rows] == [r["loss"] for r in ref_rows]
    ref_sum = json.loads((tmp_path / "ref" / "metrics.json").read_text())
    res_sum = json.loads((out / "metrics.json").read_text())
    assert res_sum["runs"][0]["history"] == ref_sum["runs"][0]["history"]


def test_finetune_resume_mid_epoch_is_exact(data_file, tmp_path):
    """A stop in the middle of an epoch (after 3 of 4 steps per epoch... at step 3) saves the epoch's clip
    order and position; resuming gives the same weights as an uninterrupted run of the same seed."""
    from skelcli.eval.features import load_split
    from skelcli.eval.finetune import FinetuneSettings, finetune_once
    from skelcli.methods.mae import small_encoder_config

    s = FinetuneSettings(**{**FinetuneSettings.preset("small"), "epochs": 3, "batch_size": 2, "device": "cpu"})
    train, test = load_split(data_file, "xsub", "train"), load_split(data_file, "xsub", "test")
    cfg = small_encoder_config()
    ref = finetune_once(cfg, None, train, test, 60, s, seed=3)
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    part = finetune_once(cfg, None, train, test, 60, s, seed=3, run=run, stop=StopAfter(6))
    assert part["interrupted"] == "SIGTERM"
    state = load_checkpoint(run.path / "last.pt")
    assert state["loop"]["batch_in_epoch"] > 0, state["loop"]["batch_in_epoch"]  # stopped inside an epoch
    res = finetune_once(cfg, None, train, test, 60, s, seed=3, run=run, resume=state)
    assert res["steps"] == ref["steps"] and res["history"] == ref["history"]
    for (ka, va), (kb, vb) in zip(ref["model"].state_dict().items(), res["model"].state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka


@pytest.mark.parametrize("interval, seen", [(0, [1, 2, 3]), (1e9, [None, None, 3])])
def test_finetune_last_pt_waits_for_the_save_interval(data_file, tmp_path, interval, seen):
    """save_interval_s: the epoch of last.pt as each of 3 epochs ends (on_epoch runs after the save);
    0 writes it every epoch, a long interval only after the last step."""
    from skelcli.eval.features import load_split
    from skelcli.eval.finetune import FinetuneSettings, finetune_once
    from skelcli.methods.mae import small_encoder_config

    s = FinetuneSettings(**{**FinetuneSettings.preset("small"), "epochs": 3, "batch_size": 4, "device": "cpu",
                            "save_interval_s": interval})
    train, test = load_split(data_file, "xsub", "train"), load_split(data_file, "xsub", "test")
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    epochs: list[int | None] = []

    def peek(_i, _row) -> None:
        p = run.path / "last.pt"
        epochs.append(load_checkpoint(p)["epoch"] if p.exists() else None)

    finetune_once(small_encoder_config(), None, train, test, 60, s, seed=3, run=run, on_epoch=peek)
    assert epochs == seen


# ------------------------------------------------------------------ pretraining folders
def test_two_concurrent_pretrains_into_one_folder_exactly_one_runs(data_file, tmp_path):
    """The second run is refused with the holder's PID while the first runs; the first finishes normally."""
    out = tmp_path / "run"
    first = _cli(*_pretrain_args(data_file, out, epochs=60))
    _wait_for(lambda: (out / "metrics.jsonl").exists() and '"kind": "step"' in (out / "metrics.jsonl").read_text(), first)
    assert first.poll() is None, first.communicate()[0][-2000:]
    r = CliRunner().invoke(app, _pretrain_args(data_file, out, epochs=60))
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert f"in use by process {first.pid}" in r.output
    first.send_signal(signal.SIGTERM)
    output, _ = first.communicate(timeout=120)
    assert first.returncode in (0, 143), output[-2000:]
    steps = [x["step"] for x in _rows(out / "metrics.jsonl") if x["kind"] == "step"]
    assert steps == sorted(set(steps))  # one writer: no interleaved rows
    assert not (out / ".lock").exists()  # released on exit


def test_a_stale_lock_of_a_dead_process_is_taken_over(data_file, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename, "started": "then"}))
    r = CliRunner().invoke(app, _pretrain_args(data_file, out))
    assert r.exit_code == 0, r.output
    assert f"stale lock of process {dead.pid}" in r.output
    assert not (out / ".lock").exists()


def test_kill9_then_resume_leaves_every_step_once_in_the_log(data_file, tmp_path):
    """kill -9 after the first epoch; --resume auto cuts the rows after the checkpoint's step into a side
    file, so the finished log holds steps 1..N exactly once. last.pt is written at every epoch end
    (runtime.save_interval_s=0), so the resume starts from a checkpoint of the killed run."""
    out = tmp_path / "run"
    epochs = 40
    args = [*_pretrain_args(data_file, out, epochs=epochs), "--set", "runtime.log_every=1", "--set", "runtime.save_interval_s=0"]
    proc = _cli(*args)
    _wait_for(lambda: (out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text().count('"kind": "epoch"') >= 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    r = CliRunner().invoke(app, [*args, "--resume", "auto"])
    assert r.exit_code == 0, r.output
    (resumed,) = [x for x in _rows(out / "metrics.jsonl") if x["kind"] == "resume"]
    assert resumed["epoch"] >= 1
    steps = [x["step"] for x in _rows(out / "metrics.jsonl") if x["kind"] == "step"]
    total = load_checkpoint(out / "last.pt")["step"]
    assert steps == list(range(1, total + 1))
    epochs_logged = [x["epoch"] for x in _rows(out / "metrics.jsonl") if x["kind"] == "epoch"]
    assert epochs_logged == list(range(epochs))


def test_fallback_to_an_older_checkpoint_cuts_the_repeated_epochs(data_file, tmp_path):
    """A truncated last.pt (and a lost newest numbered checkpoint): resume falls back to epoch 1 of 3;
    the rows of epochs 2-3 move to metrics.cut-*.jsonl and are written once more by the resumed run."""
    out = tmp_path / "run"
    runner = CliRunner()
    r = runner.invoke(app, _pretrain_args(data_file, out, epochs=3))
    assert r.exit_code == 0, r.output
    full = [x for x in _rows(out / "metrics.jsonl") if x["kind"] == "step"]
    (out / "last.pt").write_bytes((out / "last.pt").read_bytes()[:1000])
    for n in (2, 3):
        (out / f"checkpoint-{n:04d}.pt").unlink()
    r = runner.invoke(app, [*_pretrain_args(data_file, out, epochs=3), "--resume", "auto"])
    assert r.exit_code == 0, r.output
    assert "skipped last.pt" in r.output and "cut back to step" in r.output
    rows = [x for x in _rows(out / "metrics.jsonl") if x["kind"] == "step"]
    assert [x["step"] for x in rows] == [x["step"] for x in full]
    assert [x["loss"] for x in rows] == pytest.approx([x["loss"] for x in full], rel=1e-6)
    (side,) = out.glob("metrics.cut-*.jsonl")
    assert {x["step"] for x in _rows(side) if x["kind"] == "step"} == {x["step"] for x in full if x["epoch"] >= 1}


def test_resume_of_a_finished_run_says_so_and_changes_nothing(data_file, tmp_path):
    out = tmp_path / "run"
    runner = CliRunner()
    assert runner.invoke(app, _pretrain_args(data_file, out)).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    r = runner.invoke(app, [*_pretrain_args(data_file, out), "--resume", "auto"])
    assert r.exit_code == 0 and "already complete (2 epochs" in r.output and "nothing to do" in r.output, r.output
    assert "nan" not in r.output
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_every_checkpoint_corrupt_lists_why_each_was_skipped(data_file, tmp_path):
    out = tmp_path / "run"
    runner = CliRunner()
    assert runner.invoke(app, _pretrain_args(data_file, out)).exit_code == 0
    for p in out.glob("*.pt"):
        p.write_bytes(p.read_bytes()[:500])
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    r = runner.invoke(app, [*_pretrain_args(data_file, out), "--resume", "auto"])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    for name in ("last.pt", "checkpoint-0001.pt", "checkpoint-0002.pt"):
        assert f"skipped {name}" in r.output
    assert "truncated or corrupt" in r.output and "--force" in r.output
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_damaged_settings_json_is_a_one_line_error_and_settings_are_written_atomically(data_file, tmp_path):
    out = tmp_path / "run"
    runner = CliRunner()
    assert runner.invoke(app, _pretrain_args(data_file, out)).exit_code == 0
    assert not list(out.glob(".settings.json.tmp-*"))
    text = (out / "settings.json").read_text()
    (out / "settings.json").write_text(text[: len(text) // 2])
    r = runner.invoke(app, [*_pretrain_args(data_file, out), "--resume", "auto"])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert "settings.json is damaged" in r.output


def test_out_that_is_a_file_or_under_a_file_is_refused(data_file, tmp_path):
    f = tmp_path / "file"
    f.write_text("keep me")
    runner = CliRunner()
    for out, message in ((f, "exists and is not a folder"), (f / "sub", "is a file")):
        r = runner.invoke(app, _pretrain_args(data_file, out))
        assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output, r.output
    assert f.read_text() == "keep me"


def test_metrics_rows_are_strict_json_with_non_finite_values_flagged(tmp_path):
    run = RunDir(tmp_path)
    run.open_log()
    run.log({"kind": "step", "step": 1, "loss": float("nan"), "lr": 0.1, "grad": float("inf")})
    run.close_log()

    def no_constants(name):
        raise ValueError(name)

    (row,) = [json.loads(x, parse_constant=no_constants) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert row == {"kind": "step", "step": 1, "loss": None, "lr": 0.1, "grad": None, "nonfinite": ["loss", "grad"]}
    assert json_safe({"a": 1.0}) == {"a": 1.0}


def test_projection_and_hint_on_the_cpu(data_file, tmp_path):
    """After the first timed steps a CPU run prints its projected time (and the --preset small hint
    when that is over 30 minutes); pretrain and finetune both do."""
    from skelcli.progress import Projector, projection_line

    cpu = torch.device("cpu")
    now = [0.0]
    p = Projector(cpu, 103, 0, clock=lambda: now[0])
    now[0] = 12.0
    assert p.after(2) is None  # 2 steps are too few to time
    assert p.after(3) == "projected: 7 min for the remaining 100 steps (4.00 s/step on the CPU)"
    assert p.after(4) is None  # said once
    assert projection_line(cpu, 2.0, 400 * 330) == ("projected: 3.1 days for the remaining 132000 steps (2.00 s/step on the CPU); "
                                                    "on a CPU-only machine try --preset small")
    assert projection_line(cpu, 0.01, 20) == "projected: 0 s for the remaining 20 steps (0.01 s/step on the CPU)"
    assert projection_line(torch.device("cuda"), 2.0, 1000) is None
    r = CliRunner().invoke(app, _pretrain_args(data_file, tmp_path / "run", epochs=12))  # 36 steps: projected after 20
    assert r.exit_code == 0 and "projected:" in r.output, r.output
    r = CliRunner().invoke(app, _finetune_args(data_file, tmp_path / "ft", epochs=12))  # 24 steps
    assert r.exit_code == 0 and "projected:" in r.output, r.output


def test_open_run_refuses_without_losing_files(tmp_path):
    run = RunDir(tmp_path / "r")
    run.path.mkdir()
    (run.path / "checkpoint-0001.pt").write_bytes(b"x")
    from skelcli.engine.rundir import open_run

    with pytest.raises(SkelError, match="already holds checkpoints"):
        open_run(run, {}, resume=None, force=False)
    moved = run.move_aside()
    assert moved is not None and (moved / "checkpoint-0001.pt").read_bytes() == b"x"
