"""`--tensorboard` (issue 16 item 5): TensorBoard holds exactly what metrics.jsonl holds, plus the figures."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from skelcli.cli import app

from test_pretrain_cli import TINY

try:
    import tensorboard  # noqa: F401

    HAVE_TB = True
except ImportError:
    HAVE_TB = False
needs_tb = pytest.mark.skipif(not HAVE_TB, reason="the [viz] extra (tensorboard) is not installed")


def _events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


@needs_tb
def test_pretrain_tensorboard_mirrors_the_jsonl_and_adds_the_curves(data_file, tmp_path):
    out = tmp_path / "run"
    args = ["pretrain", "--method", "mamp", "--data", str(data_file), "--preset", "small", "--epochs", "3", "--device", "cpu",
            "--out", str(out), "--no-progress", "--tensorboard", "--set", "runtime.log_every=1"]
    for o in TINY:
        args += ["--set", o]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in rows if x["kind"] == "step"]
    acc = _events(out / "tb")
    loss = acc.Scalars("step/loss")
    assert [e.step for e in loss] == [x["step"] for x in steps]
    assert [e.value for e in loss] == pytest.approx([x["loss"] for x in steps], rel=1e-6)
    assert "step/lr" in acc.Tags()["scalars"] and "epoch/loss" in acc.Tags()["scalars"]
    assert "curves" in acc.Tags()["images"] and (out / "curves.png").is_file()


@needs_tb
def test_finetune_tensorboard_logs_epochs_and_the_confusion_matrix(data_file, tmp_path):
    out = tmp_path / "ft"
    r = CliRunner().invoke(app, ["finetune", "--from-scratch", "-d", str(data_file), "--preset", "small", "--epochs", "2",
                                 "--batch-size", "4", "--device", "cpu", "--out", str(out), "--tensorboard"])
    assert r.exit_code == 0, r.output
    acc = _events(out / "tb")
    assert [e.step for e in acc.Scalars("epoch/test_top1")] == [2, 4]  # 2 steps per epoch
    assert any("confusion" in tag for tag in acc.Tags()["images"])


def test_without_tensorboard_the_error_names_the_extra(monkeypatch, tmp_path):
    import builtins

    from skelcli.errors import SkelError
    from skelcli.viz.tensorboard import TensorBoardLog

    real = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(SkelError, match=r"pip install 'skelcli\[viz\]'"):
        TensorBoardLog(tmp_path / "tb")
