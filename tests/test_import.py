"""`skel import` of official MAMP / SLiM checkpoints (issue 13 items 1 and 6).

The official files are built here from random weights with the official key names and layouts
(spec/protocols-and-checkpoints.md 4.1-4.5) at a small size (D 32, depth 2, heads 4). Each import is
checked against a reference forward pass written independently below in the *official* layout
(Conv2d patch embedding, the official position tables, explicit softmax attention), not through
skelcli's encoder.
"""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from skelcli.engine.checkpoint import load_checkpoint, load_encoder
from skelcli.errors import SkelError
from skelcli.interop.official import import_checkpoint

D, DEPTH, HEADS, V, C = 32, 2, 4, 25, 3


def _rand(*shape, scale=0.1, gen):
    return torch.randn(*shape, generator=gen) * scale


def _ln(gen, d=D):
    return {"weight": 1 + _rand(d, gen=gen), "bias": _rand(d, gen=gen)}


def _block(prefix: str, d: int, ffn: str, gen) -> dict[str, torch.Tensor]:
    """One official pre-LN block: norm1, attn.qkv (3d, d), attn.proj, norm2, then fc1/fc2 or w12/w3."""
    sd = {f"{prefix}norm1.{k}": v for k, v in _ln(gen, d).items()}
    sd[f"{prefix}attn.proj.weight"], sd[f"{prefix}attn.proj.bias"] = _rand(d, d, scale=d ** -0.5, gen=gen), _rand(d, gen=gen)
    sd[f"{prefix}attn.qkv.weight"], sd[f"{prefix}attn.qkv.bias"] = _rand(3 * d, d, scale=d ** -0.5, gen=gen), _rand(3 * d, gen=gen)
    sd.update({f"{prefix}norm2.{k}": v for k, v in _ln(gen, d).items()})
    if ffn == "gelu":
        sd[f"{prefix}mlp.fc1.weight"], sd[f"{prefix}mlp.fc1.bias"] = _rand(4 * d, d, scale=d ** -0.5, gen=gen), _rand(4 * d, gen=gen)
        sd[f"{prefix}mlp.fc2.weight"], sd[f"{prefix}mlp.fc2.bias"] = _rand(d, 4 * d, scale=(4 * d) ** -0.5, gen=gen), _rand(d, gen=gen)
    else:
        h = (int(4 * d * 2 / 3) + 7) // 8 * 8  # DINOv2 SwiGLUFFNFused width
        sd[f"{prefix}mlp.w12.weight"], sd[f"{prefix}mlp.w12.bias"] = _rand(2 * h, d, scale=d ** -0.5, gen=gen), _rand(2 * h, gen=gen)
        sd[f"{prefix}mlp.w3.weight"], sd[f"{prefix}mlp.w3.bias"] = _rand(d, h, scale=h ** -0.5, gen=gen), _rand(d, gen=gen)
    return sd


# ----------------------------------------------------------------------------- official layouts
def mamp_state(frames=16, t_patch=4, decoder_depth=1, seed=0) -> dict[str, torch.Tensor]:
    """MAMP pretraining ``model`` state dict (spec 4.1), in the official registration order."""
    g = torch.Generator().manual_seed(seed)
    tp, dd = frames // t_patch, 16
    sd = {
        "temp_embed": _rand(1, tp, 1, D, gen=g), "pos_embed": _rand(1, 1, V, D, gen=g),
        "mask_token": _rand(1, 1, dd, gen=g),
        "decoder_temp_embed": _rand(1, tp, 1, dd, gen=g), "decoder_pos_embed": _rand(1, 1, V, dd, gen=g),
        "joints_embed.proj.weight": _rand(D, C, t_patch, 1, scale=0.3, gen=g), "joints_embed.proj.bias": _rand(D, gen=g),
    }
    for i in range(DEPTH):
        sd.update(_block(f"blocks.{i}.", D, "gelu", g))
    sd.update({f"norm.{k}": v for k, v in _ln(g).items()})
    sd["decoder_embed.weight"], sd["decoder_embed.bias"] = _rand(dd, D, gen=g), _rand(dd, gen=g)
    for i in range(decoder_depth):
        sd.update(_block(f"decoder_blocks.{i}.", dd, "gelu", g))
    sd.update({f"decoder_norm.{k}": v for k, v in _ln(g, dd).items()})
    sd["decoder_pred.weight"], sd["decoder_pred.bias"] = _rand(t_patch * C, dd, gen=g), _rand(t_patch * C, gen=g)
    return sd


