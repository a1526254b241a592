"""Classification metrics and their artefacts: top-k, per-class accuracy, confusion matrix (.npy, .csv, .png).

The confusion-matrix figure uses matplotlib when it is installed; without it a plain heat-map PNG
(one pixel block per cell, white = 0, dark blue = row maximum) is written with the standard
library's zlib, so a PNG is always produced.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np


def confusion_matrix(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) int64 counts; row = true class, column = predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(labels, dtype=np.int64), np.asarray(pred, dtype=np.int64)), 1)
    return cm


def classification_metrics(scores: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, Any]:
    """Metrics from per-class scores.

    scores: (n, num_classes) — logits, probabilities or any score where larger = more likely.
    labels: (n,) int. Returns top1, top5 (None when num_classes <= 5: it would be trivially 1),
    per_class (list: accuracy of each class, None for classes with no test sample), mean_class
    accuracy, confusion (ndarray) and n.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if scores.ndim != 2 or scores.shape[0] != labels.shape[0]:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} do not match")
    pred = scores.argmax(axis=1)
    top1 = float((pred == labels).mean()) if len(labels) else float("nan")
    top5 = None
    if num_classes > 5 and len(labels):
        # Stable descending order so ties resolve toward the lower class index, as argmax does.
        order = np.argsort(-scores, axis=1, kind="stable")[:, :5]
        top5 = float((order == labels[:, None]).any(axis=1).mean())
    cm = confusion_matrix(pred, labels, num_classes)
    return {"top1": top1, "top5": top5, **per_class_accuracy(cm), "confusion": cm, "n": int(len(labels))}


def metrics_from_predictions(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, Any]:
    """Like :func:`classification_metrics` for hard predictions (no top-5)."""
    pred = np.asarray(pred, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    cm = confusion_matrix(pred, labels, num_classes)
    top1 = float((pred == labels).mean()) if len(labels) else float("nan")
    return {"top1": top1, "top5": None, **per_class_accuracy(cm), "confusion": cm, "n": int(len(labels))}


def per_class_accuracy(cm: np.ndarray) -> dict[str, Any]:
    support = cm.sum(axis=1)
    per_class = [float(cm[i, i] / support[i]) if support[i] else None for i in range(cm.shape[0])]
    present = [a for a in per_class if a is not None]
    return {"per_class": per_class, "mean_class": float(np.mean(present)) if present else float("nan")}


def jsonable_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Drop ndarray entries (the confusion matrix goes to its own files) and NaN -> None."""
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, np.ndarray):
            continue
        if isinstance(value, float) and math.isnan(value):
            value = None
        out[key] = value
    return out


def present_classes(cm: np.ndarray) -> np.ndarray:
    """Indices of the classes that occur in a confusion matrix: as a true label (row sum > 0) or as a
    prediction (column sum > 0). A file with 16 of its 60 classes gives a 16-entry plot, and no
    prediction drops out of a row."""
    cm = np.asarray(cm)
    return np.nonzero((cm.sum(axis=1) > 0) | (cm.sum(axis=0) > 0))[0]


def save_confusion(cm: np.ndarray, out_dir: Path, stem: str = "confusion", class_names: list[str] | None = None) -> dict[str, str]:
    """Write ``<stem>.npy``, ``<stem>.csv`` (the full num_classes x num_classes matrix) and ``<stem>.png``
    into out_dir; returns the paths written. The PNG shows only the :func:`present_classes`, labelled
    with ``class_names`` when given, else with the class index (the file's 0-based label, the row of
    the .csv). Under torchrun only rank 0 writes (every rank gets the paths)."""
    from skelcli.engine.dist import is_main_process

    out_dir = Path(out_dir)
    paths = {"npy": out_dir / f"{stem}.npy", "csv": out_dir / f"{stem}.csv", "png": out_dir / f"{stem}.png"}
    if not is_main_process():
        return {k: str(v) for k, v in paths.items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    np.save(paths["npy"], cm)
    np.savetxt(paths["csv"], cm, fmt="%d", delimiter=",")
    keep = present_classes(cm)
    if len(keep) == 0:
        keep = np.arange(cm.shape[0])
    names = list(class_names) if class_names is not None and len(class_names) == cm.shape[0] else [str(c) for c in range(cm.shape[0])]
    shown = np.asarray(cm)[np.ix_(keep, keep)]
    labels = [names[c] for c in keep]
    try:
        _confusion_png_matplotlib(shown, paths["png"], labels, cm.shape[0])
    except ImportError:
        write_heatmap_png(shown, paths["png"])
    return {k: str(v) for k, v in paths.items()}


def _confusion_png_matplotlib(cm: np.ndarray, path: Path, labels: list[str], num_classes: int) -> None:
    """Row-normalised heat map of ``cm`` (the present classes only) with ``labels`` on both axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = cm.shape[0]
    row = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, row, out=np.zeros(cm.shape, dtype=np.float64), where=row > 0)
    longest = max((len(x) for x in labels), default=1)
    size = min(4 + n * 0.18 + longest * 0.06, 24)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 60:
        fontsize = 8 if n <= 20 else 6
        ax.set_xticks(range(n), labels, rotation=90, fontsize=fontsize)
        ax.set_yticks(range(n), labels, fontsize=fontsize)
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(f"confusion matrix (row-normalised)\n{n} of {num_classes} classes occur as a label or a prediction", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_heatmap_png(cm: np.ndarray, path: Path, cell: int | None = None) -> None:
    """Row-normalised heat map as an 8-bit RGB PNG (no dependencies): white = 0, dark blue = 1."""
    cm = np.asarray(cm, dtype=np.float64)
    n = max(cm.shape[0], 1)
    cell = cell or max(2, min(24, 480 // n))
    row = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, row, out=np.zeros(cm.shape, dtype=np.float64), where=row > 0)
    white, blue = np.array([255.0, 255.0, 255.0]), np.array([8.0, 48.0, 107.0])
    rgb = (white + (blue - white) * norm[..., None]).round().astype(np.uint8)  # (n, n, 3)
    img = np.repeat(np.repeat(rgb, cell, axis=0), cell, axis=1)
    h, w = img.shape[:2]
    raw = b"".join(b"\x00" + img[y].tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    Path(path).write_bytes(png)


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` as indented JSON (numpy values converted); only rank 0 under torchrun."""
    from skelcli.engine.dist import is_main_process

    path = Path(path)
    if not is_main_process():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    return path


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
