"""End-to-end fine-tuning, semi-supervised subsets, transfer and the from-scratch baseline (issues 6, 17).

Two recipes (``skel finetune --recipe``, default: the checkpoint's paper -- slim for SLiM checkpoints,
mamp for every other method and for ``--from-scratch`` without a checkpoint; ``--set field=value``
changes one field, :mod:`skelcli.eval.recipes`):

* ``mamp`` (:class:`~skelcli.eval.recipes.MampFinetuneRecipe` = the recipe fields of
  :class:`FinetuneSettings`; ``--preset paper``) = MAMP fine-tuning (spec/protocols-and-checkpoints.md
  3.2): drop path 0.3, head dropout 0.3, layer-wise lr decay 0.8
  (:func:`~skelcli.eval.heads.layer_decay_multipliers`), label smoothing 0.1, AdamW (0.9, 0.999) wd 0.05
  without decay on 1-D parameters, lr 3e-4 -> 1e-5 per-iteration cosine after 5 warmup epochs, 100
  epochs, batch 48; training view = random crop 0.5-1 + rotation 0.3 rad, test view = centre crop 0.95.
  From scratch uses layer decay 1.0 (``script_finetune_scratch.sh``). SLiM-shaped encoders (pool
  ``cls_mean``) get one linear head on [CLS || mean patch] and keep their input length. Reported: the
  best epoch on the test split (MAMP's ``max_accuracy``).
* ``slim`` (:class:`~skelcli.eval.recipes.SlimFinetuneRecipe`) = SLiM's semi-supervised evaluation
  (spec 2.2, [S slim/eval/finetune.py, scripts/eval_semi.sh]): the whole encoder trained with one
  linear head on the last block's person-summed CLS || patch mean (:class:`~skelcli.eval.heads.SlimLinearHead`), SGD
  with a backbone (1e-5) and a head (1e-3) lr group, 20,000 iterations of cosine to 0 over an infinite
  shuffled stream of batch 256, fp16 autocast on CUDA without a GradScaler, the SLiM views
  (:mod:`skelcli.eval.slim_eval`); evaluated every 2000 iterations and at the end. Reported: the final
  evaluation (the best one is kept for reference).

Both run through one loop (:func:`finetune_once`) with the same guarantees: exact resume from
``last.pt`` after SIGINT/SIGTERM, DDP under torchrun, run-folder rules, repeats.

Semi-supervised label subsets (``--label-fraction``):

* mamp, ``--subsets exact`` (default): :func:`select_subset`, a true fraction -- a pure function of
  (labels, fraction, seed, balanced), so every process and every repeat with the same seed draws the
  same clips. ``--balanced`` = stratified with at least one clip per class.
* mamp, ``--subsets official``: :func:`mamp_official_subset`, the clips MAMP's released runs actually
  train on. Its ``main_finetune.py`` seeds numpy with ``0 + rank`` before ``feeder_ntu_semi.py`` shuffles
  the training indices, so each of the 2 processes (``script_semi.sh``) keeps its own int(N * ratio)
  and the run sees their union: about **2x the nominal labels** (NTU60 xsub, N = 40,091: 794 distinct
  clips at 1 % for a nominal 400; 7,584 at 10 % for 4,009). The 5 repeats reuse that subset (the
  official runs all use seed 0). A warning says so; metrics.json records ``subsets``,
  ``labelled_clips`` (distinct) and ``nominal_labelled_clips``.
* slim: :func:`slim_subset`, SLiM's class-balanced ``np.random.seed(42)`` draw (max(1, int(n_c * ratio))
  per class), identical on every rank and repeat.

Both official draws index the training split in the prepared file's order; they pick the official
clips only where that order is the official npz's.

Reported per run: the last and the best evaluation's test top-1 (``reported`` says which one the
recipe's paper reports), with ``val_fraction`` > 0 also the test top-1 at the evaluation that was best
on the carved-out validation split; per-class accuracy and the confusion matrix of the last one.
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
from skelcli.eval.recipes import MampFinetuneRecipe


class FinetuneSettings(MampFinetuneRecipe):
    """A fine-tuning run: the MAMP recipe's fields (:class:`~skelcli.eval.recipes.MampFinetuneRecipe`;
    defaults = ``--preset paper``, spec C.2) plus the run's options."""

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
    eval_every: int = Field(1, ge=1, description="mamp recipe: epochs between test evaluations (the recipe: 1); the last epoch is "
                            "always evaluated, and best_top1 is the best of the evaluated epochs")
    subsets: Literal["exact", "official"] = Field(
        "exact", description="MAMP recipe label subsets: exact = a true label_fraction; official = the union of MAMP's per-rank draws")
    official_world_size: int = Field(2, ge=1, description="processes of the official MAMP semi-supervised runs (script_semi.sh)")
    save_interval_s: float = Field(
        30.0, ge=0, description="write last.pt after an epoch (SLiM recipe: an evaluation) once this many seconds have passed "
        "since the previous write (0 = every time); always after the last step and on SIGINT/SIGTERM"
    )

    def mamp_recipe(self):
        """The :class:`~skelcli.eval.recipes.MampFinetuneRecipe` of these settings' recipe fields."""
        return MampFinetuneRecipe(**{k: getattr(self, k) for k in MampFinetuneRecipe.model_fields})

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