def mamp_payload(sd, frames=16, t_patch=4) -> dict:
    """The five top-level keys of MAMP's save_model, with an argparse.Namespace ``args``."""
    args = argparse.Namespace(
        model_args={"dim_in": C, "dim_feat": D, "decoder_dim_feat": 16, "depth": DEPTH, "decoder_depth": 1,
                    "num_heads": HEADS, "mlp_ratio": 4, "num_frames": frames, "num_joints": V, "patch_size": 1,
                    "t_patch_size": t_patch, "qkv_bias": True, "norm_skes_loss": True},
        train_feeder_args={"data_path": "data/NTU60_XSub.npz", "p_interval": [0.5, 1], "window_size": frames},
        distributed=False, rank=0, world_size=1, output_dir="./output_dir",
    )
    optimizer = {"state": {}, "param_groups": [{"lr": 1.5e-4, "weight_decay": 0.05, "params": [0, 1]}]}
    return {"model": sd, "optimizer": optimizer, "epoch": 399, "scaler": {"scale": 65536.0, "_growth_tracker": 0}, "args": args}


def slim_backbone(registers=4, t_patch=8, seed=1) -> dict[str, torch.Tensor]:
    """SLiM DinoVisionTransformer state dict (spec 4.3 / 4.5), names without ``backbone.``."""
    g = torch.Generator().manual_seed(seed)
    sd = {
        "cls_token": _rand(1, 1, D, gen=g), "pos_embed": _rand(1, 1 + V, D, gen=g),
        "register_tokens": _rand(1, registers, D, gen=g), "mask_token": _rand(1, D, gen=g),
        "patch_embed.proj.weight": _rand(D, C, t_patch, 1, scale=0.3, gen=g), "patch_embed.proj.bias": _rand(D, gen=g),
    }
    for i in range(DEPTH):
        sd.update(_block(f"blocks.{i}.", D, "swiglu", g))
    sd.update({f"norm.{k}": v for k, v in _ln(g).items()})
    return sd


def slim_teacher(backbone, seed=2) -> dict[str, torch.Tensor]:
    """teacher_checkpoint.pth's ``teacher``: backbone.* plus DINO and iBOT heads (weight_norm last layer)."""
    g = torch.Generator().manual_seed(seed)
    t = {f"backbone.{k}": v for k, v in backbone.items()}
    for head in ("dino_head", "ibot_head"):
        t[f"{head}.mlp.0.weight"], t[f"{head}.mlp.0.bias"] = _rand(64, D, gen=g), _rand(64, gen=g)
        t[f"{head}.mlp.2.weight"], t[f"{head}.mlp.2.bias"] = _rand(64, 64, gen=g), _rand(64, gen=g)
        t[f"{head}.mlp.4.weight"], t[f"{head}.mlp.4.bias"] = _rand(D, 64, gen=g), _rand(D, gen=g)
        t[f"{head}.last_layer.weight_g"], t[f"{head}.last_layer.weight_v"] = _rand(128, 1, gen=g), _rand(128, D, gen=g)
    return t


# ----------------------------------------------------------------------------- reference forwards
def _layer_norm(x, sd, prefix, eps):
    return F.layer_norm(x, (x.shape[-1],), sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], eps)


def _rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


def _attention(x, sd, prefix, heads, rope=None):
    """Explicit softmax attention; rope = (cos, sin, first) rotates q, k of tokens first.. (rotate-half)."""
    b, n, d = x.shape
    qkv = (x @ sd[f"{prefix}.qkv.weight"].T + sd[f"{prefix}.qkv.bias"]).reshape(b, n, 3, heads, d // heads)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # (B, H, N, Dh)
    if rope is not None:
        cos, sin, first = rope
        q = torch.cat([q[:, :, :first], q[:, :, first:] * cos + _rotate_half(q[:, :, first:]) * sin], dim=2)
        k = torch.cat([k[:, :, :first], k[:, :, first:] * cos + _rotate_half(k[:, :, first:]) * sin], dim=2)
    att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), dim=-1)
    out = (att @ v).transpose(1, 2).reshape(b, n, d)
    return out @ sd[f"{prefix}.proj.weight"].T + sd[f"{prefix}.proj.bias"]


