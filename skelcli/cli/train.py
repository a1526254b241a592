"""`skel pretrain`: self-supervised pretraining of one registered method on a prepared file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from skelcli.cli._app import command, console


@command("pretrain")
def pretrain_cmd(
    method: Optional[str] = typer.Option(None, "--method", help="Method: mae | mamp | gfp | slim (any registered method)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Prepared HDF5 file (skel prepare)."),
    split: Optional[str] = typer.Option(None, "--split", help="Protocol of the file to train on: xsub, xview, xset (default xsub)."),
    preset: str = typer.Option("paper", "--preset", help="paper (the published recipe) | small (CPU-sized, for tests and the demo)."),
    config: Optional[Path] = typer.Option(None, "--config", help="TOML settings file (sections method, data, optim, runtime)."),
    overrides: Optional[List[str]] = typer.Option(None, "--set", help="Override one field, e.g. --set optim.lr=5e-4 (repeatable)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Number of epochs (optim.epochs)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Global batch size (data.batch_size)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda (runtime.device)."),
    precision: Optional[str] = typer.Option(
        None, "--precision", help="auto (fp32 on CPU, the method's recipe on CUDA) | fp32 | bf16 autocast (runtime.precision)."
    ),
    compile_model: bool = typer.Option(False, "--compile", help="torch.compile the training step (runtime.compile)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed (runtime.seed)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (default runs/<method>-<split>)."),
    resume: Optional[str] = typer.Option(None, "--resume", help="auto (newest valid checkpoint in --out) or a checkpoint path."),
    force: bool = typer.Option(False, "--force", help="Start over in a run folder that holds checkpoints or another configuration; its old files move to old-<time>/."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
    tensorboard: bool = typer.Option(False, "--tensorboard", help="Also log to RUN/tb/ for TensorBoard, with curves.png at the end (extra \\[viz])."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the result summary as JSON to this file."),
    nproc: Optional[int] = typer.Option(
        None, "--nproc", min=1, help="Run N processes on this machine: re-launches itself through torchrun --standalone."
    ),
    max_device_batch: Optional[int] = typer.Option(
        None, "--max-device-batch", min=1, help="Largest micro-batch per process; above it gradients are accumulated."
    ),
    stop_on_collapse: bool = typer.Option(
        False, "--stop-on-collapse", help="End the run (exit code 3) when the collapse alarm fires, keeping the checkpoints written before it "
        "(runtime.stop_on_collapse; thresholds: runtime.collapse_thresholds, runtime.collapse_patience)."
    ),
) -> None:
    """Pretrain an encoder with a self-supervised method.

    Example:  skel pretrain --method mamp --data data/ntu60.h5 --split xsub --preset small --epochs 5 --out runs/mamp

    Continue an interrupted run:  skel pretrain --method mamp --data data/ntu60.h5 --out runs/mamp --resume auto

    Several processes (DDP; --batch-size stays the global batch):
    torchrun --standalone --nproc-per-node 4 -m skelcli pretrain --method mamp --data data/ntu60.h5 --out runs/mamp
    or the shortcut  skel pretrain --nproc 4 ...  (see docs/scaling.md).

    The run folder gets settings.json, metrics.jsonl, last.pt (at an epoch end, at most every
    runtime.save_interval_s seconds) and checkpoint-NNNN.pt.
    Ctrl-C / SIGTERM saves last.pt at the next step and exits; --resume auto picks it up.
    A collapse indicator (GFP target std, encoder feature std) below its threshold for
    runtime.collapse_patience log intervals prints a red alarm and logs kind="collapse".
    """
    import os
    import sys

    from rich.table import Table

    from skelcli.engine.config import resolve_pretrain_settings
    from skelcli.engine.dist import init_distributed, quiet_non_main, relaunch_with_torchrun, shutdown, strip_option, worker_exit
    from skelcli.engine.train import pretrain
    from skelcli.viz.tensorboard import tensorboard_writer
    from skelcli.errors import SkelError

    settings = resolve_pretrain_settings(
        method, preset, None, config, overrides, data, split, epochs=epochs, batch_size=batch_size, device=device, seed=seed,
        precision=precision, compile=True if compile_model else None, stop_on_collapse=True if stop_on_collapse else None,
    )
    if nproc is not None and nproc > 1 and "WORLD_SIZE" not in os.environ:
        if "pretrain" not in sys.argv[1:]:
            raise SkelError("--nproc re-launches the command line through torchrun; run it as `skel pretrain ... --nproc N`")
        relaunch_with_torchrun(nproc, strip_option(sys.argv[1:], "--nproc"))
    ctx = init_distributed(settings.runtime.device)
    quiet_non_main(ctx)
    run_dir = out or Path("runs") / f"{settings.method.name}-{settings.data.split}"
    try:
        result = pretrain(
            settings, run_dir, resume=resume, force=force, progress=not no_progress, console=console, ctx=ctx,
            max_per_device_batch=max_device_batch, tensorboard=tensorboard_writer() if tensorboard else None,
        )
    finally:
        shutdown(ctx)
    from rich.markup import escape

    from skelcli.engine.rundir import exit_code

    for note in result.skipped_checkpoints:
        console.print(f"[yellow]warning:[/] {escape(note)}", highlight=False)
    for note in result.notes:
        console.print(f"note: {escape(note)}", highlight=False)
    if result.complete:
        console.print(f"{result.run_dir}: already complete ({result.epochs} epochs, {result.steps} steps), nothing to do; "
                      f"checkpoint {result.checkpoint}", highlight=False, markup=False)
        return

    table = Table(title=f"skel pretrain {result.method}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_row("run folder", escape(str(result.run_dir)))
    if result.resumed_from is not None:
        table.add_row("resumed from", escape(str(result.resumed_from)))
    table.add_row("epochs", f"{result.epochs} / {settings.optim.epochs}")
    table.add_row("steps", str(result.steps))
    table.add_row("processes", str(result.world_size))
    table.add_row("global batch", f"{result.global_batch} ({result.per_process_batch} per process, "
                  f"{result.accumulation} accumulation step(s))")
    table.add_row("final loss", f"{result.final_loss:.4f}")
    table.add_row("time", f"{result.seconds:.1f} s")
    table.add_row("samples/s", f"{result.samples_per_s:.1f}")
    table.add_row("data wait", f"{100 * result.data_wait_share:.1f} % of the time")
    table.add_row("checkpoint", escape(str(result.checkpoint)) if result.checkpoint else "-")
    console.print(table)
    if json_out is not None and ctx.is_main:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps({"settings": json.loads(settings.model_dump_json()), "result": result.to_json()}, indent=2) + "\n")
    if result.collapse_stopped:
        where = (f"{escape(str(result.checkpoint))} ({result.epochs} epochs done)" if result.checkpoint
                 else "none (no epoch finished before the alarm)")
        console.print(f"[bold red]stopped on collapse[/]: {escape(result.collapse or '')}; last good checkpoint: {where}", highlight=False,
                      soft_wrap=True)
        raise typer.Exit(worker_exit(3, ctx.rank))
    if result.collapse is not None:
        console.print(f"[bold red]collapse alarm[/]: {escape(result.collapse)} (see metrics.jsonl, kind=collapse)", highlight=False,
                      soft_wrap=True)
    if result.interrupted is not None:
        console.print(f"[yellow]interrupted by {result.interrupted}[/]: checkpoint saved; continue with --resume auto "
                      f"--out {escape(str(result.run_dir))}")
        raise typer.Exit(worker_exit(exit_code(result.interrupted), ctx.rank))
