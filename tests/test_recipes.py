"""Evaluation recipes (issue 17 item 1): each paper's protocol as a typed settings class whose defaults
are the official values, a name in every result JSON, and one-line errors for bad settings."""

from __future__ import annotations

import math

import pytest

from skelcli.errors import SkelError
from skelcli.eval.recipes import (RECIPES, MampLinearRecipe, SkelKnnRecipe, SkelRetrievalRecipe, SklearnLinearRecipe, SlimKnnRecipe,
                                  SlimLinearRecipe, SlimRetrievalRecipe, default_recipe_name, get_recipe)


def test_mamp_linear_recipe_values_are_the_official_ones():
    r = MampLinearRecipe()
    # main_linprobe.py / config/ntu60_xsub_joint/linprobe_t120_layer8.yaml: 100 epochs, SGD momentum 0.9, wd 0,
    # no warmup, half-cosine to min_lr 0.
    assert (r.epochs, r.momentum, r.weight_decay, r.min_lr) == (100, 0.9, 0.0, 0.0)
    # script_linprobe.sh runs 2 GPUs; per-GPU batch 128 (NTU), 64 (PKU-I), 16 (PKU-II); lr 0.1 / 0.1 / 0.01 absolute.
    assert r.resolved("ntu60") == r.resolved("ntu120") == (0.1, 256)
    assert r.resolved("pku-mmd-v1") == (0.1, 128)
    assert r.resolved("pku-mmd-v2") == (0.01, 32)
    assert r.resolved("my-own-clips") == (0.1, 256)
    # feeder/feeder_ntu.py + feeder/tools.py: crop p in [0.5, 1] of at least 64 frames, random_rot theta 0.3,
    # test view = centre 95 %; model/transformer.py linprobe: mean over persons including padded ones.
    assert (r.crop_min, r.crop_max, r.min_crop_frames, r.rotation, r.test_crop, r.person_pool) == (0.5, 1.0, 64, 0.3, 0.95, "mean")
    assert MampLinearRecipe(lr=0.05, batch_size=64).resolved("pku-mmd-v2") == (0.05, 64)


def test_slim_linear_recipe_values_are_the_official_ones():
    r = SlimLinearRecipe()
    # slim/eval/linear.py argument defaults: the 13 learning rates, n_last_blocks {1, 4} x avgpool {False, True},
    # epochs 10 x epoch_length 2000 iterations, eval every 2000, SGD momentum 0.9 wd 0, LinearClassifier N(0, 0.01).
    assert r.learning_rates == (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1)
    assert r.n_last_blocks == (1, 4) and r.avgpool == (False, True)
    assert (r.iterations, r.eval_every, r.momentum, r.weight_decay, r.head_init_std) == (20_000, 2_000, 0.9, 0.0, 0.01)
    # scripts/eval_linear.sh: 16 clips per GPU on 4 GPUs; linear.py scale_lr: lr * batch / 256.
    assert (r.batch_size, r.lr_base_batch) == (64, 256)
    # slim/data/augmentations.py DownstreamAugmentation: crop 0.5-1 (>= 16 frames), mirror / bone scaling
    # 0.85-1.15 / rotation (tilt 0.3, yaw pi) / noise 0.01, each with p 0.5; slim/data/datasets/ntu.py: 150-frame buffer.
    assert (r.crop_min, r.crop_max, r.min_crop_frames, r.pad_min_frames) == (0.5, 1.0, 16, 150)
    assert (r.mirror_p, r.scale_p, r.scale_range, r.rotate_p, r.noise_p) == (0.5, 0.5, (0.85, 1.15), 0.5, 0.5)
    assert (r.tilt, r.yaw, r.noise_sigma, r.scale_mode) == (0.3, math.pi, 0.01, "official")
    # slim/configs/default_config.yaml: teacher param_dtype fp16 (autocast on CUDA).
    assert r.precision == "fp16" and r.frames is None  # None = the encoder's input length (64 for SLiM's)


