"""MAE/MAMP targets, the masked loss and a single-batch overfit (spec/mamp-and-data.md A.6-A.8)."""

from __future__ import annotations

import statistics

import torch

from skelcli.data.clips import ClipBatch
from skelcli.methods.base import DatasetInfo
from skelcli.methods.mae import MAE, MAESettings, masked_mse, normalize_patches
from skelcli.methods.mamp import MAMP, MAMPSettings, motion_target

TINY = {"encoder": {"num_frames": 8, "t_patch": 4, "dim": 16, "depth": 1, "heads": 2},
        "decoder": {"dim": 16, "depth": 1, "heads": 2}}


def _hand_target(x: torch.Tensor, t_patch: int) -> list[list[float]]:
    """Forward differences (last frame 0), patched token by token, normalised with the unbiased variance."""
    t, v, c = x.shape
    motion = [[[0.0] * c for _ in range(v)] for _ in range(t)]
    for f in range(t - 1):
        for j in range(v):
            for k in range(c):
                motion[f][j][k] = float(x[f + 1, j, k] - x[f, j, k])
    tokens = []
    for seg in range(t // t_patch):
        for j in range(v):
            vals = [motion[seg * t_patch + f][j][k] for f in range(t_patch) for k in range(c)]
            mean, var = statistics.fmean(vals), statistics.variance(vals)
            tokens.append([(y - mean) / (var + 1e-6) ** 0.5 for y in vals])
    return tokens


def test_mamp_target_matches_hand_computed_normalised_differences():
    torch.manual_seed(0)
    x = torch.randn(8, 2, 3, dtype=torch.float64)
    got = normalize_patches(motion_target(x[None], 4), 1e-6)[0]
    want = torch.tensor(_hand_target(x, 4), dtype=torch.float64)
    assert got.shape == (4, 12)  # 2 segments x 2 joints, 4 frames x xyz
    assert torch.allclose(got, want, atol=1e-9)
    # the last segment holds 3 real differences and one zero frame
    raw = motion_target(x[None], 4)[0]
    assert torch.all(raw[2:, 9:] == 0)


def test_model_target_mae_is_coordinates_mamp_is_motion():
    torch.manual_seed(0)
    x = torch.randn(1, 2, 8, 25, 3)
    mae = MAE(MAESettings(**TINY), DatasetInfo())
    mamp = MAMP(MAMPSettings(**TINY), DatasetInfo())
    out_mae, out_mamp = mae.reconstruct(x), mamp.reconstruct(x)
    # person 1 of sample 0 is row 1; token l = t*V + v holds frames 4t..4t+3 of joint v
    coords = x[0, 1, 4:8, 7].reshape(-1)
    assert torch.allclose(out_mae["target"][1, 25 + 7], normalize_patches(coords[None, None], 1e-6)[0, 0], atol=1e-5)
    diffs = torch.cat([x[0, 1, 5:8, 7] - x[0, 1, 4:7, 7], torch.zeros(1, 3)]).reshape(-1)
    assert torch.allclose(out_mamp["target"][1, 25 + 7], normalize_patches(diffs[None, None], 1e-6)[0, 0], atol=1e-5)
    assert out_mamp["pred"].shape == (2, 50, 12)


def test_empty_person_has_zero_target_and_counts_in_the_loss():
    x = torch.randn(1, 2, 8, 25, 3)
    x[:, 1] = 0
    mamp = MAMP(MAMPSettings(**TINY), DatasetInfo())
    out = mamp.reconstruct(x)
    assert torch.all(out["target"][1] == 0)
    assert out["mask"].shape == (2, 50) and out["mask"][1].sum() == 46  # keep int(50 * 0.0999...) = 4 (spec 0.1)


def test_loss_ignores_visible_tokens():
    torch.manual_seed(0)
    mamp = MAMP(MAMPSettings(**TINY), DatasetInfo())
    out = mamp.reconstruct(torch.randn(2, 2, 8, 25, 3))
    pred, target, mask = out["pred"].detach(), out["target"], out["mask"]
    assert torch.allclose(out["loss"], masked_mse(pred, target, mask))
    changed = pred.clone()
    changed[mask == 0] += 100.0
    assert torch.allclose(masked_mse(changed, target, mask), out["loss"])
    changed[mask == 1] += 1.0
    assert not torch.allclose(masked_mse(changed, target, mask), out["loss"])
    # by hand: mean over masked tokens of the per-token mean squared error
    err = ((pred - target) ** 2).mean(-1)
    assert torch.allclose(out["loss"], err[mask == 1].mean())


def test_forward_on_raw_clips_uses_the_training_view():
    torch.manual_seed(0)
    settings = MAMPSettings(**TINY)
    model = MAMP(settings, DatasetInfo())
    model.data_settings = model.data_settings.model_copy(update={"min_crop_frames": 4})
    joints = torch.zeros(3, 2, 30, 25, 3)
    joints[:, 0, :20] = torch.randn(3, 20, 25, 3)
    batch = ClipBatch(joints, torch.tensor([20, 12, 30]), torch.tensor([0, 1, 2]))
    out = model(batch)
    assert set(out) == {"loss"} and out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert model.encoder.patch_embed.weight.grad is not None
    model.eval()
    assert torch.isfinite(model(batch)["loss"])


def test_overfitting_a_single_batch_drives_the_loss_down():
    torch.manual_seed(0)
    model = MAE(MAESettings(**{**TINY, "mask_ratio": 0.5}), DatasetInfo())
    x = torch.randn(4, 2, 8, 25, 3).cumsum(dim=2) * 0.1
    opt = torch.optim.AdamW(model.param_groups(0.0), lr=3e-3)
    losses = []
    for _ in range(120):
        loss = model.reconstruct(x)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.6 * first, (first, last)
