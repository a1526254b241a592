"""Fine-tuning pieces: layer-decay table (spec C.2), label subsets (spec C.3), heads, a tiny run."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from skelcli.errors import SkelError
from skelcli.eval.finetune import FinetuneSettings, carve_validation, finetune_once, missing_classes, select_subset
from skelcli.eval.heads import FinetuneModel, MampFinetuneHead, finetune_param_groups, head_config_for, layer_decay_multipliers
from skelcli.models.encoder import EncoderConfig, SkeletonEncoder
from helpers import toy_split


def test_layer_decay_matches_the_hand_table():
    enc = SkeletonEncoder(EncoderConfig())  # paper encoder: depth 8 -> L = 9
    m = layer_decay_multipliers(enc, 0.8)
    table = {"patch_embed.weight": 0.134217728, "patch_embed.bias": 0.134217728, "joint_embed": 0.134217728,
             "temp_embed": 0.134217728, "norm.weight": 1.0, "norm.bias": 1.0}
    # block k -> 0.8^(8-k): block 0 -> 0.16777216, block 7 -> 0.8 (spec C.2 table)
    for k in range(8):
        table[f"blocks.{k}.attn.qkv.weight"] = 0.8 ** (8 - k)
    assert m["blocks.0.attn.qkv.weight"] == pytest.approx(0.16777216)
    assert m["blocks.7.mlp.fc2.bias"] == pytest.approx(0.8)
    for name, value in table.items():
        assert m[name] == pytest.approx(value), name
    assert set(m) == {n for n, _ in enc.named_parameters()}


def test_layer_decay_covers_slim_tokens_and_param_groups():
    cfg = EncoderConfig(num_frames=16, t_patch=8, dim=32, depth=2, heads=2, use_cls=True, num_registers=4, mask_token=True,
                        temporal_pos="rope", ffn="swiglu", pool="cls_mean")
    enc = SkeletonEncoder(cfg)
    m = layer_decay_multipliers(enc, 0.5)
    for name in ("cls_token", "cls_pos", "registers", "mask_embed", "joint_embed"):
        assert m[name] == pytest.approx(0.5**3)
    model = FinetuneModel(enc, head_config_for(enc, 5))
    groups = finetune_param_groups(model, 0.05, 0.5)
    by_param = {id(p): g for g in groups for p in g["params"]}
    assert by_param[id(model.head.fc.weight)]["lr_scale"] == 1.0 and by_param[id(model.head.fc.weight)]["weight_decay"] == 0.05
    assert by_param[id(model.head.fc.bias)]["weight_decay"] == 0.0
    assert by_param[id(enc.norm.weight)]["weight_decay"] == 0.0  # 1-D: no decay
    assert by_param[id(enc.joint_embed)]["weight_decay"] == 0.05  # position embedding (>1-D) decays (spec C.2)
    assert by_param[id(enc.blocks[1].attn.qkv.weight)]["lr_scale"] == pytest.approx(0.5)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_mamp_head_averages_time_and_keeps_joints():
    head = MampFinetuneHead(dim=4, num_joints=3, num_classes=2, hidden=8).eval()
    tokens = torch.randn(2, 2, 5 * 3, 4)  # (N, M, Tp*V, D) time-major
    expected = tokens.reshape(2, 2, 5, 3, 4).mean(2).reshape(2, 2, 12).mean(1)
    with torch.no_grad():
        ref = head.fc2(torch.relu(head.bn(head.fc1(expected))))
        assert torch.allclose(head(tokens), ref, atol=1e-6)
    assert head.fc1.in_features == 12 and head.drop.p == 0.3


LABELS = np.repeat(np.arange(10), [30, 25, 20, 15, 12, 10, 8, 5, 3, 2])

_SUBPROCESS = """
import json, numpy as np
from skelcli.eval.finetune import select_subset
labels = np.repeat(np.arange(10), [30, 25, 20, 15, 12, 10, 8, 5, 3, 2])
print(json.dumps(select_subset(labels, 0.1, 7).tolist()))
"""


def test_subset_is_identical_across_processes_and_repeats():
    a = select_subset(LABELS, 0.1, 7)
    assert np.array_equal(a, select_subset(LABELS, 0.1, 7))
    out = subprocess.run([sys.executable, "-c", _SUBPROCESS], capture_output=True, text=True, check=True, env={"OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "123"})
    assert json.loads(out.stdout) == a.tolist()
    assert len(a) == int(len(LABELS) * 0.1) and len(set(a.tolist())) == len(a)
    assert not np.array_equal(a, select_subset(LABELS, 0.1, 8))


def test_balanced_subset_has_every_class_and_plain_one_may_not():
    for seed in range(5):
        b = select_subset(LABELS, 0.05, seed, balanced=True)
        assert set(LABELS[b].tolist()) == set(range(10))
        assert missing_classes(LABELS, b, 10) == []
    plain = select_subset(LABELS, 0.02, 0)  # 2 clips cannot cover 10 classes
    miss = missing_classes(LABELS, plain, 10)
    assert len(miss) >= 8 and set(miss).isdisjoint(LABELS[plain].tolist())


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5, float("nan")])
def test_fraction_outside_range_is_an_error(fraction):
    with pytest.raises(SkelError, match=r"label fraction must be in \(0, 1\]"):
        select_subset(LABELS, fraction, 0)


def test_full_fraction_keeps_everything_and_validation_is_disjoint():
    assert np.array_equal(select_subset(LABELS, 1.0, 3), np.arange(len(LABELS)))
    tr, va = carve_validation(np.arange(100), 0.2, 0)
    assert len(va) == 20 and len(tr) == 80 and set(tr).isdisjoint(va) and set(tr) | set(va) == set(range(100))


def test_tiny_finetune_run_learns_and_reports():
    s = FinetuneSettings(epochs=3, batch_size=8, lr=2e-3, warmup_epochs=1, head_hidden=32, min_crop_frames=4, device="cpu", eval_batch_size=32)
    cfg = EncoderConfig(num_frames=8, t_patch=4, dim=16, depth=1, heads=2)
    train, test = toy_split(6, 3, 0), toy_split(3, 3, 1)
    val = train.subset(np.arange(0, 18, 6))
    res = finetune_once(cfg, None, train, test, 3, s, seed=0, val=val)
    assert [h["epoch"] for h in res["history"]] == [1, 2, 3]
    assert res["best_top1"] == max(h["test_top1"] for h in res["history"]) >= res["last_top1"]
    assert res["steps"] == 3 * (18 // 8)
    assert res["confusion"].sum() == len(test) and len(res["per_class"]) == 3
    assert "test_top1_at_val_best" in res and res["model"].encoder.config.drop_path == s.drop_path


def test_evaluating_every_third_epoch_trains_the_very_same_model():
    """--eval-every only skips test evaluations: the weights, the last evaluation and the loss stream
    match an every-epoch run bit for bit; the history holds the evaluated epochs (and always the last)."""
    cfg = EncoderConfig(num_frames=8, t_patch=4, dim=16, depth=1, heads=2)
    train, test = toy_split(6, 3, 0), toy_split(3, 3, 1)
    runs = {}
    for every in (1, 3):
        s = FinetuneSettings(epochs=4, batch_size=8, lr=2e-3, warmup_epochs=1, head_hidden=32, min_crop_frames=4, device="cpu",
                             eval_batch_size=32, eval_every=every)
        runs[every] = finetune_once(cfg, None, train, test, 3, s, seed=0)
    assert [h["epoch"] for h in runs[1]["history"]] == [1, 2, 3, 4]
    assert [h["epoch"] for h in runs[3]["history"]] == [3, 4]
    assert runs[3]["last_top1"] == runs[1]["last_top1"] and runs[3]["steps"] == runs[1]["steps"]
    a, b = runs[1]["model"].state_dict(), runs[3]["model"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert runs[3]["history"][-1]["test_top1"] == runs[1]["history"][-1]["test_top1"]