def test_slim_knn_and_retrieval_recipe_values_are_the_official_ones():
    r = SlimKnnRecipe()
    # slim/eval/knn.py defaults and scripts/eval_knn.sh: nb_knn 1 10 20 100 200, temperature 0.07, batch 256,
    # reported k = 1 ("Table 2b").
    assert (r.ks, r.temperature, r.batch_size, r.report_k) == ((1, 10, 20, 100, 200), 0.07, 256, 1)
    assert SlimRetrievalRecipe().report_k == 1 and SlimRetrievalRecipe.protocol == "retrieval"
    # CMD action_retrieval_cmd.py / ISC action_retrieval.py: 1-NN, cosine.
    assert SkelRetrievalRecipe().k == 1
    assert SkelKnnRecipe().k == 20 and SklearnLinearRecipe().max_iter == 1000


@pytest.mark.parametrize("protocol, method, expected", [
    ("linear", "slim", "slim"), ("linear", "mamp", "mamp"), ("linear", "mae", "mamp"), ("linear", "gfp", "mamp"),
    ("linear", "random", "mamp"), ("linear", None, "mamp"), ("knn", "slim", "slim"), ("knn", "mamp", "skel"),
    ("retrieval", "slim", "slim"), ("retrieval", "gfp", "skel"),
])
def test_each_method_defaults_to_its_papers_recipe(protocol, method, expected):
    assert default_recipe_name(protocol, method) == expected
    assert get_recipe(protocol, None, method).name == expected


def test_every_recipe_describes_itself_with_sources():
    for protocol, names in RECIPES.items():
        for name, cls in names.items():
            d = cls().describe()
            assert d["name"] == name and d["protocol"] == protocol and d["sources"] and d["changed"] == []


def test_set_overrides_are_recorded_and_bad_ones_name_the_field():
    r = get_recipe("linear", "slim", overrides=["iterations=200", "eval_every=50"])
    assert (r.iterations, r.eval_every) == (200, 50)
    assert r.describe()["changed"] == ["eval_every", "iterations"] and "set by hand" in r.label()
    with pytest.raises(SkelError, match=r"recipe slim \(linear\): iterations"):
        get_recipe("linear", "slim", overrides=["iterations=0"])
    with pytest.raises(SkelError, match="bogus"):
        get_recipe("linear", "mamp", overrides=["bogus=1"])
    with pytest.raises(SkelError, match="unknown --recipe 'slim2'.*mamp, slim, sklearn"):
        get_recipe("linear", "slim2")
    with pytest.raises(SkelError, match="field of the recipe"):
        get_recipe("knn", "skel", overrides=["a.b=1"])


def test_probe_cli_records_the_recipe_and_refuses_options_it_does_not_take(data_file, tmp_path):
    """Through the CLI on a tiny prepared file with a random small encoder: the recipe lands in the JSON;
    ``--k`` on a linear recipe, a wrong ``--set`` and --head/--recipe contradictions are one-line errors."""
    import json

    from helpers import assert_one_line_error, run_cli

    data = data_file
    r = run_cli("probe", "-d", data, "--random-init", "--recipe", "sklearn", "--set", "max_iter=50", "--out", tmp_path / "p",
                "--json", tmp_path / "p.json", "--device", "cpu")
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "p.json").read_text())
    assert res["recipe"]["name"] == "sklearn" and res["recipe"]["settings"]["max_iter"] == 50 and res["recipe"]["changed"] == ["max_iter"]
    assert "recipe sklearn" in r.output
    assert_one_line_error(run_cli("probe", "-d", data, "--random-init", "--recipe", "sklearn", "--k", "3", "--out", tmp_path / "q"),
                          "--k does not apply to the sklearn linear recipe")
    assert_one_line_error(run_cli("probe", "-d", data, "--random-init", "--recipe", "slim", "--set", "iterations=-5",
                                  "--out", tmp_path / "q"), "iterations")
    assert_one_line_error(run_cli("probe", "-d", data, "--random-init", "--head", "sgd", "--recipe", "slim", "--out", tmp_path / "q"),
                          "contradict")
    assert_one_line_error(run_cli("retrieve", "-d", data, "--random-init", "--recipe", "mamp", "--out", tmp_path / "q"),
                          "unknown --recipe 'mamp' for retrieval")
    assert_one_line_error(run_cli("probe", "-d", data, "--random-init", "--recipe", "slim", "--person-pool", "mean", "--out", tmp_path / "q"),
                          "--person-pool does not apply to the slim linear recipe")
    assert not (tmp_path / "q").exists()


