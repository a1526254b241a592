"""`skel viz clip` (issue 16 item 2): the mask overlay is the methods' own masking draw, and the
GIF / contact-sheet PNG it writes are real, non-blank pictures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import distinct_colours
from typer.testing import CliRunner

from skelcli.cli import app
from skelcli.data.store import open_store
from skelcli.engine.checkpoint import save_checkpoint
from skelcli.methods.slim import SlimSettings
from skelcli.models.masking import keep_count, motion_aware_masking, random_masking
from skelcli.models.tube_masking import semantic_tube_masking, stratified_ratios
from skelcli.topology import NUM_JOINTS
from skelcli.viz.clip import MaskOptions, clip_view, load_clip, mask_tokens, resolve_setup

#: One pytest-xdist worker runs this whole file (its module fixture is built once; make test uses --dist loadgroup).
pytestmark = pytest.mark.xdist_group("viz_clip")

iio = pytest.importorskip("imageio.v3")
pytest.importorskip("matplotlib")

V = NUM_JOINTS
runner = CliRunner()


def run(*args):
    return runner.invoke(app, ["viz", "clip", *[str(a) for a in args]])


def one_line_error(r, *words: str) -> str:
    assert r.exit_code == 2, (r.exit_code, r.output)
    assert "Traceback" not in r.output
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, r.output
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def names(data_file) -> list[str]:
    with open_store(data_file) as f:
        return [str(n) for n in f["name"].asstr()[()]]


@pytest.fixture(scope="module")
def two_person_name(names) -> str:
    """A050 (punching/slapping other person) is a two-person action of the synthetic set."""
    return next(n for n in names if n.endswith("A050"))


@pytest.fixture(scope="module")
def view(data_file, two_person_name) -> torch.Tensor:
    """(M=2, 120, V, 3): the MAMP encoder's test view of a two-person clip."""
    clip = load_clip(data_file, two_person_name)
    out = clip_view(clip.joints, 120, 0.95)
    assert out.shape == (2, 120, V, 3)
    assert float(out[1].abs().sum()) > 0  # the second person is there
    return out


def _check_picture(img: np.ndarray) -> None:
    """(H, W, C) uint8, a plausible size, not blank, more than a few colours, some mask red."""
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] in (3, 4)
    h, w = img.shape[:2]
    assert 300 <= h <= 2000 and 300 <= w <= 2000, img.shape
    rgb = img[..., :3].astype(int)
    assert rgb.std() > 20
    assert distinct_colours(img) > 8
    red = (rgb[..., 0] > 170) & (rgb[..., 1] < 90) & (rgb[..., 2] < 90)
    assert red.sum() > 50  # masked joints are drawn


# ------------------------------------------------------------------------------- the overlay
def test_random_overlay_is_random_masking_with_the_seed(view) -> None:
    got = mask_tokens(view, "random", t_patch=4, seed=7, options=MaskOptions(ratio=0.9))
    ref = random_masking(2, 30 * V, 0.9, generator=torch.Generator().manual_seed(7)).mask.bool().reshape(2, 30, V)
    assert got.dtype == torch.bool and got.shape == (2, 30, V)
    assert torch.equal(got, ref)
    # 74 of 750 stay visible at 0.9 (int(750 * 0.1) = 74 in floating point), so 676 are masked
    assert got.sum(dim=(1, 2)).tolist() == [750 - keep_count(750, 0.9)] * 2 == [676, 676]
    assert not torch.equal(got, mask_tokens(view, "random", t_patch=4, seed=8))


def test_motion_overlay_is_motion_aware_masking_with_the_seed(view) -> None:
    got = mask_tokens(view, "motion", t_patch=4, seed=3, options=MaskOptions(ratio=0.9, tau=0.8))
    ref = motion_aware_masking(view, 4, 0.9, 0.8, generator=torch.Generator().manual_seed(3)).mask.bool().reshape(2, 30, V)
    assert torch.equal(got, ref)
    assert got.sum(dim=(1, 2)).tolist() == [676, 676]
    # the motion prior matters: same seed, different tokens than random masking
    assert not torch.equal(got, mask_tokens(view, "random", t_patch=4, seed=3))


def test_tube_overlay_is_semantic_tube_masking_with_slims_options(view) -> None:
    s = SlimSettings()
    got = mask_tokens(view, "tube", t_patch=4, seed=5)  # MaskOptions defaults = SLiM's global-view options
    gen = torch.Generator().manual_seed(5)
    ratios = stratified_ratios(2, *s.mask_ratio, generator=gen)
    ref = semantic_tube_masking(ratios, 30, s.global_min_patches, max(1, int(s.global_max_patches * 750)), s.mask_max_tries, generator=gen)
    assert torch.equal(got, ref.reshape(2, 30, V))
    counts = got.sum(dim=(1, 2))
    assert bool((counts <= (ratios * 750).long()).all()) and bool((counts > 0).all())
    assert mask_tokens(view, "none", t_patch=4, seed=5).sum() == 0


