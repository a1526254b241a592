"""Tests of the synthetic raw-data generator (skelcli/data/synthetic.py) and `skel synth`.

The files are checked with a small independent reader written here from spec/mamp-and-data.md D.1
and F, not with the generator's own code.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from skelcli.data.synthetic import (
    HARD_VARIANT_PHASES,
    FaultRates,
    SynthSettings,
    class_program,
    default_class_ids,
    generate_sequence,
    hard_family,
    interaction_classes,
    synthesize,
)
from skelcli.errors import SkelError
from skelcli.topology import BONES, PARENTS

#: One pytest-xdist worker runs this whole file (its module fixture is built once; make test uses --dist loadgroup).
pytestmark = pytest.mark.xdist_group("synthetic")

SMALL = dict(classes=3, subjects=2, setups=1, replications=1, min_frames=40, max_frames=80)


# ----------------------------------------------------------------------------------------------------
# an independent strict reader of the .skeleton text format (spec D.1)
# ----------------------------------------------------------------------------------------------------


def read_skeleton(path: Path) -> dict:
    """Return frame count, per-frame body ids, and per body id: frames, joint rows (n, 25, 12), info rows."""
    lines = path.read_text().split("\n")
    assert lines[-1] == "", "file must end with a newline"
    lines = lines[:-1]
    i = 0
    n_frames = int(lines[i]); i += 1
    frames: list[list[str]] = []
    bodies: dict[str, dict] = {}
    expected_lines = 1
    for f in range(n_frames):
        n_bodies = int(lines[i]); i += 1
        expected_lines += 1 + n_bodies * 27
        ids = []
        for _ in range(n_bodies):
            info = lines[i].split(); i += 1
            assert len(info) == 10, info
            assert len(info[0]) == 17 and info[0].isdigit()
            assert int(lines[i]) == 25; i += 1
            rows = np.array([[float(v) for v in lines[i + k].split()] for k in range(25)])
            assert all(len(lines[i + k].split()) == 12 for k in range(25))
            i += 25
            b = bodies.setdefault(info[0], {"frames": [], "rows": [], "info": []})
            b["frames"].append(f)
            b["rows"].append(rows)
            b["info"].append(info)
            ids.append(info[0])
        frames.append(ids)
    assert i == len(lines) == expected_lines
    for b in bodies.values():
        b["rows"] = np.stack(b["rows"])
    return {"n_frames": n_frames, "frames": frames, "bodies": bodies}


def bone_lengths(xyz: np.ndarray) -> np.ndarray:
    """(T, 25, 3) -> (T, 24) lengths of the tree bones."""
    c, p = np.array(BONES).T
    return np.linalg.norm(xyz[:, c] - xyz[:, p], axis=-1)


def quat_rotate(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Rotate v (3,) by unit quaternions q (..., 4) in (W, X, Y, Z) order."""
    w, u = q[..., :1], q[..., 1:]
    t = 2 * np.cross(u, v)
    return v + w * t + np.cross(u, t)


