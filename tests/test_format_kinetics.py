"""`skel synth / prepare kinetics-skeleton` (ST-GCN's Kinetics-skeleton JSON, spec/formats.md 3)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from skelcli.data.formats.kinetics import parse_clip
from skelcli.data.store import open_info, read_rejected, read_samples
from helpers import assert_one_line_error, run_cli as run

V = 18


def reference(doc: dict) -> np.ndarray:
    """What ST-GCN's feeder makes of a clip JSON, written joint by joint: (T, 2, V, 3) float32."""
    t = max(f["frame_index"] for f in doc["data"])
    out = np.zeros((t, 2, V, 3), dtype=np.float32)
    for frame in doc["data"]:
        persons = frame["skeleton"][:5]
        ranked = sorted(persons, key=lambda p: -sum(p["score"]))  # Python's sort is stable
        for m, p in enumerate(ranked[:2]):
            for j in range(V):
                s = p["score"][j]
                if s != 0:
                    out[frame["frame_index"] - 1, m, j] = (p["pose"][2 * j] - 0.5, p["pose"][2 * j + 1] - 0.5, s)
    return out


def trim(a: np.ndarray) -> np.ndarray:
    nz = np.flatnonzero(a.reshape(len(a), -1).any(axis=1))
    return a[nz[0]: nz[-1] + 1]


def person(xy: list[float], score: list[float]) -> dict:
    """A person with the given first joints, padded with missed joints to 18."""
    return {"pose": xy + [0.0] * (2 * V - len(xy)), "score": score + [0.0] * (V - len(score))}


def full_person(x: float, y: float, s: float) -> dict:
    return {"pose": [x, y] * V, "score": [s] * V}


def write_root(root: Path, clips: dict[str, dict], labels: dict[str, dict], part: str = "train",
               raw_text: dict[str, str] | None = None) -> Path:
    folder = root / f"kinetics_{part}"
    folder.mkdir(parents=True, exist_ok=True)
    for vid, doc in clips.items():
        (folder / f"{vid}.json").write_text(json.dumps(doc))
    for vid, text in (raw_text or {}).items():
        (folder / f"{vid}.json").write_text(text)
    (root / f"kinetics_{part}_label.json").write_text(json.dumps(labels))
    return root


def entry(index: int, label: str = "x", has: bool = True) -> dict:
    return {"has_skeleton": has, "label": label, "label_index": index}


def test_synth_prepare_verify_and_exact_samples(tmp_path):
    raw, out, rep = tmp_path / "raw", tmp_path / "k.h5", tmp_path / "rep.json"
    r = run("synth", "kinetics-skeleton", "--out", raw, "--classes", 3, "--per-class", 4)
    assert r.exit_code == 0, r.output
    for name in ("kinetics_train", "kinetics_val", "kinetics_train_label.json", "kinetics_val_label.json"):
        assert (raw / name).exists()
    r = run("prepare", "kinetics-skeleton", "--raw", raw, "--out", out, "--json", rep)
    assert r.exit_code == 0, r.output
    r = run("info", out, "--verify")
    assert r.exit_code == 0 and "verify: ok" in r.output, r.output

    info = open_info(out)
    assert info.topology.name == "openpose18" and info.num_classes == 3
    assert info.class_names == ["synthetic action 0", "synthetic action 1", "synthetic action 2"]
    assert info.protocols["default"] == {"train": 6, "test": 6}
    assert info.preprocessing["coord_space"] == "normalized_image_centered"
    assert read_rejected(out) == [("nobody_000", "no skeleton (has_skeleton false)")]

    ss = read_samples(out, np.arange(info.num_samples))
    assert len(ss.names) == 12
    crowded = 0
    for k, name in enumerate(ss.names):
        part = "train" if (raw / "kinetics_train" / f"{name}.json").exists() else "val"
        doc = json.loads((raw / f"kinetics_{part}" / f"{name}.json").read_text())
        got = ss.joints[ss.offsets[k]: ss.offsets[k + 1]]
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, trim(reference(doc)))
        assert int(ss.labels[k]) == doc["label_index"]
        assert got[..., :2].min() >= -0.5 and got[..., :2].max() <= 0.5
        if max(len(f["skeleton"]) for f in doc["data"]) == 3:  # the clip with a low-score third person
            crowded += 1
            assert not np.any(np.isclose(got[..., 2], 0.05))  # the ghost never survives the per-frame ranking
            assert np.all(got[:, 1, :, 2].sum(axis=1) > 1.0)  # the second real person fills slot 1
    assert crowded == 1


def test_spec_example_padded(tmp_path):
    doc = {"data": [{"frame_index": 1, "skeleton": [person([0.51, 0.22, 0.50, 0.30], [0.9, 0.8])]},
                    {"frame_index": 2, "skeleton": []}],
           "label": "abseiling", "label_index": 0}
    parsed = parse_clip(doc, V)
    assert parsed.shape == (2, 2, V, 3) and parsed.dtype == np.float32
    assert not parsed[1].any() and not parsed[0, 1].any()
    np.testing.assert_array_equal(parsed[0, 0, 0], np.float32([0.51 - 0.5, 0.22 - 0.5, 0.9]))
    np.testing.assert_array_equal(parsed[0, 0, 1], np.float32([0.50 - 0.5, 0.30 - 0.5, 0.8]))
    assert not parsed[0, 0, 2:].any()  # missed joints (score 0) stay at 0, not -0.5

    root = write_root(tmp_path / "raw", {"vid_a": doc}, {"vid_a": entry(0, "abseiling")}, part="val")
    out = tmp_path / "k.h5"
    r = run("prepare", "kinetics-skeleton", "--raw", root / "kinetics_val", "--out", out)  # a sub-folder as --raw
    assert r.exit_code == 0, r.output
    info = open_info(out)
    assert info.num_classes == 1 and info.class_names == ["abseiling"]
    assert info.protocols["default"] == {"train": 0, "test": 1}
    ss = read_samples(out, [0])
    np.testing.assert_array_equal(ss.joints, parsed[:1])  # the trailing empty frame is trimmed


