"""Probes on features whose labels are known; metrics by hand; person pooling; the SGD head."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from skelcli.eval.features import encode_views, pool_persons
from skelcli.eval.heads import LinearProbeHead
from skelcli.eval.probe import knn_probe, sgd_linear_probe, sklearn_linear_probe
from skelcli.eval.report import classification_metrics, confusion_matrix, save_confusion
from skelcli.models.encoder import EncoderConfig, SkeletonEncoder
from helpers import toy_split


def clusters(n_per: int, classes: int, dim: int = 16, spread: float = 0.05, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * 3
    y = np.repeat(np.arange(classes), n_per)
    x = centres[y] + spread * rng.normal(size=(len(y), dim))
    return x.astype(np.float32), y


def test_separable_clusters_give_perfect_accuracy():
    tr_x, tr_y = clusters(10, 7, seed=0)
    te_x, te_y = clusters(5, 7, seed=0)  # same centres (same seed), fresh noise draw order
    te_x = te_x + np.float32(0.01)
    lin = sklearn_linear_probe(tr_x, tr_y, te_x, te_y, 7)
    knn = knn_probe(tr_x, tr_y, te_x, te_y, 7, k=3)
    assert lin.metrics["top1"] == 1.0 and lin.metrics["top5"] == 1.0
    assert knn.metrics["top1"] == 1.0
    assert np.array_equal(lin.metrics["confusion"], np.diag(np.full(7, 5)))
    assert lin.metrics["per_class"] == [1.0] * 7


def test_knn_with_exactly_k_wrong_labels():
    # Gallery: 12 distinct directions, one label each; queries = the gallery points; 3 query labels flipped.
    rng = np.random.default_rng(1)
    g = rng.normal(size=(12, 8)).astype(np.float32)
    gy = np.arange(12) % 4
    qy = gy.copy()
    wrong = [0, 5, 9]
    qy[wrong] = (qy[wrong] + 1) % 4
    res = knn_probe(g, gy, g * 2.0, qy, 4, k=1)  # scaling does not change cosine neighbours
    assert res.metrics["top1"] == pytest.approx((12 - 3) / 12)
    assert res.metrics["top5"] is None  # undefined (trivially 1) with <= 5 classes


def test_classification_metrics_by_hand():
    scores = np.array(
        [
            [0.9, 0.1, 0, 0, 0, 0, 0],  # true 0, pred 0
            [0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0],  # true 1, pred 0, in top-5
            [0, 0, 0.1, 0.2, 0.3, 0.4, 0.9],  # true 0, pred 6, rank 7 -> not in top-5
            [0, 0, 0, 0, 0, 0.2, 0.8],  # true 6, pred 6
        ]
    )
    labels = np.array([0, 1, 0, 6])
    m = classification_metrics(scores, labels, 7)
    assert m["top1"] == 0.5
    assert m["top5"] == 0.75
    assert m["per_class"][0] == 0.5 and m["per_class"][1] == 0.0 and m["per_class"][6] == 1.0
    assert m["per_class"][2] is None  # no test sample of class 2
    assert m["mean_class"] == pytest.approx((0.5 + 0.0 + 1.0) / 3)
    cm = confusion_matrix(np.array([0, 0, 6, 6]), labels, 7)
    assert np.array_equal(m["confusion"], cm) and cm[0, 0] == 1 and cm[0, 6] == 1 and cm[1, 0] == 1 and cm.sum() == 4


def test_save_confusion_writes_png_npy_csv(tmp_path):
    cm = np.array([[3, 1], [0, 4]])
    files = save_confusion(cm, tmp_path)
    assert np.array_equal(np.load(files["npy"]), cm)
    assert open(files["png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert np.array_equal(np.loadtxt(files["csv"], delimiter=",", dtype=int), cm)
    no_png = save_confusion(cm, tmp_path / "counts", png=False)  # the demo's probes: counts only
    assert "png" not in no_png and sorted(p.name for p in (tmp_path / "counts").iterdir()) == ["confusion.csv", "confusion.npy"]
    assert no_png["top_confusions"] == files["top_confusions"]


def test_person_pooling_modes():
    feats = torch.tensor([[[1.0, 2.0], [3.0, 6.0]], [[4.0, 4.0], [0.5, 0.5]]])  # (N=2, M=2, F=2)
    valid = torch.tensor([[True, True], [True, False]])
    assert torch.allclose(pool_persons(feats, valid, "mean"), torch.tensor([[2.0, 4.0], [2.25, 2.25]]))
    assert torch.allclose(pool_persons(feats, valid, "mean_valid"), torch.tensor([[2.0, 4.0], [4.0, 4.0]]))
    assert pool_persons(feats, valid, "concat").shape == (2, 4)
    none = torch.zeros(2, 2, dtype=torch.bool)  # no valid person -> falls back to the plain mean
    assert torch.allclose(pool_persons(feats, none, "mean_valid"), pool_persons(feats, none, "mean"))


def test_encode_views_counts_empty_person_in_mamp_mean():
    torch.manual_seed(0)
    enc = SkeletonEncoder(EncoderConfig(num_frames=8, t_patch=4, dim=16, depth=1, heads=2)).eval()
    views = torch.zeros(1, 2, 8, 25, 3)
    views[0, 0] = torch.randn(8, 25, 3)
    with torch.no_grad():
        per_person = enc(views.reshape(2, 8, 25, 3))
        mean = encode_views(enc, views, "mean")
        valid = encode_views(enc, views, "mean_valid")
    assert torch.allclose(mean[0], per_person.mean(0), atol=1e-6)  # the zero person is encoded and averaged (spec A.10)
    assert torch.allclose(valid[0], per_person[0], atol=1e-6)


def test_linear_probe_head_init():
    torch.manual_seed(0)
    head = LinearProbeHead(256, 60)
    assert head.bn.weight is None and head.bn.eps == 1e-6
    assert abs(float(head.fc.weight.detach().std()) - 0.01) < 0.001  # timm trunc_normal_ (cut at +-2 absolute, as MoCo v3)
    assert torch.all(head.fc.bias == 0)


def test_sgd_head_reports_last_and_best_epoch():
    from skelcli.eval.features import features_of
    from skelcli.settings import DataSettings

    torch.manual_seed(0)
    enc = SkeletonEncoder(EncoderConfig(num_frames=8, t_patch=4, dim=16, depth=1, heads=2))
    train, test = toy_split(6, 3, 0), toy_split(3, 3, 1)
    te_x = features_of(enc, test, batch_size=16, device="cpu")
    res = sgd_linear_probe(enc, train, te_x, test.labels, 3, epochs=4, batch_size=8,
                           data_settings=DataSettings(min_crop_frames=4), seed=0)
    ex = res.extra
    assert len(ex["history"]) == 4 and ex["last_top1"] == ex["history"][-1] == res.metrics["top1"]
    assert ex["best_top1"] == max(ex["history"]) and ex["history"][ex["best_epoch"] - 1] == ex["best_top1"]
    assert ex["best_top1"] > 1 / 3  # above chance on an easy problem
    assert all(not p.requires_grad for p in enc.parameters())  # frozen
    assert (ex["head_batch_size"], ex["steps_per_epoch"]) == (8, 2)  # 18 clips: two full batches, the rest dropped


def test_mamp_linear_recipe_is_the_official_one():
    """lr and global batch of MAMP's linear probe per data set (main_linprobe.py, launched by
    script_linprobe.sh on 2 GPUs with config/*/linprobe_t120_layer8.yaml's per-GPU batch; spec/
    protocols-and-checkpoints.md 3.1): NTU 0.1 at 2 x 128, PKU-I 0.1 at 2 x 64, PKU-II 0.01 at 2 x 16."""
    from skelcli.eval.probe import mamp_linear_recipe

    assert mamp_linear_recipe("ntu60") == mamp_linear_recipe("ntu120") == (0.1, 256)
    assert mamp_linear_recipe("pku-mmd-v1") == (0.1, 128)
    assert mamp_linear_recipe("pku-mmd-v2") == (0.01, 32)
    assert mamp_linear_recipe("my_clips") == (0.1, 256)


def test_mamp_finetune_head_is_xavier_initialised():
    """MAMP's Transformer._init_weights (model/transformer.py) gives the fine-tune head's Linear layers
    xavier-uniform weights and zero biases (spec/protocols-and-checkpoints.md 3.2)."""
    import math

    from skelcli.eval.heads import MampFinetuneHead

    torch.manual_seed(0)
    head = MampFinetuneHead(dim=32, num_joints=25, num_classes=60)
    for fc in (head.fc1, head.fc2):
        bound = math.sqrt(6 / (fc.in_features + fc.out_features))
        w = fc.weight.detach()
        assert float(w.abs().max()) <= bound and float(w.abs().max()) > 0.95 * bound
        assert abs(float(w.std()) - bound / math.sqrt(3)) < 0.05 * bound
        assert torch.all(fc.bias == 0)
