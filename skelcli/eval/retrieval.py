"""Action retrieval (spec/mamp-and-data.md H; CMD / ISC protocol).

The training split is the gallery, the test split the queries; features are L2-normalised and
compared by cosine similarity. Reported:

* ``top1``: sklearn ``KNeighborsClassifier(n_neighbors=1, metric="cosine")`` fitted on the gallery —
  the number the papers call action-retrieval accuracy;
* ``mAP``: mean over queries of average precision over the *full* ranking of the gallery (a gallery
  item is relevant when it has the query's label; queries whose class is absent from the gallery
  have no AP and are left out — their count is reported);
* ``precision@k`` for k in ``ks`` (default 1, 5, 10): fraction of the k nearest gallery items that
  share the query's label, averaged over queries.

Ties in similarity are broken by gallery order (stable sort).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from skelcli.eval.probe import l2_normalize


def ranking_metrics(
    gallery_x: np.ndarray, gallery_y: np.ndarray, query_x: np.ndarray, query_y: np.ndarray,
    ks: Sequence[int] = (1, 5, 10), chunk: int = 512,
) -> dict[str, Any]:
    """mAP and precision@k from cosine rankings. Features (n, F); labels (n,). Chunked over queries
    so memory stays at chunk x gallery."""
    g = l2_normalize(gallery_x)
    q = l2_normalize(query_x)
    gy = np.asarray(gallery_y, dtype=np.int64)
    qy = np.asarray(query_y, dtype=np.int64)
    ks = [int(k) for k in ks]
    prec_sum = {k: 0.0 for k in ks}
    ap_sum, ap_count = 0.0, 0
    ranks = np.arange(1, len(gy) + 1, dtype=np.float64)
    for start in range(0, len(qy), chunk):
        sim = q[start : start + chunk] @ g.T  # (c, n_gallery)
        order = np.argsort(-sim, axis=1, kind="stable")
        rel = gy[order] == qy[start : start + chunk, None]  # (c, n_gallery) bool, ranked
        for k in ks:
            prec_sum[k] += float(rel[:, : min(k, rel.shape[1])].sum(axis=1).sum() / k)
        n_rel = rel.sum(axis=1)
        has = n_rel > 0
        if has.any():
            precision_at = np.cumsum(rel[has], axis=1) / ranks
            ap = (precision_at * rel[has]).sum(axis=1) / n_rel[has]
            ap_sum += float(ap.sum())
            ap_count += int(has.sum())
    n = max(len(qy), 1)
    return {
        "mAP": ap_sum / ap_count if ap_count else None,
        "precision_at": {str(k): prec_sum[k] / n for k in ks},
        "queries_without_match": int(len(qy) - ap_count),
    }


def retrieval_metrics(
    gallery_x: np.ndarray, gallery_y: np.ndarray, query_x: np.ndarray, query_y: np.ndarray,
    *, k: int = 1, ks: Sequence[int] = (1, 5, 10),
) -> dict[str, Any]:
    """kNN top-1 (k neighbours, cosine, spec H; k=1 is the reference protocol) plus mAP and precision@k."""
    from sklearn.neighbors import KNeighborsClassifier

    k_eff = max(1, min(int(k), len(gallery_y)))
    clf = KNeighborsClassifier(n_neighbors=k_eff, metric="cosine", algorithm="brute")
    clf.fit(l2_normalize(gallery_x), gallery_y)
    pred = clf.predict(l2_normalize(query_x))
    top1 = float((pred == np.asarray(query_y)).mean())
    return {"top1": top1, "k": k_eff, **ranking_metrics(gallery_x, gallery_y, query_x, query_y, ks), "n_gallery": int(len(gallery_y)), "n_query": int(len(query_y)), "pred": pred}


def run_retrieval(
    checkpoint: str | Path | None,
    data_path: str | Path,
    protocol: str,
    out_dir: str | Path,
    *,
    recipe: str | None = None,
    recipe_overrides: list[str] | None = None,
    k: int | None = None,
    ks: Sequence[int] | None = None,
    batch_size: int = 128,
    person_pool: str | None = None,
    device: str = "auto",
    random_init: bool = False,
    preset: str = "small",
    seed: int = 0,
    cache: bool = True,
) -> dict[str, Any]:
    """``skel retrieve``: gallery = train split, queries = test split; writes ``metrics.json`` and the
    confusion matrix of the k-NN predictions into ``out_dir``. Returns the JSON-ready summary.

    ``recipe`` (None = the method's paper): ``skel`` = cosine 1-NN on centre-crop features (CMD / ISC);
    ``slim`` = SLiM's k-NN features and vote at k = 1 (:func:`skelcli.eval.slim_eval.slim_knn`). ``k`` /
    ``ks`` are shortcuts for the recipe's ``k`` (slim: ``report_k``) and ``precision_k``."""
    from skelcli.errors import SkelError
    from skelcli.eval.features import check_batch_size, check_person_pool, default_person_pool, extract_features, prepare_encoder
    from skelcli.eval.probe import probe_recipe
    from skelcli.eval.report import jsonable_metrics, metrics_from_predictions, save_confusion, write_json

    if (k is not None and k < 1) or any(int(x) < 1 for x in (ks or ())):
        raise SkelError(f"k values must be >= 1 (got k={k}, precision ks={list(ks or ())})")
    check_batch_size(batch_size)
    check_person_pool(person_pool)
    encoder, info, dinfo = prepare_encoder(checkpoint, data_path, protocol, random_init=random_init, preset=preset, seed=seed)
    rec = probe_recipe("retrieval", recipe, info.method, recipe_overrides, k=k, person_pool=person_pool,
                       base=None if ks is None else {"precision_k": tuple(int(x) for x in ks)})
    out_dir = Path(out_dir)
    if rec.name == "slim":
        from skelcli.eval.features import load_split
        from skelcli.eval.slim_eval import slim_knn

        gallery, queries = load_split(data_path, protocol, "train"), load_split(data_path, protocol, "test")
        knn = slim_knn(encoder, gallery, queries, rec, device=device)
        g_x, q_x = knn["gallery_features"], knn["query_features"]
        g_y, q_y = gallery.labels, queries.labels
        res = {"top1": float(knn["top1"]), "k": rec.report_k, "accuracy_at_k": {str(kk): float(v) for kk, v in knn["accuracy"].items()},
               **ranking_metrics(g_x, g_y, q_x, q_y, rec.precision_k), "n_gallery": int(len(g_y)), "n_query": int(len(q_y)),
               "pred": np.asarray(knn["predictions"])}
        pool = "concat"
    else:
        # MAMP-family: mean over persons (spec H); SLiM checkpoints under this recipe: persons side by side.
        pool = person_pool or ("concat" if (info.method or "").startswith("slim") else default_person_pool(info.method))
        cache_dir = (Path(checkpoint).parent / ".features" if checkpoint else out_dir / ".features") if cache else None
        common = dict(batch_size=batch_size, device=device, cache_dir=cache_dir, person_pool=pool)
        g_x, g_y = extract_features(encoder, info, data_path, protocol, "train", **common)
        q_x, q_y = extract_features(encoder, info, data_path, protocol, "test", **common)
        res = retrieval_metrics(g_x, g_y, q_x, q_y, k=rec.k, ks=rec.precision_k)
    cls = metrics_from_predictions(res.pop("pred"), q_y, int(dinfo.num_classes))
    files = save_confusion(cls["confusion"], out_dir, class_names=getattr(dinfo, "class_names", None))
    summary = {
        "protocol": "retrieval", "recipe": rec.describe(), "recipe_label": rec.label(),
        "checkpoint": str(checkpoint) if checkpoint else None, "random_init": random_init,
        "method": info.method, "pretrain_dataset": info.dataset, "epoch": info.epoch,
        "data": str(data_path), "dataset": dinfo.dataset, "split": protocol, "num_classes": int(dinfo.num_classes),
        "classes_present": int(len(np.unique(q_y))),
        "person_pool": pool, "feature_dim": int(g_x.shape[1]), **res,
        "per_class": jsonable_metrics(cls)["per_class"], "mean_class": cls["mean_class"], "files": files,
    }
    write_json(out_dir / "metrics.json", summary)
    return summary
