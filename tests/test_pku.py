"""PKU-MMD readers and clip cutting (spec F) on hand-written tiny files in tests/fixtures/pku."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from skelcli.data.pku import (
    PkuPrepareSettings,
    cut_clips,
    label_mapping,
    read_labels,
    read_skeleton_txt,
    read_split_file,
    video_info,
)
from skelcli.data.prepare import prepare_dataset
from skelcli.data.store import open_info, read_rejected, read_samples, split_indices
from skelcli.errors import SkelError

PKU = Path(__file__).parent / "fixtures" / "pku"


def test_skeleton_and_labels_parse():
    arr = read_skeleton_txt(PKU / "skeleton" / "0001-L.txt")
    assert arr.shape == (10, 2, 25, 3) and arr.dtype == np.float32
    # row 2, person 1, joint 3: x = 0.1*2 + 0.01*3, y = 1 + 0.02*3, z = 2.5
    np.testing.assert_allclose(arr[2, 0, 3], [0.23, 1.06, 2.5], atol=1e-6)
    assert np.all(arr[:4, 1] == 0) and np.all(arr[4:8, 1, :, 0] == -0.5)
    assert read_labels(PKU / "label" / "0001-L.txt") == [(3, 1, 4), (12, 4, 8), (7, 6, 6), (2, 8, 10)]
    assert read_split_file(PKU / "cross-subject.txt") == {"0001-L", "0005-R"}


def test_clip_cutting_rows_start_to_end_exclusive():
    arr = read_skeleton_txt(PKU / "skeleton" / "0001-L.txt")
    clips, rejected = cut_clips("0001-L", arr, read_labels(PKU / "label" / "0001-L.txt"), PkuPrepareSettings())
    assert [c.name for c in clips] == ["0001-L_000", "0001-L_001"]
    assert [len(c.joints) for c in clips] == [3, 4]
    np.testing.assert_array_equal(clips[0].joints, arr[1:4])
    np.testing.assert_array_equal(clips[1].joints, arr[4:8])
    assert [c.num_actors for c in clips] == [1, 2]
    assert [c.action for c in clips] == [3, 12]
    reasons = dict(rejected)
    assert "empty range" in reasons["0001-L_002"]
    assert reasons["0001-L_003"] == "all-zero clip"


def test_bad_rows_are_reported(tmp_path):
    p = tmp_path / "0003-R.txt"
    p.write_text("1 2 3\n")
    with pytest.raises(SkelError, match="line 1: 3 numbers, expected 150"):
        read_skeleton_txt(p)
    p.write_text(" ".join(["1.0"] * 149 + ["x"]) + "\n")
    with pytest.raises(SkelError, match="non-numeric"):
        read_skeleton_txt(p)
    p.write_text("")
    with pytest.raises(SkelError, match="empty"):
        read_skeleton_txt(p)
    lab = tmp_path / "lab.txt"
    lab.write_text("1,2\n")
    with pytest.raises(SkelError, match="expected action,start,end"):
        read_labels(lab)


def test_video_names():
    assert video_info("0002-L", "pku-mmd-v1") == (2, 1)
    assert video_info("A10N08-R", "pku-mmd-v2") == (1008, 3)
    assert video_info("0007-M", "pku-mmd-v2") == (7, 2)
    for bad in ("A10N08-X", "0002L", "12-L"):
        with pytest.raises(SkelError, match="unexpected PKU-MMD video name"):
            video_info(bad, "pku-mmd-v1")


def test_label_mapping():
    s = PkuPrepareSettings()  # the reference rule: always action_id - 1
    assert label_mapping([3, 12, 51], 51, s) == {3: 2, 12: 11, 51: 50}
    assert label_mapping([60, 5], 51, s) == {5: 4, 60: 59}
    auto = PkuPrepareSettings(label_remap="auto")  # the previous default
    assert label_mapping([3, 12, 51], 51, auto) == {3: 2, 12: 11, 51: 50}
    assert label_mapping([60, 5], 51, auto) == {5: 0, 60: 1}  # not in 1..51 -> contiguous remap


@pytest.mark.parametrize("spelling", ["hyphen", "underscore"])
def test_prepare_pku_v1_both_split_spellings(tmp_path, spelling):
    raw = tmp_path / "raw"
    shutil.copytree(PKU, raw)
    if spelling == "underscore":
        (raw / "cross-subject.txt").rename(raw / "cross_subject.txt")
        (raw / "cross-view.txt").rename(raw / "cross_view.txt")
    out = tmp_path / "pku.h5"
    rep = prepare_dataset("pku-mmd-v1", [raw], out, workers=1)
    assert rep.kept == 3
    ss = read_samples(out, [0, 1, 2])
    assert ss.names == ["0001-L_000", "0001-L_001", "0002-M_000"]
    assert list(ss.labels) == [2, 11, 50]
    assert list(ss.valid_frames) == [3, 4, 5]
    # not centred: raw camera coordinates survive (spec F)
    np.testing.assert_allclose(ss.joints[0, 0, 3], [0.13, 1.06, 2.5], atol=1e-6)
    assert list(split_indices(out, "xsub", "train")) == [0, 1]
    assert list(split_indices(out, "xsub", "test")) == [2]
    assert list(split_indices(out, "xview", "train")) == [2]
    reasons = dict(read_rejected(out))
    assert reasons["0001-L_003"] == "all-zero clip"


def test_prepare_pku_v2_needs_v2_split_files(tmp_path):
    raw = tmp_path / "raw"
    (raw / "skeleton").mkdir(parents=True)
    (raw / "label").mkdir()
    shutil.copy(PKU / "skeleton" / "0001-L.txt", raw / "skeleton" / "A01N02-L.txt")
    (raw / "label" / "A01N02-L.txt").write_text("41,0,5,1\n1,5,8,1\n")
    (raw / "cross_subject_v2.txt").write_text("Training videos: \nA01N02-L\nValidation videos: \n\n")
    (raw / "cross-subject.txt").write_text("Training videos: \n\n")  # phase-I file: ignored for v2
    rep = prepare_dataset("pku-mmd-v2", [raw], tmp_path / "v2.h5", workers=1)
    assert rep.kept == 2
    assert rep.splits == {"xsub": {"train": 2, "test": 0}}
    assert any("xview" in w for w in rep.warnings)
    ss = read_samples(tmp_path / "v2.h5", [0, 1])
    assert list(ss.labels) == [40, 0]
    info = open_info(tmp_path / "v2.h5")  # the reference's 51 columns, ids 2..40 and 42..51 unused
    assert info.num_classes == 51 and info.class_names[0] == "bow" and info.class_names[40] == "throw"
    assert sum(n.endswith(" (unused)") for n in info.class_names) == 49


def test_bad_label_row_is_skipped_not_the_video(tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(PKU, raw)
    (raw / "label" / "0001-L.txt").write_text("3,1,4,2\nbroken row\n12,4,8,1\n")
    (raw / "skeleton" / "0002-M.txt").write_text("1 2 3\n")  # bad skeleton file: whole video skipped
    out = tmp_path / "p.h5"
    rep = prepare_dataset("pku-mmd-v1", [raw], out, workers=1)
    assert rep.kept == 2
    rej = read_rejected(out)
    assert any(n == "0001-L label" and "bad label row" in r for n, r in rej)
    assert ("0002-M", "line 1: 3 numbers, expected 150") in rej
