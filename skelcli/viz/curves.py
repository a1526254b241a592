"""Training curves of run folders (issue 16 item 1): what ``skel plot RUN [RUN ...]`` draws.

A RUN is a folder written by one of the commands:

* ``skel pretrain``: ``metrics.jsonl`` (see skelcli/engine/rundir.py), one JSON object per line. Rows with
  ``kind="step"`` hold ``epoch``, ``step``, ``loss``, the method's loss terms (GFP ``pred_loss``,
  ``var_loss``, ``cov_loss``; SLiM ``glcl``, ``mfm``, ``koleo``; any other scalar key), ``lr``,
  ``samples_per_s``, ``data_wait_share`` and the method's ``log_metrics()`` statistics. Non-finite numbers
  are ``null`` and named in ``nonfinite``; they are drawn as gaps. ``setup`` rows give ``steps_per_epoch``
  (used by ``x="epoch"``); ``epoch``, ``resume``, ``interrupted`` and ``error`` rows are not drawn in
  figure 1 (a run without any step row falls back to its epoch rows). Blank or unreadable lines are skipped
  and counted in the notes.
* ``skel finetune``: ``metrics.json`` with ``runs[i]["history"]`` rows (``epoch``, ``step``, ``loss``,
  ``test_top1``, optional ``val_top1``); without it (an interrupted run) the ``kind="epoch"`` rows of
  ``repeat-*/metrics.jsonl``.
* ``skel probe --head sgd``: ``metrics.json`` with ``history``, the test top-1 after each epoch.

Figure 1 (``out``): loss, one panel per loss term, learning rate, samples/s, data-wait share and one panel
per monitored statistic, against the step (or the epoch). Figure 2 (``<out stem>_eval<suffix>``), only when
some RUN has an evaluation history: test top-1, val top-1 and the fine-tuning loss per epoch. Runs are
overlaid with one colour each; the legend sits in the first panel of each figure. A y axis is logarithmic
when its values are all positive and span more than 1.5 decades.

Which scalar keys are statistics rather than loss terms is not written in the log; the choice here is by
name (:data:`STAT_PREFIXES`, the keys of ``GFP.log_metrics`` and ``SLiM.log_metrics``): every other
numeric key is treated as a loss term.

matplotlib (the ``viz`` extra) is imported inside :func:`plot_runs` with the Agg backend.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from skelcli.errors import SkelError
from skelcli.paths import atomic_write, check_out_file, read_json_object

#: Keys of a step row that are never a curve.
NOT_CURVES = ("kind", "epoch", "step", "nonfinite")
#: Fixed engine keys, drawn in this order after the loss terms (the loss comes first).
ENGINE_KEYS = ("lr", "samples_per_s", "data_wait_share")
#: Name prefixes of the methods' monitored statistics (GFP target std per level, SLiM teacher
#: temperature and EMA momentum, any entropy).
STAT_PREFIXES = ("target_std", "teacher_", "ema_", "entropy", "feature_std")
#: File formats the figure may be written in, by the suffix of ``out``.
FORMATS = {".png": "png", ".pdf": "pdf", ".svg": "svg"}

TITLES = {
    "loss": "loss", "lr": "learning rate", "samples_per_s": "samples/s", "data_wait_share": "data-wait share",
    "test_top1": "test top-1", "val_top1": "val top-1", "finetune_loss": "fine-tuning loss",
}
LOG_DECADES = 1.5
MAX_COLUMNS = 4
PANEL_LEGEND_MAX = 4  # more legend entries than this go below the panels instead of inside the first one
MAX_GAP_MARKS = 50  # non-finite points marked with a dotted vertical line, per series
PANEL_INCHES = (4.0, 3.0)
DPI = 100


@dataclass
class RunCurves:
    """What one RUN folder holds for the plots."""

    path: Path
    kind: str  # "pretrain" | "finetune" | "probe"
    method: str | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)  # figure 1: step rows, ordered by step
    steps_per_epoch: float | None = None
    histories: list[list[dict[str, Any]]] = field(default_factory=list)  # figure 2: per repeat, per epoch
    notes: list[str] = field(default_factory=list)
    label: str = ""


class Series(NamedTuple):
    """One line: the RUN it comes from (its colour), legend label, x, y (NaN = gap), line style index."""

    run: int
    label: str
    xs: list[float]
    ys: list[float]
    style: int = 0


# ------------------------------------------------------------------------------------------ reading
def read_jsonl(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The JSON-object rows of ``path`` and the number of non-blank lines that were not one."""
    rows: list[dict[str, Any]] = []
    bad = 0
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad += 1
    return rows, bad


