"""SLiM: heads, Sinkhorn-Knopp, losses, EMA teacher, presets, FLOPs, and the end-to-end path."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from skelcli.data.clips import ClipBatch
from skelcli.methods.losses_slim import glcl_loss, glcl_pairs, ibot_loss, koleo_loss, soft_cross_entropy
from skelcli.methods.slim import SLIM_ENCODER, SLiM, SlimSettings, momentum_at
from skelcli.methods.slim_heads import DINOHead, sinkhorn_knopp, softmax_centring, target_entropy
from skelcli.models.encoder import EncoderConfig, SkeletonEncoder, count_parameters


def small_settings(**extra) -> SlimSettings:
    method = SlimSettings.preset("small", "ntu60")["method"]
    method["encoder"].update(dim=32, depth=1, heads=2)
    method.update(num_prototypes=64, head_hidden_dim=32, head_bottleneck_dim=16, **extra)
    return SlimSettings(**method)


def clip_batch(n: int = 4, frames: int = 90, seed: int = 0) -> ClipBatch:
    g = torch.Generator().manual_seed(seed)
    joints = torch.randn(n, 2, frames, 25, 3, generator=g) * 0.3
    valid = torch.tensor([frames, frames // 2, 30, 12][:n] + [frames] * max(0, n - 4))
    for i, v in enumerate(valid.tolist()):
        joints[i, :, v:] = 0
    joints[:, 1] = 0
    return ClipBatch(joints, valid, torch.zeros(n, dtype=torch.long))


# ----------------------------------------------------------------------------- encoder and heads


def test_slim_encoder_parameter_count() -> None:
    enc = SkeletonEncoder(SLIM_ENCODER)
    assert count_parameters(enc) == 6_368_768  # spec/slim.md 2.3: 6.37 M
    assert SLIM_ENCODER.num_tokens == 200 and SLIM_ENCODER.num_prefix == 5 and SLIM_ENCODER.feature_dim == 512


def test_sinkhorn_rows_sum_to_one_and_columns_near_uniform() -> None:
    b, k = 256, 32
    g = torch.Generator().manual_seed(0)
    logits = F.normalize(torch.randn(b, 16, generator=g), dim=1) @ F.normalize(torch.randn(k, 16, generator=g), dim=1).t()
    q = sinkhorn_knopp(logits, 0.07, iterations=3)
    torch.testing.assert_close(q.sum(1), torch.ones(b))
    target = b / k

    def spread(p: torch.Tensor) -> float:
        return float((p.sum(0) - target).abs().max())

    raw = spread(torch.softmax(logits / 0.07, dim=1))
    assert spread(q) < 0.5 * raw  # 3 iterations (spec 2.6) already balance the prototypes much better
    assert spread(sinkhorn_knopp(logits, 0.07, iterations=10)) < spread(q)
    q_long = sinkhorn_knopp(logits, 0.07, iterations=200)
    torch.testing.assert_close(q_long.sum(0), torch.full((k,), target), rtol=2e-3, atol=0)
    assert bool((q >= 0).all())


def test_sinkhorn_stays_finite_when_a_low_temperature_underflows_whole_samples() -> None:
    """At T = 0.005 a sample whose best logit is 1.0 below another's has exp((z - max) / T) = e^-200 = 0 in
    fp32 everywhere: its target is all zero (no NaN) and the other samples keep proper distributions."""
    logits = torch.tensor([[1.0, 0.9, 0.0], [0.95, 1.0, 0.1], [0.0, -0.02, -0.01]])
    q = sinkhorn_knopp(logits, 0.005)
    assert bool(torch.isfinite(q).all())
    assert float(q[2].sum()) == 0.0
    torch.testing.assert_close(q[:2].sum(1), torch.ones(2))
    # in the normal range the floor changes nothing: bit for bit the unfloored iteration
    z = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    ref = torch.exp(z / 0.07 - (z / 0.07).max()).t()
    ref = ref / ref.sum()
    for _ in range(3):
        ref = ref / ref.sum(dim=1, keepdim=True) / 5
        ref = ref / ref.sum(dim=0, keepdim=True) / 6
    assert torch.equal(sinkhorn_knopp(z, 0.07), (ref * 6).t())


def test_softmax_centring_subtracts_the_ema_centre_then_moves_it() -> None:
    """DINO's centring by hand: targets softmax((z - c) / T), then c <- m c + (1 - m) mean(z); an empty batch
    leaves the centre where it is."""
    z = torch.tensor([[1.0, 0.0, -1.0], [0.0, 2.0, 0.0]])
    centre = torch.tensor([[0.5, 0.5, 0.0]])
    p = softmax_centring(z, centre, 0.5, 0.9)
    e = torch.exp(torch.tensor([[1.0, -1.0, -2.0], [-1.0, 3.0, 0.0]]))  # (z - c) / 0.5
    torch.testing.assert_close(p, e / e.sum(1, keepdim=True))
    torch.testing.assert_close(centre, torch.tensor([[0.9 * 0.5 + 0.1 * 0.5, 0.9 * 0.5 + 0.1 * 1.0, 0.1 * -0.5]]))
    before = centre.clone()
    assert softmax_centring(torch.zeros(0, 3), centre, 0.5, 0.9).shape == (0, 3)
    torch.testing.assert_close(centre, before)


def test_softmax_centring_keeps_its_centres_in_the_checkpoint_and_moves_them_each_step() -> None:
    """With ``centring="softmax"`` the two (1, K) centres are buffers of the method (saved with it, so a resumed
    run continues exactly); one training step moves both away from zero. Sinkhorn runs have no such buffers."""
    m = SLiM(small_settings(centring="softmax"))
    assert {"cls_centre", "patch_centre"} <= set(m.state_dict())
    assert m.cls_centre.shape == (1, 64) and float(m.cls_centre.abs().sum()) == 0.0
    torch.manual_seed(0)
    out = m(clip_batch())
    assert torch.isfinite(out["loss"])
    assert float(m.cls_centre.abs().sum()) > 0 and float(m.patch_centre.abs().sum()) > 0
    assert "cls_centre" not in SLiM(small_settings(centring="sinkhorn")).state_dict()


def test_target_entropy_is_one_for_uniform_targets_and_zero_for_one_hot_and_is_logged() -> None:
    """The uniform-collapse gauge: entropy / log K of the teacher's CLS targets, hand-computed for a two-row
    batch, and logged by a SLiM step next to feature_std."""
    k = 4
    assert float(target_entropy(torch.full((3, k), 1 / k))) == pytest.approx(1.0)
    assert float(target_entropy(torch.eye(k))) == pytest.approx(0.0, abs=1e-6)
    half = torch.tensor([[0.5, 0.5, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    assert float(target_entropy(half)) == pytest.approx((math.log(2) / 2) / math.log(k))
    m = SLiM(small_settings())
    torch.manual_seed(0)
    m(clip_batch())
    logged = m.log_metrics()["target_entropy"]
    assert 0.0 <= logged <= 1.0 + 1e-6


def test_dino_head_cosine_logits_and_prototype_freeze() -> None:
    head = DINOHead(8, 10, hidden_dim=16, bottleneck_dim=4)
    x = torch.randn(5, 8)
    out = head(x)
    assert out.shape == (5, 10) and float(out.detach().abs().max()) <= 1 + 1e-5  # weight_g = 1: cosine logits
    with torch.no_grad():
        head.prototypes.mul_(3.0)  # scaling a prototype row changes nothing (weight normalisation)
    torch.testing.assert_close(head(x), out)
    head.freeze_prototypes = True
    head(x).sum().backward()
    assert head.prototypes.grad is None and head.mlp[0].weight.grad is not None
    head.freeze_prototypes = False
    head(x).sum().backward()
    assert head.prototypes.grad is not None


def test_prototype_norm_g_is_trained_as_in_dinov2() -> None:
    """weight_g starts at 1 and gets gradients (DINOv2 trains it; frozen with the rest of the last layer
    in the first epoch); train_norm=False keeps it at 1."""
    head = DINOHead(8, 10, hidden_dim=16, bottleneck_dim=4)
    x = torch.randn(5, 8)
    assert torch.equal(head.prototype_norm, torch.ones(10, 1)) and head.prototype_norm.requires_grad
    head.freeze_prototypes = True
    head(x).pow(2).sum().backward()
    assert head.prototype_norm.grad is None
    head.freeze_prototypes = False
    head(x).pow(2).sum().backward()
    assert head.prototype_norm.grad is not None and float(head.prototype_norm.grad.abs().sum()) > 0
    with torch.no_grad():
        unit = head(x)
        head.prototype_norm.fill_(2.0)
        torch.testing.assert_close(head(x), 2 * unit)  # w_k = g_k v_k / ||v_k||
    fixed = DINOHead(8, 10, hidden_dim=16, bottleneck_dim=4, train_norm=False)
    assert not fixed.prototype_norm.requires_grad
    m = SLiM(small_settings())
    names = {n for n, q in m.named_parameters() if q.requires_grad}
    assert "dino_head.prototype_norm" in names and "ibot_head.prototype_norm" in names
    assert not any(n.startswith("teacher.") for n in names)


def test_gradient_clipping_groups_are_the_student_submodules() -> None:
    """SLiM clips the backbone's, the DINO head's and the iBOT head's gradient norms separately (DINOv2):
    a huge head gradient no longer shrinks the backbone's."""
    m = SLiM(small_settings())
    groups = m.clip_groups()
    assert len(groups) == 3
    assert [set(map(id, g)) for g in groups] == [set(map(id, mod.parameters())) for mod in (m.encoder, m.dino_head, m.ibot_head)]
    for q in m.parameters():
        q.grad = torch.full_like(q, 1e-3)
    for q in m.dino_head.parameters():
        q.grad = torch.full_like(q, 100.0)
    before = torch.cat([q.grad.flatten() for q in m.encoder.parameters()]).norm()
    for g in groups:
        torch.nn.utils.clip_grad_norm_(g, 3.0)
    after = torch.cat([q.grad.flatten() for q in m.encoder.parameters()]).norm()
    assert float(after) == pytest.approx(float(min(before, 3.0)), rel=1e-5)
    assert float(torch.cat([q.grad.flatten() for q in m.dino_head.parameters()]).norm()) == pytest.approx(3.0, rel=1e-4)
    assert len(SLiM(small_settings(clip_per_submodule=False)).clip_groups()) == 1


