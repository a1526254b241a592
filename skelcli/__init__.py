"""skelcli: self-supervised skeleton-based action recognition from the command line.

Python API (issue 13), loaded on first use so that ``import skelcli`` and ``skel --help`` do not
import torch::

    skelcli.load_encoder(path) -> SkeletonEncoder   # (B, T, V, C) -> (B, D), eval mode
    skelcli.embed(checkpoint, data, split="xsub", part="test") -> {"features", "labels", "names", "settings"}
    skelcli.predict(checkpoint, data=None, raw=None, top_k=5) -> [{"name", "true_label", "top_ids", "top_names", "top_probs"}]

See :mod:`skelcli.api`.
"""

__version__ = "0.1.0"

_API = ("load_encoder", "embed", "predict")

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    """Lazy top-level API: ``skelcli.embed`` imports :mod:`skelcli.api` (and torch) on first access."""
    if name in _API:
        from skelcli import api

        return getattr(api, name)
    raise AttributeError(f"module 'skelcli' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
