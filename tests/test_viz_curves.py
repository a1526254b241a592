"""`skel plot` / skelcli.viz.curves (issue 16 item 1): curves of hand-written run folders and of one real
`skel pretrain` run, checked through what plot_runs returns and through the decoded PNG."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from helpers import distinct_colours
from typer.testing import CliRunner

pytest.importorskip("matplotlib")

from skelcli.cli._app import app  # noqa: E402
from skelcli.errors import SkelError  # noqa: E402
from skelcli.viz.curves import eval_path, load_run, plot_runs  # noqa: E402


def _write_run(folder: Path, method: str, rows: list[dict | str]) -> Path:
    """A pretraining run folder: settings.json with method.name and metrics.jsonl (a str row is written as is)."""
    folder.mkdir(parents=True)
    (folder / "settings.json").write_text(json.dumps({"method": {"name": method}, "optim": {"epochs": 2}}))
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def _setup(steps_per_epoch: int) -> dict:
    return {"kind": "setup", "world_size": 1, "global_batch": 8, "per_process_batch": 8, "micro_batch": 8, "accumulation": 1,
            "lr": 0.001, "steps_per_epoch": steps_per_epoch, "backend": None, "device": "cpu"}


def _gfp_run(folder: Path) -> Path:
    """20 steps of GFP: the loss falls from 100 to about 0.5 (log axis), one non-finite loss, a resume at step 10."""
    rows: list[dict | str] = [_setup(10)]
    for step in range(1, 21):
        if step == 11:
            rows += [{"kind": "resume", "from": str(folder / "last.pt"), "epoch": 1, "step": 10}, _setup(10)]
        loss = 100.0 * math.exp(-0.27 * step)
        row = {"kind": "step", "epoch": (step - 1) // 10, "step": step, "loss": loss, "pred_loss": 0.6 * loss,
               "var_loss": 0.3 * loss, "cov_loss": 0.1 * loss, "lr": 1e-3 * min(1.0, step / 5), "samples_per_s": 200.0 + step,
               "data_wait_share": 0.05, "target_std_l1": 0.5 - 0.01 * step, "target_std_l2": 0.4, "target_std_global": 0.3}
        if step == 7:
            row["loss"] = None
            row["nonfinite"] = ["loss"]
        rows.append(row)
        if step % 10 == 0:
            rows.append({"kind": "epoch", "epoch": step // 10 - 1, "step": step, "loss": loss, "seconds": 1.0,
                         "samples_per_s": 210.0, "data_wait_share": 0.05})
        if step == 12:
            rows.append("")  # a blank line
    return _write_run(folder, "gfp", rows)


def _slim_run(folder: Path) -> Path:
    """16 steps of SLiM with its own loss terms and statistics, an interruption row and a torn last line."""
    rows: list[dict | str] = [_setup(8)]
    for step in range(1, 17):
        rows.append({"kind": "step", "epoch": (step - 1) // 8, "step": step, "loss": 9.0 - 0.1 * step, "glcl": 6.0 - 0.05 * step,
                     "mfm": 3.0 - 0.05 * step, "koleo": -0.2 + 0.01 * step, "lr": 5e-4, "samples_per_s": 80.0,
                     "data_wait_share": 0.2, "ema_momentum": 0.994 + 0.0003 * step, "teacher_temp": min(0.07, 0.04 + 0.004 * step)})
    rows.append({"kind": "interrupted", "epoch": 1, "step": 16, "signal": "SIGINT"})
    rows.append('{"kind": "step", "epoch": 1, "st')
    return _write_run(folder, "slim", rows)


def _finetune_run(folder: Path) -> Path:
    """A `skel finetune` folder written by hand: metrics.json with two repeats' histories (val_top1 in the first)."""
    folder.mkdir(parents=True)
    hist0 = [{"epoch": e, "step": 4 * e, "loss": 3.0 / e, "test_top1": 0.1 * e, "val_top1": 0.12 * e} for e in range(1, 6)]
    hist1 = [{"epoch": e, "step": 4 * e, "loss": 2.8 / e, "test_top1": 0.09 * e} for e in range(1, 6)]
    summary = {"protocol": "finetune", "preset": "small", "pretrain": {"method": "mamp", "checkpoint": "x/last.pt"},
               "runs": [{"repeat": 0, "history": hist0}, {"repeat": 1, "history": hist1}]}
    (folder / "metrics.json").write_text(json.dumps(summary))
    (folder / "settings.json").write_text(json.dumps({"finetune": {"epochs": 5}, "preset": "small"}))
    return folder


