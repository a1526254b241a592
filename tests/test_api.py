"""Issue 13 items 2-4: the top-level Python API (skelcli.load_encoder / embed / predict) and the
`skel embed` / `skel predict` commands, on the tiny prepared NTU60 file of conftest."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_SYNTH
from test_bad_input import one_line_error
from test_pretrain_cli import TINY
from typer.testing import CliRunner

import skelcli
from skelcli.cli import app

#: One pytest-xdist worker runs this whole file (its module fixture is built once; make test uses --dist loadgroup).
pytestmark = pytest.mark.xdist_group("api")


def _ok(args: list[str]) -> str:
    r = CliRunner().invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r.output


@pytest.fixture(scope="module")
def pretrained(data_file, tmp_path_factory) -> Path:
    """A 1-epoch tiny MAMP checkpoint (8 frames, dim 16) on the conftest file."""
    out = tmp_path_factory.mktemp("api_pretrain") / "run"
    args = ["pretrain", "--method", "mamp", "--data", data_file, "--split", "xsub", "--preset", "small", "--epochs", "1",
            "--device", "cpu", "--out", out, "--no-progress"]
    for o in TINY:
        args += ["--set", o]
    _ok(args)
    return out / "last.pt"


@pytest.fixture(scope="module")
def raw_and_prepared(tmp_path_factory) -> tuple[Path, Path]:
    """`skel synth ntu60` raw files (the conftest options) and the file `skel prepare` makes of them."""
    root = tmp_path_factory.mktemp("api_raw")
    _ok(["synth", "ntu60", "--out", root / "raw", *TINY_SYNTH])
    _ok(["prepare", "ntu60", "--raw", root / "raw", "--out", root / "tiny.h5", "--workers", "1"])
    return root / "raw", root / "tiny.h5"


@pytest.fixture(scope="module")
def finetuned(raw_and_prepared, tmp_path_factory) -> Path:
    """`skel finetune --from-scratch --preset small --epochs 1` on the prepared file: its finetuned.pt."""
    out = tmp_path_factory.mktemp("api_ft") / "ft"
    _ok(["finetune", "--from-scratch", "--preset", "small", "--epochs", "1", "--batch-size", "4", "--device", "cpu",
         "-d", raw_and_prepared[1], "--out", out])
    return out / "finetuned.pt"


def _test_views(data_file: Path, frames: int):
    """The test split's clips as the encoder sees them: (N, M, frames, V, C), plus the SplitData."""
    from skelcli.data.clips import test_view
    from skelcli.eval.features import load_split

    split = load_split(data_file, "xsub", "test")
    views = test_view(split.batch(np.arange(len(split))), frames, 0.95)
    return views, split


def _embed_npz(tmp_path: Path, name: str, ckpt: Path, *source: str, pool: str = "mean") -> dict:
    out = tmp_path / name
    _ok(["embed", "--checkpoint", ckpt, *source, "--out", out, "--person-pool", pool, "--device", "cpu", "--no-progress"])
    with np.load(out) as z:  # loads without allow_pickle
        return {k: z[k] for k in z.files}


