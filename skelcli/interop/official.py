"""Import of official MAMP and SLiM checkpoints (and skelcli safetensors folders) into a normal
skelcli checkpoint (spec/protocols-and-checkpoints.md sections 4 and 5).

Supported sources:

* ``mamp``: ``checkpoint-<epoch>.pth`` of MAMP's pretraining, linear probe or fine-tuning
  ({"model", "optimizer", "epoch", "scaler", "args": argparse.Namespace}), or a bare state dict.
* ``slim``: ``teacher_checkpoint.pth`` ({"teacher": {"backbone.*", "dino_head.*", "ibot_head.*"}}),
  the encoder-only export ({"teacher": {"backbone.*"}}), or the Hugging Face folder
  (``config.json`` + ``model.safetensors``, keys without ``backbone.``).
* ``skelcli``: a folder written by ``skel export --format safetensors``.

Safety: ``.pth`` files are read with ``torch.load(weights_only=True)`` and only
``argparse.Namespace`` allow-listed; a file that needs any other Python object is refused before
that object is built (its payload never runs). Only *leading* ``module.`` prefixes are removed.
Floating tensors are cast to fp32. FSDP shards (``model_*.rank_*.pth``, flat parameters) are refused.

Key mapping (official -> :class:`skelcli.models.encoder.SkeletonEncoder`), D = width, l = frames per
token, C = channels, V = joints, Tp = segments:

==========================================  ==========================  =================================
official                                    skelcli                     layout change
==========================================  ==========================  =================================
MAMP joints_embed.proj.weight (D, C, l, 1)  patch_embed.weight (D, l*C) squeeze(-1).permute(0, 2, 1), index t*C + c
MAMP joints_embed.proj.bias (D)             patch_embed.bias            none
MAMP pos_embed (1, 1, V, D)                 joint_embed (1, 1, V, D)    none
MAMP temp_embed (1, Tp, 1, D)               temp_embed (1, Tp, 1, D)    none
SLiM patch_embed.proj.weight (D, C, l, 1)   patch_embed.weight          as MAMP
SLiM cls_token (1, 1, D)                    cls_token                   none
SLiM pos_embed (1, 1 + V, D)                cls_pos (1, 1, D) = row 0;  split
                                            joint_embed (1, 1, V, D) = rows 1..V
SLiM register_tokens (1, R, D)              registers (1, R, D)         none
SLiM mask_token (1, D)                      mask_embed (1, 1, D)        reshape (kept: our SLiM encoder has one)
blocks.i.{norm1, attn.qkv, attn.proj, norm2}  same names                none (qkv rows q, k, v; heads contiguous)
MAMP blocks.i.mlp.fc1 / fc2                 blocks.i.mlp.fc1 / fc2      none (GELU)
SLiM blocks.i.mlp.w12 (2H, D) / w3 (D, H)   blocks.i.mlp.w12 / w3       none (rows 0..H-1 gate, SiLU; H..2H-1 value)
norm.{weight, bias}                         norm                        none
==========================================  ==========================  =================================

Dropped as pretraining-only (counted in the report): MAMP ``mask_token`` and ``decoder_*``; SLiM
``dino_head.*`` and ``ibot_head.*`` (and a stray ``*.rope.inv_freq``, which our encoder recomputes).
MAMP fine-tune heads (``head.fc1``, ``head.bn``, ``head.fc2``) are imported exactly as a ``"mamp"``
head (:class:`skelcli.eval.heads.MampFinetuneHead`: same names, fc1 input index v*D + d, dropout 0.3).
MAMP linear-probe heads (``head.fc`` / ``head.fc.{0,1}``) have no exact skelcli head: with
``strict`` they are an error, otherwise they are dropped with a note.
"""

from __future__ import annotations

import argparse
import json
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from skelcli.errors import SkelError

KINDS = ("mamp", "slim", "skelcli")

#: Default head width of both official encoders (256 wide, 8 heads) when a file does not say.
OFFICIAL_HEAD_DIM = 32
#: SLiM's clip length (spec/slim.md: 64 frames), used when the source does not say.
SLIM_FRAMES = 64

_FSDP_NAME = re.compile(r"^model_(\d+|final)\.rank_\d+\.pth$")


