"""The Typer app and the helpers every command module shares.

Command modules (``skelcli/cli/<area>.py``) register themselves with :func:`command`; each command
function stays thin: parse -> settings -> call an importable function -> render. Heavy imports
(torch, h5py, sklearn) happen inside the command body so ``skel --help`` stays fast.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
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


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def check_out_dir(path: Path, option: str = "--out") -> Path:
    """SkelError naming ``option`` unless ``path`` is, or can be created as, a writable folder.

    Creates nothing (a command that fails later leaves no empty folder behind): ``path`` must be a
    folder or not exist, and its nearest existing ancestor must be a writable folder.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SkelError(f"{option} {path} exists and is not a folder")
    base = _nearest_existing(path)
    if not base.is_dir():
        raise SkelError(f"{option} {path}: cannot create a folder there, {base} is a file")
    if not os.access(base, os.W_OK | os.X_OK):
        raise SkelError(f"{option} {path}: folder {base} is not writable")
    return path


def check_out_file(path: Path | None, option: str) -> Path | None:
    """SkelError naming ``option`` unless the file ``path`` (written at the end, e.g. ``--json``) can be
    written: not a folder, and its folder exists or can be created. None passes."""
    if path is None:
        return None
    path = Path(path)
    if path.is_dir():
        raise SkelError(f"{option} {path} is a folder; give a file name")
    base = _nearest_existing(path.parent)
    if not base.is_dir():
        raise SkelError(f"{option} {path}: cannot write there, {base} is a file")
    if not os.access(base, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise SkelError(f"{option} {path}: not writable")
    return path


def _one_line_validation(exc) -> str:
    parts = []
    for e in exc.errors():
        loc = ".".join(str(p) for p in e.get("loc", ()) if p != "__root__")
        parts.append(f"{loc}: {e.get('msg')}" if loc else str(e.get("msg")))
    return "invalid settings: " + "; ".join(parts)


def command(name: str, **kwargs) -> Callable:
    """Register a command on the app; turn SkelError / pydantic errors into a one-line exit 2."""

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kw):
            from pydantic import ValidationError

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

        return app.command(name, **kwargs)(wrapper)

    return decorate


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