def test_local_mask_ratios_stay_in_order_and_global_ones_are_shuffled() -> None:
    from skelcli.models.tube_masking import stratified_ratios

    g = torch.Generator().manual_seed(0)
    r = stratified_ratios(8, 0.5, 0.9, g, shuffle=False)
    edges = torch.linspace(0.5, 0.9, 9)
    assert bool(((r >= edges[:-1]) & (r <= edges[1:])).all()) and torch.equal(r, r.sort().values)
    shuffled = stratified_ratios(64, 0.5, 0.9, torch.Generator().manual_seed(0))
    assert not torch.equal(shuffled, shuffled.sort().values)
    assert SlimSettings().shuffle_local_mask_ratios is False


def test_slim_official_init() -> None:
    """init="slim" = SLiM's init_weights_vit_timm: Linear trunc-normal 0.02 with zero bias, CLS and
    registers N(0, 1e-6), mask token 0, position table trunc-normal 0.02 (slim/models/vision_transformer.py)."""
    torch.manual_seed(0)
    enc = SkeletonEncoder(SLIM_ENCODER)
    assert SLIM_ENCODER.init == "slim"
    qkv = enc.blocks[0].attn.qkv if hasattr(enc.blocks[0], "attn") else None
    linears = [mod for name, mod in enc.named_modules() if isinstance(mod, torch.nn.Linear) and name != "patch_embed"]
    w = torch.cat([mod.weight.detach().flatten() for mod in linears])
    assert abs(float(w.std()) - 0.02) < 0.001  # trunc-normal at +-2 absolute (torch's default bounds): N(0, 0.02)
    assert all(mod.bias is None or float(mod.bias.abs().max()) == 0 for mod in linears)
    assert float(enc.cls_token.std()) < 1e-5 and float(enc.registers.std()) < 1e-5
    assert float(enc.mask_embed.abs().max()) == 0
    assert abs(float(enc.joint_embed.std()) - 0.02) < 0.005
    assert qkv is None or qkv in linears
    mamp = SkeletonEncoder(SLIM_ENCODER.model_copy(update={"init": "mamp"}))
    assert float(mamp.cls_token.std()) > 1e-3  # MAMP's init: trunc-normal 0.02 for every embedding