@dataclass
class ImportReport:
    """What an import did, for the CLI table and for tests."""

    source_format: str
    mapped: int = 0
    dropped: int = 0
    dropped_groups: list[str] = field(default_factory=list)
    head: str = "none"
    notes: list[str] = field(default_factory=list)
    encoder_config: dict[str, Any] = field(default_factory=dict)
    out: Path | None = None


# --------------------------------------------------------------------------- loading helpers
def safe_torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)`` with only ``argparse.Namespace`` allow-listed.

    Any other Python global (a class, a function such as ``builtins.open``) makes the load fail
    before it is called; that failure becomes a one-line SkelError naming the global.
    """
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        m = re.search(r"(?:Unsupported global: GLOBAL|Unsupported operand|global) ([\w.]+)", text)
        what = m.group(1) if m else text.splitlines()[0][:120]
        raise SkelError(
            f"{path}: refused: the file needs the Python object {what!r}, which is not allow-listed "
            "(only tensors, plain containers and argparse.Namespace are loaded; nothing in it was run)"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise SkelError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})") from None


def refuse_fsdp_name(path: Path) -> None:
    """SkelError for SLiM's per-rank FSDP shard files (spec 4.7), before they are opened."""
    if _FSDP_NAME.match(path.name):
        raise SkelError(
            f"{path}: this is a per-rank FSDP shard (LOCAL_STATE_DICT flat parameters), not importable; "
            "use the full teacher state in eval/training_<iter>/teacher_checkpoint.pth"
        )


def refuse_flat_params(state: dict[str, Any], path: Path) -> None:
    """SkelError if the state dict holds FSDP flat parameters instead of named tensors."""
    flat = [k for k in state if "flat_param" in k or "_fsdp_wrapped_module" in k]
    if flat:
        raise SkelError(
            f"{path}: holds FSDP flat-parameter shards ({flat[0]}, ...), not importable; "
            "use the full teacher state in eval/training_<iter>/teacher_checkpoint.pth"
        )


def strip_module_prefix(state: dict[str, Any]) -> dict[str, Any]:
    """Remove leading ``module.`` prefixes (DDP / DataParallel), repeatedly; never in the middle of a key."""
    out = {}
    for key, value in state.items():
        while key.startswith("module."):
            key = key[len("module."):]
        out[key] = value
    return out


def to_fp32(state: dict[str, Any]) -> dict[str, Any]:
    """fp16 / bf16 / fp64 tensors -> fp32 (contiguous copies); integer buffers unchanged."""
    return {k: (v.to(torch.float32).contiguous() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in state.items()}


def conv_patch_to_linear(weight: torch.Tensor) -> torch.Tensor:
    """Conv2d patch weight (D, C, l, 1), kernel = stride = (l, 1) over (T, V) -> Linear weight (D, l*C).

    The Linear input index is t*C + c (frame-major, then channel), the order of
    :func:`skelcli.models.encoder.patchify`.
    """
    if weight.ndim != 4 or weight.shape[-1] != 1:
        raise SkelError(f"patch embedding weight has shape {list(weight.shape)}; expected (D, C, l, 1) (one joint per token)")
    d, c, l, _ = weight.shape
    return weight.squeeze(-1).permute(0, 2, 1).reshape(d, l * c).contiguous()


def _tensor_dict(obj: Any, path: Path, what: str) -> dict[str, torch.Tensor]:
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()):
        raise SkelError(f"{path}: {what} is not a state dict of named tensors")
    return obj


def _depth(state: dict[str, Any]) -> int:
    ids = {int(k.split(".")[1]) for k in state if k.startswith("blocks.") and k.split(".")[1].isdigit()}
    if not ids or ids != set(range(len(ids))):
        raise SkelError(f"transformer blocks are not numbered 0..n-1 (found {sorted(ids)[:10]})")
    return len(ids)


def _need(state: dict[str, Any], key: str, path: Path, kind: str) -> torch.Tensor:
    if key not in state:
        raise SkelError(f"{path}: missing key {key!r}; is this a {kind} checkpoint?")
    return state[key]


def _block_keys(state: dict[str, Any], depth: int, ffn_names: tuple[str, ...]) -> dict[str, str]:
    """Official block key -> skelcli key (identical names), for the keys present."""
    mapping = {}
    for i in range(depth):
        for name in ("norm1", "attn.qkv", "attn.proj", "norm2", *ffn_names):
            for p in ("weight", "bias"):
                k = f"blocks.{i}.{name}.{p}"
                if k in state:
                    mapping[k] = k
    return mapping


