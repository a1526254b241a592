"""`skel export` (issue 13 item 5): ONNX / TorchScript / safetensors exports of the downstream model,
checked against eager PyTorch at two batch sizes; the safetensors folder round trip is bit-exact."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from skelcli.cli import app
from skelcli.engine.checkpoint import load_checkpoint, load_encoder, save_checkpoint
from skelcli.eval.heads import FinetuneModel, head_config_for
from skelcli.interop import export as ex
from skelcli.models.encoder import EncoderConfig, SkeletonEncoder
from skelcli.settings import to_jsonable
from test_pretrain_cli import TINY

#: One pytest-xdist worker runs this whole file (its module fixture is built once; make test uses --dist loadgroup).
pytestmark = pytest.mark.xdist_group("export")

runner = CliRunner()

KINDS = ("mamp", "slim", "finetuned", "slim_finetuned")


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _slim_encoder() -> SkeletonEncoder:
    torch.manual_seed(0)
    cfg = EncoderConfig(num_frames=16, t_patch=4, dim=32, depth=2, heads=4, ffn="swiglu", temporal_pos="rope",
                        use_cls=True, num_registers=2, mask_token=True, pool="cls_mean", norm_eps=1e-6)
    return SkeletonEncoder(cfg).eval()


def _slim_payload(enc: SkeletonEncoder) -> dict:
    return {"method": "slim", "settings": {}, "encoder_config": to_jsonable(enc.config), "encoder": enc.state_dict(),
            "pretraining_only": [], "data": {"dataset": "ntu60", "num_classes": 3, "split": "xsub"}, "epoch": 1, "step": 3}


@pytest.fixture(scope="module")
def ckpts(data_file, tmp_path_factory) -> dict[str, Path]:
    """Tiny checkpoints: MAMP pretrained (skel pretrain), SLiM-like encoder (rope + CLS + registers +
    swiglu, cls_mean), fine-tuned MAMP-head one (skel finetune --from-scratch), SLiM linear-head one."""
    root = tmp_path_factory.mktemp("export_ckpts")
    args = ["pretrain", "--method", "mamp", "--data", data_file, "--split", "xsub", "--preset", "small", "--epochs", "1",
            "--device", "cpu", "--out", root / "mamp", "--no-progress"]
    for o in TINY:
        args += ["--set", o]
    r = run(*args)
    assert r.exit_code == 0, r.output
    r = run("finetune", "--from-scratch", "--preset", "small", "--epochs", "1", "-d", data_file, "--batch-size", "4",
            "--device", "cpu", "--out", root / "ft")
    assert r.exit_code == 0, r.output
    enc = _slim_encoder()
    save_checkpoint(root / "slim.pt", _slim_payload(enc))
    model = FinetuneModel(enc, head_config_for(enc, 5, dropout=0.0, hidden=64)).eval()
    with torch.no_grad():
        model.head.fc.bias.normal_()  # not the zero init: the head must really be carried over
    save_checkpoint(root / "slim_ft.pt", {**_slim_payload(enc), "head": model.head.state_dict(),
                                          "head_config": model.head_config})
    return {"mamp": root / "mamp" / "last.pt", "slim": root / "slim.pt", "finetuned": root / "ft" / "finetuned.pt",
            "slim_finetuned": root / "slim_ft.pt"}


def _eager(path: Path) -> ex.ExportModel:
    enc, _, ckpt = load_encoder(path)
    return ex.build_export_model(enc, ckpt)


def _run_file(fmt: str, path: Path, x: torch.Tensor) -> torch.Tensor:
    """Run the written file with its own runtime, independently of the command's check."""
    if fmt == "onnx":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [i.name for i in sess.get_inputs()] == ["clips"]
        return torch.from_numpy(sess.run(None, {"clips": x.numpy()})[0])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.load in torch 2.13
        return torch.jit.load(str(path))(x)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("kind", KINDS)
def test_onnx_and_torchscript_match_eager_at_batch_1_and_7(ckpts, tmp_path, kind, fmt):
    out = tmp_path / ("model.onnx" if fmt == "onnx" else "model.pt")
    r = run("export", "--checkpoint", ckpts[kind], "--format", fmt, "--out", out, "--batch", "7", "--json", tmp_path / "res.json")
    assert r.exit_code == 0, r.output
    assert "max abs diff, batch 7" in r.output and "max abs diff, batch 1" in r.output and "clips (batch, 2, " in r.output
    res = json.loads((tmp_path / "res.json").read_text())
    assert [row["batch"] for row in res["verified"]] == [7, 1]
    assert all(row["max_abs_diff"] < 1e-4 for row in res["verified"])
    print(kind, fmt, [f"{row['max_abs_diff']:.2e}" for row in res["verified"]])
    model = _eager(ckpts[kind])
    finetuned = kind in ("finetuned", "slim_finetuned")
    assert res["output"]["name"] == ("logits" if finetuned else "features")
    width = load_checkpoint(ckpts[kind])["head_config"]["num_classes"] if finetuned else model.encoder.feature_dim
    assert res["output"]["shape"] == ["batch", width]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left
    for b in (1, 7):
        x = ex.sample_clips(model, b, seed=123)
        with torch.no_grad():
            ref = model(x)
        got = _run_file(fmt, out, x)
        assert got.shape == ref.shape == (b, res["output"]["shape"][1])
        assert (got - ref).abs().max().item() < 1e-4


