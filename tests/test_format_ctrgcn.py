"""`skel synth / prepare ctrgcn-npz` (CTR-GCN / SLiM NTU .npz files, spec/formats.md 2)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from skelcli.data.actions import action_names
from skelcli.data.formats.ctrgcn import protocol_from_name
from skelcli.data.formats.procedural import procedural_clips
from skelcli.data.prepare import prepare_dataset
from skelcli.data.store import open_info, read_rejected, read_samples, split_indices
from skelcli.topology import get_topology
from helpers import assert_one_line_error, run_cli as run

NTU_RAW = (Path(__file__).resolve().parents[1] / ".." / "shared" / "realdata" / "ntu").resolve()


def prepare_ok(out: Path, *args) -> str:
    r = run("prepare", "ctrgcn-npz", *args, "--out", out)
    assert r.exit_code == 0, r.output
    v = run("info", out, "--verify")
    assert v.exit_code == 0 and "verify: ok" in v.output, v.output
    return r.output


def stored(h5: Path):
    info = open_info(h5)
    ss = read_samples(h5, np.arange(info.num_samples))
    with h5py.File(h5, "r") as f:
        actors = f["meta"]["num_actors"][()]
    return {n: (ss.joints[ss.offsets[k]: ss.offsets[k + 1]], int(ss.labels[k]), int(actors[k]))
            for k, n in enumerate(ss.names)}


def clip(t: int, seed: int, persons: int = 1) -> np.ndarray:
    """(t, 2, 25, 3) float32, `persons` non-zero."""
    a = np.zeros((t, 2, 25, 3), np.float32)
    a[:, :persons] = np.random.default_rng(seed).normal(0, 0.5, (t, persons, 25, 3))
    return a


def npz(path: Path, train: list[np.ndarray], ytrain, test: list[np.ndarray] = (), ytest=(), k: int = 60,
        t_max: int = 20) -> Path:
    def pack(clips):
        x = np.zeros((len(clips), t_max, 150), np.float32)
        for i, c in enumerate(clips):
            x[i, : len(c)] = c.reshape(len(c), 150)
        return x

    def hot(labels):
        y = np.zeros((len(labels), k))
        for i, lb in enumerate(labels):
            y[i, lb] = 1
        return y

    np.savez(path, x_train=pack(train), y_train=hot(ytrain) if not isinstance(ytrain, np.ndarray) else ytrain,
             x_test=pack(list(test)), y_test=hot(list(ytest)))
    return path


# ----------------------------------------------------------------------------- synth round trip


def test_synth_prepare_verify_exact(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "c.h5"
    r = run("synth", "ctrgcn-npz", "--out", raw, "--classes", 3, "--per-class", 4)
    assert r.exit_code == 0, r.output
    f = raw / "SYNTH_XSub.npz"
    assert sorted(raw.iterdir()) == [f]
    with np.load(f) as z:
        assert z["x_train"].shape[2] == 150 and z["y_train"].dtype == np.float64
        assert z["x_train"].shape[1] == z["x_test"].shape[1]
    prepare_ok(out, "--raw", f, "--protocol", "xsub")
    info = open_info(out)
    assert info.topology.name == "ntu25" and info.num_classes == 3 and info.dataset == "SYNTH"
    assert read_rejected(out) == []
    clips = procedural_clips(get_topology("ntu25"), classes=3, per_class=4, seed=0)
    got = stored(out)
    for part in ("train", "test"):
        mine = [c for c in clips if c.split == part]
        assert info.protocols["xsub"][part] == len(mine)
        for i, c in enumerate(mine):
            joints, label, actors = got[f"xsub_{part}_{i:06d}"]
            assert joints.shape == (len(c.joints), 2, 25, 3)
            np.testing.assert_array_equal(joints[:, :1], c.joints)
            assert not joints[:, 1].any() and label == c.label and actors == 1
    out2 = tmp_path / "c2.h5"
    prepare_ok(out2, "--raw", f)  # SYNTH_XSub: the name says xsub
    assert open_info(out2).protocols == info.protocols


# ----------------------------------------------------------------------------- the spec's example and edge cases


def test_spec_example_names_labels_and_tail_trim(tmp_path):
    a = clip(5, 1)
    a[2] = 0  # a zero frame inside the clip stays
    f = tmp_path / "NTU60_CS.npz"
    np.savez(f, x_train=np.concatenate([np.pad(a.reshape(5, 150), ((0, 295), (0, 0)))[None],
                                        np.zeros((1, 300, 150), np.float32)]),
             y_train=np.eye(60)[[3, 7]], x_test=np.zeros((0, 300, 150), np.float32), y_test=np.zeros((0, 60)))
    out = tmp_path / "n.h5"
    prepare_ok(out, "--raw", f)
    info = open_info(out)
    assert info.dataset == "ntu60" and info.num_classes == 60 and info.class_names == action_names("ntu60")
    assert info.protocols == {"xsub": {"train": 1, "test": 0}}
    got = stored(out)
    joints, label, actors = got["xsub_train_000000"]
    np.testing.assert_array_equal(joints, a)
    assert label == 3 and actors == 1
    assert dict(read_rejected(out)) == {"xsub_train_000001": "every frame is zero (no person detected)"}


def test_bad_one_hot_rows_rejected(tmp_path):
    y = np.zeros((4, 60))
    y[0, 5] = 1
    y[1, [2, 9]] = 1  # two ones
    y[3, 4] = 0.5  # not a one-hot value; row 2 all zeros
    f = npz(tmp_path / "NTU60_XView.npz", [clip(6, s) for s in range(4)], y)
    out = tmp_path / "v.h5"
    prepare_ok(out, "--raw", f)
    assert open_info(out).protocols == {"xview": {"train": 1, "test": 0}}
    assert stored(out)["xview_train_000000"][1] == 5
    rej = dict(read_rejected(out))
    assert rej == {"xview_train_000001": "label row is not one-hot (2 ones)",
                   "xview_train_000002": "label row is not one-hot (0 ones)",
                   "xview_train_000003": "label row is not one-hot (value 0.5 at class 4)"}


def test_ntu120_copied_actor_counts_once(tmp_path):
    solo = clip(7, 1)
    solo[:, 1] = solo[:, 0]  # CTR-GCN NTU120: the lone actor copied into slot 2
    pair = clip(8, 2, persons=2)
    half = pair.copy()
    half[:3, 1] = half[:3, 0]  # equal on some frames only: two actors
    zero2 = clip(5, 3)
    f120 = npz(tmp_path / "NTU120_CSet.npz", [solo, pair, half], [0, 119, 60], [zero2], [5], k=120)
    out = tmp_path / "s.h5"
    prepare_ok(out, "--raw", f120)
    info = open_info(out)
    assert info.protocols == {"xset": {"train": 3, "test": 1}} and info.num_classes == 120
    assert info.class_names == action_names("ntu120")
    got = stored(out)
    np.testing.assert_array_equal(got["xset_train_000000"][0], solo)  # the copy is kept, as `prepare ntu120`
    assert [got[f"xset_train_{i:06d}"][2] for i in range(3)] == [1, 2, 2]
    assert got["xset_test_000000"][2] == 1 and got["xset_train_000001"][1] == 119

    f60 = npz(tmp_path / "NTU60_XSub.npz", [zero2, pair], [1, 2])
    out60 = tmp_path / "z.h5"
    prepare_ok(out60, "--raw", f60)  # NTU60: a zero second slot is one actor, counted by prepare
    assert [v[2] for v in stored(out60).values()] == [1, 2]


def test_two_files_and_other_topology(tmp_path):
    fa = npz(tmp_path / "a.npz", [clip(4, 1)], [0], [clip(5, 2)], [1], k=2)
    fb = npz(tmp_path / "b.npz", [clip(6, 3)], [1], [], [], k=2)
    out = tmp_path / "ab.h5"
    prepare_ok(out, "--raw", fa, "--protocol", "xsub", "--raw", fb, "--protocol", "xview")
    info = open_info(out)
    assert info.protocols == {"xsub": {"train": 1, "test": 1}, "xview": {"train": 1, "test": 0}}
    assert sorted(stored(out)) == ["xsub_test_000000", "xsub_train_000000", "xview_train_000000"]

    rng = np.random.default_rng(4)
    x = np.zeros((2, 9, 51), np.float32)  # coco17, one person: 17 x 3 = 51 values per frame
    x[:, :6] = rng.uniform(0.1, 1.0, (2, 6, 51))
    f = tmp_path / "coco_XSub.npz"
    np.savez(f, x_train=x, y_train=np.eye(3)[[0, 2]], x_test=x[:0], y_test=np.zeros((0, 3)))
    out = tmp_path / "k.h5"
    prepare_ok(out, "--raw", f, "--topology", "coco17")
    got = stored(out)
    assert open_info(out).topology.name == "coco17"
    np.testing.assert_array_equal(got["xsub_train_000001"][0][:, 0], x[1, :6].reshape(6, 17, 3))
    assert not got["xsub_train_000001"][0][:, 1].any()


def test_compressed_and_fortran_archives_read_alike(tmp_path):
    plain = npz(tmp_path / "p.npz", [clip(4, 1), clip(6, 2, persons=2)], [0, 1], [clip(3, 3)], [1], k=2)
    with np.load(plain) as z:
        arrays = {k: z[k] for k in z.files}
    np.savez_compressed(tmp_path / "z.npz", **arrays)
    np.savez(tmp_path / "f.npz", **{k: np.asfortranarray(v) for k, v in arrays.items()})
    results = []
    for name in ("p", "z", "f"):
        out = tmp_path / f"{name}.h5"
        prepare_ok(out, "--raw", tmp_path / f"{name}.npz", "--protocol", "xview")
        results.append(stored(out))
    for other in results[1:]:
        assert list(other) == list(results[0])
        for n in other:
            assert np.array_equal(other[n][0], results[0][n][0]) and other[n][1:] == results[0][n][1:]


def test_protocol_from_name():
    assert protocol_from_name(Path("NTU60_CS.npz")) == "xsub" and protocol_from_name(Path("NTU60_CV.npz")) == "xview"
    assert protocol_from_name(Path("NTU120_CSub.npz")) == "xsub" and protocol_from_name(Path("NTU120_CSet.npz")) == "xset"
    assert protocol_from_name(Path("NTU120_CV.npz")) == "xset"  # SLiM's name for X-Set
    assert protocol_from_name(Path("NTU120_XSet.npz")) == "xset" and protocol_from_name(Path("NTU60_XView.npz")) == "xview"
    assert protocol_from_name(Path("mine_CV.npz")) is None and protocol_from_name(Path("data.npz")) is None


def test_wrong_inputs_one_line_errors(tmp_path):
    good = npz(tmp_path / "data.npz", [clip(4, 1)], [0])
    r = run("prepare", "ctrgcn-npz", "--raw", good, "--out", tmp_path / "a.h5")
    assert_one_line_error(r, "cannot tell the protocol of data.npz")
    r = run("prepare", "ctrgcn-npz", "--raw", good, "--protocol", "cross", "--out", tmp_path / "a.h5")
    assert_one_line_error(r, "unknown protocol 'cross'")
    r = run("prepare", "ctrgcn-npz", "--raw", good, "--raw", good, "--protocol", "xsub", "--out", tmp_path / "a.h5")
    assert_one_line_error(r, "one --protocol per --raw")

    missing = tmp_path / "NTU60_CS.npz"
    np.savez(missing, x_train=np.zeros((1, 4, 150), np.float32), y_train=np.eye(60)[[0]])
    r = run("prepare", "ctrgcn-npz", "--raw", missing, "--out", tmp_path / "b.h5")
    assert_one_line_error(r, "lacks key(s) x_test, y_test")

    wide = tmp_path / "w.npz"
    np.savez(wide, x_train=np.ones((1, 4, 100), np.float32), y_train=np.eye(60)[[0]],
             x_test=np.ones((0, 4, 100), np.float32), y_test=np.zeros((0, 60)))
    r = run("prepare", "ctrgcn-npz", "--raw", wide, "--protocol", "xsub", "--out", tmp_path / "c.h5")
    assert_one_line_error(r, "100 values per frame, not a multiple of 75")

    count = tmp_path / "n.npz"
    np.savez(count, x_train=np.ones((2, 4, 150), np.float32), y_train=np.eye(60)[[0]],
             x_test=np.ones((0, 4, 150), np.float32), y_test=np.zeros((0, 60)))
    r = run("prepare", "ctrgcn-npz", "--raw", count, "--protocol", "xsub", "--out", tmp_path / "d.h5")
    assert_one_line_error(r, "x_train has 2 clips, y_train 1 labels")

    junk = tmp_path / "j.npz"
    junk.write_bytes(b"PK not really")
    r = run("prepare", "ctrgcn-npz", "--raw", junk, "--protocol", "xsub", "--out", tmp_path / "e.h5")
    assert_one_line_error(r, "is not a .npz archive")
    assert not any(tmp_path.glob("*.h5"))


# ----------------------------------------------------------------------------- genuine NTU data


def _reference_npz(store: Path, protocol: str, k: int, path: Path) -> None:
    """The store's samples in CTR-GCN's layout (spec 2.2): zero frames after each clip up to the
    longest, persons x joints x xyz flattened to 150 per frame, one-hot float64 labels."""
    info = open_info(store)
    ss = read_samples(store, np.arange(info.num_samples))
    t_max = int(np.diff(ss.offsets).max())
    arrays = {}
    for part in ("train", "test"):
        idx = split_indices(store, protocol, part)
        x = np.zeros((len(idx), t_max, 150), np.float32)
        y = np.zeros((len(idx), k))
        for i, s in enumerate(idx):
            j = ss.joints[ss.offsets[s]: ss.offsets[s + 1]]
            x[i, : len(j)] = j.reshape(len(j), 150)
            y[i, ss.labels[s]] = 1.0
        arrays[f"x_{part}"], arrays[f"y_{part}"] = x, y
    np.savez(path, **arrays)


@pytest.mark.parametrize("kind,protocol,fname,k", [("ntu60", "xsub", "NTU60_CS.npz", 60),
                                                   ("ntu120", "xset", "NTU120_CSet.npz", 120)])
def test_genuine_ntu_equals_prepare(tmp_path, kind, protocol, fname, k):
    if not NTU_RAW.is_dir() or not any(NTU_RAW.glob("*.skeleton")):
        pytest.skip(f"genuine NTU files not present ({NTU_RAW})")
    ref = tmp_path / f"{kind}.h5"
    prepare_dataset(kind, [NTU_RAW], ref, workers=1)
    f = tmp_path / fname
    _reference_npz(ref, protocol, k, f)
    out = tmp_path / "imported.h5"
    prepare_ok(out, "--raw", f, "--protocol", protocol)
    assert read_rejected(out) == []
    want, got = stored(ref), stored(out)
    names = list(want)
    assert len(got) == len(want)
    for part in ("train", "test"):
        for i, s in enumerate(split_indices(ref, protocol, part)):
            wj, wl, wa = want[names[s]]
            gj, gl, ga = got[f"{protocol}_{part}_{i:06d}"]
            assert np.array_equal(gj, wj), names[s]
            assert gl == wl and ga == wa, names[s]
    if kind == "ntu120":  # the genuine set has both one- and two-actor clips, the copies counted once
        assert {a for _, _, a in got.values()} == {1, 2}
