"""`skel prepare` / `skel info` end to end through CliRunner, including every bad-input case."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from skelcli.cli import app
from skelcli.data.ntu import format_skeleton
from skelcli.data.store import open_info, read_rejected, read_samples

FIXTURES = Path(__file__).parent / "fixtures"
runner = CliRunner()


def body(n: int, seed: int, dx: float = 0.0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    base = np.zeros((25, 3))
    base[:, 0] = np.linspace(-0.2, 0.2, 25) + dx
    base[:, 1] = np.linspace(-0.8, 0.8, 25)
    base[:, 2] = 3.0
    return [base + 0.05 * np.sin(0.3 * t + seed) + 0.001 * rng.standard_normal((25, 3)) for t in range(n)]


def write_sample(d: Path, name: str, n: int = 14, two: bool = False, seed: int = 0) -> Path:
    frames = [[("11", j)] for j in body(n, seed)]
    if two:
        for k, j in enumerate(body(n, seed + 1, dx=1.0)):
            frames[k].append(("22", j))
    p = d / f"{name}.skeleton"
    p.write_text(format_skeleton(frames))
    return p


@pytest.fixture
def raw(tmp_path) -> Path:
    d = tmp_path / "raw"
    (d / "sub").mkdir(parents=True)
    write_sample(d, "S001C001P001R001A001", seed=1)
    write_sample(d, "S001C002P003R001A002", seed=2)
    write_sample(d / "sub", "S002C003P002R002A050", two=True, seed=3)
    write_sample(d, "S018C001P045R001A061", seed=4)  # NTU120 only
    return d


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_prepare_then_info_end_to_end(raw, tmp_path):
    out = tmp_path / "ntu60.h5"
    rep = tmp_path / "rep.json"
    r = run("prepare", "ntu60", "--raw", raw, "--out", out, "--workers", 1, "--json", rep)
    assert r.exit_code == 0, r.output
    assert "samples kept" in r.output
    report = json.loads(rep.read_text())
    assert report["kept"] == 3 and report["skipped_other_dataset"] == 1 and report["status"] == "written"
    info = open_info(out)
    assert info.num_samples == 3 and info.num_classes == 60 and info.dataset == "ntu60"
    assert info.protocols["xsub"] == {"train": 2, "test": 1}  # P001, P002 train; P003 test
    assert info.protocols["xview"] == {"train": 2, "test": 1}
    assert info.preprocessing["settings"]["second_actor"] == "zeros"
    ss = read_samples(out, [0, 1, 2])
    assert ss.names == ["S001C001P001R001A001", "S001C002P003R001A002", "S002C003P002R002A050"]
    assert list(ss.labels) == [0, 1, 49]
    np.testing.assert_allclose(ss.joints[0, 0, 1], 0, atol=1e-6)  # translated to SpineMid
    with h5py.File(out, "r") as f:
        assert list(f["meta"]["num_actors"][()]) == [1, 1, 2]

    r = run("info", out, "--verify")
    assert r.exit_code == 0, r.output
    assert "verify: ok" in r.output and "xsub" in r.output
    r = run("info", out, "--json")
    assert r.exit_code == 0
    summary = json.loads(r.output)
    assert summary["num_samples"] == 3 and summary["frames"]["min"] == 14 and summary["two_actor_samples"] == 1


def test_rerun_is_noop_and_force_rebuilds(raw, tmp_path):
    out = tmp_path / "a.h5"
    assert run("prepare", "ntu60", "--raw", raw, "--out", out, "--workers", 1).exit_code == 0
    mtime = out.stat().st_mtime_ns
    r = run("prepare", "ntu60", "--raw", raw, "--out", out, "--workers", 1)
    assert r.exit_code == 0 and "up-to-date" in r.output
    assert out.stat().st_mtime_ns == mtime
    r = run("prepare", "ntu60", "--raw", raw, "--out", out, "--workers", 1, "--force")
    assert r.exit_code == 0 and "(written)" in r.output
    assert out.stat().st_mtime_ns != mtime
    # a changed setting is a different input: rebuilt without --force
    r = run("prepare", "ntu60", "--raw", raw, "--out", out, "--workers", 1, "--second-actor", "copy")
    assert r.exit_code == 0 and "(written)" in r.output
    assert open_info(out).preprocessing["settings"]["second_actor"] == "copy"


def test_ntu120_two_raw_dirs_parallel_and_duplicates(raw, tmp_path):
    second = tmp_path / "raw2"
    second.mkdir()
    write_sample(second, "S032C001P106R002A120", seed=9)
    out = tmp_path / "ntu120.h5"
    r = run("prepare", "ntu120", "--raw", raw, "--raw", second, "--out", out, "--workers", 2)
    assert r.exit_code == 0, r.output
    info = open_info(out)
    assert info.num_samples == 5 and info.num_classes == 120
    assert info.preprocessing["settings"]["second_actor"] == "copy"
    assert set(info.protocols) == {"xsub", "xset"}
    ss = read_samples(out, [0])
    np.testing.assert_array_equal(ss.joints[:, 1], ss.joints[:, 0])  # NTU120 copies actor 1
    shutil.copy(raw / "S001C001P001R001A001.skeleton", second)
    r = run("prepare", "ntu120", "--raw", raw, "--raw", second, "--out", tmp_path / "dup.h5")
    assert r.exit_code != 0 and "duplicate sample S001C001P001R001A001" in r.output


def test_bad_inputs_reported_counted_skipped(raw, tmp_path, monkeypatch):
    good = (FIXTURES / "tiny.skeleton").read_text()
    (raw / "S001C001P004R001A003.skeleton").write_text(good[:700])  # truncated
    lines = good.split("\n")
    lines[6] = lines[6].replace("3.002", "3.0x2")
    (raw / "S001C001P005R001A004.skeleton").write_text("\n".join(lines))  # non-numeric
    lines = good.split("\n")
    lines[3] = "24"
    (raw / "S001C001P006R001A005.skeleton").write_text("\n".join(lines))  # wrong joint count
    (raw / "S001C001P007R001A006.skeleton").write_text("")  # empty
    (raw / "S001C001P008R001A007.skeleton").write_text(format_skeleton([[], []]))  # no body in any frame
    (raw / "notes.skeleton").write_text(good)  # unexpected file name
    (raw / "readme.txt").write_text("hello")
    locked = raw / "locked"
    locked.mkdir()
    write_sample(locked, "S001C001P009R001A008")
    if os.geteuid() == 0:  # root reads anything: simulate the permission error os.walk would get
        real = os.scandir

        def scandir(path="."):
            if Path(path) == locked:
                raise PermissionError(13, "Permission denied", str(path))
            return real(path)

        monkeypatch.setattr(os, "scandir", scandir)
    else:
        locked.chmod(0)
    out = tmp_path / "bad.h5"
    try:
        r = run("prepare", "ntu60", "--raw", raw, "--out", out, "--workers", 1)
    finally:
        locked.chmod(0o755)
    assert r.exit_code == 0, r.output
    assert open_info(out).num_samples == 3  # every good sample is still written
    rej = dict(read_rejected(out))
    assert "truncated" in rej["S001C001P004R001A003"]
    assert "non-numeric" in rej["S001C001P005R001A004"]
    assert "joint count 24" in rej["S001C001P006R001A005"]
    assert rej["S001C001P007R001A006"] == "empty file"
    assert rej["S001C001P008R001A007"] == "no body in any frame"
    assert any("unexpected file name" in v for k, v in rej.items() if k.endswith("notes.skeleton"))
    assert any("unexpected file name" in v for k, v in rej.items() if k.endswith("readme.txt"))
    assert any("unreadable directory" in v for k, v in rej.items() if k.endswith("locked"))
    assert "rejected: truncated" in r.output and "rejected: empty file" in r.output


def test_missing_list_cross_check(raw, tmp_path):
    (raw / "S001C001P007R001A006.skeleton").write_text(format_skeleton([[], []]))
    lst = tmp_path / "missing.txt"
    lst.write_text("Samples with missing skeletons:\n\nS001C001P001R001A001\nS001C001P010R001A001\n")
    rep = tmp_path / "r.json"
    r = run("prepare", "ntu60", "--raw", raw, "--out", tmp_path / "m.h5", "--workers", 1, "--missing-list", lst, "--json", rep)
    assert r.exit_code == 0, r.output
    m = json.loads(rep.read_text())["missing_list"]
    assert m["listed"] == 2 and m["listed_not_in_raw"] == 1
    assert m["listed_but_parsed_ok"] == ["S001C001P001R001A001"]
    assert m["rejected_not_listed"] == ["S001C001P007R001A006"]
    assert open_info(tmp_path / "m.h5").num_samples == 2  # the listed sample is excluded (reference behaviour)


def test_nothing_valid_and_missing_raw(tmp_path):
    d = tmp_path / "raw"
    d.mkdir()
    (d / "S001C001P001R001A001.skeleton").write_text("")
    out = tmp_path / "x.h5"
    r = run("prepare", "ntu60", "--raw", d, "--out", out)
    assert r.exit_code != 0 and "no valid ntu60 sample" in r.output
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["raw"]
    r = run("prepare", "ntu60", "--raw", tmp_path / "nope", "--out", out)
    assert r.exit_code != 0 and "does not exist" in r.output
    assert "Traceback" not in r.output


def test_info_on_foreign_files(tmp_path):
    txt = tmp_path / "a.h5"
    txt.write_text("not hdf5")
    r = run("info", txt)
    assert r.exit_code != 0 and "not an HDF5 file" in r.output
    p = tmp_path / "b.h5"
    with h5py.File(p, "w") as f:
        f.attrs["schema"] = "skelcli.skeletons"
        f.attrs["schema_version"] = 99
    r = run("info", p)
    assert r.exit_code != 0 and "schema_version 99" in r.output and "newer" in r.output


def test_pku_cli(tmp_path):
    out = tmp_path / "pku.h5"
    r = run("prepare", "pku-mmd-v1", "--raw", FIXTURES / "pku", "--out", out, "--workers", 1)
    assert r.exit_code == 0, r.output
    info = open_info(out)
    assert info.num_classes == 51 and info.num_samples == 3 and info.preprocessing["centered"] is False
    r = run("prepare", "pku-mmd-v1", "--raw", FIXTURES / "pku", "--out", out, "--second-actor", "copy")
    assert r.exit_code != 0 and "ntu60/ntu120 only" in r.output


def test_info_verify_finds_problems(raw, tmp_path):
    out = tmp_path / "v.h5"
    assert run("prepare", "ntu60", "--raw", raw, "--out", out, "--workers", 1).exit_code == 0
    with h5py.File(out, "a") as f:
        del f["splits"]["xsub"]["test"]
        f["splits"]["xsub"]["test"] = np.array([0, 99], dtype=np.int32)
        f["joints"][3, 0, 0, 0] = np.nan
    r = run("info", out, "--verify")
    assert r.exit_code == 2  # one-line "verify found N problem(s)" error
    assert "xsub/test: index out of range" in r.output and "non-finite" in r.output


def test_ntu_stores_carry_the_official_action_names(data_file):
    """label 0 = A001 "drink water" ... label 59 = A060 (shahroudy/NTURGB-D); the tiny file's classes are named."""
    from skelcli.data.actions import action_names
    from skelcli.data.store import open_info

    info = open_info(data_file)
    assert info.class_names == action_names("ntu60") and len(info.class_names) == 60
    assert info.class_names[0] == "drink water" and info.class_names[49] == "punching/slapping other person"
    assert action_names("ntu120")[60] == "put on headphone" and action_names("pku-mmd-v2")[50] == "writing"
    assert action_names("kinetics") is None
