"""Tests of `skel benchmark` (skelcli.bench): FLOP counting, the timing harness, ratios, JSON schema, CLI.

No test asserts a speed (common rules); timings are only checked for shape and consistency.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from skelcli.bench.flops import block_flops, count_flops, transformer_flops
from skelcli.bench.report import METHOD_KEYS, RATIO_KEYS, TOP_KEYS, compute_ratios, verdict, wall_clock_claim_methods
from skelcli.bench.throughput import PeakMemory, StepTimer, Timing, build_method, measure_flops
from skelcli.cli import app
from skelcli.models.layers import Block

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


# ----------------------------------------------------------------------------- FLOPs
def test_closed_form_block_matches_gfp_spec_formula():
    # spec/gfp.md 2.7: one width-256 / FFN-1024 block costs n*786,432 + 2*n^2*256 MACs.
    n = 750
    assert block_flops(n, 256, 1024) == 2 * (n * 786_432 + 2 * n * n * 256)
    assert transformer_flops(n, 256, 8, 1024, 8) == 8 * block_flops(n, 256, 1024)
    # MAE-family inference: 8 blocks on 750 tokens x 2 persons ~ 28.1 G (paper 28.32).
    assert 2 * transformer_flops(750, 256, 8, 1024, 8) / 1e9 == pytest.approx(28.1, abs=0.05)
    with pytest.raises(ValueError):
        transformer_flops(10, 30, 1, 64, 4)


def test_counter_includes_attention_and_matches_formula():
    torch.manual_seed(0)
    dim, heads, depth, hidden, tokens, batch = 32, 4, 2, 128, 10, 3
    blocks = torch.nn.Sequential(*[Block(dim, heads, hidden / dim) for _ in range(depth)])
    x = torch.randn(batch, tokens, dim)
    with torch.no_grad():
        rep = count_flops(lambda: blocks(x), samples=batch)
    expected = batch * transformer_flops(tokens, dim, depth, hidden, heads)
    assert rep.total == expected
    attention = batch * depth * 2 * 2 * tokens * tokens * dim  # QK^T and AV, 2 FLOPs per MAC
    assert attention > 0 and rep.total - attention == batch * depth * 2 * tokens * (4 * dim * dim + 2 * dim * hidden)
    assert rep.per_sample_g() == pytest.approx(expected / batch / 1e9)


def test_paper_size_mae_counts_reproduce_the_papers():
    """1.97 (encoder on 74 visible tokens x 2 persons; the reference keeps int(750*0.1)=74, not 75),
    17.70 (5-block decoder: the NTU120 recipe) and 28.32 (inference) GFLOPs within 2%."""
    from skelcli.models.masking import keep_count

    assert keep_count(750, 0.9) == 74
    method, _ = build_method("mae", "paper", "ntu120", torch.device("cpu"))
    assert method.settings.decoder.depth == 5
    torch.manual_seed(0)
    fl = measure_flops(method, torch.device("cpu"), samples=1, fwd_bwd=False)
    mods = fl["train_forward_by_module_g"]
    assert mods["encoder"] == pytest.approx(1.97, rel=0.02)
    assert mods["decoder"] == pytest.approx(17.70, rel=0.02)
    assert fl["inference_g"] == pytest.approx(28.32, rel=0.02)
    # the encoder count is exactly the closed form for 74 tokens plus the patch embedding of all 750
    enc = 2 * (transformer_flops(74, 256, 8, 1024, 8) + 2 * 750 * 12 * 256)
    assert mods["encoder"] * 1e9 == pytest.approx(enc, rel=1e-9)


# ----------------------------------------------------------------------------- timing
class FakeClock:
    def __init__(self, events: list[str]) -> None:
        self.t = 0.0
        self.events = events

    def __call__(self) -> float:
        self.events.append("clock")
        self.t += 1.0
        return self.t


def test_timer_synchronises_cuda_before_every_clock_read(monkeypatch):
    events: list[str] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: events.append("sync"))
    timer = StepTimer("cuda", clock=FakeClock(events))  # default sync for a CUDA device
    steps = []
    timing = timer.measure(lambda: (steps.append(1), events.append("step")), iters=4, warmup=2, repeats=3)
    assert len(steps) == 2 + 4 * 3
    reads = [i for i, e in enumerate(events) if e == "clock"]
    assert len(reads) == 2 * 3
    assert all(events[i - 1] == "sync" for i in reads)
    # each window spans one clock tick (1 s) over 4 steps -> 250 ms per step
    assert timing.ms == [250.0, 250.0, 250.0]
    assert timing.median_ms == 250.0 and timing.iqr_ms == 0.0


def test_timer_never_synchronises_on_cpu(monkeypatch):
    events: list[str] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: events.append("sync"))
    StepTimer("cpu", clock=FakeClock(events)).measure(lambda: None, iters=1, warmup=0, repeats=2)
    assert "sync" not in events and events.count("clock") == 4


def test_round_robin_times_window_r_of_every_task_before_window_r_plus_1():
    """Issue 15 item 5: windows interleave, warm-up stays right before a task's first window, a task
    that raises leaves the rotation (its error kept) while the others finish all windows."""
    from skelcli.bench.throughput import Task, run_round_robin

    events: list[str] = []

    def step(name: str):
        def run() -> None:
            events.append(name)
            if name == "c" and events.count("c") == 3:
                raise RuntimeError("c broke")
        return run

    tasks = [Task("a", step("a"), iters=2, warmup=1), Task("b", step("b"), iters=1, warmup=0), Task("c", step("c"), iters=1, warmup=1)]
    run_round_robin(tasks, 3, timer=StepTimer("cpu", clock=FakeClock(events)), memory=False)
    steps = [e for e in events if e != "clock"]
    # window 1: a (1 warm-up + 2), b, c (1 warm-up + 1); window 2: a a, b, c; window 3: a a, b (c is out)
    assert steps == ["a", "a", "a", "b", "c", "c", "a", "a", "b", "c", "a", "a", "b"]
    a, b, c = tasks
    assert a.timing.ms == [500.0] * 3 and b.timing.ms == [1000.0] * 3  # one fake tick per window
    assert len(c.timing.ms) == 1 and isinstance(c.error, RuntimeError) and a.error is None


def test_timing_median_and_iqr():
    t = Timing([10.0, 30.0, 20.0, 40.0, 50.0])
    assert t.median_ms == 30.0
    assert t.iqr_ms == pytest.approx(40.0 - 20.0)
    assert Timing([5.0]).iqr_ms == 0.0


def test_peak_memory_cpu_is_measured():
    with PeakMemory(torch.device("cpu")) as mem:
        block = torch.ones(8 * 2**20 // 4)  # 8 MB
        block += 1
    assert mem.mb is not None and mem.mb >= 0


# ----------------------------------------------------------------------------- ratios
def test_ratios_and_verdicts_from_measured_numbers():
    # the methods whose training the demo times are those of the wall-clock claim, in the caller's order
    assert wall_clock_claim_methods(["mae", "mamp", "gfp", "slim"]) == ["mamp", "gfp"]
    assert wall_clock_claim_methods(["slim", "mae"]) == []
    methods = {
        "mamp": {"train": {"samples_per_s": 10.0}, "inference": {"throughput": {"samples_per_s": 5.0}},
                 "flops": {"train_forward_g": 12.5, "inference_g": 28.1}},
        "gfp": {"train": {"samples_per_s": 62.0}, "flops": {"train_forward_g": 4.0}},
        "mae": {"inference": {"throughput": {"samples_per_s": 1.0}, "masked_encoder": {"samples_per_s": 10.0}},
                "flops": {"inference_g": 28.1, "train_forward_by_module_g": {"encoder": 1.961}}},
    }
    by_key = {r["key"]: r for r in compute_ratios(methods)}
    assert all(tuple(r) == RATIO_KEYS for r in by_key.values())
    assert by_key["gfp_vs_mamp_training"]["wall_clock_windows"] is None  # no windows given
    methods["gfp"]["train"].update(batch_size=4, ms_per_step={"repeats_ms": [10.0, 20.0, 10.0]})
    methods["mamp"]["train"].update(batch_size=4, ms_per_step={"repeats_ms": [60.0, 100.0, 70.0]})
    win = {r["key"]: r for r in compute_ratios(methods)}["gfp_vs_mamp_training"]
    assert win["wall_clock_windows"] == pytest.approx([6.0, 5.0, 7.0]) and win["wall_clock_range"] == pytest.approx([5.0, 7.0])
    gfp = by_key["gfp_vs_mamp_training"]
    assert gfp["wall_clock"] == pytest.approx(6.2) and gfp["flops"] == pytest.approx(12.5 / 4.0)
    assert gfp["verdict"].startswith("reproduced")
    slim = by_key["slim_vs_mamp_inference"]
    assert slim["wall_clock"] is None and slim["verdict"].startswith("not measured")
    mae = by_key["mae_inference_vs_pretrain_encoder"]
    assert mae["flops"] == pytest.approx(28.1 / 1.961) and mae["wall_clock"] == pytest.approx(10.0)
    assert verdict(3.0, 6.2, "wall_clock") == "not reproduced on this device: measured 3.00x vs paper 6.20x (wall-clock)"
    assert verdict(5.3, 6.2, "wall_clock").startswith("reproduced")  # within 15%


# ----------------------------------------------------------------------------- reference model
def test_reference_mamp_step_runs_and_masks_74_of_750():
    from skelcli.bench.reference import ReferenceMAMP

    torch.manual_seed(0)
    model = ReferenceMAMP(frames=120, dim=32, depth=1, heads=4, decoder_depth=1)
    x = torch.randn(1, 3, 120, 25, 2).cumsum(dim=2) * 0.01
    ids_keep, ids_restore, mask = model.masking(x.permute(0, 4, 2, 3, 1).reshape(2, 120, 25, 3))
    assert ids_keep.shape == (2, 74) and mask.sum(dim=1).tolist() == [676.0, 676.0]
    loss = model(x)
    loss.backward()
    assert torch.isfinite(loss) and model.patch_embed.weight.grad is not None


# ----------------------------------------------------------------------------- CLI + schema
def test_cli_tiny_benchmark_writes_the_versioned_json(tmp_path):
    out = tmp_path / "bench.json"
    res = CliRunner().invoke(app, ["benchmark", "--measure-throughput", "--preset", "small", "--repeats", "1",
                                   "--warmup", "0", "--methods", "mae,mamp,nosuch", "--device", "cpu",
                                   "--json", str(out)])
    assert res.exit_code == 0, res.output
    rep = json.loads(out.read_text())
    assert tuple(rep) == TOP_KEYS
    assert rep["schema"] == "skelcli.benchmark" and rep["schema_version"] == 1
    assert rep["methods"]["nosuch"]["status"] == "skipped" and "not registered" in rep["methods"]["nosuch"]["note"]
    for name in ("mae", "mamp"):
        m = rep["methods"][name]
        assert tuple(m) == METHOD_KEYS and m["status"] == "ok"
        assert m["train"]["batch_size"] == 4 and len(m["train"]["ms_per_step"]["repeats_ms"]) == 1
        assert m["train"]["samples_per_s"] > 0 and m["inference"]["throughput"]["samples_per_s"] > 0
        assert m["flops"]["train_forward_by_module_g"]["encoder"] > 0
        assert m["flops"]["train_forward_by_module_g"]["decoder"] > 0
        assert m["flops"]["train_step_g"] > m["flops"]["train_forward_g"]  # backward counted too
    # MAE and MAMP share one downstream encoder shape: measured once, for mae, and said so for mamp
    assert rep["methods"]["mae"]["inference"]["shared_with"] is None
    assert rep["methods"]["mamp"]["inference"]["shared_with"] == "mae"
    assert rep["methods"]["mamp"]["inference"]["throughput"] == rep["methods"]["mae"]["inference"]["throughput"]
    assert "as mae" in res.output
    assert [r["key"] for r in rep["ratios"]] == ["gfp_vs_mamp_training", "slim_vs_mamp_inference",
                                                  "mae_inference_vs_pretrain_encoder"]
    man = rep["manifest"]
    assert man["device_type"] == "cpu" and man["batch_size"] == 4 and man["precision"] == "fp32"
    assert man["torch"] == torch.__version__ and man["git_commit"]
    assert "Paper ratios" in res.output and "Manifest" in res.output


def test_flops_counted_beforehand_and_training_timed_for_some_methods_only():
    """What skel demo does: FLOPs counted on their own (count_benchmark_flops) are taken as they are, and
    only BenchConfig.train_methods get a timed training step; the tables show the others as not timed."""
    import io

    from rich.console import Console

    from skelcli.bench.report import count_benchmark_flops, render, run_benchmark
    from skelcli.bench.throughput import BenchConfig

    cfg = BenchConfig(methods=["mae", "gfp"], device="cpu", preset="small", batch_size=2, repeats=1, warmup=0,
                      train_methods=["gfp"])
    flops = count_benchmark_flops(cfg)
    assert set(flops) == {"mae", "gfp"} and flops["gfp"]["train_step_g"] > flops["gfp"]["train_forward_g"] > 0
    rep = run_benchmark(cfg, flops=flops)
    assert rep["methods"]["mae"]["flops"] is flops["mae"] and rep["methods"]["gfp"]["flops"] is flops["gfp"]
    assert rep["methods"]["mae"]["train"] is None and rep["methods"]["gfp"]["train"]["samples_per_s"] > 0
    assert rep["methods"]["mae"]["inference"]["throughput"]["samples_per_s"] > 0
    buf = io.StringIO()
    render(rep, Console(file=buf, width=200))
    row = next(line for line in buf.getvalue().splitlines() if line.strip("│┃ ").startswith("mae") and "not timed" in line)
    assert row


def test_every_json_key_is_documented():
    text = DOCS.read_text()
    documented = set(re.findall(r"`([a-z_0-9]+)`", text))
    from skelcli.bench.throughput import BenchConfig, manifest

    cfg = BenchConfig(device="cpu").resolved(torch.device("cpu"))
    keys = set(TOP_KEYS) | set(METHOD_KEYS) | set(RATIO_KEYS) | set(manifest(cfg, torch.device("cpu")))
    keys |= {"median_ms", "iqr_ms", "repeats_ms", "samples_per_s", "peak_memory_mb", "ms_per_step", "latency_batch1",
             "throughput", "masked_encoder", "train_forward_g", "train_forward_by_module_g", "train_step_g", "inference_g",
             "paper_g", "ours_over_reference", "shared_with", "ratio_windows", "projected_hours", "data_wait_fraction", "mb_per_s", "files_per_s"}
    missing = sorted(k for k in keys if k not in documented)
    assert not missing, f"undocumented JSON keys: {missing}"


def test_cli_rejects_bad_input(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["benchmark"])
    assert res.exit_code == 2 and "nothing to do" in res.output
    res = runner.invoke(app, ["benchmark", "--measure-throughput", "--precision", "fp8"])
    assert res.exit_code == 2 and "precision" in res.output
    from helpers import assert_one_line_error

    res = runner.invoke(app, ["benchmark", "--measure-throughput", "--compile", "--compile-backend", "tensorrt",
                              "--json", str(tmp_path / "b.json")])
    assert_one_line_error(res, "unknown --compile-backend 'tensorrt'; use inductor, aot_eager, cudagraphs")
    assert not (tmp_path / "b.json").exists()
    res = runner.invoke(app, ["benchmark", "--end-to-end", str(tmp_path / "missing.h5")])
    assert res.exit_code == 2 and "no such file" in res.output


def test_plot_writes_a_png_or_says_matplotlib_is_missing(tmp_path):
    from skelcli.bench.report import plot
    from skelcli.errors import SkelError

    report = {"methods": {"mae": {"status": "ok", "train": {"samples_per_s": 3.0},
                                  "inference": {"throughput": {"samples_per_s": 5.0}},
                                  "flops": {"train_forward_g": 12.5, "inference_g": 28.1}}},
              "manifest": {"device": "cpu", "precision": "fp32", "batch_size": 4, "torch": torch.__version__}}
    out = tmp_path / "bench.png"
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        with pytest.raises(SkelError, match="needs matplotlib"):
            plot(report, out)
    else:
        plot(report, out)
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_prepare_throughput_on_synthetic_raw_files(tmp_path):
    from skelcli.bench.throughput import measure_prepare
    from skelcli.data.synthetic import SynthSettings, synthesize

    raw = tmp_path / "raw"
    synthesize("ntu60", raw, SynthSettings(classes=2, subjects=1, setups=1, cameras=1, replications=1,
                                            min_frames=20, max_frames=40))
    files = sorted(raw.rglob("*.skeleton"))
    rep = measure_prepare(raw)
    assert rep["files"] == len(files) > 0
    assert rep["mb"] == pytest.approx(sum(f.stat().st_size for f in files) / 2**20)
    assert rep["files_per_s"] == pytest.approx(rep["files"] / rep["seconds"])
    assert rep["frames"] > 0 and 0 <= rep["rejected"] < rep["files"]


def test_cli_end_to_end_on_a_prepared_file(tmp_path):
    from skelcli.data.prepare import prepare_dataset
    from skelcli.data.synthetic import SynthSettings, synthesize

    raw, h5 = tmp_path / "raw", tmp_path / "ntu60.h5"
    synthesize("ntu60", raw, SynthSettings(classes=3, min_frames=30, max_frames=60))
    prepare_dataset("ntu60", [raw], h5, workers=1)
    out = tmp_path / "e2e.json"
    res = CliRunner().invoke(app, ["benchmark", "--end-to-end", str(h5), "--measure-throughput", "--methods", "mamp",
                                   "--preset", "small", "--repeats", "2", "--warmup", "1", "--device", "cpu",
                                   "--no-flops", "--json", str(out)])
    assert res.exit_code == 0, res.output
    e2e = json.loads(out.read_text())["end_to_end"]
    assert e2e["dataset"] == "ntu60" and e2e["protocol"] == "xsub" and e2e["train_clips"] > 0
    m = e2e["methods"]["mamp"]
    assert m["steps"] == 2 and m["batch_size"] == 4 and 0 <= m["data_wait_fraction"] < 1
    assert m["schedule_samples"] == 400 * e2e["train_clips"]
    assert m["projected_hours"] == pytest.approx(m["schedule_samples"] / m["samples_per_s"] / 3600)