def _check_complete(cfg, encoder: dict[str, torch.Tensor], unknown: list[str], path: Path) -> None:
    """SkelError listing unknown source keys and missing encoder keys; shapes via check_encoder_shapes."""
    from skelcli.engine.checkpoint import check_encoder_shapes
    from skelcli.models.encoder import SkeletonEncoder

    with torch.device("meta"):
        expected = set(SkeletonEncoder(cfg).state_dict())
    missing = sorted(expected - set(encoder))
    if unknown or missing:
        parts = []
        if unknown:
            parts.append(f"unknown keys ({len(unknown)}): {', '.join(sorted(unknown)[:12])}{' ...' if len(unknown) > 12 else ''}")
        if missing:
            parts.append(f"missing keys ({len(missing)}): {', '.join(missing[:12])}{' ...' if len(missing) > 12 else ''}")
        raise SkelError(f"{path}: cannot map the file onto the encoder: " + "; ".join(parts))
    check_encoder_shapes(cfg, encoder, path)


def _group(key: str) -> str:
    """Report name of a dropped key: its first component (``decoder_blocks``, ``dino_head``, ...)."""
    return key.split(".")[0]


# --------------------------------------------------------------------------- MAMP
def _model_args(args: Any) -> dict[str, Any]:
    model_args = getattr(args, "model_args", None) if args is not None else None
    if isinstance(model_args, argparse.Namespace):
        model_args = vars(model_args)
    return dict(model_args) if isinstance(model_args, dict) else {}


def _heads(meta: dict[str, Any], dim: int, path: Any, report: Any, example: str) -> int:
    """Attention heads from the file's metadata (``num_heads``), else assumed from the official head width."""
    if "num_heads" in meta:
        return int(meta["num_heads"])
    if dim % OFFICIAL_HEAD_DIM:
        raise SkelError(f"{path}: the file does not say how many attention heads; pass --heads")
    heads = dim // OFFICIAL_HEAD_DIM
    report.notes.append(f"heads not in the file: assumed {heads} (head width {OFFICIAL_HEAD_DIM}, as {example})")
    return heads


