"""SLiM's own downstream protocols (skelcli.eval.slim_eval): views, features, head grid, linear grid, k-NN.

Reference: spec/protocols-and-checkpoints.md 1 and 2.1 (KAIST-VICLab/SLiM slim/eval/linear.py, knn.py,
slim/data/augmentations.py DownstreamAugmentation, slim/data/datasets/ntu.py). Expected numbers are
worked out by hand in the comments.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from helpers import toy_split
from skelcli.data.clips import ClipBatch
from skelcli.eval.features import SplitData
from skelcli.eval.recipes import SlimDownstreamView, SlimKnnRecipe, SlimLinearRecipe
from skelcli.eval.slim_eval import (
    head_grid,
    linear_input,
    slim_buffer,
    slim_features,
    slim_knn,
    slim_knn_features,
    slim_linear_grid,
    slim_test_view,
    slim_train_view,
    weighted_knn_vote,
)
from skelcli.models.encoder import EncoderConfig, SkeletonEncoder
from skelcli.topology import NTU25


def tiny_encoder(seed: int = 0, frames: int = 64) -> SkeletonEncoder:
    torch.manual_seed(seed)
    cfg = EncoderConfig(num_frames=frames, t_patch=8, num_joints=25, in_chans=3, dim=32, depth=4, heads=2, ffn="swiglu",
                        temporal_pos="rope", use_cls=True, num_registers=2, mask_token=True, norm_eps=1e-6, pool="cls_mean",
                        init="slim")
    return SkeletonEncoder(cfg).eval()


def index_clip(valid: int, t_max: int | None = None) -> ClipBatch:
    """One clip, 2 persons, whose x coordinate is the frame index and y is 1 (so no frame sums to 0)."""
    t_max = t_max or valid
    j = torch.zeros(1, 2, t_max, 25, 3)
    j[0, :, :valid, :, 0] = torch.arange(valid, dtype=torch.float32)[None, :, None]
    j[0, :, :valid, :, 1] = 1.0
    return ClipBatch(j, torch.tensor([valid]), torch.tensor([0]))


def class_split(n_per: int, classes: int, seed: int, two_person: bool = True) -> SplitData:
    """Clips of 30-79 frames; the class sets a pose offset; the second person present in odd clips."""
    return toy_split(n_per, classes, seed, frames=(30, 80), second_person=two_person)


# ------------------------------------------------------------------------------- encoder layers
def test_get_intermediate_layers_last_is_forward_features():
    enc = tiny_encoder()
    x = torch.randn(3, 64, 25, 3)
    with torch.no_grad():
        outs = enc.get_intermediate_layers(x, 3)
        full = enc.forward_features(x)
        one = enc.get_intermediate_layers(x, 1)
    assert len(outs) == 3 and len(one) == 1
    assert all(o.shape == (3, 3 + 200, 32) for o in outs)  # CLS + 2 registers + 8 segments x 25 joints
    assert torch.equal(outs[-1], full)
    assert torch.equal(one[0], full)
    assert not torch.allclose(outs[0], outs[-1])  # earlier blocks differ
    # each is normalised by the final LayerNorm (weight 1, bias 0 at init): zero mean, unit variance per token
    assert outs[0].mean(dim=-1).abs().max() < 1e-4
    with pytest.raises(ValueError):
        enc.get_intermediate_layers(x, 5)


# ------------------------------------------------------------------------------------- test view
def test_test_view_long_clip_200_frames():
    # V = 200: L = min(max(floor(190.0), 64), 200) = 190; offset int(0.05 * 200 / 2) = 5;
    # L >= 64: frames floor(i * 190 / 64) + 5, no interpolation.
    view = slim_test_view(index_clip(200), 64)
    assert view.shape == (1, 2, 64, 25, 3)
    x = view[0, 0, :, 0, 0]
    expected = torch.tensor([(i * 190) // 64 + 5 for i in range(64)], dtype=torch.float32)
    assert torch.equal(x, expected)
    assert x[:4].tolist() == [5.0, 7.0, 10.0, 13.0]  # 0, 190 // 64 = 2, 380 // 64 = 5, 570 // 64 = 8; + 5
    assert x[-1].item() == 192.0  # 63 * 190 // 64 = 187, + 5
    assert torch.equal(view[0, 0], view[0, 1])  # both persons, same frames


def test_test_view_short_clip_reads_the_pingpong_buffer():
    # V = 40 (< 64): L = 40, offset int(0.05 * 40 / 2) = int(1.0000000000000009) = 1; buffer frames 1..40
    # interpolated to 64 (align_corners=False): source s_i = max(0.625 (i + 0.5) - 0.5, 0) capped at 39.
    # Buffer = 0..39, 39..0, 0..39, 39..0 (160 >= 150), so buffer frame 40 holds clip frame 39.
    view = slim_test_view(index_clip(40), 64)
    x = view[0, 0, :, 0, 0].double()
    buf = [float(t) for t in range(40)] + [float(t) for t in range(39, -1, -1)]
    expected = []
    for i in range(64):
        s = min(max(0.625 * (i + 0.5) - 0.5, 0.0), 39.0)
        lo = int(math.floor(s))
        hi = min(lo + 1, 39)
        lam = s - lo
        expected.append((1 - lam) * buf[1 + lo] + lam * buf[1 + hi])
    assert torch.allclose(x, torch.tensor(expected, dtype=torch.float64), atol=1e-5)
    # hand values: i=0 -> s=0 -> frame 1; i=1 -> s=0.4375 -> 1.4375; the last -> s=39 -> buffer[40] = 39 (padding)
    assert x[0].item() == pytest.approx(1.0)
    assert x[1].item() == pytest.approx(1.4375)
    assert x[-1].item() == pytest.approx(39.0)
    # the unpadded clip would have ended at 39 too, but inside the crop 38.x frames come from the padding:
    # s_62 = 0.625 * 62.5 - 0.5 = 38.5625 -> between buffer[39] = 39 and buffer[40] = 39 -> 39
    assert x[62].item() == pytest.approx(39.0)


def test_test_view_drops_zero_frames_like_prepare_buffer():
    # An all-zero frame in the middle is dropped (ntu.py keeps frames with a non-zero sum), so a
    # 201-frame clip with one empty frame gives exactly the 200-frame view.
    clip = index_clip(200)
    j = torch.zeros(1, 2, 201, 25, 3)
    j[:, :, :100] = clip.joints[:, :, :100]
    j[:, :, 101:] = clip.joints[:, :, 100:]
    holed = ClipBatch(j, torch.tensor([201]), torch.tensor([0]))
    assert int(slim_buffer(holed).valid[0]) == 200
    assert torch.equal(slim_test_view(holed, 64), slim_test_view(clip, 64))


# ------------------------------------------------------------------------------------ train view
def _two_person_batch(n: int = 6, valid=(20, 40, 64, 90, 150, 200), seed: int = 0, copy: bool = True) -> ClipBatch:
    g = torch.Generator().manual_seed(seed)
    t_max = max(valid)
    j = torch.zeros(n, 2, t_max, 25, 3)
    for i, v in enumerate(valid[:n]):
        j[i, 0, :v] = torch.randn(v, 25, 3, generator=g)
        if copy:
            j[i, 1, :v] = j[i, 0, :v]
    return ClipBatch(j, torch.tensor(valid[:n]), torch.zeros(n, dtype=torch.long))


def test_train_view_shape_determinism_and_shared_transform():
    batch = _two_person_batch()
    rec = SlimDownstreamView(scale_p=0.0, mirror_p=0.5, rotate_p=0.5, noise_p=0.0)
    a = slim_train_view(batch, rec, NTU25, torch.Generator().manual_seed(3), frames=64)
    b = slim_train_view(batch, rec, NTU25, torch.Generator().manual_seed(3), frames=64)
    c = slim_train_view(batch, rec, NTU25, torch.Generator().manual_seed(4), frames=64)
    assert a.shape == (6, 2, 64, 25, 3)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # crop, mirror and rotation act on the whole clip: a copied person stays a copy
    assert torch.equal(a[:, 0], a[:, 1])
    # the rotation draws come after the crop and mirror draws: without rotation the same seed gives the
    # same crops and flips, and the rotated view has the same joint distances in every frame
    flat = slim_train_view(batch, rec.model_copy(update={"rotate_p": 0.0}), NTU25, torch.Generator().manual_seed(3), frames=64)
    assert torch.allclose(torch.cdist(a[:, 0], a[:, 0]), torch.cdist(flat[:, 0], flat[:, 0]), atol=1e-4)
    assert not torch.allclose(a, flat)


def test_train_view_noise_and_scale_per_person_empty_person_zero():
    batch = _two_person_batch(copy=True)
    batch.joints[2, 1] = 0  # clip 2 has one person
    # noise only: persons get independent noise, the empty person none
    noise = SlimDownstreamView(mirror_p=0, scale_p=0, rotate_p=0, noise_p=1.0, noise_sigma=0.01)
    v = slim_train_view(batch, noise, NTU25, torch.Generator().manual_seed(0), frames=64)
    assert torch.count_nonzero(v[2, 1]) == 0
    diff = (v[:, 0] - v[:, 1])[[0, 1, 3, 4, 5]]
    assert 0.005 < diff.std() < 0.03  # two independent N(0, 0.01) draws: std 0.0141
    # scaling always: factors drawn per person (random_scale loops over M), so copies differ
    scale = SlimDownstreamView(mirror_p=0, scale_p=1.0, rotate_p=0, noise_p=0)
    s = slim_train_view(batch, scale, NTU25, torch.Generator().manual_seed(0), frames=64)
    assert not torch.allclose(s[0, 0], s[0, 1])
    assert torch.count_nonzero(s[2, 1]) == 0
    # nothing applied (all p = 0): the view is the bare crop, and the root joint (SpineBase) is what
    # bone scaling keeps: root trajectories of the scaled view equal the bare crop's with the same draws
    bare = SlimDownstreamView(mirror_p=0, scale_p=0, rotate_p=0, noise_p=0)
    scale_root = SlimDownstreamView(mirror_p=0, scale_p=1.0, rotate_p=0, noise_p=0)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    v0 = slim_train_view(batch, bare, NTU25, g1, frames=64)
    v1 = slim_train_view(batch, scale_root, NTU25, g2, frames=64)
    assert torch.equal(v0[..., 0, :], v1[..., 0, :])


def test_train_view_crop_stays_inside_valid_frames():
    # x = frame index: every view frame comes from the clip's valid frames 0..V-1, in order
    batch = index_clip(90, t_max=120)
    rec = SlimDownstreamView(mirror_p=0, scale_p=0, rotate_p=0, noise_p=0)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        x = slim_train_view(batch, rec, NTU25, g, frames=64)[0, 0, :, 0, 0]
        assert x.min() >= 0 and x.max() <= 89
        assert (x[1:] >= x[:-1]).all()
        # 64 <= L < 128: whole frames with single skips (no interpolation); L < 64 interpolates
        length = x[-1] - x[0] + 1
        if length >= 64:
            assert torch.equal(x, x.round()) and (x[1:] - x[:-1]).max() <= 2


def test_train_view_2d_in_plane_rotation_keeps_scores():
    from skelcli.topology import COCO17

    g = torch.Generator().manual_seed(0)
    j = torch.zeros(2, 2, 50, 17, 3)
    j[:, 0, :, :, :2] = torch.randn(2, 50, 17, 2, generator=g)
    j[:, 0, :, :, 2] = 0.7
    batch = ClipBatch(j, torch.tensor([50, 50]), torch.zeros(2, dtype=torch.long))
    rec = SlimDownstreamView(mirror_p=0, scale_p=0, rotate_p=1.0, noise_p=1.0)
    v = slim_train_view(batch, rec, COCO17, torch.Generator().manual_seed(1), frames=32)
    assert v.shape == (2, 2, 32, 17, 3)
    assert torch.all(v[:, 0, :, :, 2] == 0.7)  # score channel untouched
    assert torch.count_nonzero(v[:, 1]) == 0


# -------------------------------------------------------------------------------------- features
def test_slim_features_sum_over_non_empty_persons():
    enc = tiny_encoder()
    g = torch.Generator().manual_seed(0)
    views = torch.randn(3, 2, 64, 25, 3, generator=g)
    views[1, 1] = 0  # clip 1: one person
    with torch.no_grad():
        f = slim_features(enc, views, 4)
        single = enc.get_intermediate_layers(views[:, 0], 4)
    assert f["cls"].shape == (3, 4, 32) and f["patch"].shape == (3, 32)
    assert f["cls_person"].shape == (3, 2, 32) and f["patch_person"].shape == (3, 2, 32)
    assert f["person_mask"].tolist() == [[True, True], [True, False], [True, True]]
    # clip 1: only person 0 counts, block by block; patch mean drops the 3 prefix tokens
    for b in range(4):
        assert torch.allclose(f["cls"][1, b], single[b][1, 0], atol=1e-5)
    assert torch.allclose(f["patch"][1], single[-1][1, 3:].mean(dim=0), atol=1e-5)
    assert torch.count_nonzero(f["cls_person"][1, 1]) == 0 and torch.count_nonzero(f["patch_person"][1, 1]) == 0
    # clip 0: a sum of the two persons
    assert torch.allclose(f["cls"][0, -1], f["cls_person"][0].sum(dim=0), atol=1e-5)
    # linear inputs: widths D * (n + avgpool), CLS oldest first
    assert linear_input(f, 1, False).shape == (3, 32)
    assert linear_input(f, 1, True).shape == (3, 64)
    assert linear_input(f, 4, False).shape == (3, 128)
    assert linear_input(f, 4, True).shape == (3, 160)
    li = linear_input(f, 4, True)
    assert torch.equal(li[:, :32], f["cls"][:, 0]) and torch.equal(li[:, 96:128], f["cls"][:, 3])
    assert torch.equal(li[:, 128:], f["patch"])


# ------------------------------------------------------------------------------------- head grid
def test_head_grid_official_key_collision():
    g64 = head_grid(SlimLinearRecipe())
    g256 = head_grid(SlimLinearRecipe(batch_size=256))
    assert len(g64) == 48 and len(g256) == 52
    assert len({h.key for h in g64}) == 48
    assert len(head_grid(SlimLinearRecipe(official_key_collision=False))) == 52
    # at batch 64 lr 2e-5 -> 5e-6 and 5e-5 -> 1.25e-5 both print as 0.00001
    k2 = [h for h in head_grid(SlimLinearRecipe(official_key_collision=False)) if h.n == 1 and not h.avgpool and h.lr in (2e-5, 5e-5)]
    assert [h.key for h in k2] == ["classifier_1_blocks_avgpool_False_lr_0_00001"] * 2
    cell = [h for h in g64 if h.n == 1 and not h.avgpool]
    assert len(cell) == 12
    # the 5e-5 head took the 2e-5 head's place (ModuleDict assignment keeps the position)
    assert [h.lr for h in cell[:3]] == [1e-5, 5e-5, 1e-4]
    assert cell[1].scaled_lr == pytest.approx(1.25e-5)
    assert cell[0].key == "classifier_1_blocks_avgpool_False_lr_0_00000"
    assert [h for h in g64 if h.lr == 0.1 and h.n == 4 and h.avgpool][0].key == "classifier_4_blocks_avgpool_True_lr_0_02500"
    # widths at D = 256: 256, 512, 1024, 1280
    assert sorted({h.in_dim(256) for h in g64}) == [256, 512, 1024, 1280]
    assert [h.n for h in g64[:24]] == [1] * 24 and [h.avgpool for h in g64[:12]] == [False] * 12


# ----------------------------------------------------------------------------------- linear grid
def test_slim_linear_grid_trains_all_heads_deterministically():
    train, test, val = class_split(8, 3, 0), class_split(4, 3, 1), class_split(3, 3, 2)
    rec = SlimLinearRecipe(iterations=30, eval_every=10, batch_size=8, learning_rates=(1e-3, 0.1, 1.0),
                           n_last_blocks=(1, 4))
    enc = tiny_encoder()
    calls = []
    res = slim_linear_grid(enc, train, test, rec, val_split=val, seed=0, on_eval=lambda it, top1: calls.append((it, top1)))
    assert res["num_heads"] == len(res["heads"]) == 12
    tops = [h["test_top1"] for h in res["heads"]]
    assert res["best"]["test_top1"] == max(tops)
    assert res["best"]["key"] == res["heads"][tops.index(max(tops))]["key"]  # first maximum wins
    assert res["best"]["test_top1"] > 0.5  # an easy task (chance 1/3)
    vals = [h["val_top1"] for h in res["heads"]]
    assert res["val_chosen"] is not None and res["val_chosen"]["val_top1"] == max(vals)
    assert [h["iteration"] for h in res["history"]] == [10, 20, 30] and [c[0] for c in calls] == [10, 20, 30]
    assert res["history"][-1]["best_test_top1"] == res["best"]["test_top1"]
    assert res["logits_best"].shape == (len(test), 3)
    assert float((res["logits_best"].argmax(1) == test.labels).mean()) == pytest.approx(res["best"]["test_top1"])
    assert res["batch_size_used"] == 8 and res["note"] is None
    again = slim_linear_grid(tiny_encoder(), train, test, rec, val_split=val, seed=0)
    assert [h["test_top1"] for h in again["heads"]] == tops
    assert np.array_equal(again["logits_best"], res["logits_best"])


def test_slim_linear_grid_batch_larger_than_split_and_no_val():
    train, test = class_split(2, 2, 0), class_split(2, 2, 1)
    rec = SlimLinearRecipe(iterations=3, eval_every=100, learning_rates=(0.1,), n_last_blocks=(1,), avgpool=(True,))
    res = slim_linear_grid(tiny_encoder(), train, test, rec)
    assert res["num_heads"] == 1 and res["batch_size"] == 64 and res["batch_size_used"] == 4
    assert "whole split" in res["note"]
    assert res["val_chosen"] is None and res["heads"][0]["val_top1"] is None
    assert [h["iteration"] for h in res["history"]] == [3]


# ------------------------------------------------------------------------------------------- kNN
def test_weighted_knn_vote_hand_example():
    # 4 gallery items, labels [0, 1, 1, 2]; 2 queries; T = 0.5.
    sim = torch.tensor([[0.9, 0.8, 0.1, 0.7],
                        [0.2, 0.6, 0.5, 0.0]])
    labels = torch.tensor([0, 1, 1, 2])
    out = weighted_knn_vote(sim, labels, (1, 2, 3, 10), 0.5, 3)
    # query 0, order 0.9 (c0), 0.8 (c1), 0.7 (c2), 0.1 (c1); softmax of (1.8, 1.6, 1.4, 0.2)
    e = np.exp([1.8, 1.6, 1.4, 0.2])
    w = e / e.sum()
    assert torch.allclose(out[1][0], torch.tensor([w[0], 0, 0], dtype=torch.float32), atol=1e-6)
    assert torch.allclose(out[2][0], torch.tensor([w[0], w[1], 0], dtype=torch.float32), atol=1e-6)
    assert torch.allclose(out[3][0], torch.tensor([w[0], w[1], w[2]], dtype=torch.float32), atol=1e-6)
    # k = 10 > 4 gallery items: all four; class 1 gets w1 + w3
    assert torch.allclose(out[10][0], torch.tensor([w[0], w[1] + w[3], w[2]], dtype=torch.float32), atol=1e-6)
    # query 1: order 0.6 (c1), 0.5 (c1), 0.2 (c0), 0.0 (c2)
    e1 = np.exp([1.2, 1.0, 0.4, 0.0])
    w1 = e1 / e1.sum()
    assert torch.allclose(out[3][1], torch.tensor([w1[2], w1[0] + w1[1], 0], dtype=torch.float32), atol=1e-6)
    assert out[1].argmax(1).tolist() == [0, 1]
    # softmax weights over all max_k neighbours sum to 1
    assert torch.allclose(out[10].sum(1), torch.ones(2), atol=1e-6)


def test_weighted_knn_vote_k1_is_nearest_neighbour():
    rng = np.random.default_rng(0)
    g = rng.normal(size=(30, 8))
    q = rng.normal(size=(12, 8))
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    labels = rng.integers(0, 5, size=30)
    sim = q @ g.T
    out = weighted_knn_vote(torch.from_numpy(sim), labels, (1, 5), 0.07, 5)
    assert out[1].argmax(1).numpy().tolist() == labels[sim.argmax(1)].tolist()


def test_slim_knn_features_and_accuracy():
    enc = tiny_encoder()
    train, test = class_split(4, 3, 0), class_split(2, 3, 1)
    rec = SlimKnnRecipe(ks=(1, 5, 200), batch_size=4)
    feats = slim_knn_features(enc, train, rec)
    assert feats.shape == (12, 4 * 32)  # [CLS_p0, CLS_p1, mean_p0, mean_p1]
    assert np.allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    even = np.arange(0, 12, 2)  # clips without the second person: its CLS and patch-mean slots are zero
    assert np.count_nonzero(feats[even][:, 32:64]) == 0 and np.count_nonzero(feats[even][:, 96:]) == 0
    res = slim_knn(enc, train, test, rec)
    assert set(res["accuracy"]) == {1, 5, 200} and res["report_k"] == 1
    assert res["feature_dim"] == 128 and res["predictions"].shape == (6,)
    q = slim_knn_features(enc, test, rec)
    nn_pred = train.labels[(q @ feats.T).argmax(1)]
    assert res["predictions"].tolist() == nn_pred.tolist()
    assert res["top1"] == pytest.approx(float((nn_pred == test.labels).mean()))
