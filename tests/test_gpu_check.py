"""`skel gpu-check` / `make gpu-check` (issue 15, item 2): exit 3 without CUDA, the whole pipeline on the
CPU at toy sizes with ``--cpu-quick``, and the synthetic NTU-sized file writer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from skelcli.cli import app

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: gpu-check would run")
def test_gpu_check_without_cuda_exits_3_with_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "skelcli", "gpu-check", "--out", str(tmp_path / "gc")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 3, r.stdout + r.stderr
    lines = [line for line in (r.stdout + r.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and "no CUDA device" in lines[0] and "Traceback" not in r.stderr
    assert not (tmp_path / "gc").exists()  # nothing written


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: gpu-check would run")
def test_make_gpu_check_target_runs_it_and_stops_with_its_exit_3(tmp_path):
    """`make gpu-check` runs `skel gpu-check --out gpu_check` (here from this interpreter's bin folder,
    install stamp faked); make itself exits 2 and names the command's status, 3."""
    stamp = tmp_path / "stamp"
    stamp.touch()
    r = subprocess.run(["make", "gpu-check", f"STAMP={stamp}", f"BIN={Path(sys.executable).parent}"], capture_output=True,
                       text=True, cwd=ROOT, timeout=120)
    assert "skel gpu-check --out gpu_check" in r.stdout and "no CUDA device" in r.stderr, r.stdout + r.stderr
    assert r.returncode == 2 and "Error 3" in r.stderr
    assert not (ROOT / "gpu_check").exists()


def test_cpu_quick_runs_every_step_and_writes_both_reports(tmp_path):
    out = tmp_path / "gc"
    r = CliRunner().invoke(app, ["gpu-check", "--cpu-quick", "--no-pytest", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "5 of 5 steps ok" in r.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["schema"] == "skelcli.gpu_check" and rep["mode"] == "cpu-quick"
    steps = rep["steps"]
    assert list(steps) == ["benchmark", "synthetic_data", "loader", "end_to_end", "ddp"]
    assert all(st["status"] == "ok" for st in steps.values()), {k: st.get("note") for k, st in steps.items()}
    bench = steps["benchmark"]["result"]
    assert set(bench) == {"fp32", "bf16", "slim_recipe_batch"}
    for key in ("fp32", "bf16"):
        rep_k = bench[key]["result"]
        assert rep_k["manifest"]["precision"] == key
        assert all(m["status"] == "ok" and m["train"]["samples_per_s"] > 0 for m in rep_k["methods"].values())
        windows = {r["key"]: r["wall_clock_windows"] for r in rep_k["ratios"]}
        assert all(w is not None and len(w) == 2 for w in windows.values())  # 2 round-robin windows each
    data = steps["synthetic_data"]["result"]
    assert data["train_clips"] == 64 and data["clips"] == 80
    assert not Path(data["path"]).exists()  # timing data is removed afterwards
    assert set(steps["loader"]["result"]) >= {"in memory", "lazy, thread", "shared mmap cache"}
    assert all(v["clips_per_s"] > 0 for v in steps["loader"]["result"].values())
    e2e = steps["end_to_end"]["result"]
    assert set(e2e["methods"]) == {"mae", "mamp", "gfp", "slim"} and e2e["train_clips"] == 64
    ddp = steps["ddp"]["result"]
    assert (ddp["backend"], ddp["world_size"], ddp["all_reduce_ok"], ddp["finite"]) == ("gloo", 1, True, True)
    assert ddp["steps"] == 4
    md = (out / "report.md").read_text()
    assert "| benchmark | ok |" in md and "torchrun, 1 process: backend gloo" in md and "| shared mmap cache |" in md


def test_synthetic_store_has_the_requested_splits_and_lengths(tmp_path):
    from skelcli.bench.gpucheck import write_synthetic_store
    from skelcli.data import store
    from skelcli.data.loader import ClipDataset

    info = write_synthetic_store(tmp_path / "s.h5", 30, 7, seed=1, pool=4)
    meta = store.open_info(tmp_path / "s.h5")
    assert meta.protocols == {"xsub": {"train": 30, "test": 7}} and meta.num_samples == 37
    ds = ClipDataset.from_store(tmp_path / "s.h5", "xsub", "train")
    assert ds.lengths.min() >= 40 and ds.lengths.max() <= 300 and int(ds.lengths.sum()) <= info["frames"]
    assert info["decompressed_gb"] == pytest.approx(info["frames"] * 2 * 25 * 3 * 4 / 1e9)  # float32 (2, 25, 3) frames
    clip = ds.clip(0).numpy()
    assert clip.shape[1:] == (2, 25, 3) and np.isfinite(clip).all() and np.abs(np.diff(clip, axis=0)).mean() < 0.05  # smooth


def test_a_configuration_past_the_time_budget_is_skipped_and_reported():
    import dataclasses
    import time

    from skelcli.bench.gpucheck import CPU_QUICK, _benchmarks, render_markdown

    sizes = dataclasses.replace(CPU_QUICK, budget_s=0.0)
    out = _benchmarks(sizes, torch.device("cpu"), lambda s: None, time.perf_counter() - 1.0)
    assert set(out) == {"fp32", "bf16", "slim_recipe_batch"}
    assert all(v["status"] == "skipped" and "time budget" in v["note"] for v in out.values())
    md = render_markdown({"mode": "cpu-quick", "manifest": {}, "steps": {"benchmark": {"status": "ok", "seconds": 0, "result": out}}})
    assert "| fp32 | skipped: time budget" in md


def test_gpu_check_out_that_is_a_file_is_a_one_line_error_and_the_file_is_kept(tmp_path):
    from helpers import assert_one_line_error, run_cli

    target = tmp_path / "report_here"
    target.write_text("keep")
    for extra in ([], ["--cpu-quick", "--no-pytest"]):
        r = run_cli("gpu-check", "--out", target, *extra)
        assert_one_line_error(r, "is a file, not a folder")
        assert r.exit_code == 2 and target.read_text() == "keep"


def test_a_rerun_replaces_both_reports_whole(tmp_path, monkeypatch):
    """The reports are written to temporary names and moved into place: no partial file, no leftovers."""
    from skelcli.bench import gpucheck

    out = tmp_path / "gc"
    out.mkdir()
    (out / "report.json").write_text("old")
    monkeypatch.setattr(gpucheck, "_benchmarks", lambda *a: {})
    monkeypatch.setattr(gpucheck, "_ddp", lambda *a: {"status": "ok"})
    gpucheck.run_gpu_check(out, cpu_quick=True, pytest_cuda=False, log=lambda s: None)
    assert json.loads((out / "report.json").read_text())["mode"] == "cpu-quick"
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.md"]
