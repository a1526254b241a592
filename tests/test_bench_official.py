"""`skel benchmark --baseline official --official-src DIR` (issue 15 item 3): the official MAMP model is
imported at run time from a user's checkout. These tests build a FAKE checkout in tmp_path whose
``model_mamp/transformer.py`` has the official constructor keywords and forward signature; the real
code is only exercised when SKEL_OFFICIAL_MAMP_SRC points at a maoyunyao/MAMP checkout.

No test asserts a speed (common rules).
"""

from __future__ import annotations

import json
import math
import os
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from skelcli.bench.official import check_official_src, load_official_mamp, measure_official, verdict_line
from skelcli.cli import app
from skelcli.errors import SkelError
from skelcli.models.encoder import EncoderConfig

FAKE_INIT = "from model_mamp import transformer\n"  # as the official package __init__ (must not be run)

FAKE_DROP = textwrap.dedent("""
    import torch.nn as nn


    class DropPath(nn.Module):
        def __init__(self, p=0.0):
            super().__init__()
            self.p = p

        def forward(self, x):
            return x
""")

# Same constructor keywords and forward signature as the official model_mamp/transformer.py Transformer;
# a tiny Linear computes a real MSE on the stride-s motion so backward / the AdamW step do work.
FAKE_TRANSFORMER = textwrap.dedent("""
    import json
    from pathlib import Path

    import torch
    import torch.nn as nn
    from .drop import DropPath

    print("num_joints ... (the official SkeleEmbed prints at construction)")


    class Transformer(nn.Module):
        def __init__(self, dim_in=3, dim_feat=256, decoder_dim_feat=256,
                     depth=5, decoder_depth=5, num_heads=8, mlp_ratio=4,
                     num_frames=120, num_joints=25, patch_size=1, t_patch_size=4,
                     qkv_bias=True, qk_scale=None, drop_rate=0., attn_drop_rate=0.,
                     drop_path_rate=0., norm_layer=nn.LayerNorm, norm_skes_loss=False):
            super().__init__()
            print("num_joints", num_joints)
            self.num_frames, self.num_joints, self.dim_in = num_frames, num_joints, dim_in
            self.proj = nn.Linear(dim_in, dim_in)
            self.drop = DropPath(drop_path_rate)
            self._log = Path(__file__).with_name("calls.jsonl")
            args = dict(dim_in=dim_in, dim_feat=dim_feat, decoder_dim_feat=decoder_dim_feat, depth=depth,
                        decoder_depth=decoder_depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                        num_frames=num_frames, num_joints=num_joints, patch_size=patch_size,
                        t_patch_size=t_patch_size, qkv_bias=qkv_bias, qk_scale=qk_scale, drop_rate=drop_rate,
                        attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate, norm_skes_loss=norm_skes_loss)
            with self._log.open("a") as f:
                f.write(json.dumps({"init": args}) + "\\n")

        def forward(self, x, mask_ratio=0.80, motion_stride=1, motion_aware_tau=0.75, **kwargs):
            N, C, T, V, M = x.shape
            assert (C, T, V, M) == (self.dim_in, self.num_frames, self.num_joints, 2), x.shape
            with self._log.open("a") as f:
                f.write(json.dumps({"forward": {"shape": list(x.shape), "mask_ratio": mask_ratio,
                                                "motion_stride": motion_stride, "tau": motion_aware_tau,
                                                "kwargs": sorted(kwargs)}}) + "\\n")
            x = x.permute(0, 4, 2, 3, 1).contiguous().view(N * M, T, V, C)
            motion = torch.zeros_like(x)
            motion[:, :-motion_stride] = x[:, motion_stride:] - x[:, :-motion_stride]
            pred = self.drop(self.proj(x))
            mask = (torch.rand(N * M, T, V, device=x.device) < mask_ratio).float()
            loss = ((pred - motion) ** 2).mean(dim=-1)
            loss = (loss * mask).sum() / mask.sum().clamp(min=1.0)
            return loss, pred, mask
""")


def fake_checkout(root: Path, transformer: str = FAKE_TRANSFORMER) -> Path:
    pkg = root / "model_mamp"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(FAKE_INIT)
    (pkg / "drop.py").write_text(FAKE_DROP)
    (pkg / "transformer.py").write_text(transformer)
    (root / "main_pretrain.py").write_text("raise SystemExit('never imported')\n")
    return root


def calls(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "model_mamp" / "calls.jsonl").read_text().splitlines()]


SMALL = EncoderConfig(num_frames=8, t_patch=4, dim=16, depth=1, heads=2)
CFG = SimpleNamespace(batch_size=2, repeats=1, iters=1, warmup=0, precision="fp32")