def _conv_tokens(sd, prefix, x):
    """x (B, T, V, C) -> official Conv2d over (N, C, T, V) -> (B, D, Tp, V)."""
    w = sd[f"{prefix}.weight"].float()
    return F.conv2d(x.permute(0, 3, 1, 2), w, sd[f"{prefix}.bias"].float(), stride=(w.shape[2], 1))


def mamp_reference(sd, x, heads=HEADS):
    """MAMP downstream feature of one person: mean over all final-normed tokens (B, D)."""
    return mamp_reference_tokens(sd, x, heads).mean(dim=1)


def mamp_reference_tokens(sd, x, heads=HEADS):
    """MAMP encoder: x (B, T, V, C) -> final-normed tokens (B, Tp*V, D), time-major."""
    sd = {k: v.float() for k, v in sd.items()}
    tok = _conv_tokens(sd, "joints_embed.proj", x).permute(0, 2, 3, 1)  # (B, Tp, V, D)
    tok = tok + sd["pos_embed"] + sd["temp_embed"]
    h = tok.reshape(x.shape[0], -1, tok.shape[-1])
    for i in range(DEPTH):
        p = f"blocks.{i}"
        h = h + _attention(_layer_norm(h, sd, f"{p}.norm1", 1e-5), sd, f"{p}.attn", heads)
        y = _layer_norm(h, sd, f"{p}.norm2", 1e-5)
        y = F.gelu(y @ sd[f"{p}.mlp.fc1.weight"].T + sd[f"{p}.mlp.fc1.bias"])
        h = h + y @ sd[f"{p}.mlp.fc2.weight"].T + sd[f"{p}.mlp.fc2.bias"]
    return _layer_norm(h, sd, "norm", 1e-5)


def slim_reference(sd, x, heads=HEADS):
    """SLiM feature of one person: [CLS || mean of patch tokens] after the final norm (B, 2D)."""
    sd = {k: v.float() for k, v in sd.items()}
    b = x.shape[0]
    tok = _conv_tokens(sd, "patch_embed.proj", x).flatten(2).transpose(1, 2)  # (B, Tp*V, D), index t*V + v
    nv = sd["pos_embed"].shape[1] - 1
    tp = tok.shape[1] // nv
    pos = sd["pos_embed"]
    tok = torch.cat([sd["cls_token"].expand(b, -1, -1), tok], dim=1) + torch.cat([pos[:, :1], pos[:, 1:].repeat(1, tp, 1)], dim=1)
    r = sd["register_tokens"].shape[1]
    h = torch.cat([tok[:, :1], sd["register_tokens"].expand(b, -1, -1), tok[:, 1:]], dim=1)
    dh = D // heads
    inv_freq = 1.0 / 10000 ** (torch.arange(0, dh, 2).float() / dh)
    t = torch.arange(tp).float().repeat_interleave(nv)  # temporal row of each patch token
    emb = torch.cat([t[:, None] * inv_freq, t[:, None] * inv_freq], dim=-1)
    rope = (emb.cos(), emb.sin(), 1 + r)
    for i in range(DEPTH):
        p = f"blocks.{i}"
        h = h + _attention(_layer_norm(h, sd, f"{p}.norm1", 1e-6), sd, f"{p}.attn", heads, rope)
        y = _layer_norm(h, sd, f"{p}.norm2", 1e-6) @ sd[f"{p}.mlp.w12.weight"].T + sd[f"{p}.mlp.w12.bias"]
        hid = sd[f"{p}.mlp.w3.weight"].shape[1]
        gate, value = y[..., :hid], y[..., hid:]
        h = h + (F.silu(gate) * value) @ sd[f"{p}.mlp.w3.weight"].T + sd[f"{p}.mlp.w3.bias"]
    h = _layer_norm(h, sd, "norm", 1e-6)
    return torch.cat([h[:, 0], h[:, 1 + r:].mean(dim=1)], dim=-1)


def _features(path, x):
    enc, _, _ = load_encoder(path)
    with torch.no_grad():
        return enc(x)


