"""glibc malloc thresholds for every command (skelcli.engine.malloc), checked in fresh processes: the
setting itself is process-wide and happens once, so it is observed from outside the test process."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys

import pytest

#: In a fresh interpreter: optionally apply the settings, then malloc 8 MiB and report how many blocks
#: glibc serves from mmap (mallinfo2().hblks) before and after, the function's answer and the environment.
PROBE = r"""
import ctypes, json, os, sys
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
applied = None
if sys.argv[1] == "apply":
    from skelcli.engine.malloc import keep_freed_memory
    applied = keep_freed_memory()
    assert keep_freed_memory() is applied  # once: a second call answers the same
elif sys.argv[1] == "command":
    from typer.testing import CliRunner
    from skelcli.cli import app
    assert CliRunner().invoke(app, ["info", "/nonexistent/x.h5"]).exit_code == 2  # an error, after the wrapper ran
before = libc.mallinfo2().hblks
block = libc.malloc(8 << 20)
after = libc.mallinfo2().hblks
print(json.dumps({"applied": applied, "mmapped_blocks": after - before,
                  "env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}}))
"""


def _probe(mode: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env={**clean, **env}, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def _glibc() -> bool:
    try:
        return sys.platform.startswith("linux") and hasattr(ctypes.CDLL(None), "mallinfo2")
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not _glibc(), reason="glibc >= 2.33 (mallinfo2) only")


def test_an_8_mib_block_comes_from_the_heap_once_applied_and_children_inherit_it():
    from skelcli.engine.malloc import ENVIRONMENT

    plain = _probe("none")
    assert plain["mmapped_blocks"] == 1 and plain["env"] == {}  # glibc's default: blocks over 128 KiB are mmapped
    tuned = _probe("apply")
    assert tuned["applied"] is True and tuned["mmapped_blocks"] == 0
    assert tuned["env"] == ENVIRONMENT  # what processes started from here read at their start
    assert ENVIRONMENT == {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


def test_every_command_applies_it():
    tuned = _probe("command")
    assert tuned["mmapped_blocks"] == 0 and set(tuned["env"]) == {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"}


@pytest.mark.parametrize("env", [{"MALLOC_ARENA_MAX": "2"}, {"MALLOC_TRIM_THRESHOLD_": "131072"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=131072"}])
def test_the_users_own_malloc_settings_are_left_alone(env):
    out = _probe("apply", **env)
    assert out["applied"] is False and out["env"] == {k: v for k, v in env.items() if k.startswith("MALLOC_")}
    assert out["mmapped_blocks"] == 1  # every setting here keeps 8 MiB blocks on mmap
