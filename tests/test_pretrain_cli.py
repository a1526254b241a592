"""`skel pretrain` end to end through the real CLI on a tiny genuine prepared file."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from skelcli.cli._app import app
from skelcli.engine.checkpoint import load_encoder, save_checkpoint

TINY = [
    "method.encoder.num_frames=8", "method.encoder.dim=16", "method.encoder.depth=1", "method.encoder.heads=2",
    "method.decoder.dim=16", "method.decoder.heads=2", "data.batch_size=3", "data.min_crop_frames=8",
    "optim.warmup_epochs=1", "runtime.checkpoint_every=1",
]


def _args(data_file: Path, out: Path, method: str = "mamp") -> list[str]:
    args = ["pretrain", "--method", method, "--data", str(data_file), "--split", "xsub", "--preset", "small",
            "--epochs", "2", "--device", "cpu", "--out", str(out), "--no-progress"]
    for o in TINY:
        args += ["--set", o]
    return args


def test_pretrain_end_to_end_writes_run_folder_and_loadable_encoder(data_file, tmp_path):
    runner = CliRunner()
    out = tmp_path / "run"
    r = runner.invoke(app, _args(data_file, out, "mae") + ["--json", str(tmp_path / "res.json")])
    assert r.exit_code == 0, r.output
    assert "skel pretrain mae" in r.output and "final loss" in r.output and "samples/s" in r.output
    res = json.loads((tmp_path / "res.json").read_text())
    assert res["result"]["checkpoint"] == str(out / "last.pt")
    assert res["result"]["epochs"] == 2 and res["result"]["steps"] == 6 and res["settings"]["optim"]["epochs"] == 2
    assert res["settings"]["method"]["encoder"]["dim"] == 16  # --set reached the model
    encoder, info, _ = load_encoder(out / "checkpoint-0002.pt")
    assert info.method == "mae" and info.dataset == "ntu60" and info.num_classes == 60 and info.feature_dim == 16
    settings = json.loads((out / "settings.json").read_text())
    assert settings["data"]["split"] == "xsub" and settings["runtime"]["device"] == "cpu"
    # --resume auto on a finished run does no more steps and exits 0
    r = runner.invoke(app, _args(data_file, out, "mae") + ["--resume", "auto"])
    assert r.exit_code == 0, r.output
    # a different configuration in the same folder is refused, --force starts over
    r = runner.invoke(app, _args(data_file, out, "mae") + ["--set", "optim.lr=0.01"])
    assert r.exit_code != 0 and "different configuration" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, _args(data_file, out, "mae") + ["--set", "optim.lr=0.01", "--force"])
    assert r.exit_code == 0, r.output


def test_bad_input_gives_one_line_errors(data_file, tmp_path):
    runner = CliRunner()
    cases = []
    cases.append((["pretrain", "--method", "nope", "--data", str(data_file)], "unknown method 'nope'"))
    args = _args(data_file, tmp_path / "a")
    cases.append((args[:6] + ["xset"] + args[7:], "no split 'xset'"))
    bad = tmp_path / "bad.toml"
    bad.write_text("[data]\nbatch = 4\n")
    cases.append((_args(data_file, tmp_path / "b") + ["--config", str(bad)], "data.batch"))
    newer = tmp_path / "newer.pt"
    save_checkpoint(newer, {"schema_version": 99, "method": "mamp"})
    cases.append((_args(data_file, tmp_path / "c") + ["--resume", str(newer)], "newer than this skelcli supports"))
    for args, message in cases:
        r = runner.invoke(app, args)
        assert r.exit_code != 0, args
        assert message in r.output, (message, r.output)
        assert "Traceback" not in r.output
    # resuming a run from another method's checkpoint
    r = runner.invoke(app, _args(data_file, tmp_path / "mamp_run", "mamp"))
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, _args(data_file, tmp_path / "mae_run", "mae") + ["--resume", str(tmp_path / "mamp_run" / "last.pt")])
    assert r.exit_code != 0 and "checkpoint of method 'mamp'" in r.output


def test_resume_refuses_a_data_file_rewritten_after_the_run_started(data_file, tmp_path):
    """Issue 7: a data file modified after a run started is detected on resume (and --force overrides)."""
    import os
    import shutil

    data = tmp_path / "copy.h5"
    shutil.copy2(data_file, data)
    out = tmp_path / "run"
    runner = CliRunner()
    r = runner.invoke(app, _args(data, out))
    assert r.exit_code == 0, r.output
    (out / "last.pt").unlink()  # an unfinished run: the newest checkpoint is after epoch 1 of 2
    (out / "checkpoint-0002.pt").unlink()
    st = data.stat()
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # rewritten in place: same size, new mtime
    r = runner.invoke(app, [*_args(data, out), "--resume", "auto"])
    assert r.exit_code != 0 and "changed since the run started" in r.output
    r = runner.invoke(app, [*_args(data, out), "--resume", "auto", "--force"])
    assert r.exit_code == 0, r.output
    assert "2 / 2" in r.output  # epochs done / planned