def slim_subset(labels: np.ndarray, fraction: float, seed: int = 42) -> np.ndarray:
    """SLiM's semi-supervised label subset, drawn exactly as [S slim/data/datasets/ntu.py]
    ``NTU_Classification.load_data`` does: the legacy global numpy RNG seeded once with ``seed`` (42),
    then for each class in ``np.unique`` order ``np.random.shuffle`` of its indices, keeping the first
    max(1, int(n_c * fraction)); then one ``np.random.shuffle`` of the union. Returns the indices in that
    final (shuffled) order, int64. ``fraction`` >= 1 keeps every clip in file order (the official code
    subsamples only when ``sample_ratio < 1.0``). Uses a private ``np.random.RandomState(seed)``, which
    is the same generator and call sequence as ``np.random.seed(seed)`` + the global functions, so the
    caller's global RNG is untouched. The same on every rank and every repeat."""
    check_fraction(fraction)
    labels = np.asarray(labels, dtype=np.int64)
    if fraction >= 1.0:
        return np.arange(len(labels), dtype=np.int64)
    rng = np.random.RandomState(seed)
    picked: list[np.ndarray] = []
    for c in np.unique(labels):
        members = np.where(labels == c)[0]
        rng.shuffle(members)
        picked.append(members[: max(1, int(len(members) * fraction))])
    out = np.concatenate(picked).astype(np.int64)
    rng.shuffle(out)
    return out


def mamp_official_subset(n: int, fraction: float, world_size: int = 2, seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """The labelled clips MAMP's semi-supervised runs actually train on: (sorted union, per-rank draws).

    [M main_finetune.py] seeds the legacy numpy RNG with ``seed + rank`` (``--seed`` 0) right before it
    builds the training feeder, and [M feeder/feeder_ntu_semi.py] ``random_select_data`` then shuffles
    ``np.arange(N)`` with ``np.random.shuffle`` and keeps the first ``int(N * data_ratio)``. Every rank
    thus draws its own subset, and its DistributedSampler (reshuffled every epoch) walks all of it, so
    over the run the union of the ``world_size`` draws is seen: about twice the nominal count with
    [M script_semi.sh]'s 2 processes (NTU60 xsub, N = 40,091: 1 % -> 794 distinct clips for a nominal
    400, 10 % -> 7,584 for 4,009). Each draw keeps at least 1 clip (the official code would build an
    empty feeder for int(N * ratio) = 0)."""
    check_fraction(fraction)
    per_rank = []
    for r in range(world_size):
        rng = np.random.RandomState(seed + r)
        idx = np.arange(n)
        rng.shuffle(idx)
        per_rank.append(idx[: max(1, int(n * fraction))].astype(np.int64))
    return np.unique(np.concatenate(per_rank)).astype(np.int64), per_rank


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
                    precision: str = "auto", view: Callable[[Any], torch.Tensor] | None = None, autocast: Any = None) -> np.ndarray:
    """Logits (n, classes) of a split under the test view (default: MAMP's centre crop, no rotation;
    ``view`` = another ``batch -> views`` function), in ``precision`` (resolved by :func:`_autocast`)
    unless ``autocast`` (a context factory) is given."""
    from skelcli.data.clips import test_view
    from skelcli.eval.features import iter_batches

    model.eval()
    frames = model.encoder.config.num_frames
    if view is None:
        view = lambda batch: test_view(batch, frames, test_crop)  # noqa: E731
    ctx = autocast if autocast is not None else (lambda: _autocast(device, precision))
    out = []
    with torch.inference_mode(), ctx():
        for idx in iter_batches(len(split), batch_size):
            views = view(split.batch(idx, device))
            views = views if isinstance(views, tuple) else (views,)  # (views, person mask) for SLiM
            out.append(model(*views).float().cpu().numpy())
    return np.concatenate(out, axis=0)


