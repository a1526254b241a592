"""CliRunner end-to-end runs of `skel probe`, `skel retrieve`, `skel finetune` on tiny real HDF5 files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from skelcli.cli import app
from skelcli.engine.checkpoint import load_checkpoint, load_encoder, save_checkpoint
from skelcli.models.encoder import EncoderConfig, SkeletonEncoder
from skelcli.settings import to_jsonable

#: One pytest-xdist worker runs this whole file (its module fixture is built once; make test uses --dist loadgroup).
pytestmark = pytest.mark.xdist_group("eval_cli")

runner = CliRunner()
TINY = EncoderConfig(num_frames=16, t_patch=4, dim=16, depth=1, heads=2)


def _toy_clips(classes: int, n_per: int, seed: int) -> tuple[list[np.ndarray], list[int]]:
    """Clips of 20-40 frames: class c moves joint group c along a class-specific direction;
    about half the clips have an empty (all-zero) second person."""
    rng = np.random.default_rng(seed)
    clips, labels = [], []
    for c in range(classes):
        direction = np.eye(3)[c % 3] * (1 + c // 3)
        for _ in range(n_per):
            t = int(rng.integers(20, 40))
            x = 0.05 * rng.normal(size=(t, 2, 25, 3)).astype(np.float32)
            phase = np.linspace(0, np.pi, t)[:, None, None]
            x[:, 0, (c * 4) % 25 : (c * 4) % 25 + 4] += (np.sin(phase) * direction).astype(np.float32)
            if rng.random() < 0.5:
                x[:, 1] = 0
            clips.append(x)
            labels.append(c)
    return clips, labels


def write_toy_store(path: Path, classes: int, dataset: str = "ntu60", n_train: int = 6, n_test: int = 3, seed: int = 0) -> Path:
    from skelcli.data.store import write_store

    tr, tr_y = _toy_clips(classes, n_train, seed)
    te, te_y = _toy_clips(classes, n_test, seed + 100)
    clips, labels = tr + te, tr_y + te_y
    n = len(labels)
    samples = _as_store_samples(clips, labels)
    splits = {"xsub": {"train": np.arange(len(tr)), "test": np.arange(len(tr), n)}}
    write_store(path, samples, dataset=dataset, num_classes=classes, splits=splits, rejected=[],
                preprocessing={"toy": True}, source={"generator": "tests/test_eval_cli.py"}, force=True)
    return path


def _as_store_samples(clips, labels):
    """Toy clips as store samples: joints (T, 2, 25, 3) float32 and a 0-based label."""
    from skelcli.data.store import Sample

    names = [f"S001C001P{i % 999 + 1:03d}R001A{lab + 1:03d}" for i, lab in enumerate(labels)]
    return [Sample(name=n, joints=c, label=int(lab), num_actors=2) for n, c, lab in zip(names, clips, labels)]


def make_checkpoint(path: Path, cfg: EncoderConfig = TINY, *, method: str = "mamp", dataset: str = "ntu60", num_classes: int = 60,
                    seed: int = 0, **extra) -> Path:
    torch.manual_seed(seed)
    enc = SkeletonEncoder(cfg)
    payload = {"method": method, "settings": {}, "encoder_config": to_jsonable(cfg), "encoder": enc.state_dict(),
               "pretraining_only": ["decoder"], "data": {"dataset": dataset, "num_classes": num_classes, "split": "xsub"},
               "epoch": 1, "step": 1, **extra}
    return save_checkpoint(path, payload)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    return {
        "root": root,
        "data": write_toy_store(root / "toy6.h5", 6),
        "data4": write_toy_store(root / "toy4.h5", 4, dataset="pku-mmd-v2", seed=5),
        "ckpt": make_checkpoint(root / "pre" / "last.pt"),
    }


def run(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    return result


def test_probe_linear_and_knn_end_to_end(files, tmp_path):
    out = tmp_path / "lin"
    r = run("probe", "--checkpoint", files["ckpt"], "--data", files["data"], "--protocol", "linear", "--recipe", "sklearn", "--out", out,
            "--json", tmp_path / "lin.json", "--device", "cpu")
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "lin.json").read_text())
    assert res == json.loads((out / "metrics.json").read_text())
    assert res["n_train"] == 36 and res["n_test"] == 18 and res["num_classes"] == 6 and res["feature_dim"] == 16
    assert 0 <= res["top1"] <= 1 and res["top5"] >= res["top1"] and len(res["per_class"]) == 6
    assert res["person_pool"] == "mean"  # MAMP checkpoint -> MAMP reference pooling
    cm = np.load(out / "confusion.npy")
    assert cm.shape == (6, 6) and cm.sum() == 18 and (out / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert np.trace(cm) / 18 == pytest.approx(res["top1"])
    assert "top-1" in r.output
    assert list((files["ckpt"].parent / ".features").glob("feats-*.npz"))  # cached per checkpoint

    r = run("probe", "-c", files["ckpt"], "-d", files["data"], "--protocol", "knn", "--k", "5", "--out", tmp_path / "knn",
            "--json", tmp_path / "knn.json")
    assert r.exit_code == 0, r.output
    knn = json.loads((tmp_path / "knn.json").read_text())
    assert knn["protocol"] == "knn" and knn["k"] == 5 and 0 <= knn["top1"] <= 1


def test_probe_sgd_head_and_random_init(files, tmp_path):
    r = run("probe", "-c", files["ckpt"], "-d", files["data"], "--head", "sgd", "--epochs", "2", "--batch-size", "16",
            "--out", tmp_path / "sgd", "--json", tmp_path / "sgd.json")
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "sgd.json").read_text())
    assert res["head"] == "sgd" and len(res["history"]) == 2 and res["best_top1"] == max(res["history"])
    assert "best epoch" in r.output
    r = run("probe", "-d", files["data"], "--random-init", "--protocol", "knn", "--out", tmp_path / "rnd", "--json", tmp_path / "rnd.json")
    assert r.exit_code == 0, r.output
    rnd = json.loads((tmp_path / "rnd.json").read_text())
    assert rnd["method"] == "random" and rnd["feature_dim"] == 32  # small preset encoder


def test_retrieve_end_to_end(files, tmp_path):
    r = run("retrieve", "-c", files["ckpt"], "-d", files["data"], "--out", tmp_path / "ret", "--json", tmp_path / "ret.json",
            "--precision-k", "1,3")
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "ret.json").read_text())
    assert res["n_gallery"] == 36 and res["n_query"] == 18 and res["k"] == 1
    assert 0 <= res["mAP"] <= 1 and set(res["precision_at"]) == {"1", "3"}
    assert res["precision_at"]["1"] == pytest.approx(res["top1"], abs=1 / 18)  # k=1 kNN vs first-ranked item (ties aside)
    assert "mAP" in r.output


def test_finetune_semi_repeats_and_saved_model(files, tmp_path):
    out = tmp_path / "ft"
    r = run("finetune", "-c", files["ckpt"], "-d", files["data"], "--preset", "small", "--epochs", "2", "--batch-size", "8",
            "--label-fraction", "0.5", "--balanced", "--repeats", "2", "--out", out, "--json", tmp_path / "ft.json", "--device", "cpu")
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "ft.json").read_text())
    assert res["repeats"] == 2 and len(res["runs"]) == 2 and res["runs"][0]["train_clips"] == 18
    assert {"mean", "std"} <= set(res["best_top1"]) and res["best_top1"]["mean"] >= res["last_top1"]["mean"]
    for i in range(2):
        d = out / f"repeat-{i}"
        assert (d / "confusion.png").is_file() and np.load(d / "confusion.npy").sum() == 18
        enc, info, ckpt = load_encoder(d / "finetuned.pt")
        assert ckpt["head_config"]["num_classes"] == 6 and ckpt["head_config"]["kind"] == "mamp" and info.dataset == "ntu60"
    assert (out / "metrics.json").is_file()


def test_transfer_between_datasets_with_different_class_counts(files, tmp_path):
    # Fine-tune the "ntu60" checkpoint on a 4-class pku-mmd-v2 file, then use that model on the 4-class file.
    out = tmp_path / "tr"
    r = run("finetune", "-c", files["ckpt"], "-d", files["data4"], "--preset", "small", "--epochs", "1", "--batch-size", "8",
            "--val-fraction", "0.25", "--out", out, "--json", tmp_path / "tr.json")
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "tr.json").read_text())
    assert res["pretrain"]["dataset"] == "ntu60" and res["pretrain"]["num_classes"] == 60
    assert res["finetune_data"]["dataset"] == "pku-mmd-v2" and res["finetune_data"]["num_classes"] == 4
    assert res["runs"][0]["n_val"] == 6 and "test_top1_at_val_best" in res
    ckpt = load_checkpoint(out / "finetuned.pt")
    assert ckpt["pretrain_data"]["dataset"] == "ntu60" and ckpt["data"]["num_classes"] == 4
    # The fine-tuned checkpoint works downstream on its own data ...
    r = run("probe", "-c", out / "finetuned.pt", "-d", files["data4"], "--protocol", "knn", "--out", tmp_path / "p4")
    assert r.exit_code == 0, r.output
    # ... and is refused on a file whose class count differs from its head.
    r = run("probe", "-c", out / "finetuned.pt", "-d", files["data"], "--protocol", "knn", "--out", tmp_path / "p6")
    assert r.exit_code != 0 and "fine-tuned head has 4 classes" in r.output and "Traceback" not in r.output


def test_finetune_from_scratch_without_checkpoint(files, tmp_path):
    r = run("finetune", "--from-scratch", "-d", files["data4"], "--preset", "small", "--epochs", "1", "--out", tmp_path / "s",
            "--json", tmp_path / "s.json")
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "s.json").read_text())
    assert res["from_scratch"] is True and res["pretrain"]["checkpoint"] is None


def _one_line_error(r) -> str:
    assert r.exit_code != 0
    assert "Traceback" not in r.output
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, r.output
    return lines[0]


def test_bad_input(files, tmp_path):
    no_enc = save_checkpoint(tmp_path / "noenc.pt", {"method": "mamp", "settings": {}})
    assert "holds no encoder" in _one_line_error(run("probe", "-c", no_enc, "-d", files["data"]))
    assert "holds no encoder" in _one_line_error(run("finetune", "-c", no_enc, "-d", files["data"], "--preset", "small"))
    newer = tmp_path / "newer.pt"
    torch.save({"schema": "skelcli.checkpoint", "schema_version": 99}, newer)
    assert "newer" in _one_line_error(run("retrieve", "-c", newer, "-d", files["data"]))
    assert "no split 'xview'" in _one_line_error(run("probe", "-c", files["ckpt"], "-d", files["data"], "--split", "xview"))
    assert "no split 'xset'" in _one_line_error(run("finetune", "-c", files["ckpt"], "-d", files["data"], "--split", "xset", "--preset", "small"))
    for frac in ("0", "1.5", "-0.2"):
        assert "label fraction must be in (0, 1]" in _one_line_error(
            run("finetune", "-c", files["ckpt"], "-d", files["data"], "--label-fraction", frac, "--preset", "small"))
    assert "unknown protocol" in _one_line_error(run("probe", "-c", files["ckpt"], "-d", files["data"], "--protocol", "svm"))
    assert "--checkpoint is required" in _one_line_error(run("probe", "-d", files["data"]))
    assert "not found" in _one_line_error(run("probe", "-c", tmp_path / "missing.pt", "-d", files["data"]))


def test_missing_classes_warning_names_them(files, tmp_path):
    r = run("finetune", "-c", files["ckpt"], "-d", files["data"], "--preset", "small", "--epochs", "1",
            "--label-fraction", "0.1", "--out", tmp_path / "w", "--json", tmp_path / "w.json")
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "w.json").read_text())
    assert res["runs"][0]["train_clips"] == 3  # int(36 * 0.1)
    assert "without a training clip" in r.output and "--balanced" in r.output
    assert len(res["warnings"]) == 1
