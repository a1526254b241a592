"""Frozen-encoder probes: scikit-learn logistic regression, the papers' SGD linear head, and kNN.

* ``linear`` / head ``sklearn`` (default): StandardScaler + LogisticRegression (lbfgs, max_iter
  1000) on pre-extracted test-transform features — fast and deterministic, not the papers' numbers.
* ``linear`` / head ``sgd``: the MAMP protocol (spec/mamp-and-data.md C.1): BatchNorm1d(affine=False,
  eps 1e-6) + Linear (trunc-normal std 0.01), SGD lr 0.1 momentum 0.9 wd 0, per-iteration cosine to 0,
  100 epochs, cross-entropy; every epoch the training clips are re-augmented (random crop 0.5-1 +
  rotation 0.3 rad, ``clips.train_view``) and re-encoded by the frozen encoder (eval mode). Test
  features use the centre crop. Reports last-epoch and best-epoch top-1 (the papers report the best).
* ``knn``: L2-normalised features, KNeighborsClassifier(k, metric="cosine", weights="distance").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from skelcli.errors import SkelError
from skelcli.eval.report import classification_metrics


@dataclass
class ProbeResult:
    """What every probe returns. ``metrics`` from :func:`classification_metrics` (top1, top5,
    per_class, mean_class, confusion, n); ``extra`` holds protocol details (best epoch, k, ...)."""

    protocol: str
    metrics: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)


def _full_proba(proba: np.ndarray, classes: np.ndarray, num_classes: int) -> np.ndarray:
    """sklearn's predict_proba columns cover only classes seen in training: expand to (n, num_classes)."""
    out = np.zeros((proba.shape[0], num_classes), dtype=np.float64)
    out[:, classes.astype(np.int64)] = proba
    return out


