"""`skel demo`: the whole chain on embedded synthetic data."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from skelcli.cli._app import command, console


@command("demo")
def demo(
    out: Path = typer.Option(Path("demo_out"), "--out", help="Folder for everything the demo writes."),
    methods: str = typer.Option("mae,mamp,gfp,slim", "--methods", help="Comma-separated pretraining methods."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Pretraining epochs per method (default: the small preset's)."),
    seed: int = typer.Option(0, "--seed", help="Seed for data, training and probes."),
    classes: int = typer.Option(
        16, "--classes", help="Synthetic action classes: 48 clips each. The gains in docs/benchmarks.md are measured at 16; fewer for a quicker look."
    ),
    no_benchmark: bool = typer.Option(False, "--no-benchmark", help="Skip the closing quick benchmark."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars or progress lines."),
    parallel: Optional[int] = typer.Option(
        None, "--parallel", help="Methods pretrained at once, one thread each (default: 2 on a machine with 2+ cores)."
    ),
) -> None:
    """Synthesize NTU60-format data, prepare it, pretrain every method (small preset), probe, compare, benchmark.

    Example:  skel demo --out demo_out
              skel demo --methods mamp,gfp --epochs 5 --classes 4 --no-benchmark
    """
    from rich.markup import escape
    from rich.table import Table

    from skelcli.demo import DemoSettings, run_demo

    settings = DemoSettings(
        methods=[m.strip() for m in methods.split(",") if m.strip()], epochs=epochs, seed=seed, classes=classes,
        benchmark=not no_benchmark, parallel=parallel,
    )
    summary = run_demo(out, settings, log=console.print, progress=not quiet)

    required = settings.required_gain
    n_test = summary["prepare"]["splits"].get("xsub", {}).get("test", "?")
    table = Table(title=f"skel demo: what pretraining bought (frozen-encoder top-1, synthetic xsub test split, {n_test} clips)")
    pictures = summary.get("pictures") or {}
    columns = ("method", "steps", "pretrain s", "linear", "random", "gain", "kNN", "random", "gain", "verdict")
    for col in columns + (("feature map",) if pictures else ()):
        table.add_column(col, justify="left" if col in ("method", "verdict") else "right")
    for name, e in summary["methods"].items():
        p, r = e["pretrain"], e["random_init"]
        style = "green" if e["clear_win"] else "bold red"
        gain = {proto: f"[{'green' if g >= required else 'red'}]{100 * g:+.1f}[/]" for proto, g in e["gain"].items()}
        table.add_row(
            name, str(p["steps"]), f"{p['seconds']:.0f}", f"{e['linear']:.3f}", f"{r['linear']:.3f}", gain["linear"],
            f"{e['knn']:.3f}", f"{r['knn']:.3f}", gain["knn"], f"[{style}]{escape(e['verdict'])}[/]",
            *((escape(e.get("picture", "-")),) if pictures else ()),
        )
    console.print(table)
    console.print(f"gain = points of top-1 over a randomly initialised encoder of the same shape; a clear win needs "
                  f"{100 * required:.0f} points or more in both the linear and the kNN probe.", highlight=False)
    losers = [n for n, e in summary["methods"].items() if not e["clear_win"]]
    if losers:
        console.print(f"[bold red]pretraining did not clearly beat random features for: {escape(', '.join(losers))}[/]")
    if pictures.get("curves"):
        console.print(f"training curves of every method: {', '.join(pictures['curves'])}", highlight=False, markup=False)
    if "benchmark" in summary:
        from skelcli.bench.report import render

        render(summary["benchmark"], console)
    console.print(f"[bold]done in {summary['seconds']:.0f} s.[/] Everything is under [cyan]{escape(str(out))}[/]: raw/ (synthetic .skeleton files), "
                  f"ntu60_synth.h5, runs/<method>/ (settings.json, metrics.jsonl, last.pt, probe-*/metrics.json), demo.json"
                  + (", curves.png, embed_<method>.png" if pictures else "") + (", benchmark.json" if "benchmark" in summary else ""))