def _clips(frames, seed=3, b=3):
    return torch.randn(b, frames, V, C, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- MAMP
def test_mamp_pretraining_checkpoint_matches_reference(tmp_path):
    sd = mamp_state()
    for k in [k for k in sd if k.startswith("blocks.0.")] + ["pos_embed"]:
        sd[k] = sd[k].half()  # some tensors fp16, as an AMP-saved file would hold
    sd["blocks.1.mlp.fc1.weight"] = sd["blocks.1.mlp.fc1.weight"].bfloat16()
    torch.save(mamp_payload(sd), tmp_path / "checkpoint-399.pth")
    report = import_checkpoint("mamp", tmp_path / "checkpoint-399.pth", tmp_path / "mamp.pt")

    x = _clips(16)
    torch.testing.assert_close(_features(tmp_path / "mamp.pt", x), mamp_reference(sd, x), atol=1e-5, rtol=1e-5)
    ckpt = load_checkpoint(tmp_path / "mamp.pt")
    assert all(v.dtype == torch.float32 for v in ckpt["encoder"].values())
    assert torch.equal(ckpt["encoder"]["joint_embed"], sd["pos_embed"].float())  # fp16 values kept exactly
    cfg = ckpt["encoder_config"]
    assert (cfg["dim"], cfg["depth"], cfg["heads"], cfg["num_frames"], cfg["t_patch"]) == (D, DEPTH, HEADS, 16, 4)
    n_pretrain = sum(k == "mask_token" or k.startswith("decoder_") for k in sd)
    assert report.dropped == n_pretrain and report.mapped == len(ckpt["encoder"]) == len(sd) - n_pretrain
    assert ckpt["method"] == "mamp" and ckpt["epoch"] == 400 and "head" not in ckpt


def test_mamp_heads_inferred_without_args_and_module_prefix_stripped(tmp_path):
    sd = mamp_state(frames=8)
    torch.save({f"module.{k}": v for k, v in sd.items()}, tmp_path / "bare.pth")  # DDP-style bare state dict
    report = import_checkpoint("mamp", tmp_path / "bare.pth", tmp_path / "m.pt", heads=HEADS)
    x = _clips(8)
    torch.testing.assert_close(_features(tmp_path / "m.pt", x), mamp_reference(sd, x), atol=1e-5, rtol=1e-5)
    assert report.notes == []
    # without --heads and without args: width / 32 heads, said in a note
    report = import_checkpoint("mamp", tmp_path / "bare.pth", tmp_path / "m1.pt")
    assert load_checkpoint(tmp_path / "m1.pt")["encoder_config"]["heads"] == 1 and "assumed 1" in report.notes[0]


def test_mamp_only_leading_module_prefix_is_stripped(tmp_path):
    sd = {f"module.{k}": v for k, v in mamp_state().items()}
    sd["module.blocks.0.module.extra"] = torch.zeros(3)
    torch.save(mamp_payload(sd), tmp_path / "c.pth")
    with pytest.raises(SkelError, match=r"unknown keys \(1\): blocks\.0\.module\.extra"):
        import_checkpoint("mamp", tmp_path / "c.pth", tmp_path / "o.pt")


def test_mamp_unknown_and_missing_keys_are_listed(tmp_path):
    sd = mamp_state()
    sd["blocks.0.attn.rel_pos"] = torch.zeros(4)
    sd["extra_token"] = torch.zeros(1, 1, D)
    del sd["blocks.1.norm2.bias"]
    torch.save(mamp_payload(sd), tmp_path / "c.pth")
    with pytest.raises(SkelError) as err:
        import_checkpoint("mamp", tmp_path / "c.pth", tmp_path / "o.pt")
    msg = str(err.value)
    assert "blocks.0.attn.rel_pos" in msg and "extra_token" in msg and "missing keys (1): blocks.1.norm2.bias" in msg
    assert "\n" not in msg and not (tmp_path / "o.pt").exists()


def test_mamp_args_disagreeing_with_weights_is_an_error(tmp_path):
    payload = mamp_payload(mamp_state())
    payload["args"].model_args["depth"] = 8
    torch.save(payload, tmp_path / "c.pth")
    with pytest.raises(SkelError, match="depth=8 in args but 2"):
        import_checkpoint("mamp", tmp_path / "c.pth", tmp_path / "o.pt")


def test_mamp_finetune_head_is_imported_exactly(tmp_path):
    from skelcli.eval.heads import FinetuneModel

    g = torch.Generator().manual_seed(5)
    sd = {k: v for k, v in mamp_state().items() if not (k == "mask_token" or k.startswith("decoder_"))}
    hidden, classes = 24, 7
    head = {"head.fc1.weight": _rand(hidden, V * D, gen=g), "head.fc1.bias": _rand(hidden, gen=g),
            "head.bn.weight": 1 + _rand(hidden, gen=g), "head.bn.bias": _rand(hidden, gen=g),
            "head.bn.running_mean": _rand(hidden, gen=g), "head.bn.running_var": 1 + _rand(hidden, gen=g).abs(),
            "head.bn.num_batches_tracked": torch.tensor(100), "head.fc2.weight": _rand(classes, hidden, gen=g),
            "head.fc2.bias": _rand(classes, gen=g)}
    torch.save(mamp_payload({**sd, **head}), tmp_path / "ft.pth")
    report = import_checkpoint("mamp", tmp_path / "ft.pth", tmp_path / "ft.pt")
    assert "fine-tune head imported" in report.head

    enc, _, ckpt = load_encoder(tmp_path / "ft.pt")
    model = FinetuneModel(enc, ckpt["head_config"])
    model.head.load_state_dict(ckpt["head"])
    model.eval()
    x = torch.randn(2, 2, 16, V, C, generator=g)  # (N, M, T, V, C)
    with torch.no_grad():
        logits = model(x)
    # MAMP ActionHeadFinetune in eval: tokens (N, M, Tp, V, D) -> mean over Tp -> (N, M, V*D) -> mean over M
    # -> fc1 -> BN (running stats) -> ReLU -> fc2, on the reference encoder's token features.
    hsd = {k: v.float() for k, v in head.items()}
    ref_tokens = mamp_reference_tokens(sd, x.reshape(4, 16, V, C)).reshape(2, 2, 4, V, D)
    f = ref_tokens.mean(dim=2).reshape(2, 2, V * D).mean(dim=1)
    f = f @ hsd["head.fc1.weight"].T + hsd["head.fc1.bias"]
    f = (f - hsd["head.bn.running_mean"]) / torch.sqrt(hsd["head.bn.running_var"] + 1e-5) * hsd["head.bn.weight"] + hsd["head.bn.bias"]
    ref = torch.relu(f) @ hsd["head.fc2.weight"].T + hsd["head.fc2.bias"]
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=1e-5)
    assert ckpt["head_config"]["num_classes"] == classes and ckpt["data"]["num_classes"] == classes


