"""`skel benchmark`: training / inference throughput, FLOPs and the papers' ratios in one run."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from skelcli.cli._app import command, console


@command("benchmark")
def benchmark(
    measure_throughput: bool = typer.Option(False, "--measure-throughput", help="Time training and inference of each method."),
    methods: str = typer.Option("mae,mamp,gfp,slim", "--methods", help="Comma-separated methods; unregistered ones are skipped with a note."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Training batch (default 128 on CUDA, 16 on CPU, 4 with --preset small)."),
    inference_batch_size: Optional[int] = typer.Option(None, "--inference-batch-size", min=1, help="Large-batch inference size (default 256 on CUDA, = --batch-size on CPU)."),
    precision: str = typer.Option("fp32", "--precision", help="fp32 or bf16 (autocast)."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the method and encoder (compilation is not timed)."),
    repeats: int = typer.Option(3, "--repeats", min=1, help="Timed windows; median and IQR over them."),
    warmup: int = typer.Option(2, "--warmup", min=0, help="Untimed warm-up steps."),
    iters: Optional[int] = typer.Option(None, "--iters", min=1, help="Steps per timed window (default 20 on CUDA, 1 on CPU)."),
    preset: str = typer.Option("paper", "--preset", help="paper (paper-size models) or small (quick CPU run)."),
    dataset: str = typer.Option("ntu60", "--dataset", help="Dataset whose per-dataset recipe values to use (decoder depth, tau)."),
    no_flops: bool = typer.Option(False, "--no-flops", help="Skip the FLOP counts."),
    baseline_impl: Optional[str] = typer.Option(None, "--baseline-impl", help="'reference': also time a straightforward fp32 eager MAMP."),
    end_to_end: Optional[Path] = typer.Option(None, "--end-to-end", help="Prepared DATA.h5: time the real loader + augmentation too."),
    prepare: Optional[Path] = typer.Option(None, "--prepare", help="Raw NTU .skeleton folder: time raw parsing (MB/s, files/s)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the versioned JSON report here."),
    plot_out: Optional[Path] = typer.Option(None, "--plot", help="Write throughput and FLOPs bar charts (needs matplotlib)."),
) -> None:
    """Measure training / inference throughput, FLOPs and the papers' speed-up ratios.

    Example:

        skel benchmark --measure-throughput --methods mae,mamp,gfp,slim --device cuda --precision bf16 --json bench.json

        skel benchmark --measure-throughput --preset small --repeats 1 --warmup 0 --methods mae,mamp
    """
    from skelcli.errors import SkelError

    if not (measure_throughput or end_to_end or prepare):
        raise SkelError("nothing to do: pass --measure-throughput (and/or --end-to-end DATA.h5, --prepare RAW_DIR)")
    if preset not in ("paper", "small"):
        raise SkelError(f"unknown preset {preset!r}; use paper or small")
    if precision not in ("fp32", "bf16"):
        raise SkelError(f"unknown precision {precision!r}; use fp32 or bf16")
    if end_to_end is not None and not end_to_end.is_file():
        raise SkelError(f"--end-to-end: no such file {end_to_end}")
    if prepare is not None and not prepare.is_dir():
        raise SkelError(f"--prepare: no such folder {prepare}")
    names = [m.strip() for m in methods.split(",") if m.strip()] if measure_throughput else []
    if measure_throughput and not names:
        raise SkelError("--methods is empty")

    from skelcli.bench.report import plot, render, run_benchmark, write_json
    from skelcli.bench.throughput import BenchConfig

    cfg = BenchConfig(methods=names, device=device, batch_size=batch_size, inference_batch_size=inference_batch_size,
                      precision=precision, compile=compile, repeats=repeats, warmup=warmup, iters=iters, preset=preset,
                      dataset=dataset, flops=not no_flops, baseline_impl=baseline_impl, end_to_end=end_to_end,
                      prepare=prepare)
    from skelcli.cli._app import err_console

    with console.status("benchmarking") as status:

        def log(message: str) -> None:
            status.update(message)
            if not console.is_terminal:  # a log file or a pipe gets one line per stage
                err_console.print(message, highlight=False)

        report = run_benchmark(cfg, log=log)
    render(report, console)
    if json_out is not None:
        write_json(report, json_out)
        console.print(f"wrote {json_out}", markup=False)
    if plot_out is not None:
        plot(report, plot_out)
        console.print(f"wrote {plot_out}", markup=False)
