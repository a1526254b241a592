"""TensorBoard mirror of a run's log (issue 16 item 5; optional extra ``[viz]``).

``metrics.jsonl`` stays the source of truth: :class:`TensorBoardLog` only copies what the run logs.
Each ``step`` / ``epoch`` row becomes scalars ``<kind>/<key>`` at the row's ``step`` (non-numeric and
null values skipped), and :meth:`TensorBoardLog.add_png` adds a finished figure (curves, confusion
matrix) as an image. Event files go to ``RUN/tb/``: ``tensorboard --logdir RUN/tb``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from skelcli.errors import SkelError

#: Row keys that are positions, not measurements.
_NOT_SCALARS = {"kind", "step", "epoch", "nonfinite"}


def require_tensorboard() -> None:
    """SkelError naming the extra when tensorboard is not installed (checked before a run starts)."""
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        raise SkelError("--tensorboard needs tensorboard: pip install 'skelcli[viz]' (or pip install tensorboard)") from None


class TensorBoardLog:
    """A callable that writes each logged row to TensorBoard (a :class:`~skelcli.engine.rundir.RunDir` mirror).

    The training code receives the class as a factory (``tensorboard=TensorBoardLog``), builds one per run
    folder on the writing process only, and calls :meth:`finish` at the end; so the engine never imports
    this layer.
    """

    def __init__(self, folder: str | Path) -> None:
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.folder = Path(folder)
        self.writer = SummaryWriter(log_dir=str(self.folder))
        self.notes: list[str] = []

    def __call__(self, record: dict[str, Any]) -> None:
        kind, step = record.get("kind"), record.get("step")
        if kind not in ("step", "epoch") or not isinstance(step, int):
            return
        for key, value in record.items():
            if key in _NOT_SCALARS or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                self.writer.add_scalar(f"{kind}/{key}", value, global_step=step)

    def add_png(self, tag: str, path: str | Path, step: int = 0) -> None:
        """Add the PNG at ``path`` as image ``tag`` (RGB, channels last)."""
        import numpy as np
        from matplotlib import image

        pixels = image.imread(str(path))  # float in [0, 1], (H, W, 3|4)
        self.writer.add_image(tag, np.asarray(pixels[..., :3]), global_step=step, dataformats="HWC")

    def finish(self, curves_of: str | Path | None = None, pngs: list[str | Path] = (), step: int = 0) -> None:
        """Add the figures, then close: ``curves_of`` = a run folder whose curves are drawn into
        ``<folder>/curves.png`` first (:func:`skelcli.viz.curves.plot_runs`); ``pngs`` = finished images."""
        try:
            if curves_of is not None:
                from skelcli.viz.curves import plot_runs

                try:
                    drawn = plot_runs([Path(curves_of)], Path(curves_of) / "curves.png")
                except SkelError as exc:  # e.g. a run stopped before its first logged step
                    self.notes.append(f"no curves for TensorBoard: {exc}")
                else:
                    for i, path in enumerate(drawn["paths"]):
                        self.add_png("curves" if i == 0 else f"curves_{i}", path, step)
            for path in pngs:
                self.add_png(Path(path).stem, path, step)
        finally:
            self.writer.flush()
            self.writer.close()


def tensorboard_writer() -> type[TensorBoardLog]:
    """The factory that ``--tensorboard`` hands to pretrain / finetune, checked before any work."""
    require_tensorboard()
    return TensorBoardLog


__all__ = ["TensorBoardLog", "require_tensorboard", "tensorboard_writer"]