#: The MAMP fine-tuning recipe trains without AMP (spec/mamp-and-data.md C.2).
FINETUNE_RECIPE_PRECISION = "fp32"


def _autocast(device: torch.device, precision: str = "auto"):
    """Autocast for ``precision`` resolved by the engine's rule against the fine-tuning recipe
    (:func:`skelcli.engine.dist.resolve_precision`): ``auto`` is fp32 on CPU and on CUDA."""
    from skelcli.engine.dist import autocast_context

    return autocast_context(device, precision, FINETUNE_RECIPE_PRECISION)


def slim_precision(device: torch.device, requested: str, recipe_precision: str) -> str:
    """Precision of a SLiM-recipe run: ``auto`` = the recipe's (fp16 autocast, as the official code,
    without a GradScaler) on CUDA and fp32 on a CPU; ``fp32`` / ``bf16`` asked explicitly: that."""
    if requested == "fp32" or device.type != "cuda" and requested == "auto":
        return "fp32"
    if requested == "bf16":
        return "bf16"
    return recipe_precision


def _freeze_unused(encoder) -> None:
    """The mask token never gets a gradient in fine-tuning (officially too); excluding it keeps DDP from
    waiting for its gradient."""
    for name, p in encoder.named_parameters():
        if name.split(".", 1)[0] == "mask_embed":
            p.requires_grad_(False)


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
    recipe: Any = None,
    topology: Any = None,
) -> dict[str, Any]:
    """Fine-tune one encoder + head. ``train``/``test``/``val`` are SplitData; ``encoder_state`` None =
    random init. Returns history, last/best metrics and the trained model (key "model").

    ``recipe`` None or a :class:`~skelcli.eval.recipes.MampFinetuneRecipe`: the MAMP recipe of
    ``settings`` (epochs over shuffled passes with drop_last, AdamW with layer decay, warmup + cosine
    per iteration, the MAMP views; one evaluation per epoch). A
    :class:`~skelcli.eval.recipes.SlimFinetuneRecipe`: SLiM's (an infinite shuffled stream of clips,
    ``recipe.iterations`` SGD steps with a backbone and a head lr group, cosine to 0, the SLiM views of
    ``topology`` -- the data's :class:`~skelcli.data.formats` topology; an evaluation every
    ``recipe.eval_every`` iterations and at the end). ``settings`` then supplies only the run options
    (device, precision, eval batch).

    Under torchrun the model is wrapped in DDP and every global batch (the recipe's batch size, the
    same order on every rank) is split across the processes, so the effective batch and the learning
    rate do not depend on the process count; every rank evaluates the same synced model.

    With ``run`` (a :class:`~skelcli.engine.rundir.RunDir`) the complete training state is saved to
    ``run/last.pt`` after an epoch once ``settings.save_interval_s`` have passed since the previous write, after
    the last step, and at the next step when ``stop`` (a StopSignal) has received
    SIGINT/SIGTERM; the result then has ``interrupted`` set and no metrics. ``resume`` (such a
    checkpoint) continues exactly: model, optimizer, schedule, the clip order and position, every
    generator (augmentation, dropout, order) and the history, so the final weights equal an
    uninterrupted run's. ``run_settings`` is stored in the checkpoint to refuse a resume with others.
    ``notify`` receives the projected run time on a CPU once the first steps are timed.
    """
    from skelcli.data.clips import train_view
    from skelcli.engine.checkpoint import SaveClock
    from skelcli.engine.dist import (all_gather_objects, any_rank, barrier, context_of_group, init_distributed, quiet_non_main,
                                     resolve_precision)
    from skelcli.engine.schedule import LRSchedule, adamw
    from skelcli.eval.features import resolve_device
    from skelcli.eval.heads import FinetuneModel, finetune_param_groups, head_config_for, slim_head_config
    from skelcli.eval.report import classification_metrics
    from skelcli.models.encoder import SkeletonEncoder
    from skelcli.progress import Projector
    from skelcli.settings import DataSettings

    s = settings
    slim = recipe is not None and getattr(recipe, "name", "mamp") == "slim"
    r = recipe if recipe is not None else s
    dev = resolve_device(s.device)
    ctx = context_of_group(dev)
    if ctx is None:
        ctx = init_distributed(str(dev.type) if dev.type == "cpu" else "auto")
        quiet_non_main(ctx)
    if ctx.distributed:
        dev = ctx.device
    torch.manual_seed(seed)
    cfg = encoder_config.model_copy(update={"drop_path": r.drop_path})
    encoder = SkeletonEncoder(cfg)
    if encoder_state is not None:
        encoder.load_state_dict(encoder_state)
    _freeze_unused(encoder)
    n = len(train)
    if slim:
        if topology is None:
            raise SkelError("the slim fine-tuning recipe needs the data's topology (its SLiM views mirror and scale bones)")
        if not cfg.use_cls:
            raise SkelError("recipe slim fine-tunes on the CLS token; this encoder has none (use --recipe mamp)")
        from skelcli.eval.slim_eval import slim_buffer, slim_test_view, slim_train_view

        model = FinetuneModel(encoder, slim_head_config(num_classes, recipe.n_last_blocks, recipe.avgpool, recipe.head_init_std)).to(dev)
        precision = slim_precision(dev, s.precision, recipe.precision)
        from skelcli.eval.slim_eval import slim_autocast

        amp = lambda: slim_autocast(dev, precision)  # noqa: E731
        model.autocast = amp
        frames = recipe.frames or cfg.num_frames
        backbone_lr, head_lr = recipe.scaled_lrs()
        groups = [{"params": [p for p in model.encoder.parameters() if p.requires_grad], "lr_scale": backbone_lr},
                  {"params": list(model.head.parameters()), "lr_scale": head_lr}]
        opt = torch.optim.SGD(groups, lr=backbone_lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
        batch_size = recipe.batch_size
        total_steps = recipe.iterations
        steps_per_epoch = recipe.eval_every  # steps between evaluations
        # CosineAnnealingLR(max_iter, eta_min=0), stepped per iteration: lr_i = lr * (1 + cos(pi i / T)) / 2
        sched = LRSchedule(opt, lr=1.0, min_lr=recipe.min_lr, warmup_epochs=0, epochs=total_steps, steps_per_epoch=1,
                           weight_decay=recipe.weight_decay)
        label_smoothing = recipe.label_smoothing

        def make_views(batch, gen):
            buf = slim_buffer(batch, recipe.pad_min_frames)
            return slim_train_view(buf, recipe, topology, generator=gen, frames=frames), buf.person_mask

        def eval_view(batch):
            buf = slim_buffer(batch, recipe.pad_min_frames)
            return slim_test_view(buf, frames), buf.person_mask
    else:
        model = FinetuneModel(encoder, head_config_for(encoder, num_classes, r.head_dropout, r.head_hidden)).to(dev)
        precision = resolve_precision(s.precision, dev, FINETUNE_RECIPE_PRECISION)
        amp = lambda: _autocast(dev, s.precision)  # noqa: E731
        layer_decay = 1.0 if encoder_state is None else r.layer_decay
        opt = adamw(finetune_param_groups(model, r.weight_decay, layer_decay), r.lr, r.betas)
        batch_size = min(r.batch_size, n)
        steps_per_epoch = max(1, n // batch_size)  # drop_last, as the reference loaders
        total_steps = r.epochs * steps_per_epoch
        sched = LRSchedule(opt, lr=r.lr, min_lr=r.min_lr, warmup_epochs=r.warmup_epochs, epochs=r.epochs,
                           steps_per_epoch=steps_per_epoch, weight_decay=r.weight_decay)
        label_smoothing = r.label_smoothing
        aug = DataSettings(crop_min=r.crop_min, crop_max=r.crop_max, min_crop_frames=r.min_crop_frames, rotation=r.rotation)
        frames = cfg.num_frames

        def make_views(batch, gen):
            return train_view(batch, frames, aug, generator=gen, dims=train.dims), None

        eval_view = None
    forward = model
    if ctx.distributed:
        from torch.nn.parallel import DistributedDataParallel

        forward = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    gen = torch.Generator().manual_seed(seed)
    order_rng = np.random.default_rng(seed)
    unit = "iteration" if slim else "epoch"
    st: dict[str, Any] = {"history": [], "best_logits": None, "best_top1": -1.0, "best_epoch": -1, "sel_val": -1.0,
                          "sel_epoch": -1, "sel_test": None, "last_logits": None, "epoch": 0, "batch_in_epoch": 0,
                          "perm": None, "pos": 0, "losses": [], "step": 0, "seconds": 0.0}
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
    step = int(st["step"])
    perm = None if st["perm"] is None else np.asarray(st["perm"], dtype=np.int64)
    pos = int(st.get("pos", 0))
    losses = list(st["losses"])
    t0 = time.perf_counter() - st["seconds"]
    projector = Projector(dev, total_steps, step)

    def save() -> None:
        if run is None:
            return
        rng_ranks = all_gather_objects({"gen": gen.get_state(), "torch": torch.get_rng_state(),
                                        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}, ctx)
        if ctx.is_main:
            from skelcli.engine.checkpoint import save_checkpoint

            loop = {**st, "epoch": step // steps_per_epoch, "batch_in_epoch": step % steps_per_epoch, "losses": list(losses),
                    "step": step, "pos": pos, "seconds": time.perf_counter() - t0,
                    "perm": None if perm is None else torch.from_numpy(np.asarray(perm, dtype=np.int64))}
            save_checkpoint(run.path / "last.pt", {
                "method": "finetune", "settings": run_settings or {}, "seed": seed, "epoch": step // steps_per_epoch, "step": step,
                "recipe": "slim" if slim else "mamp",
                "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "order_rng": order_rng.bit_generator.state, "rng_ranks": rng_ranks, "loop": loop, "precision": precision,
            })
        barrier(ctx)

    def stopping() -> bool:
        return stop is not None and any_rank(stop.received is not None, ctx)

    save_clock = SaveClock(s.save_interval_s)

    def next_rows() -> np.ndarray:
        """The global batch of this step. MAMP: a fresh permutation per epoch, drop_last. SLiM: an
        infinite stream of permutations (a batch may span two), as a sharded infinite sampler."""
        nonlocal perm, pos
        if not slim:
            b = step % steps_per_epoch
            if perm is None:  # the epoch's order, drawn at its start
                perm = order_rng.permutation(n)
            return perm[b * batch_size : (b + 1) * batch_size]
        parts, need = [], batch_size
        while need:
            if perm is None or pos >= n:
                perm, pos = order_rng.permutation(n), 0
            take = perm[pos : pos + need]
            pos += len(take)
            need -= len(take)
            parts.append(take)
        return np.concatenate(parts)

    def evaluate(split) -> np.ndarray:
        from contextlib import nullcontext

        # SLiM: autocast is inside the model, around the encoder only (the head stays fp32)
        return evaluate_logits(model, split, batch_size=s.eval_batch_size, device=dev, test_crop=getattr(r, "test_crop", 0.95),
                               precision=s.precision, view=eval_view, autocast=nullcontext if slim else amp)

    model.train()
    while step < total_steps:
        rows = next_rows()
        if ctx.distributed:  # this rank's share of the global batch
            rows = np.array_split(rows, ctx.world_size)[ctx.rank]
        batch = train.batch(rows, dev)
        views, person_mask = make_views(batch, gen)
        sched.apply(step)
        if slim:
            logits = forward(views, person_mask)  # autocast inside, around the encoder only
        else:
            with amp():
                logits = forward(views)
        loss = torch.nn.functional.cross_entropy(logits.float(), batch.label, label_smoothing=label_smoothing)
        if not torch.isfinite(loss):
            raise SkelError(f"non-finite fine-tuning loss at step {step} ({unit} {step // steps_per_epoch + 1}); lower the learning rate")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        step += 1
        line = projector.after(step)
        if line and notify is not None and ctx.is_main:
            notify(line)
        at_eval = step % steps_per_epoch == 0 or step == total_steps
        if not at_eval:
            if stopping():
                save()
                return {"interrupted": stop.received or "SIGTERM", "epoch": step // steps_per_epoch, "steps": step}
            continue
        if not slim:
            perm = None  # next epoch draws a new order
        done = step // steps_per_epoch if not slim else step
        evaluated = slim or done % s.eval_every == 0 or step == total_steps  # else an epoch without evaluation: checkpoint only
        if evaluated:
            logits = evaluate(test)
            top1 = float((logits.argmax(1) == test.labels).mean())
            row: dict[str, Any] = {unit: done, "step": step, "loss": float(np.mean(losses)), "test_top1": top1}
            losses = []
            st["last_logits"] = torch.from_numpy(logits)
            if top1 > st["best_top1"]:
                st.update(best_logits=st["last_logits"], best_top1=top1, best_epoch=done)
            if val is not None and len(val):
                vl = evaluate(val)
                row["val_top1"] = float((vl.argmax(1) == val.labels).mean())
                if row["val_top1"] > st["sel_val"]:
                    st.update(sel_val=row["val_top1"], sel_epoch=done, sel_test=top1)
            history.append(row)
            model.train()
            if run is not None and ctx.is_main:
                run.log({"kind": "epoch", **row})  # one row per evaluation (SLiM: every eval_every iterations)
        halt = step < total_steps and stopping()
        if step == total_steps or halt or save_clock.due(ctx):
            save()
            save_clock.reset()
        if evaluated and on_epoch is not None:
            on_epoch(len(history) - 1, row)
        if halt:
            return {"interrupted": stop.received or "SIGTERM", "epoch": step // steps_per_epoch, "steps": step}
    last = classification_metrics(st["last_logits"].numpy(), test.labels, num_classes)
    best = classification_metrics(st["best_logits"].numpy(), test.labels, num_classes)
    out: dict[str, Any] = {
        "seed": seed, "n_train": n, "n_test": len(test), "steps": step,
        "last_top1": last["top1"], "last_top5": last["top5"], "best_top1": best["top1"], "best_top5": best["top5"],
        "per_class": last["per_class"], "mean_class": last["mean_class"],
        "confusion": last["confusion"], "history": history, "seconds": time.perf_counter() - t0, "model": model.cpu(),
    }
    if slim:
        out.update({"iterations": total_steps, "best_iteration": st["best_epoch"], "reported_top1": last["top1"],
                    "reported": "final evaluation (SLiM finetune.py return value)", "precision": precision})
    else:
        out.update({"epochs": r.epochs, "best_epoch": st["best_epoch"], "reported_top1": best["top1"],
                    "reported": "best epoch on the test split (MAMP max_accuracy)"})
    if val is not None and len(val):
        out.update({"n_val": len(val), "val_best_top1": st["sel_val"], f"val_best_{unit}": st["sel_epoch"],
                    "test_top1_at_val_best": st["sel_test"]})
    return out


def _mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": float(statistics.fmean(values)), "std": float(statistics.stdev(values)) if len(values) > 1 else 0.0}


#: Settings that may change between a fine-tuning run and its resume.
_VOLATILE = {("finetune", "device"), ("finetune", "eval_batch_size"), ("finetune", "eval_every"), ("finetune", "precision"),
             ("finetune", "save_interval_s")}


def _repeat_dirs(out_dir: Path, repeats: int) -> list[Path]:
    return [out_dir] if repeats == 1 else [out_dir / f"repeat-{r}" for r in range(repeats)]


def resolve_finetune_recipe(name: str | None, method: str | None, settings: FinetuneSettings, *, overrides: list[str] | None = None,
                            slim_base: dict[str, Any] | None = None, slim_refused: list[str] | None = None):
    """(recipe, settings) of a fine-tuning run. ``name`` None = the checkpoint ``method``'s paper recipe
    (slim -> slim, every other -> mamp). mamp: ``settings``' recipe fields (its preset and options) then
    ``overrides`` (``--set field=value``), written back into the returned settings. slim:
    :class:`~skelcli.eval.recipes.SlimFinetuneRecipe` from ``slim_base`` then ``overrides``;
    ``slim_refused`` names options given that the slim recipe has no use for (a one-line error)."""
    from skelcli.eval.recipes import MampFinetuneRecipe, default_recipe_name, get_recipe

    name = name or default_recipe_name("finetune", method)
    if name == "mamp":
        base = {k: getattr(settings, k) for k in MampFinetuneRecipe.model_fields}
        recipe = get_recipe("finetune", name, method, overrides, base=base)
        return recipe, settings.model_copy(update=recipe.model_dump())
    if name == "slim":
        if slim_refused:
            raise SkelError(f"recipe slim (finetune) has no {', '.join(slim_refused)}; set its fields with --set "
                            "(e.g. --set iterations=2000 --set head_lr=1e-3)")
        if settings.balanced or settings.subsets != "exact":
            raise SkelError("recipe slim (finetune): its label subset is always SLiM's class-balanced seed-42 draw; "
                            "--balanced / --subsets apply to --recipe mamp")
    return get_recipe("finetune", name, method, overrides, base=slim_base if name == "slim" else None), settings


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
    recipe: Any = None,
    recipe_overrides: list[str] | None = None,
    slim_base: dict[str, Any] | None = None,
    slim_refused: list[str] | None = None,
) -> dict[str, Any]:
    """Full ``skel finetune``: load checkpoint and data, draw subsets, run ``repeats`` seeds, write the
    run folder (metrics.json, confusion .npy/.csv/.png, finetuned.pt per repeat). Returns the summary.

    ``recipe``: a recipe name (``mamp`` | ``slim``), a finetune Recipe, or None = the checkpoint's
    paper recipe (:func:`resolve_finetune_recipe`, with ``recipe_overrides`` / ``slim_base`` /
    ``slim_refused``); resolved before anything is written. The summary records it (``recipe``: its
    :meth:`~skelcli.eval.recipes.Recipe.describe`) and the number it reports (``reported``).

    Label subsets (``settings.label_fraction``), recorded as ``subsets`` with the distinct labelled
    clips used (``labelled_clips``) and the nominal int(N * fraction) (``nominal_labelled_clips``):

    * mamp, ``subsets="exact"`` (default): :func:`select_subset`, a true fraction (``--balanced``:
      stratified), drawn per repeat seed unless ``subset_seed`` is given.
    * mamp, ``subsets="official"``: :func:`mamp_official_subset`, the union of the per-rank draws of
      MAMP's 2-process runs (seeds ``subset_seed`` or 0 + rank) -- about twice the nominal labels
      (NTU60 xsub: 794 clips at 1 %, 7,584 at 10 %); every repeat reuses it, as the official 5 runs do.
    * slim: :func:`slim_subset`, SLiM's class-balanced seed-42 draw, the same for every repeat.

    The run folder follows the pretraining rules (skelcli/engine/rundir.py): locked while in use,
    settings.json written atomically, each repeat's ``last.pt`` saved after every evaluation and on SIGINT/SIGTERM
    (the summary then holds ``interrupted`` and nothing else is written), ``metrics.jsonl`` with one row per
    evaluation. ``resume="auto"`` continues every repeat from its last.pt (finished repeats are not retrained);
    a folder with fine-tuning checkpoints is refused without ``resume`` or ``force`` (old files move aside).
    ``tensorboard``: a factory ``folder -> mirror`` (:class:`skelcli.viz.tensorboard.TensorBoardLog`); each
    repeat's rows also go to ``<repeat>/tb/``, with its confusion matrix at the end (``finish(pngs=...)``).
    """
    from skelcli.engine.checkpoint import check_head_classes, load_encoder, save_checkpoint
    from skelcli.engine.config import check_encoder_fits
    from skelcli.engine.dist import is_main_process
    from skelcli.engine.rundir import RunDir, StopSignal, open_run, settings_differences
    from skelcli.eval.features import data_info, file_fingerprint, load_split
    from skelcli.eval.recipes import Recipe
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
    if isinstance(recipe, Recipe):
        rec = recipe
        if rec.name == "mamp":
            s = s.model_copy(update=rec.model_dump())
    else:
        rec, s = resolve_finetune_recipe(recipe, pretrain["method"], s, overrides=recipe_overrides, slim_base=slim_base,
                                         slim_refused=slim_refused)
    slim = rec.name == "slim"
    if slim:
        if not encoder_config.use_cls:
            raise SkelError("recipe slim (finetune) trains on the CLS token and this encoder has none; use --recipe mamp")
        if rec.n_last_blocks > encoder_config.depth:
            raise SkelError(f"recipe slim (finetune): n_last_blocks {rec.n_last_blocks} exceeds the encoder's depth {encoder_config.depth}")
    ft_json = to_jsonable(s)
    for key, default in (("subsets", "exact"), ("official_world_size", 2)):  # older run folders (and their resume) lack them
        if ft_json.get(key) == default:
            ft_json.pop(key)
    resolved = {"finetune": ft_json, "preset": preset, "split": protocol, "data": file_fingerprint(data_path),
                "checkpoint": None if checkpoint is None else file_fingerprint(checkpoint)}
    if slim:  # mamp's recipe fields are in "finetune" already (and older run folders have no "recipe")
        resolved["recipe"] = {"name": rec.name, "settings": to_jsonable(rec)}
    dirs = _repeat_dirs(out_dir, s.repeats)
    subsets = "official" if slim else s.subsets

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

        def note(msg: str) -> None:
            warnings_out.append(msg)
            if warn is not None:
                warn(msg)

        nominal = None if s.label_fraction is None else max(1, int(len(train_all) * s.label_fraction))
        fixed_subset = None
        if s.label_fraction is not None and slim:
            fixed_subset = slim_subset(train_all.labels, s.label_fraction, rec.subset_seed)
        elif s.label_fraction is not None and subsets == "official":
            fixed_subset, per_rank = mamp_official_subset(len(train_all), s.label_fraction, s.official_world_size,
                                                          s.subset_seed if s.subset_seed is not None else 0)
            note(f"--subsets official: the union of MAMP's {s.official_world_size} per-rank draws, {len(fixed_subset)} distinct "
                 f"labelled clips for a nominal {nominal} (label fraction {s.label_fraction:g}); every repeat uses it")
        with StopSignal() as stop:
            for r in range(s.repeats):
                seed = s.seed + r
                run_dir = RunDir(dirs[r])
                state_ckpt = None
                if resume == "auto" and run_dir.path.is_dir():
                    _, state_ckpt, notes = run_dir.find_resume(("model", "optimizer", "loop"))
                    for n_ in notes:
                        note(f"repeat {r}: {n_}")
                    if state_ckpt is not None and not force:
                        diff = settings_differences(state_ckpt.get("settings", {}), resolved, _VOLATILE)
                        if diff:
                            raise SkelError(f"{run_dir.path / 'last.pt'}: written with different settings ({', '.join(diff[:5])}); "
                                            "use --force to resume anyway")
                idx = np.arange(len(train_all))
                drawn = ""
                if fixed_subset is not None:
                    idx = fixed_subset
                elif s.label_fraction is not None:
                    sub_seed = s.subset_seed if s.subset_seed is not None else seed
                    drawn = f" (seed {sub_seed})"
                    idx = select_subset(train_all.labels, s.label_fraction, sub_seed, balanced=s.balanced, num_classes=num_classes)
                if s.label_fraction is not None:
                    miss = missing_classes(train_all.labels, idx, num_classes)
                    if miss:
                        note(f"label fraction {s.label_fraction}{drawn} leaves {len(miss)} class(es) without a training "
                             f"clip: {', '.join(map(str, miss[:20]))}{' ...' if len(miss) > 20 else ''}; use --balanced for at least "
                             "one clip per class")
                tr_idx, val_idx = carve_validation(np.sort(idx) if not slim else idx, s.val_fraction, seed)
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
                                        run=run_dir, resume=state_ckpt, stop=stop, run_settings=resolved, notify=notify,
                                        recipe=rec if slim else None, topology=dinfo.topology)
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
                        "settings": {"finetune": to_jsonable(s), "preset": preset, "recipe": rec.describe()},
                        "encoder_config": to_jsonable(model.encoder.config),
                        "encoder": model.encoder.state_dict(),
                        "head": model.head.state_dict(),
                        "head_config": model.head_config,
                        "pretraining_only": [],
                        "data": {"dataset": dinfo.dataset, "num_classes": num_classes, "split": protocol,
                                 "fingerprint": file_fingerprint(data_path)},
                        "pretrain_data": {k: pretrain[k] for k in ("dataset", "num_classes", "method", "epoch")},
                        "epoch": res.get("epochs", len(res["history"])),
                        "step": res["steps"],
                    })
                res.update({"repeat": r, "train_clips": int(len(tr_idx)), "labelled_clips": int(len(np.unique(idx))),
                            "confusion_files": files, "checkpoint": str(ckpt_path)})
                runs.append(jsonable_metrics(res))
    finally:
        top.release()
    reported_key = "last_top1" if slim else "best_top1"
    summary: dict[str, Any] = {
        "protocol": "finetune", "recipe": rec.describe(), "recipe_label": rec.label(), "preset": preset,
        "from_scratch": s.from_scratch, "split": protocol,
        "finetune_data": {"path": str(data_path), "dataset": dinfo.dataset, "num_classes": num_classes},
        "pretrain": pretrain, "label_fraction": s.label_fraction, "balanced": s.balanced,
        "subsets": subsets if s.label_fraction is not None else None,
        "labelled_clips": runs[0]["labelled_clips"], "nominal_labelled_clips": nominal, "repeats": s.repeats,
        "best_top1": _mean_std([r["best_top1"] for r in runs]), "last_top1": _mean_std([r["last_top1"] for r in runs]),
        "reported": {"key": reported_key, "what": runs[0]["reported"], "top1": _mean_std([r[reported_key] for r in runs])},
        "warnings": warnings_out, "settings": to_jsonable(s), "runs": runs,
    }
    if s.val_fraction > 0:
        summary["test_top1_at_val_best"] = _mean_std([r["test_top1_at_val_best"] for r in runs])
    write_json(out_dir / "metrics.json", summary)
    return summary
