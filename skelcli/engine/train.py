"""The pretraining loop shared by every method (DESIGN.md "Training engine"; spec/mamp-and-data.md B).

``pretrain(settings, out_dir)`` builds the method from the registry, reads the training split with
``ClipDataset.from_store`` / ``ClipLoader``, and runs AdamW (``method.param_groups``) with a
per-iteration warmup + cosine (:class:`~skelcli.engine.schedule.LRSchedule`), autocast in the precision
:func:`~skelcli.engine.dist.resolve_precision` gives (``auto``: fp32 on CPU, the method's recipe on CUDA;
printed in the "effective" line, logged in the ``setup`` row, saved as the checkpoint's ``precision``),
optional ``torch.compile`` and gradient clipping.

Run folder ``out_dir`` (a :class:`~skelcli.engine.rundir.RunDir`: locked while the run writes, refusal
rules in :func:`~skelcli.engine.rundir.open_run`):

* ``settings.json`` -- the resolved settings, written atomically; a folder holding a different
  configuration, or any checkpoint, is refused unless ``force`` (which moves the old files to
  ``old-<time>/``) or a resume;
* ``metrics.jsonl`` -- one JSON object per ``log_every`` steps (``kind="step"``: epoch, step, loss
  terms, lr, samples/s, data-wait share), per epoch (``kind="epoch"``), per start (``setup``) and
  resume (``resume``); a resume first cuts it back to the checkpoint's step;
* ``last.pt`` at the end of an epoch when ``runtime.save_interval_s`` have passed since the previous
  write (0: every epoch), with every numbered checkpoint, and on SIGINT/SIGTERM at the next step
  boundary; ``checkpoint-{epoch:04d}.pt`` every ``checkpoint_every`` epochs and at the end.
  Checkpoints hold everything needed for an exact resume (model, optimizer, schedule, RNG states,
  epoch, step, batches done in the epoch).

Collapse alarm: each method names collapse indicators among its ``log_metrics`` keys with thresholds
(``collapse_indicators``; GFP target std per level, MAE / MAMP / SLiM encoder feature std). One below its
threshold for ``runtime.collapse_patience`` log rows in a row logs ``kind="collapse"`` once, prints a red
console line and sets ``TrainResult.collapse``; with ``runtime.stop_on_collapse`` the run ends at once
without saving, so ``last.pt`` and the numbered checkpoints stay the ones written before the alarm.

Resume restores all of that and replays the same data order (``loader.set_epoch``; a mid-epoch
checkpoint skips the batches already trained on), so on CPU with a fixed seed a resumed run ends
with the same parameters as an uninterrupted one. Under DDP rank 0 alone prints, logs and writes
checkpoints, and the global batch is split over the ranks.

Parts: :func:`pretrain` (folder, then :class:`_PretrainLoop`), whose ``__init__`` builds data, method,
optimizer and schedule, ``train_step`` does one optimizer step, ``run`` loops over epochs, logs, saves.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from skelcli.engine.checkpoint import SaveClock, save_checkpoint
from skelcli.engine.config import PretrainSettings, check_encoder_fits
from skelcli.engine.dist import autocast_context, resolve_device, resolve_precision
from skelcli.engine.hostside import compile_model
from skelcli.engine.rng import rng_state, seed_everything, set_rng_state
from skelcli.engine.rundir import RunDir, StopSignal, open_run
from skelcli.engine.schedule import LRSchedule, adamw
from skelcli.errors import SkelError
from skelcli.settings import to_jsonable

# Fields that may change between a run and its resume without making it "a different configuration".
_VOLATILE = {("runtime", "device"), ("runtime", "precision"), ("runtime", "compile"), ("runtime", "log_every"), ("runtime", "save_interval_s"),
             ("runtime", "collapse_patience"), ("runtime", "collapse_thresholds"), ("runtime", "stop_on_collapse")}


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
    complete: bool = False  # the checkpoint resumed from had finished every epoch: nothing was done
    notes: list[str] = field(default_factory=list)  # what the run folder handling did (stale lock, log cut, files moved)
    collapse: str | None = None  # the collapse alarm, if it fired: which indicator, its value and threshold, the step
    collapse_stopped: bool = False  # runtime.stop_on_collapse ended the run at the alarm (no checkpoint of that state)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("run_dir", "checkpoint", "resumed_from"):
            out[key] = None if out[key] is None else str(out[key])
        return out


# ---------------------------------------------------------------------------- helpers
def data_fingerprint(path: Path, info: Any, split: str, n_train: int) -> dict[str, Any]:
    """What identifies the training data: file size and modification time, sample count, split size
    (a file rewritten after the run started is detected on resume; moving it with its mtime is fine)."""
    st = Path(path).stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "num_samples": int(info.num_samples), "split": split,
            "train_samples": int(n_train)}


def find_resume_checkpoint(run_dir: Path, method: str) -> tuple[Path | None, dict[str, Any] | None, list[str]]:
    """``--resume auto``: the newest checkpoint of ``run_dir`` that loads and holds training state.

    Returns (path, checkpoint, notes on skipped files); (None, None, notes) when there is none.
    """
    return RunDir(run_dir).find_resume()


def move_aside(run_dir: Path) -> Path | None:
    """Move a run folder's checkpoints, metrics.jsonl and settings.json into ``run_dir/old-<UTC time>/``."""
    return RunDir(run_dir).move_aside()


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