def _number(value: Any) -> float | None:
    """A plottable float (None -> NaN, a gap); None for values that are no number at all."""
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _finite(value: Any) -> float | None:
    """``value`` as a float when it is a finite number, else None (steps, epochs, steps per epoch)."""
    v = _number(value)
    return v if v is not None and math.isfinite(v) else None


def _eval_row(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in ("epoch", "step", "loss", "test_top1", "val_top1") if k in row}


def _read_pretrain_log(run: RunCurves, path: Path) -> None:
    rows, bad = read_jsonl(path)
    if bad:
        run.notes.append(f"{path}: {bad} unreadable line(s) skipped")
    by_step: dict[Any, dict[str, Any]] = {}
    epochs: list[dict[str, Any]] = []
    nonfinite = 0
    for row in rows:
        kind = row.get("kind")
        if kind == "setup" and (_finite(row.get("steps_per_epoch")) or 0) > 0:
            run.steps_per_epoch = float(row["steps_per_epoch"])
        elif kind == "step" and _finite(row.get("step")) is not None:
            by_step[float(row["step"])] = row  # a step logged twice (a log written before the resume cut): the last wins
            nonfinite += len(row.get("nonfinite") or [])
        elif kind == "epoch":
            epochs.append(row)
        elif kind == "error":
            run.notes.append(f"{path}: stopped at step {row.get('step')}: {row.get('error', 'error')}")
    if any("test_top1" in r for r in epochs):  # a fine-tuning repeat's log
        run.histories.append([_eval_row(r) for r in epochs])
        return
    if by_step:
        run.rows = [by_step[s] for s in sorted(by_step)]
    elif epochs:
        run.rows = sorted((r for r in epochs if _finite(r.get("step")) is not None), key=lambda r: float(r["step"]))
        run.notes.append(f"{path}: no step rows; the per-epoch means are drawn")
    if nonfinite:
        run.notes.append(f"{path}: {nonfinite} non-finite value(s) drawn as gaps")
    if run.steps_per_epoch is None:
        for r in epochs:  # epoch e (0-based) ends at step (e + 1) * steps_per_epoch
            if (_finite(r.get("step")) or 0) > 0 and isinstance(r.get("epoch"), int) and r["epoch"] >= 0:
                run.steps_per_epoch = float(r["step"]) / (r["epoch"] + 1)
                break