def test_pretrained_features_use_the_methods_person_pooling(ckpts):
    """Pretrained exports give per-clip features: persons pooled as skel probe pools them."""
    from skelcli.eval.features import encode_views

    for kind, pool in (("mamp", "mean"), ("slim", "mean_valid")):
        model = _eager(ckpts[kind])
        assert model.person_pool == pool and not model.finetuned
        x = ex.sample_clips(model, 3)
        assert torch.count_nonzero(x[-1, -1]) == 0  # an empty person slot is in the sample
        with torch.no_grad():
            assert torch.equal(model(x), encode_views(model.encoder, x, pool))


@pytest.mark.parametrize("kind", KINDS)
def test_safetensors_round_trip_is_bit_exact_and_loads(ckpts, tmp_path, kind):
    folder = tmp_path / "st"
    r = run("export", "-c", ckpts[kind], "--format", "safetensors", "--out", folder, "--batch", "7")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["format"] == "skelcli-safetensors" and cfg["skelcli_version"]
    orig = load_checkpoint(ckpts[kind])
    back = ex.read_safetensors_folder(folder)
    for key in ("method", "encoder_config", "data", "epoch", "step"):
        assert back[key] == orig[key], key
    assert back["settings"] == (orig.get("settings") or {}) and back["pretraining_only"] == []
    parts = ("encoder", "head") if "head" in orig else ("encoder",)
    assert ("head" in back) == ("head" in orig) and ("head_config" in back) == ("head_config" in orig)
    if "head" in orig:
        assert back["head_config"] == orig["head_config"]
    for part in parts:
        assert back[part].keys() == orig[part].keys()
        for k, v in orig[part].items():
            assert back[part][k].dtype == v.dtype and torch.equal(back[part][k], v), (part, k)
    # the public write function gives the same folder, and its output re-saves as a loadable checkpoint
    again = ex.write_safetensors_folder(orig, tmp_path / "st2")
    from safetensors.torch import load_file

    first, second = load_file(folder / "model.safetensors"), load_file(again / "model.safetensors")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    save_checkpoint(tmp_path / "re.pt", back)
    enc, info, ckpt = load_encoder(tmp_path / "re.pt")
    model, ref = ex.build_export_model(enc, ckpt), _eager(ckpts[kind])
    x = ex.sample_clips(ref, 4)
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))


def test_safetensors_replaces_an_earlier_export_but_not_a_foreign_folder(ckpts, tmp_path):
    folder = tmp_path / "st"
    assert run("export", "-c", ckpts["slim"], "-f", "safetensors", "--out", folder).exit_code == 0
    r = run("export", "-c", ckpts["mamp"], "-f", "safetensors", "--out", folder)
    assert r.exit_code == 0, r.output
    assert ex.read_safetensors_folder(folder)["method"] == "mamp"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["st"]  # no temp / old folders left
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    r = run("export", "-c", ckpts["slim"], "-f", "safetensors", "--out", other)
    assert r.exit_code == 2 and "other files" in r.output
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("fmt", ex.FORMATS)
def test_forced_mismatch_fails_with_exit_2_and_leaves_no_file(ckpts, tmp_path, monkeypatch, fmt):
    real = ex.load_exported

    def perturbed(fmt_, path):
        f = real(fmt_, path)
        return lambda x: f(x) + 1e-3

    monkeypatch.setattr(ex, "load_exported", perturbed)
    out = tmp_path / ("out" if fmt == "safetensors" else f"model.{fmt}")
    r = run("export", "-c", ckpts["finetuned"], "--format", fmt, "--out", out)
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "differs from PyTorch" in lines[0] and "Traceback" not in r.output, r.output
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary one


@pytest.mark.parametrize("fmt, module", [("onnx", "onnxruntime"), ("onnx", "onnx"), ("safetensors", "safetensors")])
def test_missing_extra_names_the_export_extra(ckpts, tmp_path, monkeypatch, fmt, module):
    monkeypatch.setitem(sys.modules, module, None)  # import now raises ImportError
    out = tmp_path / ("out" if fmt == "safetensors" else "m.onnx")
    r = run("export", "-c", ckpts["slim"], "--format", fmt, "--out", out)
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "pip install 'skelcli[export]'" in lines[0] and module in lines[0], r.output
    assert list(tmp_path.iterdir()) == []


def test_bad_format_batch_and_out_fail_before_work(ckpts, tmp_path):
    r = run("export", "-c", ckpts["slim"], "--format", "tflite", "--out", tmp_path / "m")
    assert r.exit_code == 2 and "onnx, torchscript, safetensors" in r.output
    r = run("export", "-c", ckpts["slim"], "--format", "onnx", "--out", tmp_path, "--batch", "2")
    assert r.exit_code == 2 and "--out" in r.output and "folder" in r.output
    r = run("export", "-c", ckpts["slim"], "--format", "onnx", "--out", tmp_path / "m.onnx", "--batch", "0")
    assert r.exit_code == 2 and "--batch" in r.output
    assert list(tmp_path.iterdir()) == []


def test_help_states_the_layout():
    r = run("export", "--help")
    assert r.exit_code == 0
    text = " ".join(r.output.split())
    assert "logits" in text and "features" in text and "(batch, M=2, T, V, C)" in text and "skelcli[export]" in text


def test_onnx_file_carries_metadata(ckpts, tmp_path):
    import onnx

    out = tmp_path / "m.onnx"
    assert run("export", "-c", ckpts["slim_finetuned"], "-f", "onnx", "--out", out).exit_code == 0
    proto = onnx.load(str(out))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["method"] == "slim" and json.loads(meta["encoder_config"])["pool"] == "cls_mean"
    assert proto.opset_import[0].version >= 17
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [2, 16, 25, 3]
    assert np.isfinite(onnx.numpy_helper.to_array(proto.graph.initializer[0])).all()
