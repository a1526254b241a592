"""Typed settings shared by the commands: strict pydantic models, TOML files, CLI overrides.

Resolution order for every command: defaults (the paper recipe) < named preset < ``--config FILE.toml``
< ``--set section.field=value`` overrides. Unknown fields fail at parse time with the field name.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from skelcli.errors import SkelError


class StrictModel(BaseModel):
    """Base for every settings model: unknown fields are errors, assignments are validated, and
    floats must be finite (``lr = inf`` or ``nan`` fails naming the field)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class OptimSettings(StrictModel):
    """AdamW with a per-iteration linear warmup + cosine schedule (spec/mamp-and-data.md B)."""

    lr: float = Field(1e-3, gt=0, description="peak learning rate (absolute, not scaled by batch)")
    min_lr: float = Field(5e-4, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = Field(0.05, ge=0)
    weight_decay_end: float | None = Field(None, ge=0, description="cosine weight-decay schedule end (SLiM); None = constant")
    warmup_epochs: float = Field(20, ge=0)
    epochs: int = Field(400, ge=1)
    grad_clip: float | None = Field(None, gt=0, description="max global grad norm; None = no clipping")


class DataSettings(StrictModel):
    """Which prepared file and split to train on, and the MAMP feeder's augmentation (spec E)."""

    path: Path | None = None
    split: str = "xsub"
    batch_size: int = Field(128, ge=1)
    crop_min: float = Field(0.5, gt=0, le=1)
    crop_max: float = Field(1.0, gt=0, le=1)
    min_crop_frames: int = Field(64, ge=1)
    rotation: float = Field(0.3, ge=0, description="max |angle| in radians of the random 3-axis rotation")
    test_crop: float = Field(0.95, gt=0, le=1)
    memory_budget_gb: float = Field(8.0, gt=0, description="read lazily per worker above this size")
    num_workers: int = Field(
        0, ge=0, description="reader processes per training process, each with its own HDF5 handle (0: one prefetch thread)"
    )
    shared_cache: bool = Field(
        False, description="map a decompressed copy of the split (written once) instead of reading it: the DDP ranks of a machine share one copy"
    )
    cache_dir: Path | None = Field(None, description="folder of the shared cache (default: next to the prepared file)")

    @field_validator("cache_dir")
    @classmethod
    def _cache_dir_is_a_folder(cls, value: Path | None) -> Path | None:
        if value is not None and value.exists() and not value.is_dir():
            raise ValueError(f"{value} is a file, not a folder")
        return value
    limit: int | None = Field(None, ge=1, description="use only the first N training clips (debugging)")


Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "bf16"]
CompileBackend = Literal["inductor", "aot_eager", "cudagraphs"]


class RuntimeSettings(StrictModel):
    """Where and how the training loop runs."""

    device: Device = "auto"
    precision: Precision = Field(
        "auto", description="auto = fp32 on CPU, the method's recipe precision on CUDA (engine.dist.resolve_precision); fp32; bf16 autocast"
    )
    compile: bool = False
    compile_backend: CompileBackend = Field(
        "inductor", description="torch.compile backend: inductor (generated kernels); aot_eager (graph capture and AOTAutograd "
        "without code generation: to tell a tracing failure from a kernel one); cudagraphs"
    )
    seed: int = 0
    checkpoint_every: int = Field(20, ge=1, description="numbered checkpoint every N epochs (and last.pt with it)")
    save_interval_s: float = Field(
        30.0, ge=0, description="write last.pt at an epoch end once this many seconds have passed since the previous write "
        "(0 = every epoch); always with a numbered checkpoint, at the end and on SIGINT/SIGTERM"
    )
    log_every: int = Field(10, ge=1, description="write a metrics line every N steps")
    deterministic: bool = False
    max_per_device_batch: int | None = Field(
        None, ge=1, description="largest micro-batch per process; above it gradients are accumulated (global batch unchanged)"
    )
    collapse_patience: int = Field(
        3, ge=1, description="collapse alarm: a method's collapse indicator below its threshold for this many log intervals in a row"
    )
    collapse_thresholds: dict[str, float] = Field(
        default_factory=dict, description="override a method's collapse thresholds by metric name, e.g. {target_std_l1 = 0.2}; 0 = off"
    )
    stop_on_collapse: bool = Field(False, description="end the run at the collapse alarm, keeping the checkpoints written before it")


def load_toml(path: Path) -> dict[str, Any]:
    """Read a TOML settings file; a missing or malformed file is a one-line SkelError."""
    path = Path(path)
    if not path.is_file():
        raise SkelError(f"settings file not found: {path}")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise SkelError(f"{path}: not valid TOML ({exc})") from None


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``update`` into a copy of ``base`` (nested dicts merge, values replace)."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> dict[str, Any]:
    """``"optim.lr=3e-4"`` -> ``{"optim": {"lr": 3e-4}}``; the value is read as TOML/JSON, else a string."""
    if "=" not in text:
        raise SkelError(f"override {text!r} is not of the form section.field=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or not all(part.strip() for part in key.split(".")):
        raise SkelError(f"override {text!r}: the key must be section.field (e.g. optim.lr=3e-4)")
    try:
        value: Any = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
    node: dict[str, Any] = {}
    out = node
    parts = key.split(".")
    for part in parts[:-1]:
        node[part] = {}
        node = node[part]
    node[parts[-1]] = value
    return out


def check_sections(base: dict[str, Any], update: dict[str, Any], where: str, prefix: str = "") -> None:
    """SkelError when ``update`` would replace a section of ``base`` (a table, such as ``method`` or
    ``method.encoder``) by a plain value, e.g. ``--set optim=3`` or ``method = [1]`` in a TOML file."""
    for key, value in update.items():
        name = f"{prefix}{key}"
        current = base.get(key)
        if isinstance(current, dict):
            if not isinstance(value, dict):
                raise SkelError(f"{where}: {name!r} is a settings section, not a value (got {value!r}); "
                                f"set one of its fields instead, e.g. {name}.<field>=...")
            check_sections(current, value, where, prefix=f"{name}.")


def merge_overrides(base: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    for text in overrides or []:
        base = deep_merge(base, parse_override(text))
    return base


def to_jsonable(model: BaseModel) -> dict[str, Any]:
    """Settings as plain JSON types (for run folders and checkpoints loaded with weights_only=True)."""
    return json.loads(model.model_dump_json())
