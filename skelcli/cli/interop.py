"""`skel import`: official MAMP / SLiM checkpoints (or a skelcli safetensors export) -> a skelcli checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from skelcli.cli._app import command, console


@command("import")
def import_cmd(
    kind: str = typer.Argument(..., help="Source format: mamp | slim | skelcli."),
    src: Path = typer.Argument(..., help="mamp: checkpoint-<epoch>.pth; slim: teacher_checkpoint.pth, the exported "
                               "encoder .pth or a Hugging Face folder; skelcli: a 'skel export --format safetensors' folder."),
    out: Path = typer.Option(..., "--out", "-o", help="The skelcli checkpoint (.pt) to write."),
    strict: bool = typer.Option(True, "--strict/--no-strict", help="A head with no exact skelcli equivalent is an error "
                                "(--no-strict: import the encoder without it). Unknown or missing encoder keys are always an error."),
    heads: Optional[int] = typer.Option(None, "--heads", help="Attention heads, when the file does not say (default: width / 32)."),
    frames: Optional[int] = typer.Option(None, "--frames", help="SLiM: clip length of the imported encoder (default: config.json or 64)."),
) -> None:
    """Import an official checkpoint as a normal skelcli checkpoint (for probe, retrieve, finetune).

    Example:  skel import mamp checkpoint-399.pth --out mamp_ntu60_xsub.pt
    Example:  skel import slim eval/training_99999/teacher_checkpoint.pth --out slim.pt
    Example:  skel import slim ./SLiM-ntu60_xsub --out slim.pt   (config.json + model.safetensors)
    """
    from rich.table import Table

    from skelcli.interop.official import import_checkpoint
    from skelcli.paths import check_out_file

    check_out_file(out, "--out")
    report = import_checkpoint(kind, src, out, strict=strict, heads=heads, frames=frames)
    cfg = report.encoder_config
    table = Table(title=f"skel import {kind}")
    table.add_column("item")
    table.add_column("value")
    table.add_row("source format", report.source_format)
    table.add_row("tensors mapped", str(report.mapped))
    dropped = f"{report.dropped}" + (f" ({', '.join(report.dropped_groups)})" if report.dropped_groups else "")
    table.add_row("dropped (pretraining-only)", dropped)
    table.add_row("head", report.head)
    table.add_row("architecture", f"dim {cfg.get('dim')}, depth {cfg.get('depth')}, heads {cfg.get('heads')}, "
                  f"frames {cfg.get('num_frames')}, t_patch {cfg.get('t_patch')}, joints {cfg.get('num_joints')}, "
                  f"ffn {cfg.get('ffn')}, pool {cfg.get('pool')}")
    table.add_row("output", str(report.out))
    console.print(table)
    for note in report.notes:
        console.print(f"note: {note}", highlight=False)