def convert_mamp(payload: Any, path: Path, strict: bool = True, heads: int | None = None) -> tuple[dict[str, Any], ImportReport]:
    """MAMP ``checkpoint-<epoch>.pth`` (or bare state dict) -> (skelcli checkpoint payload, report).

    Architecture: D, C, l from ``joints_embed.proj.weight`` (D, C, l, 1); V from ``pos_embed``
    (1, 1, V, D); Tp from ``temp_embed`` (1, Tp, 1, D), frames = Tp * l; depth from the block
    numbers; MLP ratio from ``blocks.0.mlp.fc1.weight`` (H, D); heads from ``heads``, else
    ``args.model_args["num_heads"]``, else D / 32 (MAMP: 8 heads at D 256). ``args.model_args``
    values (dim_feat, depth, num_frames, num_joints, t_patch_size, num_heads) are checked against
    the shapes. Feature = mean of the final-normed patch tokens (pool "mean").
    """
    from skelcli.models.encoder import EncoderConfig

    wrapped = isinstance(payload, dict) and "model" in payload
    args = payload.get("args") if wrapped else None
    state = _tensor_dict(payload["model"] if wrapped else payload, path, "the 'model' entry" if wrapped else "the file")
    refuse_flat_params(state, path)
    state = to_fp32(strip_module_prefix(state))
    report = ImportReport("MAMP checkpoint-<epoch>.pth" if wrapped else "MAMP state dict")

    w = _need(state, "joints_embed.proj.weight", path, "MAMP")
    if w.ndim != 4:
        raise SkelError(f"{path}: joints_embed.proj.weight has shape {list(w.shape)}; expected (D, C, l, 1)")
    dim, chans, t_patch = int(w.shape[0]), int(w.shape[1]), int(w.shape[2])
    joints = int(_need(state, "pos_embed", path, "MAMP").shape[2])
    segments = int(_need(state, "temp_embed", path, "MAMP").shape[1])
    depth = _depth(state)
    hidden = int(_need(state, "blocks.0.mlp.fc1.weight", path, "MAMP").shape[0])
    margs = _model_args(args)
    if heads is None:
        heads = _heads(margs, dim, path, report, "MAMP's 8 heads at 256")
    found = {"dim_feat": dim, "depth": depth, "num_frames": segments * t_patch, "num_joints": joints,
             "t_patch_size": t_patch, "num_heads": heads, "dim_in": chans}
    wrong = [f"{k}={margs[k]} in args but {v} from the tensors" for k, v in found.items() if k in margs and int(margs[k]) != v]
    if wrong:
        raise SkelError(f"{path}: args.model_args disagree with the weights: {'; '.join(wrong)}")
    if margs.get("patch_size", 1) != 1:
        raise SkelError(f"{path}: spatial patch size {margs['patch_size']} is not supported (one joint per token)")
    try:
        cfg = EncoderConfig(num_frames=segments * t_patch, t_patch=t_patch, num_joints=joints, in_chans=chans, dim=dim,
                            depth=depth, heads=heads, mlp_ratio=hidden / dim, ffn="gelu", temporal_pos="learned",
                            qkv_bias="blocks.0.attn.qkv.bias" in state, norm_eps=1e-5, pool="mean")
    except ValueError as exc:
        raise SkelError(f"{path}: inferred architecture is invalid ({exc})") from None

    encoder = {
        "patch_embed.weight": conv_patch_to_linear(w),
        "joint_embed": state["pos_embed"],
        "temp_embed": state["temp_embed"],
    }
    used = {"joints_embed.proj.weight", "pos_embed", "temp_embed"}
    if "joints_embed.proj.bias" in state:
        encoder["patch_embed.bias"] = state["joints_embed.proj.bias"]
        used.add("joints_embed.proj.bias")
    blocks = _block_keys(state, depth, ("mlp.fc1", "mlp.fc2"))
    for k in ("norm.weight", "norm.bias"):
        if k in state:
            blocks[k] = k
    encoder.update({ours: state[theirs] for theirs, ours in blocks.items()})
    used |= set(blocks)

    dropped = [k for k in state if k not in used and (k == "mask_token" or k.startswith("decoder_"))]
    head_keys = [k for k in state if k.startswith("head.")]
    unknown = [k for k in state if k not in used and k not in dropped and k not in head_keys]
    _check_complete(cfg, encoder, unknown, path)

    out: dict[str, Any] = {}
    if head_keys:
        out, head_note = _mamp_head(state, head_keys, cfg, path, strict)
        report.head = head_note
        if not out:
            report.notes.append(head_note)
    report.mapped = len(used)  # source tensors used (SLiM pos_embed feeds two of ours)
    report.dropped = len(dropped)
    report.dropped_groups = sorted({_group(k) for k in dropped})
    report.encoder_config = cfg.model_dump()
    data = {"dataset": None, "num_classes": out.get("head_config", {}).get("num_classes"), "split": None, "fingerprint": None}
    epoch = payload.get("epoch") if isinstance(payload, dict) else None
    ckpt = {
        "method": "mamp",
        "settings": {"imported_from": {"kind": "mamp", "path": str(path), "format": report.source_format,
                                       "model_args": _jsonable(margs)}},
        "encoder_config": cfg.model_dump(),
        "encoder": encoder,
        "pretraining_only": [],
        "data": data,
        "epoch": int(epoch) + 1 if isinstance(epoch, int) else None,
        "step": None,
        **out,
    }
    return ckpt, report


