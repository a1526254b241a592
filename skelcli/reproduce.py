"""``skel reproduce PAPER``: a paper's whole chain, stage by stage, with our numbers next to the paper's.

Stages (each writes ``DIR/stages/<stage>.json``):

1. ``pretrain``: the paper's method with ``--preset`` (``DIR/pretrain``; an interrupted run resumes from
   its last checkpoint through the pretrain engine's ``resume="auto"``);
2. one stage per protocol of the selected tables, each with the paper's own evaluation recipe:
   ``linear`` (probe), ``retrieval``, ``finetune``, ``semi-0.01`` / ``semi-0.1`` (fine-tuning on a label
   fraction), ``transfer`` (fine-tuning on ``--transfer-data``). Their run folders are ``DIR/<stage>``.

With ``resume=True`` a stage whose record says ``done`` and whose settings (recipe, data file and
checkpoint fingerprints, split, seed) match is skipped; any other stage runs (fine-tuning continues its
repeats from their ``last.pt``). A failed evaluation stage is recorded and the chain goes on; the report
says why the cell is empty. At the end ``DIR/report.json`` and ``DIR/report.md`` hold, per cell, our
number, the paper's (:mod:`skelcli.papers`), the recipe, the machine and the wall time per stage.

``preset="small"`` is a CPU smoke run: the small pretraining preset and scaled-down evaluation
recipes (:data:`SMALL_RECIPES`); its report says that its numbers are not comparable with the paper's.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from skelcli.errors import SkelError
from skelcli.papers import DATASET_NAMES, PAPERS, TABLES, lookup, paper_text

PRESETS = ("paper", "small")

#: The method each paper pretrains with.
METHOD_OF = {"mamp": "mamp", "gfp": "gfp", "slim": "slim"}

#: Evaluation recipe names per (paper, protocol): SLiM has its own; GFP evaluates on MAMP's code base
#: (spec/gfp.md 5.1), and MAMP has no retrieval recipe, so MAMP and GFP take the CMD / ISC one (``skel``).
RECIPE_OF = {
    "mamp": {"linear": "mamp", "retrieval": "skel", "finetune": "mamp"},
    "gfp": {"linear": "mamp", "retrieval": "skel", "finetune": "mamp"},
    "slim": {"linear": "slim", "retrieval": "slim", "finetune": "slim"},
}

#: ``--preset small``: the scaled-down evaluation recipes, as ``--set`` overrides of the probe / retrieval
#: recipes and as fine-tuning settings (on top of ``FinetuneSettings.preset("small")``).
SMALL_RECIPES: dict[str, dict[str, list[str]]] = {
    "mamp": {"linear": ["epochs=3"], "retrieval": []},
    "gfp": {"linear": ["epochs=3"], "retrieval": []},
    "slim": {"linear": ["iterations=100", "eval_every=50"], "retrieval": []},
}
SMALL_FINETUNE_EPOCHS = 3
#: SLiM's fine-tuning recipe at ``--preset small``: 40 iterations of 16 clips (the lrs follow the official
#: batch scaling), evaluated every 20 (about 5 s per label fraction on one CPU core with the small encoder).
SMALL_SLIM_FINETUNE = {"iterations": 40, "eval_every": 20, "batch_size": 16}

SEMI_FRACTIONS = (0.01, 0.1)
#: Repeats of a semi-supervised setting: MAMP's script_semi.sh runs each 5 times; SLiM's count is unknown.
SEMI_REPEATS = {"mamp": 5, "gfp": 5, "slim": 1}
#: Subset seed: MAMP's repeats reuse seed 0 (spec/mamp-and-data.md C.3); SLiM seeds 42 (spec/slim.md 5.3).
SEMI_SUBSET_SEED = {"mamp": 0, "gfp": 0, "slim": 42}

SMOKE_NOTICE = ("SMOKE RUN (--preset small): the CPU-sized pretraining preset and scaled-down evaluation recipes check "
                "that the chain runs end to end. These numbers are NOT comparable with the paper's.")
PAPER_NOTICE = ("Paper preset: the paper's pretraining recipe and evaluation recipes. The numbers are comparable with "
                "the paper's only on the full official dataset prepared with `skel prepare`; paper values marked "
                "(unverified) were not checked against the paper itself.")


# --------------------------------------------------------------------------------------------- helpers
def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_info(device: str) -> dict[str, Any]:
    """CPU model, core count, GPU name (None without CUDA), torch / CUDA / Python versions, the device used."""
    import torch

    from skelcli import __version__

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": _cpu_model(), "cpu_count": os.cpu_count(), "gpu": gpu, "torch": torch.__version__,
            "cuda": torch.version.cuda, "python": platform.python_version(), "platform": platform.platform(),
            "skelcli": __version__, "device": device}


def _resolve_device(device: str) -> str:
    if device not in ("auto", "cpu", "cuda"):
        raise SkelError(f"unknown --device {device!r}; available: auto, cpu, cuda")
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def parse_tables(values: list[str] | None) -> list[str] | None:
    """``--table`` values (repeatable, comma-separated allowed) in :data:`TABLES` order; None = the default."""
    if not values:
        return None
    names = [v.strip() for text in values for v in text.split(",") if v.strip()]
    for name in names:
        if name not in TABLES:
            raise SkelError(f"unknown --table {name!r}; available: {', '.join(TABLES)}")
    return [t for t in TABLES if t in names]


def parse_sets(values: list[str] | None) -> dict[str, list[str]]:
    """``--set STAGE.field=value`` -> {"pretrain": ["optim.epochs=2"], "linear": ["iterations=10"], ...}.
    Stages: pretrain, linear, retrieval, finetune (also applied to semi and transfer), semi, transfer."""
    out: dict[str, list[str]] = {}
    allowed = ("pretrain", "linear", "retrieval", "finetune", "semi", "transfer")
    for text in values or []:
        head, sep, rest = text.partition(".")
        if not sep or "=" not in rest or head not in allowed:
            raise SkelError(f"--set takes STAGE.field=value with STAGE one of {', '.join(allowed)} "
                            f"(e.g. --set linear.iterations=200), got {text!r}")
        out.setdefault(head, []).append(rest)
    return out


def _check_paper(paper: str) -> None:
    if paper not in PAPERS:
        raise SkelError(f"unknown paper {paper!r}; available: {', '.join(PAPERS)}")


# --------------------------------------------------------------------------------------------- plan
@dataclass
class CellPlan:
    table: str
    dataset: str
    split: str
    variant: str
    stage: str | None  # None: not run, ``reason`` says why
    reason: str = ""


def plan_cells(paper: str, dataset: str, split: str, tables: list[str] | None, transfer: tuple[str, str] | None) -> tuple[list[str], list[CellPlan]]:
    """(tables, cells) for a data file of ``dataset``: ``tables`` None = every table the paper reports that
    the file supports (semi needs NTU-60). ``transfer``: (dataset, split) of ``--transfer-data`` or None."""
    explicit = tables is not None
    chosen = list(tables) if explicit else list(PAPERS[paper].tables)
    if "semi" in chosen and dataset != "ntu60":
        if explicit:
            raise SkelError(f"--table semi needs an NTU-60 file (the papers' semi-supervised tables are NTU-60 only); "
                            f"the data file holds {dataset}")
        chosen.remove("semi")
    cells: list[CellPlan] = []
    for table in chosen:
        if table in ("linear", "retrieval", "finetune"):
            cells.append(CellPlan(table, dataset, split, "", table))
        elif table == "semi":
            cells += [CellPlan("semi", dataset, split, f"{f:g}", f"semi-{f:g}") for f in SEMI_FRACTIONS]
        elif table == "transfer":
            if transfer is None:
                cells.append(CellPlan("transfer", "pku-mmd-v2", "xsub", f"from {dataset}", None, "not run (no --transfer-data)"))
            else:
                cells.append(CellPlan("transfer", transfer[0], transfer[1], f"from {dataset}", "transfer"))
    return chosen, cells


# --------------------------------------------------------------------------------------------- stages
class StageStore:
    """``DIR/stages/<name>.json``: one record per stage (status, settings, result, times)."""

    def __init__(self, out: Path) -> None:
        self.dir = Path(out) / "stages"

    def path(self, name: str) -> Path:
        return self.dir / f"{name}.json"

    def read(self, name: str) -> dict[str, Any] | None:
        p = self.path(name)
        if not p.is_file():
            return None
        try:
            data = json.loads(p.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def write(self, name: str, record: dict[str, Any]) -> None:
        from skelcli.paths import atomic_write

        self.dir.mkdir(parents=True, exist_ok=True)
        text = json.dumps(record, indent=2, default=str) + "\n"
        atomic_write(self.path(name), lambda f: f.write(text.encode()))

    def done(self, name: str, settings: dict[str, Any]) -> dict[str, Any] | None:
        """The record of a finished stage run with exactly these settings, else None."""
        rec = self.read(name)
        if rec is None or rec.get("status") != "done":
            return None
        return rec if json.loads(json.dumps(settings, default=str)) == rec.get("settings") else None

    def any(self) -> bool:
        return self.dir.is_dir() and any(self.dir.glob("*.json"))

    def clear(self) -> None:
        for p in self.dir.glob("*.json") if self.dir.is_dir() else []:
            p.unlink()


class _Interrupted(Exception):
    def __init__(self, signal_name: str, where: str) -> None:
        super().__init__(where)
        self.signal_name = signal_name
        self.where = where


def _fingerprint(path: Path | str) -> dict[str, Any]:
    p = Path(path).resolve()
    st = p.stat()
    return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


# --------------------------------------------------------------------------------------------- the run
@dataclass
class _Ctx:
    paper: str
    preset: str
    data: Path
    split: str
    out: Path
    device: str
    seed: int
    resume: bool
    force: bool
    sets: dict[str, list[str]]
    log: Callable[[str], None]
    console: Any
    progress: bool | str
    store: StageStore
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)  # this invocation's view of each stage


def _run_stage(ctx: _Ctx, name: str, settings: dict[str, Any], body: Callable[[], dict[str, Any]], *, catch: bool = True) -> dict[str, Any] | None:
    """Skip ``name`` when resuming and its record matches ``settings``; else run ``body`` and record it.
    Returns the stage's result (None when it failed)."""
    if ctx.resume:
        rec = ctx.store.done(name, settings)
        if rec is not None:
            ctx.log(f"[bold cyan]==>[/] {name}: done earlier ({rec['finished_at']}), skipped")
            ctx.stages[name] = {**rec, "this_run": "skipped"}
            return rec["result"]
    ctx.log(f"[bold cyan]==>[/] {name}")
    started, t = _now(), time.perf_counter()
    record: dict[str, Any] = {"stage": name, "settings": settings, "started_at": started}
    try:
        result = body()
    except _Interrupted:
        raise
    except Exception as exc:  # noqa: BLE001 - one failed protocol must not lose the others
        if not catch:
            raise
        msg = str(exc) if isinstance(exc, SkelError) else f"{type(exc).__name__}: {exc}"
        record.update(status="failed", error=msg,
                      finished_at=_now(), seconds=time.perf_counter() - t, result=None)
        ctx.store.write(name, record)
        ctx.stages[name] = {**record, "this_run": record["status"]}
        ctx.log(f"[yellow]    {name} {record['status']}:[/] {msg}")
        return None
    record.update(status="done", finished_at=_now(), seconds=time.perf_counter() - t, result=result)
    ctx.store.write(name, record)
    ctx.stages[name] = {**record, "this_run": "ran"}
    ctx.log(f"    {name}: {record['seconds']:.1f} s")
    return result


