"""Export a checkpoint's downstream model to ONNX, TorchScript or a safetensors folder.

What is exported (:class:`ExportModel`): the model a deployer calls on whole clips.

* Input ``clips``: float32 (B, M, T, V, C) — B clips (the dynamic batch axis), M = 2 person slots
  (an absent person is all zeros, as the loader pads), T = the encoder's ``num_frames``, V joints,
  C channels in the checkpoint's topology (NTU: 25 joints, xyz metres). Clips are already cropped and
  resized to T frames (the test transform of :mod:`skelcli.eval.features`).
* Fine-tuned checkpoints (``head`` + ``head_config``): output ``logits`` (B, classes), exactly
  :class:`skelcli.eval.heads.FinetuneModel` in eval mode (persons pooled as the head was trained: MAMP
  head mean over both slots, SLiM linear head mean over non-empty persons).
* Pretrained checkpoints: output ``features`` (B, F) per clip, the encoder's pooled feature (mean of
  tokens, or CLS || mean patch for ``pool="cls_mean"``) averaged over persons with the method's
  downstream person pooling (:func:`skelcli.eval.features.default_person_pool`: ``mean_valid`` for
  SLiM, ``mean`` otherwise) — the features ``skel probe`` / ``skel retrieve`` use.

Every export is checked before it is published: the written file is loaded back (onnxruntime,
``torch.jit.load``, or :func:`read_safetensors_folder`), run on seeded random clips at two batch sizes
(the second proves the dynamic batch axis) and compared with eager PyTorch; a max abs difference
above :data:`TOLERANCE` raises SkelError and nothing is left at the output path.

The safetensors folder (``format: "skelcli-safetensors"``) holds ``config.json`` (method, settings,
encoder_config, head_config, data meta, epoch, step, skelcli version) and ``model.safetensors``
(tensors named ``encoder.<name>`` and ``head.<name>``); :func:`read_safetensors_folder` turns it back
into a checkpoint dict for :func:`skelcli.engine.checkpoint.save_checkpoint`.
"""

from __future__ import annotations

import importlib
import io
import json
import math
import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from skelcli import __version__
from skelcli.errors import SkelError
from skelcli.paths import atomic_write, read_json_object

FORMATS = ("onnx", "torchscript", "safetensors")
#: Largest accepted max abs difference between the exported model and eager PyTorch.
TOLERANCE = 1e-4
#: Person slots M of the exported input (NTU RGB+D / PKU-MMD layout; the loader pads to 2).
NUM_PERSONS = 2
OPSET = 17
SAFETENSORS_FORMAT = "skelcli-safetensors"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
#: Python modules each format needs (all in the ``[export]`` extra).
REQUIRES = {"onnx": ("onnx", "onnxruntime"), "torchscript": (), "safetensors": ("safetensors",)}


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise SkelError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")


def require_export_deps(fmt: str) -> None:
    """One-line SkelError naming the ``[export]`` extra unless the modules ``fmt`` needs import."""
    check_format(fmt)
    for name in REQUIRES[fmt]:
        try:
            importlib.import_module(name)
        except ImportError:
            raise SkelError(
                f"skel export --format {fmt} needs {name}: pip install 'skelcli[export]' (or pip install {name})"
            ) from None


# ------------------------------------------------------------------------------------ the model
class ExportModel(nn.Module):
    """clips (B, M, T, V, C) -> logits (B, classes) with a head, else features (B, F); see the module docstring."""

    def __init__(self, encoder: nn.Module, head_config: dict[str, Any] | None = None,
                 head_state: dict[str, torch.Tensor] | None = None, person_pool: str = "mean") -> None:
        super().__init__()
        from skelcli.eval.heads import FinetuneModel

        self.encoder = encoder
        self.person_pool = person_pool
        self.finetuned = head_config is not None
        self.classifier = None
        if self.finetuned:
            self.classifier = FinetuneModel(encoder, head_config)
            try:
                self.classifier.head.load_state_dict(head_state or {})
            except RuntimeError as exc:
                raise SkelError(f"head weights do not match head_config: {str(exc).splitlines()[0][:160]}") from None
        self.eval()

    @property
    def output_name(self) -> str:
        return "logits" if self.finetuned else "features"

    def input_shape(self, batch: int | str = "batch") -> tuple:
        cfg = self.encoder.config
        return (batch, NUM_PERSONS, cfg.num_frames, cfg.num_joints, cfg.in_chans)

    def output_shape(self, batch: int | str = "batch") -> tuple:
        if self.finetuned:
            return (batch, int(self.classifier.head_config["num_classes"]))
        return (batch, self.encoder.feature_dim)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        if self.classifier is not None:
            return self.classifier(clips)
        from skelcli.eval.features import encode_views

        return encode_views(self.encoder, clips, self.person_pool)


