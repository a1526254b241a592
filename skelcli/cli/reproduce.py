"""`skel reproduce PAPER`: pretrain with a paper's method, evaluate with its recipes, compare with its numbers."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from skelcli.cli._app import command, console


@command("reproduce")
def reproduce(
    paper: str = typer.Argument(..., help="mamp | gfp | slim", show_default=False),
    data: Path = typer.Option(..., "--data", "-d", help="Prepared HDF5 file (skel prepare)."),
    split: str = typer.Option("xsub", "--split", help="Protocol of the file: xsub, xview, xset."),
    table: Optional[List[str]] = typer.Option(
        None, "--table", help="linear | semi | finetune | transfer | retrieval (repeatable or comma-separated; "
        "default: every table the paper reports that the file supports; semi needs NTU-60)."),
    preset: str = typer.Option("paper", "--preset", help="paper (the paper's recipes) | small (CPU smoke run, not comparable)."),
    transfer_data: Optional[Path] = typer.Option(None, "--transfer-data", help="Prepared file to fine-tune on for the transfer table (e.g. PKU-MMD II)."),
    transfer_split: str = typer.Option("xsub", "--transfer-split", help="Protocol of --transfer-data."),
    out: Path = typer.Option(..., "--out", help="Run folder: pretrain/, one folder per stage, stages/*.json, report.md, report.json."),
    resume: bool = typer.Option(False, "--resume", help="Continue: skip finished stages whose settings match, resume interrupted ones."),
    force: bool = typer.Option(False, "--force", help="Start over in a folder that holds an earlier run (old checkpoints move to old-<time>/)."),
    sets: Optional[List[str]] = typer.Option(
        None, "--set", help="Change one setting of a stage, e.g. --set linear.iterations=2000, --set finetune.epochs=5, "
        "--set pretrain.optim.epochs=50 (repeatable; the report lists them)."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    seed: int = typer.Option(0, "--seed"),
    pretrain_epochs: Optional[int] = typer.Option(None, "--pretrain-epochs", min=1, hidden=True),
    no_progress: bool = typer.Option(False, "--no-progress", help="No pretraining progress bar."),
) -> None:
    """Reproduce a paper's tables: pretrain with its method, evaluate with its own recipes, report ours next to its numbers.

    Example:  skel reproduce slim --data data/ntu60.h5 --split xsub --out repro/slim
    Smoke:    skel reproduce mamp --data data/ntu60.h5 --preset small --out repro/mamp-small
    Transfer: skel reproduce mamp --data data/ntu60.h5 --table transfer --transfer-data data/pku_v2.h5 --out repro/mamp
    Continue after Ctrl-C / SIGTERM:  add --resume (finished stages are skipped)
    Writes OUT/report.md and OUT/report.json: per cell our top-1 next to the paper's (source, verified or not),
    the recipe, the machine and the wall time per stage.
    """
    from rich.markup import escape
    from rich.table import Table

    from skelcli.engine.rundir import exit_code
    from skelcli.reproduce import parse_sets, parse_tables, run_reproduce

    tables = parse_tables(table)
    rep = run_reproduce(paper, data, out, split=split, tables=tables, preset=preset, transfer_data=transfer_data,
                        transfer_split=transfer_split, resume=resume, force=force, device=device, seed=seed, sets=parse_sets(sets),
                        pretrain_epochs=pretrain_epochs, log=lambda line: console.print(line, highlight=False),
                        console=console, progress=not no_progress, argv=["skel", *sys.argv[1:]] if sys.argv[1:2] == ["reproduce"] else None)
    t = Table(title=f"skel reproduce {escape(paper)} (preset {escape(preset)})")
    for col in ("table", "dataset", "split", "variant", "ours", "paper", "verified", "recipe"):
        t.add_column(col)
    for c in rep["cells"]:
        t.add_row(c["table"], c["dataset"], c["split"], c["variant"] or "-", escape(c["ours_text"]), escape(c["paper_text"]),
                  "yes" if c["verified"] else "no", escape(str(c["recipe"] or "-")))
    console.print(t)
    if rep["smoke_run"]:
        console.print(f"[bold yellow]{escape(rep['notice'])}[/]")
    console.print(f"report: {out / 'report.md'}, {out / 'report.json'} ({rep['seconds']['this_invocation']:.1f} s)",
                  highlight=False, markup=False)
    if rep.get("interrupted"):
        raise typer.Exit(exit_code(rep["interrupted"]["signal"]))
    if any(s["status"] == "failed" for s in rep["stages"]):
        raise typer.Exit(1)