def _pretrain_stage(ctx: _Ctx, epochs: int | None) -> dict[str, Any]:
    from skelcli.engine.config import resolve_pretrain_settings
    from skelcli.engine.train import pretrain
    from skelcli.settings import to_jsonable

    cfg = resolve_pretrain_settings(METHOD_OF[ctx.paper], ctx.preset, overrides=ctx.sets.get("pretrain"), data_path=ctx.data,
                                    split=ctx.split, seed=ctx.seed, device=ctx.device, epochs=epochs)
    settings = {"pretrain": to_jsonable(cfg), "data": _fingerprint(ctx.data)}
    settings["pretrain"]["runtime"].pop("device", None)  # the machine may change between a run and its resume

    def body() -> dict[str, Any]:
        res = pretrain(cfg, ctx.out / "pretrain", resume="auto" if ctx.resume else None, force=ctx.force,
                       progress=ctx.progress, console=ctx.console)
        if res.interrupted is not None:
            raise _Interrupted(res.interrupted, f"pretraining ({res.epochs} epochs done, checkpoint {res.checkpoint})")
        if res.checkpoint is None:
            raise SkelError(f"pretraining wrote no checkpoint ({res.collapse or 'no epoch finished'})")
        out = res.to_json()
        out["checkpoint_fingerprint"] = _fingerprint(res.checkpoint)
        out["planned_epochs"] = cfg.optim.epochs
        return out

    rec = ctx.store.done("pretrain", settings) if ctx.resume else None
    if rec is not None:
        ckpt = rec["result"].get("checkpoint")
        if not ckpt or not Path(ckpt).is_file() or _fingerprint(ckpt) != rec["result"].get("checkpoint_fingerprint"):
            rec = None
            ctx.store.path("pretrain").unlink(missing_ok=True)  # its checkpoint changed: run (resume) it again
    result = _run_stage(ctx, "pretrain", settings, body, catch=False)
    assert result is not None
    return result


