"""PKU-MMD prepared as the reference does (issue 17 item 5; MAMP data/pku_v*/pku_gendata.py, spec F):
clips keep their first 300 frames (``max_frames``; None keeps all) and labels are action_id - 1 in 51
classes for both phases, the class-name table marking the ids absent from the data as "(unused)".

The raw files are written by hand in the documented format (skelcli/data/pku.py): one 150-float line per
frame, label rows ``action,start,end,confidence``, split files with the training list on line 2.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from skelcli.cli import app
from skelcli.data.pku import PkuPrepareSettings, class_names, cut_clips, label_mapping, store_num_classes
from skelcli.data.prepare import prepare_dataset
from skelcli.data.store import open_info, read_rejected, read_samples, split_indices

runner = CliRunner()

#: video -> label rows (action_id, start, end). A01N01-L holds the 400-frame clip of id 51.
VIDEOS = {
    "A01N01-L": [(51, 10, 410), (3, 410, 450), (7, 450, 500)],
    "A01N02-M": [(51, 0, 60), (3, 60, 110), (7, 110, 170)],
    "A01N03-R": [(51, 0, 50), (3, 50, 100), (7, 100, 150)],
    "A01N04-L": [(3, 0, 40), (7, 40, 90), (51, 90, 150)],
}
TRAIN = ["A01N01-L", "A01N02-M"]
FRAMES = 520


def _skeleton(video: str) -> np.ndarray:
    """(FRAMES, 150) person 1 only (person 2 zeros), camera-like coordinates, no zero row."""
    rng = np.random.default_rng(sum(map(ord, video)))
    x = rng.normal(0.0, 0.3, size=(FRAMES, 25, 3))
    x[..., 2] += 2.5
    return np.concatenate([x.reshape(FRAMES, 75), np.zeros((FRAMES, 75))], axis=1)


def write_raw(root: Path) -> dict[str, np.ndarray]:
    (root / "skeleton").mkdir(parents=True)
    (root / "label").mkdir()
    arrays = {}
    for video, rows in VIDEOS.items():
        arr = np.round(_skeleton(video), 4)
        arrays[video] = arr.astype(np.float32)
        (root / "skeleton" / f"{video}.txt").write_text("\n".join(" ".join(f"{v:.4f}" for v in line) for line in arr) + "\n")
        (root / "label" / f"{video}.txt").write_text("".join(f"{a},{s},{e},1\n" for a, s, e in rows))
    others = [v for v in VIDEOS if v not in TRAIN]
    for proto in ("subject", "view"):
        (root / f"cross_{proto}_v2.txt").write_text(f"Training videos: \n{', '.join(TRAIN)}\nValidation videos: \n{', '.join(others)}\n")
    return arrays


@pytest.fixture()
def raw(tmp_path) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path / "raw"
    return root, write_raw(root)


def _index(out: Path) -> dict[str, int]:
    ss = read_samples(out, np.arange(open_info(out).num_samples))
    return {n: i for i, n in enumerate(ss.names)}


def test_cli_default_keeps_first_300_frames_and_reference_labels(raw, tmp_path):
    root, arrays = raw
    out = tmp_path / "v2.h5"
    r = runner.invoke(app, ["prepare", "pku-mmd-v2", "--raw", str(root), "--out", str(out), "--workers", "1"])
    assert r.exit_code == 0, r.output
    assert "max_frames=300" in r.output  # the report's note on the cut clip
    info = open_info(out)
    idx = _index(out)
    ss = read_samples(out, [idx["A01N01-L_000"], idx["A01N02-M_000"]])
    # the 400-frame clip (rows 10..409) keeps rows 10..309; the 60-frame one is whole
    assert list(ss.valid_frames) == [300, 60]
    np.testing.assert_allclose(ss.joints[:300], arrays["A01N01-L"][10:310].reshape(300, 2, 25, 3), atol=1e-6)
    # label = action_id - 1 in 51 classes (the reference's 51 one-hot columns), not remapped to 0..2
    assert list(ss.labels) == [50, 50]
    assert info.num_classes == 51
    all_labels = read_samples(out, np.arange(info.num_samples)).labels
    assert sorted(set(all_labels.tolist())) == [2, 6, 50]
    names = info.class_names
    assert len(names) == 51 and names[2] == "brushing teeth" and names[6] == "cross hands in front (say stop)"
    assert names[50] == "writing" and sum(n.endswith(" (unused)") for n in names) == 48
    assert names[0] == "bow (unused)" and names[41] == "touch back (backache) (unused)"
    pre = info.preprocessing
    assert pre["max_frames"] == 300 and pre["settings"]["max_frames"] == 300
    assert pre["clips_cut_to_max_frames"] == 1 and pre["longest_cut_clip"] == 400
    assert pre["label_rule"] == "action_id - 1" and pre["label_map"] == {"3": 2, "7": 6, "51": 50}
    assert sorted(split_indices(out, "xsub", "train")) == sorted(i for n, i in idx.items() if n.rsplit("_", 1)[0] in TRAIN)


def test_max_frames_none_keeps_whole_clip_and_a_change_rebuilds(raw, tmp_path):
    root, arrays = raw
    out = tmp_path / "v2.h5"
    assert prepare_dataset("pku-mmd-v2", [root], out, workers=1).status == "written"
    assert prepare_dataset("pku-mmd-v2", [root], out, workers=1).status == "up-to-date"
    whole = PkuPrepareSettings(max_frames=None)
    rep = prepare_dataset("pku-mmd-v2", [root], out, whole, workers=1)
    assert rep.status == "written" and rep.frames["max"] == 400
    assert not any("max_frames" in w for w in rep.warnings)
    ss = read_samples(out, [_index(out)["A01N01-L_000"]])
    assert list(ss.valid_frames) == [400]
    np.testing.assert_allclose(ss.joints, arrays["A01N01-L"][10:410].reshape(400, 2, 25, 3), atol=1e-6)
    pre = open_info(out).preprocessing
    assert pre["max_frames"] is None and pre["settings"]["max_frames"] is None and pre["clips_cut_to_max_frames"] == 0
    assert prepare_dataset("pku-mmd-v2", [root], out, whole, workers=1).status == "up-to-date"
    rep = prepare_dataset("pku-mmd-v2", [root], out, PkuPrepareSettings(max_frames=200), workers=1)
    assert rep.status == "written" and rep.frames["max"] == 200
    assert open_info(out).preprocessing["clips_cut_to_max_frames"] == 1


def test_store_built_with_the_old_rules_is_rebuilt_once(raw, tmp_path):
    """The old defaults (whole clips, ids > 41 remapped to 0..k-1) give another settings fingerprint."""
    root, _ = raw
    out = tmp_path / "v2.h5"
    old = PkuPrepareSettings(max_frames=None, label_remap="auto")
    assert prepare_dataset("pku-mmd-v2", [root], out, old, workers=1).status == "written"
    info = open_info(out)
    assert info.num_classes == 41 and info.preprocessing["label_map"] == {"3": 0, "7": 1, "51": 2}
    assert prepare_dataset("pku-mmd-v2", [root], out, workers=1).status == "written"
    assert prepare_dataset("pku-mmd-v2", [root], out, workers=1).status == "up-to-date"
    info = open_info(out)
    assert info.num_classes == 51 and info.preprocessing["label_map"] == {"3": 2, "7": 6, "51": 50}


def test_cut_clips_max_frames():
    arr = np.ones((420, 2, 25, 3), dtype=np.float32)
    arr[:, :, :, 0] = np.arange(420, dtype=np.float32)[:, None, None]
    labels = [(51, 10, 410), (3, 0, 20)]
    clips, rej = cut_clips("A01N01-L", arr, labels, PkuPrepareSettings())
    assert rej == [] and [len(c.joints) for c in clips] == [300, 20] and [c.raw_frames for c in clips] == [400, 20]
    np.testing.assert_array_equal(clips[0].joints, arr[10:310])
    clips, _ = cut_clips("A01N01-L", arr, labels, PkuPrepareSettings(max_frames=None))
    assert [len(c.joints) for c in clips] == [400, 20]
    # values only past the cut: nothing left to store (the reference would store a zero sample)
    late = np.zeros_like(arr)
    late[350:] = 1.0
    clips, rej = cut_clips("A01N01-L", late, [(5, 0, 400)], PkuPrepareSettings())
    assert clips == [] and rej == [("A01N01-L_000", "all-zero in its first 300 frames (max_frames)")]
    with pytest.raises(ValueError):
        PkuPrepareSettings(max_frames=0)


def test_label_rule_and_class_names():
    never = PkuPrepareSettings()
    m = label_mapping([1, 41, 51, 0], 41, never)  # id 0 rows are rejected by cut_clips, not mapped
    assert m == {1: 0, 41: 40, 51: 50} and store_num_classes(m, 41, never) == 51
    m1 = label_mapping(list(range(1, 52)), 51, never)
    assert store_num_classes(m1, 51, never) == 51 and "(unused)" not in class_names(m1, 51)
    big = label_mapping([5, 60], 51, never)  # an id past 51 widens the table, still action_id - 1
    assert big == {5: 4, 60: 59} and store_num_classes(big, 51, never) == 60
    names = class_names(m, 51)
    assert names[0] == "bow" and names[40] == "throw" and names[50] == "writing"
    assert names[1] == "brushing hair (unused)" and sum(n.endswith(" (unused)") for n in names[1:40]) == 39
    assert class_names(big, 60)[59] == "A060"  # beyond the official 51: the id stands for the name


# ------------------------------------------------------------------ downstream with unused classes
def _checkpoint(path: Path) -> Path:
    from skelcli.engine.checkpoint import save_checkpoint
    from skelcli.models.encoder import EncoderConfig, SkeletonEncoder
    from skelcli.settings import to_jsonable

    torch.manual_seed(0)
    cfg = EncoderConfig(num_frames=16, t_patch=4, dim=16, depth=1, heads=2)
    payload = {"method": "mamp", "settings": {}, "encoder_config": to_jsonable(cfg), "encoder": SkeletonEncoder(cfg).state_dict(),
               "pretraining_only": ["decoder"], "data": {"dataset": "ntu60", "num_classes": 60, "split": "xsub"}, "epoch": 1, "step": 1}
    return save_checkpoint(path, payload)


def test_probe_and_finetune_with_51_classes_of_which_3_present(raw, tmp_path):
    root, _ = raw
    data = tmp_path / "v2.h5"
    assert prepare_dataset("pku-mmd-v2", [root], data, workers=1).kept == 12
    ckpt = _checkpoint(tmp_path / "pre.pt")
    r = runner.invoke(app, ["probe", "-c", str(ckpt), "-d", str(data), "--protocol", "linear", "--recipe", "sklearn", "--out", str(tmp_path / "lin"),
                            "--json", str(tmp_path / "lin.json"), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "lin.json").read_text())
    assert res["num_classes"] == 51 and res["classes_present"] == 3 and "3 of 51 classes" in r.output
    assert np.load(tmp_path / "lin" / "confusion.npy").shape == (51, 51)
    r = runner.invoke(app, ["finetune", "-c", str(ckpt), "-d", str(data), "--preset", "small", "--epochs", "1", "--batch-size", "4",
                            "--out", str(tmp_path / "ft"), "--json", str(tmp_path / "ft.json"), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "ft.json").read_text())["finetune_data"]["num_classes"] == 51
    assert not read_rejected(data)


def test_cli_max_frames_zero_keeps_every_frame(raw, tmp_path):
    from typer.testing import CliRunner

    from skelcli.cli import app

    root, _ = raw
    out = tmp_path / "v2.h5"
    runner = CliRunner()
    r = runner.invoke(app, ["prepare", "pku-mmd-v2", "--raw", str(root), "--out", str(out), "--workers", "1", "--max-frames", "0"])
    assert r.exit_code == 0, r.output
    assert open_info(out).preprocessing["max_frames"] is None
    ss = read_samples(out, [_index(out)["A01N01-L_000"]])
    assert list(ss.valid_frames) == [400]
    for args, message in ((["--max-frames", "-1"], "must be 0"), (["--max-frames", "10"], None)):
        r = runner.invoke(app, ["prepare", "pku-mmd-v2", "--raw", str(root), "--out", str(out), "--workers", "1", *args])
        if message:
            assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output, r.output
        else:
            assert r.exit_code == 0 and list(read_samples(out, [_index(out)["A01N01-L_000"]]).valid_frames) == [10]
    r = runner.invoke(app, ["prepare", "ntu60", "--raw", str(root), "--out", str(tmp_path / "n.h5"), "--max-frames", "5"])
    assert r.exit_code == 2 and "applies to pku-mmd" in r.output
