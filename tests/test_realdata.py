"""Parse the genuine NTU / PKU-MMD files in ../shared/realdata (skipped when absent).

See ../shared/realdata/SOURCES.md for where each file came from. Nothing is copied into the repo.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from skelcli.data.ntu import NtuPrepareSettings, load_sample, read_missing_list, read_skeleton
from skelcli.data.prepare import prepare_dataset
from skelcli.data.store import open_info, read_samples
from skelcli.topology import BONES, ORIGIN_JOINT

REALDATA = (Path(__file__).resolve().parents[1] / ".." / "shared" / "realdata").resolve()
NTU = REALDATA / "ntu"
PKU = REALDATA / "pku"
pytestmark = pytest.mark.realdata

NTU_FILES = sorted(NTU.glob("*.skeleton")) if NTU.is_dir() else []

# Frame counts cross-checked against independent frames_cnt.txt files (SOURCES.md).
KNOWN_FRAMES = {
    "S001C001P001R001A001": 103, "S001C001P001R001A002": 158, "S001C001P001R001A003": 104,
    "S001C001P001R001A005": 54, "S001C001P003R002A005": 68, "S002C001P003R001A003": 100,
    "S003C001P015R001A034": 71,
}


def _need(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"{path} not present")


def test_realdata_present_or_skipped():
    _need(NTU)
    assert len(NTU_FILES) >= 1


@pytest.mark.parametrize("path", NTU_FILES, ids=[p.stem for p in NTU_FILES])
def test_every_real_ntu_file(path):
    sk = read_skeleton(path)
    assert sk.frame_count == len(sk.body_counts)
    if path.stem in KNOWN_FRAMES:
        assert sk.frame_count == KNOWN_FRAMES[path.stem]
    s = load_sample(path, NtuPrepareSettings())
    j = s.joints
    assert j.dtype == np.float32 and j.shape[1:] == (2, 25, 3)
    assert 1 <= len(j) <= sk.frame_count
    if len(sk.bodies) == 1:
        assert len(j) == sk.num_valid_frames
    assert np.isfinite(j).all()
    present = np.any(j[:, 0].reshape(len(j), -1) != 0, axis=1)
    first = int(np.argmax(present))
    np.testing.assert_allclose(j[first, 0, ORIGIN_JOINT], 0.0, atol=1e-6)
    # plausible anatomy: median bone length of actor 1 below 60 cm; limb/trunk bones (not the
    # hand tips and thumbs, which Kinect often collapses onto the hand) above 3 cm
    a1 = j[present, 0]
    lengths = np.stack([np.linalg.norm(a1[:, c] - a1[:, p], axis=-1) for c, p in BONES], axis=1)
    med = np.median(lengths, axis=0)
    major = np.array([c < 21 for c, _ in BONES])
    assert np.all(med < 0.6) and np.all(med[major] > 0.03), med
    assert np.abs(j).max() < 6.0  # metres, relative to SpineMid


def test_known_real_cases():
    _need(NTU)
    s = load_sample(NTU / "S001C001P003R002A005.skeleton", NtuPrepareSettings())
    assert s.num_actors == 1 and len(s.joints) == 68  # the noise body is removed by the spread rule
    s = load_sample(NTU / "S017C003P020R002A059.skeleton", NtuPrepareSettings())
    assert s.num_actors == 2 and len(s.joints) == 111


def test_missing_lists_sizes():
    _need(NTU / "meta")
    assert len(read_missing_list(NTU / "meta" / "NTU_RGBD_samples_with_missing_skeletons.txt")) == 302
    assert len(read_missing_list(NTU / "meta" / "NTU_RGBD120_samples_with_missing_skeletons.txt")) == 535


def test_real_ntu120_prepare(tmp_path):
    _need(NTU)
    out = tmp_path / "ntu120.h5"
    rep = prepare_dataset("ntu120", [NTU], out, workers=2, missing_list=NTU / "meta" / "NTU_RGBD120_samples_with_missing_skeletons.txt")
    assert rep.kept == len(NTU_FILES)
    assert rep.missing_list["listed_but_parsed_ok"] == []
    info = open_info(out)
    assert sum(info.protocols["xsub"].values()) == len(NTU_FILES)
    padded = info.num_samples * 300 * 150 * 4
    assert out.stat().st_size <= padded / 3


def test_real_pku_v1(tmp_path):
    _need(PKU / "PKU_Skeleton_Renew")
    out = tmp_path / "pku.h5"
    rep = prepare_dataset("pku-mmd-v1", [PKU], out, workers=1)
    n_rows = sum(len([ln for ln in p.read_text().splitlines() if ln.strip()]) for p in (PKU / "Train_Label_PKU_final").glob("*.txt"))
    assert rep.kept == n_rows == 32
    ss = read_samples(out, np.arange(rep.kept))
    assert np.isfinite(ss.joints).all()
    z = ss.joints[..., 2][ss.joints[..., 2] != 0]
    assert 1.0 < np.median(z) < 4.0  # raw camera coordinates, not centred
    assert ss.labels.min() >= 0 and ss.labels.max() <= 50
    # 0005-M, 0015-M are in the training list of cross-subject.txt; 0160-M too (line 2)
    info = open_info(out)
    assert sum(info.protocols["xsub"].values()) == 32


def test_pku_action_names_equal_the_datasets_own_table():
    """skelcli.data.actions.PKU_ACTIONS against PKU-MMD's Split/Actions.xlsx (read with the standard library)."""
    _need(PKU / "Split" / "Actions.xlsx")
    import xml.etree.ElementTree as ET
    import zipfile

    from skelcli.data.actions import PKU_ACTIONS

    main = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"
    with zipfile.ZipFile(PKU / "Split" / "Actions.xlsx") as z:
        shared = [''.join(t.text or "" for t in si.iter(main + "t"))
                  for si in ET.fromstring(z.read("xl/sharedStrings.xml")).findall(main + "si")]
        rows = []
        for row in ET.fromstring(z.read("xl/worksheets/sheet1.xml")).iter(main + "row"):
            cells = []
            for c in row.findall(main + "c"):
                v = c.find(main + "v")
                cells.append(None if v is None else shared[int(v.text)] if c.get("t") == "s" else v.text)
            rows.append(cells)
    assert rows[0][:2] == ["Label", "Action"]
    table = {int(r[0]): r[1] for r in rows[1:]}
    assert sorted(table) == list(range(1, 52))
    assert [table[i] for i in range(1, 52)] == list(PKU_ACTIONS)