def load_run(path: Path) -> RunCurves:
    """Read one RUN folder (or a metrics file in it); SkelError naming it when it holds no metrics file."""
    path = Path(path)
    if path.is_file() and path.name in ("metrics.jsonl", "metrics.json"):
        path = path.parent
    if not path.is_dir():
        raise SkelError(f"RUN {path}: no such folder")
    jsonl, js = path / "metrics.jsonl", path / "metrics.json"
    repeats = sorted(path.glob("repeat-*/metrics.jsonl"))
    if not (jsonl.is_file() or js.is_file() or repeats):
        raise SkelError(f"RUN {path}: no metrics.jsonl or metrics.json (not a skel pretrain / finetune / probe run folder)")

    run = RunCurves(path=path, kind="pretrain")
    settings = path / "settings.json"
    if settings.is_file():
        try:
            method = read_json_object(settings).get("method")
            if isinstance(method, dict) and isinstance(method.get("name"), str):
                run.method = method["name"]
        except SkelError as exc:
            run.notes.append(f"{exc}; the method name is left out of the label")
    if jsonl.is_file():
        _read_pretrain_log(run, jsonl)
    if js.is_file():
        summary = read_json_object(js)
        if summary.get("protocol") == "finetune" or isinstance(summary.get("runs"), list):
            run.kind = "finetune"
            pretrain = summary.get("pretrain") if isinstance(summary.get("pretrain"), dict) else {}
            run.method = f"finetune of {pretrain.get('method') or 'scratch'}"
            run.histories = [[_eval_row(r) for r in rep.get("history", []) if isinstance(r, dict)]
                             for rep in summary.get("runs", []) if isinstance(rep, dict)]
        elif "history" in summary or "protocol" in summary:
            run.kind = "probe"
            run.method = f"{summary.get('protocol', 'probe')} probe of {summary.get('method') or 'random init'}"
            hist = summary.get("history")
            if isinstance(hist, list):
                run.histories = [[{"epoch": i + 1, "test_top1": v} for i, v in enumerate(hist)]]
    if run.kind == "pretrain" and not run.histories and repeats:  # an interrupted fine-tuning: no metrics.json yet
        run.kind = "finetune"
        for f in repeats:
            _read_pretrain_log(run, f)
    run.histories = [h for h in run.histories if h]
    if not run.rows and not run.histories:
        run.notes.append(f"RUN {path}: no curves in its metrics files (no step rows or evaluation history)")
    return run


def _labels(runs: list[RunCurves], labels: list[str] | None) -> list[str]:
    if labels is not None:
        if len(labels) != len(runs):
            raise SkelError(f"--labels has {len(labels)} name(s) for {len(runs)} RUN(s); give one per RUN")
        return list(labels)
    names = [r.path.resolve().name for r in runs]
    if len(set(names)) < len(names):  # runs/a/gfp and runs/b/gfp: keep the parent folder too
        names = [f"{r.path.resolve().parent.name}/{r.path.resolve().name}" for r in runs]
    return [f"{n} ({r.method})" if r.method else n for n, r in zip(names, runs)]


# ------------------------------------------------------------------------------------------ panels
def _panel_keys(runs: list[RunCurves]) -> list[str]:
    """Figure 1 panels in drawing order: loss, loss terms, lr, samples/s, data wait, statistics."""
    seen: list[str] = []
    for run in runs:
        for row in run.rows:
            for k, v in row.items():
                if k not in NOT_CURVES and k not in seen and _number(v) is not None:
                    seen.append(k)
    stats = [k for k in seen if k.startswith(STAT_PREFIXES)]
    terms = [k for k in seen if k != "loss" and k not in ENGINE_KEYS and k not in stats]
    return [k for k in ("loss",) if k in seen] + terms + [k for k in ENGINE_KEYS if k in seen] + stats


def _x_of(run: RunCurves, row: dict[str, Any], x: str) -> float | None:
    step = _finite(row.get("step"))
    if step is None:
        return None
    if x == "step":
        return step
    if run.steps_per_epoch:
        return step / run.steps_per_epoch
    epoch = _finite(row.get("epoch"))
    return None if epoch is None else epoch + 1


def _series(run: int, label: str, points: list[tuple[float, float]], style: int = 0) -> Series | None:
    """A Series of ``points`` (x, y); None when no y is finite (nothing would show)."""
    if not any(math.isfinite(y) for _, y in points):
        return None
    return Series(run, label, [p[0] for p in points], [p[1] for p in points], style)