def _mamp_head(state: dict[str, Any], head_keys: list[str], cfg, path: Path, strict: bool) -> tuple[dict[str, Any], str]:
    """MAMP ``head.*`` -> ({"head", "head_config"}, note) or ({}, note) when not representable.

    Fine-tune head (``head.fc1`` (H, V*D), ``head.bn.*`` (H), ``head.fc2`` (classes, H)) maps 1:1 onto
    :class:`skelcli.eval.heads.MampFinetuneHead` (fc1 input index v*D + d in both; persons averaged
    including empty slots in both; dropout 0.3 as MAMP's ``ActionHeadFinetune``).
    """
    names = {k[len("head."):] for k in head_keys}
    finetune = {f"fc1.{p}" for p in ("weight", "bias")} | {f"fc2.{p}" for p in ("weight", "bias")} | {
        f"bn.{p}" for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    if names == finetune:
        fc1, fc2 = state["head.fc1.weight"], state["head.fc2.weight"]
        hidden, num_classes = int(fc1.shape[0]), int(fc2.shape[0])
        if tuple(fc1.shape) != (hidden, cfg.num_joints * cfg.dim) or tuple(fc2.shape) != (num_classes, hidden):
            raise SkelError(f"{path}: MAMP fine-tune head shapes fc1 {list(fc1.shape)}, fc2 {list(fc2.shape)} do not fit the encoder")
        head = {n: state[f"head.{n}"] for n in sorted(finetune)}
        config = {"kind": "mamp", "num_classes": num_classes, "dropout": 0.3, "hidden": hidden}
        return {"head": head, "head_config": config}, f"MAMP fine-tune head imported ({num_classes} classes, hidden {hidden})"
    linprobe = names <= {"fc.weight", "fc.bias", "fc.0.running_mean", "fc.0.running_var", "fc.0.num_batches_tracked",
                         "fc.1.weight", "fc.1.bias"}
    what = "MAMP linear-probe head" if linprobe else f"unrecognised head ({', '.join(sorted(head_keys)[:6])})"
    if strict:
        raise SkelError(f"{path}: {what} has no exact skelcli head; pass --no-strict to import the encoder without it")
    return {}, f"{what} not imported (no exact skelcli head); encoder only"


# --------------------------------------------------------------------------- SLiM
def _swiglu_ratio(dim: int, hidden: int, path: Path) -> float:
    """mlp_ratio whose DINOv2 SwiGLU width round8(int(dim * ratio * 2/3)) equals ``hidden``."""
    from skelcli.models.layers import swiglu_hidden

    for ratio in (4.0, hidden * 1.5 / dim, (hidden + 1) * 1.5 / dim):
        if swiglu_hidden(dim, ratio) == hidden:
            return float(ratio)
    raise SkelError(f"{path}: SwiGLU hidden width {hidden} at dim {dim} is not a DINOv2-style width (multiple of 8)")


def read_slim_source(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], str]:
    """SLiM file or folder -> (state dict with leading ``module.`` removed, config.json or {}, format name).

    ``teacher_checkpoint.pth`` / exported encoder: the ``teacher`` entry (``backbone.*`` plus heads).
    Hugging Face folder: ``model.safetensors`` (keys without ``backbone.``) and ``config.json``.
    """
    if path.is_dir():
        cfg_file, weights = path / "config.json", path / "model.safetensors"
        if not (cfg_file.is_file() and weights.is_file()):
            raise SkelError(f"{path}: a SLiM Hugging Face folder needs config.json and model.safetensors")
        try:
            config = json.loads(cfg_file.read_text())
        except (OSError, ValueError) as exc:
            raise SkelError(f"{cfg_file}: not valid JSON ({exc})") from None
        if not isinstance(config, dict) or "encoder_config" in config:
            raise SkelError(f"{cfg_file}: not a SLiM config (a skelcli export? use 'skel import skelcli')")
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(weights))
        except (SafetensorError, OSError) as exc:
            raise SkelError(f"{weights}: not a readable safetensors file ({exc})") from None
        return strip_module_prefix(state), config, "SLiM Hugging Face folder (config.json + model.safetensors)"
    refuse_fsdp_name(path)
    payload = safe_torch_load(path)
    if isinstance(payload, dict) and "teacher" in payload:
        state = _tensor_dict(payload["teacher"], path, "the 'teacher' entry")
        fmt = "SLiM teacher_checkpoint.pth" if any(k.startswith(("dino_head.", "ibot_head.")) for k in strip_module_prefix(state)) \
            else "SLiM exported encoder ({'teacher': backbone})"
    elif isinstance(payload, dict) and "model" in payload and isinstance(payload["model"], dict):
        state = payload["model"]
        refuse_flat_params(state, path)
        raise SkelError(f"{path}: a SLiM training file with 'model' (not a teacher state); use eval/training_<iter>/teacher_checkpoint.pth")
    else:
        state = _tensor_dict(payload, path, "the file")
        fmt = "SLiM backbone state dict"
    refuse_flat_params(state, path)
    return strip_module_prefix(state), {}, fmt


