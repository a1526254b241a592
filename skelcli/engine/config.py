"""Pretraining settings: one strict pydantic model and its resolution from presets, TOML and the CLI.

Resolution order (later wins): model defaults (the paper recipe) < named preset (``paper`` or
``small``, resolved per dataset by the method's ``preset()``) < ``--config FILE.toml`` <
``--set section.field=value`` overrides < explicit CLI flags (``--epochs``, ``--batch-size``, ...).

``PretrainSettings.method`` is a discriminated union (key ``name``) over the ``settings_cls`` of every
registered method, built from the registry after importing :mod:`skelcli.methods`, so a new method
file plugs in without edits here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Union

from pydantic import Field, ValidationError

import skelcli.methods  # noqa: F401  (registers every method)
from skelcli.errors import SkelError
from skelcli.methods.base import _REGISTRY
from skelcli.settings import (
    DataSettings, OptimSettings, RuntimeSettings, StrictModel, check_sections, deep_merge, load_toml, merge_overrides, parse_override,
)

PRESETS = ("paper", "small")


def _method_union() -> Any:
    classes = tuple(_REGISTRY[name].settings_cls for name in sorted(_REGISTRY))
    if len(classes) == 1:
        return classes[0]
    return Annotated[Union[classes], Field(discriminator="name")]  # type: ignore[valid-type]


MethodSettings = _method_union()


class PretrainSettings(StrictModel):
    """Everything a pretraining run needs; written to ``settings.json`` and into every checkpoint."""

    method: MethodSettings  # type: ignore[valid-type]
    data: DataSettings = DataSettings()
    optim: OptimSettings = OptimSettings()
    runtime: RuntimeSettings = RuntimeSettings()


# Explicit CLI flags -> (section, field).
CLI_FIELDS: dict[str, tuple[str, str]] = {
    "epochs": ("optim", "epochs"),
    "lr": ("optim", "lr"),
    "batch_size": ("data", "batch_size"),
    "limit": ("data", "limit"),
    "device": ("runtime", "device"),
    "precision": ("runtime", "precision"),
    "compile": ("runtime", "compile"),
    "seed": ("runtime", "seed"),
    "stop_on_collapse": ("runtime", "stop_on_collapse"),
}


def _one_line(exc: ValidationError, where: str) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
    return f"invalid settings{where}: " + "; ".join(parts)


def dataset_of(data_path: Path | None) -> str | None:
    """The dataset name recorded in a prepared HDF5 file (None without a file)."""
    if data_path is None:
        return None
    from skelcli.data.store import open_info

    return open_info(Path(data_path)).dataset


def resolve_pretrain_settings(
    method: str | None,
    preset: str | None = "paper",
    dataset: str | None = None,
    config_file: Path | None = None,
    overrides: list[str] | None = None,
    data_path: Path | None = None,
    split: str | None = None,
    **cli_fields: Any,
) -> PretrainSettings:
    """Build validated :class:`PretrainSettings` (see the module docstring for the order).

    ``method`` may be None when the TOML file names it (``[method] name = "mamp"``). ``dataset``
    (for per-dataset defaults such as MAMP's tau) is read from ``data_path`` when not given.
    Errors are one-line :class:`SkelError` s that name the offending field.
    """
    toml: dict[str, Any] = load_toml(Path(config_file)) if config_file is not None else {}
    # `--set optim=3` / `method = [1]` would silently replace a whole section: refuse it, naming the
    # section (top level here, before the method name is looked up; nested sections below).
    sections = {name: {} for name in PretrainSettings.model_fields}  # method, data, optim, runtime
    check_sections(sections, toml, str(config_file))
    for text in overrides or []:
        check_sections(sections, parse_override(text), f"--set {text}")
    over = merge_overrides({}, overrides)
    name = method or over.get("method", {}).get("name") or toml.get("method", {}).get("name")
    if name is None:
        raise SkelError("no method given: pass --method or set [method] name in the settings file")
    if name not in _REGISTRY:
        raise SkelError(f"unknown method {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    preset = preset or "paper"
    if preset not in PRESETS:
        raise SkelError(f"unknown preset {preset!r}; available: {', '.join(PRESETS)}")
    path = data_path if data_path is not None else toml.get("data", {}).get("path")
    if dataset is None:
        dataset = dataset_of(Path(path)) if path is not None else "ntu60"

    # Start from the method's own defaults so that a partial nested section (say, a preset or a TOML
    # file that sets only [method.encoder] depth) keeps that method's other encoder defaults.
    layered: dict[str, Any] = {"method": _REGISTRY[name].settings_cls().model_dump(mode="json")}
    layered = deep_merge(layered, _REGISTRY[name].settings_cls.preset(preset, dataset))
    layered["method"]["name"] = name
    topo = topology_of(Path(path)) if path is not None else None
    if topo is not None:  # the preset's token grid follows the data's layout: one token column per joint
        layered["method"]["encoder"].update(num_joints=topo.num_joints, in_chans=topo.channels)
    check_sections(layered, toml, str(config_file))  # nested sections too (method.encoder = 3)
    layered = deep_merge(layered, toml)
    for text in overrides or []:
        check_sections(layered, parse_override(text), f"--set {text}")
    layered = deep_merge(layered, over)
    explicit: dict[str, Any] = {"method": {"name": name}}
    if data_path is not None:
        explicit.setdefault("data", {})["path"] = str(Path(data_path).resolve())
    if split is not None:
        explicit.setdefault("data", {})["split"] = split
    for key, value in cli_fields.items():
        if key not in CLI_FIELDS:
            raise TypeError(f"unknown CLI field {key!r}")
        if value is not None:
            section, field = CLI_FIELDS[key]
            explicit.setdefault(section, {})[field] = value
    layered = deep_merge(layered, explicit)
    where = f" in {config_file}" if config_file is not None else ""
    try:
        settings = PretrainSettings.model_validate(layered)
    except ValidationError as exc:
        raise SkelError(_one_line(exc, where)) from None
    if settings.data.path is not None:
        settings.data.path = Path(settings.data.path).resolve()
    if topo is not None:
        check_encoder_fits(settings.method.encoder, topo, str(path))
    return settings


def topology_of(data_path: Path | None):
    """The topology recorded in a prepared HDF5 file (None without a file or when it cannot be read:
    the data loader reports that file's problem itself)."""
    if data_path is None or not Path(data_path).is_file():
        return None
    from skelcli.data.store import read_topology

    try:
        return read_topology(Path(data_path))
    except SkelError:
        return None


def check_encoder_fits(encoder, topology, data: str, prefix: str = "method.encoder") -> None:
    """SkelError naming the field when an encoder's joint count or input channels differ from the data's
    topology (V joints, C = dims [+ confidence] values per joint)."""
    for field, want in (("num_joints", topology.num_joints), ("in_chans", topology.channels)):
        have = getattr(encoder, field)
        if have != want:
            raise SkelError(f"{prefix}.{field} is {have}, but {data} holds the {topology.describe()} layout "
                            f"({field} {want}): an encoder only reads data of the layout it was built for")
