"""A 2-D map of a frozen encoder's features, coloured by action (issue 16, item 3).

The features are the ones ``skel probe`` uses (:func:`skelcli.eval.features.extract_features`: test
transform, the method's person pooling, the same feature cache), and the title carries the kNN top-1
of those features computed by the probe's own :func:`skelcli.eval.probe.knn_probe` (train part =
bank, test part = queries, the same k), so the number equals ``skel probe --protocol knn``.

Projection (``method``):

* ``"pca"`` (default): scikit-learn PCA to 2 components — instant at any size;
* ``"tsne"``: scikit-learn t-SNE (``random_state=seed``, PCA initialisation, perplexity
  ``min(30, n - 1)``) of the L2-normalised features (Euclidean distance there ranks like the kNN's
  cosine distance). Not the default: on 2 CPU cores it takes about 12 s for 300 clips and 40 s for 2000.

The plotted part is subsampled to ``max_clips`` clips (a seeded draw without replacement, kept in file
order); the kNN number always uses every clip of both parts. Colours come from tab20 (its 10 strong
colours first, then the light ones), and every 20 classes switch to the next marker shape, so up to 160 classes stay distinguishable; the legend sits
outside the axes and lists only the classes that appear in the map.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from skelcli.errors import SkelError

METHODS = ("pca", "tsne")
PARTS = ("train", "test")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
#: tab20 with its 10 strong colours first, then their light partners: up to 10 classes get 10 different hues.
TAB20_ORDER = tuple(range(0, 20, 2)) + tuple(range(1, 20, 2))
#: Legend labels longer than this are cut with an ellipsis (NTU120 has 60-character action names).
MAX_LABEL = 32
DPI = 100


def check_options(method: str, part: str, max_clips: int | None, k: int) -> None:
    """One-line SkelErrors for bad ``--method``, ``--part``, ``--max-clips``, ``--k``."""
    if method not in METHODS:
        raise SkelError(f"unknown --method {method!r}; choose one of: {', '.join(METHODS)}")
    if part not in PARTS:
        raise SkelError(f"unknown --part {part!r}; choose one of: {', '.join(PARTS)}")
    if max_clips is not None and max_clips < 1:
        raise SkelError(f"--max-clips must be >= 1, got {max_clips}")
    if k < 1:
        raise SkelError(f"--k must be >= 1, got {k}")


def project(feats: np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    """features (n, F) -> map coordinates (n, 2) float64.

    PCA keeps ``min(2, n, F)`` components and pads with zero columns (1 clip -> the origin).
    t-SNE needs at least 4 clips (SkelError otherwise); its perplexity is ``min(30, n - 1)``.
    """
    feats = np.asarray(feats, dtype=np.float64)
    n, f = feats.shape
    if method == "pca":
        from sklearn.decomposition import PCA

        comps = min(2, n, f)
        out = np.zeros((n, 2))
        if comps > 0 and n > 1:
            out[:, :comps] = PCA(n_components=comps, random_state=seed).fit_transform(feats)
        return out
    if method == "tsne":
        from sklearn.manifold import TSNE

        from skelcli.eval.probe import l2_normalize

        if n < 4:
            raise SkelError(f"--method tsne needs at least 4 clips, got {n}; use --method pca")
        tsne = TSNE(n_components=2, perplexity=float(min(30, n - 1)), init="pca", random_state=seed)
        return tsne.fit_transform(l2_normalize(feats).astype(np.float64))
    raise SkelError(f"unknown --method {method!r}; choose one of: {', '.join(METHODS)}")


def class_labels(class_names: list[str] | None, num_classes: int) -> list[str]:
    """Legend text per class index: the file's ``class_names`` when it has one per class, else ``class <i>``."""
    if class_names is not None and len(class_names) == num_classes:
        names = [str(x) for x in class_names]
    else:
        names = [f"class {c}" for c in range(num_classes)]
    return [x if len(x) <= MAX_LABEL else x[: MAX_LABEL - 1] + "\u2026" for x in names]


def subsample(n: int, max_clips: int | None, seed: int) -> np.ndarray:
    """Indices of at most ``max_clips`` of ``n`` clips: all of them, or a seeded draw kept in order."""
    if max_clips is None or n <= max_clips:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_clips, replace=False))


