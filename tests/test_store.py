"""HDF5 store: schema, round trip, reader API, atomic writes (DESIGN.md "HDF5 layout")."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from skelcli.data.store import (
    SCHEMA_VERSION,
    Sample,
    open_info,
    read_rejected,
    read_samples,
    split_indices,
    temp_path,
    write_store,
)
from skelcli.errors import SkelError


def make_samples(n: int = 7, seed: int = 0) -> list[Sample]:
    rng = np.random.default_rng(seed)
    return [
        Sample(f"S001C00{1 + i % 3}P{i + 1:03d}R001A{i + 1:03d}", rng.standard_normal((5 + 3 * i, 2, 25, 3)).astype(np.float32),
               label=i % 4, setup=1, camera=1 + i % 3, subject=i + 1, replication=1, num_actors=1 + i % 2)
        for i in range(n)
    ]


def write(path, samples, force=False, **kw):
    splits = lambda names, meta: {"xsub": {"train": np.arange(0, len(names), 2), "test": np.arange(1, len(names), 2)}}  # noqa: E731
    args = dict(dataset="ntu60", num_classes=60, splits=splits,
                rejected=[("S001C001P001R001A099", "truncated")], preprocessing={"a": 1}, source={"files": 8}, force=force)
    args.update(kw)
    return write_store(path, samples, **args)


def test_round_trip_schema(tmp_path):
    p = tmp_path / "s.h5"
    samples = make_samples()
    assert write(p, samples) == 7
    with h5py.File(p, "r") as f:
        assert f.attrs["schema"] == "skelcli.skeletons" and f.attrs["schema_version"] == SCHEMA_VERSION == 2
        assert f["joints"].dtype == np.float32 and f["joints"].shape == (sum(len(s.joints) for s in samples), 2, 25, 3)
        assert f["joints"].compression is not None and f["joints"].chunks is not None
        assert f["offsets"].dtype == np.int64 and f["label"].dtype == np.int16
        assert all(f["meta"][k].dtype == np.int16 for k in ("setup", "camera", "subject", "replication", "num_actors"))
        assert f["splits"]["xsub"]["train"].dtype == np.int32
        assert json.loads(f.attrs["preprocessing"]) == {"a": 1}
        np.testing.assert_array_equal(f["meta"]["camera"][()], [s.camera for s in samples])
    info = open_info(p)
    assert (info.dataset, info.num_classes, info.num_samples, info.schema_version) == ("ntu60", 60, 7, SCHEMA_VERSION)
    assert info.protocols == {"xsub": {"train": 4, "test": 3}}
    assert info.source == {"files": 8} and info.class_names is None
    assert read_rejected(p) == [("S001C001P001R001A099", "truncated")]
    ss = read_samples(p, np.arange(7))
    for k, s in enumerate(samples):
        np.testing.assert_array_equal(ss.joints[ss.offsets[k]:ss.offsets[k + 1]], s.joints)
    assert ss.names == [s.name for s in samples] and list(ss.labels) == [s.label for s in samples]
    assert ss.labels.dtype == np.int64 and list(ss.valid_frames) == [len(s.joints) for s in samples]


@pytest.mark.parametrize("indices", [[6, 0, 3], [2, 2, 5], [1], [0, 1, 2, 3, 4, 5, 6][::-1], [0, 6]])
def test_read_samples_any_order(tmp_path, indices):
    p = tmp_path / "s.h5"
    samples = make_samples()
    write(p, samples)
    ss = read_samples(p, indices)
    assert len(ss.offsets) == len(indices) + 1
    for k, i in enumerate(indices):
        np.testing.assert_array_equal(ss.joints[ss.offsets[k]:ss.offsets[k + 1]], samples[i].joints)
        assert ss.names[k] == samples[i].name


def test_split_indices_and_errors(tmp_path):
    p = tmp_path / "s.h5"
    write(p, make_samples())
    idx = split_indices(p, "xsub", "train")
    assert idx.dtype == np.int64 and list(idx) == [0, 2, 4, 6]
    with pytest.raises(SkelError, match="available: xsub"):
        split_indices(p, "xview", "train")
    with pytest.raises(SkelError, match="out of range"):
        read_samples(p, [7])


def test_callable_splits(tmp_path):
    p = tmp_path / "s.h5"
    write(p, make_samples(), splits=lambda names, meta: {"xview": {"train": np.nonzero(meta["camera"] > 1)[0], "test": np.nonzero(meta["camera"] == 1)[0]}})
    assert list(split_indices(p, "xview", "test")) == [0, 3, 6]


def test_not_hdf5_foreign_and_newer_schema(tmp_path):
    txt = tmp_path / "x.h5"
    txt.write_text("hello")
    with pytest.raises(SkelError, match="not an HDF5 file"):
        open_info(txt)
    foreign = tmp_path / "f.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(SkelError, match="not a skelcli skeleton store"):
        open_info(foreign)
    p = tmp_path / "s.h5"
    write(p, make_samples())
    with h5py.File(p, "a") as f:
        f.attrs["schema_version"] = 99
    with pytest.raises(SkelError, match="schema_version 99, newer"):
        open_info(p)


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_crash_mid_write_keeps_old_file_and_no_temp(tmp_path, exc):
    p = tmp_path / "s.h5"
    write(p, make_samples(3))
    before = p.read_bytes()

    def crashing():
        for k, s in enumerate(make_samples(7, seed=1)):
            if k == 4:
                raise exc("simulated crash")
            yield s

    with pytest.raises(exc):
        write(p, crashing(), force=True)
    assert p.read_bytes() == before
    assert not temp_path(p).exists()
    assert [q.name for q in tmp_path.iterdir()] == ["s.h5"]
    assert open_info(p).num_samples == 3


def test_existing_needs_force(tmp_path):
    p = tmp_path / "s.h5"
    write(p, make_samples(3))
    with pytest.raises(SkelError, match="exists"):
        write(p, make_samples(5))
    assert write(p, make_samples(5), force=True) == 5
    assert open_info(p).num_samples == 5


def test_bad_sample_shape_is_rejected_and_nothing_written(tmp_path):
    p = tmp_path / "s.h5"
    bad = [Sample("x", np.zeros((4, 25, 3), np.float32), 0)]
    with pytest.raises(SkelError, match="expected"):
        write(p, bad, splits={})
    assert not p.exists() and not list(tmp_path.iterdir())
