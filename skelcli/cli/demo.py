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
    no_benchmark: bool = typer.Option(False, "--no-benchmark", help="Skip the closing quick benchmark."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Synthesize NTU60-format data, prepare it, pretrain every method (small preset), probe, compare, benchmark.

    Example:  skel demo --out demo_out
              skel demo --methods mamp,gfp --epochs 5 --no-benchmark
    """
    from rich.table import Table

    from skelcli.demo import DemoSettings, run_demo

    settings = DemoSettings(
        methods=[m.strip() for m in methods.split(",") if m.strip()], epochs=epochs, seed=seed, benchmark=not no_benchmark
    )
    summary = run_demo(out, settings, log=console.print, progress=not quiet)

    table = Table(title="skel demo: frozen-encoder probes on the synthetic xsub test split (top-1)")
    for col in ("method", "pretrain s", "steps", "final loss", "linear", "kNN", "linear (random init)", "kNN (random init)", "linear gain"):
        table.add_column(col, justify="right" if col != "method" else "left")
    for name, e in summary["methods"].items():
        p = e["pretrain"]
        gain = e["linear"] - e["random_init"]["linear"]
        table.add_row(
            name, f"{p['seconds']:.0f}", str(p["steps"]), f"{p['final_loss']:.4f}", f"{e['linear']:.3f}", f"{e['knn']:.3f}",
            f"{e['random_init']['linear']:.3f}", f"{e['random_init']['knn']:.3f}", f"{gain:+.3f}",
        )
    console.print(table)
    if "benchmark" in summary:
        from skelcli.bench.report import render

        render(summary["benchmark"], console)
    console.print(f"[bold]done in {summary['seconds']:.0f} s.[/] Everything is under [cyan]{out}[/]: raw/ (synthetic .skeleton files), "
                  f"ntu60_synth.h5, runs/<method>/ (settings.json, metrics.jsonl, last.pt, probe-*/metrics.json), demo.json"
                  + (", benchmark.json" if "benchmark" in summary else ""))
