"""Issue 12, "never a traceback": damaged files, bad --out paths, bad settings and options each end in a
one-line ``error: ...`` and exit code 2; a good file next to them is left byte-identical."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from pydantic import ValidationError
from typer.testing import CliRunner

from skelcli.cli import app
from skelcli.engine.checkpoint import load_encoder
from skelcli.errors import SkelError
from skelcli.models.encoder import EncoderConfig
from test_eval_cli import _as_store_samples, _toy_clips, make_checkpoint, write_toy_store

#: One pytest-xdist worker runs this whole file (its module fixture is built once; make test uses --dist loadgroup).
pytestmark = pytest.mark.xdist_group("bad_input")

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(r, *words: str) -> str:
    """Exit code 2, no traceback, exactly one non-blank line of output, containing every word."""
    assert r.exit_code == 2, (r.exit_code, r.output)
    assert "Traceback" not in r.output
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, r.output
    assert lines[0].startswith("error: "), lines[0]
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_sparse_store(path: Path) -> Path:
    """A 60-class ntu60 file in which only classes 0, 7, 14, 21 occur; it records class names."""
    from skelcli.data.store import write_store

    tr, tr_y = _toy_clips(4, 6, 0)
    te, te_y = _toy_clips(4, 3, 100)
    labels = [7 * c for c in tr_y + te_y]
    splits = {"xsub": {"train": np.arange(len(tr)), "test": np.arange(len(tr), len(labels))}}
    write_store(path, _as_store_samples(tr + te, labels), dataset="ntu60", num_classes=60, splits=splits, rejected=[],
                preprocessing={}, source={}, force=True, class_names=[f"action {c}" for c in range(60)])
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_input")
    good = write_toy_store(root / "good.h5", 6)
    ckpt = make_checkpoint(root / "pre" / "last.pt")
    trunc = root / "trunc.h5"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    corrupt = root / "corrupt.h5"
    corrupt.write_bytes(good.read_bytes())
    with h5py.File(corrupt, "r") as f:
        offset = f["joints"].id.get_chunk_info(0).byte_offset
    with open(corrupt, "r+b") as fh:  # garbage at the start of the first lzf chunk of /joints
        fh.seek(offset)
        fh.write(b"\xff" * 16)
    with h5py.File(corrupt, "r") as f, pytest.raises(OSError):
        f["joints"][:10]  # the damage is real: h5py cannot decode the chunk
    no_joints = root / "no_joints.h5"
    no_joints.write_bytes(good.read_bytes())
    with h5py.File(no_joints, "a") as f:
        del f["joints"]
    a_file = root / "a_file.txt"
    a_file.write_text("not a folder\n")
    return {"root": root, "good": good, "good_sha": sha(good), "ckpt": ckpt, "ckpt_sha": sha(ckpt), "trunc": trunc,
            "corrupt": corrupt, "no_joints": no_joints, "a_file": a_file}


@pytest.fixture(autouse=True)
def good_files_untouched(files):
    yield
    assert sha(files["good"]) == files["good_sha"] and sha(files["ckpt"]) == files["ckpt_sha"]
    assert files["a_file"].read_text() == "not a folder\n"


# ----------------------------------------------------------------------------- 1. truncated file
@pytest.mark.parametrize("command", ["info", "probe", "pretrain"])
def test_truncated_h5_is_one_line_error(files, tmp_path, command):
    args = {
        "info": ["info", files["trunc"]],
        "probe": ["probe", "-c", files["ckpt"], "--data", files["trunc"], "--out", tmp_path / "p"],
        "pretrain": ["pretrain", "--method", "mamp", "--preset", "small", "--data", files["trunc"], "--out", tmp_path / "p",
                     "--device", "cpu", "--no-progress"],
    }[command]
    one_line_error(run(*args), "trunc.h5", "truncated")
    assert not (tmp_path / "p").exists()


# ---------------------------------------------------------------------- 2. --verify on damaged files
def test_verify_reports_a_chunk_that_does_not_decode(files):
    r = run("info", files["corrupt"], "--verify")
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "verify: /joints: 1 chunk(s) cannot be decoded (frames 0-255" in r.output
    assert r.output.strip().splitlines()[-1] == f"error: {files['corrupt']}: verify found 1 problem(s)"
    # the commands that read the frames say so in one line
    one_line_error(run("probe", "-c", files["ckpt"], "-d", files["corrupt"], "--no-cache", "--out", files["root"] / "pc"),
                   "corrupt.h5", "cannot read the store", "--verify")


def test_verify_and_info_report_a_missing_dataset(files):
    r = run("info", files["no_joints"], "--verify")
    assert r.exit_code == 2 and "Traceback" not in r.output
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    assert lines == ["verify: /joints is missing", f"error: {files['no_joints']}: verify found 1 problem(s)"]
    one_line_error(run("info", files["no_joints"]), "no_joints.h5", "lacks /joints")


def test_verify_of_a_good_file_passes(files):
    r = run("info", files["good"], "--verify")
    assert r.exit_code == 0, r.output
    assert "verify: ok" in r.output


# ------------------------------------------------------------------------------- 3. bad --out paths
@pytest.mark.parametrize("where", ["file", "under_file"])
@pytest.mark.parametrize("command", ["probe", "retrieve", "finetune"])
def test_out_that_is_a_file_or_under_a_file(files, command, where):
    out = files["a_file"] if where == "file" else files["a_file"] / "sub"
    extra = ["--preset", "small"] if command == "finetune" else []
    before = sorted(p.name for p in files["root"].iterdir())
    msg = one_line_error(run(command, "-c", files["ckpt"], "-d", files["good"], "--out", out, *extra), "--out", "a_file.txt")
    assert ("is not a folder" if where == "file" else "is a file") in msg
    assert sorted(p.name for p in files["root"].iterdir()) == before


def test_json_under_a_file(files, tmp_path):
    one_line_error(run("probe", "-c", files["ckpt"], "-d", files["good"], "--out", tmp_path / "p", "--json", files["a_file"] / "r.json"),
                   "--json", "is a file")
    assert not (tmp_path / "p").exists()  # refused before any work


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only folders")
def test_out_in_a_read_only_folder(files, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        one_line_error(run("probe", "-c", files["ckpt"], "-d", files["good"], "--out", ro / "p"), "--out", "not writable")
    finally:
        ro.chmod(0o755)


# ---------------------------------------------------------------------------------------- 4. settings
@pytest.mark.parametrize("override, words", [
    ("method.encoder.dim=33", ["dim (33)", "heads (4)", "method.mamp.encoder"]),
    ("optim.lr=inf", ["optim.lr", "finite"]),
    ("optim.lr=nan", ["optim.lr", "finite"]),
    ("method=[1]", ["--set method=[1]", "'method' is a settings section"]),
    ("optim=3", ["--set optim=3", "'optim' is a settings section"]),
    ("method.encoder=5", ["'method.encoder' is a settings section"]),
    ("runtime.save_interval_s=-1", ["runtime.save_interval_s", "greater than or equal to 0"]),
])
def test_bad_overrides_fail_at_parse_time(files, tmp_path, override, words):
    r = run("pretrain", "--method", "mamp", "--preset", "small", "--data", files["good"], "--out", tmp_path / "run",
            "--device", "cpu", "--no-progress", "--set", override)
    one_line_error(r, *words)
    assert not (tmp_path / "run").exists()


def test_encoder_config_cross_field_rules():
    with pytest.raises(ValidationError, match=r"dim \(33\) must be divisible by heads \(4\)"):
        EncoderConfig(dim=33, heads=4)
    with pytest.raises(ValidationError, match="even head width"):
        EncoderConfig(dim=24, heads=8, temporal_pos="rope")
    with pytest.raises(ValidationError, match="multiple of t_patch"):
        EncoderConfig(num_frames=10, t_patch=4)
    with pytest.raises(ValidationError, match="less than or equal"):
        EncoderConfig(dim=65536)
    assert EncoderConfig(dim=48, heads=6).dim == 48


def test_bad_toml_section(files, tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text('optim = 3\n[method]\nname = "mamp"\n')
    one_line_error(run("pretrain", "--preset", "small", "--data", files["good"], "--config", cfg, "--out", tmp_path / "run"),
                   "run.toml", "'optim' is a settings section")


# ----------------------------------------------------------------------------------------- 5. options
@pytest.mark.parametrize("args, words", [
    (["probe", "--person-pool", "max"], ["--person-pool 'max'", "mean, mean_valid, concat"]),
    (["retrieve", "--person-pool", "max"], ["--person-pool 'max'", "mean, mean_valid, concat"]),
    (["probe", "--batch-size", "0"], ["--batch-size must be >= 1", "got 0"]),
    (["probe", "--batch-size", "-1"], ["--batch-size must be >= 1"]),
    (["retrieve", "--batch-size", "0"], ["--batch-size must be >= 1"]),
    (["probe", "--head", "sgd", "--epochs", "0"], ["--epochs must be >= 1"]),
    (["probe", "--head", "sgd", "--lr", "-1"], ["--lr must be a finite number > 0"]),
    (["probe", "--head", "sgd", "--lr", "inf"], ["--lr must be a finite number > 0"]),
    (["probe", "--head", "sgd", "--head-batch-size", "1"], ["--head-batch-size must be >= 2"]),
    (["finetune", "--preset", "small", "--batch-size", "0"], ["batch_size"]),
    (["finetune", "--preset", "small", "--lr", "nan"], ["lr", "finite"]),
    (["finetune", "--preset", "small", "--eval-every", "0"], ["eval_every", "greater than or equal to 1"]),
    (["finetune", "--preset", "small", "--save-interval", "-1"], ["save_interval_s", "greater than or equal to 0"]),
    (["finetune", "--recipe", "slim", "--eval-every", "3"], ["recipe slim (finetune) has no --eval-every"]),
])
def test_bad_options_fail_before_any_work(files, tmp_path, args, words):
    cache = files["ckpt"].parent / ".features"
    had_cache = cache.exists()
    one_line_error(run(*args, "-c", files["ckpt"], "-d", files["good"], "--out", tmp_path / "o"), *words)
    assert not (tmp_path / "o").exists()
    assert cache.exists() == had_cache  # no features were extracted


# -------------------------------------------------------------------------------------- 6. checkpoint
def test_huge_encoder_config_fails_fast_without_allocating(files, tmp_path):
    ckpt = torch.load(files["ckpt"], weights_only=True)
    for name, update, words in [
        ("huge.pt", {"dim": 65536, "depth": 64}, ["invalid encoder_config", "dim"]),
        ("big.pt", {"dim": 4096, "depth": 64, "heads": 8}, ["do not match", "[1, 1, 25, 16] in the file but [1, 1, 25, 4096]", "dim 4096"]),
        ("deeper.pt", {"depth": 2}, ["do not match", "missing ['blocks.1."]),
    ]:
        path = tmp_path / name
        torch.save({**ckpt, "encoder_config": {**ckpt["encoder_config"], **update}}, path)
        start = time.perf_counter()
        with pytest.raises(SkelError) as exc:
            load_encoder(path)
        assert time.perf_counter() - start < 5, "the check must come before building the encoder"
        for w in words:
            assert w in str(exc.value), (w, str(exc.value))
    one_line_error(run("probe", "-c", tmp_path / "big.pt", "-d", files["good"], "--out", tmp_path / "o"), "big.pt", "do not match")


# ----------------------------------------------------------------------------- 7. brackets in messages
def test_square_brackets_in_errors_are_printed_literally(files, tmp_path):
    one_line_error(run("pretrain", "--data", files["good"], "--out", tmp_path / "run"), "set [method] name in the settings file")
    bad = tmp_path / "[bold]x[red].h5"
    bad.write_text("not hdf5")
    one_line_error(run("info", bad), "[bold]x[red].h5", "not an HDF5 file")


# --------------------------------------------------------------------------------- 8. present classes
def test_reports_and_plot_cover_the_classes_present(files, tmp_path, monkeypatch):
    import skelcli.eval.report as report

    sparse = write_sparse_store(tmp_path / "sparse.h5")
    plotted = []
    real = report._confusion_png_matplotlib
    monkeypatch.setattr(report, "_confusion_png_matplotlib",
                        lambda cm, path, labels, n: (plotted.append((cm.copy(), list(labels), n)), real(cm, path, labels, n)))
    r = run("probe", "-c", files["ckpt"], "-d", sparse, "--protocol", "knn", "--k", "3", "--no-cache", "--out", tmp_path / "p")
    assert r.exit_code == 0, r.output
    assert "4 of 60 classes in the test split" in r.output
    assert np.load(tmp_path / "p" / "confusion.npy").shape == (60, 60)  # the saved matrix stays full-size
    cm, labels, n = plotted[-1]
    assert n == 60 and cm.shape[0] == cm.shape[1] == len(labels) <= 8 and cm.sum() == 12
    assert {"action 0", "action 7", "action 14", "action 21"} <= set(labels)
    assert (tmp_path / "p" / "confusion.png").read_bytes()[:4] == b"\x89PNG"

    r = run("finetune", "-c", files["ckpt"], "-d", sparse, "--preset", "small", "--epochs", "1", "--out", tmp_path / "f")
    assert r.exit_code == 0, r.output
    assert "4 of 60 classes in the test split" in r.output
    cm, labels, n = plotted[-1]
    assert n == 60 and len(labels) == cm.shape[0] <= 8 and cm.sum() == 12


def test_present_classes_include_predicted_ones():
    from skelcli.eval.report import present_classes

    cm = np.zeros((6, 6), dtype=np.int64)
    cm[1, 1], cm[3, 5] = 2, 1  # class 5 only ever predicted
    assert present_classes(cm).tolist() == [1, 3, 5]