# ----------------------------------------------------------------------------------------- tests
def test_top_level_api_is_lazy_and_complete():
    # torch._dynamo (1.4 s to import) only comes with training or compiling: not with the readers, the
    # methods' registry or the feature extraction that probe / retrieve / embed and loader workers import
    code = ("import sys, skelcli; assert 'torch' not in sys.modules; import skelcli.cli; assert 'torch' not in sys.modules; "
            "f = skelcli.embed; assert 'torch' in sys.modules; "
            "import skelcli.data.loader, skelcli.methods, skelcli.eval.features, skelcli.engine.checkpoint; "
            "assert 'torch._dynamo' not in sys.modules; print(sorted(skelcli.__all__))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "embed" in r.stdout and "load_encoder" in r.stdout and "predict" in r.stdout
    with pytest.raises(AttributeError):
        skelcli.no_such_thing  # noqa: B018


def test_load_encoder_forward_equals_embed_and_probe_features(data_file, pretrained, tmp_path):
    from skelcli.engine.checkpoint import load_encoder as load_checkpoint_encoder
    from skelcli.eval.features import extract_features

    enc = skelcli.load_encoder(pretrained)
    assert not enc.training
    views, split = _test_views(data_file, enc.config.num_frames)
    n, m, t, v, c = views.shape
    with torch.inference_mode():
        person = enc(views.reshape(n * m, t, v, c))
    assert person.shape == (n * m, enc.feature_dim) == (n * m, 16)  # MAMP: mean over tokens, D = dim
    person = person.reshape(n, m, -1).numpy()

    z = _embed_npz(tmp_path, "none.npz", pretrained, "--data", data_file, pool="none")
    assert z["features"].shape == (n, m, 16) and z["features"].dtype == np.float32
    np.testing.assert_allclose(z["features"], person, rtol=0, atol=1e-6)
    assert list(z["names"]) == split.names and np.array_equal(z["labels"], split.labels)
    settings = json.loads(str(z["settings"]))
    assert settings["source"] == "data" and settings["split"] == "xsub" and settings["part"] == "test"
    assert settings["person_pool"] == "none" and settings["method"] == "mamp" and settings["input_frames"] == 8

    mean = _embed_npz(tmp_path, "mean.npz", pretrained, "--data", data_file)["features"]
    np.testing.assert_allclose(mean, person.mean(axis=1), rtol=0, atol=1e-6)
    enc2, info, _ = load_checkpoint_encoder(pretrained)
    probe_feats, probe_labels = extract_features(enc2, info, data_file, "xsub", "test", device="cpu", person_pool="mean")
    np.testing.assert_allclose(mean, probe_feats, rtol=0, atol=1e-6)
    assert np.array_equal(probe_labels, split.labels)

    summed = skelcli.embed(pretrained, data_file, person_pool="sum", device="cpu")["features"]
    nonempty = np.abs(views.numpy()).reshape(n, m, -1).sum(-1) > 0
    np.testing.assert_allclose(summed, (person * nonempty[..., None]).sum(axis=1), rtol=0, atol=1e-5)
    every = skelcli.embed(pretrained, data_file, part="all", device="cpu")
    assert len(every["names"]) == n + len(skelcli.embed(pretrained, data_file, part="train", device="cpu")["names"])


def test_embed_input_array_equals_data(data_file, pretrained, tmp_path):
    enc = skelcli.load_encoder(pretrained)
    views, split = _test_views(data_file, enc.config.num_frames)
    arr = tmp_path / "views.npy"
    np.save(arr, views.numpy().astype(np.float32))
    from_data = _embed_npz(tmp_path, "data.npz", pretrained, "--data", data_file)
    from_array = _embed_npz(tmp_path, "array.npz", pretrained, "--input", arr)
    np.testing.assert_allclose(from_array["features"], from_data["features"], rtol=0, atol=1e-6)
    assert np.all(from_array["labels"] == -1) and list(from_array["names"]) == [str(i) for i in range(len(split))]
    settings = json.loads(str(from_array["settings"]))
    assert settings["source"] == "array" and settings["cropped"] is False and settings["input_shape"] == list(views.shape)

    # clips at their own length (zero-padded, T != encoder frames) get the same centre test view as --data
    padded = split.batch(np.arange(len(split))).joints.numpy()
    assert padded.shape[2] != enc.config.num_frames
    res = skelcli.embed(pretrained, array=padded, device="cpu")
    assert res["settings"]["cropped"] is True and res["labels"] is None
    np.testing.assert_allclose(res["features"], from_data["features"], rtol=0, atol=1e-5)


def test_embed_bad_input_is_one_line_error(data_file, pretrained, tmp_path):
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((2, 8, 25, 3), dtype=np.float32))
    r = CliRunner().invoke(app, ["embed", "-c", str(pretrained), "--input", str(bad), "--out", str(tmp_path / "f.npz")])
    one_line_error(r, "(2, 8, 25, 3)", "(N, M, T, V=25, C=3)")
    r = CliRunner().invoke(app, ["embed", "-c", str(pretrained), "-d", str(data_file), "--part", "val", "--out", str(tmp_path / "f.npz")])
    one_line_error(r, "--part", "'val'")
    r = CliRunner().invoke(app, ["embed", "-c", str(pretrained), "-d", str(data_file), "--split", "xview9", "--out", str(tmp_path / "f.npz")])
    one_line_error(r, "xview9")
    r = CliRunner().invoke(app, ["embed", "-c", str(pretrained), "--out", str(tmp_path / "f.npz")])
    one_line_error(r, "--data", "--input")
    r = CliRunner().invoke(app, ["embed", "-c", str(pretrained), "-d", str(data_file), "--out", str(tmp_path)])
    one_line_error(r, "--out", "folder")
    assert not (tmp_path / "f.npz").exists()