def test_mamp_linprobe_head_needs_no_strict(tmp_path):
    sd = mamp_state()
    sd.update({"head.fc.0.running_mean": torch.zeros(D), "head.fc.0.running_var": torch.ones(D),
               "head.fc.0.num_batches_tracked": torch.tensor(0), "head.fc.1.weight": torch.zeros(5, D),
               "head.fc.1.bias": torch.zeros(5)})
    torch.save(mamp_payload(sd), tmp_path / "lp.pth")
    with pytest.raises(SkelError, match="linear-probe head has no exact skelcli head; pass --no-strict"):
        import_checkpoint("mamp", tmp_path / "lp.pth", tmp_path / "lp.pt")
    report = import_checkpoint("mamp", tmp_path / "lp.pth", tmp_path / "lp.pt", strict=False)
    assert "not imported" in report.notes[0] and "head" not in load_checkpoint(tmp_path / "lp.pt")


# ----------------------------------------------------------------------------- SLiM
def test_slim_teacher_checkpoint_matches_reference(tmp_path):
    bb = slim_backbone()
    bb["blocks.1.mlp.w12.weight"] = bb["blocks.1.mlp.w12.weight"].half()
    bb["pos_embed"] = bb["pos_embed"].bfloat16()
    torch.save({"teacher": slim_teacher(bb)}, tmp_path / "teacher_checkpoint.pth")
    report = import_checkpoint("slim", tmp_path / "teacher_checkpoint.pth", tmp_path / "slim.pt", heads=HEADS, frames=16)

    x = _clips(16)
    torch.testing.assert_close(_features(tmp_path / "slim.pt", x), slim_reference(bb, x), atol=1e-5, rtol=1e-5)
    ckpt = load_checkpoint(tmp_path / "slim.pt")
    assert all(v.dtype == torch.float32 for v in ckpt["encoder"].values())
    cfg = ckpt["encoder_config"]
    assert (cfg["num_registers"], cfg["mask_token"], cfg["pool"], cfg["norm_eps"]) == (4, True, "cls_mean", 1e-6)
    assert torch.equal(ckpt["encoder"]["mask_embed"].reshape(1, D), bb["mask_token"])  # kept: our encoder has one
    assert report.dropped == 16 and report.dropped_groups == ["dino_head", "ibot_head"]
    assert report.mapped == len(bb) and ckpt["method"] == "slim"