# ----------------------------------------------------------------------------- losses


def test_glcl_pairs_never_pair_a_view_with_itself() -> None:
    pairs = glcl_pairs(2, 8)
    assert len(pairs) == 18
    assert [p for p in pairs if p[0] == "global"] == [("global", 0, 1), ("global", 1, 0)]
    for local in range(8):
        assert {g for kind, s, g in pairs if kind == "local" and s == local} == {0, 1}


def test_glcl_loss_matches_hand_computation() -> None:
    k, b = 3, 2
    sg = torch.randn(2, b, k)
    sl = torch.randn(1, b, k)
    tp = torch.softmax(torch.randn(2, b, k), dim=-1)

    def ce(q, z):
        return float(-(q * torch.log_softmax(z / 0.1, -1)).sum(-1).mean())

    hand = (ce(tp[0], sl[0]) + ce(tp[1], sl[0]) + ce(tp[1], sg[0]) + ce(tp[0], sg[1])) / 4
    assert math.isclose(float(glcl_loss(sg, sl, tp, 0.1)), hand, rel_tol=1e-5)


def test_ibot_loss_averages_within_view_then_over_all_views() -> None:
    z = torch.randn(3, 4)
    q = torch.softmax(torch.randn(3, 4), dim=-1)
    view = torch.tensor([0, 0, 2])
    ce = soft_cross_entropy(q, z, 0.1)
    hand = ((ce[0] + ce[1]) / 2 + ce[2]) / 4  # 4 global views, views 1 and 3 unmasked
    torch.testing.assert_close(ibot_loss(z, q, view, 4, 0.1), hand)


