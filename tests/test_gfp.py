"""GFP (spec/gfp.md): level layout, window alignment, gradient flow, VICReg terms, collapse toy, FLOPs."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from skelcli.errors import SkelError
from skelcli.methods.base import DatasetInfo, get_method
from skelcli.methods.gfp import GFP, GfpSettings, TargetGenerator, derive_pool_kernels, frame_motion, module_flops
from skelcli.methods.vicreg import covariance_loss, variance_loss

TINY_ENCODER = dict(num_frames=120, t_patch=4, dim=16, depth=1, heads=2)


def tiny_settings(**kw) -> GfpSettings:
    base = dict(encoder=TINY_ENCODER, decoder_dim=16, decoder_heads=2, target_dim=8, tgn_hidden=(16, 16, 16, 32))
    base.update(kw)
    return GfpSettings(**base)


# ------------------------------------------------------------------------------------------ layout
def test_paper_levels_have_150_75_25_1_targets() -> None:
    s = GfpSettings()
    assert s.resolved_pool_kernels() == (5, 2, 3)
    assert s.level_shapes() == [(6, 25), (3, 25), (1, 25), (1, 1)]
    assert s.level_frames() == [20, 40, 120]
    torch.manual_seed(0)
    m = GFP(tiny_settings(), DatasetInfo())
    preds, targets, mask = m.predict(torch.randn(4, 120, 25, 3))
    assert [p.shape[1] for p in preds] == [150, 75, 25, 1]
    assert [z.shape[1] for z in targets] == [150, 75, 25, 1]
    assert sum(p.shape[1] for p in preds) == 251
    assert all(p.shape == z.shape == (4, p.shape[1], 8) for p, z in zip(preds, targets))
    assert int((mask.mask == 0).sum(1)[0]) == 74  # MAMP: 74 of 750 visible at 0.9


def test_kernels_derived_from_segment_count_and_validated() -> None:
    assert derive_pool_kernels(30) == (5, 2, 3)
    assert derive_pool_kernels(8) == (2, 2, 2)
    assert derive_pool_kernels(16) == (4, 2, 2)
    assert derive_pool_kernels(6) == (3, 2, 1)
    small = GfpSettings(**GfpSettings.preset("small", "ntu60")["method"])
    assert small.encoder.num_segments == 4 and small.resolved_pool_kernels() == (2, 2, 1)
    assert small.level_shapes() == [(2, 25), (1, 25), (1, 25), (1, 1)]  # kernel 1 repeats a level at 4 segments
    with pytest.raises(ValidationError, match="do not tile 8 temporal segments"):
        GfpSettings(encoder=dict(num_frames=32, t_patch=4), pool_kernels=(3, 2, 1))
    with pytest.raises(ValidationError, match="level_blocks needs 3"):
        GfpSettings(pool_kernels=(5, 6), tgn_hidden=(8, 8, 8))


def test_presets_resolve_tau_per_dataset_and_validate_through_the_engine() -> None:
    from skelcli.engine.config import resolve_pretrain_settings

    assert GfpSettings.preset("paper", "ntu120")["method"]["tau"] == 0.75
    paper = resolve_pretrain_settings("gfp", "paper", "ntu60")
    assert paper.method.tau == 0.80 and paper.optim.epochs == 400 and paper.data.batch_size == 128
    assert paper.optim.lr == 1e-3 and paper.optim.min_lr == 5e-4 and paper.optim.warmup_epochs == 20
    assert tuple(paper.optim.betas) == (0.9, 0.95) and paper.optim.weight_decay == 0.05
    small = resolve_pretrain_settings("gfp", "small", "ntu60")
    mamp_small = resolve_pretrain_settings("mamp", "small", "ntu60")
    assert small.method.encoder == mamp_small.method.encoder  # same encoder as the MAMP demo run
    assert small.optim == mamp_small.optim and small.data == mamp_small.data
    with pytest.raises(SkelError, match="do not tile"):
        resolve_pretrain_settings("gfp", "small", "ntu60", overrides=["method.pool_kernels=[3, 2]"])
    assert get_method("gfp") is GFP and GFP.pretraining_only == ("decoder", "tgn")


# ------------------------------------------------------------------------------------------ windows
@pytest.mark.parametrize("segment,joint", [(0, 0), (7, 3), (14, 12), (29, 24)])
def test_pooling_windows_match_tgn_windows(segment: int, joint: int) -> None:
    """Perturb one (segment, joint) patch: the same token of every level changes on both sides."""
    torch.manual_seed(0)
    m = GFP(tiny_settings(level_blocks=(0, 0, 0, 0)), DatasetInfo()).eval()  # no blocks: pure pooling + per-token heads
    expected = [(segment // 5) * 25 + joint, (segment // 10) * 25 + joint, joint, 0]

    grid = torch.randn(1, 30, 25, 16)
    bumped = grid.clone()
    bumped[0, segment, joint] += torch.randn(16)  # not a constant shift (LayerNorm would remove it)
    with torch.no_grad():
        before, after = m.decoder.decode(grid), m.decoder.decode(bumped)
    pred_changed = [torch.nonzero((a - b).abs().amax(-1)[0] > 1e-4).flatten().tolist() for a, b in zip(after, before)]

    x = torch.randn(2, 120, 25, 3)
    moved = x.clone()
    # A translation of frames 4s+1..4s+3 changes the motion only at frames 4s and 4s+3: inside the patch.
    moved[:, 4 * segment + 1 : 4 * segment + 4, joint] += 1.0
    changed_frames = torch.nonzero((frame_motion(moved) - frame_motion(x)).abs().sum((0, 2, 3)) > 1e-3).flatten().tolist()
    assert changed_frames == [f for f in (4 * segment, 4 * segment + 3) if f < 119]  # the last frame's motion is 0
    with torch.no_grad():
        t_before, t_after = m.tgn(x), m.tgn(moved)
    tgn_changed = [torch.nonzero((a - b).abs().amax(-1)[0] > 1e-4).flatten().tolist() for a, b in zip(t_after, t_before)]

    assert pred_changed == [[i] for i in expected]
    assert tgn_changed == pred_changed


def test_tgn_window_contents_are_the_frames_of_the_token() -> None:
    """Level-1 token j of the TGN holds frames 20*(j // 25) .. +20 of joint j % 25, frame-major then xyz."""
    s = GfpSettings()
    tgn = TargetGenerator(s)
    m = torch.arange(120 * 25 * 3, dtype=torch.float32).reshape(1, 120, 25, 3)
    groups = tgn.group(m)
    assert [g.shape[1:] for g in groups] == [(150, 60), (75, 120), (25, 360), (1, 9000)]
    j = 3 * 25 + 7
    assert torch.equal(groups[0][0, j], m[0, 60:80, 7].reshape(-1))
    assert torch.equal(groups[1][0, 25 + 7], m[0, 40:80, 7].reshape(-1))
    assert torch.equal(groups[2][0, 7], m[0, :, 7].reshape(-1))


# ------------------------------------------------------------------------------------------ training signals
def test_gradients_reach_encoder_decoder_and_tgn() -> None:
    torch.manual_seed(0)
    m = GFP(tiny_settings(), DatasetInfo()).train()
    preds, targets, _ = m.predict(torch.randn(4, 120, 25, 3).cumsum(1) * 0.05)
    out = m.loss_terms(preds, targets)
    out["loss"].backward()
    for name, p in [
        ("encoder.patch_embed", m.encoder.patch_embed.weight),
        ("encoder.blocks.0", m.encoder.blocks[0].attn.qkv.weight),
        ("decoder.mask_token", m.decoder.mask_token),
        ("decoder.heads.3", m.decoder.heads[3].weight),
        ("tgn level 1", m.tgn.mlps[0][0].weight),
        ("tgn global", m.tgn.mlps[3][0].weight),
    ]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # The prediction loss alone (no regulariser) also trains the TGN: no stop-gradient.
    m.zero_grad()
    m.settings.var_weight = m.settings.cov_weight = 0.0
    m.loss_terms(*m.predict(torch.randn(4, 120, 25, 3))[:2])["loss"].backward()
    assert m.tgn.mlps[0][-1].weight.grad.abs().sum() > 0
    assert set(m.log_metrics()) == {"target_std_l1", "target_std_l2", "target_std_l3", "target_std_global"}


def test_variance_and_covariance_terms() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(64, 8, generator=g)
    z = (z - z.mean(0)) / z.std(0) * torch.linspace(1.0, 3.0, 8)  # every std >= 1
    assert variance_loss(z).item() == 0.0
    collapsed = torch.ones(64, 8) * 0.3
    assert variance_loss(collapsed).item() == pytest.approx(1.0 - 1e-2, abs=1e-6)  # gamma - sqrt(eps)
    assert variance_loss(z * 0.1).item() > 0.5
    # cov of [[1, 1], [-1, -1]] = [[2, 2], [2, 2]]: off-diagonal squares 8, / C = 4.
    assert covariance_loss(torch.tensor([[1.0, 1.0], [-1.0, -1.0]])).item() == pytest.approx(4.0)
    assert covariance_loss(torch.tensor([[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]])).item() == pytest.approx(0.0)


def _toy_data(n: int = 32) -> torch.Tensor:
    """Predictable clips: one sinusoid per sample (frequency, phase, amplitude) over a fixed joint pattern."""
    g = torch.Generator().manual_seed(1)
    u = torch.randn(1, 1, 25, 3, generator=g)
    a = 0.5 + torch.rand(n, 1, 1, 1, generator=g)
    w = 0.2 + 0.6 * torch.rand(n, 1, 1, 1, generator=g)
    ph = 6.28 * torch.rand(n, 1, 1, 1, generator=g)
    return a * u * torch.sin(w * torch.arange(16.0).reshape(1, 16, 1, 1) + ph)


def _train_toy(steps: int = 100, **kw) -> dict[str, float]:
    torch.manual_seed(0)
    s = GfpSettings(encoder=dict(num_frames=16, t_patch=4, dim=32, depth=1, heads=2), decoder_dim=32, decoder_heads=2,
                    level_blocks=(1, 0, 0, 0), target_dim=16, tgn_hidden=(32, 32, 32, 64), **kw)
    m = GFP(s, DatasetInfo()).train()
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3, weight_decay=0.05)
    x = _toy_data()
    for _ in range(steps):
        out = m.loss_terms(*m.predict(x)[:2])
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    return m.log_metrics()