def sklearn_linear_probe(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, num_classes: int,
    *, max_iter: int = 1000, C: float = 1.0, seed: int = 0,
) -> ProbeResult:
    """StandardScaler + LogisticRegression(lbfgs) on features (n, F)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_x)
    clf = LogisticRegression(solver="lbfgs", max_iter=max_iter, C=C, random_state=seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        clf.fit(scaler.transform(train_x), train_y)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    proba = _full_proba(clf.predict_proba(scaler.transform(test_x)), clf.classes_, num_classes)
    return ProbeResult("linear", classification_metrics(proba, test_y, num_classes), {"head": "sklearn", "converged": converged, "max_iter": max_iter})


def l2_normalize(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(np.float32)


def knn_probe(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, num_classes: int, *, k: int = 20
) -> ProbeResult:
    """Distance-weighted cosine kNN on L2-normalised features; k is capped at the gallery size."""
    from sklearn.neighbors import KNeighborsClassifier

    k_eff = max(1, min(int(k), len(train_y)))
    clf = KNeighborsClassifier(n_neighbors=k_eff, metric="cosine", weights="distance", algorithm="brute")
    clf.fit(l2_normalize(train_x), train_y)
    proba = _full_proba(clf.predict_proba(l2_normalize(test_x)), clf.classes_, num_classes)
    return ProbeResult("knn", classification_metrics(proba, test_y, num_classes), {"k": k_eff})


def mamp_linear_recipe(dataset: str) -> tuple[float, int]:
    """(lr, global batch) of MAMP's linear probe for ``dataset`` (NTU's for any other data)."""
    from skelcli.eval.recipes import MampLinearRecipe

    return MampLinearRecipe().resolved(dataset)


def sgd_linear_probe(
    encoder: torch.nn.Module,
    train_split,
    test_x: np.ndarray,
    test_y: np.ndarray,
    num_classes: int,
    *,
    person_pool: str = "mean",
    epochs: int = 100,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    min_lr: float = 0.0,
    batch_size: int = 256,
    data_settings=None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    on_epoch: Callable[[int, float], None] | None = None,
) -> ProbeResult:
    """The papers' linear probe (spec C.1) with augmented re-encoding of the training clips each epoch.

    Batches of ``batch_size`` clips; the last partial batch of an epoch is dropped, as MAMP's loader
    does (``drop_last``). A split smaller than one batch trains on all of it as one batch per epoch.

    train_split: :class:`~skelcli.eval.features.SplitData`. test_x: (n_test, F) centre-crop
    features. The encoder stays frozen and in eval mode; only the head trains (BN in train mode).
    """
    from skelcli.data.clips import train_view
    from skelcli.engine.schedule import LRSchedule
    from skelcli.eval.features import encode_views, iter_batches, resolve_device
    from skelcli.eval.heads import LinearProbeHead
    from skelcli.settings import DataSettings

    dev = resolve_device(device)
    data_settings = data_settings or DataSettings()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)  # CPU draws, moved to the device by clips
    shuffle = np.random.default_rng(seed)
    encoder.eval().to(dev)
    for p in encoder.parameters():
        p.requires_grad_(False)
    head = LinearProbeHead(test_x.shape[1], num_classes).to(dev)
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    n = len(train_split)
    full = n // batch_size
    steps_per_epoch = max(1, full)
    sched = LRSchedule(opt, lr=lr, min_lr=min_lr, warmup_epochs=0, epochs=epochs, steps_per_epoch=steps_per_epoch,
                       weight_decay=weight_decay)
    test_t = torch.from_numpy(test_x).to(dev)
    frames = encoder.config.num_frames
    history: list[float] = []
    best = (-1.0, -1, None)
    step = 0
    for epoch in range(epochs):
        head.train()
        order = shuffle.permutation(n)
        for idx in list(iter_batches(n, batch_size))[:steps_per_epoch]:  # drop_last (one short batch if n < batch)
            rows = order[idx]
            if len(rows) < 2:  # BatchNorm needs two samples
                continue
            batch = train_split.batch(rows, dev)
            with torch.no_grad():
                feats = encode_views(encoder, train_view(batch, frames, data_settings, generator=gen, dims=train_split.dims), person_pool)
            sched.apply(step)
            loss = torch.nn.functional.cross_entropy(head(feats), batch.label)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        head.eval()
        with torch.no_grad():
            logits = head(test_t).cpu().numpy()
        top1 = float((logits.argmax(1) == test_y).mean())
        history.append(top1)
        if top1 > best[0]:
            best = (top1, epoch, logits)
        if on_epoch is not None:
            on_epoch(epoch, top1)
    metrics = classification_metrics(logits, test_y, num_classes)  # last epoch
    best_metrics = classification_metrics(best[2], test_y, num_classes)
    extra = {
        "head": "sgd", "epochs": epochs, "lr": lr, "head_batch_size": batch_size, "steps_per_epoch": steps_per_epoch,
        "last_top1": history[-1], "best_top1": best[0], "best_epoch": best[1] + 1, "best_top5": best_metrics["top5"],
        "history": history,
    }
    return ProbeResult("linear", metrics, extra)


def probe_recipe(kind: str, name: str | None, method: str | None, overrides: list[str] | None = None, *,
                 k: int | None = None, epochs: int | None = None, lr: float | None = None, head_batch_size: int | None = None,
                 person_pool: str | None = None, base: dict[str, Any] | None = None):
    """The recipe of a probe (``kind`` linear / knn) or of retrieval: ``name`` (None = the method's paper
    recipe), ``base`` values, the command's shortcut options (``--k``, ``--epochs``, ``--lr``,
    ``--head-batch-size``; each only where the recipe has that setting), then ``--set`` overrides. A
    shortcut the recipe does not take is a one-line SkelError."""
    from skelcli.eval.recipes import get_recipe

    probe = get_recipe(kind, name, method)  # validates the name, picks the default
    shortcuts = {"k": k, "epochs": epochs, "lr": lr, "batch_size": head_batch_size}
    flags = {"k": "--k", "epochs": "--epochs", "lr": "--lr", "batch_size": "--head-batch-size"}
    base = dict(base or {})
    fields = type(probe).model_fields
    for key, value in shortcuts.items():
        if value is None:
            continue
        if key == "k" and "report_k" in fields:  # SLiM's kNN: --k picks the reported k (added to the list)
            base["report_k"] = value
            base["ks"] = tuple(sorted({*probe.ks, int(value)}))
        elif key in fields:
            base[key] = value
        else:
            raise SkelError(f"{flags[key]} does not apply to the {probe.name} {kind} recipe "
                            f"(its settings: {', '.join(fields)}; change them with --set field=value)")
    if person_pool is not None and "person_pool" in fields:
        base["person_pool"] = person_pool
    elif person_pool is not None and probe.name == "slim":
        raise SkelError(f"--person-pool does not apply to the slim {kind} recipe (it sums / concatenates the persons as the "
                        "official code does)")
    return get_recipe(kind, probe.name, method, overrides, base=base)


def run_probe(
    checkpoint: str | Path | None,
    data_path: str | Path,
    protocol: str,
    out_dir: str | Path,
    *,
    kind: str = "linear",
    recipe: str | None = None,
    recipe_overrides: list[str] | None = None,
    head: str | None = None,
    k: int | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int = 128,
    head_batch_size: int | None = None,
    person_pool: str | None = None,
    device: str = "auto",
    random_init: bool = False,
    preset: str = "small",
    seed: int = 0,
    cache: bool = True,
    on_epoch: Callable[[int, float], None] | None = None,
    confusion_png: bool = True,
) -> dict[str, Any]:
    """``skel probe``: the recipe's probe of a frozen encoder; writes confusion files (the PNG only with
    ``confusion_png``: about a second of matplotlib each) and ``metrics.json`` into ``out_dir``. Returns
    the JSON-ready summary, whose ``recipe`` holds the recipe's name, sources and settings
    (:mod:`skelcli.eval.recipes`).

    ``recipe`` None = the checkpoint method's paper recipe (linear: SLiM -> ``slim``, others -> ``mamp``;
    kNN: SLiM -> ``slim``, others -> ``skel``). ``head`` is the older spelling: ``sklearn`` or ``sgd``
    (= the ``mamp`` recipe). ``batch_size``: clips per feature-extraction batch."""
    from skelcli.eval.features import check_batch_size, check_person_pool, default_person_pool, extract_features, load_split, prepare_encoder
    from skelcli.eval.report import jsonable_metrics, save_confusion, write_json

    if kind not in ("linear", "knn"):
        raise SkelError(f"unknown protocol {kind!r}; available: linear, knn")
    if head is not None:
        if head not in ("sklearn", "sgd"):
            raise SkelError(f"unknown head {head!r}; available: sklearn, sgd")
        if kind == "linear":
            legacy = "mamp" if head == "sgd" else "sklearn"
            if recipe is not None and recipe != legacy:
                raise SkelError(f"--head {head} and --recipe {recipe} contradict each other; use --recipe alone")
            recipe = legacy
    if k is not None and k < 1:
        raise SkelError(f"--k must be >= 1, got {k}")
    check_batch_size(batch_size)
    check_person_pool(person_pool)
    if epochs is not None and epochs < 1:
        raise SkelError(f"--epochs must be >= 1, got {epochs}")
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise SkelError(f"--lr must be a finite number > 0, got {lr}")
    if head_batch_size is not None and head_batch_size < 2:
        raise SkelError(f"--head-batch-size must be >= 2 (the head's BatchNorm needs two clips), got {head_batch_size}")
    encoder, info, dinfo = prepare_encoder(checkpoint, data_path, protocol, random_init=random_init, preset=preset, seed=seed)
    rec = probe_recipe(kind, recipe, info.method, recipe_overrides, k=k, epochs=epochs, lr=lr, head_batch_size=head_batch_size,
                       person_pool=person_pool)
    out_dir = Path(out_dir)
    num_classes = int(dinfo.num_classes)
    notes: list[str] = []
    depth = encoder.config.depth
    if kind == "linear" and rec.name == "slim" and max(rec.n_last_blocks) > depth:
        # "The last 4 blocks" needs 4 blocks: a shallower encoder (the small preset has 2) uses all of its own.
        capped = tuple(sorted({min(n, depth) for n in rec.n_last_blocks}))
        notes.append(f"n_last_blocks {list(rec.n_last_blocks)} capped at the encoder's {depth} blocks: {list(capped)}")
        rec = rec.model_copy(update={"n_last_blocks": capped})
    if rec.name == "slim":
        result, tr_n, te_n, te_y, feat_dim, pool = _slim_probe(encoder, data_path, protocol, kind, rec, device=device, seed=seed,
                                                                on_epoch=on_epoch)
    else:
        pool = getattr(rec, "person_pool", None) or person_pool or default_person_pool(info.method)
        cache_dir = (Path(checkpoint).parent / ".features" if checkpoint else out_dir / ".features") if cache else None
        train_split = load_split(data_path, protocol, "train") if rec.name == "mamp" else None
        crop = getattr(rec, "test_crop", 0.95)
        common = dict(batch_size=batch_size, device=device, cache_dir=cache_dir, person_pool=pool, test_crop=crop)
        tr_x, tr_y = extract_features(encoder, info, data_path, protocol, "train", split=train_split, **common)
        te_x, te_y = extract_features(encoder, info, data_path, protocol, "test", **common)
        tr_n, te_n, feat_dim = len(tr_y), len(te_y), int(tr_x.shape[1])
        if kind == "knn":
            result = knn_probe(tr_x, tr_y, te_x, te_y, num_classes, k=rec.k)
        elif rec.name == "sklearn":
            result = sklearn_linear_probe(tr_x, tr_y, te_x, te_y, num_classes, max_iter=rec.max_iter, C=rec.C, seed=seed)
        else:
            from skelcli.settings import DataSettings

            rec_lr, rec_batch = rec.resolved(str(dinfo.dataset))
            views = DataSettings(crop_min=rec.crop_min, crop_max=rec.crop_max, min_crop_frames=rec.min_crop_frames, rotation=rec.rotation)
            result = sgd_linear_probe(encoder, train_split, te_x, te_y, num_classes, person_pool=pool, epochs=rec.epochs, lr=rec_lr,
                                      momentum=rec.momentum, weight_decay=rec.weight_decay, min_lr=rec.min_lr, batch_size=rec_batch,
                                      data_settings=views, device=device, seed=seed, on_epoch=on_epoch)
            result.extra["top1_reported"] = "best epoch on the test split (MAMP's max_accuracy)"
    files = save_confusion(result.metrics["confusion"], out_dir, class_names=getattr(dinfo, "class_names", None), png=confusion_png)
    summary = {
        "protocol": kind, "recipe": rec.describe(), "recipe_label": rec.label(),
        "head": {"mamp": "sgd", "sklearn": "sklearn", "slim": "slim-grid"}.get(rec.name) if kind == "linear" else None,
        "checkpoint": str(checkpoint) if checkpoint else None, "random_init": random_init,
        "method": info.method, "pretrain_dataset": info.dataset, "epoch": info.epoch,
        "data": str(data_path), "dataset": dinfo.dataset, "split": protocol, "num_classes": num_classes,
        "classes_present": int(len(np.unique(te_y))),
        "person_pool": pool, "feature_dim": feat_dim, "n_train": int(tr_n), "n_test": int(te_n),
        **jsonable_metrics(result.metrics), **result.extra, "notes": notes, "files": files,
    }
    write_json(out_dir / "metrics.json", summary)
    return summary


def _slim_probe(encoder, data_path, protocol: str, kind: str, rec, *, device: str, seed: int, on_epoch=None):
    """SLiM's own linear grid or k-NN (:mod:`skelcli.eval.slim_eval`). Returns (ProbeResult whose
    ``top1`` is the paper's number, n_train, n_test, test labels, feature width, person pooling)."""
    from skelcli.eval.features import load_split
    from skelcli.eval.finetune import carve_validation
    from skelcli.eval.report import classification_metrics
    from skelcli.eval.slim_eval import slim_knn, slim_linear_grid

    train = load_split(data_path, protocol, "train")
    test = load_split(data_path, protocol, "test")
    num_classes = train.num_classes
    if kind == "knn":
        res = slim_knn(encoder, train, test, rec, device=device)
        logits = np.zeros((len(test), num_classes), dtype=np.float32)
        logits[:, : res["scores"].shape[1]] = res["scores"][:, :num_classes]  # the vote at report_k (argmax = prediction)
        extra = {"k": rec.report_k, "accuracy_at_k": {str(kk): float(v) for kk, v in res["accuracy"].items()},
                 "top1_reported": f"k = {rec.report_k} (SLiM scripts/eval_knn.sh)"}
        return ProbeResult("knn", classification_metrics(logits, test.labels, num_classes), extra), len(train), len(test), test.labels, \
            int(res["feature_dim"]), "concat"
    val = None
    if rec.val_fraction > 0:
        tr_idx, val_idx = carve_validation(np.arange(len(train)), rec.val_fraction, seed)
        train, val = train.subset(tr_idx), train.subset(val_idx)
    res = slim_linear_grid(encoder, train, test, rec, val_split=val, device=device, seed=seed,
                           on_eval=(lambda it, top1: on_epoch(it - 1, top1, unit="iteration")) if on_epoch else None)
    logits = np.asarray(res.pop("logits_best"))
    metrics = classification_metrics(logits, test.labels, num_classes)
    best = res["best"]
    extra = {
        "best_head": best, "val_chosen": res.get("val_chosen"), "num_heads": res["num_heads"], "heads": res["heads"],
        "history": res.get("history"), "iterations": res.get("iterations"), "head_batch_size": res.get("batch_size"),
        "n_val": 0 if val is None else len(val),
        "top1_reported": "best head of the grid on the test split at the final evaluation (SLiM linear.py); "
                         "val_chosen = the head chosen on a validation split carved from train",
    }
    width = max(h["n"] + int(h["avgpool"]) for h in res["heads"]) * encoder.config.dim
    return ProbeResult("linear", metrics, extra), len(train), len(test), test.labels, int(width), "sum_valid"