def test_slim_hf_folder_matches_reference(tmp_path):
    from safetensors.torch import save_file

    bb = slim_backbone(registers=2, t_patch=4, seed=7)
    folder = tmp_path / "SLiM-ntu60_xsub"
    folder.mkdir()
    save_file({k: v.half() for k, v in bb.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        "arch": "vit_tiny", "img_size": [12, 25], "patch_size": [4, 1], "in_chans": 3, "num_register_tokens": 2,
        "ffn_layer": "swiglufused", "block_chunks": 0, "qkv_bias": True, "proj_bias": True, "ffn_bias": True,
        "init_values": 0.0}))
    report = import_checkpoint("slim", folder, tmp_path / "hf.pt", heads=HEADS)
    assert load_checkpoint(tmp_path / "hf.pt")["encoder_config"]["num_frames"] == 12  # from img_size
    x = _clips(12)
    ref = slim_reference({k: v.half() for k, v in bb.items()}, x)
    torch.testing.assert_close(_features(tmp_path / "hf.pt", x), ref, atol=1e-5, rtol=1e-5)
    assert report.dropped == 0 and report.source_format.startswith("SLiM Hugging Face")


def test_slim_exported_encoder_with_module_prefix(tmp_path):
    bb = slim_backbone(seed=9)
    torch.save({"teacher": {f"module.backbone.{k}": v for k, v in bb.items()}, "note": "encoder only"}, tmp_path / "enc.pth")
    report = import_checkpoint("slim", tmp_path / "enc.pth", tmp_path / "e.pt", heads=HEADS)
    x = _clips(64, b=2)
    torch.testing.assert_close(_features(tmp_path / "e.pt", x), slim_reference(bb, x), atol=1e-5, rtol=1e-5)
    assert "64 frames" in report.notes[0]  # no config: SLiM's clip length, said in a note


def test_slim_unknown_keys_are_listed(tmp_path):
    t = slim_teacher(slim_backbone())
    t["backbone.blocks.0.ls1.gamma"] = torch.ones(D)
    t["student.backbone.cls_token"] = torch.ones(1, 1, D)
    torch.save({"teacher": t}, tmp_path / "t.pth")
    with pytest.raises(SkelError, match=r"unknown keys \(2\): blocks\.0\.ls1\.gamma, student\.backbone\.cls_token"):
        import_checkpoint("slim", tmp_path / "t.pth", tmp_path / "o.pt", heads=HEADS)


def test_fsdp_shards_are_refused(tmp_path):
    shard = tmp_path / "model_0012499.rank_0.pth"
    torch.save({"model": {"_flat_param": torch.zeros(10)}, "iteration": 12499}, shard)
    with pytest.raises(SkelError, match="teacher_checkpoint.pth"):
        import_checkpoint("slim", shard, tmp_path / "o.pt")
    flat = tmp_path / "renamed.pth"
    torch.save({"teacher": {"backbone._fsdp_wrapped_module._flat_param": torch.zeros(10)}}, flat)
    with pytest.raises(SkelError, match="flat-parameter.*teacher_checkpoint.pth"):
        import_checkpoint("slim", flat, tmp_path / "o.pt")


