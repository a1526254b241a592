"""Output locations, shared by the commands and the run folders: a path that cannot be written is refused
before any work, with a one-line :class:`~skelcli.errors.SkelError` naming the option; files are replaced
atomically (:func:`atomic_write`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, Callable

from skelcli.errors import SkelError


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
    if not os.access(base, os.W_OK | os.X_OK):
        raise SkelError(f"{option} {path}: folder {base} is not writable")
    if path.exists() and not os.access(path, os.W_OK):
        raise SkelError(f"{option} {path}: the file is not writable")
    return path


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> Path:
    """Write ``path`` through ``write(binary file)`` on a temporary file in the same folder, fsync, rename.

    Readers see the old file or the new one; a failure (disk full, interruption) leaves the old one untouched.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_json_object(path: Path, hint: str = "") -> dict:
    """The JSON object in ``path``; SkelError naming the file (and ``hint``, what to do) when it is damaged."""
    import json

    path = Path(path)
    tail = f"; {hint}" if hint else ""
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SkelError(f"{path} is damaged ({type(exc).__name__}: {exc}){tail}") from None
    if not isinstance(data, dict):
        raise SkelError(f"{path} is damaged (not a JSON object){tail}")
    return data


__all__ = ["check_out_dir", "check_out_file", "atomic_write", "read_json_object"]
