"""Pretraining methods. Every module in this package registers its method on import.

Each method module defines a settings class (pydantic, ``name: Literal["<method>"]``,
``encoder: EncoderConfig`` and ``preset(preset, dataset) -> dict``) and a registered
:class:`~skelcli.methods.base.PretrainMethod` subclass with ``settings_cls`` pointing to it.
"""

from __future__ import annotations

import importlib
import pkgutil

from skelcli.methods.base import (  # noqa: F401
    ClipBatch,
    DatasetInfo,
    PretrainMethod,
    available_methods,
    get_method,
    register,
)

for _mod in sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in {"base"} and not m.name.startswith("_")):
    importlib.import_module(f"{__name__}.{_mod}")
