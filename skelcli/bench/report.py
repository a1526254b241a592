"""Run the benchmark, compute the claimed ratios, and render / save the report.

JSON schema ``skelcli.benchmark`` version 1 (every key documented in docs/benchmarks.md)::

    {schema, schema_version, manifest{...}, conventions{...},
     methods{name: {status, note, params, encoder_params, input_frames, tokens,
                    train{...}|null, inference{...}|null, flops{...}|null}},
     ratios[{key, title, numerator, denominator, paper, claim, wall_clock, flops, verdict}],
     baseline{...}|null, end_to_end{...}|null, prepare{...}|null}
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import torch

from skelcli.bench.flops import CONVENTION, PERSONS_PER_SAMPLE
from skelcli.bench.throughput import (
    BenchConfig,
    baseline_result,
    build_method,
    inference_key,
    inference_result,
    inference_tasks,
    manifest,
    measure_flops,
    method_registry,
    reference_task,
    resolve_device,
    run_round_robin,
    training_result,
    training_task,
)
from skelcli.errors import SkelError

SCHEMA = "skelcli.benchmark"
SCHEMA_VERSION = 1
TOP_KEYS = ("schema", "schema_version", "manifest", "conventions", "methods", "ratios", "baseline", "end_to_end", "prepare")
METHOD_KEYS = ("status", "note", "params", "encoder_params", "input_frames", "tokens", "train", "inference", "flops")
RATIO_KEYS = ("key", "title", "numerator", "denominator", "paper", "claim", "wall_clock", "wall_clock_windows",
              "wall_clock_range", "flops", "verdict")

#: the three claims checked in one run: (key, title, numerator method, denominator method, paper, claim kind)
CLAIMS = (
    ("gfp_vs_mamp_training", "GFP vs MAMP training speed", "gfp", "mamp", 6.2, "wall_clock"),  # spec/gfp.md 4.2
    ("slim_vs_mamp_inference", "SLiM vs MAMP inference cost", "slim", "mamp", 7.89, "flops"),  # spec/slim.md 5.2
    ("mae_inference_vs_pretrain_encoder", "MAE inference vs MAE pretraining encoder", "mae", "mae", 14.38, "flops"),  # spec/slim.md 5.2
)
TOLERANCE = 0.15  # "reproduced" if within ~15% of the paper or better


def wall_clock_claim_methods(methods: list[str]) -> list[str]:
    """The ``methods`` that a wall-clock claim of CLAIMS compares (GFP and MAMP), in their order."""
    wanted = {m for _, _, num, den, _, kind in CLAIMS if kind == "wall_clock" for m in (num, den)}
    return [m for m in methods if m in wanted]


def verdict(measured: float | None, paper: float, kind: str) -> str:
    """One line: reproduced if ``measured >= (1 - TOLERANCE) * paper``."""
    if measured is None or not math.isfinite(measured):
        return "not measured (a method of this ratio did not run)"
    label = "wall-clock" if kind == "wall_clock" else "FLOPs"
    if measured >= (1 - TOLERANCE) * paper:
        return f"reproduced: {label} ratio {measured:.2f}x vs paper {paper:.2f}x"
    return f"not reproduced on this device: measured {measured:.2f}x vs paper {paper:.2f}x ({label})"


def _get(d: dict | None, *path: str) -> Any:
    for p in path:
        if not isinstance(d, dict):
            return None
        d = d.get(p)
    return d


def _div(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b:
        return None
    return a / b


def _window_ratios(num_ms: list[float] | None, den_ms: list[float] | None, num_batch: int = 1, den_batch: int = 1) -> list[float] | None:
    """Per-window throughput ratios (num_batch / num_ms[r]) / (den_batch / den_ms[r]) of two tasks
    timed round-robin (window r of both measured back to back); None without both."""
    if not num_ms or not den_ms or len(num_ms) != len(den_ms):
        return None
    return [num_batch * d / (den_batch * n) for n, d in zip(num_ms, den_ms) if n > 0]


def compute_ratios(methods: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The paper ratios from results measured in this run (spec/ecosystem.md 6.4 point 5).

    ``wall_clock`` is the ratio of the median throughputs; ``wall_clock_windows`` the ratio in each
    round-robin window and ``wall_clock_range`` their [min, max], the spread a noisy machine puts on it.
    """
    out = []
    for key, title, num, den, paper, kind in CLAIMS:
        a, b = methods.get(num, {}), methods.get(den, {})
        if key == "gfp_vs_mamp_training":
            wall = _div(_get(a, "train", "samples_per_s"), _get(b, "train", "samples_per_s"))
            windows = _window_ratios(_get(a, "train", "ms_per_step", "repeats_ms"), _get(b, "train", "ms_per_step", "repeats_ms"),
                                     _get(a, "train", "batch_size") or 1, _get(b, "train", "batch_size") or 1)
            flops = _div(_get(b, "flops", "train_forward_g"), _get(a, "flops", "train_forward_g"))
        elif key == "slim_vs_mamp_inference":
            wall = _div(_get(a, "inference", "throughput", "samples_per_s"), _get(b, "inference", "throughput", "samples_per_s"))
            windows = _window_ratios(_get(a, "inference", "throughput", "ms_per_batch", "repeats_ms"),
                                     _get(b, "inference", "throughput", "ms_per_batch", "repeats_ms"))
            flops = _div(_get(b, "flops", "inference_g"), _get(a, "flops", "inference_g"))
        else:
            wall = _div(_get(a, "inference", "masked_encoder", "samples_per_s"), _get(a, "inference", "throughput", "samples_per_s"))
            windows = _window_ratios(_get(a, "inference", "masked_encoder", "ms_per_batch", "repeats_ms"),
                                     _get(a, "inference", "throughput", "ms_per_batch", "repeats_ms"))
            flops = _div(_get(a, "flops", "inference_g"), _get(a, "flops", "train_forward_by_module_g", "encoder"))
        measured = wall if kind == "wall_clock" else flops
        out.append({"key": key, "title": title, "numerator": num, "denominator": den, "paper": paper, "claim": kind,
                    "wall_clock": wall, "wall_clock_windows": windows,
                    "wall_clock_range": [min(windows), max(windows)] if windows else None,
                    "flops": flops, "verdict": verdict(measured, paper, kind)})
    return out