def convert_slim(state: dict[str, torch.Tensor], config: dict[str, Any], path: Path, fmt: str,
                 heads: int | None = None, frames: int | None = None) -> tuple[dict[str, Any], ImportReport]:
    """SLiM backbone (with or without a leading ``backbone.``) -> (skelcli checkpoint payload, report).

    Encoder options (as ``skelcli.methods.slim.SLIM_ENCODER``): CLS + R registers, temporal RoPE
    (base 10000 over the head width, rotate-half, positions = token row t), SwiGLU, LayerNorm eps
    1e-6, pool "cls_mean" (feature = CLS || mean of patch tokens, registers excluded), mask token kept.
    D, C, l from ``patch_embed.proj.weight`` (D, C, l, 1); V from ``pos_embed`` (1, 1 + V, D); R from
    ``register_tokens``; heads from ``heads``, else config.json ``num_heads``, else D / 32 (vit_tiny:
    8 heads at 256); frames from ``frames``, else config.json ``img_size[0]``, else 64.
    """
    from skelcli.models.encoder import EncoderConfig

    state = to_fp32(state)
    report = ImportReport(fmt)
    backbone, dropped, unknown = {}, [], []
    for key, value in state.items():
        if key.startswith(("dino_head.", "ibot_head.")) or key.endswith("rope.inv_freq"):
            dropped.append(key)
        elif key.startswith("backbone."):
            backbone[key[len("backbone."):]] = value
        elif fmt.startswith("SLiM Hugging Face") or fmt == "SLiM backbone state dict":
            backbone[key] = value
        else:
            unknown.append(key)
    w = _need(backbone, "patch_embed.proj.weight", path, "SLiM")
    if w.ndim != 4:
        raise SkelError(f"{path}: patch_embed.proj.weight has shape {list(w.shape)}; expected (D, C, l, 1)")
    dim, chans, t_patch = int(w.shape[0]), int(w.shape[1]), int(w.shape[2])
    pos = _need(backbone, "pos_embed", path, "SLiM")
    _need(backbone, "cls_token", path, "SLiM")
    joints = int(pos.shape[1]) - 1
    registers = int(backbone["register_tokens"].shape[1]) if "register_tokens" in backbone else 0
    depth = _depth(backbone)
    hidden = int(_need(backbone, "blocks.0.mlp.w3.weight", path, "SLiM").shape[1])
    for key, want in (("patch_size", [t_patch, 1]), ("in_chans", chans), ("num_register_tokens", registers)):
        if key in config and config[key] != want:
            raise SkelError(f"{path}: config.json {key}={config[key]} but the weights say {want}")
    if config.get("ffn_layer", "swiglufused") not in ("swiglufused", "swiglu"):
        raise SkelError(f"{path}: config.json ffn_layer={config['ffn_layer']!r}; only SwiGLU SLiM encoders are supported")
    if float(config.get("init_values", 0.0) or 0.0) != 0.0:
        raise SkelError(f"{path}: config.json init_values={config['init_values']} (LayerScale) is not supported")
    if heads is None:
        heads = _heads(config, dim, path, report, "SLiM vit_tiny: 8 at 256")
    if frames is None:
        size = config.get("img_size")
        if isinstance(size, (list, tuple)) and size:
            frames = int(size[0])
        else:
            frames = SLIM_FRAMES
            report.notes.append(f"clip length not in the file: using SLiM's {SLIM_FRAMES} frames (RoPE works at any multiple of {t_patch})")
    try:
        cfg = EncoderConfig(num_frames=frames, t_patch=t_patch, num_joints=joints, in_chans=chans, dim=dim, depth=depth,
                            heads=heads, mlp_ratio=_swiglu_ratio(dim, hidden, path), ffn="swiglu", temporal_pos="rope",
                            use_cls=True, num_registers=registers, mask_token="mask_token" in backbone,
                            qkv_bias="blocks.0.attn.qkv.bias" in backbone, norm_eps=1e-6, pool="cls_mean")
    except ValueError as exc:
        raise SkelError(f"{path}: inferred architecture is invalid ({exc})") from None

    encoder = {
        "patch_embed.weight": conv_patch_to_linear(w),
        "cls_token": backbone["cls_token"],
        "cls_pos": pos[:, :1].reshape(1, 1, dim).clone(),
        "joint_embed": pos[:, 1:].reshape(1, 1, joints, dim).clone(),
    }
    used = {"patch_embed.proj.weight", "cls_token", "pos_embed"}
    for theirs, ours in (("patch_embed.proj.bias", "patch_embed.bias"), ("register_tokens", "registers")):
        if theirs in backbone:
            encoder[ours] = backbone[theirs]
            used.add(theirs)
    if "mask_token" in backbone:
        encoder["mask_embed"] = backbone["mask_token"].reshape(1, 1, dim)
        used.add("mask_token")
    blocks = _block_keys(backbone, depth, ("mlp.w12", "mlp.w3"))
    for k in ("norm.weight", "norm.bias"):
        if k in backbone:
            blocks[k] = k
    encoder.update({ours: backbone[theirs] for theirs, ours in blocks.items()})
    used |= set(blocks)
    unknown += [k for k in backbone if k not in used]
    _check_complete(cfg, encoder, unknown, path)

    report.mapped = len(used)  # source tensors used (SLiM pos_embed feeds two of ours)
    report.dropped = len(dropped)
    report.dropped_groups = sorted({_group(k) for k in dropped})
    report.encoder_config = cfg.model_dump()
    ckpt = {
        "method": "slim",
        "settings": {"imported_from": {"kind": "slim", "path": str(path), "format": fmt, "config": _jsonable(config)}},
        "encoder_config": cfg.model_dump(),
        "encoder": encoder,
        "pretraining_only": [],
        "data": {"dataset": None, "num_classes": None, "split": None, "fingerprint": None},
        "epoch": None,
        "step": None,
    }
    return ckpt, report


