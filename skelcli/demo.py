"""``skel demo``: the whole chain on embedded synthetic data, in one command.

synthesize NTU60-format raw files -> ``prepare`` -> ``pretrain`` each method with the small preset
-> frozen-encoder linear and kNN probes -> the same probes on randomly initialised encoders (what
pretraining bought) -> a quick benchmark. Everything lands under one output folder.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable

from pydantic import Field

from skelcli.settings import StrictModel


class DemoSettings(StrictModel):
    """What the demo runs. Sized for 2 CPU cores: 317-360 s on a quiet 2-core AMD EPYC VM in its usual phase (docs/benchmarks.md, "The demo")."""

    methods: list[str] = Field(default_factory=lambda: ["mae", "mamp", "gfp", "slim"])
    # 768 clips of 16 classes with per-sample nuisance (speed, amplitude, facing, distractor moves):
    # the set on which every method's small preset beats a random encoder of its shape (docs/benchmarks.md).
    difficulty: str = "medium"
    classes: int = Field(16, ge=2, le=60, description="NTU60 action classes to synthesize (48 clips each)")
    subjects: int = Field(4, ge=2)
    setups: int = Field(2, ge=1)
    epochs: int | None = Field(None, ge=1, description="pretraining epochs (None: the small preset's)")
    seed: int = 0
    workers: int | None = None
    parallel: int | None = Field(None, ge=1, description="methods pretrained at once, one thread each (None: up to 2, by CPU count)")
    benchmark: bool = True
    pictures: bool = Field(True, description="curves.png of every method and embed_<method>.png (extra [viz])")
    probe_k: int = 20
    required_gain: float = Field(0.05, description="top-1 gain over the random encoder that the table calls a clear win")


PROTOCOLS = ("linear", "knn")
#: The demo's fast probes (skelcli.eval.recipes): logistic regression and cosine kNN, the same for every method.
DEMO_RECIPES = {"linear": "sklearn", "knn": "skel"}


def _stage(log: Callable[[str], None], text: str) -> float:
    log(f"[bold cyan]==>[/] {text}")
    return time.perf_counter()


def _top1(probe_result: dict[str, Any]) -> float:
    return float(probe_result["top1"])


def default_parallel() -> int:
    """Pretraining processes: 2 on a machine with 2 or more cores, else 1. Tiny models gain nothing
    from a second intra-op thread, so two single-thread runs side by side halve the wall time."""
    return 2 if (os.cpu_count() or 1) >= 2 else 1


#: Seconds each pool job took in `make demo` on a 2-core AMD EPYC VM (2026-12-07, docs/benchmarks.md "The
#: demo"): pretraining, probes and feature map per method, and the quick benchmark's FLOPs count of each
#: method (SLiM's 6-12 s, the others' 3-6 s). The jobs start longest first (:func:`longest_first`), so that the
#: two workers finish together; the short FLOPs jobs fill whichever worker frees first, SLiM's first.
EXPECTED_SECONDS = {"gfp": 162, "slim": 160, "mae": 117, "mamp": 116, "benchmark-flops:slim": 9,
                    "benchmark-flops:mae": 5, "benchmark-flops:mamp": 5, "benchmark-flops:gfp": 4}
#: The pool jobs that count the quick benchmark's FLOPs are named ``benchmark-flops:<method>``.
FLOPS_JOB = "benchmark-flops"

# A worker's way to print: the parent's log in-process, a queue back to the parent in a pool worker.
_EMIT: Callable[[str], None] = print


class _PlainLines:
    """The console the engine prints to inside a job: every message becomes one plain line for _EMIT."""

    is_terminal = False

    @staticmethod
    def print(text: str, markup: bool = True, **_: Any) -> None:
        from rich.text import Text

        _EMIT(Text.from_markup(text).plain if markup else text)


def _init_worker(queue: Any) -> None:
    global _EMIT
    import torch

    torch.set_num_threads(1)
    _EMIT = queue.put


def _method_job(job: dict[str, Any]) -> dict[str, Any]:
    """Pretrain one method with ``job["settings"]`` (resolved PretrainSettings as JSON) and probe its
    encoder; with ``job["random"]`` also probe a randomly initialised encoder of the same shape. Runs in
    the parent or in a pool worker. Each encoder's features are extracted once (the kNN probe reads the
    linear probe's feature cache, keyed by the encoder's weights); the probes write their confusion counts
    but no confusion PNGs (12 pictures, about 10 CPU-seconds, that the demo's table does not use). With
    ``job["embed_png"]`` the job then draws the encoder's feature map there, two at a time in the pool."""
    from skelcli.engine.config import PretrainSettings
    from skelcli.engine.train import pretrain
    from skelcli.eval.probe import run_probe

    name, data, run_root, seed = job["name"], Path(job["data"]), Path(job["run_root"]), job["seed"]
    t = time.perf_counter()
    cfg = PretrainSettings.model_validate(job["settings"])
    res = pretrain(cfg, run_root / name, force=True, progress="lines" if job["progress"] else False, console=_PlainLines())

    def probes(out_dir: Path, random_init: bool) -> dict[str, float]:
        return {proto: _top1(run_probe(res.checkpoint, data, "xsub", out_dir / f"probe-{proto}", kind=proto,
                                       recipe=DEMO_RECIPES[proto], k=job["k"] if proto == "knn" else None,
                                       random_init=random_init, seed=seed, device="cpu", confusion_png=False))
                for proto in PROTOCOLS}

    entry: dict[str, Any] = {"pretrain": res.to_json(), **probes(run_root / name, False)}
    if job["random"]:
        entry["random_init"] = probes(run_root / f"random-{name}", True)
    probed = time.perf_counter() - t - res.seconds
    drawn = ""
    if job.get("embed_png") and _have_matplotlib():
        # the PCA map of the encoder's test features (``skel viz embed``), from the features the probes cached
        from skelcli.viz.embed import embedding_map

        t_map = time.perf_counter()
        entry["embed_png"] = str(embedding_map(res.checkpoint, data, Path(job["embed_png"]), method="pca", device="cpu")["path"])
        drawn = f"; feature map in {time.perf_counter() - t_map:.0f} s"
    entry["seconds"] = time.perf_counter() - t
    _EMIT(f"    {name}: {res.steps} steps in {res.seconds:.0f} s; probed in {probed:.0f} s{drawn}")
    return entry


def _have_matplotlib() -> bool:
    """Whether the pictures can be drawn (matplotlib, extra ``[viz]``); without it the method jobs draw no
    feature map and the pictures stage says so in one line."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _flops_job(job: dict[str, Any]) -> dict[str, Any]:
    """The quick benchmark's FLOPs (``job["bench"]``: BenchConfig fields), counted beside the pretraining
    jobs: FLOPs do not depend on load, the timings after the pool do."""
    from skelcli.bench.report import count_benchmark_flops
    from skelcli.bench.throughput import BenchConfig

    t = time.perf_counter()
    flops = count_benchmark_flops(BenchConfig(**job["bench"]), log=lambda text: _EMIT(f"    {text}"))
    _EMIT(f"    benchmark FLOPs of {', '.join(flops)} counted in {time.perf_counter() - t:.0f} s")
    return {"flops": flops, "seconds": time.perf_counter() - t}


def _job(job: dict[str, Any]) -> dict[str, Any]:
    return _flops_job(job) if job.get("kind") == "flops" else _method_job(job)


def _family(name: str) -> str:
    """A pool job's family: the method's name for a pretraining job, FLOPS_JOB for ``benchmark-flops:<method>``."""
    return name.split(":")[0]


def flops_jobs(bench: dict[str, Any]) -> list[dict[str, Any]]:
    """One pool job per method of ``bench`` (BenchConfig fields) that counts that method's FLOPs: short jobs
    that fill whichever worker frees first, where one job for every method (24 s) left one worker idle."""
    return [{"name": f"{FLOPS_JOB}:{m}", "kind": "flops", "bench": {**bench, "methods": [m]}} for m in bench["methods"]]


def pop_flops(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]] | None:
    """Take the FLOPs jobs' entries out of ``results``: method name -> measure_flops entry (None if none ran)."""
    names = [n for n in results if _family(n) == FLOPS_JOB]
    flops = {m: f for n in names for m, f in results.pop(n)["flops"].items()}
    return flops or None


def longest_first(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pool's jobs in the order they start: by EXPECTED_SECONDS, longest first (the longest-processing-
    time rule); a job without an entry goes last, and equal times keep their order."""
    return sorted(jobs, key=lambda j: -EXPECTED_SECONDS.get(j["name"], 0))


def _run_jobs(jobs: list[dict[str, Any]], parallel: int, log: Callable[[str], None]) -> dict[str, dict[str, Any]]:
    """Every job, ``parallel`` at a time (spawned single-thread workers whose lines come back through a
    queue and are printed here), or in this process when ``parallel`` is 1."""
    global _EMIT
    if parallel <= 1 or len(jobs) <= 1:
        previous, _EMIT = _EMIT, log
        try:
            return {job["name"]: _job(job) for job in jobs}
        finally:
            _EMIT = previous
    import multiprocessing as mp
    import queue as queue_mod
    from concurrent.futures import ProcessPoolExecutor, wait

    from rich.markup import escape

    ctx = mp.get_context("spawn")
    lines = ctx.Queue()
    results: dict[str, dict[str, Any]] = {}

    def drain(timeout: float = 0.0) -> None:
        while True:
            try:
                log(escape(lines.get(timeout=timeout) if timeout else lines.get_nowait()))
            except queue_mod.Empty:
                return

    with ProcessPoolExecutor(max_workers=min(parallel, len(jobs)), mp_context=ctx, initializer=_init_worker,
                             initargs=(lines,)) as pool:
        futures = {pool.submit(_job, job): job["name"] for job in jobs}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.5)
            drain()
            for f in done:
                results[futures[f]] = f.result()
    drain(timeout=0.2)  # the workers have exited: what they put is in the pipe
    return results


def gains(entry: dict[str, Any]) -> dict[str, float]:
    """Top-1 of the pretrained encoder minus that of the random one, per protocol."""
    return {p: entry[p] - entry["random_init"][p] for p in PROTOCOLS}


def verdict(entry: dict[str, Any], required: float) -> tuple[bool, str]:
    """(clear win, plain words): does pretraining beat the random encoder by ``required`` in both protocols?"""
    gains_ = gains(entry)
    words = f"linear {100 * gains_['linear']:+.1f}, kNN {100 * gains_['knn']:+.1f} points"
    if all(g >= required for g in gains_.values()):
        return True, f"beats a random encoder: {words}"
    if all(g > 0 for g in gains_.values()):
        return False, f"beats a random encoder by less than {100 * required:.0f} points: {words}"
    return False, f"does NOT beat a random encoder: {words}"


def _pictures(out: Path, methods: list[str], entries: dict[str, dict[str, Any]], embeds: dict[str, str | None],
              log: Callable[[str], None]) -> dict[str, Any]:
    """``out/curves.png`` (all methods overlaid), next to the ``out/embed_<method>.png`` that each method's
    pool job drew (``embeds``); skipped with one line when matplotlib (extra ``[viz]``) is missing."""
    if not _have_matplotlib():
        log("    skipped: the pictures need matplotlib (pip install 'skelcli\\[viz]')")  # \[: not rich markup
        return {}
    from skelcli.viz.curves import plot_runs

    curves = plot_runs([out / "runs" / m for m in methods], out / "curves.png", labels=methods)
    pictures: dict[str, Any] = {"curves": [str(p) for p in curves["paths"]], "embed": {}}
    for m in methods:
        png = embeds.get(m)
        if png:
            pictures["embed"][m] = png
            entries[m]["picture"] = Path(png).name
    log(f"    {', '.join(Path(p).name for p in pictures['curves'])}, {', '.join(Path(p).name for p in pictures['embed'].values())}")
    return pictures


def run_demo(out: Path, settings: DemoSettings, log: Callable[[str], None] = print, progress: bool = True) -> dict[str, Any]:
    """Run the demo into ``out``; returns the summary (also written to ``out/demo.json``)."""
    from skelcli.bench.report import wall_clock_claim_methods
    from skelcli.data.prepare import prepare_dataset
    from skelcli.data.synthetic import SynthSettings, synthesize
    from skelcli.engine.config import resolve_pretrain_settings
    from skelcli.methods import available_methods

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    summary: dict[str, Any] = {"out": str(out), "settings": settings.model_dump(), "methods": {}}

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

    # One random-encoder baseline per encoder shape, computed by the first method of that shape.
    extra = {"epochs": settings.epochs} if settings.epochs else {}
    configs = {name: resolve_pretrain_settings(name, "small", data_path=data, split="xsub", seed=settings.seed, **extra)
               for name in methods}
    shape_of = {name: json.dumps(cfg.method.encoder.model_dump(), sort_keys=True) for name, cfg in configs.items()}
    owner: dict[str, str] = {}
    for name in methods:
        owner.setdefault(shape_of[name], name)
    parallel = min(settings.parallel or default_parallel(), max(len(methods), 1))
    jobs = [{"name": name, "settings": configs[name].model_dump(mode="json"), "data": str(data), "run_root": str(out / "runs"),
             "seed": settings.seed, "k": settings.probe_k, "random": owner[shape_of[name]] == name, "progress": progress,
             "embed_png": str(out / f"embed_{name}.png") if settings.pictures else None}
            for name in methods]
    # Training steps are timed for the methods of the training-speed claim only (GFP vs MAMP): SLiM's paper-size
    # step alone took 8.3 s of the 34 s this stage took with every method timed (AMD EPYC, 2026-12-06).
    bench_cfg = {"methods": methods, "device": "cpu", "preset": "paper", "batch_size": 4, "repeats": 1, "warmup": 1,
                 "train_methods": wall_clock_claim_methods(methods)}
    if settings.benchmark and methods:
        jobs += flops_jobs(bench_cfg)
    jobs = longest_first(jobs)
    t = _stage(log, f"pretraining {', '.join(methods)} (small preset; {parallel} at a time, one thread each), "
                    "then linear and kNN probes of each encoder and of a random encoder of the same shape"
                    + ("; the quick benchmark's FLOPs are counted beside them" if settings.benchmark and methods else ""))
    results = _run_jobs(jobs, parallel, log)
    flops = pop_flops(results)
    embeds = {name: results[name].pop("embed_png", None) for name in methods}
    for name in methods:
        entry = results[name]
        base = results[owner[shape_of[name]]]["random_init"]
        entry["random_init"] = dict(base)
        entry["random_init_from"] = owner[shape_of[name]]
        entry["gain"] = gains(entry)
        entry["clear_win"], entry["verdict"] = verdict(entry, settings.required_gain)
        summary["methods"][name] = entry
        log(f"    {name}: linear {entry['linear']:.3f} (random {base['linear']:.3f}), "
            f"kNN {entry['knn']:.3f} (random {base['knn']:.3f}): {entry['verdict']}")
    summary["pretrain_stage_seconds"] = time.perf_counter() - t

    if settings.pictures and methods:
        t = _stage(log, "pictures: the training curves of every method, a PCA map of each encoder's test features (drawn in its pool job)")
        summary["pictures"] = _pictures(out, methods, summary["methods"], embeds, log)
        summary["pictures_seconds"] = time.perf_counter() - t

    if settings.benchmark and methods:
        from skelcli.bench.report import run_benchmark
        from skelcli.bench.throughput import BenchConfig

        t = _stage(log, "quick benchmark: paper-size models, batch 4, one timed step of the methods of the training-speed "
                        "claim, inference of every encoder (every method: skel benchmark --measure-throughput)")
        bench = run_benchmark(BenchConfig(**bench_cfg), log=lambda text: log(f"    {text}"), flops=flops)
        summary["benchmark"] = bench
        summary["benchmark_seconds"] = time.perf_counter() - t
        (out / "benchmark.json").write_text(json.dumps(bench, indent=2, default=str))
    summary["seconds"] = time.perf_counter() - t_all
    (out / "demo.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