def count_benchmark_flops(cfg: BenchConfig, log: Callable[[str], None] = lambda s: None) -> dict[str, dict[str, Any]]:
    """The FLOPs part of :func:`run_benchmark` on its own: method name -> ``measure_flops`` entry.

    FLOPs do not depend on timing or load, so a caller may count them while other work keeps the
    machine busy (``skel demo`` does it beside its pretraining jobs) and hand them to
    ``run_benchmark(..., flops=...)``, which then times only."""
    device = resolve_device(cfg.device)
    _, registered = method_registry()
    out: dict[str, dict[str, Any]] = {}
    for name in cfg.methods:
        if name in registered:
            method, _ = build_method(name, cfg.preset, cfg.dataset, device)
            log(f"{name}: counting FLOPs")
            out[name] = measure_flops(method, device)
    return out


def run_benchmark(cfg: BenchConfig, log: Callable[[str], None] = lambda s: None,
                  flops: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Measure everything ``cfg`` asks for and return the versioned report dict.

    ``flops``: per-method FLOPs counted beforehand (:func:`count_benchmark_flops` with the same
    methods, preset and dataset); those methods are not counted again.

    Every method is built (and its FLOPs counted) first; then the training steps of all methods and
    of the baseline are timed round-robin (:func:`~skelcli.bench.throughput.run_round_robin`), then
    the inference passes, one measurement per distinct downstream encoder
    (:func:`~skelcli.bench.throughput.inference_key`; ``inference.shared_with`` names the method whose
    measurement another one reuses).
    """
    from skelcli.models.encoder import count_parameters

    device = resolve_device(cfg.device)
    cfg = cfg.resolved(device)
    torch.manual_seed(cfg.seed)
    _, registered = method_registry()
    methods: dict[str, dict[str, Any]] = {}
    built: dict[str, Any] = {}
    train_tasks: dict[str, Any] = {}
    for name in cfg.methods:
        entry: dict[str, Any] = {k: None for k in METHOD_KEYS}
        methods[name] = entry
        if name not in registered:
            entry.update(status="skipped", note=f"method {name!r} is not registered in this build (available: {', '.join(registered)})")
            log(f"[yellow]skip[/] {name}: not registered")
            continue
        try:
            method, settings = build_method(name, cfg.preset, cfg.dataset, device)
            enc = method.downstream_encoder().config
            entry.update(status="ok", note="", params=count_parameters(method),
                         encoder_params=count_parameters(method.downstream_encoder()),
                         input_frames=enc.num_frames, tokens=enc.num_tokens)
            if flops is not None and name in flops:
                entry["flops"] = flops[name]
            elif cfg.flops:
                log(f"{name}: counting FLOPs")
                entry["flops"] = measure_flops(method, device)
            if cfg.train_methods is None or name in cfg.train_methods:
                train_tasks[name] = training_task(method, settings, cfg, device, key=name)
            built[name] = method
        except SkelError:
            raise
        except Exception as exc:  # one broken method must not sink the others' numbers
            _fail(entry, exc, name, log)

    baseline_task = None
    mamp = built.get("mamp")
    s = mamp.settings if mamp is not None else None
    if cfg.baseline_impl == "reference" or cfg.baseline == "eager":
        from skelcli.models.encoder import EncoderConfig

        baseline_task = reference_task(cfg, device, s.decoder.depth if s else 3, s.tau if s else 0.80,
                                       s.encoder if s else EncoderConfig())
    elif cfg.baseline == "official":
        from skelcli.bench.official import official_task
        from skelcli.models.encoder import EncoderConfig

        baseline_task = official_task(cfg, device, cfg.official_src, s.encoder if s else EncoderConfig(),
                                      s.decoder.depth if s else 3, s.tau if s else 0.80, s.mask_ratio if s else 0.9,
                                      motion_stride=s.motion_stride if s else 1, decoder_dim=s.decoder.dim if s else None,
                                      norm_target=s.norm_target if s else True)
    elif cfg.baseline_impl not in (None, ""):
        raise SkelError(f"unknown --baseline-impl {cfg.baseline_impl!r}; the only one is 'reference'")

    tasks = list(train_tasks.values()) + ([baseline_task] if baseline_task is not None else [])
    if tasks:
        log(f"timing the training steps round-robin: {', '.join(t.key for t in tasks)} (batch {cfg.batch_size}, "
            f"{cfg.repeats} windows of {cfg.iters} steps)")
        run_round_robin(tasks, cfg.repeats, device, log=log)
    for name, task in train_tasks.items():
        if task.error is not None:
            _fail(methods[name], task.error, name, log)
            built.pop(name, None)
        else:
            methods[name]["train"] = training_result(task, cfg.batch_size)
    del train_tasks, tasks
    if device.type == "cuda":
        torch.cuda.empty_cache()

    groups: dict[str, list[str]] = {}  # inference key -> methods, the first one measured
    for name, method in built.items():
        groups.setdefault(inference_key(method), []).append(name)
    inf_tasks = {names[0]: inference_tasks(built[names[0]], cfg, device, prefix=f"{names[0]}:") for names in groups.values()}
    if inf_tasks:
        shared = [f"{', '.join(n)} share one" for n in groups.values() if len(n) > 1]
        log(f"timing inference round-robin: {', '.join(inf_tasks)}" + (f" ({'; '.join(shared)})" if shared else ""))
        run_round_robin([t for ts in inf_tasks.values() for t in ts], cfg.repeats, device, log=log)
    for names in groups.values():
        first = names[0]
        try:
            result = inference_result(built[first], inf_tasks[first], cfg)
        except Exception as exc:
            for name in names:
                _fail(methods[name], exc, name, log)
            continue
        for name in names:
            methods[name]["inference"] = dict(result, shared_with=None if name == first else first)

    baseline = None
    if baseline_task is not None:
        ours = _get(methods.get("mamp"), "train", "samples_per_s")
        if cfg.baseline == "official":
            from skelcli.bench.official import official_result, verdict_line

            baseline = official_result(baseline_task)
            baseline["ours_over_official"] = _div(ours, baseline["samples_per_s"])
            baseline["verdict"] = verdict_line(ours, baseline)
        else:
            baseline = baseline_result(baseline_task)
            baseline["ours_over_reference"] = _div(ours, baseline["samples_per_s"])
        baseline["ratio_windows"] = _window_ratios(_get(methods.get("mamp"), "train", "ms_per_step", "repeats_ms"),
                                                   baseline["ms_per_step"]["repeats_ms"], cfg.batch_size, cfg.batch_size)

    end_to_end = None
    if cfg.end_to_end is not None:
        from skelcli.bench.throughput import measure_end_to_end

        end_to_end = measure_end_to_end(cfg, device, [m for m in cfg.methods if methods[m]["status"] == "ok"], log)
    prepare = None
    if cfg.prepare is not None:
        from skelcli.bench.throughput import measure_prepare

        prepare = measure_prepare(cfg.prepare, log)

    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "manifest": manifest(cfg, device),
        "conventions": {"flops": CONVENTION, "persons_per_sample": PERSONS_PER_SAMPLE, "giga": 1e9,
                        "macs": "MACs = FLOPs / 2", "timing": "median and IQR over repeats of ms per step; methods "
                        "timed round-robin, ratios also per window (wall_clock_windows)",
                        "ratio_tolerance": TOLERANCE},
        "methods": methods,
        "ratios": compute_ratios(methods),
        "baseline": baseline,
        "end_to_end": end_to_end,
        "prepare": prepare,
    }


def _fail(entry: dict[str, Any], exc: BaseException, name: str, log: Callable[[str], None]) -> None:
    entry.update(status="failed", note=f"{type(exc).__name__}: {exc}", train=None, inference=None)
    log(f"[red]fail[/] {name}: {type(exc).__name__}: {exc}")


# ----------------------------------------------------------------------------- output
def write_json(report: dict[str, Any], path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")


def _f(x: float | None, fmt: str = "{:.2f}") -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else fmt.format(x)


def _render_methods(report: dict[str, Any], methods: dict[str, Any], console) -> None:
    from rich.table import Table

    t = Table(title="Training step (model only, synthetic clips on the device)")
    for col in ("method", "params (M)", "batch", "ms/step (median)", "IQR ms", "samples/s", "peak MB"):
        t.add_column(col, justify="right" if col != "method" else "left")
    for name, m in methods.items():
        if m["status"] != "ok":
            t.add_row(name, "-", "-", "-", "-", "-", f"{m['status']}: {m['note']}"[:60])
            continue
        tr = m["train"]
        if tr is None:  # BenchConfig.train_methods left it out
            t.add_row(name, _f(m["params"] / 1e6), "-", "-", "-", "-", "not timed")
            continue
        t.add_row(name, _f(m["params"] / 1e6), str(tr["batch_size"]), _f(tr["ms_per_step"]["median_ms"], "{:.1f}"),
                  _f(tr["ms_per_step"]["iqr_ms"], "{:.1f}"), _f(tr["samples_per_s"]), _f(tr["peak_memory_mb"], "{:.0f}"))
    console.print(t)

    t = Table(title="Inference (downstream encoder, full clips, 2 persons/sample)",
              caption="identical encoders are measured once: 'as <method>' reuses that method's numbers")
    for col in ("method", "frames", "tokens", "batch-1 ms", "batch", "samples/s", "masked enc samples/s", "measured"):
        t.add_column(col, justify="right" if col != "method" else "left")
    for name, m in methods.items():
        if m["status"] != "ok":
            continue
        inf = m["inference"]
        t.add_row(name, str(inf["input_frames"]), str(inf["tokens"]), _f(inf["latency_batch1"]["median_ms"], "{:.1f}"),
                  str(inf["throughput"]["batch_size"]), _f(inf["throughput"]["samples_per_s"]),
                  _f(_get(inf, "masked_encoder", "samples_per_s")),
                  f"as {inf['shared_with']}" if inf.get("shared_with") else "here")
    console.print(t)

    t = Table(title="GFLOPs per sample (measured | paper)", caption=report["conventions"]["flops"])
    for col in ("method", "encoder (pretrain)", "decoder", "target net", "teacher", "heads", "other",
                "train fwd", "train fwd+bwd", "inference"):
        t.add_column(col, justify="right" if col != "method" else "left")
    for name, m in methods.items():
        fl = m.get("flops")
        if not fl:
            continue
        mods = fl["train_forward_by_module_g"]
        paper = fl["paper_g"] if report["manifest"].get("preset") == "paper" else {}

        def cell(key: str, paper_key: str | None = None) -> str:
            v, p = mods.get(key), paper.get(paper_key or key)
            return f"{_f(v)} | {_f(p)}" if p is not None else _f(v)

        t.add_row(name, cell("encoder", "encoder_pretrain"), cell("decoder"), cell("target_network"), cell("teacher"),
                  cell("heads"), cell("other"), _f(fl["train_forward_g"]), _f(fl["train_step_g"]),
                  f"{_f(fl['inference_g'])} | {_f(paper['inference'])}" if "inference" in paper else _f(fl["inference_g"]))
    console.print(t)

    t = Table(title="Paper ratios, measured in this run")
    for col in ("claim", "paper", "wall-clock (window min-max)", "FLOPs", "verdict"):
        t.add_column(col)
    for r in report["ratios"]:
        spread = r.get("wall_clock_range")
        wall = _f(r["wall_clock"], "{:.2f}x") + (f" ({spread[0]:.2f}-{spread[1]:.2f})" if spread and len(r["wall_clock_windows"]) > 1 else "")
        t.add_row(r["title"], f"{r['paper']}x", wall, _f(r["flops"], "{:.2f}x"), r["verdict"])
    console.print(t)


def render(report: dict[str, Any], console) -> None:
    """Rich tables: training, inference, FLOPs by module next to the paper, ratios, manifest."""
    from rich.table import Table

    methods = report["methods"]
    if methods:
        _render_methods(report, methods, console)
    if report.get("baseline"):
        b = report["baseline"]
        if "verdict" in b:  # --baseline official
            console.print(f"official MAMP step: {_f(b['ms_per_step']['median_ms'], '{:.1f}')} ms/step, first loss "
                          f"{_f(b.get('first_loss'), '{:.3f}')} ({b['src']})", markup=False, highlight=False)
            console.print(b["verdict"], markup=False, highlight=False)
        else:
            console.print(f"reference eager MAMP step: {_f(b['ms_per_step']['median_ms'], '{:.1f}')} ms/step, "
                          f"{_f(b['samples_per_s'])} samples/s; ours / reference throughput = {_f(b.get('ours_over_reference'), '{:.2f}x')}")
    e2e = report.get("end_to_end")
    if e2e:
        t = Table(title=f"End to end ({e2e.get('data')})")
        for col in ("method", "steps", "samples/s", "data wait %", "paper schedule", "projected hours"):
            t.add_column(col)
        for name, r in e2e.get("methods", {}).items():
            t.add_row(name, str(r.get("steps")), _f(r.get("samples_per_s")), _f(r.get("data_wait_fraction", 0) * 100, "{:.0f}"),
                      r.get("schedule", ""), _f(r.get("projected_hours")))
        console.print(t)
    prep = report.get("prepare")
    if prep:
        console.print(f"prepare: {prep['files']} files, {_f(prep['mb'])} MB in {_f(prep['seconds'])} s = "
                      f"{_f(prep['files_per_s'])} files/s, {_f(prep['mb_per_s'])} MB/s")

    man = report["manifest"]
    t = Table(title="Manifest", show_header=False)
    for k in ("device", "torch", "precision", "compile", "batch_size", "inference_batch_size", "threads", "load_average",
              "preset", "package_version", "git_commit"):
        t.add_row(k, str(man.get(k)))
    console.print(t)


def plot(report: dict[str, Any], path: Path) -> None:
    """Bar charts: training samples/s, inference samples/s, GFLOPs per sample (matplotlib extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SkelError("--plot needs matplotlib (the optional 'plot' extra): pip install matplotlib") from None
    ok = {n: m for n, m in report["methods"].items() if m["status"] == "ok"}
    names = list(ok)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    axes[0].bar(names, [_get(ok[n], "train", "samples_per_s") or 0 for n in names], color="tab:blue")
    axes[0].set_title("training samples/s")
    axes[1].bar(names, [ok[n]["inference"]["throughput"]["samples_per_s"] for n in names], color="tab:green")
    axes[1].set_title("inference samples/s")
    width = 0.4
    xs = range(len(names))
    axes[2].bar([x - width / 2 for x in xs], [_get(ok[n], "flops", "train_forward_g") or 0 for n in names], width, label="train fwd")
    axes[2].bar([x + width / 2 for x in xs], [_get(ok[n], "flops", "inference_g") or 0 for n in names], width, label="inference")
    axes[2].set_xticks(list(xs), names)
    axes[2].set_title("GFLOPs / sample")
    axes[2].legend()
    man = report["manifest"]
    fig.suptitle(f"{man['device']} | {man['precision']} | batch {man['batch_size']} | torch {man['torch']}", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
