"""``skel gpu-check`` / ``make gpu-check``: one command that measures what a lent GPU can tell (issue 15).

Steps, each timed and recorded whether it passes or fails (a failing step never stops the next):

1. ``manifest``: torch / CUDA / driver versions, the device's name, capability and memory, CPUs, RAM.
2. ``pytest_cuda``: ``pytest -m cuda`` on the checkout's ``tests/`` (the CUDA-only tests), its summary line.
3. ``benchmark``: :func:`skelcli.bench.report.run_benchmark` of mae, mamp, gfp, slim at paper size,
   batch 128, for fp32 / bf16 with and without ``torch.compile`` (the three paper ratios of each
   configuration and every method's peak memory), and SLiM alone at its recipe's per-GPU batch (192);
   a configuration that would start more than 300 s into the run is skipped and reported so.
4. ``loader`` / ``end_to_end``: a synthetic file the size of NTU60 x-sub (40,091 training clips of
   40-300 frames, written straight into HDF5 by :func:`write_synthetic_store`), the loader's clips/s
   in memory, lazy with 0 and N reader processes and through the shared decompressed cache, then the
   real loader + augmentation + training step of each method with the projected wall time of each
   paper schedule.
5. ``ddp``: a one-process ``torchrun`` job (:mod:`skelcli.bench.ddp_probe`) that initialises NCCL
   (gloo on CPU), wraps MAMP in DistributedDataParallel and takes a few steps.

``report.json`` (everything) and ``report.md`` (the tables to paste into docs/benchmarks.md) go to the
output folder. Without CUDA the command exits 3 with one line, unless ``--cpu-quick`` asks for the
same pipeline on the CPU at toy sizes (what the tests run).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from skelcli.errors import SkelError

#: NTU RGB+D 60 cross-subject: 40,091 training and 16,487 test clips (Shahroudy et al. 2016, after
#: removing the 302 samples with missing skeletons; spec/data.md).
NTU60_XSUB_TRAIN = 40_091
NTU60_XSUB_TEST = 16_487
NO_CUDA_EXIT = 3


@dataclass
class Sizes:
    """What one gpu-check run measures: the full GPU run or the CPU smoke run (``--cpu-quick``)."""

    preset: str
    batch: int
    inference_batch: int
    repeats: int
    warmup: int
    iters: int
    train_clips: int
    test_clips: int
    configs: list[tuple[str, bool]] = field(default_factory=list)  # (precision, compile)
    loader_batches: int = 50
    e2e_steps: int = 20
    budget_s: float = 300.0  # a benchmark configuration that would start after this is skipped (the 8-minute target)


GPU = Sizes("paper", 128, 256, 3, 3, 10, NTU60_XSUB_TRAIN, 1_000,
            [("fp32", False), ("bf16", False), ("bf16", True), ("fp32", True)])
CPU_QUICK = Sizes("small", 4, 4, 2, 0, 1, 64, 16, [("fp32", False), ("bf16", False)], loader_batches=4, e2e_steps=2)


def write_synthetic_store(path: Path, train_clips: int, test_clips: int, seed: int = 0, pool: int = 256) -> dict[str, Any]:
    """A prepared-format HDF5 file (``skelcli.data.store.write_store``) of ``train_clips + test_clips``
    NTU-shaped clips, split ``xsub`` train/test, fast: the frames are slices of a pool of ``pool``
    smooth random-walk sequences of 300 frames (2 persons, 25 joints, xyz), lengths uniform in 40-300
    frames, 60 classes. Timing data only: the clips carry no action. Returns the file's numbers."""
    from skelcli.data import store

    rng = np.random.default_rng(seed)
    walks = (rng.standard_normal((pool, 300, 2, 25, 3), dtype=np.float32) * 0.01).cumsum(axis=1)
    walks += rng.standard_normal((pool, 1, 2, 25, 3)).astype(np.float32) * 0.3
    n = train_clips + test_clips
    lengths = rng.integers(40, 301, size=n)
    which = rng.integers(0, pool, size=n)
    labels = rng.integers(0, 60, size=n)
    samples = (store.Sample(name=f"synthetic{i:06d}", joints=walks[which[i], : lengths[i]], label=int(labels[i]))
               for i in range(n))
    t0 = time.perf_counter()
    store.write_store(path, samples, dataset="ntu60", num_classes=60,
                      splits={"xsub": {"train": np.arange(train_clips), "test": np.arange(train_clips, n)}},
                      rejected=[], preprocessing={}, source={"generator": "skelcli.bench.gpucheck.write_synthetic_store",
                                                             "seed": seed}, force=True)
    return {"path": str(path), "clips": n, "train_clips": train_clips, "frames": int(lengths.sum()),
            "decompressed_gb": float(lengths.sum()) * walks[0, 0].nbytes / 1e9, "file_gb": path.stat().st_size / 1e9,
            "write_seconds": time.perf_counter() - t0}


