"""Retrieval metrics on hand-built rankings (spec H: gallery = train, queries = test, cosine)."""

from __future__ import annotations

import numpy as np
import pytest

from skelcli.eval.retrieval import ranking_metrics, retrieval_metrics


def unit(deg: float) -> np.ndarray:
    r = np.deg2rad(deg)
    return np.array([np.cos(r), np.sin(r)], dtype=np.float32)


def test_map_and_precision_on_a_hand_ranking():
    # Gallery on the unit circle at 0, 10, 20, 30, 40 degrees (and scaled: cosine ignores length).
    gallery = np.stack([unit(a) for a in (0, 10, 20, 30, 40)]) * np.array([[1], [3], [0.5], [2], [1]], dtype=np.float32)
    g_labels = np.array([0, 1, 0, 1, 0])
    # Query at -1 degree ranks the gallery 0, 10, 20, 30, 40 -> relevance for label 0: 1 0 1 0 1.
    # AP = (1/1 + 2/3 + 3/5) / 3.  Query at 41 degrees ranks 40, 30, 20, 10, 0 -> for label 1: 0 1 0 1 0:
    # AP = (1/2 + 2/4) / 2 = 0.5.
    queries = np.stack([unit(-1), unit(41)])
    q_labels = np.array([0, 1])
    m = ranking_metrics(gallery, g_labels, queries, q_labels, ks=(1, 2, 5))
    ap0 = (1 + 2 / 3 + 3 / 5) / 3
    assert m["mAP"] == pytest.approx((ap0 + 0.5) / 2)
    assert m["precision_at"]["1"] == pytest.approx((1 + 0) / 2)
    assert m["precision_at"]["2"] == pytest.approx((0.5 + 0.5) / 2)
    assert m["precision_at"]["5"] == pytest.approx((3 / 5 + 2 / 5) / 2)
    assert m["queries_without_match"] == 0


def test_k1_accuracy_with_exactly_k_of_n_wrong():
    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(20, 6)).astype(np.float32)
    g_labels = np.arange(20) % 5
    queries = gallery + 1e-3 * rng.normal(size=gallery.shape).astype(np.float32)
    q_labels = g_labels.copy()
    wrong = [1, 7, 8, 13]
    q_labels[wrong] = (q_labels[wrong] + 2) % 5
    res = retrieval_metrics(gallery, g_labels, queries, q_labels, k=1)
    assert res["top1"] == pytest.approx(16 / 20)
    assert res["precision_at"]["1"] == pytest.approx(16 / 20)  # nearest neighbour = itself
    assert res["n_gallery"] == 20 and res["n_query"] == 20


def test_separable_clusters_are_perfect_and_missing_classes_are_counted():
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(4, 16)) * 5
    g_labels = np.repeat(np.arange(3), 6)  # class 3 absent from the gallery
    gallery = (centres[g_labels] + 0.01 * rng.normal(size=(18, 16))).astype(np.float32)
    q_labels = np.array([0, 1, 2, 3])
    queries = (centres[q_labels] + 0.01 * rng.normal(size=(4, 16))).astype(np.float32)
    res = retrieval_metrics(gallery, g_labels, queries, q_labels, k=1, ks=(1, 5))
    assert res["top1"] == pytest.approx(3 / 4)  # the class-3 query cannot be right
    assert res["mAP"] == pytest.approx(1.0)  # every ranking puts all 6 relevant items first
    assert res["precision_at"]["5"] == pytest.approx(3 / 4)
    assert res["queries_without_match"] == 1


def test_chunking_does_not_change_the_result():
    rng = np.random.default_rng(3)
    g, q = rng.normal(size=(50, 8)), rng.normal(size=(23, 8))
    gy, qy = rng.integers(0, 4, 50), rng.integers(0, 4, 23)
    a = ranking_metrics(g, gy, q, qy, chunk=4)
    b = ranking_metrics(g, gy, q, qy, chunk=1000)
    assert a["mAP"] == pytest.approx(b["mAP"])
    assert a["precision_at"] == pytest.approx(b["precision_at"])
