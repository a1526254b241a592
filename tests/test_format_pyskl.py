"""`skel synth / prepare pyskl` (pyskl / mmaction2 annotation pickles, spec/formats.md 1)."""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest

from skelcli.data.actions import action_names
from skelcli.data.formats.procedural import procedural_clips
from skelcli.data.formats.pyskl import build_splits, load_pickle, map_split_key, ntu_meta
from skelcli.data.store import open_info, read_rejected, read_samples
from skelcli.errors import SkelError
from skelcli.topology import get_topology
from helpers import assert_one_line_error, run_cli as run



def dump(path: Path, obj) -> Path:
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=2)  # mmcv's default protocol: bytes via _codecs.encode
    return path


def samples(h5: Path) -> dict[str, tuple[np.ndarray, int]]:
    info = open_info(h5)
    ss = read_samples(h5, np.arange(info.num_samples))
    return {n: (ss.joints[ss.offsets[k]: ss.offsets[k + 1]], int(ss.labels[k])) for k, n in enumerate(ss.names)}


def prepare_ok(raw: Path, out: Path, *extra) -> str:
    r = run("prepare", "pyskl", "--raw", raw, "--out", out, *extra)
    assert r.exit_code == 0, r.output
    v = run("info", out, "--verify")
    assert v.exit_code == 0 and "verify: ok" in v.output, v.output
    return r.output


def rng_f16(shape, seed):
    return np.random.default_rng(seed).normal(0, 1, shape).astype(np.float16)


# ----------------------------------------------------------------------------- synth round trips


