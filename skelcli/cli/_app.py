"""The Typer app and the helpers every command module shares.

Command modules (``skelcli/cli/<area>.py``) register themselves with :func:`command`; each command
function stays thin: parse -> settings -> call an importable function -> render. Heavy imports
(torch, h5py, sklearn) happen inside the command body so ``skel --help`` stays fast.
"""

from __future__ import annotations

import functools
import os
from typing import Callable

import typer
from rich.console import Console
from rich.markup import escape

from skelcli import __version__
from skelcli.errors import SkelError

#: Width for output that is not a terminal (a log file, a pipe, CI), where rich would cut tables to 80
#: columns (or to an exported COLUMNS); the environment variable SKEL_WIDTH overrides it.
LOG_WIDTH = 200


def _console(stderr: bool = False) -> Console:
    """A console; written to a file or pipe it is SKEL_WIDTH (default LOG_WIDTH) columns wide."""
    probe = Console(stderr=stderr)
    if probe.is_terminal:
        return probe
    try:
        width = max(40, int(os.environ.get("SKEL_WIDTH", LOG_WIDTH)))
    except ValueError:
        width = LOG_WIDTH
    return Console(stderr=stderr, width=width)


console = _console()
err_console = _console(stderr=True)

app = typer.Typer(
    name="skel",
    help=(
        "Self-supervised skeleton-based action recognition: prepare NTU RGB+D / PKU-MMD data, "
        "pretrain (mae, mamp, gfp, slim), probe, fine-tune, retrieve, benchmark.\n\n"
        "Quick look: skel demo --out demo_out"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def fail(message: str, code: int = 2) -> None:
    """Print a one-line error and exit non-zero. The message is printed literally (``[method]`` stays
    ``[method]``: it is escaped, not read as console markup)."""
    err_console.print(f"[bold red]error:[/] {escape(str(message))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _one_line_validation(exc) -> str:
    parts = []
    for e in exc.errors():
        loc = ".".join(str(p) for p in e.get("loc", ()) if p != "__root__")
        parts.append(f"{loc}: {e.get('msg')}" if loc else str(e.get("msg")))
    return "invalid settings: " + "; ".join(parts)


def command(name: str, *, group: typer.Typer | None = None, **kwargs) -> Callable:
    """Register a command on the app (or on a sub-command ``group`` such as ``skel viz``); turn
    SkelError / pydantic errors into a one-line exit 2. Every command runs with glibc's malloc
    thresholds raised (:func:`skelcli.engine.malloc.keep_freed_memory`)."""

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kw):
            from pydantic import ValidationError

            from skelcli.engine.malloc import keep_freed_memory

            keep_freed_memory()
            try:
                return fn(*args, **kw)
            except SkelError as exc:
                fail(str(exc))
            except ValidationError as exc:
                fail(_one_line_validation(exc))
            except FileNotFoundError as exc:
                fail(f"file not found: {exc.filename or exc}")
            except (PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError) as exc:
                where = f": {exc.filename}" if exc.filename else ""
                fail(f"{exc.strerror or exc}{where}")
            except KeyboardInterrupt:
                fail("interrupted", code=130)

        return (group or app).command(name, **kwargs)(wrapper)

    return decorate


def missing_extra(package: str, extra: str, what: str) -> SkelError:
    """The one-line error for an optional dependency that is not installed."""
    return SkelError(f"{what} needs {package}: pip install 'skelcli[{extra}]' (or pip install {package})")


def _version(value: bool) -> None:
    if value:
        console.print(f"skel {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """skel: self-supervised skeleton action recognition."""
