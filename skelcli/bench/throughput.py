"""Training and inference throughput of the registered methods (spec/ecosystem.md 6.4, issue 8).

* **Training** (model only): the method's full step -- ``method.forward`` on a synthetic
  :class:`~skelcli.methods.base.ClipBatch` already on the device (so the method's own on-device
  crop / resize / rotation / masking / view generation is inside the timed window), backward,
  AdamW step, ``after_step`` (EMA). Paper-size models from ``settings_cls.preset(preset, dataset)``.
* **Inference**: the method's ``downstream_encoder()`` on full unmasked clips of its own input length
  (``encoder.num_frames``: 120 frames for MAE/MAMP/GFP, 64 for SLiM), 2 persons per sample; batch-1
  latency and large-batch throughput. For masked-modeling methods also the pretraining encoder pass
  on the visible tokens only (74 of 750), for the 14.38x ratio.
* Timing: warm-up steps, then ``repeats`` windows of ``iters`` steps; every clock read is preceded
  by ``torch.cuda.synchronize()`` on CUDA (:class:`StepTimer`). Median and IQR over repeats. The
  methods are timed **round-robin** (:func:`run_round_robin`: window 1 of every method, then window
  2, ...), so a machine that drifts (thermal, other load) moves every method alike and each ratio can
  be given per window, with its spread.
* Peak memory: CUDA ``max_memory_allocated``; CPU the peak-RSS growth (``VmHWM`` of
  /proc/self/status after resetting it through /proc/self/clear_refs; else ``ru_maxrss`` growth).
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from skelcli.engine.dist import autocast_context, resolve_device  # noqa: F401 (resolve_device re-exported for report.py)
from skelcli.engine.hostside import compile_model
from skelcli.engine.schedule import adamw
from skelcli.errors import SkelError


# ----------------------------------------------------------------------------- timing
@dataclass
class Timing:
    """Milliseconds per step of each timed window, with the median and inter-quartile range."""

    ms: list[float] = field(default_factory=list)

    @property
    def median_ms(self) -> float:
        return float(statistics.median(self.ms)) if self.ms else float("nan")

    @property
    def iqr_ms(self) -> float:
        if len(self.ms) < 2:
            return 0.0
        q = statistics.quantiles(self.ms, n=4, method="inclusive")
        return float(q[2] - q[0])

    def as_dict(self) -> dict[str, Any]:
        return {"median_ms": self.median_ms, "iqr_ms": self.iqr_ms, "repeats_ms": list(self.ms)}

    def samples_per_s(self, batch_size: int) -> float:
        """Throughput at the median window when every step processes ``batch_size`` samples."""
        return batch_size * 1000.0 / self.median_ms


class StepTimer:
    """Times a step function; synchronises CUDA before every clock read.

    ``clock`` and ``sync`` are injectable so tests can check the protocol with fakes; by default
    ``sync`` is ``torch.cuda.synchronize`` when ``device`` is CUDA and nothing otherwise.
    """

    def __init__(self, device: torch.device | str, clock: Callable[[], float] = time.perf_counter,
                 sync: Callable[[], None] | None = None) -> None:
        device = torch.device(device)
        self.clock = clock
        if sync is None and device.type == "cuda":
            sync = torch.cuda.synchronize
        self.sync = sync

    def now(self) -> float:
        if self.sync is not None:
            self.sync()
        return self.clock()

    def measure(self, step: Callable[[], object], *, iters: int, warmup: int, repeats: int) -> Timing:
        """Run ``warmup`` untimed steps, then ``repeats`` windows of ``iters`` steps each."""
        task = run_round_robin([Task("step", step, iters, warmup)], repeats, timer=self, memory=False)[0]
        if task.error is not None:
            raise task.error
        return task.timing


@dataclass
class Task:
    """One thing to time: ``step`` run ``iters`` times per window inside ``context()`` (e.g.
    ``torch.inference_mode`` + autocast), after ``warmup`` untimed steps. After
    :func:`run_round_robin`: ``timing`` (one entry per window), ``memory_mb`` (peak growth over the
    warm-up and the first window) and ``error`` (the exception that stopped it, if any)."""

    key: str
    step: Callable[[], object]
    iters: int
    warmup: int = 0
    context: Callable[[], Any] = contextlib.nullcontext
    timing: Timing = field(default_factory=Timing)
    memory_mb: float | None = None
    memory_kind: str | None = None
    error: BaseException | None = None
    info: dict[str, Any] = field(default_factory=dict)  # what the report says about it besides the timing


def run_round_robin(tasks: list[Task], repeats: int, device: torch.device | str | None = None, *,
                    timer: StepTimer | None = None, memory: bool = True,
                    log: Callable[[str], None] = lambda s: None) -> list[Task]:
    """Time ``tasks`` round-robin: window r of every task, then window r + 1, ...

    A task's warm-up runs right before its first window, both under :class:`PeakMemory` (unless
    ``memory`` is off), so that peak memory stays per task. A task whose step raises (out of memory,
    a bug in one method) keeps the exception in ``task.error`` and leaves the rotation; the others
    go on. ``timer`` defaults to a :class:`StepTimer` of ``device``. Returns ``tasks``.
    """
    if repeats < 1 or any(t.iters < 1 for t in tasks):
        raise SkelError("iters and repeats must be at least 1")
    timer = timer or StepTimer(device)
    device = torch.device(device) if device is not None else None

    def window(task: Task) -> None:
        with task.context():
            start = timer.now()
            for _ in range(task.iters):
                task.step()
            task.timing.ms.append((timer.now() - start) * 1000.0 / task.iters)

    for r in range(repeats):
        for task in tasks:
            if task.error is not None:
                continue
            try:
                if r == 0:
                    with PeakMemory(device) if memory and device is not None else contextlib.nullcontext() as mem:
                        with task.context():
                            for _ in range(task.warmup):
                                task.step()
                        window(task)
                    if mem is not None:
                        task.memory_mb, task.memory_kind = mem.mb, mem.kind
                else:
                    window(task)
            except SkelError:
                raise
            except Exception as exc:
                task.error = exc
                log(f"[red]fail[/] {task.key}: {type(exc).__name__}: {exc}")
    return tasks


# ----------------------------------------------------------------------------- memory
class PeakMemory:
    """Peak memory growth of a code region in MB (CUDA: max allocated; CPU: peak RSS growth)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.mb: float | None = None
        self.kind = "cuda_max_allocated" if device.type == "cuda" else "cpu_peak_rss_growth"

    @staticmethod
    def _status_kb(key: str) -> int | None:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        except OSError:
            return None
        return None

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            self._base = self._status_kb("VmRSS")
            self._reset = False
            try:
                Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
                self._reset = True
            except OSError:
                pass
            self._maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mb = (torch.cuda.max_memory_allocated(self.device) - self._base) / 2**20
            self.total_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
            return
        hwm = self._status_kb("VmHWM")
        if self._reset and hwm is not None and self._base is not None:
            self.mb = max(hwm - self._base, 0) / 1024
            self.total_mb = hwm / 1024
        else:
            self.mb = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self._maxrss, 0) / 1024
            self.total_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------- setup
