"""Topologies as values (built-ins, TOML layouts, validation) and every format through every method.

The chain per format: ``skel synth FORMAT`` -> ``skel prepare FORMAT`` -> ``skel info --verify`` ->
``skel pretrain`` with each of mae, mamp, gfp and slim (small preset, one short epoch) -> ``skel probe``.
Plus: the ``arrays`` round trip from a prepared NTU file, user TOML topologies, 2-D tube masking, 2-D
augmentations.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from skelcli import topology as T
from skelcli.cli import app
from skelcli.errors import SkelError
from skelcli.topology import BUILTIN, NTU25, Topology, get_topology, load_topology

#: One pytest-xdist worker runs this whole file (its module fixture is built once; make test uses --dist loadgroup).
pytestmark = pytest.mark.xdist_group("layouts")

runner = CliRunner()


def cli(*args, ok: bool = True) -> str:
    r = runner.invoke(app, [str(a) for a in args])
    if ok:
        assert r.exit_code == 0, r.output
    else:
        assert r.exit_code != 0, r.output
        assert "Traceback" not in r.output
    return r.output


# ----------------------------------------------------------------------------- topologies


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_builtin_topologies_are_valid_trees_with_symmetric_mirrors(name):
    t = BUILTIN[name]
    expected_v = {"ntu25": 25, "kinect20": 20, "coco17": 17, "openpose18": 18, "h36m17": 17, "mediapipe33": 33}[name]
    assert t.num_joints == expected_v and len(t.parents) == expected_v
    order = t.topological_order()
    pos = {j: i for i, j in enumerate(order)}
    assert sorted(order) == list(range(expected_v))
    assert all(pos[p] < pos[c] for c, p in t.bones)
    perm = t.mirror_permutation()
    assert [perm[perm[j]] for j in range(expected_v)] == list(range(expected_v))
    covered = sorted(j for _, js in t.parts for j in js)
    assert covered == list(range(expected_v))
    # the dict form (what a store's attribute holds) reads back as the same value
    assert Topology.from_dict(json.loads(json.dumps(t.to_dict()))) == t
    assert get_topology(name) is t


def test_ntu25_is_todays_layout():
    assert NTU25.parents == T.PARENTS and NTU25.center == T.ORIGIN_JOINT and NTU25.root == T.ROOT_JOINT
    assert NTU25.mirror_permutation() == T.mirror_permutation()
    assert NTU25.topological_order() == T.topological_order()
    assert [set(g) for g in NTU25.scale_groups.values()] == [set(g) for g in T.SCALE_GROUPS.values()]
    assert NTU25.channels == 3


def test_2d_layouts_have_a_confidence_channel():
    assert (BUILTIN["coco17"].dims, BUILTIN["coco17"].channels) == (2, 3)
    assert (BUILTIN["openpose18"].dims, BUILTIN["openpose18"].channels) == (2, 3)
    assert BUILTIN["coco17"].with_channels(confidence=False).channels == 2


RIG = """
name = "rig7"
dims = 3
center = "pelvis"
joints = ["pelvis", "spine", "head", "l_arm", "l_hand", "r_arm", "r_hand"]
parents = ["", "pelvis", "spine", "spine", "l_arm", "spine", "r_arm"]
mirror = [["l_arm", "r_arm"], ["l_hand", "r_hand"]]
[parts]
trunk = ["pelvis", "spine", "head"]
left_arm = ["l_arm", "l_hand"]
right_arm = ["r_arm", "r_hand"]
"""


def test_user_toml_topology(tmp_path):
    path = tmp_path / "rig.toml"
    path.write_text(RIG)
    t = load_topology(path)
    assert t.name == "rig7" and t.num_joints == 7 and t.parents == (-1, 0, 1, 1, 3, 1, 5) and t.center == 0
    assert t.scale_groups == {"trunk": (1, 2), "arms": (3, 4, 5, 6)}
    assert get_topology(str(path)) == t


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.replace('"l_arm", "spine", "r_arm"]', '"l_hand", "spine", "r_arm"]'), "not a tree"),
    (lambda s: s.replace('parents = ["",', 'parents = ["head",'), "exactly one root"),
    (lambda s: s.replace('left_arm = ["l_arm", "l_hand"]', 'left_arm = ["l_arm"]'), "parts do not cover"),
    (lambda s: s.replace('left_arm = ["l_arm", "l_hand"]', 'left_arm = ["l_arm", "l_hand", "head"]'), "is in parts"),
    (lambda s: s.replace('["l_hand", "r_hand"]]', '["l_hand", "r_arm"]]'), "two mirror pairs"),
    (lambda s: s.replace('mirror = [["l_arm", "r_arm"], ["l_hand", "r_hand"]]', 'mirror = [["l_arm", "r_hand"], ["l_hand", "r_arm"]]'),
     "not symmetric"),
    (lambda s: s.replace("dims = 3", "dims = 4"), "dims must be 2 or 3"),
    (lambda s: s.replace('center = "pelvis"', 'center = "tail"'), "unknown joint 'tail'"),
    (lambda s: s.replace("[parts]", "colour = 1\n[parts]"), "unknown key(s) colour"),
    (lambda s: s.replace("dims = 3", "dims = "), "not valid TOML"),
])
def test_invalid_toml_topologies_fail_with_the_reason(tmp_path, edit, message):
    path = tmp_path / "bad.toml"
    path.write_text(edit(RIG))
    with pytest.raises(SkelError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_topology(path)


def test_cli_rejects_a_bad_topology_with_one_line(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(RIG.replace('parents = ["",', 'parents = ["head",'))
    cli("synth", "arrays", "--out", tmp_path / "raw", "--topology", "kinect20", "--classes", "2", "--per-class", "2")
    out = cli("prepare", "arrays", "--raw", tmp_path / "raw", "--topology", path, "--out", tmp_path / "x.h5", ok=False)
    assert "exactly one root" in out
    out = cli("prepare", "arrays", "--raw", tmp_path / "raw", "--topology", "nope", "--out", tmp_path / "x.h5", ok=False)
    assert "unknown topology 'nope'" in out and "coco17" in out
    # the layout of the files must match the topology: kinect20 clips read as ntu25 are all rejected
    out = cli("prepare", "arrays", "--raw", tmp_path / "raw", "--topology", "ntu25", "--out", tmp_path / "x.h5", ok=False)
    assert "20 joints, topology ntu25 has 25" in out
    assert not (tmp_path / "x.h5").exists()


# ----------------------------------------------------------------------------- 2-D masking and augmentation


def test_2d_tube_masking_groups_joints_of_one_part_only():
    from skelcli.models.tube_masking import semantic_tube_masking

    coco = BUILTIN["coco17"]
    part_of = {j: name for name, js in coco.parts for j in js}
    gen = torch.Generator().manual_seed(0)
    n_t = 8
    mask, tubes = semantic_tube_masking(torch.full((16,), 0.6), n_t, 2, 40, generator=gen, return_tubes=True, topo=coco)
    assert mask.shape == (16, n_t * 17)
    assert all(tubes)
    for view, view_tubes in enumerate(tubes):
        rebuilt = torch.zeros(n_t, 17, dtype=torch.bool)
        for tube in view_tubes:
            joints = tube.joints(coco)
            assert {part_of[j] for j in joints} == {tube.part}  # one part per tube
            chain = coco.body_parts[tube.part]
            assert joints == chain[tube.c0 : tube.c0 + tube.w]  # a contiguous run of that part's chain
            rebuilt[tube.t0 : tube.t0 + tube.h, list(joints)] = True
        assert torch.equal(rebuilt.flatten(), mask[view])
        assert int(mask[view].sum()) <= int(0.6 * n_t * 17)


def test_2d_augmentations_keep_the_confidence_and_rotate_in_plane():
    from skelcli.data.augment import AugmentConfig, bone_scale, mirror, skeleton_augment
    from skelcli.data.clips import random_rotation

    coco = BUILTIN["coco17"]
    torch.manual_seed(0)
    x = torch.randn(4, 10, 17, 3)
    x[..., 2] = torch.rand(4, 10, 17)  # scores
    m = mirror(x, coco)
    assert torch.equal(m[..., 2], x[..., 2][..., coco.mirror_permutation()])
    assert torch.equal(m[..., 0], -x[..., 0][..., coco.mirror_permutation()])
    s = bone_scale(x, torch.full((4, len(coco.scale_groups)), 1.0), coco)
    assert torch.allclose(s, x, atol=1e-6)
    y = skeleton_augment(x, AugmentConfig(mirror_p=0, scale_p=0, rotate_p=1.0), coco)
    assert torch.equal(y[..., 2], x[..., 2])
    # an in-plane rotation keeps every 2-D bone length
    for c, p in coco.bones:
        assert torch.allclose((y[..., c, :2] - y[..., p, :2]).norm(dim=-1), (x[..., c, :2] - x[..., p, :2]).norm(dim=-1), atol=1e-5)
    clips = x[:, None]  # (N, M=1, T, V, C)
    r = random_rotation(clips, 0.5, generator=torch.Generator().manual_seed(1), dims=2)
    assert torch.equal(r[..., 2], clips[..., 2])
    assert torch.allclose(r[..., :2].norm(dim=-1), clips[..., :2].norm(dim=-1), atol=1e-5)
    assert not torch.allclose(r[..., :2], clips[..., :2])


# ----------------------------------------------------------------------------- arrays round trip


def test_arrays_round_trip_from_a_prepared_ntu_file_is_exact(tmp_path, data_file):
    from skelcli.data.store import open_info, read_samples, split_indices

    text = cli("export-arrays", data_file, "--out", tmp_path / "arrays", "--split", "xsub")
    assert f"wrote {open_info(data_file).num_samples} clips (ntu25 layout, split xsub)" in text
    out = tmp_path / "back.h5"
    cli("prepare", "arrays", "--raw", tmp_path / "arrays", "--topology", tmp_path / "arrays" / "topology.toml", "--out", out)
    a, b = open_info(data_file), open_info(out)
    assert b.topology == a.topology == NTU25
    sa, sb = read_samples(data_file, np.arange(a.num_samples)), read_samples(out, np.arange(b.num_samples))
    order = np.argsort(sa.names)  # the importer writes clips in name order
    assert list(np.asarray(sa.names)[order]) == sb.names
    for k, i in enumerate(order):
        assert np.array_equal(sa.joints[sa.offsets[i]:sa.offsets[i + 1]], sb.joints[sb.offsets[k]:sb.offsets[k + 1]])
    assert np.array_equal(sa.labels[order], sb.labels)
    names_a = {sa.names[i] for i in split_indices(data_file, "xsub", "test")}
    names_b = {sb.names[i] for i in split_indices(out, "default", "test")}
    assert names_a == names_b


def test_arrays_bad_entries_are_rejected_with_reasons(tmp_path):
    from skelcli.data.store import read_rejected

    raw = tmp_path / "raw"
    raw.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        np.save(raw / f"ok{i}.npy", rng.normal(size=(12, 20, 3)).astype(np.float32))  # (T, V, C): one person
    np.save(raw / "nan.npy", np.full((12, 20, 3), np.nan, np.float32))
    np.save(raw / "shape.npy", np.zeros((12, 21, 3), np.float32))
    np.save(raw / "zeros.npy", np.zeros((12, 20, 3), np.float32))
    (raw / "broken.npy").write_bytes(b"\x93NUMPY garbage")
    np.save(raw / "unlisted.npy", np.ones((12, 20, 3), np.float32))
    rows = [f"ok{i},{'walk' if i % 2 else 'sit'}," for i in range(6)] + ["nan,sit,", "shape,sit,", "zeros,sit,", "broken,sit,", "ghost,sit,"]
    (raw / "labels.csv").write_text("name,label,split\n" + "\n".join(rows) + "\n")
    out = tmp_path / "x.h5"
    text = cli("prepare", "arrays", "--raw", raw, "--topology", "kinect20", "--out", out, "--split-seed", "3")
    reasons = dict(read_rejected(out))
    assert set(reasons) == {"nan", "shape", "zeros", "broken", "unlisted", "ghost"}
    assert "NaN" in reasons["nan"] and "21 joints" in reasons["shape"] and "every frame is zero" in reasons["zeros"]
    assert "not listed" in reasons["unlisted"] and "no .npy/.npz file" in reasons["ghost"]
    info = json.loads(cli("info", out, "--json"))
    assert info["num_samples"] == 6 and info["topology"]["name"] == "kinect20"
    assert "samples kept" in text
    # class names from string labels, sorted; the random split is stratified and seeded
    from skelcli.data.store import open_info

    assert open_info(out).class_names == ["sit", "walk"]
    a = cli("prepare", "arrays", "--raw", raw, "--topology", "kinect20", "--out", tmp_path / "y.h5", "--split-seed", "3")
    assert a


# ----------------------------------------------------------------------------- every format, every method

#: (format, topology written by `skel synth` and read by `skel prepare`, split protocol)
FORMAT_CASES = [
    ("arrays", "h36m17", "default"),
    ("arrays", "mediapipe33", "default"),
    ("pyskl", "coco17", "xsub"),
    ("ctrgcn-npz", "ntu25", "xsub"),
    ("kinetics-skeleton", "openpose18", "default"),
    ("nw-ucla", "kinect20", "xview"),
]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """One prepared store per FORMAT_CASES entry (built lazily)."""
    from skelcli.data.formats import formats

    cache: dict = {}
    known = formats()

    def get(fmt: str, topo: str):
        if fmt not in known:
            pytest.skip(f"format {fmt} not in this build")
        key = (fmt, topo)
        if key not in cache:
            root = tmp_path_factory.mktemp(f"{fmt}-{topo}")
            cli("synth", fmt, "--out", root / "raw", "--topology", topo, "--classes", "3", "--per-class", "8", "--seed", "1")
            extra = ["--protocol", "xsub"] if fmt == "ctrgcn-npz" else []
            raw = [root / "raw"]
            if fmt == "pyskl" or fmt == "ctrgcn-npz":
                raw = sorted(p for p in (root / "raw").iterdir() if p.is_file())
            args = ["prepare", fmt, *sum((["--raw", p] for p in raw), []), "--topology", topo, "--out", root / "data.h5", *extra]
            cli(*args)
            cli("info", root / "data.h5", "--verify")
            cache[key] = root / "data.h5"
        return cache[key]

    return get


@pytest.mark.parametrize("method", ["mae", "mamp", "gfp", "slim"])
@pytest.mark.parametrize("fmt, topo, split", FORMAT_CASES, ids=[f"{f}-{t}" for f, t, _ in FORMAT_CASES])
def test_every_format_through_every_method(prepared, tmp_path, fmt, topo, split, method):
    from skelcli.data.store import open_info
    from skelcli.engine.checkpoint import load_encoder

    data = prepared(fmt, topo)
    layout = open_info(data).topology
    assert layout.name == topo
    run = tmp_path / "run"
    cli("pretrain", "--method", method, "--preset", "small", "--data", data, "--split", split, "--epochs", "1",
        "--batch-size", "4", "--set", "method.encoder.depth=1", "--out", run)
    encoder, _, _ = load_encoder(run / "last.pt")
    assert (encoder.config.num_joints, encoder.config.in_chans) == (layout.num_joints, layout.channels)
    out = cli("probe", "-c", run / "last.pt", "-d", data, "--split", split, "--protocol", "knn", "--k", "3",
              "--json", tmp_path / "probe.json")
    result = json.loads((tmp_path / "probe.json").read_text())
    assert 0.0 <= result["top1"] <= 1.0 and result["n_test"] > 0, out


def test_schema_1_files_still_read_as_ntu25(tmp_path, data_file):
    """A store written before topologies (schema_version 1, no topology attr) reads, trains and verifies."""
    import shutil

    import h5py

    from skelcli.data.store import open_info, read_topology

    old = tmp_path / "v1.h5"
    shutil.copy(data_file, old)
    with h5py.File(old, "r+") as f:
        del f.attrs["topology"]
        f.attrs["schema_version"] = 1
    info = open_info(old)
    assert info.schema_version == 1 and info.topology == NTU25 and read_topology(old) == NTU25
    cli("info", old, "--verify")
    cli("pretrain", "--method", "mamp", "--preset", "small", "--data", old, "--split", "xsub", "--epochs", "1",
        "--batch-size", "4", "--set", "method.encoder.depth=1", "--out", tmp_path / "run")


def test_encoder_settings_that_contradict_the_data_fail_with_the_field_name(tmp_path, prepared):
    data = prepared("arrays", "h36m17")
    out = cli("pretrain", "--method", "mae", "--preset", "small", "--data", data, "--split", "default", "--epochs", "1",
              "--set", "method.encoder.num_joints=25", "--out", tmp_path / "run", ok=False)
    assert "method.encoder.num_joints is 25" in out and "h36m17: 17 joints" in out


@pytest.mark.parametrize("args, words", [
    (["prepare", "arrays", "--raw", "{raw}", "--topology", "kinect20", "--test-fraction", "1.5", "--out", "{out}", "--force"],
     ["--test-fraction must be between 0 and 1"]),
    (["prepare", "arrays", "--raw", "{raw}", "--out", "{out}", "--force"], ["arrays: pass --topology"]),
    (["prepare", "arrays", "--raw", "{raw}", "--topology", "kinect20", "--workers", "2", "--out", "{out}", "--force"],
     ["--workers applies to the raw NTU / PKU-MMD kinds"]),
    (["prepare", "arrays", "--raw", "{raw}", "--topology", "kinect20", "--out", "{out}"], ["exists; pass --force"]),
    (["prepare", "ntu60", "--raw", "{raw}", "--topology", "coco17", "--out", "{out}", "--force"],
     ["--topology and --protocol apply to the formats"]),
    (["prepare", "ctrgcn-npz", "--raw", "{raw}", "--out", "{out}", "--force"], ["ctrgcn-npz"]),
    (["synth", "arrays", "--out", "{tmp}/s", "--per-class", "0"], ["--classes and --per-class must be at least 1"]),
    (["synth", "ntu60", "--out", "{tmp}/s", "--topology", "coco17"], ["--topology applies to the formats"]),
    (["synth", "nope", "--out", "{tmp}/s"], ["unknown dataset 'nope'"]),
    (["export-arrays", "{tmp}/missing.h5", "--out", "{tmp}/e"], ["no such file"]),
    (["export-arrays", "{out}", "--out", "{raw}"], ["is not empty; pass --force"]),
    (["export-arrays", "{out}", "--out", "{tmp}/e", "--split", "xsub"], ["unknown protocol 'xsub'", "default"]),
])
def test_bad_values_of_the_new_options_fail_with_one_line_and_lose_nothing(tmp_path, args, words):
    """Every new command / flag of issue 14: a bad value is one ``error:`` line, no traceback, and the
    existing store and raw folder are byte-identical afterwards."""
    from helpers import assert_one_line_error, run_cli

    raw, out = tmp_path / "raw", tmp_path / "data.h5"
    cli("synth", "arrays", "--out", raw, "--topology", "kinect20", "--classes", "2", "--per-class", "4")
    cli("prepare", "arrays", "--raw", raw, "--topology", "kinect20", "--out", out)
    before = {p: p.read_bytes() for p in [out, *sorted(raw.iterdir())]}
    r = run_cli(*[a.format(raw=raw, out=out, tmp=tmp_path) for a in args])
    for word in words:
        assert_one_line_error(r, word)
    assert {p: p.read_bytes() for p in [out, *sorted(raw.iterdir())]} == before
    assert not (tmp_path / "e").exists() and not (tmp_path / "s").exists()
