"""End-to-end fine-tuning, semi-supervised subsets, transfer and the from-scratch baseline (issue 6).

Recipe ``--preset paper`` = MAMP fine-tuning (spec/mamp-and-data.md C.2): drop path 0.3, head
dropout 0.3, layer-wise lr decay 0.8 (:func:`~skelcli.eval.heads.layer_decay_multipliers`), label
smoothing 0.1, AdamW (0.9, 0.999) wd 0.05 without decay on 1-D parameters, lr 3e-4 -> 1e-5 per-iteration
cosine after 5 warmup epochs, 100 epochs, batch 48; training view = random crop 0.5-1 + rotation 0.3
rad, test view = centre crop 0.95. From scratch uses layer decay 1.0 (``script_finetune_scratch.sh``).
SLiM checkpoints (pool ``cls_mean``) get one linear head on [CLS || mean patch] (spec/slim.md 5.3)
and keep their own input length (64 frames).

Semi-supervised (spec C.3): the subset is a pure function of (labels, fraction, seed, balanced), so
every process and every repeat with the same seed draws the same clips — unlike the reference, which
seeds per rank. ``balanced`` = stratified with at least one clip per class (SLiM's choice).

Reported per run: last-epoch and best-epoch test top-1 (the papers report the best epoch on the test
set), with ``val_fraction`` > 0 also the test top-1 at the epoch that was best on the carved-out
validation split; per-class accuracy and the confusion matrix of the last epoch.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch
from pydantic import Field

from skelcli.errors import SkelError
from skelcli.settings import StrictModel


class FinetuneSettings(StrictModel):
    """Fine-tuning recipe; defaults = ``--preset paper`` (spec C.2)."""

    epochs: int = Field(100, ge=1)
    batch_size: int = Field(48, ge=2)
    lr: float = Field(3e-4, gt=0)
    min_lr: float = Field(1e-5, ge=0)
    warmup_epochs: float = Field(5, ge=0)
    weight_decay: float = Field(0.05, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    layer_decay: float = Field(0.8, gt=0, le=1)
    drop_path: float = Field(0.3, ge=0, lt=1)
    head_dropout: float = Field(0.3, ge=0, lt=1)
    head_hidden: int = Field(2048, ge=1)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    crop_min: float = Field(0.5, gt=0, le=1)
    crop_max: float = Field(1.0, gt=0, le=1)
    min_crop_frames: int = Field(64, ge=1)
    rotation: float = Field(0.3, ge=0)
    test_crop: float = Field(0.95, gt=0, le=1)
    label_fraction: float | None = Field(None, description="train on this fraction of the training split (0, 1]")
    balanced: bool = Field(False, description="stratified subset with at least one clip per class")
    subset_seed: int | None = Field(None, description="fix the subset across repeats (default: each repeat's seed)")
    repeats: int = Field(1, ge=1)
    seed: int = 0
    val_fraction: float = Field(0.0, ge=0, lt=1)
    from_scratch: bool = False
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto = fp32 on CPU and, following the MAMP fine-tuning recipe (no AMP), fp32 on CUDA too; bf16 autocast"
    )
    eval_batch_size: int = Field(128, ge=1)

    @classmethod
    def preset(cls, name: str) -> dict[str, Any]:
        if name == "paper":
            return {}
        if name == "small":
            # CPU-sized: same recipe shape, fewer epochs, smaller batch and head, shorter warmup. No
            # layer-wise decay: with a 2-block encoder it only slows the pretrained run (measured: last
            # top-1 0.596 with 0.8 vs 0.628 with 1.0), and it makes pretrained and --from-scratch
            # runs use the very same recipe.
            return {"epochs": 10, "batch_size": 16, "lr": 1e-3, "warmup_epochs": 1, "head_hidden": 256, "drop_path": 0.1,
                    "min_crop_frames": 16, "layer_decay": 1.0}
        raise SkelError(f"unknown preset {name!r}; available: paper, small")


# ------------------------------------------------------------------------------------ subsets
def check_fraction(fraction: float) -> None:
    if not (isinstance(fraction, (int, float)) and math.isfinite(fraction) and 0 < fraction <= 1):
        raise SkelError(f"label fraction must be in (0, 1], got {fraction}")


def select_subset(labels: np.ndarray, fraction: float, seed: int, *, balanced: bool = False, num_classes: int | None = None) -> np.ndarray:
    """Indices (sorted, int64) of a labelled subset of a training split.

    Plain: a seeded shuffle, keep the first max(1, int(n * fraction)) (spec C.3, without the per-rank
    seed quirk). Balanced: per class max(1, round(n_c * fraction)) clips drawn at random. Depends only on
    its arguments (numpy PCG64 with ``seed``), hence identical across processes and repeats.
    """
    check_fraction(fraction)
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    n = len(labels)
    if not balanced:
        keep = max(1, int(n * fraction))
        return np.sort(rng.permutation(n)[:keep]).astype(np.int64)
    picked = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        take = max(1, int(round(len(members) * fraction)))
        picked.append(rng.permutation(members)[:take])
    return np.sort(np.concatenate(picked)).astype(np.int64)


def missing_classes(labels: np.ndarray, subset: np.ndarray, num_classes: int) -> list[int]:
    """Classes present in the full training split but with no clip in ``subset``."""
    full = set(np.unique(labels).tolist())
    have = set(np.unique(np.asarray(labels)[subset]).tolist())
    return sorted(c for c in full - have if c < num_classes)


def carve_validation(indices: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``indices`` into (train, val) with round(n * fraction) (at least 1) validation clips."""
    if fraction <= 0:
        return indices, indices[:0]
    n = len(indices)
    n_val = max(1, int(round(n * fraction)))
    if n - n_val < 2:
        raise SkelError(f"--val-fraction {fraction} leaves {n - n_val} training clips out of {n}")
    perm = np.random.default_rng(seed + 7919).permutation(n)
    return np.sort(indices[perm[n_val:]]), np.sort(indices[perm[:n_val]])