# --------------------------------------------------------------------------- skelcli folder
def convert_skelcli_folder(path: Path) -> tuple[dict[str, Any], ImportReport]:
    """A ``skel export --format safetensors`` folder -> (checkpoint payload, report)."""
    if not path.is_dir():
        raise SkelError(f"{path}: a skelcli safetensors export is a folder (config.json + model.safetensors)")
    try:
        from skelcli.interop.export import read_safetensors_folder
    except ImportError:
        raise SkelError("this skelcli has no safetensors export reader (skelcli.interop.export)") from None
    ckpt = dict(read_safetensors_folder(path))
    for key in ("schema", "schema_version", "skelcli_version"):
        ckpt.pop(key, None)
    if "encoder" not in ckpt or "encoder_config" not in ckpt:
        raise SkelError(f"{path}: the export holds no encoder")
    ckpt["encoder"] = to_fp32(ckpt["encoder"])
    report = ImportReport("skelcli safetensors folder", mapped=len(ckpt["encoder"]), encoder_config=dict(ckpt["encoder_config"]))
    if ckpt.get("head"):
        report.head = f"{ckpt.get('head_config', {}).get('kind', '?')} head imported"
    return ckpt, report


# --------------------------------------------------------------------------- entry point
def import_checkpoint(kind: str, src: str | Path, out: str | Path, strict: bool = True,
                      heads: int | None = None, frames: int | None = None) -> ImportReport:
    """Convert ``src`` (official ``kind`` layout) and write a skelcli checkpoint to ``out``.

    The written file is verified by :func:`skelcli.engine.checkpoint.load_encoder` before returning.
    ``strict``: a head that skelcli cannot represent exactly is an error (else dropped with a note).
    Unknown or missing encoder keys are always an error.
    """
    from skelcli.engine.checkpoint import load_encoder, save_checkpoint

    src, out = Path(src), Path(out)
    if kind not in KINDS:
        raise SkelError(f"unknown source format {kind!r}; choose one of {', '.join(KINDS)}")
    if not src.exists():
        raise SkelError(f"{src}: not found")
    if kind == "mamp":
        if src.is_dir():
            raise SkelError(f"{src}: is a folder; give the checkpoint-<epoch>.pth file")
        refuse_fsdp_name(src)
        ckpt, report = convert_mamp(safe_torch_load(src), src, strict, heads)
    elif kind == "slim":
        state, config, fmt = read_slim_source(src)  # an explicit --frames wins over config.json (RoPE)
        ckpt, report = convert_slim(state, config, src, fmt, heads, frames)
    else:
        ckpt, report = convert_skelcli_folder(src)
    if frames is not None and kind != "slim" and ckpt["encoder_config"].get("num_frames") != frames:
        raise SkelError(f"--frames {frames}: the {kind} encoder has a learned temporal table for {ckpt['encoder_config']['num_frames']} frames")
    save_checkpoint(out, ckpt)
    load_encoder(out)  # the written file must load like any other checkpoint
    report.out = out
    return report


def _jsonable(obj: Any) -> Any:
    """Plain JSON types only (the checkpoint must stay loadable with weights_only=True)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)