def _probe_stage(ctx: _Ctx, table: str, ckpt: str) -> None:
    recipe = RECIPE_OF[ctx.paper][table]
    overrides = list(SMALL_RECIPES[ctx.paper][table]) if ctx.preset == "small" else []
    overrides += ctx.sets.get(table, [])
    settings = {"table": table, "recipe": recipe, "overrides": overrides, "checkpoint": _fingerprint(ckpt),
                "data": _fingerprint(ctx.data), "split": ctx.split, "seed": ctx.seed}

    def body() -> dict[str, Any]:
        out_dir = ctx.out / table
        if table == "linear":
            from skelcli.eval.probe import run_probe

            res = run_probe(ckpt, ctx.data, ctx.split, out_dir, kind="linear", recipe=recipe, recipe_overrides=overrides or None,
                            device=ctx.device, seed=ctx.seed, cache=False)
        else:
            from skelcli.eval.retrieval import run_retrieval

            res = run_retrieval(ckpt, ctx.data, ctx.split, out_dir, recipe=recipe, recipe_overrides=overrides or None,
                                device=ctx.device, seed=ctx.seed, cache=False)
        summary = _probe_summary(table, res, out_dir)
        if ctx.preset == "small" and not ctx.sets.get(table):
            summary["recipe_label"] = str(summary["recipe_label"]).replace(" set by hand)", " scaled down by --preset small)")
        return summary

    _run_stage(ctx, table, settings, body)