def _manifest(device: torch.device) -> dict[str, Any]:
    from skelcli import __version__
    from skelcli.bench.throughput import device_name, git_commit

    out: dict[str, Any] = {"device": device_name(device), "torch": torch.__version__, "cuda": torch.version.cuda,
                           "python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
                           "package_version": __version__, "git_commit": git_commit(),
                           "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        out["ram_gb"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        out["ram_gb"] = None
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        out.update(capability=f"{p.major}.{p.minor}", gpu_memory_gb=p.total_memory / 1e9, gpu_count=torch.cuda.device_count(),
                   cudnn=torch.backends.cudnn.version(), bf16_supported=torch.cuda.is_bf16_supported())
        smi = shutil.which("nvidia-smi")
        if smi:
            r = subprocess.run([smi, "--query-gpu=name,driver_version,power.limit,clocks.max.sm", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=30)
            out["nvidia_smi"] = r.stdout.strip() or r.stderr.strip()
    return out


def _pytest_cuda(root: Path) -> dict[str, Any]:
    tests = root / "tests"
    if not tests.is_dir():
        return {"status": "skipped", "note": f"no tests/ folder under {root} (an installed package without its checkout)"}
    r = subprocess.run([sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:randomly", str(tests)],
                       capture_output=True, text=True, cwd=root, timeout=600)
    lines = [line for line in r.stdout.strip().splitlines() if line.strip()]
    summary = lines[-1] if lines else r.stderr.strip()[-300:]
    # exit 5 = nothing collected / everything deselected: not a failure of the GPU path
    return {"status": "ok" if r.returncode in (0, 5) else "failed", "returncode": r.returncode, "summary": summary}


#: SLiM's recipe: 768 clips = 4 GPUs x 192 (spec/slim.md, pretraining recipe table)
SLIM_PER_GPU_BATCH = 192


def _benchmarks(sizes: Sizes, device: torch.device, log: Callable[[str], None], t_start: float) -> dict[str, Any]:
    """One :func:`~skelcli.bench.report.run_benchmark` per configuration, then SLiM alone at its recipe's
    per-GPU batch; a configuration that would start after ``sizes.budget_s`` is skipped and says so."""
    from skelcli.bench.report import run_benchmark
    from skelcli.bench.throughput import BenchConfig

    common = dict(device=device.type, inference_batch_size=sizes.inference_batch, repeats=sizes.repeats,
                  warmup=sizes.warmup, iters=sizes.iters, preset=sizes.preset)
    runs = [(f"{precision}{'+compile' if compiled else ''}",
             BenchConfig(methods=["mae", "mamp", "gfp", "slim"], batch_size=sizes.batch, precision=precision,
                         compile=compiled, flops=(precision, compiled) == sizes.configs[0], **common))
            for precision, compiled in sizes.configs]
    runs.append(("slim_recipe_batch", BenchConfig(methods=["slim"], batch_size=SLIM_PER_GPU_BATCH if sizes.preset == "paper"
                                                  else sizes.batch, precision="bf16", flops=False, **common)))
    out: dict[str, Any] = {}
    for key, cfg in runs:
        elapsed = time.perf_counter() - t_start
        if elapsed > sizes.budget_s:
            out[key] = {"status": "skipped", "seconds": 0.0,
                        "note": f"time budget: {elapsed:.0f} s of {sizes.budget_s:.0f} s used before this configuration"}
            log(f"gpu-check: benchmark {key} skipped ({out[key]['note']})")
            continue
        log(f"gpu-check: benchmark {key} (batch {cfg.batch_size})")
        out[key] = _step(lambda: run_benchmark(cfg, log=log))
    return out


def _loader(path: Path, sizes: Sizes, device: torch.device, cache_dir: Path) -> dict[str, Any]:
    """Clips/s of the training loader over the synthetic file, each way it can read."""
    from skelcli.data.loader import ClipDataset, ClipLoader

    workers = max(1, min(8, (os.cpu_count() or 2) - 1))
    ways = [("in memory", dict(memory_budget_gb=1e3), 0), ("lazy, thread", dict(memory_budget_gb=1e-9), 0),
            (f"lazy, {workers} workers", dict(memory_budget_gb=1e-9), workers),
            ("shared mmap cache", dict(shared_cache=cache_dir), 0)]
    out = {}
    for label, kw, nw in ways:
        t0 = time.perf_counter()
        ds = ClipDataset.from_store(path, "xsub", "train", **kw)
        open_s = time.perf_counter() - t0
        with ClipLoader(ds, sizes.batch, shuffle=True, drop_last=True, seed=0, device=device, num_workers=nw) as loader:
            it = iter(loader)
            next(it)  # workers started, first batch in
            t0 = time.perf_counter()
            n = 0
            for _ in range(sizes.loader_batches):
                try:
                    next(it)
                except StopIteration:
                    break
                n += 1
            seconds = time.perf_counter() - t0
        out[label] = {"open_seconds": open_s, "batches": n, "clips_per_s": n * sizes.batch / max(seconds, 1e-9),
                      "workers": nw, "in_memory": ds.in_memory}
        del ds
    return out


def _ddp(path: Path, device: torch.device, out_dir: Path) -> dict[str, Any]:
    result = out_dir / "ddp_probe.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", "-m",
           "skelcli.bench.ddp_probe", "--data", str(path), "--device", device.type, "--out", str(result)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if r.returncode != 0 or not result.is_file():
        return {"status": "failed", "returncode": r.returncode, "note": (r.stderr or r.stdout).strip()[-800:]}
    return {"status": "ok", **json.loads(result.read_text())}


def _step(fn: Callable[[], Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        value = fn()
    except Exception as exc:  # the report says what broke; the next step still runs
        return {"status": "failed", "seconds": time.perf_counter() - t0, "note": f"{type(exc).__name__}: {exc}"}
    return {"status": "ok", "seconds": time.perf_counter() - t0, "result": value}


def run_gpu_check(out_dir: Path, *, cpu_quick: bool = False, pytest_cuda: bool = True, root: Path | None = None,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every step (module docstring) and write ``report.json`` and ``report.md`` to ``out_dir``.

    Raises SkelError (exit 3 from the CLI) when CUDA is not available and ``cpu_quick`` is off.
    """
    if not cpu_quick and not torch.cuda.is_available():
        raise NoCuda(f"gpu-check: no CUDA device here (torch {torch.__version__}, built with CUDA {torch.version.cuda}); "
                     "nothing measured (--cpu-quick runs the same steps on the CPU at toy sizes)")
    from skelcli.bench.throughput import measure_end_to_end, BenchConfig

    device = torch.device("cpu" if cpu_quick else "cuda")
    sizes = CPU_QUICK if cpu_quick else GPU
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    root = root or Path(__file__).resolve().parents[2]
    t_start = time.perf_counter()
    report: dict[str, Any] = {"schema": "skelcli.gpu_check", "schema_version": 1, "mode": "cpu-quick" if cpu_quick else "gpu",
                              "manifest": _manifest(device), "steps": {}}
    steps = report["steps"]
    if pytest_cuda:
        log("gpu-check: pytest -m cuda")
        steps["pytest_cuda"] = _step(lambda: _pytest_cuda(root))
    steps["benchmark"] = _step(lambda: _benchmarks(sizes, device, log, t_start))
    data = out_dir / "synthetic_ntu60_xsub.h5"
    log(f"gpu-check: writing {sizes.train_clips + sizes.test_clips:,} synthetic clips to {data}")
    steps["synthetic_data"] = _step(lambda: write_synthetic_store(data, sizes.train_clips, sizes.test_clips))
    if data.is_file():
        log("gpu-check: loader clips/s")
        steps["loader"] = _step(lambda: _loader(data, sizes, device, out_dir / "cache"))
        log("gpu-check: end to end")
        e2e = BenchConfig(methods=["mae", "mamp", "gfp", "slim"], device=device.type, batch_size=sizes.batch,
                          precision="bf16", repeats=1, warmup=sizes.warmup, iters=sizes.e2e_steps, preset=sizes.preset,
                          end_to_end=data).resolved(device)
        steps["end_to_end"] = _step(lambda: measure_end_to_end(e2e, device, e2e.methods, log))
        log("gpu-check: one-process torchrun")
        steps["ddp"] = _step(lambda: _ddp(data, device, out_dir))
        data.unlink(missing_ok=True)  # gigabytes of timing data: not kept
        shutil.rmtree(out_dir / "cache", ignore_errors=True)
    report["seconds"] = time.perf_counter() - t_start
    for name, text in (("report.json", json.dumps(report, indent=2, default=str) + "\n"), ("report.md", render_markdown(report))):
        tmp = out_dir / f".{name}.tmp{os.getpid()}"
        tmp.write_text(text)
        os.replace(tmp, out_dir / name)  # a previous report is replaced whole or not at all
    return report


class NoCuda(SkelError):
    """No CUDA device: ``skel gpu-check`` exits 3."""


def render_markdown(report: dict[str, Any]) -> str:
    """The report's tables as Markdown (for docs/benchmarks.md, "when you have a GPU")."""
    from skelcli.bench.report import _f as _n, _get as _g
    man, steps = report["manifest"], report["steps"]
    lines = [f"## gpu-check on {man.get('device')} ({report['mode']})", "",
             f"torch {man.get('torch')}, CUDA {man.get('cuda')}, {man.get('cpu_count')} CPUs, skelcli {man.get('package_version')} "
             f"({man.get('git_commit')}), {man.get('timestamp')}; total {report.get('seconds', 0):.0f} s.", ""]
    lines += ["| step | status | seconds | note |", "|---|---|---|---|"]
    for name, st in steps.items():
        note = st.get("note", "")
        if name == "pytest_cuda" and st.get("status") == "ok":
            note = _g(st, "result", "summary") or ""
        lines.append(f"| {name} | {st.get('status')} | {_n(st.get('seconds'), '{:.0f}')} | {note} |")
    bench = _g(steps, "benchmark", "result") or {}
    if bench:
        lines += ["", "| config | method | train samples/s | peak MB | inference samples/s | GFP/MAMP train | SLiM/MAMP infer | MAE masked/full |",
                  "|---|---|---|---|---|---|---|---|"]
        for key, st in bench.items():
            rep = st.get("result")
            if not rep:
                lines.append(f"| {key} | {st.get('status')}: {st.get('note')} | | | | | | |")
                continue
            ratios = {r["key"]: r for r in rep["ratios"]}

            def ratio(k: str) -> str:
                r = ratios.get(k, {})
                span = r.get("wall_clock_range")
                return _n(r.get("wall_clock"), "{:.2f}x") + (f" ({span[0]:.2f}-{span[1]:.2f})" if span else "")

            for i, (name, m) in enumerate(rep["methods"].items()):
                cells = ["", "", ""] if i else [ratio("gfp_vs_mamp_training"), ratio("slim_vs_mamp_inference"),
                                                ratio("mae_inference_vs_pretrain_encoder")]
                lines.append(f"| {key} | {name} | {_n(_g(m, 'train', 'samples_per_s'), '{:.0f}')} | "
                             f"{_n(_g(m, 'train', 'peak_memory_mb'), '{:.0f}')} | "
                             f"{_n(_g(m, 'inference', 'throughput', 'samples_per_s'), '{:.0f}')} | {' | '.join(cells)} |")
    loader = _g(steps, "loader", "result") or {}
    if loader:
        lines += ["", "| loader | clips/s | open s |", "|---|---|---|"]
        lines += [f"| {k} | {_n(v['clips_per_s'], '{:.0f}')} | {_n(v['open_seconds'])} |" for k, v in loader.items()]
    e2e = _g(steps, "end_to_end", "result") or {}
    if e2e:
        lines += ["", f"End to end, {e2e.get('train_clips')} training clips:", "",
                  "| method | samples/s | data wait % | schedule | projected hours |", "|---|---|---|---|---|"]
        for name, r in e2e.get("methods", {}).items():
            lines.append(f"| {name} | {_n(r['samples_per_s'], '{:.0f}')} | {_n(100 * r['data_wait_fraction'], '{:.0f}')} | "
                         f"{r['schedule']} | {_n(r['projected_hours'])} |")
    ddp = _g(steps, "ddp", "result") or {}
    if ddp:
        lines += ["", f"torchrun, 1 process: backend {ddp.get('backend')}, {ddp.get('steps')} DDP steps, "
                  f"losses {ddp.get('losses')}, {ddp.get('status')}."]
    return "\n".join(lines) + "\n"
