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
    compile_backend: str = typer.Option("inductor", "--compile-backend", help="torch.compile backend with --compile: inductor, aot_eager or cudagraphs."),
    repeats: int = typer.Option(3, "--repeats", min=1, help="Timed windows; median and IQR over them."),
    warmup: int = typer.Option(2, "--warmup", min=0, help="Untimed warm-up steps."),
    iters: Optional[int] = typer.Option(None, "--iters", min=1, help="Steps per timed window (default 20 on CUDA, 1 on CPU)."),
    preset: str = typer.Option("paper", "--preset", help="paper (paper-size models) or small (quick CPU run)."),
    dataset: str = typer.Option("ntu60", "--dataset", help="Dataset whose per-dataset recipe values to use (decoder depth, tau)."),
    no_flops: bool = typer.Option(False, "--no-flops", help="Skip the FLOP counts."),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="Also time a MAMP baseline step on the same device and batch: 'eager' (our straightforward fp32 eager MAMP) or 'official' (the maoyunyao/MAMP model imported from --official-src)."),
    official_src: Optional[Path] = typer.Option(None, "--official-src", help="Root of a maoyunyao/MAMP checkout (with --baseline official); its model_mamp/transformer.py is imported, nothing is copied."),
    baseline_impl: Optional[str] = typer.Option(None, "--baseline-impl", hidden=True, help="Deprecated: 'reference' = --baseline eager."),
    end_to_end: Optional[Path] = typer.Option(None, "--end-to-end", help="Prepared DATA.h5: time the real loader + augmentation too."),
    prepare: Optional[Path] = typer.Option(None, "--prepare", help="Raw NTU .skeleton folder: time raw parsing (MB/s, files/s)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the versioned JSON report here."),
    plot_out: Optional[Path] = typer.Option(None, "--plot", help="Write throughput and FLOPs bar charts (needs matplotlib)."),
) -> None:
    """Measure training / inference throughput, FLOPs and the papers' speed-up ratios.

    Example:

        skel benchmark --measure-throughput --methods mae,mamp,gfp,slim --device cuda --precision bf16 --json bench.json

        skel benchmark --measure-throughput --preset small --repeats 1 --warmup 0 --methods mae,mamp

        skel benchmark --measure-throughput --methods mamp --baseline official --official-src ~/src/MAMP
    """
    from skelcli.cli._app import err_console
    from skelcli.errors import SkelError

    if not (measure_throughput or end_to_end or prepare):
        raise SkelError("nothing to do: pass --measure-throughput (and/or --end-to-end DATA.h5, --prepare RAW_DIR)")
    if preset not in ("paper", "small"):
        raise SkelError(f"unknown preset {preset!r}; use paper or small")
    if precision not in ("fp32", "bf16"):
        raise SkelError(f"unknown precision {precision!r}; use fp32 or bf16")
    from typing import get_args

    from skelcli.settings import CompileBackend

    if compile_backend not in get_args(CompileBackend):
        raise SkelError(f"unknown --compile-backend {compile_backend!r}; use {', '.join(get_args(CompileBackend))}")
    if end_to_end is not None and not end_to_end.is_file():
        raise SkelError(f"--end-to-end: no such file {end_to_end}")
    if prepare is not None and not prepare.is_dir():
        raise SkelError(f"--prepare: no such folder {prepare}")
    names = [m.strip() for m in methods.split(",") if m.strip()] if measure_throughput else []
    if measure_throughput and not names:
        raise SkelError("--methods is empty")
    baseline = _resolve_baseline(baseline, baseline_impl, official_src, err_console)

    from skelcli.bench.report import plot, render, run_benchmark, write_json
    from skelcli.bench.throughput import BenchConfig

    extra: dict = {}
    if baseline == "eager":
        extra["baseline_impl"] = "reference"  # the report's eager-baseline branch
    elif baseline == "official":
        import dataclasses

        if "official_src" not in {f.name for f in dataclasses.fields(BenchConfig)}:
            raise SkelError("--baseline official: this build's benchmark report does not support it yet (BenchConfig has no official_src)")
        extra.update(baseline="official", official_src=str(official_src.expanduser().resolve()))
    cfg = BenchConfig(methods=names, device=device, batch_size=batch_size, inference_batch_size=inference_batch_size,
                      precision=precision, compile=compile, compile_backend=compile_backend, repeats=repeats, warmup=warmup, iters=iters, preset=preset,
                      dataset=dataset, flops=not no_flops, end_to_end=end_to_end, prepare=prepare, **extra)

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


def _resolve_baseline(baseline: str | None, baseline_impl: str | None, official_src: Path | None, err_console) -> str | None:
    """--baseline eager|official (and the deprecated --baseline-impl reference) -> None, 'eager' or 'official';
    a one-line SkelError for a bad combination, raised before anything is measured."""
    from skelcli.errors import SkelError

    if baseline_impl is not None:
        if baseline_impl != "reference":
            raise SkelError(f"unknown --baseline-impl {baseline_impl!r}; use --baseline eager or --baseline official")
        if baseline not in (None, "eager"):
            raise SkelError("--baseline-impl reference (deprecated) means --baseline eager; pass only --baseline")
        err_console.print("note: --baseline-impl reference is deprecated; use --baseline eager", highlight=False)
        baseline = "eager"
    if baseline is not None and baseline not in ("eager", "official"):
        raise SkelError(f"unknown --baseline {baseline!r}; use eager or official")
    if baseline == "official":
        from skelcli.bench.official import load_official_mamp

        load_official_mamp(official_src)  # a missing file or an import error surfaces now, before any measurement
    elif official_src is not None:
        raise SkelError("--official-src is only used with --baseline official")
    return baseline


@command("gpu-check")
def gpu_check(
    out: Path = typer.Option(Path("gpu_check"), "--out", help="Folder for report.json and report.md."),
    cpu_quick: bool = typer.Option(False, "--cpu-quick", help="Run every step on the CPU at toy sizes (checks the pipeline, measures nothing of a GPU)."),
    no_pytest: bool = typer.Option(False, "--no-pytest", help="Skip the `pytest -m cuda` step."),
) -> None:
    """The GPU acceptance run (`make gpu-check`): environment, `pytest -m cuda`, the benchmark in fp32 / bf16
    with and without compile, the loader and end to end on an NTU60-sized synthetic file, a one-process
    torchrun NCCL job; writes OUT/report.json and OUT/report.md. Exits 3 when there is no CUDA device.
    """
    from skelcli.bench.gpucheck import NO_CUDA_EXIT, NoCuda, run_gpu_check
    from skelcli.cli._app import err_console, fail
    from skelcli.errors import SkelError

    if out.exists() and not out.is_dir():
        raise SkelError(f"--out: {out} is a file, not a folder")

    def log(message: str) -> None:
        err_console.print(message, highlight=False)

    try:
        report = run_gpu_check(out, cpu_quick=cpu_quick, pytest_cuda=not no_pytest, log=log)
    except NoCuda as exc:
        fail(str(exc), code=NO_CUDA_EXIT)
    failed = [name for name, st in report["steps"].items() if st["status"] != "ok"]
    console.print(f"gpu-check: {len(report['steps']) - len(failed)} of {len(report['steps'])} steps ok"
                  + (f", failed: {', '.join(failed)}" if failed else "") + f"; wrote {out / 'report.json'} and {out / 'report.md'}",
                  markup=False, highlight=False)
    if failed:
        raise typer.Exit(1)