def _probe_summary(table: str, res: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """The stage record's result: the reported number (top-1 in [0, 1]), the other honest numbers, the recipe."""
    rec = res.get("recipe") or {}
    name = rec.get("name")
    others: dict[str, float] = {}
    if table == "linear" and name == "mamp":
        reported = res["best_top1"]
        others["last epoch"] = res["last_top1"]
    else:
        reported = res["top1"]
        chosen = res.get("val_chosen")
        if table == "linear" and name == "slim" and chosen:
            others["val-chosen head"] = chosen["test_top1"]
    out = {"top1": float(reported), "others": {k: float(v) for k, v in others.items()}, "recipe": rec,
           "recipe_label": res.get("recipe_label", name), "reported_as": res.get("top1_reported"),
           "n_train": res.get("n_train", res.get("n_gallery")), "n_test": res.get("n_test", res.get("n_query")),
           "metrics_file": str(out_dir / "metrics.json")}
    for key in ("top5", "mean_class", "mAP"):
        if res.get(key) is not None:
            out[key] = res[key]
    return out


def _finetune_stage(ctx: _Ctx, name: str, table: str, ckpt: str, data: Path, split: str, fraction: float | None) -> dict[str, Any] | None:
    """Fine-tuning (full, semi-supervised at ``fraction``, or transfer to ``data``) with the paper's recipe:
    ``mamp`` = FinetuneSettings (its preset; semi: MAMP's official per-rank subsets, 5 repeats at the paper
    preset), ``slim`` = SlimFinetuneRecipe (semi: its class-balanced seed-42 subset)."""
    from skelcli.eval.finetune import FinetuneSettings
    from skelcli.settings import merge_overrides

    recipe = RECIPE_OF[ctx.paper]["finetune"]
    values: dict[str, Any] = dict(FinetuneSettings.preset(ctx.preset))
    recipe_overrides: list[str] = []
    if ctx.preset == "small":
        if recipe == "slim":
            recipe_overrides += [f"{k}={v}" for k, v in SMALL_SLIM_FINETUNE.items()]
        else:
            values["epochs"] = SMALL_FINETUNE_EPOCHS
    values.update(seed=ctx.seed, device=ctx.device)
    if fraction is not None:
        values.update(label_fraction=fraction, repeats=SEMI_REPEATS[ctx.paper] if ctx.preset == "paper" else 1)
        if recipe == "mamp":
            values.update(subsets="official", subset_seed=SEMI_SUBSET_SEED[ctx.paper])
    hand = [*ctx.sets.get("finetune", []), *(ctx.sets.get(table, []) if table != "finetune" else [])]
    if recipe == "slim":
        recipe_overrides += hand  # the SLiM recipe's own fields (iterations, head_lr, ...)
    else:
        values = merge_overrides(values, hand)  # FinetuneSettings fields (epochs, lr, repeats, ...)
    settings_json = {"table": table, "recipe": recipe, "finetune": {k: v for k, v in values.items() if k != "device"},
                     "recipe_overrides": recipe_overrides, "checkpoint": _fingerprint(ckpt), "data": _fingerprint(data),
                     "split": split, "preset": ctx.preset}

    def body() -> dict[str, Any]:
        from skelcli.eval.finetune import run_finetune

        s = FinetuneSettings(**values)
        out_dir = ctx.out / name
        res = run_finetune(ckpt, data, split, s, out_dir, preset=ctx.preset, resume="auto" if ctx.resume else None,
                           force=ctx.force, warn=lambda m: ctx.log(f"[yellow]    warning:[/] {_escape(m)}"),
                           recipe=recipe, recipe_overrides=recipe_overrides or None)
        if "interrupted" in res:
            raise _Interrupted(res["interrupted"], f"{name} (repeat {res['repeat'] + 1}, checkpoint {res['checkpoint']})")
        summary = _finetune_summary(res, out_dir, recipe)
        if ctx.preset == "small" and not hand:
            summary["recipe_label"] = f"{recipe} (scaled down by --preset small)"
        return summary

    return _run_stage(ctx, name, settings_json, body)


def _finetune_summary(res: dict[str, Any], out_dir: Path, recipe: str) -> dict[str, Any]:
    rec = res.get("recipe") if isinstance(res.get("recipe"), dict) else {"name": recipe}
    name = rec.get("name", recipe)
    rep = res.get("reported") if isinstance(res.get("reported"), dict) else None
    key = rep["key"] if rep else ("last_top1" if name == "slim" else "best_top1")
    value = rep["top1"] if rep else res[key]
    others: dict[str, float] = {}
    for k, label in (("best_top1", "best epoch / evaluation"), ("last_top1", "last epoch / final evaluation"),
                     ("test_top1_at_val_best", "val-chosen")):
        if k != key and isinstance(res.get(k), dict):
            others[label] = res[k]["mean"]
    changed = rec.get("changed") or []
    label = name + (f" ({', '.join(changed)} set by hand)" if changed else "")
    notes = []
    if res.get("subsets"):
        clips = res.get("labelled_clips")
        notes.append(f"label subsets {res['subsets']}" + (f": {clips} labelled clips" if clips is not None else "")
                     + (f" (nominal {res['nominal_labelled_clips']})" if res.get("nominal_labelled_clips") is not None else ""))
    return {"top1": float(value["mean"]), "std": float(value["std"]), "repeats": res.get("repeats"),
            "reported_as": rep.get("what") if rep else key, "others": {k: float(v) for k, v in others.items()},
            "recipe": rec, "recipe_label": label, "train_clips": [r.get("train_clips") for r in res.get("runs", [])],
            "warnings": res.get("warnings", []), "notes": notes, "metrics_file": str(out_dir / "metrics.json")}


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def run_reproduce(
    paper: str,
    data: str | Path,
    out: str | Path,
    *,
    split: str = "xsub",
    tables: list[str] | None = None,
    preset: str = "paper",
    transfer_data: str | Path | None = None,
    transfer_split: str = "xsub",
    resume: bool = False,
    force: bool = False,
    device: str = "auto",
    seed: int = 0,
    sets: dict[str, list[str]] | None = None,
    pretrain_epochs: int | None = None,
    log: Callable[[str], None] = print,
    console: Any = None,
    progress: bool | str = False,
    argv: list[str] | None = None,
) -> dict[str, Any]:
    """Run (or resume) ``paper``'s chain on ``data`` into ``out``; returns the report (also written to
    ``out/report.json`` and ``out/report.md``). ``tables`` None = every table the paper reports that the
    file supports. ``sets``: ``{"pretrain": ["optim.epochs=2"], "linear": ["iterations=10"], ...}``
    (:func:`parse_sets`); ``pretrain_epochs`` shortens pretraining (tests). The report holds
    ``interrupted`` when SIGINT / SIGTERM stopped a stage (continue with ``resume=True``)."""
    from skelcli.eval.features import check_split, data_info
    from skelcli.paths import check_out_dir

    _check_paper(paper)
    if preset not in PRESETS:
        raise SkelError(f"unknown --preset {preset!r}; available: {', '.join(PRESETS)}")
    if resume and force:
        raise SkelError("--resume continues a run and --force starts it over: give one of them")
    data = Path(data)
    dinfo = data_info(data)
    check_split(dinfo, split)
    transfer = None
    if transfer_data is not None:
        transfer_data = Path(transfer_data)
        tinfo = data_info(transfer_data)
        check_split(tinfo, transfer_split)
        transfer = (str(tinfo.dataset), transfer_split)
    chosen, cells = plan_cells(paper, str(dinfo.dataset), split, tables, transfer)
    out = check_out_dir(Path(out))
    store = StageStore(out)
    if not resume and (store.any() or (out / "pretrain").is_dir()):
        if not force:
            raise SkelError(f"{out} holds an earlier `skel reproduce` run: add --resume to continue it, or --force to start over")
        store.clear()
    out.mkdir(parents=True, exist_ok=True)
    dev = _resolve_device(device)
    ctx = _Ctx(paper, preset, data, split, out, dev, seed, resume, force, sets or {}, log, console, progress, store)
    t_all, started = time.perf_counter(), _now()
    interrupted: dict[str, str] | None = None
    try:
        pre = _pretrain_stage(ctx, pretrain_epochs)
        ckpt = pre["checkpoint"]
        for cell in cells:
            if cell.stage is None:
                continue
            if cell.table in ("linear", "retrieval"):
                _probe_stage(ctx, cell.table, ckpt)
            elif cell.table == "finetune":
                _finetune_stage(ctx, "finetune", "finetune", ckpt, data, split, None)
            elif cell.table == "semi":
                _finetune_stage(ctx, cell.stage, "semi", ckpt, data, split, float(cell.variant))
            elif cell.table == "transfer":
                assert transfer_data is not None
                _finetune_stage(ctx, "transfer", "transfer", ckpt, transfer_data, transfer_split, None)
    except _Interrupted as exc:
        interrupted = {"signal": exc.signal_name, "stage": exc.where}
        log(f"[yellow]interrupted by {exc.signal_name} in {exc.where}[/]: continue with --resume")
    report = build_report(ctx, chosen, cells, dinfo, transfer_data, started, time.perf_counter() - t_all, interrupted, argv)
    write_report(out, report)
    return report


# --------------------------------------------------------------------------------------------- report
def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def build_report(ctx: _Ctx, tables: list[str], cells: list[CellPlan], dinfo: Any, transfer_data: Path | None, started: str,
                 seconds: float, interrupted: dict[str, str] | None, argv: list[str] | None) -> dict[str, Any]:
    paper = PAPERS[ctx.paper]
    rows = []
    for cell in cells:
        pub = lookup(ctx.paper, cell.table, cell.dataset, cell.split, cell.variant)
        stage = ctx.stages.get(cell.stage) if cell.stage else None
        ours: float | None = None
        recipe = RECIPE_OF[ctx.paper].get(cell.table if cell.table in ("linear", "retrieval") else "finetune")
        extra: dict[str, Any] = {}
        if cell.stage is None:
            text = cell.reason
        elif stage is None:
            text = ("not run (interrupted by " + interrupted["signal"] + "; continue with --resume)") if interrupted else "not run"
        elif stage.get("status") != "done":
            text = f"{stage.get('status')}: {stage.get('error')}"
        else:
            res = stage["result"]
            ours = res["top1"]
            text = _pct(ours) + (f" ± {100 * res['std']:.2f}" if res.get("std") else "")
            recipe = res.get("recipe_label") or recipe
            extra = {"others": res.get("others", {}), "notes": res.get("notes", []), "warnings": res.get("warnings", []),
                     "metrics_file": res.get("metrics_file")}
        # A smoke run's numbers are not comparable: no difference is computed for them.
        delta = None if ours is None or pub.value is None or ctx.preset != "paper" else 100 * ours - pub.value
        rows.append({"table": cell.table, "dataset": cell.dataset, "split": cell.split, "variant": cell.variant,
                     "stage": cell.stage, "ours": ours, "ours_text": text, "paper": pub.value, "paper_text": paper_text(pub),
                     "paper_status": pub.status, "verified": pub.verified, "source": pub.source, "note": pub.note,
                     "release": pub.release, "release_source": pub.release_source, "delta": delta, "recipe": recipe,
                     "reported_as": paper.reported.get(cell.table), **extra})
    stage_rows = []
    for name, st in ctx.stages.items():
        stage_rows.append({"stage": name, "status": st.get("status"), "this_run": st.get("this_run"),
                           "started_at": st.get("started_at"), "finished_at": st.get("finished_at"),
                           "seconds": st.get("seconds"), "error": st.get("error")})
    pre = (ctx.stages.get("pretrain") or {}).get("result") or {}
    return {
        "paper": ctx.paper, "title": paper.title, "reference": paper.reference, "preset": ctx.preset,
        "smoke_run": ctx.preset == "small", "comparable_with_paper": ctx.preset == "paper",
        "notice": SMOKE_NOTICE if ctx.preset == "small" else PAPER_NOTICE,
        "command": argv, "tables": tables, "split": ctx.split, "seed": ctx.seed, "sets": ctx.sets,
        "data": {"path": str(ctx.data), "dataset": str(dinfo.dataset), "protocols": dinfo.protocols},
        "transfer_data": str(transfer_data) if transfer_data else None,
        "machine": machine_info(ctx.device),
        "pretrain": {k: pre.get(k) for k in ("method", "epochs", "planned_epochs", "steps", "seconds", "checkpoint", "final_loss",
                                            "resumed_from", "complete")},
        "cells": rows, "stages": stage_rows, "interrupted": interrupted,
        "started_at": started, "finished_at": _now(),
        "seconds": {"this_invocation": seconds,
                    "all_stages": sum(float(s.get("seconds") or 0.0) for s in stage_rows)},
    }


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(rep: dict[str, Any]) -> str:
    m = rep["machine"]
    lines = [f"# skel reproduce {rep['paper']}: {rep['title']}", "", f"{rep['reference']}.", ""]
    lines += [f"> **{rep['notice']}**" if rep["smoke_run"] else f"> {rep['notice']}", ""]
    if rep.get("interrupted"):
        lines += [f"> **Interrupted** by {rep['interrupted']['signal']} in {rep['interrupted']['stage']}: continue with `--resume`.", ""]
    d = rep["data"]
    lines += [f"- data: `{d['path']}` ({DATASET_NAMES.get(d['dataset'], d['dataset'])}, split {rep['split']})",
              f"- preset: {rep['preset']}; seed {rep['seed']}; tables: {', '.join(rep['tables'])}",
              f"- machine: CPU {m['cpu']} ({m['cpu_count']} cores), GPU {m['gpu'] or 'none'}, torch {m['torch']}, "
              f"Python {m['python']}, skelcli {m['skelcli']}; device {m['device']}"]
    if rep.get("transfer_data"):
        lines.append(f"- transfer data: `{rep['transfer_data']}`")
    pre = rep["pretrain"]
    if pre.get("checkpoint"):
        how = (" (the checkpoint had finished: nothing trained)" if pre.get("complete")
               else f" (resumed from `{pre['resumed_from']}`)" if pre.get("resumed_from") else "")
        lines.append(f"- pretraining: {pre['method']}, {pre['epochs']} epochs, {pre['steps']} steps, checkpoint `{pre['checkpoint']}`{how}")
    if any(rep["sets"].values()):
        lines.append(f"- settings changed by hand: {', '.join(f'{k}.{v}' for k, vs in rep['sets'].items() for v in vs)}")
    lines += ["", "## Results (top-1 %)", "",
              "| table | dataset | split | variant | ours | paper | verified | released ckpt | recipe | paper source |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for c in rep["cells"]:
        lines.append("| " + " | ".join(_md_escape(x) for x in (
            c["table"], DATASET_NAMES.get(c["dataset"], c["dataset"]), c["split"], c["variant"] or "-", c["ours_text"],
            c["paper_text"], "yes" if c["verified"] else "no", "-" if c["release"] is None else f"{c['release']:.2f}",
            c["recipe"] or "-", c["source"])) + " |")
    lines += ["", "## Notes per cell", ""]
    for c in rep["cells"]:
        bits = [f"reported: {c['reported_as']}"] if c.get("reported_as") else []
        if c.get("delta") is not None:
            bits.append(f"ours - paper = {c['delta']:+.2f} points")
        bits += [f"{k}: {100 * v:.2f}" for k, v in (c.get("others") or {}).items()]
        if c.get("note"):
            bits.append(f"paper value: {c['note']}")
        if c.get("release") is not None:
            bits.append(f"released checkpoints {c['release']:.2f} ({c['release_source']})")
        bits += list(c.get("notes") or []) + [f"warning: {w}" for w in c.get("warnings") or []]
        lines.append(f"- {c['table']} {c['dataset']} {c['split']} {c['variant']}".rstrip() + ": " + "; ".join(bits))
    lines += ["", "## Stages", "", "| stage | status | this invocation | wall time (s) | finished at |", "|---|---|---|---|---|"]
    for s in rep["stages"]:
        secs = "-" if s["seconds"] is None else f"{s['seconds']:.1f}"
        lines.append(f"| {s['stage']} | {_md_escape(s['status'])} | {s['this_run']} | {secs} | {s['finished_at'] or '-'} |")
    sec = rep["seconds"]
    lines += ["", f"Total wall time: {sec['this_invocation']:.1f} s in this invocation; {sec['all_stages']:.1f} s over all stages "
              "(including stages finished by earlier invocations).", ""]
    if rep.get("command"):
        lines += [f"Command: `{' '.join(rep['command'])}`", ""]
    return "\n".join(lines)


def write_report(out: Path, rep: dict[str, Any]) -> None:
    from skelcli.eval.report import write_json

    write_json(Path(out) / "report.json", rep)
    (Path(out) / "report.md").write_text(render_markdown(rep))