def test_koleo_hand_computed() -> None:
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])  # normalised: e1, e2, -e1
    d = math.sqrt(2)  # every point's nearest neighbour is at distance sqrt(2)
    assert math.isclose(float(koleo_loss(x)), -math.log(d + 1e-6), rel_tol=1e-6)


# ----------------------------------------------------------------------------- method


def test_teacher_gets_no_gradient_and_moves_by_the_ema_rule() -> None:
    torch.manual_seed(0)
    method = SLiM(small_settings())
    method.train()
    assert not method.teacher.training
    out = method(clip_batch())
    assert set(out) >= {"loss", "glcl", "mfm", "koleo"} and math.isfinite(float(out["loss"].detach()))
    out["loss"].backward()
    assert all(p.grad is None and not p.requires_grad for p in method.teacher.parameters())
    assert method.encoder.patch_embed.weight.grad is not None
    assert method.ibot_head.mlp[0].weight.grad is not None and method.dino_head.mlp[0].weight.grad is not None
    assert method.dino_head.prototypes.grad is None  # frozen in the first epoch
    method.on_epoch_start(1)
    assert not method.dino_head.freeze_prototypes

    with torch.no_grad():
        for p in method.encoder.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    before_t = {k: v.clone() for k, v in method.teacher.state_dict().items()}
    student = {f"encoder.{k}": v.clone() for k, v in method.encoder.state_dict().items()}
    method.after_step(3, 10)
    start = method.settings.momentum_start
    m = momentum_at(3, 10, start, 1.0)
    assert start < m < 1.0 and method.momentum == m
    for key, new in method.teacher.state_dict().items():
        if key in student:
            torch.testing.assert_close(new, m * before_t[key] + (1 - m) * student[key])
    assert momentum_at(0, 10, 0.994, 1.0) == pytest.approx(0.994) and momentum_at(10, 10, 0.994, 1.0) == pytest.approx(1.0)
    assert method.downstream_encoder() is method.teacher["encoder"]


def test_teacher_temperature_warms_up_then_stays() -> None:
    method = SLiM(small_settings(teacher_temp_start=0.04, teacher_temp=0.07, teacher_temp_warmup_epochs=2, schedule_epochs=10))
    method.after_step(0, 100)  # after 1 of 100 steps: 0.1 epoch
    assert method.teacher_temp_now == pytest.approx(0.04 + 0.03 * 0.1 / 2)
    method.after_step(49, 100)
    assert method.teacher_temp_now == pytest.approx(0.07)