class CollapseWatch:
    """The collapse alarm: counts, per indicator (a ``log_metrics`` key of the method, see
    ``PretrainMethod.collapse_indicators``), the log rows in a row whose value is below its threshold.

    ``overrides`` (``runtime.collapse_thresholds``) replace a method's thresholds by key; 0 turns one off.
    """

    def __init__(self, indicators: dict[str, float], overrides: dict[str, float], patience: int, method: str) -> None:
        unknown = sorted(set(overrides) - set(indicators))
        if unknown:
            raise SkelError(f"runtime.collapse_thresholds: {', '.join(unknown)} is not a collapse indicator of {method}; "
                            f"it has: {', '.join(sorted(indicators)) or 'none'}")
        self.thresholds = {k: float(v) for k, v in {**indicators, **overrides}.items() if v > 0}
        self.patience = patience
        self.below: dict[str, int] = {k: 0 for k in self.thresholds}

    def check(self, metrics: dict[str, float]) -> tuple[str, float, float] | None:
        """Count one log row; (key, value, threshold) of the first indicator now below its threshold
        for ``patience`` rows in a row, else None. A missing or non-finite value resets the count."""
        hit = None
        for key, threshold in self.thresholds.items():
            value = metrics.get(key)
            low = value is not None and math.isfinite(value) and value < threshold
            self.below[key] = self.below[key] + 1 if low else 0
            if hit is None and self.below[key] >= self.patience:
                hit = (key, float(value), threshold)
        return hit


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


def _on_main(ctx: Any, fn) -> Any:
    """Run ``fn`` on rank 0 only; a SkelError there is raised on every rank (no rank waits forever)."""
    from skelcli.engine.dist import all_gather_objects

    out, err = None, None
    if ctx.is_main:
        try:
            out = fn()
        except SkelError as exc:
            err = str(exc)
    first = all_gather_objects(err, ctx)[0]
    if first is not None:
        raise SkelError(first)
    return out


