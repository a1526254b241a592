"""Fine-tuning recipes (issue 17 item 1): `skel finetune --recipe mamp|slim`, SLiM's semi-supervised
recipe with its official values and label subset, and MAMP's official (per-rank) semi-supervised subsets."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from helpers import StopAfter, assert_one_line_error, run_cli
from skelcli.engine.checkpoint import load_checkpoint, save_checkpoint
from skelcli.engine.rundir import RunDir
from skelcli.eval.finetune import FinetuneSettings, finetune_once, mamp_official_subset, slim_subset
from skelcli.eval.recipes import MampFinetuneRecipe, SlimFinetuneRecipe, default_recipe_name, get_recipe
from skelcli.models.encoder import EncoderConfig, SkeletonEncoder
from skelcli.settings import to_jsonable

#: NTU60 xsub training clips (the official NTU60_XSub.npz ``x_train``).
NTU60_XSUB_TRAIN = 40_091


# ------------------------------------------------------------------------------------ recipe values
def test_slim_finetune_recipe_values_are_the_official_ones():
    r = SlimFinetuneRecipe()
    # scripts/eval_semi.sh: --head-lr 1e-3 --backbone-lr 1e-5, default GPUS=0,1 (2 processes);
    # slim/eval/finetune.py: batch_size default 128 per GPU -> global 256; scale_lr: lr * batch * world / 256.
    assert (r.head_lr, r.backbone_lr) == (1e-3, 1e-5)
    assert (r.batch_size, r.lr_base_batch) == (256, 256) and r.scaled_lrs() == (1e-5, 1e-3)
    # slim/eval/finetune.py run_eval_linear: SGD(momentum=0.9, weight_decay=1e-4) over both groups;
    # CosineAnnealingLR(max_iter, eta_min=0); max_iter = epochs 10 x epoch_length 2000; eval_period_iterations 2000.
    assert (r.momentum, r.weight_decay, r.min_lr) == (0.9, 1e-4, 0.0)
    assert (r.iterations, r.eval_every) == (20_000, 2_000)
    # slim/eval/finetune.py setup_finetune_classifier: n_blocks = 1, avgpool = True; LinearClassifier N(0, 0.01),
    # bias 0; nn.CrossEntropyLoss() without smoothing.
    assert (r.n_last_blocks, r.avgpool, r.head_init_std, r.label_smoothing) == (1, True, 0.01, 0.0)
    # slim/configs/eval/slim_eval.yaml: drop_path_rate 0.0.
    assert r.drop_path == 0.0
    # slim/data/datasets/ntu.py NTU_Classification(seed=42).
    assert r.subset_seed == 42
    # slim/data/augmentations.py DownstreamAugmentation (train view) + ntu.py min_buffer 150.
    assert (r.crop_min, r.crop_max, r.min_crop_frames, r.pad_min_frames) == (0.5, 1.0, 16, 150)
    assert (r.mirror_p, r.scale_p, r.scale_range, r.rotate_p, r.noise_p) == (0.5, 0.5, (0.85, 1.15), 0.5, 0.5)
    assert (r.tilt, r.yaw, r.noise_sigma) == (0.3, math.pi, 0.01)
    # slim/configs/default_config.yaml teacher param_dtype fp16, autocast without GradScaler (finetune.py).
    assert r.precision == "fp16" and r.frames is None
    assert SlimFinetuneRecipe.protocol == "finetune" and "KAIST-VICLab/SLiM slim/eval/finetune.py" in r.describe()["sources"]


def test_mamp_finetune_recipe_is_the_finetune_settings_recipe():
    r = MampFinetuneRecipe()
    s = FinetuneSettings()
    assert set(MampFinetuneRecipe.model_fields) <= set(FinetuneSettings.model_fields)
    for k in MampFinetuneRecipe.model_fields:
        assert getattr(r, k) == getattr(s, k), k
    # main_finetune.py + config/ntu60_xsub_joint/semi_0.01_t120_layer8_decay.yaml + script_semi.sh (lr 3e-4, min_lr 1e-5,
    # 24 per GPU x 2): the paper preset.
    assert (r.epochs, r.batch_size, r.lr, r.min_lr, r.warmup_epochs, r.layer_decay, r.label_smoothing) == (100, 48, 3e-4, 1e-5, 5, 0.8, 0.1)
    small = FinetuneSettings(**FinetuneSettings.preset("small"))
    assert small.mamp_recipe().describe()["changed"] == sorted(FinetuneSettings.preset("small"))
    assert (default_recipe_name("finetune", "slim"), default_recipe_name("finetune", "mamp"),
            default_recipe_name("finetune", "gfp"), default_recipe_name("finetune", None)) == ("slim", "mamp", "mamp", "mamp")


def test_wrong_recipe_fields_are_one_line_errors_naming_the_field():
    from skelcli.errors import SkelError

    with pytest.raises(SkelError, match=r"^recipe slim \(finetune\): iterationz: "):
        get_recipe("finetune", "slim", overrides=["iterationz=3"])
    with pytest.raises(SkelError, match=r"head_lr"):
        get_recipe("finetune", "slim", overrides=["head_lr=-1"])
    with pytest.raises(SkelError, match=r"layer_decay"):
        get_recipe("finetune", "mamp", overrides=["layer_decay=2"])


# ------------------------------------------------------------------------------------------ subsets
def _official_slim_draw(labels: np.ndarray, ratio: float) -> np.ndarray:
    """slim/data/datasets/ntu.py NTU_Classification.load_data, re-typed by hand (global legacy RNG)."""
    np.random.seed(42)
    selected = []
    for lbl in np.unique(labels):
        idx = np.where(labels == lbl)[0]
        np.random.shuffle(idx)
        selected.extend(idx[: max(1, int(len(idx) * ratio))])
    selected = np.array(selected)
    np.random.shuffle(selected)
    return selected


def test_slim_subset_is_the_official_seed_42_draw_and_class_balanced():
    labels = np.random.default_rng(3).permutation(np.repeat(np.arange(7), [40, 33, 20, 12, 9, 3, 1]))
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    ours = {ratio: slim_subset(labels, ratio) for ratio in (0.01, 0.1, 0.5)}
    assert np.array_equal(np.random.get_state()[1], before)  # the caller's global RNG is untouched
    for ratio, sub in ours.items():
        assert np.array_equal(sub, _official_slim_draw(labels, ratio)), ratio  # same clips, same order
        counts = np.bincount(labels[sub], minlength=7)
        expected = [max(1, int(n * ratio)) for n in np.bincount(labels)]
        assert counts.tolist() == expected and counts.min() >= 1
    assert len(ours[0.01]) == 7  # 1 % of <= 40 clips per class: one each
    assert np.array_equal(slim_subset(labels, 1.0), np.arange(len(labels)))  # ratio 1: no subsampling (official)


def test_mamp_official_subsets_are_the_union_of_the_two_rank_draws():
    n = 1000
    union, per_rank = mamp_official_subset(n, 0.05)
    for r in range(2):  # main_finetune.py: np.random.seed(0 + rank); feeder_ntu_semi.py random_select_data
        np.random.seed(r)
        idx = np.arange(n)
        np.random.shuffle(idx)
        assert np.array_equal(per_rank[r], idx[: int(n * 0.05)])
    assert np.array_equal(union, np.unique(np.concatenate(per_rank)))
    # NTU60 xsub, N = 40,091 (only the count matters): measured 794 distinct clips at 1 % (nominal 400) and
    # 7,584 at 10 % (nominal 4,009), about 2x the nominal labels.
    assert len(mamp_official_subset(NTU60_XSUB_TRAIN, 0.01)[0]) == 794
    assert len(mamp_official_subset(NTU60_XSUB_TRAIN, 0.1)[0]) == 7584


# ---------------------------------------------------------------------------------------------- CLI
def _slim_checkpoint(path) -> str:
    torch.manual_seed(0)
    cfg = EncoderConfig(num_frames=16, t_patch=4, dim=32, depth=2, heads=4, ffn="swiglu", temporal_pos="rope", use_cls=True,
                        num_registers=2, mask_token=True, pool="cls_mean", norm_eps=1e-6)
    enc = SkeletonEncoder(cfg)
    save_checkpoint(path, {"method": "slim", "settings": {}, "encoder_config": to_jsonable(cfg), "encoder": enc.state_dict(),
                           "pretraining_only": [], "data": {"dataset": "ntu60", "num_classes": 60, "split": "xsub"},
                           "epoch": 1, "step": 3})
    return str(path)


@pytest.fixture(scope="module")
def slim_ckpt(tmp_path_factory):
    return _slim_checkpoint(tmp_path_factory.mktemp("slim_ft") / "slim.pt")


def test_slim_recipe_cli_run_writes_the_recipe(data_file, slim_ckpt, tmp_path):
    out = tmp_path / "ft"
    # no --recipe: a SLiM checkpoint gets SLiM's recipe
    r = run_cli("finetune", "-c", slim_ckpt, "-d", data_file, "--set", "iterations=20", "--set", "eval_every=10",
                "--set", "batch_size=4", "--label-fraction", "0.5", "--device", "cpu", "--out", out, "--json", tmp_path / "r.json")
    assert r.exit_code == 0, r.output
    res = json.loads((out / "metrics.json").read_text())
    assert res["recipe"]["name"] == "slim" and res["recipe"]["protocol"] == "finetune"
    assert res["recipe"]["settings"]["iterations"] == 20 and res["recipe"]["changed"] == ["batch_size", "eval_every", "iterations"]
    assert res["recipe_label"] == "slim (batch_size, eval_every, iterations set by hand)" and "slim (batch_size" in r.output
    run = res["runs"][0]
    assert [h["iteration"] for h in run["history"]] == [10, 20] and run["steps"] == 20
    assert res["reported"]["key"] == "last_top1" and res["reported"]["top1"] == res["last_top1"]
    assert "final evaluation (reported)" in r.output and "reference, chosen on test" in r.output
    assert res["subsets"] == "official" and res["labelled_clips"] == run["train_clips"]
    ckpt = load_checkpoint(out / "finetuned.pt")
    assert ckpt["head_config"]["kind"] == "slim_linear" and ckpt["head"]["fc.weight"].shape == (60, 64)  # [CLS || mean patch]
    assert ckpt["settings"]["recipe"]["name"] == "slim"


def test_mamp_official_subsets_cli_records_counts_and_warns(data_file, tmp_path):
    out = tmp_path / "ft"
    r = run_cli("finetune", "--from-scratch", "-d", data_file, "--preset", "small", "--epochs", "1", "--batch-size", "4",
                "--label-fraction", "0.4", "--subsets", "official", "--repeats", "2", "--device", "cpu", "--out", out)
    assert r.exit_code == 0, r.output
    res = json.loads((out / "metrics.json").read_text())
    n_train = 9  # the tiny file's xsub training clips
    union, _ = mamp_official_subset(n_train, 0.4)
    assert res["recipe"]["name"] == "mamp" and res["subsets"] == "official"
    assert res["nominal_labelled_clips"] == int(n_train * 0.4) and res["labelled_clips"] == len(union) > res["nominal_labelled_clips"]
    assert [run["train_clips"] for run in res["runs"]] == [len(union)] * 2  # every repeat reuses the one subset
    assert any("per-rank draws" in w for w in res["warnings"]) and "per-rank draws" in r.output


@pytest.mark.parametrize("args, words", [
    (["--recipe", "slim", "--set", "iterationz=3"], ["iterationz", "recipe slim"]),
    (["--recipe", "slim", "--set", "head_lr=-1"], ["head_lr"]),
    (["--recipe", "mamp", "--set", "layer_decay=2"], ["layer_decay"]),
    (["--recipe", "slim", "--epochs", "3"], ["--epochs", "--set"]),
    (["--recipe", "slim", "--balanced", "--label-fraction", "0.1"], ["class-balanced"]),
    (["--recipe", "svm"], ["unknown --recipe 'svm'"]),
    (["--subsets", "some"], ["unknown --subsets 'some'"]),
])
def test_bad_recipe_options_fail_in_one_line_before_any_work(data_file, slim_ckpt, tmp_path, args, words):
    out = tmp_path / "o"
    r = run_cli("finetune", "-c", slim_ckpt, "-d", data_file, "--device", "cpu", "--out", out, *args)
    for w in words:
        assert_one_line_error(r, w)
    assert not out.exists()


def test_slim_recipe_refuses_an_encoder_without_cls(data_file, tmp_path):
    r = run_cli("finetune", "--from-scratch", "-d", data_file, "--preset", "small", "--recipe", "slim", "--device", "cpu",
                "--out", tmp_path / "o")
    assert_one_line_error(r, "CLS token")
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------- resume
@pytest.mark.parametrize("stop_at", [2, 3])  # inside the stream of clips / right after an evaluation
def test_slim_recipe_resume_reaches_the_uninterrupted_weights(data_file, slim_ckpt, tmp_path, stop_at):
    from skelcli.engine.checkpoint import load_encoder
    from skelcli.eval.features import data_info, load_split

    encoder, _, _ = load_encoder(slim_ckpt)
    state = encoder.state_dict()
    topo = data_info(data_file).topology
    train, test = load_split(data_file, "xsub", "train"), load_split(data_file, "xsub", "test")
    recipe = SlimFinetuneRecipe(iterations=6, eval_every=3, batch_size=4, head_lr=0.5, backbone_lr=0.05)
    s = FinetuneSettings(device="cpu")
    kw = dict(seed=5, recipe=recipe, topology=topo)
    ref = finetune_once(encoder.config, state, train, test, 60, s, **kw)
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    part = finetune_once(encoder.config, state, train, test, 60, s, run=run, stop=StopAfter(stop_at), **kw)
    assert part["interrupted"] == "SIGTERM" and part["steps"] == stop_at
    ckpt = load_checkpoint(run.path / "last.pt")
    assert ckpt["step"] == stop_at and ckpt["recipe"] == "slim"
    # SGD momentum 0.9, wd 1e-4 on both groups; lr = scaled lr * (1 + cos(pi * i / T)) / 2 at iteration i
    # (CosineAnnealingLR, eta_min 0, no warmup), the last applied being i = stop_at - 1.
    cos = 0.5 * (1 + math.cos(math.pi * (stop_at - 1) / 6))
    groups = ckpt["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups] == pytest.approx([0.05 * 4 / 256 * cos, 0.5 * 4 / 256 * cos])
    assert [(g["momentum"], g["weight_decay"]) for g in groups] == [(0.9, 1e-4)] * 2
    res = finetune_once(encoder.config, state, train, test, 60, s, run=run, resume=ckpt, **kw)
    assert res["steps"] == ref["steps"] == 6 and res["history"] == ref["history"]
    assert [h["iteration"] for h in res["history"]] == [3, 6]
    for (ka, va), (kb, vb) in zip(ref["model"].state_dict().items(), res["model"].state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    assert not torch.equal(ref["model"].encoder.state_dict()["blocks.0.attn.qkv.weight"], state["blocks.0.attn.qkv.weight"])


def test_slim_precision_is_fp16_autocast_on_cuda_and_fp32_on_cpu():
    from skelcli.eval.finetune import slim_precision

    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    # slim/eval/finetune.py: torch.cuda.amp.autocast(dtype=teacher param_dtype = fp16), no GradScaler.
    assert slim_precision(cuda, "auto", "fp16") == "fp16" and slim_precision(cpu, "auto", "fp16") == "fp32"
    assert slim_precision(cuda, "fp32", "fp16") == "fp32" and slim_precision(cuda, "auto", "fp32") == "fp32"
    assert slim_precision(cpu, "bf16", "fp16") == "bf16"
