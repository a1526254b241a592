"""`skel synth`: write genuine raw NTU RGB+D / PKU-MMD files with procedural actions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from skelcli.cli._app import command, console


@command("synth")
def synth(
    dataset: str = typer.Argument(..., help="ntu60 | ntu120 | pku-mmd-v1 | pku-mmd-v2 (raw text files), or a format: "
                                  "pyskl | ctrgcn-npz | kinetics-skeleton | nw-ucla | arrays (procedural clips in any layout)"),
    out: Path = typer.Option(..., "--out", help="Output directory (must be empty unless --force)."),
    classes: int = typer.Option(6, "--classes", help="Number of action classes (spread over the dataset's ids)."),
    subjects: int = typer.Option(2, "--subjects", help="Performers (NTU: alternating xsub train / test ids)."),
    setups: int = typer.Option(2, "--setups", help="NTU setups (alternating odd / even ids)."),
    replications: int = typer.Option(2, "--replications", help="NTU R001/R002; PKU rounds per subject."),
    samples_per_class: Optional[int] = typer.Option(
        None, "--samples-per-class", help="Performances per class, each written once per camera (default: all)."
    ),
    min_frames: int = typer.Option(40, "--min-frames", help="Shortest action, frames."),
    max_frames: int = typer.Option(300, "--max-frames", help="Longest action, frames."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed writes byte-identical files."),
    no_faults: bool = typer.Option(False, "--no-faults", help="Write clean files (no spurious / noise bodies etc.)."),
    difficulty: str = typer.Option(
        "easy", "--difficulty",
        help="easy | medium (easy classes, larger nuisance) | hard (pairs of classes that differ only in coordination).",
    ),
    force: bool = typer.Option(False, "--force", help="Write into a non-empty directory (same names are overwritten)."),
    topology: Optional[str] = typer.Option(
        None, "--topology", help="Formats: joint layout of the procedural clips (built-in name or .toml; default: the format's own)."),
    per_class: int = typer.Option(8, "--per-class", help="Formats: clips per class."),
    workers: Optional[int] = typer.Option(
        None, "--workers", help="NTU: processes writing the files (default: 2 on a 2+ core machine for 96+ files; same bytes)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the report as JSON to this file."),
) -> None:
    """Write a synthetic raw dataset in the exact NTU / PKU-MMD text formats.

    Example:  skel synth ntu60 --out ./synthetic_raw --classes 6 --subjects 4 --seed 0
    then:     skel prepare ntu60 --raw ./synthetic_raw --out data/ntu60_synth.h5
    """
    from rich.table import Table

    from skelcli.data.formats import FORMATS
    from skelcli.progress import step_progress

    from skelcli.data.synthetic import FaultRates, SynthSettings, synthesize

    if dataset in FORMATS:
        _synth_format(dataset, out, topology, classes, per_class, seed, force, json_out)
        return
    if topology is not None:
        from skelcli.errors import SkelError

        raise SkelError(f"--topology applies to the formats ({', '.join(FORMATS)}); {dataset} is always the ntu25 layout")

    settings = SynthSettings(
        classes=classes, subjects=subjects, setups=setups, replications=replications,
        samples_per_class=samples_per_class, min_frames=min_frames, max_frames=max_frames, seed=seed,
        faults=FaultRates.none() if no_faults else FaultRates(), difficulty=difficulty,
    )
    bars: list = []  # created at the first file, when the total is known

    def advance(done: int, total: int) -> None:
        if not bars:
            bars.append(step_progress(f"synth {dataset}", total, console=console))
        bars[0].update(completed=done)

    try:
        report = synthesize(dataset, out, settings, force=force, progress=advance, workers=workers)
    finally:
        for bar in bars:
            bar.close()

    table = Table(title=f"skel synth {dataset}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_row("output", report.out)
    table.add_row("files", str(report.n_files))
    table.add_row("size", f"{report.bytes / 1e6:.1f} MB")
    table.add_row("classes", ", ".join(str(c) for c in report.class_ids))
    table.add_row("frames", str(report.frames))
    if report.clips:
        table.add_row("labelled clips", str(report.clips))
    table.add_row("faults", ", ".join(f"{k} {v}" for k, v in report.faults.items()))
    if report.no_body_files:
        table.add_row("files with no body", str(len(report.no_body_files)))
    table.add_row("time", f"{report.seconds:.2f} s")
    console.print(table)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report.model_dump(), indent=2))
        console.print(f"report written to {json_out}", markup=False)


def _synth_format(fmt: str, out: Path, topology: Optional[str], classes: int, per_class: int, seed: int, force: bool,
                  json_out: Optional[Path]) -> None:
    from skelcli.data.formats import synthesize_format
    from skelcli.topology import get_topology

    report = synthesize_format(fmt, out, topology=get_topology(topology) if topology else None, classes=classes,
                               per_class=per_class, seed=seed, force=force)
    console.print(f"skel synth {fmt}: {report['clips']} clips of {report['classes']} classes in the {report['topology']} layout, "
                  f"{report['files']} files, {report['bytes'] / 1e6:.2f} MB in {report['seconds']:.2f} s -> {report['out']}",
                  markup=False, soft_wrap=True)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=2))
