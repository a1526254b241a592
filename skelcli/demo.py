"""``skel demo``: the whole chain on embedded synthetic data, in one command.

synthesize NTU60-format raw files -> ``prepare`` -> ``pretrain`` each method with the small preset
-> frozen-encoder linear and kNN probes -> the same probes on randomly initialised encoders (what
pretraining bought) -> a quick benchmark. Everything lands under one output folder.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from pydantic import Field

from skelcli.settings import StrictModel


class DemoSettings(StrictModel):
    """What the demo runs. The synthetic set and budgets are sized for ~2 CPU cores in < 10 minutes."""

    methods: list[str] = Field(default_factory=lambda: ["mae", "mamp", "gfp", "slim"])
    # 768 clips of 16 classes with per-sample nuisance (speed, amplitude, facing, distractor moves):
    # the set on which the small preset's MAMP clearly beats a random encoder (tests/test_pretraining_gain.py).
    difficulty: str = "medium"
    classes: int = Field(16, ge=2)
    subjects: int = Field(4, ge=2)
    setups: int = Field(2, ge=1)
    epochs: int | None = Field(None, ge=1, description="pretraining epochs (None: the small preset's)")
    seed: int = 0
    workers: int | None = None
    benchmark: bool = True
    probe_k: int = 20


def _stage(log: Callable[[str], None], text: str) -> float:
    log(f"[bold cyan]==>[/] {text}")
    return time.perf_counter()


def _top1(probe_result: dict[str, Any]) -> float:
    return float(probe_result["top1"])


def run_demo(out: Path, settings: DemoSettings, log: Callable[[str], None] = print, progress: bool = True) -> dict[str, Any]:
    """Run the demo into ``out``; returns the summary (also written to ``out/demo.json``)."""
    from skelcli.data.prepare import prepare_dataset
    from skelcli.data.synthetic import SynthSettings, synthesize
    from skelcli.engine.config import resolve_pretrain_settings
    from skelcli.engine.train import pretrain
    from skelcli.eval.probe import run_probe
    from skelcli.methods import available_methods

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    summary: dict[str, Any] = {"out": str(out), "settings": settings.model_dump(), "methods": {}, "random_init": {}}

    t = _stage(log, "synthesizing NTU60-format raw .skeleton files")
    raw = out / "raw"
    synth_cfg = SynthSettings(classes=settings.classes, subjects=settings.subjects, setups=settings.setups,
                              difficulty=settings.difficulty, seed=settings.seed)
    rep = synthesize("ntu60", raw, synth_cfg, force=True)
    summary["synth"] = {"files": rep.n_files, "bytes": rep.bytes, "classes": rep.class_ids, "seconds": time.perf_counter() - t}
    log(f"    {rep.n_files} files, {rep.bytes / 1e6:.1f} MB in {time.perf_counter() - t:.1f} s -> {raw}")

    t = _stage(log, "preparing them into one HDF5 file (real parser, denoiser, splits)")
    data = out / "ntu60_synth.h5"
    prep = prepare_dataset("ntu60", [raw], data, workers=settings.workers, force=True, progress=progress)
    summary["prepare"] = prep.to_json()
    log(f"    {prep.kept} samples kept, rejected {sum(prep.rejected.values())} ({prep.rejected}), splits {prep.splits} -> {data}")

    known = set(available_methods())
    methods = [m for m in settings.methods if m in known]
    for m in settings.methods:
        if m not in known:
            log(f"[yellow]    skipping {m}: not available in this build[/]")

    random_done: dict[str, dict[str, Any]] = {}
    for name in methods:
        t = _stage(log, f"pretraining {name} (small preset)")
        extra = {"epochs": settings.epochs} if settings.epochs else {}
        cfg = resolve_pretrain_settings(name, "small", data_path=data, split="xsub", seed=settings.seed, **extra)
        run_dir = out / "runs" / name
        res = pretrain(cfg, run_dir, force=True, progress=progress)
        entry: dict[str, Any] = {"pretrain": res.to_json()}
        for proto in ("linear", "knn"):
            r = run_probe(res.checkpoint, data, "xsub", run_dir / f"probe-{proto}", kind=proto, k=settings.probe_k, seed=settings.seed)
            entry[proto] = _top1(r)
        # the same probes on a randomly initialised encoder of the same shape
        key = json.dumps(cfg.method.encoder.model_dump(), sort_keys=True)
        if key not in random_done:
            rnd: dict[str, Any] = {"used_by": []}
            for proto in ("linear", "knn"):
                r = run_probe(res.checkpoint, data, "xsub", out / "runs" / f"random-{name}" / f"probe-{proto}",
                              kind=proto, k=settings.probe_k, random_init=True, seed=settings.seed, cache=False)
                rnd[proto] = _top1(r)
            random_done[key] = rnd
        random_done[key]["used_by"].append(name)
        entry["random_init"] = {p: random_done[key][p] for p in ("linear", "knn")}
        entry["seconds"] = time.perf_counter() - t
        summary["methods"][name] = entry
        log(f"    {name}: {res.steps} steps in {res.seconds:.0f} s, linear {entry['linear']:.3f} "
            f"(random {entry['random_init']['linear']:.3f}), kNN {entry['knn']:.3f} (random {entry['random_init']['knn']:.3f})")

    if settings.benchmark and methods:
        from skelcli.bench.report import run_benchmark
        from skelcli.bench.throughput import BenchConfig

        t = _stage(log, "quick benchmark: paper-size models, batch 4, one timed step each (the full run: docs/benchmarks.md)")
        bench = run_benchmark(BenchConfig(methods=methods, device="cpu", preset="paper", batch_size=4, repeats=1, warmup=1))
        summary["benchmark"] = bench
        (out / "benchmark.json").write_text(json.dumps(bench, indent=2, default=str))
    summary["seconds"] = time.perf_counter() - t_all
    (out / "demo.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