def _open_folder(run: RunDir, resolved: dict[str, Any], method_name: str, resume: str | Path | None, force: bool,
                 ctx: Any) -> tuple[Path | None, dict[str, Any] | None, list[str]]:
    """Lock the run folder (rank 0) and apply the refusal rules (every rank reads the same files)."""
    _on_main(ctx, run.acquire)
    try:
        resume_path, ckpt, notes = open_run(run, resolved, resume=resume, force=force, volatile=_VOLATILE, method=method_name)
    except BaseException:
        run.release()
        raise
    return resume_path, ckpt, notes


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
    tensorboard: Any = None,
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
    tensorboard: a factory ``folder -> mirror`` (:class:`skelcli.viz.tensorboard.TensorBoardLog`) called on
    the writing process for ``out_dir/tb/``; the mirror gets every logged row and, at the end,
    ``finish(curves_of=out_dir)`` (extra ``[viz]``).
    Raises SkelError on bad input and on a non-finite loss (naming the step; the last good
    checkpoint is kept). A run folder in use by another process is refused (see rundir.py).
    """
    from skelcli.data.store import open_info
    from skelcli.engine.dist import barrier, plan_batches

    cfg = settings
    ctx = _resolve_context(ctx, cfg.runtime.device)
    resolved = to_jsonable(cfg)
    if cfg.data.path is None:
        raise SkelError("no data file: pass --data FILE.h5 (or set data.path)")
    data_path = Path(cfg.data.path)
    info = open_info(data_path)
    if cfg.data.split not in info.protocols:
        raise SkelError(f"{data_path.name} has no split {cfg.data.split!r}; available: {', '.join(sorted(info.protocols)) or 'none'}")
    if max_per_device_batch is None:
        max_per_device_batch = getattr(cfg.runtime, "max_per_device_batch", None)
    plan = plan_batches(cfg.data.batch_size, ctx.world_size, max_per_device_batch)

    run = RunDir(out_dir)
    resume_path, ckpt, notes = _open_folder(run, resolved, cfg.method.name, resume, force, ctx)
    try:
        if ckpt is not None and int(ckpt["epoch"]) >= cfg.optim.epochs and int(ckpt.get("batch_in_epoch", 0)) == 0:
            return TrainResult(run_dir=run.path, method=cfg.method.name, epochs=int(ckpt["epoch"]), steps=int(ckpt["step"]),
                               final_loss=float("nan"), seconds=0.0, samples_per_s=0.0, data_wait_share=0.0, checkpoint=resume_path,
                               resumed_from=resume_path, skipped_checkpoints=notes, world_size=ctx.world_size,
                               global_batch=plan.global_batch, per_process_batch=plan.per_process,
                               accumulation=plan.accumulation, complete=True)
        barrier(ctx)  # every rank has checked the folder before rank 0 changes it
        if ctx.is_main:
            if ckpt is None:
                moved = run.move_aside()
                if moved is not None:
                    run.notes.append(f"old files moved to {moved}")
            run.write_settings(resolved)
            run.open_log(resume_step=None if ckpt is None else int(ckpt["step"]))
        tb = tensorboard(run.path / "tb") if tensorboard is not None and ctx.is_main else None
        if tb is not None:
            run.mirrors.append(tb)
        barrier(ctx)
        loop = _PretrainLoop(cfg, run, ctx, info, data_path, plan, resolved, console=console, callbacks=callbacks)
        try:
            result = loop.run(ckpt, resume_path, force, progress)
        finally:
            run.close_log()
            if tb is not None:
                tb.finish(curves_of=run.path)
                run.notes.extend(tb.notes)
        result.skipped_checkpoints = notes
        result.notes = list(run.notes)
        return result
    finally:
        run.release()


class _PretrainLoop:
    """The model, optimizer, schedule and data of one run, and the loop that only steps, logs and saves."""

    def __init__(self, cfg: PretrainSettings, run: RunDir, ctx: Any, info: Any, data_path: Path, plan: Any,
                 resolved: dict[str, Any], *, console: Any, callbacks: list[Any] | None) -> None:
        from skelcli.data.loader import ClipDataset, ClipLoader
        from skelcli.methods.base import DatasetInfo, get_method

        self.cfg, self.run_dir, self.ctx, self.plan, self.resolved = cfg, run, ctx, plan, resolved
        self.console, self.callbacks = console, callbacks
        self.device = device = ctx.device
        self.dataset = ClipDataset.from_store(
            data_path, cfg.data.split, "train", limit=cfg.data.limit, memory_budget_gb=cfg.data.memory_budget_gb,
            shared_cache=(cfg.data.cache_dir or True) if cfg.data.shared_cache else False,
        )
        if len(self.dataset) < plan.global_batch:
            raise SkelError(f"split {cfg.data.split!r} has {len(self.dataset)} training clips, fewer than one batch of {cfg.data.batch_size}")
        self.loader = ClipLoader(
            self.dataset, plan.micro_batch, shuffle=True, drop_last=True, seed=cfg.runtime.seed, device=device, rank=ctx.rank,
            world_size=ctx.world_size, num_workers=cfg.data.num_workers,
        )
        # Full global batches only, the same count whatever the process count: global step s uses
        # perm[s*B:(s+1)*B] in every layout (the loader's padding for uneven shards is never reached).
        self.data_steps = len(self.dataset) // plan.global_batch  # optimizer steps in one pass over the data
        # An "epoch" is one pass, unless the method fixes its length in iterations (SLiM: 1,250, spec
        # slim.md 5.1); then the data passes cycle underneath the epochs.
        self.steps_per_epoch = getattr(cfg.method, "iterations_per_epoch", None) or self.data_steps
        self.fingerprint = data_fingerprint(data_path, info, cfg.data.split, len(self.dataset))
        self.data_meta = {"dataset": info.dataset, "num_classes": int(info.num_classes), "split": cfg.data.split,
                          "fingerprint": self.fingerprint}

        if cfg.runtime.deterministic:
            torch.use_deterministic_algorithms(True)
        seed_everything(cfg.runtime.seed)  # same init on every rank
        method_cls = get_method(cfg.method.name)
        check_encoder_fits(cfg.method.encoder, info.topology, str(data_path))
        self.method = method_cls(cfg.method, DatasetInfo(info.dataset, info.num_classes, info.topology)).to(device)
        # runtime.precision resolved against the method's recipe (auto: fp32 on CPU, the recipe on CUDA)
        self.recipe_precision = method_cls.recipe_precision
        self.precision = resolve_precision(cfg.runtime.precision, device, self.recipe_precision)
        self.method.data_settings = cfg.data
        if hasattr(self.method, "run_epochs"):  # methods that turn step/total_steps into epochs (SLiM temperatures)
            self.method.run_epochs = cfg.optim.epochs
        self.optimizer = adamw(self.method.param_groups(cfg.optim.weight_decay), cfg.optim.lr, cfg.optim.betas)
        self.schedule = LRSchedule(
            self.optimizer, lr=cfg.optim.lr, min_lr=cfg.optim.min_lr, warmup_epochs=cfg.optim.warmup_epochs,
            epochs=cfg.optim.epochs, steps_per_epoch=self.steps_per_epoch, weight_decay=cfg.optim.weight_decay,
            weight_decay_end=cfg.optim.weight_decay_end,
        )
        seed_everything(cfg.runtime.seed + ctx.rank)  # per-process streams for methods that draw from the global RNG
        self.total_steps = cfg.optim.epochs * self.steps_per_epoch
        self.step = 0
        self.ddp = None
        self.model_fn: Any = self.method
        if ctx.distributed:
            from torch.nn.parallel import DistributedDataParallel

            # The whole method is wrapped: frozen teachers / target networks (requires_grad=False) are
            # not reduced, and after_step() updates them on the unwrapped module identically on every
            # rank. Methods with parameters that a step may not use set ``ddp_find_unused_parameters``.
            self.ddp = DistributedDataParallel(
                self.method,
                device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=bool(getattr(self.method, "ddp_find_unused_parameters", False)),
            )
            self.model_fn = self.ddp
        if cfg.runtime.compile:
            self.model_fn = compile_model(self.model_fn, cfg.runtime.compile_backend)
        self.watch = CollapseWatch(self.method.collapse_indicators(), cfg.runtime.collapse_thresholds,
                                   cfg.runtime.collapse_patience, cfg.method.name)
        self.collapse: str | None = None

    # ------------------------------------------------------------ checkpoints
    def restore(self, ckpt: dict[str, Any], force: bool) -> tuple[int, int]:
        """Load a checkpoint's training state; returns (start epoch, batches already done in it)."""
        old_fp = (ckpt.get("data") or {}).get("fingerprint")
        if not force and old_fp is not None and old_fp != self.fingerprint:
            raise SkelError(f"{self.cfg.data.path} changed since the run started (fingerprint {old_fp} -> {self.fingerprint}); "
                            "use --force to resume anyway")
        self.method.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.schedule.load_state_dict(ckpt.get("scheduler", {}))
        _restore_rng(ckpt, self.ctx, self.cfg.runtime.seed)
        self.step = int(ckpt["step"])
        self.method.on_resume(self.step, self.total_steps)
        return int(ckpt["epoch"]), int(ckpt.get("batch_in_epoch", 0))

    def save(self, path: Path, epochs_done: int, batch_in_epoch: int) -> Path:
        """Rank 0 writes (atomically); every rank contributes its RNG state and waits for the write."""
        from skelcli.engine.dist import all_gather_objects, barrier

        rng_ranks = all_gather_objects(rng_state(), self.ctx)
        if self.ctx.is_main:
            enc = self.method.downstream_encoder()
            save_checkpoint(path, {
                "method": self.cfg.method.name, "settings": self.resolved,
                "encoder_config": enc.config.model_dump(mode="json"), "encoder": enc.state_dict(),
                "pretraining_only": list(self.method.pretraining_only), "data": self.data_meta,
                "epoch": epochs_done, "step": self.step, "batch_in_epoch": batch_in_epoch,
                "model": self.method.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.schedule.state_dict(), "rng": rng_ranks[0], "rng_ranks": rng_ranks,
                "world_size": self.ctx.world_size, "precision": self.precision,
            })
        barrier(self.ctx)
        return path

    # ------------------------------------------------------------ one optimizer step
    def train_step(self, batches, epoch: int) -> tuple[float, dict[str, float], float, float]:
        """One optimizer step over ``accumulation`` micro-batches: (global mean loss, loss terms, lr, data wait s)."""
        from skelcli.engine.dist import all_reduce_mean
        from skelcli.engine.rng import SampleDraws, rank_positions

        cfg, plan, ctx = self.cfg, self.plan, self.ctx
        lr = self.schedule.apply(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        wait, local_loss = 0.0, 0.0
        terms: dict[str, float] = {}
        accum = plan.accumulation
        for k in range(accum):
            t0 = time.perf_counter()
            batch = next(batches)
            wait += time.perf_counter() - t0
            self.method.sample_draws = SampleDraws(
                cfg.runtime.seed, epoch, self.step, plan.global_batch,
                rank_positions(k, plan.micro_batch, ctx.world_size, ctx.rank), self.device,
            )
            sync = self.ddp.no_sync() if (self.ddp is not None and k < accum - 1) else nullcontext()
            with sync:
                with autocast_context(self.device, self.precision):
                    out = self.model_fn(batch)
                loss = out["loss"]
                (loss / accum).backward()
            self.method.sample_draws = None
            local_loss += float(loss.detach()) / accum
            for key, v in out.items():
                if torch.is_tensor(v) and v.ndim == 0:
                    terms[key] = terms.get(key, 0.0) + float(v.detach()) / accum
        # the mean loss over the global batch: the same number (and NaN check) on every rank
        loss_value = float(all_reduce_mean(torch.tensor([local_loss], dtype=torch.float64, device=self.device), ctx).item())
        if not math.isfinite(loss_value):
            where = f"; last good checkpoint: {self.last_ckpt}" if self.last_ckpt else "; no checkpoint was written yet"
            self.run_dir.log({"kind": "error", "epoch": epoch, "step": self.step, "loss": loss_value, "error": "non-finite loss"})
            raise SkelError(f"non-finite loss ({loss_value}) at step {self.step} (epoch {epoch}); training stopped{where}")
        if cfg.optim.grad_clip is not None:
            for group in self.method.clip_groups():  # each group's norm clipped on its own (SLiM: per submodule)
                torch.nn.utils.clip_grad_norm_(group, cfg.optim.grad_clip)
        self.optimizer.step()
        self.method.after_step(self.step, self.total_steps)
        self.step += 1
        terms["loss"] = loss_value
        return loss_value, terms, lr, wait

    # ------------------------------------------------------------ collapse alarm
    def check_collapse(self, metrics: dict[str, float], epoch: int, console: Any) -> bool:
        """After a logged step row: update the collapse counters; on the first alarm log a
        ``kind="collapse"`` row and a red console line and set ``self.collapse``. Every rank takes part
        (the alarm fires everywhere when any rank's values tripped). True when the run must stop now."""
        from skelcli.engine.dist import any_rank

        if not self.watch.thresholds or self.collapse is not None:
            return False
        hit = self.watch.check(metrics)
        if not any_rank(hit is not None, self.ctx):
            return False
        key, value, threshold = hit if hit is not None else ("an indicator on another process", float("nan"), float("nan"))
        self.collapse = (f"{key} = {value:.4g} below {threshold:g} for {self.watch.patience} log intervals "
                         f"(step {self.step}, epoch {epoch})")
        self.run_dir.log({"kind": "collapse", "epoch": epoch, "step": self.step, "key": key, "value": value,
                          "threshold": threshold, "patience": self.watch.patience})
        stop = self.cfg.runtime.stop_on_collapse
        if console is not None:
            from rich.markup import escape

            then = ("stopping (--stop-on-collapse): no checkpoint of this state is written" if stop
                    else "training goes on; --stop-on-collapse ends the run here")
            console.print(f"[bold red]COLLAPSE ALARM[/] [red]{escape(self.collapse)}; {then}[/]", highlight=False, soft_wrap=True)
        return stop

    # ------------------------------------------------------------ the epochs
    def run(self, ckpt: dict[str, Any] | None, resume_path: Path | None, force: bool, progress: bool | str) -> TrainResult:
        from skelcli.engine.dist import any_rank
        from skelcli.progress import Projector

        cfg, plan, ctx, log = self.cfg, self.plan, self.ctx, self.run_dir.log
        start_epoch, skip_steps = self.restore(ckpt, force) if ckpt is not None else (0, 0)
        if ckpt is not None:
            log({"kind": "resume", "from": str(resume_path), "epoch": start_epoch, "step": self.step})
        log({"kind": "setup", "world_size": ctx.world_size, "global_batch": plan.global_batch, "per_process_batch": plan.per_process,
             "micro_batch": plan.micro_batch, "accumulation": plan.accumulation, "lr": cfg.optim.lr,
             "steps_per_epoch": self.steps_per_epoch, "backend": ctx.backend, "device": str(self.device),
             "precision": self.precision, "precision_requested": cfg.runtime.precision, "recipe_precision": self.recipe_precision})
        console = self.console if ctx.is_main else None
        if console is not None:
            console.print(
                f"[bold]effective[/]: world size {ctx.world_size} ({ctx.backend or 'single process'}, {self.device}), "
                f"{plan.describe()}, lr {cfg.optim.lr:g} (not scaled by the process count), {self.steps_per_epoch} steps/epoch, "
                f"precision {self.precision} ({cfg.runtime.precision}; recipe {self.recipe_precision})",
                highlight=False,
            )
        bar = None
        if ctx.is_main and progress:
            from skelcli.progress import step_progress

            bar = step_progress(f"pretrain {cfg.method.name}", self.total_steps, completed=self.step, console=console,
                                fields=("loss", "lr", "rate"), lines=None if progress is True else progress == "lines")
        self.last_ckpt = resume_path
        projector = Projector(self.device, self.total_steps, self.step)
        final_loss = float("nan")
        samples_seen, wait_total = 0, 0.0
        t_start = time.perf_counter()
        interrupted: str | None = None
        collapse_stop = False
        epochs_done = start_epoch
        steps_per_epoch = self.steps_per_epoch
        batches = _micro_batches(self.loader, self.step, self.data_steps, plan.accumulation)  # resume replays the data order
        save_clock = SaveClock(cfg.runtime.save_interval_s)
        try:
            with StopSignal() as stop:
                for epoch in range(start_epoch, cfg.optim.epochs):
                    self.method.train()
                    self.method.on_epoch_start(epoch)
                    epoch_loss, epoch_steps, epoch_wait, epoch_t0 = 0.0, 0, 0.0, time.perf_counter()
                    window_t0, window_wait, window_samples = time.perf_counter(), 0.0, 0
                    batch_in_epoch = skip_steps
                    stop_agreed = False
                    collapse_stop = False
                    while batch_in_epoch < steps_per_epoch:
                        loss_value, terms, lr, wait = self.train_step(batches, epoch)
                        batch_in_epoch += 1
                        samples_seen += plan.global_batch
                        window_samples += plan.global_batch
                        wait_total += wait
                        window_wait += wait
                        epoch_wait += wait
                        epoch_loss += loss_value
                        epoch_steps += 1
                        final_loss = loss_value
                        if self.step % cfg.runtime.log_every == 0 or batch_in_epoch == steps_per_epoch:
                            dt = max(time.perf_counter() - window_t0, 1e-9)
                            rate = window_samples / dt
                            extra = self.method.log_metrics()
                            log({"kind": "step", "epoch": epoch, "step": self.step, **terms, "lr": lr, "samples_per_s": rate,
                                 "data_wait_share": window_wait / dt, **extra})
                            if bar is not None:
                                bar.update(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", rate=f"{rate:.1f} samples/s")
                            window_t0, window_wait, window_samples = time.perf_counter(), 0.0, 0
                            if self.check_collapse(extra, epoch, console):
                                collapse_stop = True  # the same step on every rank (check_collapse agrees)
                                break
                        if bar is not None:
                            bar.update(completed=self.step)
                        line = projector.after(self.step)
                        if line and console is not None:
                            console.print(line, highlight=False, markup=False)
                        _call(self.callbacks, "on_step_end", {"method": self.method, "epoch": epoch, "step": self.step, "loss": loss_value})
                        # all ranks agree on stopping at the same step boundary (a signal may reach them at different times)
                        stop_agreed = any_rank(stop.received is not None, ctx)
                        if stop_agreed and batch_in_epoch < steps_per_epoch:
                            interrupted = stop.received or "SIGTERM"
                            break
                    skip_steps = 0
                    if collapse_stop:  # no save: last.pt and the numbered checkpoints stay the ones before the alarm
                        log({"kind": "stopped", "epoch": epoch, "step": self.step, "reason": "collapse",
                             "checkpoint": None if self.last_ckpt is None else str(self.last_ckpt)})
                        break
                    if interrupted is not None:
                        self.last_ckpt = self.save(self.run_dir.path / "last.pt", epoch, batch_in_epoch)
                        log({"kind": "interrupted", "epoch": epoch, "step": self.step, "signal": interrupted})
                        break
                    epochs_done = epoch + 1
                    epoch_time = time.perf_counter() - epoch_t0
                    numbered = epochs_done % cfg.runtime.checkpoint_every == 0 or epochs_done == cfg.optim.epochs
                    stopping = stop_agreed or any_rank(stop.received is not None, ctx)
                    if numbered or stopping or save_clock.due(ctx):
                        self.last_ckpt = self.save(self.run_dir.path / "last.pt", epochs_done, 0)
                        save_clock.reset()
                    if numbered:
                        self.save(self.run_dir.path / f"checkpoint-{epochs_done:04d}.pt", epochs_done, 0)
                    log({"kind": "epoch", "epoch": epoch, "step": self.step, "loss": epoch_loss / max(epoch_steps, 1),
                         "seconds": epoch_time, "samples_per_s": epoch_steps * cfg.data.batch_size / max(epoch_time, 1e-9),
                         "data_wait_share": epoch_wait / max(epoch_time, 1e-9)})
                    _call(self.callbacks, "on_epoch_end", {"method": self.method, "epoch": epoch, "step": self.step, "loss": final_loss})
                    if stopping:
                        interrupted = stop.received or "SIGTERM"
                        log({"kind": "interrupted", "epoch": epoch, "step": self.step, "signal": interrupted})
                        break
        finally:
            batches.close()  # stops the loader's prefetch thread
            self.method.sample_draws = None
            if bar is not None:
                bar.close()
            close = getattr(self.loader, "close", None)
            if callable(close):
                close()

        seconds = time.perf_counter() - t_start
        return TrainResult(
            run_dir=self.run_dir.path, method=cfg.method.name, epochs=epochs_done, steps=self.step, final_loss=final_loss,
            seconds=seconds, samples_per_s=samples_seen / max(seconds, 1e-9), data_wait_share=wait_total / max(seconds, 1e-9),
            checkpoint=self.last_ckpt, interrupted=interrupted, resumed_from=resume_path, world_size=ctx.world_size,
            global_batch=plan.global_batch, per_process_batch=plan.per_process, accumulation=plan.accumulation,
            collapse=self.collapse, collapse_stopped=collapse_stop,
        )


__all__ = ["CollapseWatch", "TrainResult", "pretrain", "find_resume_checkpoint", "move_aside", "data_fingerprint"]
