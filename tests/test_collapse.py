"""Issue 17 item 3: the collapse alarm (every method), --stop-on-collapse, GFP's default pred_channels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from skelcli.cli._app import app
from skelcli.engine.config import resolve_pretrain_settings
from skelcli.engine.train import CollapseWatch
from skelcli.errors import SkelError
from test_pretrain_cli import TINY

# GFP at TINY size: the decoder is GFP's own fields, not MAE's `decoder` section.
GFP_TINY = [o for o in TINY if not o.startswith("method.decoder.")] + ["method.decoder_dim=16", "method.decoder_heads=2"]
# Provoked collapse (measured: 10 epochs x 3 steps, the level-1..3 target std falls from 0.36-0.40 to
# 0.06-0.09 and the alarm fires at step 27, epoch index 8): no variance / covariance term (nothing
# holds the TGN's outputs apart, tests/test_gfp.py) and a high constant learning rate.
COLLAPSING = ["method.var_weight=0", "method.cov_weight=0", "optim.lr=0.02", "optim.min_lr=0.02"]


def _run(data_file: Path, out: Path, method: str, sets: list[str], *flags: str, epochs: int = 10):
    args = ["pretrain", "--method", method, "--data", str(data_file), "--split", "xsub", "--preset", "small",
            "--epochs", str(epochs), "--device", "cpu", "--out", str(out), "--no-progress", "--json", str(out.parent / f"{out.name}.json"),
            *flags]
    for o in sets + ["runtime.log_every=1"]:
        args += ["--set", o]
    return CliRunner().invoke(app, args)


def _rows(out: Path, kind: str) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("kind") == kind]


def test_gfp_default_pred_channels_is_mean_and_sum_is_accepted() -> None:
    for preset in ("paper", "small"):
        assert resolve_pretrain_settings("gfp", preset).method.pred_channels == "mean"
    literal = resolve_pretrain_settings("gfp", "paper", overrides=["method.pred_channels=sum"]).method
    assert (literal.pred_channels, literal.pred_weight, literal.cov_weight, literal.var_weight) == ("sum", 5.0, 5.0, 1.0)
    with pytest.raises(SkelError, match="pred_channels"):
        resolve_pretrain_settings("gfp", "paper", overrides=["method.pred_channels=median"])


def test_watch_needs_patience_consecutive_rows_and_checks_override_keys() -> None:
    w = CollapseWatch({"a": 0.1, "b": 0.1}, {"b": 0.0}, patience=3, method="m")  # b turned off
    assert w.thresholds == {"a": 0.1}
    assert [w.check({"a": v}) for v in (0.05, 0.05, 0.5, 0.05, 0.05)] == [None] * 5  # a healthy row resets
    assert w.check({"a": 0.05}) == ("a", 0.05, 0.1)
    assert w.check({}) is None and w.below["a"] == 0  # a missing value resets too
    with pytest.raises(SkelError, match="not a collapse indicator of m; it has: a, b"):
        CollapseWatch({"a": 0.1, "b": 0.1}, {"c": 1.0}, patience=3, method="m")


def test_healthy_run_raises_no_alarm(data_file, tmp_path) -> None:
    out = tmp_path / "healthy"
    r = _run(data_file, out, "gfp", GFP_TINY, epochs=3)
    assert r.exit_code == 0, r.output
    assert _rows(out, "collapse") == [] and "COLLAPSE" not in r.output.upper()
    assert json.loads((tmp_path / "healthy.json").read_text())["result"]["collapse"] is None
    assert all(r["target_std_l1"] > 0.1 for r in _rows(out, "step"))


def test_alarm_fires_once_on_a_collapsing_run_and_training_goes_on(data_file, tmp_path) -> None:
    out = tmp_path / "collapse"
    r = _run(data_file, out, "gfp", GFP_TINY + COLLAPSING)
    assert r.exit_code == 0, r.output
    alarms = _rows(out, "collapse")
    assert len(alarms) == 1, alarms
    a = alarms[0]
    assert a["key"].startswith("target_std_") and a["value"] < a["threshold"] == 0.1 and a["patience"] == 3
    assert "COLLAPSE ALARM" in r.output and a["key"] in r.output and "Traceback" not in r.output
    steps = {s["step"]: s for s in _rows(out, "step")}
    assert all(steps[a["step"] - k][a["key"]] < 0.1 for k in range(3))  # three log rows in a row below
    res = json.loads((tmp_path / "collapse.json").read_text())["result"]
    assert a["key"] in res["collapse"] and res["collapse_stopped"] is False and res["epochs"] == 10


def test_stop_on_collapse_exits_3_and_keeps_the_checkpoints_from_before(data_file, tmp_path, monkeypatch) -> None:
    """The checkpoint files left after the stop are byte for byte those present at the end of the last
    epoch completed before the alarm (snapshotted by an on_epoch_end callback slipped into the CLI's call)."""
    import skelcli.engine.train as train

    out = tmp_path / "stopped"
    snapshots: list[dict[str, bytes]] = []

    class Snapshot:
        def on_epoch_end(self, info) -> None:
            snapshots.append({p.name: p.read_bytes() for p in out.glob("*.pt")})

    real = train.pretrain
    monkeypatch.setattr(train, "pretrain", lambda *a, **kw: real(*a, **{**kw, "callbacks": [Snapshot()]}))
    r = _run(data_file, out, "gfp", GFP_TINY + COLLAPSING, "--stop-on-collapse")
    assert r.exit_code == 3, r.output
    assert "Traceback" not in r.output
    (alarm,) = _rows(out, "collapse")
    line = [x for x in r.output.splitlines() if x.startswith("stopped on collapse")]
    assert len(line) == 1 and alarm["key"] in line[0] and str(out / "last.pt") in line[0], r.output
    epochs_before = alarm["epoch"]  # the epoch index at the alarm = epochs completed before it
    assert epochs_before >= 2 and len(snapshots) == epochs_before
    files = {p.name: p.read_bytes() for p in out.glob("*.pt")}
    assert sorted(files) == sorted(["last.pt"] + [f"checkpoint-{e:04d}.pt" for e in range(1, epochs_before + 1)])
    assert files == snapshots[-1]
    assert _rows(out, "stopped")[0]["reason"] == "collapse" and _rows(out, "epoch")[-1]["epoch"] == epochs_before - 1
    assert max(s["step"] for s in _rows(out, "step")) == alarm["step"]  # it stopped at the alarm
    res = json.loads((tmp_path / "stopped.json").read_text())["result"]
    assert res["collapse_stopped"] is True and res["checkpoint"] == str(out / "last.pt") and res["epochs"] == epochs_before


SLIM_TINY = ["method.encoder.depth=1", "method.encoder.dim=32", "method.encoder.heads=2", "method.num_prototypes=64",
             "method.head_hidden_dim=32", "method.head_bottleneck_dim=16", "method.iterations_per_epoch=3", "data.batch_size=3"]


@pytest.mark.parametrize("method, sets, healthy_min", [("mae", TINY, 0.1), ("slim", SLIM_TINY, 0.03)])
def test_threshold_override_reaches_the_feature_std(data_file, tmp_path, method, sets, healthy_min) -> None:
    """MAE / MAMP / SLiM watch the encoder feature std (measured healthy here: MAE 0.20-0.65, SLiM teacher
    CLS 0.07-0.30); a threshold above it fires, and an unknown indicator name is a one-line error."""
    out = tmp_path / method
    r = _run(data_file, out, method, sets + ["runtime.collapse_thresholds={feature_std = 5.0}"], epochs=2)
    assert r.exit_code == 0, r.output
    alarms = _rows(out, "collapse")
    assert [a["key"] for a in alarms] == ["feature_std"] and alarms[0]["step"] == 3 and alarms[0]["threshold"] == 5.0
    assert all(healthy_min < s["feature_std"] < 5.0 for s in _rows(out, "step"))
    r = _run(data_file, tmp_path / "bad", method, sets + ["runtime.collapse_thresholds={target_std_l1 = 5.0}"], epochs=1)
    assert r.exit_code != 0 and f"not a collapse indicator of {method}" in r.output and "Traceback" not in r.output


def test_stop_on_collapse_under_nproc_exits_3_without_a_torchrun_traceback(data_file, tmp_path) -> None:
    """Two gloo processes agree on the stop; each records exit code 3 for the `--nproc` launcher and ends
    normally, so torchrun prints no ChildFailedError and the launcher exits 3. The alarm is forced by a
    threshold above every healthy value (5.0 > target std <= 1)."""
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    args = [sys.executable, "-m", "skelcli", "pretrain", "--method", "gfp", "--data", str(data_file), "--split", "xsub",
            "--preset", "small", "--epochs", "4", "--device", "cpu", "--out", str(out), "--no-progress", "--batch-size", "4",
            "--nproc", "2", "--stop-on-collapse"]
    for o in [o for o in GFP_TINY if not o.startswith("data.batch_size")] + ["runtime.log_every=1",
                                                                               "runtime.collapse_thresholds={target_std_l1 = 5.0}"]:
        args += ["--set", o]
    r = subprocess.run(args, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    output = r.stdout + r.stderr
    assert r.returncode == 3, output[-3000:]
    assert "Traceback" not in output and "ChildFailedError" not in output, output[-3000:]
    (alarm,) = _rows(out, "collapse")
    assert alarm["key"] == "target_std_l1" and alarm["step"] == 3  # three log rows below the threshold