# ----------------------------------------------------------------------------- loading
def test_load_finds_the_class_and_leaves_no_trace(tmp_path, capsys):
    src = fake_checkout(tmp_path / "MAMP")
    path_before, modules_before = list(sys.path), set(sys.modules)
    cls = load_official_mamp(src)
    assert cls.__name__ == "Transformer" and issubclass(cls, torch.nn.Module)
    assert sys.path == path_before
    new = set(sys.modules) - modules_before
    assert not any(n.startswith(("model_mamp", "_skelcli_official_mamp", "main_pretrain")) for n in new), new
    assert not any(str(src) in str(getattr(sys.modules[n], "__file__", "") or "") for n in new), new
    assert "model_mamp" not in sys.modules
    assert capsys.readouterr().out == ""  # the checkout's prints do not reach our output
    # the class still works after its module left sys.modules (and a second load is independent)
    model = cls(num_frames=8, num_joints=25, dim_feat=16)
    loss, pred, mask = model(torch.randn(1, 3, 8, 25, 2), mask_ratio=0.5, motion_stride=1, motion_aware_tau=0.8)
    assert loss.ndim == 0 and pred.shape == (2, 8, 25, 3) and mask.shape == (2, 8, 25)
    assert load_official_mamp(src) is not cls


def test_checkout_without_the_model_file_is_a_clear_error(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "transformer.py").write_text("class Transformer: pass\n")  # the classifier, not ours
    with pytest.raises(SkelError, match=r"no model_mamp/transformer\.py; pass the root of a maoyunyao/MAMP checkout"):
        load_official_mamp(tmp_path)
    with pytest.raises(SkelError, match="no such folder"):
        check_official_src(tmp_path / "missing")
    src = fake_checkout(tmp_path / "MAMP")
    with pytest.raises(SkelError, match="pass its parent"):
        check_official_src(src / "model_mamp")


def test_a_broken_or_foreign_model_file_is_a_clear_error(tmp_path):
    broken = fake_checkout(tmp_path / "a", transformer="import not_a_module_anywhere\n")
    path_before = list(sys.path)
    with pytest.raises(SkelError, match=r"importing model_mamp/transformer\.py failed: ModuleNotFoundError"):
        load_official_mamp(broken)
    assert sys.path == path_before and not any(n.startswith("_skelcli_official_mamp") for n in sys.modules)
    foreign = fake_checkout(tmp_path / "b", transformer="class Other: pass\n")
    with pytest.raises(SkelError, match="has no Transformer model class"):
        load_official_mamp(foreign)


# ----------------------------------------------------------------------------- measuring
def test_measure_official_times_the_step_with_our_sizes(tmp_path):
    src = fake_checkout(tmp_path / "MAMP")
    out = measure_official(CFG, torch.device("cpu"), src, SMALL, decoder_depth=1, tau=0.8, mask_ratio=0.9)
    for key in ("impl", "decoder_depth", "batch_size", "ms_per_step", "samples_per_s", "peak_memory_mb", "src"):
        assert key in out
    assert out["src"] == str(src.resolve()) and out["batch_size"] == 2 and out["decoder_depth"] == 1
    ms = out["ms_per_step"]["median_ms"]
    assert math.isfinite(ms) and ms > 0 and len(out["ms_per_step"]["repeats_ms"]) == 1
    assert out["samples_per_s"] > 0 and out["samples_per_s"] == pytest.approx(2 * 1000.0 / ms)
    assert math.isfinite(out["first_loss"]) and out["first_loss"] > 0
    log = calls(src)
    init = log[0]["init"]
    assert init == out["model_args"]
    assert (init["dim_feat"], init["decoder_dim_feat"], init["depth"], init["decoder_depth"], init["num_heads"]) == (16, 16, 1, 1, 2)
    assert (init["num_frames"], init["t_patch_size"], init["num_joints"], init["patch_size"]) == (8, 4, 25, 1)
    assert init["norm_skes_loss"] is True and init["qkv_bias"] is True
    fwd = [c["forward"] for c in log if "forward" in c]
    assert len(fwd) == 1  # warmup 0, one window of one step
    assert fwd[0] == {"shape": [2, 3, 8, 25, 2], "mask_ratio": 0.9, "motion_stride": 1, "tau": 0.8, "kwargs": []}


def test_paper_arguments_equal_the_official_ntu60_config():
    from skelcli.bench.official import official_model_args

    # config/ntu60_xsub_joint/pretrain_mamp_t120_layer8+3_mask90.yaml, model_args
    assert official_model_args(EncoderConfig(), 3) == {
        "dim_in": 3, "dim_feat": 256, "decoder_dim_feat": 256, "depth": 8, "decoder_depth": 3, "num_heads": 8,
        "mlp_ratio": 4, "num_frames": 120, "num_joints": 25, "patch_size": 1, "t_patch_size": 4, "qkv_bias": True,
        "qk_scale": None, "drop_rate": 0.0, "attn_drop_rate": 0.0, "drop_path_rate": 0.0, "norm_skes_loss": True}