def test_collapse_without_regulariser_and_not_with_it() -> None:
    """No stop-gradient: without var/cov the TGN collapses; the variance hinge holds the std near 1.

    The "on" run uses the spec's guard (spec/gfp.md 7 #9: var 5 / cov 1) with F.mse_loss-style channel
    averaging; with the literal defaults only the global level stays up on this toy (docs/gfp.md).
    """
    off = _train_toy(var_weight=0.0, cov_weight=0.0)
    assert max(off.values()) < 0.1, off
    on = _train_toy(var_weight=5.0, cov_weight=1.0, pred_channels="mean")
    assert min(on.values()) > 0.8, on


# ------------------------------------------------------------------------------------------ FLOPs
def _block_macs(n: int, d: int = 256) -> int:
    return n * 12 * d * d + 2 * n * n * d  # qkv + proj + 2 * ffn (ratio 4), plus QK^T and AV


def test_forward_flops_of_the_paper_configuration() -> None:
    """2 persons, FLOPs = 2 x MACs, attention counted (math SDPA). Paper: 1.97 / 1.57 / 0.64 G (spec/gfp.md 2.7)."""
    torch.manual_seed(0)
    m = GFP(GfpSettings(), DatasetInfo())
    flops = module_flops(m, torch.randn(2, 120, 25, 3))
    enc_macs = 750 * 12 * 256 + 8 * _block_macs(74)
    dec_macs = 74 * 256 * 256 + 2 * _block_macs(150) + _block_macs(75) + _block_macs(25) + _block_macs(1) + 251 * 256 * 256
    tgn_macs = sum(n * (i * h + h * h + h * 256) for n, i, h in [(150, 60, 512), (75, 120, 512), (25, 360, 512), (1, 9000, 2048)])
    assert flops["encoder"] == pytest.approx(2 * 2 * enc_macs, rel=1e-3)
    assert flops["decoder"] == pytest.approx(2 * 2 * dec_macs, rel=1e-3)
    assert flops["tgn"] == pytest.approx(2 * 2 * tgn_macs, rel=1e-3)
    assert flops["encoder"] == pytest.approx(1.97e9, rel=0.10)
    assert flops["decoder"] == pytest.approx(1.57e9, rel=0.10)
    # Default C_t = 256 gives 0.54 G (15 % under the paper, documented in docs/gfp.md); C_t = 512 gives 0.67 G.
    assert flops["tgn"] == pytest.approx(0.541e9, rel=0.01)
    tgn512 = TargetGenerator(GfpSettings(target_dim=512)).eval()
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        tgn512(torch.randn(2, 120, 25, 3))
    assert fc.get_total_flops() == pytest.approx(0.64e9, rel=0.10)


