"""`skel` command line: the Typer app plus every command module that registers on it."""

from __future__ import annotations

import importlib
import pkgutil

from skelcli.cli._app import app, console, err_console, fail  # noqa: F401

# Each module in this package registers its commands on `app` at import time.
for _mod in sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")):
    importlib.import_module(f"{__name__}.{_mod}")


def main() -> None:
    """Console-script entry point."""
    app()