def build_export_model(encoder: nn.Module, ckpt: dict[str, Any]) -> ExportModel:
    """The :class:`ExportModel` of a loaded encoder and its checkpoint dict (head if fine-tuned)."""
    from skelcli.eval.features import default_person_pool

    has_head, has_cfg = "head" in ckpt, "head_config" in ckpt
    if has_head != has_cfg:
        raise SkelError("checkpoint holds only one of head / head_config; a fine-tuned checkpoint needs both")
    pool = default_person_pool(ckpt.get("method"))
    if has_head:
        return ExportModel(encoder, dict(ckpt["head_config"]), ckpt["head"], pool)
    return ExportModel(encoder, person_pool=pool)


def sample_clips(model: ExportModel, batch: int, seed: int = 0) -> torch.Tensor:
    """Seeded standard-normal clips (batch, M, T, V, C); for batch > 1 the last clip's last person is
    empty (all zeros), so the person-validity path is exercised too."""
    gen = torch.Generator().manual_seed(seed + batch)
    x = torch.randn(model.input_shape(batch), generator=gen)
    if batch > 1 and NUM_PERSONS > 1:
        x[-1, -1] = 0.0
    return x


# ------------------------------------------------------------------------------------ safetensors
def _tensors(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    out = {f"encoder.{k}": v for k, v in ckpt["encoder"].items()}
    if "head" in ckpt:
        out.update({f"head.{k}": v for k, v in ckpt["head"].items()})
    bad = [k for k, v in out.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise SkelError(f"checkpoint state dict holds non-tensor entries: {', '.join(bad[:3])}")
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def _config(ckpt: dict[str, Any]) -> dict[str, Any]:
    cfg = {
        "format": SAFETENSORS_FORMAT,
        "format_version": 1,
        "skelcli_version": __version__,
        "method": str(ckpt.get("method", "unknown")),
        "settings": ckpt.get("settings") or {},
        "encoder_config": ckpt["encoder_config"],
        "data": ckpt.get("data") or {},
        "epoch": ckpt.get("epoch"),
        "step": ckpt.get("step"),
    }
    if "head_config" in ckpt:
        cfg["head_config"] = ckpt["head_config"]
    if "pretrain_data" in ckpt:
        cfg["pretrain_data"] = ckpt["pretrain_data"]
    return cfg


def _is_export_folder(folder: Path) -> bool:
    return {p.name for p in folder.iterdir()} <= {CONFIG_NAME, WEIGHTS_NAME}


def check_safetensors_target(folder: Path) -> None:
    """SkelError unless ``folder`` is absent, empty, or an earlier export (which is then replaced)."""
    folder = Path(folder)
    if folder.is_dir() and not _is_export_folder(folder):
        raise SkelError(f"--out {folder} holds other files; give a new or empty folder (or an earlier export to replace)")


def write_safetensors_folder(ckpt: dict[str, Any], folder: Path, *, check: Callable[[Path], None] | None = None) -> Path:
    """Write ``ckpt``'s encoder (+ head) as ``folder``/config.json + model.safetensors; returns ``folder``.

    Written into a temporary sibling folder, then renamed into place (an earlier export there is
    replaced only once the new one is complete). ``check(temp_folder)``, if given, runs before the
    rename; an exception from it leaves ``folder`` untouched.
    """
    from safetensors.torch import save

    folder = Path(folder)
    if "encoder" not in ckpt or "encoder_config" not in ckpt:
        raise SkelError("checkpoint holds no encoder / encoder_config to export")
    check_safetensors_target(folder)
    tensors = _tensors(ckpt)
    config = _config(ckpt)
    try:
        text = json.dumps(config, indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise SkelError(f"checkpoint metadata is not plain JSON: {exc}") from None
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        meta = {"format": "pt", "skelcli": SAFETENSORS_FORMAT}
        atomic_write(tmp / WEIGHTS_NAME, lambda fh: fh.write(save(tensors, metadata=meta)))
        atomic_write(tmp / CONFIG_NAME, lambda fh: fh.write(text.encode()))
        if check is not None:
            check(tmp)
        if folder.exists():
            folder.rename(old)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not folder.exists():
            old.rename(folder)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return folder


def read_safetensors_folder(folder: Path) -> dict[str, Any]:
    """A folder written by :func:`write_safetensors_folder` -> a checkpoint dict (method, settings,
    encoder_config, encoder, pretraining_only [], data, epoch, step, and head / head_config when
    fine-tuned) ready for :func:`skelcli.engine.checkpoint.save_checkpoint`."""
    require_export_deps("safetensors")
    from safetensors import SafetensorError
    from safetensors.torch import load

    folder = Path(folder)
    cfg_path, weights = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    for p in (cfg_path, weights):
        if not p.is_file():
            raise SkelError(f"{folder}: not a skelcli safetensors folder ({p.name} is missing)")
    cfg = read_json_object(cfg_path)
    if cfg.get("format") != SAFETENSORS_FORMAT:
        raise SkelError(f"{cfg_path}: not a skelcli safetensors export (format {cfg.get('format')!r}, expected {SAFETENSORS_FORMAT!r})")
    if int(cfg.get("format_version", 1)) > 1:
        raise SkelError(f"{cfg_path}: format version {cfg['format_version']} is newer than this skelcli supports (1)")
    if not isinstance(cfg.get("encoder_config"), dict):
        raise SkelError(f"{cfg_path}: encoder_config is missing")
    try:
        tensors = load(weights.read_bytes())
    except (SafetensorError, ValueError, OSError) as exc:
        raise SkelError(f"{weights}: damaged safetensors file ({str(exc).splitlines()[0][:120]})") from None
    parts: dict[str, dict[str, torch.Tensor]] = {"encoder": {}, "head": {}}
    for name, t in tensors.items():
        prefix, _, key = name.partition(".")
        if prefix not in parts or not key:
            raise SkelError(f"{weights}: unexpected tensor {name!r} (names start with encoder. or head.)")
        parts[prefix][key] = t
    if parts["head"] and "head_config" not in cfg:
        raise SkelError(f"{folder}: head tensors but no head_config in {CONFIG_NAME}")
    ckpt: dict[str, Any] = {
        "method": cfg.get("method", "unknown"),
        "settings": cfg.get("settings") or {},
        "encoder_config": cfg["encoder_config"],
        "encoder": parts["encoder"],
        "pretraining_only": [],
        "data": cfg.get("data") or {},
        "epoch": cfg.get("epoch"),
        "step": cfg.get("step"),
    }
    if "head_config" in cfg:
        ckpt["head_config"] = cfg["head_config"]
        ckpt["head"] = parts["head"]
    if "pretrain_data" in cfg:
        ckpt["pretrain_data"] = cfg["pretrain_data"]
    return ckpt


# ------------------------------------------------------------------------------------ load back + verify
def load_exported(fmt: str, path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """The written export as a function clips (B, M, T, V, C) -> output, run by its own runtime."""
    path = Path(path)
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates TorchScript
            module = torch.jit.load(str(path), map_location="cpu")

        def run_ts(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return module(x)

        return run_ts
    if fmt == "safetensors":
        from skelcli.models.encoder import EncoderConfig, SkeletonEncoder

        ckpt = read_safetensors_folder(path)
        encoder = SkeletonEncoder(EncoderConfig(**ckpt["encoder_config"]))
        encoder.load_state_dict(ckpt["encoder"])
        model = build_export_model(encoder.eval(), ckpt)

        def run_st(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return model(x)

        return run_st
    check_format(fmt)
    raise AssertionError(fmt)


def verify_export(fmt: str, path: Path, model: ExportModel, batches: list[int], seed: int = 0) -> list[dict[str, Any]]:
    """Run the written export and eager ``model`` on seeded clips per batch size; SkelError when the max
    abs difference exceeds :data:`TOLERANCE` (or the output shape is wrong). Returns [{batch, max_abs_diff}]."""
    run = load_exported(fmt, path)
    rows = []
    for b in batches:
        x = sample_clips(model, b, seed)
        with torch.no_grad():
            ref = model(x)
        out = run(x.clone())
        if tuple(out.shape) != tuple(ref.shape):
            raise SkelError(f"exported {fmt} model returns shape {list(out.shape)} at batch {b}, PyTorch {list(ref.shape)}")
        diff = (out.double() - ref.double()).abs().max().item()
        if not math.isfinite(diff) or diff >= TOLERANCE:
            raise SkelError(f"exported {fmt} model differs from PyTorch by max abs {diff:.3g} at batch {b} "
                            f"(tolerance {TOLERANCE:g}); nothing was written")
        rows.append({"batch": b, "max_abs_diff": diff})
    return rows


# ------------------------------------------------------------------------------------ writers
def _meta(model: ExportModel, ckpt: dict[str, Any]) -> dict[str, str]:
    return {
        "skelcli_version": __version__,
        "method": str(ckpt.get("method", "unknown")),
        "input": f"clips (batch, M={NUM_PERSONS}, T, V, C) float32",
        "output": f"{model.output_name} {list(model.output_shape())}",
        "person_pool": model.person_pool if not model.finetuned else str(model.classifier.head_config["kind"]),
        "encoder_config": json.dumps(ckpt["encoder_config"]),
    }


def _onnx_bytes(model: ExportModel, example: torch.Tensor, meta: dict[str, str]) -> bytes:
    import onnx

    buf = io.BytesIO()
    out = model.output_name
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer / deprecation chatter
        torch.onnx.export(model, (example,), buf, input_names=["clips"], output_names=[out],
                          dynamic_axes={"clips": {0: "batch"}, out: {0: "batch"}}, opset_version=OPSET, dynamo=False)
    proto = onnx.load_from_string(buf.getvalue())
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    proto.producer_name = "skelcli"
    return proto.SerializeToString()


def _torchscript_bytes(model: ExportModel, example: torch.Tensor, meta: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, (example,), check_trace=False)
        torch.jit.save(traced, buf, _extra_files={"skelcli.json": json.dumps(meta)})
    return buf.getvalue()


def export_checkpoint(checkpoint: Path, fmt: str, out: Path, batch: int = 2, seed: int = 0) -> dict[str, Any]:
    """Export ``checkpoint``'s downstream model to ``out`` in ``fmt`` and verify it (module docstring).

    ``batch``: batch size of the example clips the export is traced with and first tested at; it is
    also tested at a second size (1, or 7 when ``batch`` is 1). Returns a summary dict (format, path,
    input / output names and shapes, per-batch max abs differences, size in bytes).
    """
    from skelcli.engine.checkpoint import load_encoder

    check_format(fmt)
    require_export_deps(fmt)
    if not isinstance(batch, int) or not 1 <= batch <= 4096:
        raise SkelError(f"--batch must be between 1 and 4096, got {batch}")
    out = Path(out)
    if fmt == "safetensors":
        check_safetensors_target(out)
    encoder, _info, ckpt = load_encoder(checkpoint, "cpu")
    model = build_export_model(encoder, ckpt)
    batches = [batch, 1 if batch != 1 else 7]
    rows: list[dict[str, Any]] = []

    def check(path: Path) -> None:
        rows.extend(verify_export(fmt, path, model, batches, seed))

    if fmt == "safetensors":
        write_safetensors_folder(ckpt, out, check=check)
        size = sum(p.stat().st_size for p in out.iterdir())
    else:
        example = sample_clips(model, batch, seed)
        maker = _onnx_bytes if fmt == "onnx" else _torchscript_bytes
        data = maker(model, example, _meta(model, ckpt))

        def write(fh) -> None:
            fh.write(data)
            fh.flush()
            check(Path(fh.name))

        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, write)
        size = out.stat().st_size
    return {
        "format": fmt,
        "out": str(out),
        "checkpoint": str(checkpoint),
        "method": str(ckpt.get("method", "unknown")),
        "finetuned": model.finetuned,
        "input": {"name": "clips", "shape": list(model.input_shape())},
        "output": {"name": model.output_name, "shape": list(model.output_shape())},
        "person_pool": None if model.finetuned else model.person_pool,
        "verified": rows,
        "tolerance": TOLERANCE,
        "bytes": size,
    }


__all__ = [
    "FORMATS", "TOLERANCE", "ExportModel", "build_export_model", "check_safetensors_target", "export_checkpoint",
    "load_exported", "read_safetensors_folder", "require_export_deps", "sample_clips", "verify_export",
    "write_safetensors_folder",
]
