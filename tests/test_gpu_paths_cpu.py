"""The GPU-side code paths, run on CPU wherever torch allows (issue 15, item 1).

A CUDA run of ``skel pretrain`` / ``skel benchmark`` normally takes two paths that plain CPU tests never
reach: ``torch.compile`` of the training step (``runtime.compile`` / ``--compile``) and bf16 autocast
(``runtime.precision = bf16``; ``auto`` resolves to fp32 on CPU). Both work on CPU too: TorchInductor
generates C++ kernels and builds them with the system compiler, and CPU autocast supports bf16. So each
method pretrains here for two steps with both switched on, on the tiny prepared file, through the CLI,
and the benchmark times a compiled bf16 method; what a GPU box adds beyond this (Triton kernels, CUDA
autocast, DDP over NCCL) is left to the ``cuda`` marker.

Cost. Inductor's kernel builds dominate (one g++ run of roughly 1-3 s per generated kernel, tens per
training step): measured on a 2-core Xeon, MAMP 33 s, GFP 35 s, SLiM 106 s, the benchmark 33 s, more than
a third of the whole suite. So inductor (the code generation) runs for MAMP, and for MAE, which reuses
MAMP's kernels from inductor's on-disk cache (3 s; one xdist group, MAMP first); GFP, SLiM and the
benchmark compile with ``runtime.compile_backend = aot_eager``: the same graph capture by dynamo and the
same AOTAutograd joint forward/backward tracing (where a model stops being compilable: graph breaks,
data-dependent shapes, in-place ops on views), without generating kernels -- and CPU C++ kernels are not
the GPU's Triton ones anyway. Three inductor settings are patched for these tests only:
``cpp.vec_isa_ok = False`` (scalar C++ kernels, about half the build time of the AVX ones),
``compile_threads = 1`` (no compile-worker pool oversubscribing a 2-core box running ``-n 2``) and
``aot_inductor.debug_compile = True`` (g++ -O0 instead of -O3). On a cold kernel cache (a fresh CI
machine) the MAMP test took 50.9 s, 39.4 s once the training views and sample-keyed draws ran outside
the graphs (``engine.hostside``: fewer, larger graphs to build), and 32.6 s with -O0; 4-5 s on a
warm cache (AMD EPYC, 2026-12-06).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from skelcli.cli import app

ENCODER = ["method.encoder.dim=16", "method.encoder.depth=1", "method.encoder.heads=2"]
MASKED = [*ENCODER, "method.encoder.num_frames=8", "method.decoder.dim=16", "method.decoder.heads=2", "data.min_crop_frames=8"]
#: The smallest legal model of each method (on top of ``--preset small``): width 16, one encoder block,
#: 8 frames = 2 x 25 tokens (SLiM: 16-frame global views and a single 8-frame local view; GFP: one local
#: level and the global one, a decoder block on the local level only).
TINY = {
    "mamp": MASKED,
    "mae": MASKED,
    "gfp": [*ENCODER, "method.encoder.num_frames=8", "method.decoder_dim=16", "method.decoder_heads=2", "method.target_dim=8",
            "method.pool_kernels=[2]", "method.level_blocks=[1, 0]", "method.tgn_hidden=[16, 32]", "data.min_crop_frames=8"],
    "slim": [*ENCODER, "method.encoder.num_frames=16", "method.local_frames=[8]", "method.local_crops=[[0.15, 0.4]]",
             "method.local_min_patches=[1]", "method.num_prototypes=32", "method.head_hidden_dim=32", "method.head_bottleneck_dim=16",
             "method.schedule_epochs=1", "method.teacher_temp_warmup_epochs=1", "data.min_crop_frames=8"],
}
#: How each run asks for compile + bf16: the new ``skel pretrain`` flags, or ``--set`` on the settings
#: (which the flags' defaults must not override).
VIA_FLAGS = ["--compile", "--precision", "bf16"]
VIA_SET = ["--set", "runtime.compile=true", "--set", "runtime.precision=bf16"]
#: SKEL_TEST_INDUCTOR_ALL=1 compiles every method with inductor (about 3 more minutes on 2 cores; all
#: four passed that way on the 2-core Xeon, 2026-12-03).
ALL_INDUCTOR = os.environ.get("SKEL_TEST_INDUCTOR_ALL") == "1"
AOT = [] if ALL_INDUCTOR else ["--set", "runtime.compile_backend=aot_eager"]
HOW = {"mamp": VIA_FLAGS, "mae": VIA_SET, "gfp": VIA_FLAGS + AOT, "slim": VIA_SET + AOT}
BACKEND = {"mamp": "inductor", "mae": "inductor", **{m: "inductor" if ALL_INDUCTOR else "aot_eager" for m in ("gfp", "slim")}}
#: Global batch: two steps on the 9 training clips (the second one runs the cached graphs after an
#: optimizer step, or recompiles where a guard failed: SLiM's masked-patch counts change from step to
#: step, so its second step recompiles the graphs that see them with dynamic sizes, 4 s with aot_eager).
#: SLiM's view making and tube masking run eagerly (``engine.hostside``: host-side draws), which
#: took its one-step test from 33 s to 17 s (AMD EPYC, 2026-12-06).
BATCH = {"mamp": 4, "mae": 4, "gfp": 4, "slim": 4}


@pytest.fixture
def inductor_on_cpu():
    """Inductor settings for a quick CPU build (module docstring), fresh dynamo state before and after
    (so that one method's recompiles do not count against the next one's recompile limit), and dynamo's
    counters, to prove that something was compiled."""
    import torch._dynamo
    import torch._inductor.config as inductor_config
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    with inductor_config.patch({"cpp.vec_isa_ok": False, "compile_threads": 1, "aot_inductor.debug_compile": True}):
        yield counters
    torch._dynamo.reset()


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.xdist_group("inductor_cpu")
@pytest.mark.parametrize("method", ["mamp", "mae", "gfp", "slim"])  # mamp before mae: mae reuses its kernels
def test_compiled_bf16_pretraining_on_cpu(method, data_file, tmp_path, inductor_on_cpu):
    from skelcli.engine.checkpoint import load_checkpoint, load_encoder

    counters = inductor_on_cpu
    run = tmp_path / "run"
    args = ["pretrain", "--method", method, "--data", str(data_file), "--split", "xsub", "--preset", "small", "--epochs", "1",
            "--batch-size", str(BATCH[method]), "--device", "cpu", "--seed", "0", "--out", str(run), "--no-progress", *HOW[method],
            "--set", "optim.warmup_epochs=1", "--set", "runtime.log_every=1"]
    for item in TINY[method]:
        args += ["--set", item]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "precision bf16 (bf16;" in " ".join(r.output.split())

    # torch.compile really ran, through inductor (a hard compile error would have failed the run; a
    # graph break only splits the graph and runs the piece in between eagerly)
    assert counters["frames"]["ok"] > 0 and counters["stats"]["unique_graphs"] > 0, dict(counters)
    if BACKEND[method] == "inductor":
        assert sum(counters["inductor"].values()) > 0, dict(counters)
    else:  # AOTAutograd traced the joint forward + backward graph; inductor never ran
        assert sum(counters["aot_autograd"].values()) > 0 and not counters["inductor"], dict(counters)

    rows = _rows(run)
    steps = [row for row in rows if row["kind"] == "step"]
    assert len(steps) == 9 // BATCH[method]  # 9 training clips
    for row in steps + [row for row in rows if row["kind"] == "epoch"]:
        assert math.isfinite(row["loss"]), row
    setup = [row for row in rows if row["kind"] == "setup"]
    assert (setup[0]["precision"], setup[0]["precision_requested"]) == ("bf16", "bf16")

    settings = json.loads((run / "settings.json").read_text())
    assert (settings["runtime"]["compile"], settings["runtime"]["precision"]) == (True, "bf16")
    assert settings["runtime"]["compile_backend"] == BACKEND[method]
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["precision"] == "bf16" and ckpt["settings"]["runtime"]["compile"] is True
    assert not any("_orig_mod" in key for key in ckpt["model"]), "the compiled wrapper leaked into the state dict"

    encoder, info, _ = load_encoder(run / "last.pt")
    assert info.method == method and info.feature_dim == encoder.feature_dim
    cfg = encoder.config
    x = torch.randn(4, cfg.num_frames, cfg.num_joints, cfg.in_chans, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        feats = encoder(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            feats_bf16 = encoder(x)
    assert feats.shape == (4, encoder.feature_dim) and torch.isfinite(feats).all()
    assert torch.isfinite(feats_bf16.float()).all()


def test_pretrain_precision_flag_is_validated_before_any_work(data_file, tmp_path):
    from helpers import assert_one_line_error, run_cli

    r = run_cli("pretrain", "--method", "mamp", "--data", data_file, "--preset", "small", "--precision", "fp8",
                "--device", "cpu", "--out", tmp_path / "run", "--no-progress")
    assert_one_line_error(r, "runtime.precision")
    assert not (tmp_path / "run").exists()


def test_compiled_bf16_benchmark_on_cpu(tmp_path, inductor_on_cpu):
    """`skel benchmark --compile --compile-backend aot_eager --precision bf16` on CPU: the compiled training step and the compiled
    encoder (batch-1 latency and, at --inference-batch-size 1, the same input shape for throughput: one
    graph each; aot_eager, see the module docstring) are timed, and the report says what ran."""
    out = tmp_path / "bench.json"
    backend = "inductor" if ALL_INDUCTOR else "aot_eager"
    r = CliRunner().invoke(app, ["benchmark", "--measure-throughput", "--preset", "small", "--methods", "mae", "--device", "cpu",
                                 "--compile", "--compile-backend", backend, "--precision", "bf16", "--batch-size", "2",
                                 "--inference-batch-size", "1",
                                 "--repeats", "1", "--warmup", "0", "--iters", "1", "--no-flops", "--json", str(out)])
    assert r.exit_code == 0, r.output
    rep = json.loads(out.read_text())
    man = rep["manifest"]
    assert (man["compile"], man["compile_backend"], man["precision"], man["device_type"]) == (True, backend, "bf16", "cpu")
    mae = rep["methods"]["mae"]
    assert mae["status"] == "ok", mae["note"]
    assert inductor_on_cpu["frames"]["ok"] > 0 and sum(inductor_on_cpu["aot_autograd"].values()) > 0
    timings = [mae["train"]["ms_per_step"], mae["inference"]["latency_batch1"], mae["inference"]["throughput"]["ms_per_batch"]]
    for t in timings:
        assert len(t["repeats_ms"]) == 1 and all(math.isfinite(v) and v > 0 for v in t["repeats_ms"]), t
        assert math.isfinite(t["median_ms"]) and t["median_ms"] > 0, t
    assert math.isfinite(mae["train"]["samples_per_s"]) and mae["train"]["samples_per_s"] > 0
    assert math.isfinite(mae["inference"]["throughput"]["samples_per_s"])