# ------------------------------------------------------------------------------------------ end to end
TINY_SETS = [
    "method.encoder.dim=16", "method.encoder.depth=1", "method.encoder.heads=2", "method.decoder_dim=16",
    "method.decoder_heads=2", "method.target_dim=8", "method.tgn_hidden=[16, 16, 16, 32]",
    "data.min_crop_frames=16", "optim.warmup_epochs=1", "runtime.log_every=1",
]


def test_cli_pretrain_gfp_then_probe(tmp_path, data_file) -> None:
    """skel synth -> prepare -> pretrain --method gfp --preset small (tiny) -> probe, all through CliRunner."""
    import json

    from typer.testing import CliRunner

    from skelcli.cli._app import app
    from skelcli.engine.checkpoint import load_checkpoint

    runner = CliRunner()
    h5 = data_file
    run = tmp_path / "run"
    args = ["pretrain", "--method", "gfp", "--preset", "small", "--data", str(h5), "--split", "xsub", "--epochs", "2",
            "--batch-size", "4", "--device", "cpu", "--out", str(run), "--no-progress", "--seed", "0"]
    for item in TINY_SETS:
        args += ["--set", item]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output

    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["method"] == "gfp" and list(ckpt["pretraining_only"]) == ["decoder", "tgn"]
    assert ckpt["settings"]["method"]["tau"] == 0.80 and ckpt["encoder_config"]["num_frames"] == 16
    assert not any(k.startswith(("decoder", "tgn")) for k in ckpt["encoder"])
    assert any(k.startswith("tgn.mlps.3") for k in ckpt["model"]) and any(k.startswith("decoder.levels") for k in ckpt["model"])
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"kind": "step"' in line]
    assert steps and all({"pred_loss", "var_loss", "cov_loss", "target_std_l1", "target_std_global"} <= set(s) for s in steps)
    assert all(0 < s["target_std_l1"] for s in steps)

    out_json = tmp_path / "probe.json"
    r = runner.invoke(app, ["probe", "--checkpoint", str(run / "last.pt"), "--data", str(h5), "--split", "xsub", "--protocol", "knn",
                            "--k", "3", "--device", "cpu", "--no-cache", "--out", str(tmp_path / "probe"), "--json", str(out_json)])
    assert r.exit_code == 0, r.output
    top1 = json.loads(out_json.read_text())["top1"]
    assert 0.0 <= top1 <= 1.0
