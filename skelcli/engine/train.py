"""The pretraining loop shared by every method (DESIGN.md "Training engine"; spec/mamp-and-data.md B).

``pretrain(settings, out_dir)`` builds the method from the registry, reads the training split with
``ClipDataset.from_store`` / ``ClipLoader``, and runs AdamW (``method.param_groups``) with a
per-iteration warmup + cosine (:class:`~skelcli.engine.schedule.LRSchedule`), bf16 autocast on CUDA
(fp32 on CPU), optional ``torch.compile`` and gradient clipping.

Run folder ``out_dir``:

* ``settings.json`` -- the resolved settings; a folder holding a different configuration, or any
  checkpoint, is refused unless ``force`` (which moves the old files to ``old-<time>/``) or a resume;
* ``metrics.jsonl`` -- one JSON object per ``log_every`` steps (``kind="step"``: epoch, step, loss
  terms, lr, samples/s, data-wait share) and per epoch (``kind="epoch"``);
* ``last.pt`` every epoch (and on SIGINT/SIGTERM, at the next step boundary), ``checkpoint-{epoch:04d}.pt``
  every ``checkpoint_every`` epochs and at the end. Checkpoints hold everything needed for an exact
  resume (model, optimizer, schedule, RNG states, epoch, step, batches done in the epoch).

Resume restores all of that and replays the same data order (``loader.set_epoch``; a mid-epoch
checkpoint skips the batches already trained on), so on CPU with a fixed seed a resumed run ends
with the same parameters as an uninterrupted one. ``rank`` / ``world_size`` are explicit: rank 0
alone prints, logs and writes checkpoints, the global batch is split over ranks (DDP comes later).
"""

from __future__ import annotations

import json
import math
import random
import signal
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from skelcli.engine.checkpoint import load_checkpoint, save_checkpoint
from skelcli.engine.config import PretrainSettings
from skelcli.engine.dist import autocast_context, resolve_device
from skelcli.engine.schedule import LRSchedule
from skelcli.errors import SkelError
from skelcli.settings import to_jsonable

# Fields that may change between a run and its resume without making it "a different configuration".
_VOLATILE = {("runtime", "device"), ("runtime", "precision"), ("runtime", "compile"), ("runtime", "log_every")}


@dataclass
class TrainResult:
    """Summary of a finished (or interrupted) run."""

    run_dir: Path
    method: str
    epochs: int
    steps: int
    final_loss: float
    seconds: float
    samples_per_s: float
    data_wait_share: float
    checkpoint: Path | None
    interrupted: str | None = None
    resumed_from: Path | None = None
    skipped_checkpoints: list[str] = field(default_factory=list)
    world_size: int = 1
    global_batch: int = 0
    per_process_batch: int = 0
    accumulation: int = 1

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("run_dir", "checkpoint", "resumed_from"):
            out[key] = None if out[key] is None else str(out[key])
        return out