class _Payload:
    """Unpickling this calls open(path, "w"): it creates a file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("kind", ["mamp", "slim"])
def test_malicious_pickle_is_refused_without_running(tmp_path, kind):
    marker = tmp_path / "pwned"
    torch.save({"model": _Payload(marker), "teacher": _Payload(marker), "args": argparse.Namespace()}, tmp_path / "evil.pth")
    with pytest.raises(SkelError, match=r"refused.*(builtins|io)\.open.*not allow-listed") as err:
        import_checkpoint(kind, tmp_path / "evil.pth", tmp_path / "o.pt")
    assert "\n" not in str(err.value)
    assert not marker.exists()
    # the payload is real: an unsafe load would have created the file
    torch.load(tmp_path / "evil.pth", weights_only=False)
    assert marker.exists()


# ----------------------------------------------------------------------------- skelcli folder
def test_skelcli_safetensors_folder_roundtrip(tmp_path):
    export = pytest.importorskip("skelcli.interop.export")
    torch.save(mamp_payload(mamp_state()), tmp_path / "c.pth")
    import_checkpoint("mamp", tmp_path / "c.pth", tmp_path / "a.pt")
    export.write_safetensors_folder(load_checkpoint(tmp_path / "a.pt"), tmp_path / "exported")
    import_checkpoint("skelcli", tmp_path / "exported", tmp_path / "b.pt")
    x = _clips(16)
    torch.testing.assert_close(_features(tmp_path / "b.pt", x), _features(tmp_path / "a.pt", x), atol=0, rtol=0)


# ----------------------------------------------------------------------------- CLI
@pytest.mark.parametrize("kind", ["mamp", "slim"])
def test_cli_import_then_probe_retrieve_finetune(tmp_path, data_file, kind):
    from skelcli.cli import app

    if kind == "mamp":
        torch.save(mamp_payload(mamp_state()), src := tmp_path / "checkpoint-399.pth")
        extra = []
    else:
        torch.save({"teacher": slim_teacher(slim_backbone())}, src := tmp_path / "teacher_checkpoint.pth")
        extra = ["--heads", str(HEADS), "--frames", "16"]
    runner = CliRunner()
    r = runner.invoke(app, ["import", kind, str(src), "--out", str(tmp_path / "imp.pt"), *extra])
    assert r.exit_code == 0, r.output
    assert "tensors mapped" in r.output and "dim 32, depth 2, heads 4, frames 16" in r.output
    r = runner.invoke(app, ["probe", "--checkpoint", str(tmp_path / "imp.pt"), "--data", str(data_file), "--split", "xsub",
                            "--protocol", "knn", "--k", "3", "--device", "cpu", "--no-cache", "--out", str(tmp_path / "probe"),
                            "--json", str(tmp_path / "p.json")])
    assert r.exit_code == 0, r.output
    assert 0.0 <= float(json.loads((tmp_path / "p.json").read_text())["top1"]) <= 1.0
    r = runner.invoke(app, ["retrieve", "--checkpoint", str(tmp_path / "imp.pt"), "--data", str(data_file), "--split", "xsub",
                            "--k", "1", "--device", "cpu", "--out", str(tmp_path / "retrieve")])
    assert r.exit_code == 0, r.output
    # each checkpoint's own paper recipe: MAMP's epochs, SLiM's iterations
    budget = ["--epochs", "1"] if kind == "mamp" else ["--set", "iterations=4", "--set", "eval_every=2", "--set", "batch_size=4"]
    r = runner.invoke(app, ["finetune", "--checkpoint", str(tmp_path / "imp.pt"), "--data", str(data_file), "--split", "xsub",
                            "--preset", "small", *budget, "--device", "cpu", "--out", str(tmp_path / "ft"), "--json", str(tmp_path / "ft.json")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "ft.json").read_text())["recipe"]["name"] == kind


def test_cli_errors_are_one_line(tmp_path):
    from skelcli.cli import app

    runner = CliRunner()
    torch.save({"teacher": {"x": _Payload(tmp_path / "pwned")}}, tmp_path / "evil.pth")
    for args in (["import", "onnx", str(tmp_path / "evil.pth"), "--out", str(tmp_path / "o.pt")],
                 ["import", "slim", str(tmp_path / "evil.pth"), "--out", str(tmp_path / "o.pt")],
                 ["import", "mamp", str(tmp_path / "missing.pth"), "--out", str(tmp_path / "o.pt")],
                 ["import", "mamp", str(tmp_path / "evil.pth"), "--out", str(tmp_path)]):
        r = runner.invoke(app, args)
        assert r.exit_code == 2, r.output
        assert r.output.strip().startswith("error:") and len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "pwned").exists()
