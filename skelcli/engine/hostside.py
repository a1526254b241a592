"""Host-side steps of a training forward, which ``torch.compile`` runs eagerly.

Crops of data-dependent length, draws from seeded CPU generators and numpy bookkeeping (the training
views of MAE / MAMP / GFP, SLiM's views and tube masks) only cut a compiled graph into small pieces and
recompile them per shape. ``@host_side`` marks such a function without importing ``torch._dynamo``
(1.4 s of CPU on an AMD EPYC thread, which processes that never compile -- ``skel probe``, a DataLoader
worker -- do not pay); :func:`compile_model`, the one place that calls ``torch.compile``, first swaps
every marked function for ``torch.compiler.disable(fn)``, so a compiled forward runs it eagerly behind
one graph break. Eager calls go through one dictionary lookup.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

_IMPL: dict[str, Callable[..., Any]] = {}
_EAGER = "_skelcli_eager_under_compile"


def host_side(fn: F) -> F:
    """Mark ``fn`` (a module-level function) to run eagerly inside ``compile_model``'s graphs."""
    key = f"{fn.__module__}.{fn.__qualname__}"
    _IMPL[key] = fn

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        return _IMPL[key](*args, **kwargs)

    return call  # type: ignore[return-value]


def compile_model(model: Any, backend: str) -> Any:
    """``torch.compile(model, backend=backend)`` with every :func:`host_side` function excluded from tracing."""
    import torch

    for key, fn in list(_IMPL.items()):
        if not getattr(fn, _EAGER, False):
            eager = torch.compiler.disable(fn)
            setattr(eager, _EAGER, True)
            _IMPL[key] = eager
    return torch.compile(model, backend=backend)


__all__ = ["compile_model", "host_side"]
