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


#: MAMP's linear-probe recipe per dataset, (lr, global batch): main_linprobe.py run by script_linprobe.sh on
#: 2 GPUs with the config's per-GPU batch (config/*/linprobe_t120_layer8.yaml; spec/protocols-and-checkpoints.md
#: 3.1): NTU 0.1 at 2 x 128, PKU-I 0.1 at 2 x 64, PKU-II 0.01 at 2 x 16. Absolute learning rates (no
#: batch scaling); the training loader drops the last partial batch.
MAMP_LINEAR = {"ntu60": (0.1, 256), "ntu120": (0.1, 256), "pku-mmd-v1": (0.1, 128), "pku-mmd-v2": (0.01, 32)}
MAMP_LINEAR_DEFAULT = (0.1, 256)


def mamp_linear_recipe(dataset: str) -> tuple[float, int]:
    """(lr, global batch) of MAMP's linear probe for ``dataset`` (NTU's for any other data)."""
    return MAMP_LINEAR.get(dataset, MAMP_LINEAR_DEFAULT)


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
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=momentum, weight_decay=0.0)
    n = len(train_split)
    full = n // batch_size
    steps_per_epoch = max(1, full)
    sched = LRSchedule(opt, lr=lr, min_lr=0.0, warmup_epochs=0, epochs=epochs, steps_per_epoch=steps_per_epoch, weight_decay=0.0)
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


def run_probe(
    checkpoint: str | Path | None,
    data_path: str | Path,
    protocol: str,
    out_dir: str | Path,
    *,
    kind: str = "linear",
    head: str = "sklearn",
    k: int = 20,
    epochs: int = 100,
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
) -> dict[str, Any]:
    """``skel probe``: features of the train and test splits, then the probe; writes confusion files and
    ``metrics.json`` into ``out_dir``. Returns the JSON-ready summary.

    ``batch_size``: clips per feature-extraction batch. The sgd head follows MAMP's recipe
    (:func:`mamp_linear_recipe`: the data set's lr and global batch) unless ``lr`` / ``head_batch_size``
    are given; the result's ``recipe`` says which."""
    from skelcli.eval.features import check_batch_size, check_person_pool, default_person_pool, extract_features, load_split, prepare_encoder
    from skelcli.eval.report import jsonable_metrics, save_confusion, write_json

    if kind not in ("linear", "knn"):
        raise SkelError(f"unknown protocol {kind!r}; available: linear, knn")
    if head not in ("sklearn", "sgd"):
        raise SkelError(f"unknown head {head!r}; available: sklearn, sgd")
    if k < 1:
        raise SkelError(f"--k must be >= 1, got {k}")
    check_batch_size(batch_size)
    check_person_pool(person_pool)
    if epochs < 1:
        raise SkelError(f"--epochs must be >= 1, got {epochs}")
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise SkelError(f"--lr must be a finite number > 0, got {lr}")
    if head_batch_size is not None and head_batch_size < 2:
        raise SkelError(f"--head-batch-size must be >= 2 (the head's BatchNorm needs two clips), got {head_batch_size}")
    encoder, info, dinfo = prepare_encoder(checkpoint, data_path, protocol, random_init=random_init, preset=preset, seed=seed)
    pool = person_pool or default_person_pool(info.method)
    out_dir = Path(out_dir)
    cache_dir = (Path(checkpoint).parent / ".features" if checkpoint else out_dir / ".features") if cache else None
    num_classes = int(dinfo.num_classes)
    train_split = load_split(data_path, protocol, "train") if (kind == "linear" and head == "sgd") else None
    common = dict(batch_size=batch_size, device=device, cache_dir=cache_dir, person_pool=pool)
    tr_x, tr_y = extract_features(encoder, info, data_path, protocol, "train", split=train_split, **common)
    te_x, te_y = extract_features(encoder, info, data_path, protocol, "test", **common)
    if kind == "knn":
        result = knn_probe(tr_x, tr_y, te_x, te_y, num_classes, k=k)
    elif head == "sklearn":
        result = sklearn_linear_probe(tr_x, tr_y, te_x, te_y, num_classes, seed=seed)
    else:
        recipe_lr, recipe_batch = mamp_linear_recipe(str(dinfo.dataset))
        result = sgd_linear_probe(encoder, train_split, te_x, te_y, num_classes, person_pool=pool, epochs=epochs,
                                  lr=recipe_lr if lr is None else lr, batch_size=head_batch_size or recipe_batch,
                                  device=device, seed=seed, on_epoch=on_epoch)
        custom = [name for name, v in (("lr", lr), ("head batch", head_batch_size)) if v is not None]
        result.extra["recipe"] = "mamp" + (f" ({', '.join(custom)} set by hand)" if custom else "")
    files = save_confusion(result.metrics["confusion"], out_dir, class_names=getattr(dinfo, "class_names", None))
    summary = {
        "protocol": kind, "head": head if kind == "linear" else None,
        "checkpoint": str(checkpoint) if checkpoint else None, "random_init": random_init,
        "method": info.method, "pretrain_dataset": info.dataset, "epoch": info.epoch,
        "data": str(data_path), "dataset": dinfo.dataset, "split": protocol, "num_classes": num_classes,
        "classes_present": int(len(np.unique(te_y))),
        "person_pool": pool, "feature_dim": int(tr_x.shape[1]), "n_train": int(len(tr_y)), "n_test": int(len(te_y)),
        **jsonable_metrics(result.metrics), **result.extra, "files": files,
    }
    write_json(out_dir / "metrics.json", summary)
    return summary
