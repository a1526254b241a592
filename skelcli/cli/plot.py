"""`skel plot`: training and evaluation curves of run folders (issue 16 item 1)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape

from skelcli.cli._app import command, console


@command("plot")
def plot(
    runs: List[Path] = typer.Argument(..., metavar="RUN", help="Run folders of skel pretrain, finetune or probe."),
    out: Path = typer.Option(..., "--out", "-o", help="Figure file (.png, .pdf or .svg); evaluation curves go to <stem>_eval<suffix>."),
    labels: Optional[str] = typer.Option(None, "--labels", help="Comma-separated legend labels, one per RUN (default: folder name and method)."),
    x: str = typer.Option("step", "--x", help="x axis of the training curves: step | epoch."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write what was drawn as JSON to this file."),
) -> None:
    """Draw loss, loss terms, learning rate, throughput and each method's monitored statistics; several
    runs overlaid. Fine-tune / probe folders add a figure of top-1 per epoch.

    Example:  skel plot runs/mamp runs/gfp --out curves.png
    Labels:   skel plot runs/a runs/b --out cmp.png --labels "lr 1e-3,lr 3e-4" --x epoch
    Eval:     skel plot runs/gfp/finetune --out ft.png      (writes ft_eval.png)
    """
    from rich.table import Table

    from skelcli.paths import check_out_file
    from skelcli.viz.curves import plot_runs

    check_out_file(out, "--out")
    check_out_file(json_out, "--json")
    names = None if labels is None else [s.strip() for s in labels.split(",")]
    result = plot_runs(runs, out, labels=names, x=x)

    table = Table(title="skel plot", show_header=True)
    table.add_column("figure", style="bold")
    table.add_column("file")
    table.add_column("panels")
    for name, fig in result["figures"].items():
        table.add_row(name, escape(fig["path"]), escape(", ".join(fig["panels"])))
    console.print(table)
    for note in result["notes"]:
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=2) + "\n")
        console.print(f"results written to {json_out}", markup=False, highlight=False)