def test_gaps_and_unsorted_frames():
    doc = {"data": [{"frame_index": 4, "skeleton": [full_person(0.7, 0.6, 0.5)]},
                    {"frame_index": 1, "skeleton": [full_person(0.2, 0.3, 0.9)]},
                    {"frame_index": 2, "skeleton": []}]}
    parsed = parse_clip(doc, V)
    assert parsed.shape == (4, 2, V, 3)
    np.testing.assert_array_equal(parsed[0, 0, :, 0], np.float32(0.2 - 0.5))
    np.testing.assert_array_equal(parsed[3, 0, :, 1], np.float32(0.6 - 0.5))
    assert not parsed[1].any() and not parsed[2].any()


def test_top2_per_frame_of_first_five():
    low, high, mid = full_person(0.1, 0.1, 0.3), full_person(0.2, 0.2, 0.9), full_person(0.3, 0.3, 0.6)
    best_but_sixth = full_person(0.4, 0.4, 1.0)
    doc = {"data": [{"frame_index": 1, "skeleton": [low, high, mid]},
                    {"frame_index": 2, "skeleton": [mid, low, high]},
                    {"frame_index": 3, "skeleton": [low, low, low, low, low, best_but_sixth]}]}
    parsed = parse_clip(doc, V)
    for t in (0, 1):  # per frame: highest summed score first, the lowest dropped
        np.testing.assert_array_equal(parsed[t, 0, :, 2], np.float32(0.9))
        np.testing.assert_array_equal(parsed[t, 1, :, 2], np.float32(0.6))
        np.testing.assert_array_equal(parsed[t, 1, :, 0], np.float32(0.3 - 0.5))
    np.testing.assert_array_equal(parsed[2, :, :, 2], np.float32(0.3))  # only 5 persons read a frame
    np.testing.assert_array_equal(parsed, reference(doc))


def test_rejections_are_reported_not_fatal(tmp_path):
    good = {"data": [{"frame_index": 1, "skeleton": [full_person(0.4, 0.5, 0.8)]}], "label": "a", "label_index": 0}
    mismatch = dict(good, label_index=2)
    truncated = json.dumps(good)[:40]
    labels = {"good": entry(0, "a"), "empty": entry(1, "b", has=False), "mismatch": entry(1, "b"),
              "cut": entry(0, "a"), "missing_file": entry(4, "e")}
    root = write_root(tmp_path / "raw", {"good": good, "empty": {"data": []}, "mismatch": mismatch,
                                         "unlisted": good}, labels, raw_text={"cut": truncated})
    out = tmp_path / "k.h5"
    r = run("prepare", "kinetics-skeleton", "--raw", root, "--out", out)
    assert r.exit_code == 0, r.output
    rej = dict(read_rejected(out))
    assert rej["empty"] == "no skeleton (has_skeleton false)"
    assert "label_index 2" in rej["mismatch"] and "but 1 in kinetics_train_label.json" in rej["mismatch"]
    try:
        json.loads(truncated)
    except json.JSONDecodeError as exc:
        assert str(exc) in rej["cut"]
    assert "no entry in kinetics_train_label.json" in rej["unlisted"]
    assert "missing_file" in rej
    info = open_info(out)
    assert info.num_samples == 1 and read_samples(out, [0]).names == ["good"]
    assert info.num_classes == 5 and info.class_names is None  # index 2 and 3 have no name


def test_wrong_inputs_one_line_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run("prepare", "kinetics-skeleton", "--raw", empty, "--out", tmp_path / "a.h5")
    assert_one_line_error(r, "no kinetics_train/ or kinetics_val/ folder")

    nolabel = tmp_path / "nolabel"
    (nolabel / "kinetics_train").mkdir(parents=True)
    (nolabel / "kinetics_train" / "v.json").write_text(json.dumps({"data": []}))
    r = run("prepare", "kinetics-skeleton", "--raw", nolabel, "--out", tmp_path / "b.h5")
    assert_one_line_error(r, "no label file kinetics_train_label.json")

    noclips = write_root(tmp_path / "noclips", {}, {"v": entry(0)})
    r = run("prepare", "kinetics-skeleton", "--raw", noclips, "--out", tmp_path / "c.h5")
    assert_one_line_error(r, "no clip .json file")

    badlabel = write_root(tmp_path / "badlabel", {"v": {"data": []}}, {})
    (badlabel / "kinetics_train_label.json").write_text("{not json")
    r = run("prepare", "kinetics-skeleton", "--raw", badlabel, "--out", tmp_path / "d.h5")
    assert_one_line_error(r, "cannot read label file")

    r = run("prepare", "kinetics-skeleton", "--raw", noclips, "--topology", "kinect20", "--out", tmp_path / "e.h5")
    assert_one_line_error(r, "2-D poses with a score")
    assert not any(tmp_path.glob("*.h5"))


def test_only_rejected_clips_is_an_error(tmp_path):
    root = write_root(tmp_path / "raw", {"v": {"data": []}}, {"v": entry(0, has=False)})
    r = run("prepare", "kinetics-skeleton", "--raw", root, "--out", tmp_path / "k.h5")
    assert_one_line_error(r, "no valid clip found")
