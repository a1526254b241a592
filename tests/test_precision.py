"""Precision per recipe (issue 17 item 4): the one resolution rule, each method's recipe precision,
the resolved choice in the console line / setup row / checkpoint, and GFP's fp32 covariance term."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from typer.testing import CliRunner

from skelcli.engine.dist import autocast_context, resolve_precision
from skelcli.errors import SkelError

# (requested, device type, recipe, GPU supports bf16) -> resolved precision. Written out in full.
TABLE = {
    # explicit fp32 / bf16: honoured on every device, whatever the recipe
    **{("fp32", d, r, b): "fp32" for d, r, b in itertools.product(("cpu", "cuda"), ("fp32", "bf16", "fp16"), (True, False))},
    **{("bf16", d, r, b): "bf16" for d, r, b in itertools.product(("cpu", "cuda"), ("fp32", "bf16", "fp16"), (True, False))},
    # auto on CPU: fp32 always
    **{("auto", "cpu", r, b): "fp32" for r, b in itertools.product(("fp32", "bf16", "fp16"), (True, False))},
    # auto on CUDA: the recipe; fp16/bf16 recipes run bf16 where the GPU has it, else fp32
    ("auto", "cuda", "fp32", True): "fp32",
    ("auto", "cuda", "fp32", False): "fp32",
    ("auto", "cuda", "bf16", True): "bf16",
    ("auto", "cuda", "bf16", False): "fp32",
    ("auto", "cuda", "fp16", True): "bf16",
    ("auto", "cuda", "fp16", False): "fp32",
}


def test_table_covers_every_combination():
    combos = set(itertools.product(("auto", "fp32", "bf16"), ("cpu", "cuda"), ("fp32", "bf16", "fp16"), (True, False)))
    assert set(TABLE) == combos


@pytest.mark.parametrize("requested,device,recipe,bf16_ok", sorted(TABLE))
def test_resolution_table(requested, device, recipe, bf16_ok):
    assert resolve_precision(requested, device, recipe, bf16_supported=bf16_ok) == TABLE[(requested, device, recipe, bf16_ok)]


def test_resolution_takes_devices_and_indexed_device_types():
    assert resolve_precision("auto", torch.device("cpu"), "fp16") == "fp32"
    assert resolve_precision("auto", "cuda:1", "fp16", bf16_supported=True) == "bf16"
    assert resolve_precision("auto", torch.device("cuda", 0), "fp32", bf16_supported=True) == "fp32"


def test_resolution_refuses_fp16_and_unknown_names():
    with pytest.raises(SkelError, match="GradScaler"):
        resolve_precision("fp16", "cuda", "fp16", bf16_supported=True)
    with pytest.raises(SkelError, match="unknown precision"):
        resolve_precision("fp64", "cpu", "fp32")
    with pytest.raises(SkelError, match="unknown recipe precision"):
        resolve_precision("auto", "cpu", "amp")


def test_autocast_context_on_cpu():
    with autocast_context(torch.device("cpu"), "auto", "fp16"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast_context(torch.device("cpu"), "fp32"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast_context(torch.device("cpu"), "bf16"):
        assert torch.is_autocast_enabled("cpu")


def test_recipe_precision_per_method():
    from skelcli.methods.base import get_method

    assert {m: get_method(m).recipe_precision for m in ("mae", "mamp", "gfp", "slim")} == {
        "mae": "fp32", "mamp": "fp32", "gfp": "fp32", "slim": "fp16"}


def test_finetune_follows_the_mamp_recipe_fp32():
    from skelcli.eval import finetune

    assert finetune.FinetuneSettings().precision == "auto"
    assert finetune.FINETUNE_RECIPE_PRECISION == "fp32"
    assert resolve_precision("auto", "cuda", finetune.FINETUNE_RECIPE_PRECISION, bf16_supported=True) == "fp32"
    assert ("finetune", "precision") in finetune._VOLATILE  # older fine-tuning folders still resume
    with finetune._autocast(torch.device("cpu")):
        assert not torch.is_autocast_enabled("cpu")
    with finetune._autocast(torch.device("cpu"), "bf16"):
        assert torch.is_autocast_enabled("cpu")


def test_resolved_precision_in_console_setup_row_and_checkpoint(data_file, tmp_path):
    from skelcli.cli._app import app
    from skelcli.engine.checkpoint import load_checkpoint
    from test_pretrain_cli import TINY

    out = tmp_path / "run"
    args = ["pretrain", "--method", "mamp", "--data", str(data_file), "--split", "xsub", "--preset", "small",
            "--epochs", "1", "--device", "cpu", "--out", str(out), "--no-progress"]
    for o in TINY:
        args += ["--set", o]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "precision fp32 (auto; recipe fp32)" in " ".join(r.output.split())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    setup = [row for row in rows if row.get("kind") == "setup"]
    assert len(setup) == 1
    assert (setup[0]["precision"], setup[0]["precision_requested"], setup[0]["recipe_precision"]) == ("fp32", "auto", "fp32")
    assert load_checkpoint(out / "last.pt")["precision"] == "fp32"
    # the settings written to the run folder gained no field: older run folders still resume
    settings = json.loads((out / "settings.json").read_text())
    assert "recipe_precision" not in json.dumps(settings)


def test_gfp_covariance_and_variance_stay_fp32_under_cpu_bf16_autocast():
    from skelcli.methods.vicreg import covariance_loss, feature_std, variance_loss

    g = torch.Generator().manual_seed(0)
    z = torch.randn(600, 64, generator=g) * 2.0 + 0.5
    z = z + 0.3 * z[:, :1]  # correlated dimensions: a covariance term far from zero
    ref = [covariance_loss(z), variance_loss(z), feature_std(z)]
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        got = [covariance_loss(z), variance_loss(z), feature_std(z)]
        assert torch.is_autocast_enabled("cpu")  # autocast is back on after the fp32 section
    for a, b in zip(ref, got):
        assert b.dtype == torch.float32
        torch.testing.assert_close(b, a, rtol=1e-6, atol=0.0)
