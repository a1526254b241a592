"""NTU `.skeleton` parser, denoising (spec D.4), translation (D.5) and splits (D.6)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from skelcli.data.ntu import (
    NTU60_XSUB_TRAIN,
    NTU120_XSUB_TRAIN,
    NtuPrepareSettings,
    denoise,
    format_skeleton,
    load_sample,
    ntu_splits,
    parse_name,
    parse_skeleton_bytes,
    read_missing_list,
    read_skeleton,
    translate,
)
from skelcli.errors import SkelError

FIXTURES = Path(__file__).parent / "fixtures"
SETTINGS = NtuPrepareSettings()


def tall(offset=(0.0, 0.0, 3.0)) -> np.ndarray:
    """A (25, 3) body that passes the spread rule: x-spread 0.4 <= 0.8 * y-spread 1.6."""
    j = np.zeros((25, 3))
    j[:, 0] = np.linspace(-0.2, 0.2, 25)
    j[:, 1] = np.linspace(-0.8, 0.8, 25)
    return j + np.asarray(offset)


def wide() -> np.ndarray:
    """A (25, 3) body that fails the spread rule: x-spread 2.0 > 0.8 * y-spread 0.5."""
    j = np.zeros((25, 3))
    j[:, 0] = np.linspace(-1.0, 1.0, 25)
    j[:, 1] = np.linspace(-0.25, 0.25, 25)
    j[:, 2] = 3.0
    return j


def body_track(n: int, amp: float, seed: int, base=None) -> list[np.ndarray]:
    """n frames of a body moving along x with amplitude amp (more amp = more motion)."""
    rng = np.random.default_rng(seed)
    base = tall() if base is None else base
    return [base + np.array([amp * np.sin(0.5 * t), 0.0, 0.0]) + 0.001 * rng.standard_normal((25, 3)) for t in range(n)]


def build(n_frames: int, tracks: dict[str, tuple[int, list[np.ndarray]]]) -> bytes:
    """Skeleton text: each body id appears from its start frame for len(track) frames."""
    frames = [[] for _ in range(n_frames)]
    for bid, (start, track) in tracks.items():
        for k, j in enumerate(track):
            frames[start + k].append((bid, j))
    return format_skeleton(frames).encode()


# ------------------------------------------------------------------------------------ parser
def test_fixture_parsed_field_by_field():
    sk = read_skeleton(FIXTURES / "tiny.skeleton")
    assert sk.frame_count == 3
    assert sk.body_counts == [1, 0, 1]
    assert sk.num_valid_frames == 2  # the 0-body frame is dropped (D.3)
    assert list(sk.bodies) == ["72057594037931101"]
    body = sk.bodies["72057594037931101"]
    assert body.interval == [0, 1]
    assert body.joints.shape == (2, 25, 3) and body.joints.dtype == np.float32
    j = np.arange(25)
    np.testing.assert_allclose(body.joints[0, :, 0], 0.1 + 0.01 * j, atol=1e-6)
    np.testing.assert_allclose(body.joints[0, :, 1], -0.5 + 0.05 * j, atol=1e-6)
    np.testing.assert_allclose(body.joints[0, :, 2], 3.0 + 0.001 * j, atol=1e-6)
    np.testing.assert_allclose(body.joints[1, :, 0], 0.2 + 0.01 * j, atol=1e-6)  # frame 3 is shifted by +0.1 in x


def test_crlf_equals_lf():
    raw = (FIXTURES / "tiny.skeleton").read_bytes()
    a = parse_skeleton_bytes(raw)
    b = parse_skeleton_bytes(raw.replace(b"\n", b"\r\n"))
    np.testing.assert_array_equal(a.bodies["72057594037931101"].joints, b.bodies["72057594037931101"].joints)


def test_nan_in_pixel_fields_is_accepted():
    # Real files (S018C001P045R001A116) hold NaN depth/colour pixels for untracked joints.
    lines = (FIXTURES / "tiny.skeleton").read_bytes().split(b"\n")
    lines[4] = b"0 0 0 NaN NaN NaN NaN 0 1 0 0 0"
    sk = parse_skeleton_bytes(b"\n".join(lines))
    assert np.all(sk.bodies["72057594037931101"].joints[0, 0] == 0)


def _corrupt(edit) -> bytes:
    lines = (FIXTURES / "tiny.skeleton").read_bytes().split(b"\n")
    edit(lines)
    return b"\n".join(lines)


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"", "empty file"),
        (b"   \n\n", "empty file"),
        (b"abc\n", "frame count is not an integer"),
        (_corrupt(lambda L: L.__setitem__(0, b"4")), "truncated"),  # header says 4 frames, 3 present
        (_corrupt(lambda L: L.__setitem__(0, b"2")), "trailing"),  # 2 frames declared, 3 present
        (_corrupt(lambda L: L.__setitem__(3, b"24")), "joint count 24"),
        (_corrupt(lambda L: L.__setitem__(2, b"72057594037931101 0 1 1 1 1 0 0.02 2")), "10"),
        (_corrupt(lambda L: L.__setitem__(6, b"0.1 0.2 3.0 1 2 3 4 0 0 0 2")), "12"),
        (_corrupt(lambda L: L.__setitem__(6, b"0.1 0.2 3.0 1 2 3 4 0 0 x 0 2")), "non-numeric"),
        (_corrupt(lambda L: L.__setitem__(6, b"0.1 0.2 abc 1 2 3 4 0 0 0 0 2")), "non-numeric"),
        (_corrupt(lambda L: L.__setitem__(6, b"0.1 0.2 1.2.3 1 2 3 4 0 0 0 0 2")), "non-numeric"),
        (_corrupt(lambda L: L.__setitem__(1, b"one")), "body count is not an integer"),
        ((FIXTURES / "tiny.skeleton").read_bytes()[:900], "truncated"),
        ((FIXTURES / "tiny.skeleton").read_bytes() + b"garbage\n", "trailing"),
    ],
)
def test_bad_input_is_reported(raw, message):
    with pytest.raises(SkelError, match=message):
        parse_skeleton_bytes(raw)


def test_joint_line_widths_and_spacing_as_split_sees_them():
    """The joint-line widths are counted over the bytes (ntu._tokens_per_line), as len(line.split())
    counts them: runs of spaces, tabs, form feeds, leading and trailing blanks, empty lines. A line of 12
    numbers however spaced parses to the same joints; 11 or 13 name the line."""
    from skelcli.data.ntu import _tokens_per_line

    lines = [b"", b"1", b"  1  2 ", b"\t1\x0b2\x0c3", b"1 2 3 4 5 6 7 8 9 10 11 12", b" ", b"a b  c   d"]
    assert _tokens_per_line(b"\n".join(lines)).tolist() == [len(x.split()) for x in lines]
    ref = parse_skeleton_bytes((FIXTURES / "tiny.skeleton").read_bytes())
    spaced = parse_skeleton_bytes(_corrupt(lambda L: L.__setitem__(6, b"  " + b" \t ".join(L[6].split()) + b"   ")))
    assert ref.bodies.keys() == spaced.bodies.keys()
    assert all(np.array_equal(ref.bodies[k].joints, spaced.bodies[k].joints) for k in ref.bodies)
    for extra, width in ((b"", 11), (b" 0.5", 13)):
        line = b" ".join((FIXTURES / "tiny.skeleton").read_bytes().split(b"\n")[6].split()[: 11 if width == 11 else 12]) + extra
        with pytest.raises(SkelError, match=f"line 7: joint line has {width} numbers, expected 12"):
            parse_skeleton_bytes(_corrupt(lambda L, ln=line: L.__setitem__(6, ln)))


def test_name_parsing():
    m = parse_name("S001C002P003R002A013.skeleton")
    assert (m.setup, m.camera, m.subject, m.replication, m.action, m.label) == (1, 2, 3, 2, 13, 12)
    for bad in ("S001C002P003R002A13", "s001C002P003R002A013", "S001C002P003R002A013x", "S000C002P003R002A013", "foo.skeleton"):
        with pytest.raises(SkelError, match="unexpected NTU sample name"):
            parse_name(bad)


def test_missing_list_skips_prose(tmp_path):
    p = tmp_path / "missing.txt"
    p.write_text("302 of the captured samples have missing skeletons.\nPlease ignore them.\n\nS001C002P005R002A008\nS001C002P006R001A008\n")
    assert read_missing_list(p) == {"S001C002P005R002A008", "S001C002P006R001A008"}


# --------------------------------------------------------------------------------- denoising
def test_zero_body_file_is_rejected():
    raw = format_skeleton([[], [], []]).encode()
    with pytest.raises(SkelError, match="no body in any frame"):
        denoise(parse_skeleton_bytes(raw), SETTINGS)


def test_length_rule_drops_short_body():
    raw = build(20, {"A": (0, body_track(20, 0.1, 0)), "B": (3, body_track(11, 0.5, 1))})
    res = denoise(parse_skeleton_bytes(raw), SETTINGS)
    assert not res.two_actor_layout  # one body left -> single-actor array
    assert res.joints.shape == (20, 2, 25, 3)
    assert np.all(res.joints[:, 1] == 0)
    assert any("length" in n and "B" in n for n in res.notes)
    # 12 frames survive the length rule (<= 11 is dropped)
    raw = build(20, {"A": (0, body_track(20, 0.1, 0)), "B": (3, body_track(12, 0.5, 1))})
    assert denoise(parse_skeleton_bytes(raw), SETTINGS).two_actor_layout


def test_spread_rule_drops_wide_body():
    raw = build(20, {"A": (0, body_track(20, 0.1, 0)), "W": (0, body_track(20, 0.9, 1, base=wide()))})
    res = denoise(parse_skeleton_bytes(raw), SETTINGS)
    assert not res.two_actor_layout
    assert any("spread" in n and "W" in n for n in res.notes)


def test_spread_rule_recomputes_motion_on_valid_frames():
    # A: 20 frames, 5 of them wide with a huge jump -> highest motion before the spread rule;
    # ratio 5/20 < 0.69754 keeps it, but its motion over valid frames (static) is ~0, so B leads.
    a = [tall() for _ in range(20)]
    for t in range(5):
        a[t] = wide() + np.array([3.0 * t, 0.0, 0.0])
    b = body_track(20, 0.2, 1, base=tall((0.5, 0.0, 3.0)))
    sk = parse_skeleton_bytes(build(20, {"A": (0, a), "B": (0, b)}))
    res = denoise(sk, SETTINGS)
    np.testing.assert_allclose(res.joints[:, 0], np.asarray(b, dtype=np.float32), atol=1e-6)
    np.testing.assert_allclose(res.joints[:, 1], np.asarray(a, dtype=np.float32), atol=1e-6)


def test_non_overlapping_bodies_merge_into_actor1():
    a, b = body_track(20, 0.5, 0), body_track(20, 0.1, 1, base=tall((1.0, 0, 3)))
    res = denoise(parse_skeleton_bytes(build(40, {"A": (0, a), "B": (20, b)})), SETTINGS)
    assert res.two_actor_layout and res.joints.shape == (40, 2, 25, 3)
    np.testing.assert_allclose(res.joints[:20, 0], np.asarray(a, np.float32), atol=1e-6)
    np.testing.assert_allclose(res.joints[20:, 0], np.asarray(b, np.float32), atol=1e-6)
    assert np.all(res.joints[:, 1] == 0)


def test_sharing_one_frame_is_not_overlap():
    # min(ends) - max(starts) = min(19, 38) - max(0, 19) = 0 <= 0 -> merged into actor 1 (D.4 step 4).
    a, b = body_track(20, 0.5, 0), body_track(20, 0.1, 1, base=tall((1.0, 0, 3)))
    res = denoise(parse_skeleton_bytes(build(39, {"A": (0, a), "B": (19, b)})), SETTINGS)
    assert np.all(res.joints[:, 1] == 0)
    np.testing.assert_allclose(res.joints[19, 0], np.asarray(b[0], np.float32), atol=1e-6)  # later body overwrites


def test_overlapping_body_goes_to_actor2_and_third_is_dropped():
    a = body_track(30, 0.6, 0)
    b = body_track(30, 0.3, 1, base=tall((1.0, 0, 3)))
    c = body_track(20, 0.05, 2, base=tall((-1.0, 0, 3)))
    res = denoise(parse_skeleton_bytes(build(30, {"C": (5, c), "B": (0, b), "A": (0, a)})), SETTINGS)
    assert res.two_actor_layout
    np.testing.assert_allclose(res.joints[:, 0], np.asarray(a, np.float32), atol=1e-6)
    np.testing.assert_allclose(res.joints[:, 1], np.asarray(b, np.float32), atol=1e-6)
    assert any("assembly: dropped body C" in n for n in res.notes)


def test_partial_overlap_to_actor2_keeps_zero_gaps():
    a, b = body_track(20, 0.6, 0), body_track(20, 0.1, 1, base=tall((1.0, 0, 3)))
    res = denoise(parse_skeleton_bytes(build(25, {"A": (0, a), "B": (5, b)})), SETTINGS)
    assert res.joints.shape[0] == 25
    assert np.all(res.joints[:5, 1] == 0) and np.all(res.joints[20:, 0] == 0)


def test_frames_with_neither_actor_are_dropped():
    # C lives only in frames 15-19 and is dropped by the length rule -> those frames become all-zero.
    a, b = body_track(15, 0.6, 0), body_track(15, 0.1, 1, base=tall((1.0, 0, 3)))
    c = body_track(5, 0.1, 2)
    res = denoise(parse_skeleton_bytes(build(35, {"A": (0, a), "C": (15, c), "B": (20, b)})), SETTINGS)
    assert res.joints.shape[0] == 30
    assert np.all(np.any(res.joints.reshape(30, -1) != 0, axis=1))


def test_all_bodies_too_short_is_rejected():
    raw = build(10, {"A": (0, body_track(10, 0.1, 0)), "B": (0, body_track(10, 0.2, 1))})
    with pytest.raises(SkelError, match="removed every body"):
        denoise(parse_skeleton_bytes(raw), SETTINGS)


# ------------------------------------------------------------------------------- translation
def test_translation_origin_is_actor1_spinemid_at_first_present_frame(tmp_path):
    a = body_track(20, 0.6, 0, base=tall((0.3, 0.1, 3.2)))
    b = body_track(23, 0.1, 1, base=tall((1.0, 0, 3)))
    raw = build(23, {"B": (0, b), "A": (3, a)})
    sk = parse_skeleton_bytes(raw)
    res = denoise(sk, SETTINGS)
    joints, num_actors = translate(res, SETTINGS)
    assert num_actors == 2
    origin = np.asarray(a[0], np.float32)[1]  # SpineMid, 0-based index 1
    np.testing.assert_allclose(joints[3, 0, 1], 0, atol=1e-6)
    assert np.all(joints[:3, 0] == 0)  # frames where actor 1 was absent are reset to zero
    np.testing.assert_allclose(joints[:, 1], np.asarray(b, np.float32) - origin, atol=1e-5)


def test_single_actor_zeros_vs_copy(tmp_path):
    p = tmp_path / "S001C001P001R001A001.skeleton"
    p.write_bytes(build(15, {"A": (0, body_track(15, 0.2, 0))}))
    zeros = load_sample(p, NtuPrepareSettings(second_actor="zeros"))
    copy = load_sample(p, NtuPrepareSettings(second_actor="copy"))
    assert zeros.num_actors == copy.num_actors == 1
    assert np.all(zeros.joints[:, 1] == 0)
    np.testing.assert_array_equal(copy.joints[:, 1], copy.joints[:, 0])
    np.testing.assert_allclose(zeros.joints[0, 0, 1], 0, atol=1e-7)
    assert NtuPrepareSettings.for_dataset("ntu120").second_actor == "copy"
    assert NtuPrepareSettings.for_dataset("ntu60").second_actor == "zeros"


def test_settings_forbid_extra():
    with pytest.raises(Exception):
        NtuPrepareSettings(noise_len=3)


# ------------------------------------------------------------------------------------ splits
def test_ntu60_split_rules_and_sizes():
    names = [f"S001C{c:03d}P{p:03d}R001A001" for p in range(1, 41) for c in (1, 2, 3)]
    metas = [parse_name(n) for n in names]
    sub = np.array([m.subject for m in metas])
    cam = np.array([m.camera for m in metas])
    setup = np.array([m.setup for m in metas])
    sp = ntu_splits("ntu60", sub, cam, setup)
    assert len(NTU60_XSUB_TRAIN) == 20
    assert len(sp["xsub"]["train"]) == 60 and len(sp["xsub"]["test"]) == 60
    assert set(sub[sp["xsub"]["train"]]) == set(NTU60_XSUB_TRAIN)
    assert set(sub[sp["xsub"]["test"]]) == set(range(1, 41)) - set(NTU60_XSUB_TRAIN)
    assert set(cam[sp["xview"]["train"]]) == {2, 3} and set(cam[sp["xview"]["test"]]) == {1}
    assert len(sp["xview"]["train"]) == 80
    for parts in sp.values():
        both = np.concatenate([parts["train"], parts["test"]])
        assert sorted(both) == list(range(len(names)))


def test_ntu120_split_rules_and_sizes():
    names = [f"S{s:03d}C001P{p:03d}R001A001" for s in range(1, 33) for p in range(1, 107)]
    metas = [parse_name(n) for n in names]
    sub = np.array([m.subject for m in metas])
    setup = np.array([m.setup for m in metas])
    sp = ntu_splits("ntu120", sub, np.ones_like(sub), setup)
    assert len(NTU120_XSUB_TRAIN) == 53 and len(set(NTU120_XSUB_TRAIN)) == 53
    assert len(sp["xsub"]["train"]) == 53 * 32 and len(sp["xsub"]["test"]) == 53 * 32
    assert set(setup[sp["xset"]["train"]]) == set(range(2, 33, 2))
    assert set(setup[sp["xset"]["test"]]) == set(range(1, 33, 2))
    assert set(sp) == {"xsub", "xset"}