def _curves_panels(runs: list[RunCurves], x: str) -> dict[str, list[Series]]:
    panels: dict[str, list[Series]] = {}
    for key in _panel_keys(runs):
        panels[key] = []
        for i, run in enumerate(runs):
            points = []
            for row in run.rows:
                if key not in row:
                    continue
                xv, yv = _x_of(run, row, x), _number(row[key])
                if xv is not None and yv is not None:
                    points.append((xv, yv))
            s = _series(i, run.label, points, style=i // 10)
            if s is not None:
                panels[key].append(s)
    return {k: v for k, v in panels.items() if v}


def _eval_panels(runs: list[RunCurves]) -> dict[str, list[Series]]:
    """Figure 2: test top-1, val top-1, fine-tuning loss per epoch; repeats of one RUN share its colour."""
    panels: dict[str, list[Series]] = {"test_top1": [], "val_top1": [], "finetune_loss": []}
    for i, run in enumerate(runs):
        for r, hist in enumerate(run.histories):
            label = run.label if len(run.histories) == 1 else f"{run.label} r{r}"
            for panel, key in (("test_top1", "test_top1"), ("val_top1", "val_top1"), ("finetune_loss", "loss")):
                points = [(_finite(row.get("epoch")), _number(row.get(key))) for row in hist
                          if _finite(row.get("epoch")) is not None and key in row and _number(row[key]) is not None]
                s = _series(i, label, points, style=r)
                if s is not None:
                    panels[panel].append(s)
    return {k: v for k, v in panels.items() if v}


def _wants_log(series: list[Series]) -> bool:
    values = [y for s in series for y in s.ys if math.isfinite(y)]
    return bool(values) and min(values) > 0 and max(values) / min(values) > 10 ** LOG_DECADES


def _title(key: str) -> str:
    if key in TITLES:
        return TITLES[key]
    return f"{key} (statistic)" if key.startswith(STAT_PREFIXES) else f"{key} (loss term)"


def _draw(plt, panels: dict[str, list[Series]], xlabel: str, title: str, path: Path, integer_x: bool) -> dict[str, Any]:
    """One figure: a grid of panels, one colour per RUN, the legend in the first panel; written atomically."""
    from matplotlib.ticker import MaxNLocator

    keys = list(panels)
    ncols = min(MAX_COLUMNS, len(keys))
    nrows = -(-len(keys) // ncols)
    size = (max(6.0, PANEL_INCHES[0] * ncols), PANEL_INCHES[1] * nrows + 0.4)  # one panel alone: 6 inches wide
    fig, axes = plt.subplots(nrows, ncols, figsize=size, layout="constrained", squeeze=False)
    colours = plt.get_cmap("tab10").colors
    styles = ("-", "--", ":", "-.")
    info: dict[str, Any] = {"path": str(path), "panels": keys, "series": {}, "legends": {}, "log_scale": [],
                            "size": [round(size[0] * DPI), round(size[1] * DPI)]}
    for n, key in enumerate(keys):
        ax = axes[n // ncols][n % ncols]
        for s in panels[key]:
            colour = colours[s.run % len(colours)]
            ax.plot(s.xs, s.ys, color=colour, linestyle=styles[s.style % len(styles)],
                    linewidth=1.3, marker="o" if len(s.xs) <= 30 else None, markersize=3, label=s.label)
            gaps = [xv for xv, yv in zip(s.xs, s.ys) if math.isnan(yv)]  # null in the log: non-finite
            for xv in gaps[:MAX_GAP_MARKS]:
                ax.axvline(xv, color=colour, linestyle=":", linewidth=1.0, alpha=0.6)
        info["series"][key] = [s.label for s in panels[key]]
        if _wants_log(panels[key]):
            ax.set_yscale("log")
            info["log_scale"].append(key)
        ax.set_title(_title(key), fontsize=10)
        if integer_x:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(xlabel, fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if key in ("test_top1", "val_top1"):
            ax.set_ylim(-0.02, 1.02)
    for n in range(len(keys), nrows * ncols):
        axes[n // ncols][n % ncols].set_visible(False)
    handles, names = axes[0][0].get_legend_handles_labels()
    if len(names) <= PANEL_LEGEND_MAX:
        legend = axes[0][0].legend(fontsize=7, loc="best", framealpha=0.8)
        info["legend_in"] = "panel"
    else:
        legend = fig.legend(handles, names, loc="outside lower center", ncols=min(4, len(names)), fontsize=8, frameon=False)
        info["legend_in"] = "figure"
    info["legends"][keys[0]] = [t.get_text() for t in legend.get_texts()]
    fig.suptitle(title, fontsize=11)
    fmt = FORMATS[path.suffix.lower()]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda fh: fig.savefig(fh, format=fmt, dpi=DPI))
    plt.close(fig)
    return info


# ------------------------------------------------------------------------------------------ entry point
def eval_path(out: Path) -> Path:
    """Where figure 2 goes: ``<out stem>_eval<suffix>`` next to ``out``."""
    out = Path(out)
    return out.with_name(f"{out.stem}_eval{out.suffix}")


def plot_runs(runs: list[Path], out: Path, labels: list[str] | None = None, x: str = "step") -> dict[str, Any]:
    """Draw the training curves of ``runs`` into ``out`` (and the evaluation curves into :func:`eval_path`).

    ``labels``: one legend label per run (default: folder name and method). ``x``: "step" or "epoch"
    (step / steps_per_epoch from the run's setup row) for figure 1. Returns ``paths`` (files written),
    ``panels`` (panel keys of both figures, e.g. "loss", "pred_loss", "lr", "target_std_l1", "test_top1"),
    ``series`` (panel -> the labels of its lines), ``legends`` (panel -> the labels its legend shows),
    ``log_scale`` (panels with a log y axis), ``figures`` (per figure: path, panels, size in pixels),
    ``runs`` (path, label, kind, method, rows, histories) and ``notes`` (gaps, skipped lines, empty runs).
    """
    if x not in ("step", "epoch"):
        raise SkelError(f"--x takes step or epoch, got {x!r}")
    out = Path(out)
    if out.suffix.lower() not in FORMATS:
        raise SkelError(f"--out {out}: give a file name ending in {', '.join(FORMATS)}")
    check_out_file(out, "--out")
    if not runs:
        raise SkelError("give at least one RUN folder")
    loaded = [load_run(Path(p)) for p in runs]
    for run, label in zip(loaded, _labels(loaded, labels)):
        run.label = label
    curves, evals = _curves_panels(loaded, x), _eval_panels(loaded)
    if not curves and not evals:
        raise SkelError(f"nothing to plot: no step rows or evaluation histories in {', '.join(str(r.path) for r in loaded)}")

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SkelError("skel plot needs matplotlib: pip install 'skelcli[viz]' (or pip install matplotlib)") from None

    result: dict[str, Any] = {"paths": [], "panels": [], "series": {}, "legends": {}, "log_scale": [], "figures": {},
                              "notes": [n for r in loaded for n in r.notes]}
    figures = []
    if curves:
        n = sum(1 for r in loaded if r.rows)
        figures.append(("curves", curves, x, f"pretraining curves ({n} run{'s' if n > 1 else ''}, x = {x})", out))
    if evals:
        n = sum(1 for r in loaded if r.histories)
        ev = eval_path(out)
        check_out_file(ev, "--out (evaluation figure)")
        figures.append(("eval", evals, "epoch", f"evaluation per epoch ({n} run{'s' if n > 1 else ''})", ev))
    elif eval_path(out).exists():
        result["notes"].append(f"{eval_path(out)} is from an earlier plot (no RUN has an evaluation history); left as it is")
    if not curves:
        result["notes"].append("no RUN has pretraining step rows: only the evaluation figure is drawn")
    for name, panels, xlabel, title, path in figures:
        info = _draw(plt, panels, xlabel, title, path, integer_x=xlabel == "step" or name == "eval")
        result["figures"][name] = info
        result["paths"].append(info["path"])
        result["panels"] += info["panels"]
        result["series"].update(info["series"])
        result["legends"].update(info["legends"])
        result["log_scale"] += info["log_scale"]
    result["runs"] = [{"path": str(r.path), "label": r.label, "kind": r.kind, "method": r.method, "rows": len(r.rows),
                       "histories": len(r.histories)} for r in loaded]
    return result


__all__ = ["plot_runs", "load_run", "read_jsonl", "eval_path", "RunCurves"]