def method_registry() -> tuple[Callable[[str], type], list[str]]:
    """Import the method package (every method module registers itself) -> (get_method, names)."""
    try:
        from skelcli.methods import available_methods, get_method
    except Exception as exc:  # a method module being edited must not hide the reason
        raise SkelError(f"could not import the methods package: {type(exc).__name__}: {exc}") from None
    return get_method, available_methods()


def build_method(name: str, preset: str, dataset: str, device: torch.device):
    """Instantiate a registered method at ``preset`` size on ``device`` (train mode).

    Settings come from the engine's resolution (:func:`skelcli.engine.config.resolve_pretrain_settings`:
    paper defaults < the method's ``preset(preset, dataset)``), exactly as ``skel pretrain`` builds
    them. Returns (method, resolved PretrainSettings).
    """
    from skelcli.engine.config import resolve_pretrain_settings
    from skelcli.methods.base import DatasetInfo

    get_method, _ = method_registry()
    cls = get_method(name)
    settings = resolve_pretrain_settings(name, preset=preset, dataset=dataset)
    num_classes = {"ntu60": 60, "ntu120": 120, "pku-mmd-v1": 51, "pku-mmd-v2": 41}.get(dataset, 60)
    method = cls(settings.method, DatasetInfo(dataset=dataset, num_classes=num_classes))
    method.data_settings = settings.data
    return method.to(device).train(), settings


