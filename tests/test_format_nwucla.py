"""`skel synth / prepare nw-ucla` (CTR-GCN's NW-UCLA all_sqe JSON, spec/formats.md 4)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import h5py
import numpy as np

from skelcli.data.formats.nwucla import CLASS_NAMES, parse_name
from skelcli.data.store import open_info, read_rejected, read_samples
from helpers import assert_one_line_error, run_cli as run



def clip(t: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    a = rng.normal(0, 0.5, (t, 20, 3))
    a[..., 2] += 3.0
    return a.tolist()


def write(folder: Path, name: str, skeletons, raw_text: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / f"{name}.json"
    p.write_text(raw_text if raw_text is not None else json.dumps({"skeletons": skeletons}))
    return p


def test_synth_prepare_verify_and_exact_samples(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "u.h5"
    r = run("synth", "nw-ucla", "--out", raw, "--classes", 3, "--per-class", 4)
    assert r.exit_code == 0, r.output
    files = sorted(raw.glob("*.json"))
    assert len(files) == 12 and all(re.fullmatch(r"a\d\d_s\d\d_e\d\d_v0[123]", p.stem) for p in files)
    r = run("prepare", "nw-ucla", "--raw", raw, "--out", out)
    assert r.exit_code == 0, r.output
    r = run("info", out, "--verify")
    assert r.exit_code == 0 and "verify: ok" in r.output, r.output

    info = open_info(out)
    assert info.topology.name == "kinect20" and info.num_classes == 10 and info.class_names == CLASS_NAMES
    views = [int(p.stem[-2:]) for p in files]
    assert info.protocols["xview"] == {"train": sum(v in (1, 2) for v in views), "test": views.count(3)}
    assert info.protocols["xview"]["test"] > 0
    assert read_rejected(out) == []
    ss = read_samples(out, np.arange(info.num_samples))
    with h5py.File(out, "r") as f:
        meta = {k: f["meta"][k][()] for k in ("subject", "camera", "replication")}
    for k, name in enumerate(ss.names):
        want = np.asarray(json.loads((raw / f"{name}.json").read_text())["skeletons"], dtype=np.float32)
        got = ss.joints[ss.offsets[k]: ss.offsets[k + 1]]
        assert got.dtype == np.float32 and got.shape == (len(want), 2, 20, 3)
        np.testing.assert_array_equal(got[:, 0], want)
        assert not got[:, 1].any()
        label, m = parse_name(name)
        assert int(ss.labels[k]) == label
        assert (meta["subject"][k], meta["camera"][k], meta["replication"][k]) == (m["subject"], m["camera"], m["replication"])


def test_label_table_rejections_and_xview(tmp_path):
    raw = tmp_path / "all_sqe"
    write(raw, "a01_s01_e00_v01", clip(5, 1))
    write(raw, "a08_s02_e01_v02", clip(6, 2))
    write(raw / "nested", "a12_s03_e02_v03", clip(7, 3))  # searched recursively
    write(raw, "a02_s09_e04_v03", clip(1, 4))  # the release's 1-frame clips are valid
    write(raw, "a11_s10_e10_v01", clip(4, 5))
    write(raw, "a07_s01_e00_v01", clip(5, 6))
    write(raw, "a10_s01_e00_v02", clip(5, 7))
    write(raw, "walk_01", clip(5, 8))
    write(raw, "a03_s01_e00_v01", None, raw_text='{"skeletons": [[[0.1, 0.2')
    write(raw, "a04_s01_e00_v01", [frame[:19] for frame in clip(5, 9)])
    write(raw, "a05_s01_e00_v01", None, raw_text=json.dumps({"joints": clip(3, 10)}))
    out = tmp_path / "u.h5"
    r = run("prepare", "nw-ucla", "--raw", raw, "--out", out)
    assert r.exit_code == 0, r.output
    r = run("info", out, "--verify")
    assert r.exit_code == 0 and "verify: ok" in r.output, r.output

    info = open_info(out)
    ss = read_samples(out, np.arange(info.num_samples))
    labels = dict(zip(ss.names, ss.labels.tolist()))
    assert labels == {"a01_s01_e00_v01": 0, "a02_s09_e04_v03": 1, "a08_s02_e01_v02": 6, "a11_s10_e10_v01": 8,
                      "a12_s03_e02_v03": 9}  # never int(XX) - 1
    k = ss.names.index("a02_s09_e04_v03")
    assert ss.offsets[k + 1] - ss.offsets[k] == 1
    np.testing.assert_array_equal(ss.joints[ss.offsets[k], 0], np.asarray(clip(1, 4)[0], dtype=np.float32))
    assert info.protocols["xview"] == {"train": 3, "test": 2}

    rej = dict(read_rejected(out))
    assert rej["a07_s01_e00_v01"].startswith("unknown action id a07")
    assert rej["a10_s01_e00_v02"].startswith("unknown action id a10")
    assert "does not match aXX_sYY_eZZ_vWW" in rej["walk_01"]
    assert "invalid JSON" in rej["a03_s01_e00_v01"]
    assert "(5, 19, 3)" in rej["a04_s01_e00_v01"] and "(T, 20, 3)" in rej["a04_s01_e00_v01"]
    assert "no 'skeletons' key" in rej["a05_s01_e00_v01"]
    assert len(rej) == 6


def test_wrong_inputs_one_line_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run("prepare", "nw-ucla", "--raw", empty, "--out", tmp_path / "a.h5")
    assert_one_line_error(r, "no .json clip file")

    odd = tmp_path / "odd"
    write(odd, "a07_s01_e00_v01", clip(3, 1))
    write(odd, "readme", clip(3, 2))
    r = run("prepare", "nw-ucla", "--raw", odd, "--out", tmp_path / "b.h5")
    assert_one_line_error(r, "no valid clip found")
    assert "unknown action id a07" in r.output

    txt = tmp_path / "list.txt"
    txt.write_text("a01_s01_e00_v01\n")
    r = run("prepare", "nw-ucla", "--raw", txt, "--out", tmp_path / "c.h5")
    assert_one_line_error(r, "not a .json file")
    assert not any(tmp_path.glob("*.h5"))