def _slim_checkpoint(path, depth: int = 4):
    """A randomly initialised SLiM-shaped encoder (CLS, registers, RoPE) saved as a `slim` checkpoint."""
    import torch

    from skelcli.engine.checkpoint import save_checkpoint
    from skelcli.models.encoder import EncoderConfig, SkeletonEncoder
    from skelcli.settings import to_jsonable

    cfg = EncoderConfig(num_frames=32, t_patch=8, dim=16, depth=depth, heads=2, ffn="swiglu", temporal_pos="rope", use_cls=True,
                        num_registers=2, mask_token=True, pool="cls_mean", norm_eps=1e-6)
    torch.manual_seed(0)
    enc = SkeletonEncoder(cfg)
    return save_checkpoint(path, {"method": "slim", "settings": {}, "encoder_config": to_jsonable(cfg), "encoder": enc.state_dict(),
                                  "pretraining_only": [], "data": {"dataset": "ntu60", "num_classes": 60, "split": "xsub"},
                                  "epoch": 1, "step": 1})


def test_slim_checkpoints_get_slims_own_protocols_from_the_cli(data_file, tmp_path):
    """Without --recipe a SLiM checkpoint is probed with SLiM's grid (48 heads at batch 64, best head on
    test plus the validation-chosen one), its k-NN (k = 1 reported) and its retrieval; the JSON says so."""
    import json

    from helpers import run_cli

    ckpt = _slim_checkpoint(tmp_path / "slim" / "last.pt")
    r = run_cli("probe", "-c", ckpt, "-d", data_file, "--set", "iterations=12", "--set", "eval_every=6", "--set", "val_fraction=0.25",
                "--device", "cpu", "--json", tmp_path / "lin.json", "--out", tmp_path / "lin")
    assert r.exit_code == 0, r.output
    lin = json.loads((tmp_path / "lin.json").read_text())
    assert lin["recipe"]["name"] == "slim" and lin["recipe"]["changed"] == ["eval_every", "iterations", "val_fraction"]
    assert lin["num_heads"] == 48 and len(lin["heads"]) == 48
    assert lin["top1"] == max(h["test_top1"] for h in lin["heads"]) == lin["best_head"]["test_top1"]
    assert lin["val_chosen"]["key"] in {h["key"] for h in lin["heads"]} and lin["n_val"] >= 1
    assert "best head" in r.output and "val-chosen" in r.output
    r = run_cli("probe", "-c", ckpt, "-d", data_file, "--protocol", "knn", "--device", "cpu", "--json", tmp_path / "knn.json",
                "--out", tmp_path / "knn")
    assert r.exit_code == 0, r.output
    knn = json.loads((tmp_path / "knn.json").read_text())
    assert knn["recipe"]["name"] == "slim" and knn["k"] == 1 and knn["top1"] == knn["accuracy_at_k"]["1"]
    assert knn["feature_dim"] == 4 * 16  # [CLS_p0, CLS_p1, mean_p0, mean_p1]
    r = run_cli("retrieve", "-c", ckpt, "-d", data_file, "--device", "cpu", "--json", tmp_path / "ret.json", "--out", tmp_path / "ret")
    assert r.exit_code == 0, r.output
    ret = json.loads((tmp_path / "ret.json").read_text())
    assert ret["recipe"]["name"] == "slim" and ret["top1"] == knn["top1"] and ret["precision_at"]["1"] == ret["top1"]


def test_slim_grid_on_a_shallow_encoder_uses_the_blocks_it_has(data_file, tmp_path):
    """The small preset's SLiM encoder has 2 blocks: "the last 4 blocks" is capped at 2 (n in
    {1, 2} x avgpool x 12 unique lrs = 48 heads), and the JSON and console say so."""
    import json

    from helpers import run_cli

    ckpt = _slim_checkpoint(tmp_path / "slim2" / "last.pt", depth=2)
    r = run_cli("probe", "-c", ckpt, "-d", data_file, "--set", "iterations=4", "--set", "eval_every=4", "--device", "cpu",
                "--json", tmp_path / "lin.json", "--out", tmp_path / "lin")
    assert r.exit_code == 0, r.output
    lin = json.loads((tmp_path / "lin.json").read_text())
    assert lin["recipe"]["settings"]["n_last_blocks"] == [1, 2] and lin["num_heads"] == 48
    assert {h["n"] for h in lin["heads"]} == {1, 2} and "capped at the encoder's 2 blocks" in lin["notes"][0]
    assert "capped" in r.output