def synthetic_batch(n: int, frames: int, device: torch.device, seed: int = 0, num_classes: int = 60):
    """A ClipBatch of smooth random motion: joints (N, 2, frames, 25, 3), valid in [frames/2, frames].

    Random walks (cumulative sums of small steps) so motion-aware masking sees real motion.
    """
    from skelcli.data.clips import ClipBatch

    g = torch.Generator().manual_seed(seed)
    steps = torch.randn(n, 2, frames, 25, 3, generator=g) * 0.01
    joints = steps.cumsum(dim=2) + torch.randn(n, 2, 1, 25, 3, generator=g) * 0.3
    valid = torch.randint(frames // 2, frames + 1, (n,), generator=g)
    pad = torch.arange(frames)[None, :] >= valid[:, None]  # (N, T)
    joints[pad[:, None, :, None, None].expand_as(joints)] = 0.0
    label = torch.randint(0, num_classes, (n,), generator=g)
    return ClipBatch(joints.to(device), valid.to(device), label.to(device))


def make_optimizer(method, settings) -> torch.optim.Optimizer:
    """AdamW over the method's parameter groups with the resolved recipe (lr, betas, weight decay)."""
    optim = settings.optim
    return adamw(method.param_groups(optim.weight_decay), optim.lr, optim.betas)


def train_step_fn(method, optimizer, batch, device: torch.device, precision: str, forward=None,
                  total_steps: int = 100_000) -> Callable[[], None]:
    """The full training step as a closure: forward (incl. augmentation/masking), backward,
    AdamW step, ``after_step``. ``forward`` may be a compiled ``method``; ``batch`` is a ClipBatch
    or a zero-argument callable returning the batch to use (the end-to-end loader)."""
    fwd = forward if forward is not None else method  # not `or`: a compiled module has no truth value
    get_batch = batch if callable(batch) else (lambda: batch)
    counter = {"step": 0}

    def step() -> None:
        with autocast_context(device, precision):
            out = fwd(get_batch())
        out["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        counter["step"] += 1
        method.after_step(counter["step"], total_steps)

    return step


@dataclass
class BenchConfig:
    """What to measure; see ``skel benchmark --help``."""

    methods: list[str] = field(default_factory=lambda: ["mae", "mamp", "gfp", "slim"])
    device: str = "auto"
    batch_size: int | None = None  # None: 128 on CUDA, 16 on CPU (small preset: 4)
    inference_batch_size: int | None = None  # None: 256 on CUDA, = batch_size on CPU
    precision: str = "fp32"
    compile: bool = False
    compile_backend: str = "inductor"  # torch.compile backend (runtime.compile_backend)
    repeats: int = 3
    warmup: int = 2
    iters: int | None = None  # steps per timed window; None: 20 on CUDA, 1 on CPU
    preset: str = "paper"
    dataset: str = "ntu60"
    flops: bool = True
    train_methods: list[str] | None = None  # methods whose training step is timed (None: every method)
    baseline_impl: str | None = None  # deprecated spelling: "reference" = baseline "eager"
    baseline: str | None = None  # None, "eager" or "official" (skel benchmark --baseline)
    official_src: str | None = None  # root of a maoyunyao/MAMP checkout, for baseline "official"
    end_to_end: Path | None = None
    prepare: Path | None = None
    seed: int = 0

    def resolved(self, device: torch.device) -> "BenchConfig":
        cuda = device.type == "cuda"
        batch = self.batch_size or (128 if cuda else (4 if self.preset == "small" else 16))
        return BenchConfig(**{**self.__dict__, "device": device.type, "batch_size": batch,
                              "inference_batch_size": self.inference_batch_size or (256 if cuda else batch),
                              "iters": self.iters or (20 if cuda else 1)})


# ----------------------------------------------------------------------------- per method
def training_task(method, settings, cfg: BenchConfig, device: torch.device, key: str = "train") -> Task:
    """The method's full training step (module docstring) on a synthetic batch, as a :class:`Task`."""
    optimizer = make_optimizer(method, settings)
    batch = synthetic_batch(cfg.batch_size, max(method.encoder.config.num_frames, 128), device, cfg.seed)
    forward = compile_model(method, cfg.compile_backend) if cfg.compile else None
    method.on_epoch_start(1)  # a steady-state epoch (after SLiM's first-epoch prototype freeze)
    step = train_step_fn(method, optimizer, batch, device, cfg.precision, forward)
    warmup = max(cfg.warmup, 1) if cfg.compile else cfg.warmup  # compilation never inside the timing
    return Task(key, step, cfg.iters, warmup)


def training_result(task: Task, batch_size: int) -> dict[str, Any]:
    return {
        "batch_size": batch_size,
        "ms_per_step": task.timing.as_dict(),
        "samples_per_s": task.timing.samples_per_s(batch_size),
        "peak_memory_mb": task.memory_mb,
        "peak_memory_kind": task.memory_kind,
    }


def _dropped_token_ratio(method) -> float | None:
    """The mask ratio of a method whose pretraining encoder drops the masked tokens (MAE / MAMP /
    GFP: timed also on the visible tokens only); None for one that keeps them (a mask token, SLiM)."""
    ratio = getattr(method.settings, "mask_ratio", None)
    return ratio if ratio is not None and not method.downstream_encoder().config.mask_token else None


def inference_key(method) -> str:
    """Methods with equal keys have identical downstream encoders (class and configuration; the
    weights differ, the cost does not), so one inference measurement serves them all."""
    encoder = method.downstream_encoder()
    return f"{type(encoder).__name__}({encoder.config!r})|masked={_dropped_token_ratio(method)}|{method.encoder.config!r}"


def inference_tasks(method, cfg: BenchConfig, device: torch.device, prefix: str = "") -> list[Task]:
    """Downstream-encoder latency (batch 1) and throughput (large batch) on full clips; for
    masked-modeling methods also the pretraining encoder pass on the visible tokens. Keys
    ``{prefix}latency``, ``{prefix}throughput``, ``{prefix}masked`` (see :func:`inference_result`)."""
    from skelcli.models.masking import keep_count

    encoder = method.downstream_encoder().eval()
    ecfg = encoder.config
    fwd = compile_model(encoder, cfg.compile_backend) if cfg.compile else encoder

    def clips(n: int) -> torch.Tensor:  # (N*M, T, V, C), 2 persons per sample
        return torch.randn(n * 2, ecfg.num_frames, ecfg.num_joints, ecfg.in_chans, device=device)

    def context():
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        stack.enter_context(autocast_context(device, cfg.precision))
        return stack

    x1, xb = clips(1), clips(cfg.inference_batch_size)
    warmup = max(cfg.warmup, 1)
    tasks = [Task(f"{prefix}latency", lambda: fwd(x1), max(cfg.iters, 5 if device.type == "cpu" else 50), warmup, context),
             Task(f"{prefix}throughput", lambda: fwd(xb), cfg.iters, warmup, context)]
    ratio = _dropped_token_ratio(method)
    if ratio is not None:
        keep = keep_count(ecfg.num_tokens, ratio)
        ids = torch.stack([torch.randperm(ecfg.num_tokens, device=device)[:keep] for _ in range(xb.shape[0])])
        enc = method.encoder.eval()
        tasks.append(Task(f"{prefix}masked", lambda: enc.forward_features(xb, ids_keep=ids), cfg.iters, warmup, context,
                          info={"visible_tokens": keep}))
    return tasks


def inference_result(method, tasks: list[Task], cfg: BenchConfig) -> dict[str, Any]:
    """The ``inference`` entry of the report from the timed :func:`inference_tasks`."""
    by = {t.key.rsplit(":", 1)[-1]: t for t in tasks}
    for t in tasks:
        if t.error is not None:
            raise t.error
    ecfg = method.downstream_encoder().config
    thr = by["throughput"]
    out: dict[str, Any] = {
        "input_frames": ecfg.num_frames,
        "tokens": ecfg.num_tokens,
        "persons_per_sample": 2,
        "latency_batch1": by["latency"].timing.as_dict(),
        "throughput": {"batch_size": cfg.inference_batch_size, "ms_per_batch": thr.timing.as_dict(),
                       "samples_per_s": thr.timing.samples_per_s(cfg.inference_batch_size)},
        "peak_memory_mb": thr.memory_mb,
        "masked_encoder": None,
        "shared_with": None,
    }
    if "masked" in by:
        m = by["masked"]
        out["masked_encoder"] = {"visible_tokens": m.info["visible_tokens"], "ms_per_batch": m.timing.as_dict(),
                                 "samples_per_s": m.timing.samples_per_s(cfg.inference_batch_size)}
    method.train()
    return out


def measure_flops(method, device: torch.device, samples: int = 2, fwd_bwd: bool = True) -> dict[str, Any]:
    """FLOPs per sample: the training forward by module, the training fwd+bwd total, inference."""
    from skelcli.bench.flops import PAPER_GFLOPS, count_flops

    method.train()
    batch = synthetic_batch(samples, max(method.encoder.config.num_frames, 128), device, seed=1)
    fwd = count_flops(lambda: method(batch), samples=samples,
                      then=(lambda out: out["loss"].backward()) if fwd_bwd else None)  # one pass: forward, then backward
    cats = fwd.by_category()
    out: dict[str, Any] = {
        "train_forward_g": fwd.per_sample_g(),
        "train_forward_by_module_g": {k: fwd.per_sample_g(v) for k, v in cats.items() if v},
        "train_forward_by_child_g": {k: fwd.per_sample_g(v) for k, v in fwd.by_module.items()},
        "train_step_g": None,
        "inference_g": None,
        "paper_g": PAPER_GFLOPS.get(method.name, {}),
    }
    if fwd_bwd:
        out["train_step_g"] = fwd.per_sample_g(fwd.then_total)
        method.zero_grad(set_to_none=True)
    encoder = method.downstream_encoder().eval()
    ecfg = encoder.config
    x = torch.randn(samples * 2, ecfg.num_frames, ecfg.num_joints, ecfg.in_chans, device=device)
    with torch.no_grad():
        out["inference_g"] = count_flops(lambda: encoder(x), by_module=False, samples=samples).per_sample_g()
    method.train()
    return out


def reference_task(cfg: BenchConfig, device: torch.device, decoder_depth: int, tau: float, encoder_cfg) -> Task:
    """The straightforward fp32 eager MAMP step (:mod:`skelcli.bench.reference`) on the same batch
    size: random (N, 3, T, 25, 2) clips, forward, backward, AdamW. No augmentation (the reference
    feeder does it on the CPU workers), so the comparison favours the reference slightly."""
    from skelcli.bench.reference import ReferenceMAMP

    model = ReferenceMAMP(frames=encoder_cfg.num_frames, t_patch=encoder_cfg.t_patch, dim=encoder_cfg.dim,
                          depth=encoder_cfg.depth, heads=encoder_cfg.heads, decoder_depth=decoder_depth, tau=tau).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.05)
    x = torch.randn(cfg.batch_size, 3, encoder_cfg.num_frames, 25, 2, device=device).cumsum(dim=2) * 0.01

    def step() -> None:
        loss = model(x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return Task("baseline", step, cfg.iters, cfg.warmup,
                info={"impl": "reference fp32 eager (explicit softmax attention, Conv2d patch embedding)",
                      "decoder_depth": decoder_depth, "batch_size": cfg.batch_size})


def baseline_result(task: Task) -> dict[str, Any]:
    """A baseline's report entry: its ``info``, the timing, samples/s and peak memory."""
    if task.error is not None:
        raise task.error
    batch = task.info["batch_size"]
    return {**task.info, "ms_per_step": task.timing.as_dict(), "samples_per_s": task.timing.samples_per_s(batch),
            "peak_memory_mb": task.memory_mb}


# ----------------------------------------------------------------------------- manifest
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if out.returncode == 0:
            dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def manifest(cfg: BenchConfig, device: torch.device) -> dict[str, Any]:
    from skelcli import __version__

    cpu_count = os.cpu_count()
    return {
        "device": device_name(device),
        "device_type": device.type,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32) if device.type == "cuda" else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "package_version": __version__,
        "git_commit": git_commit(),
        "precision": cfg.precision,
        "compile": cfg.compile,
        "compile_backend": cfg.compile_backend if cfg.compile else None,
        "batch_size": cfg.batch_size,
        "inference_batch_size": cfg.inference_batch_size,
        "threads": torch.get_num_threads(),
        "cpu_count": cpu_count,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "preset": cfg.preset,
        "dataset": cfg.dataset,
        "repeats": cfg.repeats,
        "warmup": cfg.warmup,
        "iters": cfg.iters,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


# ----------------------------------------------------------------------------- end to end
#: paper schedules in samples (spec/gfp.md 4.1: 400 epochs over the split for MAE/MAMP/GFP;
#: spec/slim.md 5.1: 150 "epochs" x 1,250 iterations at batch 768 for SLiM)
SLIM_SCHEDULE_SAMPLES = 150 * 1250 * 768


def schedule(name: str, train_clips: int) -> tuple[str, int]:
    """(description, samples) of the paper's pretraining schedule for ``name``."""
    if name == "slim":
        return "150 x 1,250 it x 768", SLIM_SCHEDULE_SAMPLES
    return f"400 ep x {train_clips:,} clips", 400 * train_clips


def measure_end_to_end(cfg: BenchConfig, device: torch.device, names: list[str], log: Callable[[str], None]) -> dict[str, Any]:
    """The real loader (``ClipDataset``/``ClipLoader``) + the method's on-device augmentation + the
    training step, one timed window of ``repeats * iters`` steps per method (after ``warmup``).

    Reports samples/s, the fraction of the window spent waiting for data, and the projected hours
    of the paper schedule at that rate (:func:`schedule`).
    """
    from skelcli.data import store
    from skelcli.data.loader import ClipDataset, ClipLoader

    path = Path(cfg.end_to_end)
    info = store.open_info(path)
    protocol = "xsub" if "xsub" in info.protocols else sorted(info.protocols)[0]
    dataset = ClipDataset.from_store(path, protocol, "train")
    out: dict[str, Any] = {"data": str(path), "dataset": info.dataset, "protocol": protocol,
                           "train_clips": len(dataset), "methods": {}}
    for name in names:
        log(f"{name}: end-to-end window on {path.name}")
        method, settings = build_method(name, cfg.preset, info.dataset, device)
        optimizer = make_optimizer(method, settings)
        method.on_epoch_start(1)
        loader = ClipLoader(dataset, cfg.batch_size, shuffle=True, drop_last=True, seed=cfg.seed, device=device)
        steps = cfg.repeats * cfg.iters
        timer = StepTimer(device)
        holder: dict[str, Any] = {}
        step = train_step_fn(method, optimizer, lambda: holder["batch"], device, cfg.precision)
        warm, done, wait, start, epoch = 0, 0, 0.0, None, 0
        while done < steps:
            loader.set_epoch(epoch)
            for batch in loader:
                holder["batch"] = batch
                if warm < cfg.warmup:
                    step()
                    warm += 1
                    continue
                if start is None:
                    start = timer.now()  # the wait for this first timed batch happened before it
                else:
                    wait += loader.last_wait_s
                step()
                done += 1
                if done >= steps:
                    break
            epoch += 1
        seconds = timer.now() - start
        rate = done * cfg.batch_size / seconds
        desc, samples = schedule(name, len(dataset))
        out["methods"][name] = {"steps": done, "batch_size": cfg.batch_size, "seconds": seconds, "samples_per_s": rate,
                                "data_wait_s": wait, "data_wait_fraction": wait / seconds if seconds else 0.0,
                                "schedule": desc, "schedule_samples": samples, "projected_hours": samples / rate / 3600}
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def measure_prepare(raw_dir: Path, log: Callable[[str], None] = lambda s: None, dataset: str = "ntu60") -> dict[str, Any]:
    """Raw-parsing throughput of the NTU reader (skelcli/data/ntu.py) over every ``*.skeleton`` file
    under ``raw_dir``: parse + denoise + translate per file (``ntu.load_sample``), single process.

    Returns files, MB, seconds, files/s, MB/s, output frames and the files the reader rejected
    (their time is included: ``skel prepare`` pays it too).
    """
    from skelcli.data import ntu

    files = sorted(Path(raw_dir).rglob("*.skeleton"))
    if not files:
        raise SkelError(f"--prepare: no .skeleton files under {raw_dir}")
    settings = ntu.NtuPrepareSettings.for_dataset(dataset)
    log(f"prepare: parsing {len(files)} raw files")
    size = sum(f.stat().st_size for f in files)
    frames = rejected = 0
    start = time.perf_counter()
    for f in files:
        try:
            frames += int(ntu.load_sample(f, settings).joints.shape[0])
        except SkelError:
            rejected += 1
    seconds = time.perf_counter() - start
    mb = size / 2**20
    return {"files": len(files), "mb": mb, "seconds": seconds, "files_per_s": len(files) / seconds,
            "mb_per_s": mb / seconds, "frames": frames, "rejected": rejected, "dataset": dataset}
