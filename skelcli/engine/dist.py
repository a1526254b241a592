"""torch.distributed helpers: torchrun environment, rank-0 duties, ordered all-gathers.

Launch with ``torchrun --nproc-per-node N -m skelcli pretrain ...`` (environment variables RANK,
WORLD_SIZE, LOCAL_RANK; never ``--local_rank``). NCCL on CUDA, gloo on CPU, so every path is
testable without a GPU.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as tdist


@dataclass
class DistContext:
    """Where this process sits in the job. ``world_size == 1`` means a plain single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(preference: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> the local CUDA device when available, else CPU; ``cpu`` / ``cuda`` / ``cuda:N`` as asked.

    Asking for CUDA on a machine without it is a one-line SkelError.
    """
    from skelcli.errors import SkelError

    name = str(preference)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.split(":")[0] not in ("cpu", "cuda"):
        raise SkelError(f"unknown device {name!r}; use auto, cpu or cuda")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SkelError("device 'cuda' requested but torch sees no CUDA device")
        return torch.device(name if ":" in name else f"cuda:{local_rank}")
    return torch.device("cpu")


#: Precisions a run may ask for (``runtime.precision``, ``FinetuneSettings.precision``).
REQUESTABLE_PRECISIONS = ("auto", "fp32", "bf16")
#: Precisions a recipe may name (a method's ``recipe_precision``): what the paper's code trains in.
RECIPE_PRECISIONS = ("fp32", "bf16", "fp16")


def resolve_precision(requested: str, device: torch.device | str, recipe: str, bf16_supported: bool | None = None) -> str:
    """The precision a run actually uses: ``"fp32"`` or ``"bf16"`` (bf16 autocast). The one rule,
    shared by pretraining and fine-tuning:

    * ``fp32`` / ``bf16`` asked explicitly: that, on any device (CPU autocast supports bf16).
    * ``auto`` on CPU: ``fp32``, whatever the recipe.
    * ``auto`` on CUDA: the recipe's precision. ``fp32`` recipes (MAE, MAMP, GFP, MAMP fine-tuning)
      stay fp32. ``bf16`` and ``fp16`` recipes (SLiM trains in fp16 AMP with a grad scaler) run bf16
      autocast when the GPU supports bf16, else fp32: bf16 has fp32's exponent range, so it needs no
      loss scaling, and the engine has no GradScaler, which fp16 autocast needs for its backward.
    * ``fp16`` asked explicitly is refused for the same reason (one-line SkelError).

    device: a torch.device or a device type ("cpu", "cuda", "cuda:1"), so the table is testable
    without a GPU. bf16_supported: None = ask torch (``torch.cuda.is_bf16_supported()``).
    """
    from skelcli.errors import SkelError

    if recipe not in RECIPE_PRECISIONS:
        raise SkelError(f"unknown recipe precision {recipe!r}; use one of {', '.join(RECIPE_PRECISIONS)}")
    if requested == "fp16":
        raise SkelError("precision 'fp16' is not supported (the engine has no GradScaler for fp16 autocast); use bf16, fp32 or auto")
    if requested not in REQUESTABLE_PRECISIONS:
        raise SkelError(f"unknown precision {requested!r}; use auto, fp32 or bf16")
    if requested != "auto":
        return requested
    device_type = device.type if isinstance(device, torch.device) else str(device).split(":")[0]
    if device_type != "cuda" or recipe == "fp32":
        return "fp32"
    if bf16_supported is None:
        bf16_supported = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return "bf16" if bf16_supported else "fp32"


def autocast_context(device: torch.device, precision: str, recipe: str = "fp32"):
    """bf16 autocast when :func:`resolve_precision` gives ``bf16`` (``recipe`` decides ``auto`` on CUDA);
    plain fp32 otherwise."""
    from contextlib import nullcontext

    if resolve_precision(precision, device, recipe) == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def init_distributed(device: str = "auto", timeout_s: int = 1800) -> DistContext:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1); otherwise a no-op."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local)
    if world <= 1:
        return DistContext(0, 1, 0, dev, None)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not tdist.is_initialized():
        tdist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    register_worker(rank)
    return DistContext(rank, world, local, dev, backend)


def context_of_group(device: torch.device | None = None) -> DistContext | None:
    """The context of an already initialised process group (None when there is none): for library
    code such as feature extraction that runs inside a torchrun job started elsewhere."""
    if not (tdist.is_available() and tdist.is_initialized()):
        return None
    backend = tdist.get_backend()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None or (backend == "nccl" and device.type != "cuda"):
        device = torch.device("cuda", local) if backend == "nccl" else torch.device("cpu")
    return DistContext(tdist.get_rank(), tdist.get_world_size(), local, device, backend)


def is_main_process() -> bool:
    """True outside torch.distributed and on rank 0 inside it: the one process that writes files."""
    return not (tdist.is_available() and tdist.is_initialized()) or tdist.get_rank() == 0


def shutdown(ctx: DistContext) -> None:
    if ctx.distributed and tdist.is_initialized():
        tdist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        tdist.barrier()


def all_reduce_mean(value: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Mean of a tensor over all processes (a copy; the input is left unchanged)."""
    if not ctx.distributed:
        return value
    out = value.detach().clone()
    tdist.all_reduce(out, op=tdist.ReduceOp.SUM)
    return out / ctx.world_size


def gather_rows_in_order(rows: torch.Tensor, index: torch.Tensor, total: int, ctx: DistContext) -> torch.Tensor:
    """Reassemble per-rank rows into the original order, each sample exactly once.

    rows: (n_local, ...) results for the dataset positions ``index`` (n_local,) this rank handled
    (sharded as ``positions[rank::world]`` after padding, so some positions may repeat). Returns
    (total, ...) on every rank, row i = the result for position i.
    """
    if not ctx.distributed:
        out = rows.new_zeros((total,) + tuple(rows.shape[1:]))
        out[index.to(rows.device)] = rows
        return out
    n = torch.tensor([rows.shape[0]], device=rows.device)
    sizes = [torch.zeros_like(n) for _ in range(ctx.world_size)]
    tdist.all_gather(sizes, n)
    longest = int(max(s.item() for s in sizes))
    pad_rows = rows.new_zeros((longest,) + tuple(rows.shape[1:]))
    pad_rows[: rows.shape[0]] = rows
    pad_index = torch.full((longest,), -1, dtype=torch.long, device=rows.device)
    pad_index[: index.shape[0]] = index.to(rows.device)
    all_rows = [torch.zeros_like(pad_rows) for _ in range(ctx.world_size)]
    all_index = [torch.zeros_like(pad_index) for _ in range(ctx.world_size)]
    tdist.all_gather(all_rows, pad_rows)
    tdist.all_gather(all_index, pad_index)
    out = rows.new_zeros((total,) + tuple(rows.shape[1:]))
    for r, ix in zip(all_rows, all_index):
        keep = ix >= 0
        out[ix[keep]] = r[keep]
    return out


def all_gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (pickled; small objects only)."""
    if not ctx.distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    tdist.all_gather_object(out, obj)
    return out


def any_rank(flag: bool, ctx: DistContext) -> bool:
    """True on every rank when ``flag`` is true on at least one (a SUM all-reduce of one number)."""
    if not ctx.distributed:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return bool(t.item() > 0)


@dataclass
class BatchPlan:
    """How a global batch is split: ``global_batch = world_size * accumulation * micro_batch``.

    per_process = global / world samples per process and optimizer step, processed as
    ``accumulation`` micro-batches of ``micro_batch`` (gradients summed with weight 1/accumulation).
    """

    global_batch: int
    world_size: int
    per_process: int
    micro_batch: int
    accumulation: int

    def describe(self) -> str:
        return (f"global batch {self.global_batch} = {self.world_size} process(es) x {self.accumulation} accumulation "
                f"step(s) x {self.micro_batch} per micro-batch ({self.per_process} per process and step)")


def plan_batches(global_batch: int, world_size: int, max_per_device_batch: int | None = None) -> BatchPlan:
    """Split ``global_batch`` over ``world_size`` processes, accumulating gradients when the
    per-process share exceeds ``max_per_device_batch``.

    The global batch (and so the learning rate and the optimisation) stays the same whatever the
    process count (spec/ecosystem.md section 5: keep the global batch fixed, use accumulation).
    The accumulation count is the smallest ``a >= ceil(per_process / max)`` that divides the
    per-process share, so every micro-batch has the same size (equal weights in the mean).
    """
    from skelcli.errors import SkelError

    if global_batch < 1 or world_size < 1:
        raise SkelError(f"batch size ({global_batch}) and process count ({world_size}) must be >= 1")
    if global_batch % world_size:
        raise SkelError(
            f"global batch {global_batch} is not divisible by {world_size} processes; pick a batch size that is a multiple "
            "of the process count (the global batch is kept fixed, never rounded)"
        )
    per = global_batch // world_size
    accumulation = 1
    if max_per_device_batch is not None:
        if max_per_device_batch < 1:
            raise SkelError(f"max per-device batch must be >= 1, got {max_per_device_batch}")
        accumulation = -(-per // max_per_device_batch)
        while per % accumulation:
            accumulation += 1
    return BatchPlan(global_batch, world_size, per, per // accumulation, accumulation)


def quiet_non_main(ctx: DistContext) -> None:
    """Silence the shared rich console on ranks other than 0 (rank-0 console, DESIGN.md)."""
    if ctx.distributed and not ctx.is_main:
        from skelcli.cli._app import console

        console.quiet = True


#: Set by ``skel pretrain --nproc N`` for its workers: the folder where each worker leaves ``rank-R.pid``.
LAUNCHED_ENV = "SKEL_LAUNCH_DIR"


def register_worker(rank: int) -> None:
    """Under ``--nproc``, record this worker's PID so the launcher can forward signals to it."""
    folder = os.environ.get(LAUNCHED_ENV)
    if folder:
        Path(folder, f"rank-{rank}.pid").write_text(str(os.getpid()))


def worker_exit(code: int, rank: int) -> int:
    """The exit code a finished command should return. Under ``--nproc`` a worker records ``code`` for the
    launcher and returns 0: a non-zero worker makes torchrun print its ChildFailedError traceback."""
    folder = os.environ.get(LAUNCHED_ENV)
    if not folder or code == 0:
        return code
    Path(folder, f"rank-{rank}.exit").write_text(str(code))
    return 0


def relaunch_with_torchrun(nproc: int, argv: list[str] | None = None) -> None:
    """Run ``python -m torch.distributed.run --standalone --nproc-per-node N -m skelcli ...`` and exit with its outcome.

    ``argv`` is the command line after the program name with the ``--nproc`` option removed. Used by
    ``skel pretrain --nproc N`` as a convenience. torchrun runs in its own session; SIGINT / SIGTERM
    reaching this launcher are forwarded to the workers themselves (torchrun, signalled directly, stops
    its workers and exits 1 with a traceback). The workers checkpoint, record their exit code
    (:func:`worker_exit`) and exit 0, torchrun ends quietly, and this process exits with the recorded code
    (130 / 143 like a single-process run, 3 after a collapse stop).
    """
    import signal
    import subprocess
    import tempfile
    import time

    args = list(sys.argv[1:] if argv is None else argv)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "skelcli", *args]
    sys.stdout.flush()
    sys.stderr.flush()
    received: list[int] = []
    forwarded: set[int] = set()

    def handle(signum, frame) -> None:  # noqa: ANN001
        received.append(signum)
        forwarded.clear()  # a second Ctrl-C goes to every worker again

    recorded: list[int] = []
    with tempfile.TemporaryDirectory(prefix="skel-launch-") as folder:
        previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            child = subprocess.Popen(cmd, env={**os.environ, LAUNCHED_ENV: folder}, start_new_session=True)
            while child.poll() is None:
                if received:
                    for f in Path(folder).glob("rank-*.pid"):
                        pid = int(f.read_text() or 0)
                        if pid and pid not in forwarded:
                            try:
                                os.kill(pid, received[-1])
                            except ProcessLookupError:
                                pass
                            forwarded.add(pid)
                time.sleep(0.05)
        finally:
            for sig, h in previous.items():
                signal.signal(sig, h)
        recorded = [int(f.read_text() or 0) for f in sorted(Path(folder).glob("rank-*.exit"))]
    code = child.returncode
    if code == 0 and recorded:  # the workers' own code (e.g. 143 after a signal, 3 after a collapse stop)
        code = max(recorded)
    elif received and code == 0:
        code = 130 if received[-1] == signal.SIGINT else 143
    raise SystemExit(code)


def strip_option(argv: list[str], name: str) -> list[str]:
    """Remove ``--name V`` / ``--name=V`` from an argument list."""
    out: list[str] = []
    skip = False
    for i, a in enumerate(argv):
        if skip:
            skip = False
            continue
        if a == name:
            skip = True
            continue
        if a.startswith(name + "="):
            continue
        out.append(a)
    return out
