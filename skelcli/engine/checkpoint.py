"""Checkpoint format, atomic writes and verified loads.

A checkpoint is one ``torch.save`` dict loadable with ``weights_only=True`` (plain tensors, numbers,
strings, lists and dicts only):

``schema`` "skelcli.checkpoint", ``schema_version`` 1, ``skelcli_version``, ``method`` (name),
``settings`` (resolved settings as JSON types), ``encoder_config`` (dict of EncoderConfig),
``encoder`` (state dict of the *downstream* encoder: SLiM's teacher, the plain encoder otherwise),
``pretraining_only`` (names of submodules dropped after pretraining), ``data`` (dataset, num_classes,
split, file fingerprint), ``epoch`` (epochs completed), ``step``, and for resuming ``model``
(the whole method's state dict), ``optimizer``, ``scheduler``, ``rng``. Fine-tuned checkpoints add
``head`` and ``head_config``.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from skelcli import __version__
from skelcli.errors import SkelError

SCHEMA = "skelcli.checkpoint"
SCHEMA_VERSION = 1


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` atomically: a temporary file in the same folder, fsync, then rename.

    A failure (disk full, interruption) leaves any previous file at ``path`` untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "skelcli_version": __version__, **payload}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and verify a checkpoint (``weights_only=True``).

    Raises SkelError for a missing, truncated or corrupt file, a file that is not a skelcli
    checkpoint, or one written by a newer schema version.
    """
    path = Path(path)
    if not path.is_file():
        raise SkelError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise SkelError(f"{path}: checkpoint is truncated or corrupt ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})") from None
    except Exception as exc:  # unpickling errors of foreign files
        raise SkelError(f"{path}: not a loadable skelcli checkpoint ({type(exc).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("schema") != SCHEMA:
        raise SkelError(f"{path}: not a skelcli checkpoint")
    version = int(ckpt.get("schema_version", 0))
    if version > SCHEMA_VERSION:
        raise SkelError(
            f"{path}: checkpoint schema version {version} is newer than this skelcli supports ({SCHEMA_VERSION}); upgrade skelcli"
        )
    return ckpt


@dataclass
class EncoderInfo:
    """What downstream commands need to know about a loaded encoder."""

    method: str
    dataset: str | None
    num_classes: int | None
    epoch: int | None
    input_frames: int
    feature_dim: int
    settings: dict[str, Any]


def load_encoder(path: str | Path, map_location: str | torch.device = "cpu"):
    """Build the downstream :class:`SkeletonEncoder` of a checkpoint and load its weights.

    Returns (encoder in eval mode, EncoderInfo, the raw checkpoint dict).
    """
    from skelcli.models.encoder import EncoderConfig, SkeletonEncoder

    ckpt = load_checkpoint(path, map_location)
    if "encoder" not in ckpt or "encoder_config" not in ckpt:
        raise SkelError(f"{path}: checkpoint holds no encoder (keys: {', '.join(sorted(ckpt))})")
    cfg = EncoderConfig(**ckpt["encoder_config"])
    enc = SkeletonEncoder(cfg)
    missing, unexpected = enc.load_state_dict(ckpt["encoder"], strict=False)
    if missing or unexpected:
        raise SkelError(f"{path}: encoder weights do not match its config (missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})")
    enc.eval()
    data = ckpt.get("data") or {}
    info = EncoderInfo(
        method=str(ckpt.get("method", "unknown")),
        dataset=data.get("dataset"),
        num_classes=data.get("num_classes"),
        epoch=ckpt.get("epoch"),
        input_frames=cfg.num_frames,
        feature_dim=cfg.feature_dim,
        settings=ckpt.get("settings", {}),
    )
    return enc, info, ckpt