# ------------------------------------------------------------------------------------ training
def evaluate_logits(model: torch.nn.Module, split, *, batch_size: int, device: torch.device, test_crop: float,
                    precision: str = "auto") -> np.ndarray:
    """Logits (n, classes) of a split under the test view (centre crop, no rotation), in ``precision``
    (resolved by :func:`_autocast`)."""
    from skelcli.data.clips import test_view
    from skelcli.eval.features import iter_batches

    model.eval()
    frames = model.encoder.config.num_frames
    out = []
    with torch.inference_mode(), _autocast(device, precision):
        for idx in iter_batches(len(split), batch_size):
            batch = split.batch(idx, device)
            out.append(model(test_view(batch, frames, test_crop)).float().cpu().numpy())
    return np.concatenate(out, axis=0)


#: The MAMP fine-tuning recipe trains without AMP (spec/mamp-and-data.md C.2).
FINETUNE_RECIPE_PRECISION = "fp32"


def _autocast(device: torch.device, precision: str = "auto"):
    """Autocast for ``precision`` resolved by the engine's rule against the fine-tuning recipe
    (:func:`skelcli.engine.dist.resolve_precision`): ``auto`` is fp32 on CPU and on CUDA."""
    from skelcli.engine.dist import autocast_context

    return autocast_context(device, precision, FINETUNE_RECIPE_PRECISION)