# ---------------------------------------------------------------------------- helpers
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """All RNG states as checkpoint-safe types (tensors, lists, numbers)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[str]:
    out: list[str] = []
    for key in sorted(set(old) | set(new)):
        path = prefix + (key,)
        if path[:2] in _VOLATILE:
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, path)
        elif a != b:
            out.append(".".join(path))
    return out


def data_fingerprint(path: Path, info: Any, split: str, n_train: int) -> dict[str, Any]:
    """What identifies the training data: file size and modification time, sample count, split size
    (a file rewritten after the run started is detected on resume; moving it with its mtime is fine)."""
    st = Path(path).stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "num_samples": int(info.num_samples), "split": split,
            "train_samples": int(n_train)}


def _checkpoint_candidates(run_dir: Path) -> list[Path]:
    """Newest first: last.pt (written every epoch and on interruption), then checkpoint-NNNN.pt by number."""
    numbered = sorted(run_dir.glob("checkpoint-*.pt"), key=lambda p: p.name, reverse=True)
    return ([run_dir / "last.pt"] if (run_dir / "last.pt").exists() else []) + numbered


def find_resume_checkpoint(run_dir: Path, method: str) -> tuple[Path | None, dict[str, Any] | None, list[str]]:
    """``--resume auto``: the newest checkpoint of ``run_dir`` that loads and verifies.

    Returns (path, checkpoint, notes on skipped files); (None, None, notes) when there is none.
    """
    notes: list[str] = []
    for path in _checkpoint_candidates(run_dir):
        try:
            ckpt = load_checkpoint(path)
        except SkelError as exc:
            notes.append(f"skipped {path.name}: {exc}")
            continue
        if "model" not in ckpt or "optimizer" not in ckpt:
            notes.append(f"skipped {path.name}: holds no training state")
            continue
        return path, ckpt, notes
    return None, None, notes


def move_aside(run_dir: Path) -> Path | None:
    """Move a run folder's checkpoints, metrics.jsonl and settings.json into ``run_dir/old-<UTC time>/``
    before a fresh run (``--force``) writes new ones; returns that folder (None when there was nothing)."""
    old = list(run_dir.glob("checkpoint-*.pt")) + [run_dir / n for n in ("last.pt", "metrics.jsonl", "settings.json")]
    old = [p for p in old if p.exists()]
    if not old:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    target = run_dir / f"old-{stamp}"
    n = 1
    while target.exists():
        n += 1
        target = run_dir / f"old-{stamp}-{n}"
    target.mkdir()
    for p in old:
        p.rename(target / p.name)
    return target


class _StopSignal:
    """SIGINT/SIGTERM -> finish the current step, checkpoint, return. A second SIGINT aborts at once."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:  # noqa: ANN001
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def __enter__(self) -> "_StopSignal":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _micro_batches(loader: Any, start_step: int, data_steps: int, accum: int):
    """Micro-batches from optimizer step ``start_step`` on, cycling data passes without end.

    Pass p = step // data_steps is ``loader.set_epoch(p)``; only its first ``data_steps`` global
    batches are used (the same count in every process layout, so the padded tail of uneven shards
    is never trained on). Starting mid-pass skips the batches already trained on, which makes
    resume exact.
    """
    p, b = divmod(start_step, data_steps)
    while True:
        loader.set_epoch(p, start_batch=b * accum)
        it = iter(loader)
        try:
            for _ in range((data_steps - b) * accum):
                yield next(it)
        finally:
            close = getattr(it, "close", None)
            if callable(close):
                close()
        p, b = p + 1, 0


def _call(callbacks, event: str, info: dict[str, Any]) -> None:
    for cb in callbacks or ():
        fn = getattr(cb, event, None)
        if fn is not None:
            fn(info)


# ---------------------------------------------------------------------------- the loop
def _resolve_context(ctx: Any, device_name: str) -> Any:
    """The :class:`~skelcli.engine.dist.DistContext`: given, or from the torchrun environment
    (a plain single process when WORLD_SIZE is unset)."""
    from skelcli.engine.dist import DistContext, init_distributed

    if ctx is not None:
        return ctx
    ctx = init_distributed(device_name)
    if not ctx.distributed:
        return DistContext(0, 1, 0, resolve_device(device_name), None)
    return ctx


def _restore_rng(ckpt: dict[str, Any], ctx: Any, seed: int) -> None:
    """Each rank gets back its own RNG state (``rng_ranks``) when the world size is unchanged;
    otherwise rank 0's state on rank 0 and a fresh ``seed + rank`` stream, offset by the step, elsewhere."""
    per_rank = ckpt.get("rng_ranks") or []
    if len(per_rank) == ctx.world_size:
        set_rng_state(per_rank[ctx.rank])
    elif ctx.rank == 0:
        set_rng_state(ckpt["rng"])
    else:
        seed_everything(seed + ctx.rank + 1_000_003 * int(ckpt.get("step", 0)))