def test_checkpoint_sets_view_and_mask_options(tmp_path) -> None:
    ckpt = save_checkpoint(tmp_path / "slim.pt", {
        "method": "slim", "encoder_config": {"num_frames": 32, "t_patch": 8},
        "settings": {"method": {"name": "slim", "mask_ratio": [0.6, 0.7], "global_min_patches": 4,
                                "global_max_patches": 0.25, "mask_max_tries": 5}, "data": {"test_crop": 0.9}},
    })
    setup = resolve_setup(None, ckpt, "ntu60")
    assert (setup.num_frames, setup.t_patch, setup.n_t, setup.test_crop, setup.mask) == (32, 8, 4, 0.9, "tube")
    o = setup.options
    assert (o.tube_ratio, o.tube_min_patches, o.tube_max_patches, o.tube_max_tries) == ((0.6, 0.7), 4, 0.25, 5)
    mamp = save_checkpoint(tmp_path / "mamp.pt", {
        "method": "mamp", "encoder_config": {"num_frames": 16, "t_patch": 4},
        "settings": {"method": {"name": "mamp", "mask_ratio": 0.8, "tau": 0.5}},
    })
    setup = resolve_setup(None, mamp, "ntu60")
    assert (setup.mask, setup.options.ratio, setup.options.tau, setup.n_t) == ("motion", 0.8, 0.5, 4)
    assert resolve_setup("random", mamp, "ntu60").mask == "random"
    gfp = save_checkpoint(tmp_path / "gfp.pt", {"method": "gfp", "encoder_config": {}, "settings": {"method": {"name": "gfp"}}})
    assert resolve_setup(None, gfp, "ntu120").options.tau == 0.75  # no tau stored: the dataset's
    assert resolve_setup(None, gfp, "ntu120").mask == "motion"


# ------------------------------------------------------------------------------- the command
def test_gif_is_an_animation_of_two_persons_with_masks(data_file, two_person_name, tmp_path) -> None:
    out = tmp_path / "clip.gif"
    r = run("--data", data_file, "--name", two_person_name, "--mask", "motion", "--frames", "6", "--out", out)
    assert r.exit_code == 0, r.output
    assert f"wrote {out}: 6 frames of the 120-frame view, motion mask, 90.1% of tokens masked" in r.output
    frames = iio.imread(out, index=None)
    assert frames.ndim == 4 and frames.shape[0] == 6
    for img in frames:
        _check_picture(img)
    assert not np.array_equal(frames[0], frames[-1])  # it moves
    # both persons' colours are there (tab:blue, tab:green)
    rgb = frames[0][..., :3].astype(int)
    for colour in ((31, 119, 180), (44, 160, 44)):
        assert (np.abs(rgb - np.array(colour)).sum(-1) < 40).sum() > 30, colour


def test_mp4_is_a_video_of_the_same_frames(data_file, two_person_name, tmp_path) -> None:
    pytest.importorskip("imageio_ffmpeg")
    import imageio.v2 as iio2

    out = tmp_path / "clip.mp4"
    r = run("--data", data_file, "--name", two_person_name, "--mask", "random", "--frames", "5", "--out", out)
    assert r.exit_code == 0, r.output
    assert "5 frames of the 120-frame view, random mask" in r.output
    frames = iio2.mimread(out)
    assert len(frames) == 5
    for img in frames:
        _check_picture(img)
    assert not list(tmp_path.glob(".clip.tmp-*"))


def test_png_is_a_contact_sheet(data_file, two_person_name, tmp_path) -> None:
    from PIL import Image

    out = tmp_path / "sheet.png"
    r = run("--data", data_file, "--name", two_person_name, "--mask", "tube", "--frames", "8", "--out", out)
    assert r.exit_code == 0, r.output
    assert "8 panels of the 120-frame view, tube mask" in r.output
    with Image.open(out) as im:
        assert im.format == "PNG"
        im.verify()
    img = iio.imread(out)
    _check_picture(img)
    assert img.shape[1] > img.shape[0] * 0.5


def test_checkpoint_view_in_the_command(data_file, two_person_name, tmp_path) -> None:
    ckpt = save_checkpoint(tmp_path / "mae.pt", {
        "method": "mae", "encoder_config": {"num_frames": 16, "t_patch": 4}, "settings": {"method": {"name": "mae", "mask_ratio": 0.75}},
    })
    out = tmp_path / "mae.gif"
    r = run("--data", data_file, "--name", two_person_name, "--method-checkpoint", ckpt, "--out", out)
    assert r.exit_code == 0, r.output
    # 16 frames (every frame of the view), MAE's random masking at 0.75: 100 - int(100 * 0.25) = 75 per person
    assert "16 frames of the 16-frame view, random mask, 75.0% of tokens masked" in r.output


def test_unknown_name_is_one_line_listing_names(data_file, names, tmp_path) -> None:
    r = run("--data", data_file, "--name", "S999C001P001R001A001", "--out", tmp_path / "x.gif")
    line = one_line_error(r, "S999C001P001R001A001", "not in", names[0][:8])
    assert any(n in line for n in names)
    assert not (tmp_path / "x.gif").exists()


def test_bad_extension_and_bad_mask_are_one_line(data_file, names, tmp_path) -> None:
    one_line_error(run("--data", data_file, "--name", names[0], "--out", tmp_path / "x.avi"), ".gif", ".mp4", ".png")
    one_line_error(run("--data", data_file, "--name", names[0], "--mask", "blocks", "--out", tmp_path / "x.gif"), "--mask", "tube")
    one_line_error(run("--data", data_file, "--name", names[0], "--out", tmp_path), "--out", "folder")
    assert list(tmp_path.iterdir()) == []


def test_help_shows_an_example() -> None:
    r = run("--help")
    assert r.exit_code == 0 and "skel viz clip --data" in r.output


def test_missing_viz_extra_is_one_line(data_file, names, tmp_path, monkeypatch) -> None:
    import skelcli.viz.clip as viz

    def missing() -> None:
        raise ModuleNotFoundError("No module named 'imageio'", name="imageio")

    monkeypatch.setattr(viz, "require_viz", missing)
    r = run("--data", data_file, "--name", names[0], "--out", tmp_path / "x.gif")
    one_line_error(r, "needs imageio", "skelcli[viz]")