def test_overfitting_one_batch_lowers_the_loss() -> None:
    torch.manual_seed(1)
    method = SLiM(small_settings(freeze_prototype_epochs=0))
    batch = clip_batch(8, seed=3)
    opt = torch.optim.AdamW(method.param_groups(0.0), lr=2e-3)
    losses = []
    for step in range(25):
        out = method(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        method.after_step(step, 25)
        losses.append(float(out["loss"]))
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5


def test_param_groups_scale_patch_embedding_and_skip_teacher() -> None:
    method = SLiM(small_settings())
    groups = method.param_groups(0.04)
    ids = {id(p): g for g in groups for p in g["params"]}
    assert ids[id(method.encoder.patch_embed.weight)]["lr_scale"] == 0.2
    assert ids[id(method.encoder.blocks[0].attn.qkv.weight)]["lr_scale"] == 1.0
    assert ids[id(method.encoder.blocks[0].attn.qkv.bias)]["weight_decay"] == 0.0
    assert not any(id(p) in ids for p in method.teacher.parameters())


def test_presets_resolve_through_the_settings_layers() -> None:
    from skelcli.engine.config import resolve_pretrain_settings

    paper = resolve_pretrain_settings("slim", "paper", "ntu60")
    assert paper.method.encoder == SLIM_ENCODER and paper.method.num_prototypes == 65536
    assert paper.optim.lr == pytest.approx(2e-4 * math.sqrt(768 / 1024))
    assert paper.optim.betas == (0.9, 0.999) and paper.optim.weight_decay_end == 0.2 and paper.optim.grad_clip == 3.0
    assert paper.data.batch_size == 768 and paper.method.iterations_per_epoch == 1250
    small = resolve_pretrain_settings("slim", "small", "ntu60", overrides=["method.encoder.depth=2"])
    enc = small.method.encoder
    assert (enc.dim, enc.depth, enc.heads, enc.t_patch, enc.ffn, enc.pool) == (32, 2, 4, 8, "swiglu", "cls_mean")
    assert enc.num_frames == 32 and small.method.local_frames == (16, 8, 8, 8)


# ----------------------------------------------------------------------------- FLOPs (spec 5.2)


def _encoder_flops(cfg: EncoderConfig, persons: int) -> int:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    enc = SkeletonEncoder(cfg).eval()
    x = torch.randn(persons, cfg.num_frames, 25, 3)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        enc(x)
    return counter.get_total_flops()


def _hand_flops(n_tokens: int, dim: int, depth: int, ffn_macs_per_token: int, patch_in: int, n_patch: int) -> int:
    linear = (4 * dim * dim + ffn_macs_per_token) * n_tokens  # qkv + proj + FFN
    attention = 2 * n_tokens * n_tokens * dim  # QK^T and AV
    return 2 * (depth * (linear + attention) + n_patch * patch_in * dim)


def test_inference_flops_of_the_paper_encoders() -> None:
    slim = _encoder_flops(SLIM_ENCODER, persons=2)
    # 205 tokens (200 + CLS + 4 registers), SwiGLU 256 -> 2x688 -> 256
    hand = 2 * _hand_flops(205, 256, 8, 3 * 256 * 688, 24, 200)
    assert abs(slim - hand) / hand < 0.01
    assert 5.7e9 < slim < 6.1e9  # spec 5.2: ~5.9 G for 2 persons, not the paper's 3.59 G
    assert abs(slim / 2 - 3.59e9) / 3.59e9 > 0.15  # neither does one person (~2.9 G) give 3.59
    mamp = _encoder_flops(EncoderConfig(), persons=2)
    assert 27.5e9 < mamp < 28.7e9  # the paper's 28.32 G for the MAE family
    assert 4.5 < mamp / slim < 5.0  # ~4.8x under one convention, against the paper's 7.89x


# ----------------------------------------------------------------------------- end to end (CLI)


def _prepared(tmp_path, classes: int = 4):
    from typer.testing import CliRunner

    from skelcli.cli._app import app

    runner = CliRunner()
    raw, h5 = tmp_path / "raw", tmp_path / "ntu60.h5"
    res = runner.invoke(app, ["synth", "ntu60", "--out", str(raw), "--classes", str(classes), "--seed", "0", "--no-faults"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["prepare", "ntu60", "--raw", str(raw), "--out", str(h5)])
    assert res.exit_code == 0, res.output
    return runner, app, h5


def _pretrain(runner, app, h5, run, epochs: int, *sets: str, batch: int = 8) -> None:
    args = ["pretrain", "--method", "slim", "--preset", "small", "--data", str(h5), "--epochs", str(epochs),
            "--batch-size", str(batch), "--out", str(run), "--no-progress", "--seed", "0"]
    for item in sets:
        args += ["--set", item]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output


def _probe_top1(runner, app, h5, ckpt, out_json, *extra: str) -> float:
    import json

    res = runner.invoke(app, ["probe", "--checkpoint", str(ckpt), "--data", str(h5), "--json", str(out_json),
                              "--no-cache", "--device", "cpu", *extra])
    assert res.exit_code == 0, res.output
    return float(json.loads(out_json.read_text())["top1"])


def test_cli_pretrain_slim_then_probe(tmp_path) -> None:
    from skelcli.engine.checkpoint import load_checkpoint

    runner, app, h5 = _prepared(tmp_path)
    run = tmp_path / "run"
    _pretrain(runner, app, h5, run, 1, "method.encoder.depth=1", "method.encoder.dim=32", "method.encoder.heads=2",
              "method.num_prototypes=64", "method.head_hidden_dim=32", "method.head_bottleneck_dim=16")
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["method"] == "slim" and ckpt["encoder_config"]["pool"] == "cls_mean"
    assert ckpt["encoder_config"]["num_frames"] == 32
    teacher = {k[len("teacher.encoder."):]: v for k, v in ckpt["model"].items() if k.startswith("teacher.encoder.")}
    assert teacher and all(torch.equal(teacher[k], v) for k, v in ckpt["encoder"].items())  # downstream = teacher
    top1 = _probe_top1(runner, app, h5, run / "last.pt", tmp_path / "probe.json", "--protocol", "knn", "--k", "5")
    assert 0.0 <= top1 <= 1.0


def test_iteration_based_epochs_cycle_the_data(tmp_path) -> None:
    """SLiM's epoch is a fixed number of iterations (spec 5.1): 2 epochs x 5 iterations = 10 steps
    whatever the split's length (data passes cycle underneath), and the checkpoint records epoch 2."""
    from skelcli.engine.checkpoint import load_checkpoint

    runner, app, h5 = _prepared(tmp_path)
    run = tmp_path / "run"
    _pretrain(runner, app, h5, run, 2, "method.encoder.depth=1", "method.encoder.dim=32", "method.encoder.heads=2",
              "method.num_prototypes=64", "method.head_hidden_dim=32", "method.head_bottleneck_dim=16",
              "method.iterations_per_epoch=5")
    ckpt = load_checkpoint(run / "last.pt")
    assert (ckpt["epoch"], ckpt["step"]) == (2, 10)
    assert ckpt["settings"]["method"]["iterations_per_epoch"] == 5


def test_paper_preset_follows_the_official_code_and_small_keeps_its_measured_deviations() -> None:
    """Defaults = the released code (docs/slim.md "Fidelity settings"): per-submodule clipping (DINOv2 train
    loop), trainable prototype norm (DINOv2 DINOHead), local mask ratios in order (slim/data/collate.py),
    index-order bone scaling (slim/data/augmentations.py random_scale), init_weights_vit_timm
    (slim/models/vision_transformer.py). The small preset keeps the three it was measured to need."""
    from skelcli.engine.config import resolve_pretrain_settings

    paper = resolve_pretrain_settings("slim", "paper").method
    assert (paper.clip_per_submodule, paper.train_prototype_norm, paper.shuffle_local_mask_ratios, paper.scale_mode,
            paper.encoder.init) == (True, True, False, "official", "slim")
    small = resolve_pretrain_settings("slim", "small").method
    assert (small.clip_per_submodule, small.train_prototype_norm, small.shuffle_local_mask_ratios, small.scale_mode,
            small.encoder.init) == (True, True, True, "kinematic", "mamp")


@pytest.mark.parametrize("setting,field", [
    ('method.centring="bogus"', "method.slim.centring"),
    ("method.centre_momentum=1.0", "method.slim.centre_momentum"),
    ("method.centre_momentum=-0.1", "method.slim.centre_momentum"),
    ("method.teacher_temp=0", "method.slim.teacher_temp"),
    ("method.teacher_temp_start=-0.01", "method.slim.teacher_temp_start"),
    ("method.student_temp=0", "method.slim.student_temp"),
])
def test_bad_centring_settings_fail_at_parse_time_and_keep_an_earlier_run(data_file, tmp_path, setting, field) -> None:
    """A wrong centring value or a temperature <= 0 is a one-line error naming the field, before any work: an earlier run in the
    output folder keeps its checkpoint byte for byte."""
    from helpers import assert_one_line_error, run_cli

    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"an earlier run")
    r = run_cli("pretrain", "--method", "slim", "--data", data_file, "--preset", "small", "--device", "cpu",
                "--out", run, "--no-progress", "--set", setting)
    assert_one_line_error(r, field)
    assert (run / "last.pt").read_bytes() == b"an earlier run" and sorted(p.name for p in run.iterdir()) == ["last.pt"]