def _check_png(path: Path, size: list[int]) -> np.ndarray:
    """The decoded image: the expected width x height, not blank, more than a few colours."""
    from matplotlib.image import imread

    img = imread(path)
    assert img.shape[1] == size[0] and img.shape[0] == size[1], (img.shape, size)
    rgb = img[..., :3]
    assert rgb.std() > 0.03
    assert distinct_colours(img) > 20
    return img


def test_two_runs_overlaid_with_their_own_terms_and_statistics(tmp_path):
    a, b = _gfp_run(tmp_path / "gfp_a"), _slim_run(tmp_path / "slim_b")
    out = tmp_path / "fig" / "curves.png"
    res = plot_runs([a, b], out)
    assert res["paths"] == [str(out)] and out.is_file()
    assert not eval_path(out).exists() and "eval" not in res["figures"]
    la, lb = "gfp_a (gfp)", "slim_b (slim)"
    assert res["legends"]["loss"] == [la, lb]
    assert res["series"]["loss"] == [la, lb]
    panels = res["panels"]
    assert panels[0] == "loss"
    for key in ("pred_loss", "var_loss", "cov_loss", "glcl", "mfm", "koleo", "lr", "samples_per_s", "data_wait_share",
                "target_std_l1", "target_std_l2", "target_std_global", "ema_momentum", "teacher_temp"):
        assert key in panels, key
    # loss terms before the engine keys, statistics last
    assert panels.index("koleo") < panels.index("lr") < panels.index("samples_per_s") < panels.index("target_std_l1")
    # a key one run lacks is simply absent from its panel
    assert res["series"]["pred_loss"] == [la] and res["series"]["teacher_temp"] == [lb]
    assert res["series"]["lr"] == [la, lb]
    assert "loss" in res["log_scale"] and "koleo" not in res["log_scale"]  # 100 -> 0.5 spans > 1.5 decades; koleo < 0
    notes = " ".join(res["notes"])
    assert "1 non-finite value(s)" in notes and "1 unreadable line(s)" in notes
    assert "step" not in res["panels"] and "epoch" not in res["panels"] and "nonfinite" not in res["panels"]
    _check_png(out, res["figures"]["curves"]["size"])
    # the resumed run's steps are each drawn once, in order
    run = load_run(a)
    assert [r["step"] for r in run.rows] == list(range(1, 21)) and run.steps_per_epoch == 10


def test_labels_and_epoch_axis(tmp_path):
    a, b = _gfp_run(tmp_path / "a"), _slim_run(tmp_path / "b")
    res = plot_runs([a, b], tmp_path / "c.svg", labels=["first", "second"], x="epoch")
    assert res["figures"]["curves"]["legend_in"] == "panel"
    assert res["legends"]["loss"] == ["first", "second"] and (tmp_path / "c.svg").read_text().startswith("<?xml")
    # more runs than fit in a panel legend: the legend goes below the panels, same labels
    many = [a, b] + [_slim_run(tmp_path / f"s{i}") for i in range(3)]
    res = plot_runs(many, tmp_path / "many.png")
    assert res["figures"]["curves"]["legend_in"] == "figure"
    assert res["legends"]["loss"] == ["a (gfp)", "b (slim)", "s0 (slim)", "s1 (slim)", "s2 (slim)"]
    with pytest.raises(SkelError, match="one per RUN"):
        plot_runs([a, b], tmp_path / "d.png", labels=["only one"])
    with pytest.raises(SkelError, match="--x takes step or epoch"):
        plot_runs([a], tmp_path / "d.png", x="time")
    with pytest.raises(SkelError, match=r"\.png"):
        plot_runs([a], tmp_path / "d.txt")