def test_a_non_finite_first_loss_stops_like_the_official_engine(tmp_path):
    nan = FAKE_TRANSFORMER.replace("return loss, pred, mask", "return loss * float('nan'), pred, mask")
    src = fake_checkout(tmp_path / "MAMP", transformer=nan)
    with pytest.raises(SkelError, match="loss is nan"):
        measure_official(CFG, torch.device("cpu"), src, SMALL, decoder_depth=1, tau=0.8)


def test_verdict_line():
    official = {"samples_per_s": 9.4, "batch_size": 16}
    line = verdict_line(12.3, official)
    assert line == "ours 1.31x the official MAMP step, faster (ours 12.3 vs 9.4 samples/s, same device and batch 16)"
    assert "slower" in verdict_line(4.7, official) and "0.50x" in verdict_line(4.7, official)
    assert "ours not measured" in verdict_line(None, official)
    assert "\n" not in line


@pytest.mark.skipif(not os.environ.get("SKEL_OFFICIAL_MAMP_SRC"), reason="set SKEL_OFFICIAL_MAMP_SRC to a maoyunyao/MAMP checkout")
def test_the_real_official_code_runs():
    src = Path(os.environ["SKEL_OFFICIAL_MAMP_SRC"])
    small = EncoderConfig(num_frames=16, t_patch=4, dim=32, depth=2, heads=4)
    out = measure_official(CFG, torch.device("cpu"), src, small, decoder_depth=1, tau=0.8)
    assert out["samples_per_s"] > 0 and math.isfinite(out["first_loss"])


# ----------------------------------------------------------------------------- CLI
def invoke(*args):
    return CliRunner().invoke(app, ["benchmark", "--measure-throughput", "--methods", "mamp", "--preset", "small",
                                    "--device", "cpu", "--no-flops", *map(str, args)])


def test_cli_refuses_official_without_or_with_a_wrong_source(tmp_path):
    res = invoke("--baseline", "official")
    assert res.exit_code == 2 and "--official-src" in res.output and "Traceback" not in res.output
    res = invoke("--baseline", "official", "--official-src", tmp_path / "nowhere")
    assert res.exit_code == 2 and "--official-src" in res.output and "no such folder" in res.output
    res = invoke("--baseline", "official", "--official-src", tmp_path)
    assert res.exit_code == 2 and "--official-src" in res.output and "model_mamp/transformer.py" in res.output
    broken = fake_checkout(tmp_path / "broken", transformer="raise RuntimeError('boom')\n")
    res = invoke("--baseline", "official", "--official-src", broken)
    assert res.exit_code == 2 and "boom" in res.output
    assert "benchmarking" not in res.output and "timing" not in res.output  # nothing was measured


def test_cli_rejects_bad_baseline_combinations(tmp_path):
    src = fake_checkout(tmp_path / "MAMP")
    res = invoke("--baseline", "fast")
    assert res.exit_code == 2 and "unknown --baseline 'fast'" in res.output
    res = invoke("--baseline", "eager", "--official-src", src)
    assert res.exit_code == 2 and "--official-src is only used with --baseline official" in res.output
    res = invoke("--baseline-impl", "bogus")
    assert res.exit_code == 2 and "--baseline eager" in res.output
    res = invoke("--baseline-impl", "reference", "--baseline", "official", "--official-src", src)
    assert res.exit_code == 2 and "pass only --baseline" in res.output


def test_deprecated_baseline_impl_is_eager():
    from skelcli.cli.bench import _resolve_baseline

    notes = []
    console = SimpleNamespace(print=lambda msg, **kw: notes.append(msg))
    assert _resolve_baseline(None, "reference", None, console) == "eager"
    assert notes and "deprecated" in notes[0]
    assert _resolve_baseline("eager", None, None, console) == "eager"
    assert _resolve_baseline(None, None, None, console) is None


def test_cli_official_baseline_end_to_end(tmp_path):
    src = fake_checkout(tmp_path / "MAMP")
    out = tmp_path / "bench.json"
    res = invoke("--repeats", "1", "--warmup", "0", "--iters", "1", "--batch-size", "2",
                 "--baseline", "official", "--official-src", src, "--json", out)
    assert res.exit_code == 0, res.output
    b = json.loads(out.read_text())["baseline"]
    assert b["src"] == str(src.resolve()) and b["batch_size"] == 2 and b["samples_per_s"] > 0
    assert math.isfinite(b["first_loss"]) and b["ours_over_official"] > 0
    assert b["verdict"].startswith("ours ") and "the official MAMP step" in b["verdict"]
    assert "the official MAMP step" in res.output
    init = calls(src)[0]["init"]  # sized like our small-preset MAMP
    assert (init["dim_feat"], init["depth"], init["num_frames"], init["decoder_depth"]) == (32, 2, 16, 1)