def test_predict_raw_equals_prepared_and_csv(raw_and_prepared, finetuned, tmp_path):
    raw, h5 = raw_and_prepared
    from_file = skelcli.predict(finetuned, h5, part="all", top_k=2, device="cpu")
    from_raw = skelcli.predict(finetuned, raw=raw, top_k=2, device="cpu")
    assert [r["name"] for r in from_raw] == [r["name"] for r in from_file] and len(from_raw) > 0
    for a, b in zip(from_raw, from_file):
        assert a["top_ids"] == b["top_ids"] and a["true_label"] == b["true_label"] and a["top_names"] == b["top_names"]
        np.testing.assert_allclose(a["top_probs"], b["top_probs"], rtol=0, atol=1e-6)
        assert a["top_probs"] == sorted(a["top_probs"], reverse=True) and sum(a["top_probs"]) <= 1 + 1e-9
    from skelcli.data.actions import action_names

    names60 = action_names("ntu60")
    assert all(r["top_names"] == [names60[c] for c in r["top_ids"]] for r in from_raw)

    out = tmp_path / "pred" / "predictions.csv"
    _ok(["predict", "-c", finetuned, "--raw", raw, "--out", out, "--top-k", "3", "--device", "cpu", "--no-progress"])
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["name", "true_label", "top1_id", "top1_name", "top1_prob", "top2_id", "top2_name", "top2_prob",
                             "top3_id", "top3_name", "top3_prob"]
    assert [r["name"] for r in rows] == [r["name"] for r in from_raw]
    for row, ref in zip(rows, from_raw):
        probs = [float(row[f"top{j}_prob"]) for j in (1, 2, 3)]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
        assert int(row["top1_id"]) == ref["top_ids"][0] and int(row["true_label"]) == ref["true_label"]
        assert abs(probs[0] - ref["top_probs"][0]) < 1e-6

    test_rows = skelcli.predict(finetuned, h5, device="cpu", top_k=3)  # default part: test
    assert 0 < len(test_rows) < len(from_file)


def test_predict_needs_finetuned_checkpoint_and_valid_options(raw_and_prepared, pretrained, finetuned, tmp_path):
    raw, h5 = raw_and_prepared
    out = tmp_path / "p.csv"
    r = CliRunner().invoke(app, ["predict", "-c", str(pretrained), "-d", str(h5), "--out", str(out)])
    one_line_error(r, "needs a fine-tuned checkpoint with a head: skel finetune")
    r = CliRunner().invoke(app, ["predict", "-c", str(finetuned), "-d", str(h5), "--top-k", "0", "--out", str(out)])
    one_line_error(r, "--top-k")
    r = CliRunner().invoke(app, ["predict", "-c", str(finetuned), "-d", str(h5), "--raw", str(raw), "--out", str(out)])
    one_line_error(r, "--data", "--raw")
    r = CliRunner().invoke(app, ["predict", "-c", str(finetuned), "--raw", str(tmp_path / "nope"), "--out", str(out)])
    one_line_error(r, "nope")
    assert not out.exists()