def test_synth_2d_prepare_verify_exact(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "p.h5"
    r = run("synth", "pyskl", "--out", raw, "--classes", 3, "--per-class", 4)
    assert r.exit_code == 0, r.output
    pkl = raw / "synthetic_coco17.pkl"
    assert sorted(raw.iterdir()) == [pkl]
    prepare_ok(pkl, out)

    with open(pkl, "rb") as fh:
        doc = pickle.load(fh)
    assert set(doc) == {"split", "annotations"} and set(doc["split"]) == {"xsub_train", "xsub_val"}
    a0 = doc["annotations"][0]
    assert a0["img_shape"] == a0["original_shape"] == (1080, 1920)
    assert a0["keypoint"].shape[::3] == (1, 2) and a0["keypoint_score"].shape == a0["keypoint"].shape[:3]

    info = open_info(out)
    assert info.topology.name == "coco17" and info.dataset == "synthetic_coco17" and info.num_classes == 3
    assert info.class_names is None and read_rejected(out) == []
    clips = procedural_clips(get_topology("coco17"), classes=3, per_class=4, seed=0)
    got = samples(out)
    assert sorted(got) == sorted(c.name for c in clips)
    assert info.protocols["xsub"] == {"train": sum(c.split == "train" for c in clips),
                                      "test": sum(c.split == "test" for c in clips)}
    for c in clips:
        joints, label = got[c.name]
        # the writer's documented mapping: u = 960 + 400 x, v = 540 - 400 y, (0, 0) where score is 0
        x, y, s = (c.joints[:, 0, :, i].astype(np.float64) for i in range(3))
        want = np.stack([(960 + 400 * x).astype(np.float32), (540 - 400 * y).astype(np.float32),
                         s.astype(np.float32)], axis=-1)
        want[s <= 0, :2] = 0
        assert joints.dtype == np.float32 and joints.shape == (len(c.joints), 2, 17, 3)
        np.testing.assert_array_equal(joints[:, 0], want)
        assert not joints[:, 1].any() and label == c.label


def test_synth_3d_prepare_exact(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "p.h5"
    r = run("synth", "pyskl", "--out", raw, "--topology", "ntu25", "--classes", 2, "--per-class", 3)
    assert r.exit_code == 0, r.output
    pkl = raw / "synthetic_ntu25.pkl"
    prepare_ok(pkl, out)  # ntu25 inferred from (V, C) = (25, 3)
    assert open_info(out).topology.name == "ntu25"
    got = samples(out)
    clips = procedural_clips(get_topology("ntu25"), classes=2, per_class=3, seed=0)
    assert len(got) == len(clips)
    for c in clips:
        joints, label = got[c.name]
        np.testing.assert_array_equal(joints[:, :1], c.joints)
        assert not joints[:, 1].any() and label == c.label


# ----------------------------------------------------------------------------- the spec's examples


def test_spec_3d_literal_float16_meta_and_names(tmp_path):
    kp = rng_f16((2, 5, 25, 3), 1)
    doc = {"split": {"xsub_train": ["S001C001P001R001A001", "S002C003P004R005A050"], "xsub_val": []},
           "annotations": [{"frame_dir": "S001C001P001R001A001", "label": 0, "total_frames": 2,
                            "keypoint": np.zeros((1, 2, 25, 3), np.float16)},  # the spec's literal: all zeros
                           {"frame_dir": "S002C003P004R005A050", "label": np.int64(49), "total_frames": 5,
                            "keypoint": kp}]}
    pkl = dump(tmp_path / "ntu60_3danno.pkl", doc)
    out = tmp_path / "n.h5"
    prepare_ok(pkl, out)
    info = open_info(out)
    assert info.topology.name == "ntu25" and info.dataset == "ntu60_3danno"
    assert info.num_classes == 60 and info.class_names == action_names("ntu60")
    assert info.protocols["xsub"] == {"train": 1, "test": 0}
    got = samples(out)
    joints, label = got["S002C003P004R005A050"]
    assert label == 49 and joints.dtype == np.float32
    np.testing.assert_array_equal(joints, kp.astype(np.float32).transpose(1, 0, 2, 3))
    assert dict(read_rejected(out)) == {"S001C001P001R001A001": "every frame is zero (no person detected)"}
    with h5py.File(out, "r") as f:
        meta = {k: int(f["meta"][k][0]) for k in ("setup", "camera", "subject", "replication", "num_actors")}
    assert meta == {"setup": 2, "camera": 3, "subject": 4, "replication": 5, "num_actors": 2}
    assert ntu_meta("S001C002P003R001A004") == {"setup": 1, "camera": 2, "subject": 3, "replication": 1}
    assert ntu_meta("clip_7") == {}


def test_spec_2d_variant_scores_as_last_channel(tmp_path):
    kp = (rng_f16((2, 4, 17, 2), 2) * 100 + 500).astype(np.float16)
    score = np.random.default_rng(3).uniform(0, 1, (2, 4, 17)).astype(np.float16)
    score[0, 0, 0] = 0.0  # a missed joint: kept as stored
    doc = {"split": {"train": ["v1"], "val": ["v2"]},
           "annotations": [{"frame_dir": "v1", "label": 1, "total_frames": 4, "img_shape": (1080, 1920),
                            "original_shape": (1080, 1920), "keypoint": kp, "keypoint_score": score},
                           {"frame_dir": "v2", "label": 0, "total_frames": 4, "img_shape": (1080, 1920),
                            "keypoint": kp[:1].copy(), "keypoint_score": score[:1].copy()}]}
    pkl = dump(tmp_path / "gym_2d.pkl", doc)
    out = tmp_path / "g.h5"
    prepare_ok(pkl, out)
    info = open_info(out)
    assert info.topology.name == "coco17" and info.num_classes == 2 and info.class_names is None
    assert info.protocols == {"default": {"train": 1, "test": 1}}
    assert info.preprocessing["coord_space"] == "pixels"
    got = samples(out)
    want = np.concatenate([kp.astype(np.float32), score.astype(np.float32)[..., None]], -1).transpose(1, 0, 2, 3)
    np.testing.assert_array_equal(got["v1"][0], want)
    np.testing.assert_array_equal(got["v2"][0][:, 0], want[:, 0])
    assert not got["v2"][0][:, 1].any()


def test_plain_list_rejections_and_skips(tmp_path):
    good = {"filename": "videos/a.mp4", "frame_dir": "a", "label": 2, "total_frames": 3,
            "keypoint": rng_f16((1, 3, 17, 2), 4), "keypoint_score": np.ones((1, 3, 17), np.float16)}
    annos = [
        good,
        None,  # a failed clip in ntu_preproc.py
        {"frame_dir": "nolabel", "keypoint": rng_f16((1, 3, 17, 2), 5), "keypoint_score": np.ones((1, 3, 17))},
        {"frame_dir": "noperson", "label": 0, "keypoint": np.zeros((0, 3, 17, 2), np.float16),
         "keypoint_score": np.zeros((0, 3, 17), np.float16)},
        {"frame_dir": "noframe", "label": 0, "keypoint": np.zeros((1, 0, 17, 2), np.float16),
         "keypoint_score": np.zeros((1, 0, 17), np.float16)},
        {"frame_dir": "noscore", "label": 0, "keypoint": rng_f16((1, 3, 17, 2), 6)},
        {"frame_dir": "wrongjoints", "label": 0, "keypoint": rng_f16((1, 3, 13, 2), 7),
         "keypoint_score": np.ones((1, 3, 13))},
        {"label": 1, "keypoint": rng_f16((1, 3, 17, 2), 8)},
        {"frame_dir": "b", "label": 0, "keypoint": rng_f16((3, 2, 17, 2), 9), "keypoint_score": np.ones((3, 2, 17))},
    ]
    pkl = dump(tmp_path / "custom.pkl", annos)
    out = tmp_path / "c.h5"
    text = prepare_ok(pkl, out)
    assert "protocol 'all'" in text  # the warning: no split invented
    info = open_info(out)
    assert info.protocols == {"all": {"train": 2}} and info.num_classes == 3
    got = samples(out)
    assert sorted(got) == ["b", "videos/a.mp4"]  # filename wins over frame_dir
    assert got["b"][0].shape == (2, 2, 17, 3)  # three persons: the first two kept
    rej = dict(read_rejected(out))
    assert rej["annotations[1]"].startswith("not a dict (NoneType)")
    assert rej["nolabel"] == "no label"
    assert rej["noperson"].startswith("no person (keypoint has M = 0")
    assert rej["noframe"].startswith("no frame (keypoint has T = 0")
    assert "no keypoint_score" in rej["noscore"]
    assert "13 joints" in rej["wrongjoints"]
    assert "no frame_dir or filename" in rej["annotations[7]"]
    assert len(rej) == 7


def test_split_key_table(tmp_path):
    assert map_split_key("xsub_train") == ("xsub", "train") and map_split_key("xsub_val") == ("xsub", "test")
    assert map_split_key("xview_val") == ("xview", "test") and map_split_key("xset_train") == ("xset", "train")
    assert map_split_key("train") == ("default", "train") and map_split_key("test") == ("default", "test")
    assert map_split_key("train2") == ("split2", "train") and map_split_key("test3") == ("split3", "test")
    assert map_split_key("split_1") is None
    warnings: list[str] = []
    s = build_splits({"train": ["a"], "val": ["b"], "test": ["c"]}, warnings)
    assert s == {"default": {"train": ["a"], "test": ["c"]}, "default_val": {"train": ["a"], "test": ["b"]}}
    assert len(warnings) == 1

    kp = rng_f16((1, 3, 18, 2), 10)
    annos = [{"frame_dir": n, "label": i % 2, "keypoint": kp, "keypoint_score": np.ones((1, 3, 18))}
             for i, n in enumerate("pqrs")]
    doc = {"split": {"train1": ["p", "q"], "test1": ["r", "s"], "train2": ["r", "s"], "test2": ["p", "q"],
                     "extra": ["p"]}, "annotations": annos}
    out = tmp_path / "u.h5"
    text = prepare_ok(dump(tmp_path / "ucf101_2d.pkl", doc), out)
    assert "unknown split key 'extra'" in text
    info = open_info(out)
    assert info.topology.name == "openpose18"
    assert info.protocols == {"split1": {"train": 2, "test": 2}, "split2": {"train": 2, "test": 2},
                              "extra": {"train": 1}}


# ----------------------------------------------------------------------------- safety and wrong inputs


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_refused_not_executed(tmp_path):
    marker = tmp_path / "MARKER"
    evil = dump(tmp_path / "evil.pkl", _Evil(marker))
    r = run("prepare", "pyskl", "--raw", evil, "--out", tmp_path / "e.h5")
    assert_one_line_error(r, f"refusing to load {os.system.__module__}.system from {evil}")
    assert "pyskl pickles hold only dicts, lists, tuples, strings, numbers and numpy arrays" in r.output
    nested = dump(tmp_path / "nested.pkl", {"split": {}, "annotations": [{"frame_dir": "x", "label": _Evil(marker)}]})
    r = run("prepare", "pyskl", "--raw", nested, "--out", tmp_path / "e.h5")
    assert_one_line_error(r, "refusing to load")
    with pytest.raises(SkelError, match="refusing to load builtins.eval"):
        load_pickle(dump(tmp_path / "eval.pkl", _Reduce(eval, ("1",))))
    assert not marker.exists() and not any(tmp_path.glob("*.h5"))


class _Reduce:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def test_numpy_pickles_of_every_protocol_load(tmp_path):
    obj = {"a": np.arange(6, dtype=np.float16).reshape(2, 3), "b": np.int64(7), "c": np.zeros((0, 2), np.float32)}
    for proto in range(2, pickle.HIGHEST_PROTOCOL + 1):
        p = tmp_path / f"p{proto}.pkl"
        p.write_bytes(pickle.dumps(obj, protocol=proto))
        back = load_pickle(p)
        assert back["b"] == 7 and back["c"].shape == (0, 2)
        np.testing.assert_array_equal(back["a"], obj["a"])
    # a numpy 1 pickle names numpy.core (numpy 2: numpy._core); both load, without numpy's deprecation warning
    old = pickle.dumps(obj, protocol=2).replace(b"numpy._core.", b"numpy.core.")
    assert b"numpy.core.multiarray" in old
    (tmp_path / "old.pkl").write_bytes(old)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(load_pickle(tmp_path / "old.pkl")["a"], obj["a"])
    import codecs

    with pytest.raises(SkelError, match="admitted only for latin-1"):  # _codecs.encode: latin-1 bytes only
        load_pickle(dump(tmp_path / "rot.pkl", _Reduce(codecs.encode, ("abc", "rot13"))))


def test_wrong_inputs_one_line_errors(tmp_path):
    kp = rng_f16((1, 3, 13, 2), 11)
    odd = dump(tmp_path / "odd.pkl", [{"frame_dir": "a", "label": 0, "keypoint": kp}])
    r = run("prepare", "pyskl", "--raw", odd, "--out", tmp_path / "a.h5")
    assert_one_line_error(r, "pass --topology")

    flat = dump(tmp_path / "flat.pkl", {"split": {}, "annotations": [
        {"frame_dir": "a", "label": 0, "keypoint": rng_f16((1, 3, 17, 2), 12), "keypoint_score": np.ones((1, 3, 17))}]})
    r = run("prepare", "pyskl", "--raw", flat, "--topology", "ntu25", "--out", tmp_path / "b.h5")
    assert_one_line_error(r, "topology ntu25 has 25 joints x 3")

    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"not a pickle at all")
    r = run("prepare", "pyskl", "--raw", junk, "--out", tmp_path / "c.h5")
    assert_one_line_error(r, "is not a readable pickle")

    trunc = tmp_path / "trunc.pkl"
    trunc.write_bytes(flat.read_bytes()[:40])
    r = run("prepare", "pyskl", "--raw", trunc, "--out", tmp_path / "d.h5")
    assert_one_line_error(r, "trunc.pkl")

    r = run("prepare", "pyskl", "--raw", dump(tmp_path / "d.pkl", {"split": {}}), "--out", tmp_path / "e.h5")
    assert_one_line_error(r, "without 'annotations'")

    unlabelled = [{"frame_dir": "a", "keypoint": rng_f16((1, 3, 17, 2), 13), "keypoint_score": np.ones((1, 3, 17))}]
    r = run("prepare", "pyskl", "--raw", dump(tmp_path / "n.pkl", unlabelled), "--out", tmp_path / "f.h5")
    assert_one_line_error(r, "no valid clip found")
    assert "no label" in r.output
    assert not any(tmp_path.glob("*.h5"))