@pytest.fixture(scope="module")
def clean_ntu(tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("clean")
    rep = synthesize("ntu60", out, SynthSettings(**SMALL, faults=FaultRates.none(), class_ids=[1, 23, 55]))
    return out, rep


# ----------------------------------------------------------------------------------------------------


def test_determinism(tmp_path: Path) -> None:
    """The same seed writes the same bytes, whether one process writes every file or two share them."""
    s = SynthSettings(**SMALL, seed=3)
    a = synthesize("ntu60", tmp_path / "a", s, workers=1)
    done: list[int] = []
    b = synthesize("ntu60", tmp_path / "b", s, workers=2, progress=lambda i, n: done.append(i))
    assert done == list(range(1, a.n_files + 1)) and (a.bytes, a.frames) == (b.bytes, b.frames)
    c = synthesize("ntu60", tmp_path / "c", s.model_copy(update={"seed": 4}))
    assert a.files == b.files == c.files and a.n_files == 3 * 2 * 3
    for f in a.files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    differing = sum((tmp_path / "a" / f).read_bytes() != (tmp_path / "c" / f).read_bytes() for f in a.files)
    assert differing == len(a.files)


def test_format_names_and_kinect_fields(clean_ntu) -> None:
    out, rep = clean_ntu
    files = sorted(out.glob("*.skeleton"))
    assert len(files) == rep.n_files == 3 * 2 * 3
    total = 0
    all_z: list[np.ndarray] = []
    for path in files:
        name = path.stem
        assert len(name) == 20 and name[0] == "S" and name[4] == "C" and name[8] == "P" and name[12] == "R"
        sk = read_skeleton(path)
        assert 40 <= sk["n_frames"] <= 80
        total += sk["n_frames"]
        for b in sk["bodies"].values():
            r = b["rows"]
            x, y, z = r[..., 0], r[..., 1], r[..., 2]
            assert (z > 0.5).all() and (z < 6.0).all()  # Kinect v2 range
            all_z.append(z.ravel())
            # depth / colour pixels follow one pinhole model each: u linear in x/z, v linear in y/z
            for col, coord in ((3, x), (4, y), (5, x), (6, y)):
                A = np.stack([(coord / z).ravel(), np.ones(z.size)], 1)
                coef, res, *_ = np.linalg.lstsq(A, r[..., col].ravel(), rcond=None)
                assert np.sqrt(res[0] / z.size) < 0.01
            assert set(np.unique(r[..., 11])) <= {1.0, 2.0} and (r[..., 11] == 2).mean() > 0.8
            q = r[..., 7:11]
            norms = np.linalg.norm(q, axis=-1)
            leaves = [j for j in range(25) if j not in PARENTS]
            assert np.allclose(norms[:, leaves], 0) and np.allclose(np.delete(norms, leaves, 1), 1, atol=1e-5)
            assert all(int(inf[9]) == 2 for inf in b["info"])
            # Real actors pass the denoiser's spread rule (spec D.4: x range <= 0.8 y range in most frames).
            assert (np.ptp(x, 1) > 0.8 * np.ptp(y, 1)).mean() < 0.5
    assert total == rep.frames
    z = np.concatenate(all_z)
    assert 2.5 < np.median(z) < 4.0 and ((z > 1.5) & (z < 5.0)).mean() > 0.95  # real files: 98 % in 2.5-4.4 m
    # NTU60 xsub train (1) and test (3) performers both occur, and cameras 1..3
    assert {f.stem[8:12] for f in files} == {"P001", "P003"}
    assert {f.stem[4:8] for f in files} == {"C001", "C002", "C003"}


def test_forward_kinematics_and_cameras(clean_ntu) -> None:
    out, _ = clean_ntu
    base = "S001C{c:03d}P001R001A001.skeleton"
    per_cam = []
    for c in (1, 2, 3):
        sk = read_skeleton(out / base.format(c=c))
        (body,) = sk["bodies"].values()
        xyz = body["rows"][..., :3]
        lengths = bone_lengths(xyz)
        # Rigid bones over time, up to the 2 mm sensor noise.
        assert lengths.std(0).max() < 0.01
        assert 3.5 < lengths.mean(0).sum() < 5.5  # 24 bones of a 1.5-1.95 m adult
        per_cam.append(xyz)
    # One performance from three cameras: same bones, different coordinates.
    L = [bone_lengths(x).mean(0) for x in per_cam]
    assert np.abs(L[0] - L[1]).max() < 0.005 and np.abs(L[0] - L[2]).max() < 0.005
    assert np.abs(per_cam[0] - per_cam[1]).mean() > 0.03 and np.abs(per_cam[1] - per_cam[2]).mean() > 0.03
    # The views are related by a rigid motion (Kabsch fit, residual ~ sensor noise) whose rotation is
    # about 45 deg (C001 at 0, C002 at -45, C003 at +45 deg yaw; cameras may tilt slightly differently).
    for a, b, deg in ((0, 1, 45), (0, 2, 45), (1, 2, 90)):
        P, Q = per_cam[a].reshape(-1, 3), per_cam[b].reshape(-1, 3)
        Pc, Qc = P - P.mean(0), Q - Q.mean(0)
        U, _, Vt = np.linalg.svd(Pc.T @ Qc)
        R = (U @ np.diag([1, 1, np.sign(np.linalg.det(U @ Vt))]) @ Vt).T
        residual = np.linalg.norm(Qc - Pc @ R.T, axis=1).mean()
        angle = np.degrees(np.arccos(np.clip((np.trace(R) - 1) / 2, -1, 1)))
        assert residual < 0.01 and abs(angle - deg) < 8, (a, b, residual, angle)


def test_orientations_follow_the_bones(tmp_path: Path) -> None:
    s = SynthSettings(**SMALL, faults=FaultRates.none(), sensor_noise=0.0, class_ids=[7])
    rep = synthesize("ntu60", tmp_path, s)
    sk = read_skeleton(tmp_path / rep.files[0])
    (body,) = sk["bodies"].values()
    r = body["rows"]
    xyz, q = r[..., :3], r[..., 7:11]
    for j in range(25):
        kids = [c for c, p in enumerate(PARENTS) if p == j]
        if not kids:
            continue
        bone = xyz[:, min(kids)] - xyz[:, j]
        bone /= np.linalg.norm(bone, axis=-1, keepdims=True)
        y_axis = quat_rotate(q[:, j], np.array([0.0, 1.0, 0.0]))
        # 7 significant digits in the text limit the agreement.
        assert np.einsum("ti,ti->t", bone, y_axis).min() > 0.9999, j


def test_generate_sequence_matches_written_file(clean_ntu) -> None:
    out, _ = clean_ntu
    seq = generate_sequence(23, subject=3, setup=1, camera=2, replication=1, max_frames=80)
    sk = read_skeleton(out / "S001C002P003R001A023.skeleton")
    (body,) = sk["bodies"].values()
    assert seq.shape == (sk["n_frames"], 1, 25, 3) and seq.dtype == np.float32
    assert np.abs(body["rows"][..., :3] - seq[:, 0]).max() < 0.02


def test_interaction_classes_have_two_bodies(clean_ntu) -> None:
    out, _ = clean_ntu
    assert 55 in interaction_classes("ntu60") and 106 in interaction_classes("ntu120")
    assert class_program(55).partner is not None and class_program(1).partner is None
    for path in out.glob("*A055.skeleton"):
        sk = read_skeleton(path)
        assert all(len(ids) == 2 for ids in sk["frames"])
        a, b = sk["bodies"].values()
        # Facing each other, 0.4 .. 3.5 m apart (spine-base distance).
        d = np.linalg.norm(a["rows"][:, 0, :3] - b["rows"][:, 0, :3], axis=-1)
        assert (d > 0.4).all() and (d < 3.5).all()
    for path in out.glob("*A001.skeleton"):
        assert all(len(ids) == 1 for ids in read_skeleton(path)["frames"])


def test_faults_at_requested_rates(tmp_path: Path) -> None:
    rates = FaultRates(
        spurious_body=0.25, noise_body=0.25, zero_frames=0.25, id_switch=0.25, jitter=0.25, no_body=0.125
    )
    s = SynthSettings(classes=2, class_ids=[3, 9], subjects=2, setups=2, replications=1, max_frames=90, faults=rates)
    rep = synthesize("ntu60", tmp_path, s)
    n = rep.n_files
    assert n == 2 * 2 * 2 * 3
    for kind in ("spurious_body", "noise_body", "zero_frames", "id_switch", "jitter"):
        assert rep.faults[kind] == round(0.25 * n)
    assert rep.faults["no_body"] == len(rep.no_body_files) == round(0.125 * n)
    seen = {k: 0 for k in rep.faults}
    for f in rep.files:
        sk = read_skeleton(tmp_path / f)
        kinds = rep.faults_by_file.get(Path(f).stem, [])
        counts = [len(ids) for ids in sk["frames"]]
        if "no_body" in kinds:
            assert sk["n_frames"] > 0 and max(counts) == 0
            seen["no_body"] += 1
            continue
        lengths = {bid: len(b["frames"]) for bid, b in sk["bodies"].items()}
        if "spurious_body" in kinds:
            assert min(lengths.values()) <= 11
            seen["spurious_body"] += 1
        if "noise_body" in kinds:
            def wide(b):
                r = b["rows"]
                xr = np.ptp(r[..., 0], axis=1)
                yr = np.ptp(r[..., 1], axis=1)
                return (xr > 0.8 * yr).mean()
            assert max(wide(b) for b in sk["bodies"].values()) >= 0.7
            seen["noise_body"] += 1
        if "zero_frames" in kinds:
            assert 0 in counts
            seen["zero_frames"] += 1
        if "id_switch" in kinds:
            long = [b["frames"] for b in sk["bodies"].values() if len(b["frames"]) > 11]
            assert len(long) >= 2
            pairs = [(a, b) for a in long for b in long if a is not b and max(a) < min(b)]
            assert pairs, "the actor must continue under a new id in a later, non-overlapping interval"
            seen["id_switch"] += 1
        if "jitter" in kinds:
            seen["jitter"] += 1
        if not kinds:
            assert len(sk["bodies"]) == 1 and 0 not in counts
    assert seen == rep.faults


def test_class_separability_by_motion() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from sklearn.pipeline import make_pipeline

    classes = [2, 12, 22, 32, 42, 46]
    X, y, subj, first_pose = [], [], [], []
    for c in classes:
        for subject in range(1, 9):
            for cam in (1, 2):
                seq = generate_sequence(c, subject=subject, camera=cam, replication=1 + subject % 2,
                                        setup=1 + subject % 3, max_frames=150)[:, 0]
                first_pose.append(seq[0].ravel())
                vel = np.diff(seq, axis=0)
                energy = (vel ** 2).sum(-1).mean(0)  # per-joint velocity energy (25,)
                reach = np.log1p(np.ptp(seq - seq[:, :1], axis=0).sum(-1))  # per-joint range about the root
                X.append(np.concatenate([energy, reach]))
                y.append(c)
                subj.append(subject)
    X, y, subj = np.array(X), np.array(y), np.array(subj)
    train = subj <= 5
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(X[train], y[train])
    acc = clf.score(X[~train], y[~train])
    assert len(X) == 96 and acc > 0.6, acc  # chance = 1/6
    # Not trivially separable by a single static pose: the first-frame pose alone does much worse.
    P = np.array(first_pose)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    first = probe.fit(P[train], y[train]).score(P[~train], y[~train])
    assert first < acc - 0.2, (first, acc)


def test_hard_classes_differ_only_in_coordination() -> None:
    """difficulty="hard": classes 1-2 form one family (same DOFs, centres, amplitudes, tempo); only the
    phase of the second DOF differs (in phase vs anti-phase), so mean pose and joint speeds agree."""
    assert len(HARD_VARIANT_PHASES) == 2
    assert default_class_ids("ntu60", 8, "hard") == list(range(1, 9))
    assert [hard_family(c) for c in (1, 2, 3, 12)] == [(0, 0), (0, 1), (1, 0), (5, 1)]
    progs = [class_program(c, "ntu60", 0, "hard").actor for c in (1, 2)]
    assert [(d.dof, d.centre, d.amplitude, d.freq) for d in progs[1].dofs] == [
        (d.dof, d.centre, d.amplitude, d.freq) for d in progs[0].dofs
    ]
    rel = [(p.dofs[1].phase - p.dofs[0].phase) % (2 * np.pi) for p in progs]
    assert np.allclose(rel, HARD_VARIANT_PHASES)
    others = {tuple(d.dof for d in class_program(c, "ntu60", 0, "hard").actor.dofs) for c in (1, 3, 5, 7, 9, 11)}
    assert len(others) == 6  # six families, six different joint pairs
    # Same body and nuisance: the two variants have nearly the same mean pose, but different sequences.
    from skelcli.data.synthetic import _REST, _animate, _Variation

    still = _Variation(1.0, 1.0, 0.0, np.zeros((25, 3)))
    a, _ = _animate(progs[0], _REST, 300, still)
    b, _ = _animate(progs[1], _REST, 300, still)
    assert np.abs(a.mean(0) - b.mean(0)).max() < 0.05
    assert np.abs(a - b).max() > 0.1
    # Deterministic per sample.
    s1 = generate_sequence(2, subject=1, difficulty="hard", frames=90)
    assert s1.shape == (90, 1, 25, 3) and np.array_equal(s1, generate_sequence(2, subject=1, difficulty="hard", frames=90))


def test_pku_format_labels_and_splits(tmp_path: Path) -> None:
    s = SynthSettings(class_ids=[5, 12, 30], subjects=2, replications=1, max_frames=70)
    rep = synthesize("pku-mmd-v1", tmp_path, s)
    skel = sorted((tmp_path / "skeleton").glob("*.txt"))
    assert [p.name for p in skel] == [p.name for p in sorted((tmp_path / "label").glob("*.txt"))]
    assert len(skel) == 4 * 3 and skel[0].stem == "0001-L"
    clips = 0
    for p in skel:
        text = p.read_text()
        assert "\r" not in text and not text.endswith(" \n")
        data = np.loadtxt(p)
        assert data.shape[1] == 150
        labels = np.loadtxt(tmp_path / "label" / p.name, delimiter=",", dtype=int, ndmin=2)
        assert labels.shape[1] == 4 and (labels[:, 1] < labels[:, 2]).all() and labels[-1, 2] < len(data)
        assert (labels[1:, 1] > labels[:-1, 2]).all()  # idle frames between actions
        two = 12 in labels[:, 0]
        assert set(labels[:, 0]) == ({12} if two else {5, 30})
        for a, st, en, _ in labels:
            clip = data[st:en]
            assert np.abs(clip[:, :75]).sum(1).min() > 0
            assert (np.abs(clip[:, 75:]).sum(1).min() > 0) if two else np.all(clip[:, 75:] == 0)
            clips += 1
        # camera coordinates, not centred
        assert 1.0 < data[:, 2].mean() < 4.5
    assert clips == rep.clips
    lines = (tmp_path / "cross-subject.txt").read_text().split("\n")
    assert lines[0].startswith("Training") and lines[2].startswith("Valid") and lines[4] == ""
    train = [v for v in lines[1].split(", ") if v]
    test = [v for v in lines[3].split(", ") if v]
    assert train and test and set(train) | set(test) == {p.stem for p in skel} and not set(train) & set(test)
    view_train = [v for v in (tmp_path / "cross-view.txt").read_text().split("\n")[1].split(", ") if v]
    assert {v[-1] for v in view_train} == {"M", "R"}


def test_pku_v2_split_names(tmp_path: Path) -> None:
    synthesize("pku-mmd-v2", tmp_path, SynthSettings(classes=2, subjects=2, replications=1, max_frames=60))
    assert (tmp_path / "cross_subject_v2.txt").exists() and (tmp_path / "cross_view_v2.txt").exists()


def test_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        SynthSettings(colour="red")
    with pytest.raises(ValidationError):
        SynthSettings(min_frames=100, max_frames=50)
    with pytest.raises(SkelError, match="unknown dataset"):
        synthesize("kinetics", tmp_path / "x", SynthSettings())
    with pytest.raises(SkelError, match="outside"):
        synthesize("ntu60", tmp_path / "x", SynthSettings(class_ids=[61]))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(SkelError, match="not empty"):
        synthesize("ntu60", tmp_path / "full", SynthSettings(**SMALL))


def test_cli_synth(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from skelcli.cli import app

    out = tmp_path / "raw"
    args = ["synth", "ntu60", "--out", str(out), "--classes", "2", "--subjects", "2", "--setups", "1",
            "--replications", "1", "--max-frames", "60", "--json", str(tmp_path / "r.json")]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    files = sorted(out.glob("*.skeleton"))
    report = json.loads((tmp_path / "r.json").read_text())
    assert len(files) == report["n_files"] == 2 * 2 * 3
    assert report["class_ids"] == [1, 50]  # ntu60 default includes a two-person class
    assert sum(p.stat().st_size for p in files) == report["bytes"]
    for p in files:
        read_skeleton(p)
    assert "files" in res.output
    again = CliRunner().invoke(app, args)
    assert again.exit_code != 0 and "not empty" in again.output
    assert CliRunner().invoke(app, args + ["--force"]).exit_code == 0
    bad = CliRunner().invoke(app, ["synth", "ntu61", "--out", str(tmp_path / "y")])
    assert bad.exit_code != 0 and "unknown dataset" in bad.output


@pytest.mark.parametrize("workers", ["0", "-2"])
def test_cli_synth_bad_workers_is_one_line_and_writes_nothing(tmp_path: Path, workers: str) -> None:
    """`skel synth --workers 0` fails in one line before any file is written; an existing folder keeps its files."""
    from helpers import assert_one_line_error, run_cli

    out = tmp_path / "raw"
    assert_one_line_error(run_cli("synth", "ntu60", "--out", out, "--workers", workers), f"--workers must be >= 1, got {workers}")
    assert not out.exists()
    out.mkdir()
    (out / "keep.skeleton").write_text("x")
    assert_one_line_error(run_cli("synth", "ntu60", "--out", out, "--force", "--workers", workers), "--workers must be >= 1")
    assert [p.name for p in out.iterdir()] == ["keep.skeleton"] and (out / "keep.skeleton").read_text() == "x"
