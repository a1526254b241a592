"""Classification metrics and their artefacts: top-k, per-class accuracy, confusion matrix (.npy, .csv, .png).

The confusion-matrix figure shows the classes present, row-normalised (each true class sums to 1) and
sorted by true-class accuracy, worst first (:func:`seriation`); :func:`top_confusions` lists the
largest off-diagonal cells for the JSON results and the summary tables. The figure uses matplotlib
when it is installed; without it a plain heat-map PNG (one pixel block per cell, white = 0, dark
blue = the whole row) is written with the standard library's zlib, so a PNG is always produced.
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


def row_normalise(cm: np.ndarray) -> np.ndarray:
    """(n, n) counts -> float64 shares: each row with samples sums to 1 (row = true class), empty rows stay 0."""
    cm = np.asarray(cm, dtype=np.float64)
    row = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, row, out=np.zeros(cm.shape, dtype=np.float64), where=row > 0)


def seriation(cm: np.ndarray) -> np.ndarray:
    """Display order of the classes of a square count matrix: true-class accuracy ascending (the most
    confused class first), classes without a true sample (only ever predicted) last, ties by index.
    Deterministic and simple; the confusions of the worst classes gather in the top rows."""
    cm = np.asarray(cm)
    support = cm.sum(axis=1)
    acc = np.divide(np.diag(cm).astype(np.float64), support, out=np.full(len(support), np.inf), where=support > 0)
    return np.lexsort((np.arange(len(acc)), acc))


def class_label_list(class_names: list[str] | None, num_classes: int) -> list[str]:
    """``class_names`` when there is one per class, else the class indices as text (the .csv row numbers)."""
    if class_names is not None and len(class_names) == num_classes:
        return [str(x) for x in class_names]
    return [str(c) for c in range(num_classes)]


def top_confusions(cm: np.ndarray, class_names: list[str] | None = None, k: int = 10) -> list[dict[str, Any]]:
    """The ``k`` largest off-diagonal cells of a confusion matrix (row = true, column = predicted).

    Each entry: true / predicted (class names, or the index as text), true_index / predicted_index,
    count, share_of_true (count / clips of the true class). Order: count descending, then share
    descending, then true index, then predicted index (deterministic ties). Zero cells are left out.
    """
    cm = np.asarray(cm, dtype=np.int64)
    names = class_label_list(class_names, cm.shape[0])
    support = cm.sum(axis=1)
    rows, cols = np.nonzero(cm * (1 - np.eye(cm.shape[0], dtype=np.int64)))
    pairs = [(int(cm[t, p]), float(cm[t, p] / support[t]), int(t), int(p)) for t, p in zip(rows, cols)]
    pairs.sort(key=lambda x: (-x[0], -x[1], x[2], x[3]))
    return [{"true": names[t], "predicted": names[p], "true_index": t, "predicted_index": p, "count": c, "share_of_true": share}
            for c, share, t, p in pairs[: max(int(k), 0)]]


def save_confusion(cm: np.ndarray, out_dir: Path, stem: str = "confusion", class_names: list[str] | None = None,
                   top_k: int = 10, png: bool = True) -> dict[str, Any]:
    """Write ``<stem>.npy``, ``<stem>.csv`` (the full num_classes x num_classes counts, class-index order)
    and, with ``png``, ``<stem>.png`` into out_dir. Returns the paths (keys npy, csv and, with ``png``, png) and
    ``top_confusions``: the :func:`top_confusions` list (``top_k`` pairs) for the JSON results.

    The PNG shows only the :func:`present_classes`, row-normalised (each true class sums to 1), in the
    :func:`seriation` order (accuracy ascending), labelled with ``class_names`` when given, else with
    the class index. Under torchrun only rank 0 writes (every rank gets the same dict)."""
    from skelcli.engine.dist import is_main_process

    out_dir = Path(out_dir)
    paths = {"npy": out_dir / f"{stem}.npy", "csv": out_dir / f"{stem}.csv", **({"png": out_dir / f"{stem}.png"} if png else {})}
    result: dict[str, Any] = {k: str(v) for k, v in paths.items()}
    result["top_confusions"] = top_confusions(cm, class_names, k=top_k)
    if not is_main_process():
        return result
    out_dir.mkdir(parents=True, exist_ok=True)
    np.save(paths["npy"], cm)
    np.savetxt(paths["csv"], cm, fmt="%d", delimiter=",")
    if not png:
        return result
    keep = present_classes(cm)
    if len(keep) == 0:
        keep = np.arange(cm.shape[0])
    names = class_label_list(class_names, cm.shape[0])
    keep = keep[seriation(np.asarray(cm)[np.ix_(keep, keep)])]
    shown = np.asarray(cm)[np.ix_(keep, keep)]
    labels = [names[c] for c in keep]
    try:
        _confusion_png_matplotlib(shown, paths["png"], labels, cm.shape[0])
    except ImportError:
        write_heatmap_png(shown, paths["png"])
    return result


def _short(label: str, limit: int = 32) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "\u2026"


def _confusion_png_matplotlib(cm: np.ndarray, path: Path, labels: list[str], num_classes: int) -> None:
    """Row-normalised heat map of the counts ``cm`` (the present classes, already in display order) with
    ``labels`` on both axes and a colour bar; up to 20 classes each cell with a share shows it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = cm.shape[0]
    norm = row_normalise(cm)
    labels = [_short(x) for x in labels]
    longest = max((len(x) for x in labels), default=1)
    fontsize = 9 if n <= 20 else 7.5 if n <= 40 else 6.5 if n <= 80 else 5
    size = min(3.5 + n * (0.32 if n <= 20 else 0.2 if n <= 60 else 0.16) + longest * fontsize * 0.011, 30)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (sorted by accuracy, worst first)")
    if n <= 130:
        ax.set_xticks(range(n), labels, rotation=60 if n <= 20 else 90, ha="right" if n <= 20 else "center",
                      rotation_mode="anchor" if n <= 20 else "default", fontsize=fontsize)
        ax.set_yticks(range(n), labels, fontsize=fontsize)
    if n <= 20:
        for t, p in zip(*np.nonzero(cm)):
            share = norm[t, p]
            ax.text(p, t, f"{share:.2f}".lstrip("0") if share < 1 else "1", ha="center", va="center", fontsize=fontsize - 1,
                    color="white" if share > 0.5 else "black")
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    bar.set_label("share of the true class", fontsize=9)
    ax.set_title(f"confusion matrix (row-normalised, {int(cm.sum())} clips)\n"
                 f"{n} of {num_classes} classes occur as a label or a prediction", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_heatmap_png(cm: np.ndarray, path: Path, cell: int | None = None) -> None:
    """Row-normalised heat map as an 8-bit RGB PNG (no dependencies): white = 0, dark blue = 1."""
    cm = np.asarray(cm, dtype=np.float64)
    n = max(cm.shape[0], 1)
    cell = cell or max(2, min(24, 480 // n))
    norm = row_normalise(cm)
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