def figure_size(n_classes: int) -> tuple[float, float]:
    """Figure inches for a map with ``n_classes`` legend entries: 6.5 x 6.5 for the axes and title plus
    2.4 inches of width per legend column (30 entries a column). The PNG is this times :data:`DPI` pixels."""
    return 6.5 + 2.4 * max(1, -(-n_classes // 30)), 6.5


def plot_embedding(xy: np.ndarray, labels: np.ndarray, names: list[str], title: str, out: Path) -> list[str]:
    """Scatter ``xy`` (n, 2) coloured by ``labels`` (n,) into the PNG ``out`` (written atomically).

    One legend entry per class present, in class-index order, outside the axes on the right (more
    columns past 30 entries). Returns the legend's texts as drawn.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from skelcli.paths import atomic_write

    present = np.unique(labels)
    cmap = plt.get_cmap("tab20")
    ncol = max(1, -(-len(present) // 30))
    fontsize = 8 if len(present) <= 30 else 6
    fig, ax = plt.subplots(figsize=figure_size(len(present)), layout="constrained")
    point = max(6.0, min(30.0, 3000.0 / max(len(labels), 1)))
    for i, c in enumerate(present):
        sel = labels == c
        ax.scatter(xy[sel, 0], xy[sel, 1], s=point, color=cmap(TAB20_ORDER[i % 20]), marker=MARKERS[(i // 20) % len(MARKERS)],
                   label=names[int(c)], alpha=0.85, linewidths=0.3, edgecolors="black")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)
    legend = ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, ncol=ncol, fontsize=fontsize,
                       markerscale=max(1.0, 24.0 / point) ** 0.5, frameon=False, title="action", title_fontsize=fontsize + 1)
    texts = [t.get_text() for t in legend.get_texts()]
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, lambda fh: fig.savefig(fh, format="png", dpi=DPI))
    finally:
        plt.close(fig)
    return texts


def embedding_map(
    checkpoint: str | Path | None,
    data: str | Path,
    out: str | Path,
    *,
    split: str = "xsub",
    part: str = "test",
    method: str = "pca",
    random_init: bool = False,
    max_clips: int | None = 2000,
    k: int = 20,
    batch_size: int = 128,
    person_pool: str | None = None,
    device: str = "auto",
    preset: str = "small",
    seed: int = 0,
    cache: bool = True,
) -> dict[str, Any]:
    """Write the PNG ``out``: the ``part`` clips of ``split`` mapped to 2-D by ``method``, coloured by action,
    the kNN top-1 (k neighbours, train part = bank, test part = queries) in the title.

    Encoder loading, features and kNN are the probe's (``prepare_encoder``, ``extract_features`` with the
    method's default person pooling unless ``person_pool``, ``knn_probe``); with ``cache`` the features
    are shared with ``skel probe`` through ``<checkpoint folder>/.features`` (no cache without a checkpoint).
    Returns a JSON-ready dict: knn_top1, k, method, n_points, n_part, part, split, classes_present, legend,
    path, and encoder details.
    """
    from skelcli.eval.features import check_batch_size, check_person_pool, default_person_pool, extract_features, prepare_encoder
    from skelcli.eval.probe import knn_probe

    t0 = time.perf_counter()
    check_options(method, part, max_clips, k)
    check_batch_size(batch_size)
    check_person_pool(person_pool)
    import matplotlib  # noqa: F401  (fail before the feature extraction when the [viz] extra is missing)

    encoder, info, dinfo = prepare_encoder(checkpoint, data, split, random_init=random_init, preset=preset, seed=seed)
    pool = person_pool or default_person_pool(info.method)
    cache_dir = Path(checkpoint).parent / ".features" if (cache and checkpoint) else None
    common = dict(batch_size=batch_size, device=device, cache_dir=cache_dir, person_pool=pool)
    feats = {p: extract_features(encoder, info, data, split, p, **common) for p in PARTS}
    num_classes = int(dinfo.num_classes)
    (tr_x, tr_y), (te_x, te_y) = feats["train"], feats["test"]
    knn = knn_probe(tr_x, tr_y, te_x, te_y, num_classes, k=k)
    top1 = float(knn.metrics["top1"])

    x, y = feats[part]
    keep = subsample(len(y), max_clips, seed)
    xy = project(x[keep], method, seed)
    names = class_labels(getattr(dinfo, "class_names", None), num_classes)
    who = "random init" if (random_init or checkpoint is None) else f"{info.method}, epoch {info.epoch}"
    title = (f"{dinfo.dataset} {split}/{part}: {len(keep)} clips, {method.upper() if method == 'pca' else 't-SNE'} "
             f"of {x.shape[1]}-d features ({who})\nkNN top-1 {100 * top1:.2f} % (k={knn.extra['k']}, "
             f"{len(tr_y)} train -> {len(te_y)} test clips)")
    out = Path(out)
    legend = plot_embedding(xy, y[keep], names, title, out)
    return {
        "knn_top1": top1, "k": int(knn.extra["k"]), "method": method, "n_points": int(len(keep)), "n_part": int(len(y)),
        "part": part, "split": split, "dataset": dinfo.dataset, "num_classes": num_classes,
        "classes_present": [int(c) for c in np.unique(y[keep])], "legend": legend,
        "checkpoint": str(checkpoint) if checkpoint else None, "random_init": random_init, "encoder_method": info.method,
        "epoch": info.epoch, "person_pool": pool, "feature_dim": int(x.shape[1]), "n_train": int(len(tr_y)),
        "n_test": int(len(te_y)), "path": str(out), "seconds": round(time.perf_counter() - t0, 3),
    }