def finetune_once(
    encoder_config,
    encoder_state: dict[str, torch.Tensor] | None,
    train,
    test,
    num_classes: int,
    settings: FinetuneSettings,
    *,
    seed: int,
    val=None,
    on_epoch: Callable[[int, dict[str, Any]], None] | None = None,
    run: Any = None,
    resume: dict[str, Any] | None = None,
    stop: Any = None,
    run_settings: dict[str, Any] | None = None,
    notify: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Fine-tune one encoder + head. ``train``/``test``/``val`` are SplitData; ``encoder_state`` None =
    random init. Returns history, last/best metrics and the trained model (key "model").

    Under torchrun the model is wrapped in DDP and every global batch (``settings.batch_size``
    clips, the same order on every rank) is split across the processes, so the effective batch and
    the learning rate do not depend on the process count; every rank evaluates the same synced model.

    With ``run`` (a :class:`~skelcli.engine.rundir.RunDir`) the complete training state is saved to
    ``run/last.pt`` after every epoch, and at the next step when ``stop`` (a StopSignal) has received
    SIGINT/SIGTERM; the result then has ``interrupted`` set and no metrics. ``resume`` (such a
    checkpoint) continues exactly: model, optimizer, schedule, the epoch's clip order and position,
    every generator (augmentation, dropout, order) and the history, so the final weights equal an
    uninterrupted run's. ``run_settings`` is stored in the checkpoint to refuse a resume with others.
    ``notify`` receives the projected run time on a CPU once the first steps are timed.
    """
    from skelcli.data.clips import train_view
    from skelcli.engine.dist import (all_gather_objects, any_rank, barrier, context_of_group, init_distributed, quiet_non_main,
                                     resolve_precision)
    from skelcli.engine.schedule import LRSchedule
    from skelcli.eval.features import iter_batches, resolve_device
    from skelcli.eval.heads import FinetuneModel, finetune_param_groups, head_config_for
    from skelcli.eval.report import classification_metrics
    from skelcli.models.encoder import SkeletonEncoder
    from skelcli.progress import Projector
    from skelcli.settings import DataSettings

    s = settings
    dev = resolve_device(s.device)
    ctx = context_of_group(dev)
    if ctx is None:
        ctx = init_distributed(str(dev.type) if dev.type == "cpu" else "auto")
        quiet_non_main(ctx)
    if ctx.distributed:
        dev = ctx.device
    torch.manual_seed(seed)
    cfg = encoder_config.model_copy(update={"drop_path": s.drop_path})
    encoder = SkeletonEncoder(cfg)
    if encoder_state is not None:
        encoder.load_state_dict(encoder_state)
    model = FinetuneModel(encoder, head_config_for(encoder, num_classes, s.head_dropout, s.head_hidden)).to(dev)
    forward = model
    if ctx.distributed:
        from torch.nn.parallel import DistributedDataParallel

        forward = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    layer_decay = 1.0 if encoder_state is None else s.layer_decay
    opt = torch.optim.AdamW(finetune_param_groups(model, s.weight_decay, layer_decay), lr=s.lr, betas=s.betas)
    n = len(train)
    batch_size = min(s.batch_size, n)
    steps_per_epoch = max(1, n // batch_size)  # drop_last, as the reference loaders
    sched = LRSchedule(opt, lr=s.lr, min_lr=s.min_lr, warmup_epochs=s.warmup_epochs, epochs=s.epochs,
                       steps_per_epoch=steps_per_epoch, weight_decay=s.weight_decay)
    aug = DataSettings(crop_min=s.crop_min, crop_max=s.crop_max, min_crop_frames=s.min_crop_frames, rotation=s.rotation)
    gen = torch.Generator().manual_seed(seed)
    order_rng = np.random.default_rng(seed)
    frames = cfg.num_frames
    st: dict[str, Any] = {"history": [], "best_logits": None, "best_top1": -1.0, "best_epoch": -1, "sel_val": -1.0,
                          "sel_epoch": -1, "sel_test": None, "last_logits": None, "epoch": 0, "batch_in_epoch": 0,
                          "perm": None, "losses": [], "step": 0, "seconds": 0.0}
    if resume is not None:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume.get("scheduler", {}))
        ranks = resume["rng_ranks"]
        mine = ranks[ctx.rank] if len(ranks) == ctx.world_size else ranks[0]
        gen.set_state(mine["gen"])
        torch.set_rng_state(mine["torch"])
        if mine.get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(mine["cuda"])
        order_rng.bit_generator.state = resume["order_rng"]
        st.update(resume["loop"])
    history = st["history"]
    step = st["step"]
    t0 = time.perf_counter() - st["seconds"]
    projector = Projector(dev, s.epochs * steps_per_epoch, step)

    def save(epochs_done: int, batch_in_epoch: int, perm: np.ndarray | None, losses: list[float]) -> None:
        if run is None:
            return
        rng_ranks = all_gather_objects({"gen": gen.get_state(), "torch": torch.get_rng_state(),
                                        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}, ctx)
        if ctx.is_main:
            from skelcli.engine.checkpoint import save_checkpoint

            loop = {**st, "epoch": epochs_done, "batch_in_epoch": batch_in_epoch, "losses": list(losses), "step": step,
                    "perm": None if perm is None else torch.from_numpy(np.asarray(perm, dtype=np.int64)),
                    "seconds": time.perf_counter() - t0}
            save_checkpoint(run.path / "last.pt", {
                "method": "finetune", "settings": run_settings or {}, "seed": seed, "epoch": epochs_done, "step": step,
                "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "order_rng": order_rng.bit_generator.state, "rng_ranks": rng_ranks, "loop": loop,
                "precision": resolve_precision(s.precision, dev, FINETUNE_RECIPE_PRECISION),
            })
        barrier(ctx)

    def stopping() -> bool:
        return stop is not None and any_rank(stop.received is not None, ctx)

    for epoch in range(st["epoch"], s.epochs):
        model.train()
        if st["perm"] is None:
            perm = order_rng.permutation(n)
        else:  # resumed mid-epoch: the order drawn at the epoch's start
            perm = np.asarray(st["perm"], dtype=np.int64)
        losses = list(st["losses"])
        batches = list(iter_batches(n, batch_size))[:steps_per_epoch]
        for b in range(st["batch_in_epoch"], steps_per_epoch):
            rows = perm[batches[b]]
            if ctx.distributed:  # this rank's share of the global batch
                rows = np.array_split(rows, ctx.world_size)[ctx.rank]
            batch = train.batch(rows, dev)
            views = train_view(batch, frames, aug, generator=gen, dims=train.dims)
            sched.apply(step)
            with _autocast(dev, s.precision):
                logits = forward(views)
            loss = torch.nn.functional.cross_entropy(logits.float(), batch.label, label_smoothing=s.label_smoothing)
            if not torch.isfinite(loss):
                raise SkelError(f"non-finite fine-tuning loss at step {step} (epoch {epoch + 1}); lower the learning rate")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            step += 1
            line = projector.after(step)
            if line and notify is not None and ctx.is_main:
                notify(line)
            if b + 1 < steps_per_epoch and stopping():
                save(epoch, b + 1, perm, losses)
                return {"interrupted": stop.received or "SIGTERM", "epoch": epoch, "steps": step}
        st.update(batch_in_epoch=0, perm=None, losses=[])
        logits = evaluate_logits(model, test, batch_size=s.eval_batch_size, device=dev, test_crop=s.test_crop, precision=s.precision)
        top1 = float((logits.argmax(1) == test.labels).mean())
        row: dict[str, Any] = {"epoch": epoch + 1, "step": step, "loss": float(np.mean(losses)), "test_top1": top1}
        st["last_logits"] = torch.from_numpy(logits)
        if top1 > st["best_top1"]:
            st.update(best_logits=st["last_logits"], best_top1=top1, best_epoch=epoch + 1)
        if val is not None and len(val):
            vl = evaluate_logits(model, val, batch_size=s.eval_batch_size, device=dev, test_crop=s.test_crop, precision=s.precision)
            row["val_top1"] = float((vl.argmax(1) == val.labels).mean())
            if row["val_top1"] > st["sel_val"]:
                st.update(sel_val=row["val_top1"], sel_epoch=epoch + 1, sel_test=top1)
        history.append(row)
        if run is not None and ctx.is_main:
            run.log({"kind": "epoch", **row})
        save(epoch + 1, 0, None, [])
        if on_epoch is not None:
            on_epoch(epoch, row)
        if epoch + 1 < s.epochs and stopping():
            return {"interrupted": stop.received or "SIGTERM", "epoch": epoch + 1, "steps": step}
    last = classification_metrics(st["last_logits"].numpy(), test.labels, num_classes)
    best = classification_metrics(st["best_logits"].numpy(), test.labels, num_classes)
    out: dict[str, Any] = {
        "seed": seed, "n_train": n, "n_test": len(test), "epochs": s.epochs, "steps": step,
        "last_top1": last["top1"], "last_top5": last["top5"], "best_top1": best["top1"], "best_top5": best["top5"],
        "best_epoch": st["best_epoch"], "per_class": last["per_class"], "mean_class": last["mean_class"],
        "confusion": last["confusion"], "history": history, "seconds": time.perf_counter() - t0, "model": model.cpu(),
    }
    if val is not None and len(val):
        out.update({"n_val": len(val), "val_best_top1": st["sel_val"], "val_best_epoch": st["sel_epoch"],
                    "test_top1_at_val_best": st["sel_test"]})
    return out


def _mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": float(statistics.fmean(values)), "std": float(statistics.stdev(values)) if len(values) > 1 else 0.0}


#: Settings that may change between a fine-tuning run and its resume.
_VOLATILE = {("finetune", "device"), ("finetune", "eval_batch_size"), ("finetune", "precision")}


def _repeat_dirs(out_dir: Path, repeats: int) -> list[Path]:
    return [out_dir] if repeats == 1 else [out_dir / f"repeat-{r}" for r in range(repeats)]


def run_finetune(
    checkpoint: str | Path | None,
    data_path: str | Path,
    protocol: str,
    settings: FinetuneSettings,
    out_dir: str | Path,
    *,
    preset: str = "paper",
    on_epoch: Callable[[int, int, dict[str, Any]], None] | None = None,
    warn: Callable[[str], None] | None = None,
    resume: str | None = None,
    force: bool = False,
    notify: Callable[[str], None] | None = None,
    tensorboard: Callable[[Path], Any] | None = None,
) -> dict[str, Any]:
    """Full ``skel finetune``: load checkpoint and data, draw subsets, run ``repeats`` seeds, write the
    run folder (metrics.json, confusion .npy/.csv/.png, finetuned.pt per repeat). Returns the summary.

    The run folder follows the pretraining rules (skelcli/engine/rundir.py): locked while in use,
    settings.json written atomically, each repeat's ``last.pt`` saved every epoch and on SIGINT/SIGTERM
    (the summary then holds ``interrupted`` and nothing else is written), ``metrics.jsonl`` with one row per
    epoch. ``resume="auto"`` continues every repeat from its last.pt (finished repeats are not retrained);
    a folder with fine-tuning checkpoints is refused without ``resume`` or ``force`` (old files move aside).
    ``tensorboard``: a factory ``folder -> mirror`` (:class:`skelcli.viz.tensorboard.TensorBoardLog`); each
    repeat's rows also go to ``<repeat>/tb/``, with its confusion matrix at the end (``finish(pngs=...)``).
    """
    from skelcli.engine.checkpoint import check_head_classes, load_encoder, save_checkpoint
    from skelcli.engine.config import check_encoder_fits
    from skelcli.engine.dist import is_main_process
    from skelcli.engine.rundir import RunDir, StopSignal, open_run, settings_differences
    from skelcli.eval.features import data_info, file_fingerprint, load_split
    from skelcli.eval.report import jsonable_metrics, save_confusion, write_json
    from skelcli.settings import to_jsonable

    s = settings
    if s.label_fraction is not None:
        check_fraction(s.label_fraction)
    if resume not in (None, "auto"):
        raise SkelError(f"--resume takes 'auto' for fine-tuning (each repeat resumes from its own last.pt), got {resume!r}")
    out_dir = Path(out_dir)
    dinfo = data_info(data_path)
    num_classes = int(dinfo.num_classes)
    pretrain: dict[str, Any] = {"checkpoint": None, "method": None, "dataset": None, "num_classes": None, "epoch": None}
    if checkpoint is not None:
        encoder, einfo, ckpt = load_encoder(checkpoint)
        check_encoder_fits(encoder.config, dinfo.topology, str(data_path), prefix=f"{checkpoint}: encoder")
        check_head_classes(ckpt, num_classes, checkpoint, data_path)
        pretrain = {"checkpoint": str(checkpoint), "method": einfo.method, "dataset": einfo.dataset,
                    "num_classes": einfo.num_classes, "epoch": einfo.epoch}
        encoder_config = encoder.config
        state = None if s.from_scratch else {k: v.clone() for k, v in encoder.state_dict().items()}
    elif s.from_scratch:
        from skelcli.eval.features import preset_encoder_config

        encoder_config = preset_encoder_config(preset, dinfo.topology)
        state = None
    else:
        raise SkelError("--checkpoint is required unless --from-scratch is given")
    resolved = {"finetune": to_jsonable(s), "preset": preset, "split": protocol, "data": file_fingerprint(data_path),
                "checkpoint": None if checkpoint is None else file_fingerprint(checkpoint)}
    dirs = _repeat_dirs(out_dir, s.repeats)

    top = RunDir(out_dir)
    main = is_main_process() and int(os.environ.get("RANK", "0")) == 0  # the process group may not exist yet
    if main:
        top.acquire()
    try:
        has_work = any((d / n).exists() for d in dirs for n in ("last.pt", "finetuned.pt")) or any(out_dir.glob("repeat-*/last.pt"))
        open_run(top, resolved, resume=None, force=force, volatile=_VOLATILE, has_work=has_work and resume is None)
        if main:
            if resume is None:
                moved = top.move_aside(extra=[*out_dir.glob("repeat-*"), out_dir / "finetuned.pt", out_dir / "metrics.json"])
                if moved is not None and warn is not None:
                    warn(f"old files moved to {moved}")
            top.write_settings(resolved)
        train_all = load_split(data_path, protocol, "train")
        test = load_split(data_path, protocol, "test")
        runs = []
        warnings_out: list[str] = []
        with StopSignal() as stop:
            for r in range(s.repeats):
                seed = s.seed + r
                run_dir = RunDir(dirs[r])
                state_ckpt = None
                if resume == "auto" and run_dir.path.is_dir():
                    _, state_ckpt, notes = run_dir.find_resume(("model", "optimizer", "loop"))
                    for note in notes:
                        warnings_out.append(f"repeat {r}: {note}")
                        if warn is not None:
                            warn(f"repeat {r}: {note}")
                    if state_ckpt is not None and not force:
                        diff = settings_differences(state_ckpt.get("settings", {}), resolved, _VOLATILE)
                        if diff:
                            raise SkelError(f"{run_dir.path / 'last.pt'}: written with different settings ({', '.join(diff[:5])}); "
                                            "use --force to resume anyway")
                idx = np.arange(len(train_all))
                if s.label_fraction is not None:
                    sub_seed = s.subset_seed if s.subset_seed is not None else seed
                    idx = select_subset(train_all.labels, s.label_fraction, sub_seed, balanced=s.balanced, num_classes=num_classes)
                    miss = missing_classes(train_all.labels, idx, num_classes)
                    if miss:
                        msg = (f"label fraction {s.label_fraction} (seed {sub_seed}) leaves {len(miss)} class(es) without a training "
                               f"clip: {', '.join(map(str, miss[:20]))}{' ...' if len(miss) > 20 else ''}; use --balanced for at least "
                               "one clip per class")
                        warnings_out.append(msg)
                        if warn is not None:
                            warn(msg)
                tr_idx, val_idx = carve_validation(idx, s.val_fraction, seed)
                train = train_all.subset(tr_idx)
                val = train_all.subset(val_idx) if len(val_idx) else None
                tb, pngs = None, []
                if main:
                    run_dir.path.mkdir(parents=True, exist_ok=True)
                    run_dir.open_log(resume_step=int(state_ckpt["step"]) if state_ckpt is not None else (0 if resume else None))
                    if tensorboard is not None:
                        tb = tensorboard(run_dir.path / "tb")
                        run_dir.mirrors.append(tb)
                try:
                    res = finetune_once(encoder_config, state, train, test, num_classes, s, seed=seed, val=val,
                                        on_epoch=(lambda e, row, _r=r: on_epoch(_r, e, row)) if on_epoch else None,
                                        run=run_dir, resume=state_ckpt, stop=stop, run_settings=resolved, notify=notify)
                    if "interrupted" in res:
                        return {"interrupted": res["interrupted"], "repeat": r, "epoch": res["epoch"], "steps": res["steps"],
                                "out": str(out_dir), "checkpoint": str(run_dir.path / "last.pt")}
                    files = save_confusion(res.pop("confusion"), run_dir.path, class_names=getattr(dinfo, "class_names", None))
                    pngs = [p for p in files.values() if isinstance(p, str) and p.endswith(".png")]
                finally:
                    run_dir.close_log()
                    if tb is not None:
                        tb.finish(pngs=pngs)
                model = res.pop("model")
                ckpt_path = run_dir.path / "finetuned.pt"
                if main:  # one writer under torchrun; every rank holds the same model
                    save_checkpoint(ckpt_path, {
                        "method": pretrain["method"] or "scratch",
                        "settings": {"finetune": to_jsonable(s), "preset": preset},
                        "encoder_config": to_jsonable(model.encoder.config),
                        "encoder": model.encoder.state_dict(),
                        "head": model.head.state_dict(),
                        "head_config": model.head_config,
                        "pretraining_only": [],
                        "data": {"dataset": dinfo.dataset, "num_classes": num_classes, "split": protocol,
                                 "fingerprint": file_fingerprint(data_path)},
                        "pretrain_data": {k: pretrain[k] for k in ("dataset", "num_classes", "method", "epoch")},
                        "epoch": s.epochs,
                        "step": res["steps"],
                    })
                res.update({"repeat": r, "train_clips": int(len(tr_idx)), "confusion_files": files, "checkpoint": str(ckpt_path)})
                runs.append(jsonable_metrics(res))
    finally:
        top.release()
    summary: dict[str, Any] = {
        "protocol": "finetune", "preset": preset, "from_scratch": s.from_scratch, "split": protocol,
        "finetune_data": {"path": str(data_path), "dataset": dinfo.dataset, "num_classes": num_classes},
        "pretrain": pretrain, "label_fraction": s.label_fraction, "balanced": s.balanced, "repeats": s.repeats,
        "best_top1": _mean_std([r["best_top1"] for r in runs]), "last_top1": _mean_std([r["last_top1"] for r in runs]),
        "warnings": warnings_out, "settings": to_jsonable(s), "runs": runs,
    }
    if s.val_fraction > 0:
        summary["test_top1_at_val_best"] = _mean_std([r["test_top1_at_val_best"] for r in runs])
    write_json(out_dir / "metrics.json", summary)
    return summary