def test_finetune_folder_adds_the_eval_figure(tmp_path):
    pre, ft = _gfp_run(tmp_path / "pre"), _finetune_run(tmp_path / "ft")
    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "metrics.json").write_text(json.dumps({"protocol": "linear", "head": "sgd", "method": "gfp",
                                                    "history": [0.2, 0.3, 0.35, 0.4]}))
    out = tmp_path / "curves.png"
    res = plot_runs([pre, ft, probe], out)
    ev = eval_path(out)
    assert ev == tmp_path / "curves_eval.png" and res["paths"] == [str(out), str(ev)]
    assert res["figures"]["eval"]["panels"] == ["test_top1", "val_top1", "finetune_loss"]
    ft_label, probe_label = "ft (finetune of mamp)", "probe (linear probe of gfp)"
    assert res["series"]["test_top1"] == [f"{ft_label} r0", f"{ft_label} r1", probe_label]
    assert res["legends"]["test_top1"] == res["series"]["test_top1"]
    assert res["series"]["val_top1"] == [f"{ft_label} r0"]  # only repeat 0 had a validation split
    assert res["series"]["loss"] == ["pre (gfp)"]  # the fine-tune folders hold no pretraining steps
    _check_png(out, res["figures"]["curves"]["size"])
    _check_png(ev, res["figures"]["eval"]["size"])
    # a fine-tune folder alone: only the eval figure
    res = plot_runs([ft], tmp_path / "only.png")
    assert res["paths"] == [str(tmp_path / "only_eval.png")] and not (tmp_path / "only.png").exists()


def test_cli_plot_of_a_real_pretrain_run(data_file, tmp_path):
    from test_pretrain_cli import TINY

    runner = CliRunner()
    run = tmp_path / "mamp_run"
    args = ["pretrain", "--method", "mamp", "--data", str(data_file), "--split", "xsub", "--preset", "small",
            "--epochs", "2", "--device", "cpu", "--out", str(run), "--no-progress"]
    for o in [*TINY, "runtime.log_every=1"]:
        args += ["--set", o]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    out = tmp_path / "plots" / "curves.png"
    r = runner.invoke(app, ["plot", str(run), str(_slim_run(tmp_path / "slim")), "--out", str(out),
                            "--json", str(tmp_path / "plot.json")])
    assert r.exit_code == 0, r.output
    assert "curves.png" in r.output and "samples_per_s" in r.output
    res = json.loads((tmp_path / "plot.json").read_text())
    assert res["legends"]["loss"] == ["mamp_run (mamp)", "slim (slim)"]
    assert res["runs"][0]["rows"] == 6  # 2 epochs x 3 steps, log_every=1
    for key in ("loss", "lr", "samples_per_s", "data_wait_share"):
        assert "mamp_run (mamp)" in res["series"][key], key
    _check_png(out, res["figures"]["curves"]["size"])
    assert not eval_path(out).exists()


def test_cli_refuses_a_folder_without_metrics(tmp_path):
    runner = CliRunner()
    empty = tmp_path / "not_a_run"
    empty.mkdir()
    (empty / "notes.txt").write_text("hello")
    out = tmp_path / "c.png"
    for args in (["plot", str(empty), "--out", str(out)], ["plot", str(tmp_path / "missing"), "--out", str(out)]):
        r = runner.invoke(app, args)
        assert r.exit_code == 2, r.output
        assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1, r.output
        assert Path(args[1]).name in r.output
    # a run folder whose log has no step rows yet (killed during setup): nothing to plot, one line
    _write_run(tmp_path / "early", "mae", [_setup(3)])
    r = runner.invoke(app, ["plot", str(tmp_path / "early"), "--out", str(out)])
    assert r.exit_code == 2 and "nothing to plot" in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not out.exists()
    # --out a folder: refused before any work
    r = runner.invoke(app, ["plot", str(empty), "--out", str(tmp_path)])
    assert r.exit_code == 2 and "--out" in r.output and "is a folder" in r.output


def test_odd_rows_are_skipped_not_fatal(tmp_path):
    """Rows a hand-edited or foreign log may hold: a null step, a null steps_per_epoch, text and list values,
    a JSON array line, a boolean; only the usable numbers are drawn."""
    rows = [{"kind": "setup", "steps_per_epoch": None}, "[1, 2]",
            {"kind": "step", "epoch": 0, "step": None, "loss": 5.0},
            {"kind": "step", "epoch": 0, "step": 1, "loss": 4.0, "note": "text", "shape": [1, 2], "flag": True},
            {"kind": "step", "epoch": 0, "step": 2, "loss": 3.0},
            {"kind": "epoch", "epoch": 0, "step": None, "loss": 3.5}]
    run = _write_run(tmp_path / "odd", "mae", rows)
    res = plot_runs([run], tmp_path / "odd.png", x="epoch")
    assert res["panels"] == ["loss"] and res["series"]["loss"] == ["odd (mae)"]
    assert load_run(run).steps_per_epoch is None and "1 unreadable line(s)" in " ".join(res["notes"])
    _check_png(tmp_path / "odd.png", res["figures"]["curves"]["size"])