def pretrain(
    settings: PretrainSettings,
    out_dir: Path,
    *,
    resume: str | Path | None = None,
    force: bool = False,
    progress: bool | str = True,
    callbacks: list[Any] | None = None,
    console: Any = None,
    ctx: Any = None,
    max_per_device_batch: int | None = None,
) -> TrainResult:
    """Pretrain ``settings.method`` on ``settings.data`` into ``out_dir`` (see the module docstring).

    resume: None (fresh run), "auto" (newest valid checkpoint in ``out_dir``, a fresh run if none)
    or a checkpoint path. callbacks: objects with optional ``on_step_end(info)`` /
    ``on_epoch_end(info)``; ``info`` holds ``method`` (the unwrapped module), ``epoch``, ``step``, ``loss``.
    progress: True (a rich bar on an interactive console, plain lines in a log file or pipe),
    "lines" (always plain lines: parallel workers) or False.
    ctx: a :class:`~skelcli.engine.dist.DistContext`; by default it is read from the torchrun
    environment (RANK, WORLD_SIZE, LOCAL_RANK), i.e. a single process when those are unset.
    max_per_device_batch: largest micro-batch per process; above it gradients are accumulated
    (default: ``runtime.max_per_device_batch`` when the settings have it, else no limit).
    ``settings.data.batch_size`` is the *global* batch whatever the process count.
    Raises SkelError on bad input and on a non-finite loss (naming the step; the last good
    checkpoint is kept).
    """
    from skelcli.data.loader import ClipDataset, ClipLoader
    from skelcli.data.store import open_info
    from skelcli.engine.dist import all_gather_objects, all_reduce_mean, any_rank, barrier, plan_batches
    from skelcli.engine.rng import SampleDraws, rank_positions
    from skelcli.methods.base import DatasetInfo, get_method

    out_dir = Path(out_dir)
    cfg = settings
    ctx = _resolve_context(ctx, cfg.runtime.device)
    rank, world_size, is_main = ctx.rank, ctx.world_size, ctx.is_main
    resolved = to_jsonable(cfg)
    method_name = cfg.method.name
    if cfg.data.path is None:
        raise SkelError("no data file: pass --data FILE.h5 (or set data.path)")
    data_path = Path(cfg.data.path)
    info = open_info(data_path)
    if cfg.data.split not in info.protocols:
        raise SkelError(f"{data_path.name} has no split {cfg.data.split!r}; available: {', '.join(sorted(info.protocols)) or 'none'}")
    if max_per_device_batch is None:
        max_per_device_batch = getattr(cfg.runtime, "max_per_device_batch", None)
    plan = plan_batches(cfg.data.batch_size, world_size, max_per_device_batch)

    # ------------------------------------------------------------ run folder
    settings_file = out_dir / "settings.json"
    resume_path: Path | None = None
    ckpt: dict[str, Any] | None = None
    notes: list[str] = []
    if resume == "auto":
        if out_dir.is_dir():
            resume_path, ckpt, notes = find_resume_checkpoint(out_dir, method_name)
    elif resume is not None:
        resume_path = Path(resume)
        ckpt = load_checkpoint(resume_path)
    if ckpt is not None:
        if ckpt.get("method") != method_name:
            raise SkelError(f"{resume_path}: checkpoint of method {ckpt.get('method')!r}, cannot resume a {method_name!r} run")
        if "model" not in ckpt:
            raise SkelError(f"{resume_path}: checkpoint holds no training state (model/optimizer)")
        diff = _differences(ckpt.get("settings", {}), resolved)
        if diff and not force:
            raise SkelError(f"{resume_path}: written with different settings ({', '.join(diff[:5])}); use --force to resume anyway")
    if settings_file.exists() and not force:
        old = json.loads(settings_file.read_text())
        diff = _differences(old, resolved)
        if diff:
            raise SkelError(f"run folder {out_dir} holds a different configuration ({', '.join(diff[:5])}); use --force or another --out")
    # Checkpoints are never overwritten by a fresh run, whether or not settings.json is there (copied
    # checkpoints, a lost settings file): only --resume continues them, and --force moves them aside.
    if ckpt is None and not force and out_dir.is_dir() and _checkpoint_candidates(out_dir):
        raise SkelError(f"run folder {out_dir} already holds checkpoints; use --resume auto to continue or --force to start "
                        "over (the old files are then moved to an old-<time> folder)")
    barrier(ctx)  # every rank has checked the folder before rank 0 changes it
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        if ckpt is None:
            move_aside(out_dir)
        settings_file.write_text(json.dumps(resolved, indent=2) + "\n")
    barrier(ctx)

    # ------------------------------------------------------------ data
    device = ctx.device
    dataset = ClipDataset.from_store(
        data_path, cfg.data.split, "train", limit=cfg.data.limit, memory_budget_gb=cfg.data.memory_budget_gb
    )
    if len(dataset) < plan.global_batch:
        raise SkelError(f"split {cfg.data.split!r} has {len(dataset)} training clips, fewer than one batch of {cfg.data.batch_size}")
    loader = ClipLoader(
        dataset, plan.micro_batch, shuffle=True, drop_last=True, seed=cfg.runtime.seed, device=device, rank=rank,
        world_size=world_size,
    )
    # Full global batches only, the same count whatever the process count: global step s uses
    # perm[s*B:(s+1)*B] in every layout (the loader's padding for uneven shards is never reached).
    data_steps = len(dataset) // plan.global_batch  # optimizer steps in one pass over the data
    # An "epoch" is one pass, unless the method fixes its length in iterations (SLiM: 1,250, spec
    # slim.md 5.1); then the data passes cycle underneath the epochs.
    steps_per_epoch = getattr(cfg.method, "iterations_per_epoch", None) or data_steps
    fingerprint = data_fingerprint(data_path, info, cfg.data.split, len(dataset))
    if ckpt is not None and not force:
        old_fp = (ckpt.get("data") or {}).get("fingerprint")
        if old_fp is not None and old_fp != fingerprint:
            raise SkelError(f"{data_path} changed since the run started (fingerprint {old_fp} -> {fingerprint}); use --force to resume anyway")

    # ------------------------------------------------------------ model, optimizer, schedule
    if cfg.runtime.deterministic:
        torch.use_deterministic_algorithms(True)
    seed_everything(cfg.runtime.seed)  # same init on every rank
    method_cls = get_method(method_name)
    method = method_cls(cfg.method, DatasetInfo(info.dataset, info.num_classes)).to(device)
    method.data_settings = cfg.data
    if hasattr(method, "run_epochs"):  # methods that turn step/total_steps into epochs (SLiM temperatures)
        method.run_epochs = cfg.optim.epochs
    optimizer = torch.optim.AdamW(method.param_groups(cfg.optim.weight_decay), lr=cfg.optim.lr, betas=cfg.optim.betas)
    schedule = LRSchedule(
        optimizer, lr=cfg.optim.lr, min_lr=cfg.optim.min_lr, warmup_epochs=cfg.optim.warmup_epochs, epochs=cfg.optim.epochs,
        steps_per_epoch=steps_per_epoch, weight_decay=cfg.optim.weight_decay, weight_decay_end=cfg.optim.weight_decay_end,
    )
    seed_everything(cfg.runtime.seed + rank)  # per-process streams for methods that draw from the global RNG
    start_epoch, step, skip_steps = 0, 0, 0
    if ckpt is not None:
        method.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        schedule.load_state_dict(ckpt.get("scheduler", {}))
        _restore_rng(ckpt, ctx, cfg.runtime.seed)
        start_epoch, step, skip_steps = int(ckpt["epoch"]), int(ckpt["step"]), int(ckpt.get("batch_in_epoch", 0))
    ddp = None
    model_fn: Any = method
    if ctx.distributed:
        from torch.nn.parallel import DistributedDataParallel

        # The whole method is wrapped: frozen teachers / target networks (requires_grad=False) are
        # not reduced, and after_step() updates them on the unwrapped module identically on every
        # rank. Methods with parameters that a step may not use set ``ddp_find_unused_parameters``.
        ddp = DistributedDataParallel(
            method,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=bool(getattr(method, "ddp_find_unused_parameters", False)),
        )
        model_fn = ddp
    if cfg.runtime.compile:
        model_fn = torch.compile(model_fn)
    total_steps = cfg.optim.epochs * steps_per_epoch
    data_meta = {"dataset": info.dataset, "num_classes": int(info.num_classes), "split": cfg.data.split, "fingerprint": fingerprint}
    setup = {"kind": "setup", "world_size": world_size, "global_batch": plan.global_batch, "per_process_batch": plan.per_process,
             "micro_batch": plan.micro_batch, "accumulation": plan.accumulation, "lr": cfg.optim.lr,
             "steps_per_epoch": steps_per_epoch, "backend": ctx.backend, "device": str(device)}

    def payload(epochs_done: int, batch_in_epoch: int, rng_ranks: list[Any]) -> dict[str, Any]:
        enc = method.downstream_encoder()
        return {
            "method": method_name,
            "settings": resolved,
            "encoder_config": enc.config.model_dump(mode="json"),
            "encoder": enc.state_dict(),
            "pretraining_only": list(method.pretraining_only),
            "data": data_meta,
            "epoch": epochs_done,
            "step": step,
            "batch_in_epoch": batch_in_epoch,
            "model": method.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": schedule.state_dict(),
            "rng": rng_ranks[0],
            "rng_ranks": rng_ranks,
            "world_size": world_size,
        }

    def save(path: Path, epochs_done: int, batch_in_epoch: int) -> Path:
        """Rank 0 writes (atomically); every rank contributes its RNG state and waits for the write."""
        rng_ranks = all_gather_objects(rng_state(), ctx)
        if is_main:
            save_checkpoint(path, payload(epochs_done, batch_in_epoch, rng_ranks))
        barrier(ctx)
        return path

    # ------------------------------------------------------------ logging
    metrics_fh = open(out_dir / "metrics.jsonl", "a") if is_main else None

    def log(record: dict[str, Any]) -> None:
        if metrics_fh is not None:
            metrics_fh.write(json.dumps(record) + "\n")
            metrics_fh.flush()

    log(setup)
    if is_main and console is not None:
        console.print(
            f"[bold]effective[/]: world size {world_size} ({ctx.backend or 'single process'}, {device}), {plan.describe()}, "
            f"lr {cfg.optim.lr:g} (not scaled by the process count), {steps_per_epoch} steps/epoch",
            highlight=False,
        )
    bar = None
    if is_main and progress:
        from skelcli.progress import step_progress

        bar = step_progress(f"pretrain {method_name}", total_steps, completed=step, console=console,
                            fields=("loss", "lr", "rate"), lines=None if progress is True else progress == "lines")

    last_ckpt: Path | None = resume_path
    final_loss = float("nan")
    samples_seen = 0
    wait_total = 0.0
    t_start = time.perf_counter()
    interrupted: str | None = None
    epochs_done = start_epoch
    accum = plan.accumulation
    batches = _micro_batches(loader, step, data_steps, accum)  # resume replays the same data order
    try:
        with _StopSignal() as stop:
            for epoch in range(start_epoch, cfg.optim.epochs):
                method.train()
                method.on_epoch_start(epoch)
                epoch_loss, epoch_steps, epoch_wait, epoch_t0 = 0.0, 0, 0.0, time.perf_counter()
                window_t0, window_wait, window_samples = time.perf_counter(), 0.0, 0
                batch_in_epoch = skip_steps
                stop_agreed = False
                while batch_in_epoch < steps_per_epoch:
                    lr = schedule.apply(step)
                    optimizer.zero_grad(set_to_none=True)
                    wait = 0.0
                    local_loss = 0.0
                    terms: dict[str, float] = {}
                    for k in range(accum):
                        t0 = time.perf_counter()
                        batch = next(batches)
                        wait += time.perf_counter() - t0
                        method.sample_draws = SampleDraws(
                            cfg.runtime.seed, epoch, step, plan.global_batch,
                            rank_positions(k, plan.micro_batch, world_size, rank), device,
                        )
                        sync = ddp.no_sync() if (ddp is not None and k < accum - 1) else nullcontext()
                        with sync:
                            with autocast_context(device, cfg.runtime.precision):
                                out = model_fn(batch)
                            loss = out["loss"]
                            (loss / accum).backward()
                        method.sample_draws = None
                        local_loss += float(loss.detach()) / accum
                        for key, v in out.items():
                            if torch.is_tensor(v) and v.ndim == 0:
                                terms[key] = terms.get(key, 0.0) + float(v.detach()) / accum
                    # the mean loss over the global batch: the same number (and NaN check) on every rank
                    loss_value = float(all_reduce_mean(torch.tensor([local_loss], dtype=torch.float64, device=device), ctx).item())
                    if not math.isfinite(loss_value):
                        where = f"; last good checkpoint: {last_ckpt}" if last_ckpt else "; no checkpoint was written yet"
                        log({"kind": "error", "epoch": epoch, "step": step, "loss": loss_value, "error": "non-finite loss"})
                        raise SkelError(f"non-finite loss ({loss_value}) at step {step} (epoch {epoch}); training stopped{where}")
                    if cfg.optim.grad_clip is not None:
                        torch.nn.utils.clip_grad_norm_(method.parameters(), cfg.optim.grad_clip)
                    optimizer.step()
                    method.after_step(step, total_steps)
                    step += 1
                    batch_in_epoch += 1
                    n = plan.global_batch
                    samples_seen += n
                    window_samples += n
                    wait_total += wait
                    window_wait += wait
                    epoch_wait += wait
                    epoch_loss += loss_value
                    epoch_steps += 1
                    final_loss = loss_value
                    if step % cfg.runtime.log_every == 0 or batch_in_epoch == steps_per_epoch:
                        dt = max(time.perf_counter() - window_t0, 1e-9)
                        rate = window_samples / dt
                        terms["loss"] = loss_value
                        log({"kind": "step", "epoch": epoch, "step": step, **terms, "lr": lr, "samples_per_s": rate,
                             "data_wait_share": window_wait / dt, **method.log_metrics()})
                        if bar is not None:
                            bar.update(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", rate=f"{rate:.1f} samples/s")
                        window_t0, window_wait, window_samples = time.perf_counter(), 0.0, 0
                    if bar is not None:
                        bar.update(completed=step)
                    _call(callbacks, "on_step_end", {"method": method, "epoch": epoch, "step": step, "loss": loss_value})
                    # all ranks agree on stopping at the same step boundary (a signal may reach them at different times)
                    stop_agreed = any_rank(stop.received is not None, ctx)
                    if stop_agreed and batch_in_epoch < steps_per_epoch:
                        interrupted = stop.received or "SIGTERM"
                        break
                skip_steps = 0
                if interrupted is not None:
                    last_ckpt = save(out_dir / "last.pt", epoch, batch_in_epoch)
                    log({"kind": "interrupted", "epoch": epoch, "step": step, "signal": interrupted})
                    break
                epochs_done = epoch + 1
                epoch_time = time.perf_counter() - epoch_t0
                last_ckpt = save(out_dir / "last.pt", epochs_done, 0)
                if epochs_done % cfg.runtime.checkpoint_every == 0 or epochs_done == cfg.optim.epochs:
                    save(out_dir / f"checkpoint-{epochs_done:04d}.pt", epochs_done, 0)
                log({"kind": "epoch", "epoch": epoch, "step": step, "loss": epoch_loss / max(epoch_steps, 1),
                     "seconds": epoch_time, "samples_per_s": epoch_steps * cfg.data.batch_size / max(epoch_time, 1e-9),
                     "data_wait_share": epoch_wait / max(epoch_time, 1e-9)})
                _call(callbacks, "on_epoch_end", {"method": method, "epoch": epoch, "step": step, "loss": final_loss})
                if stop_agreed or any_rank(stop.received is not None, ctx):
                    interrupted = stop.received or "SIGTERM"
                    log({"kind": "interrupted", "epoch": epoch, "step": step, "signal": interrupted})
                    break
    finally:
        batches.close()  # stops the loader's prefetch thread
        method.sample_draws = None
        if bar is not None:
            bar.close()
        if metrics_fh is not None:
            metrics_fh.close()
        close = getattr(loader, "close", None)
        if callable(close):
            close()

    seconds = time.perf_counter() - t_start
    return TrainResult(
        run_dir=out_dir,
        method=method_name,
        epochs=epochs_done,
        steps=step,
        final_loss=final_loss,
        seconds=seconds,
        samples_per_s=samples_seen / max(seconds, 1e-9),
        data_wait_share=wait_total / max(seconds, 1e-9),
        checkpoint=last_ckpt,
        interrupted=interrupted,
        resumed_from=resume_path,
        skipped_checkpoints=notes,
        world_size=world_size,
        global_batch=plan.global_batch,
        per_process_batch=plan.per_process,
        accumulation=plan.accumulation,
    )


__all__ = ["TrainResult", "pretrain", "find_resume_checkpoint", "rng_state", "set_rng_state"]
