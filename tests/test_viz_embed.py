"""Issue 16 items 3 and 4: `skel viz embed` (feature map + kNN top-1) and the confusion-matrix report
(row-normalised, sorted PNG; top confusions in the JSON results and the summary tables)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import distinct_colours
from typer.testing import CliRunner

from skelcli.cli import app
from test_eval_cli import make_checkpoint

#: One pytest-xdist worker runs this whole file (its module fixture is built once; make test uses --dist loadgroup).
pytestmark = pytest.mark.xdist_group("viz_embed")

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A tiny MAMP-format checkpoint (16-d encoder) for the NTU60 `data_file`."""
    return make_checkpoint(tmp_path_factory.mktemp("embed_ckpt") / "pre" / "last.pt")


def assert_picture(path: Path, size: tuple[int, int] | None = None, min_side: int = 300) -> np.ndarray:
    """A PNG that decodes, has the expected (width, height) when given, and is not blank."""
    import matplotlib.image as mpimg

    assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(path)  # (H, W, 3 or 4) float in [0, 1]
    h, w = img.shape[:2]
    if size is not None:
        assert (w, h) == size
    assert min(h, w) >= min_side
    rgb = img[..., :3]
    assert rgb.var() > 1e-3
    assert distinct_colours(img) > 20
    return img


def _test_labels(data_file: Path, split: str = "xsub", part: str = "test") -> np.ndarray:
    from skelcli.data.store import read_labels, split_indices

    return np.asarray(read_labels(data_file, split_indices(data_file, split, part)))


# --------------------------------------------------------------------------------------------- embed
def test_embedding_map_matches_probe_knn_and_lists_the_classes_present(data_file, ckpt, tmp_path):
    from skelcli.data.store import open_info
    from skelcli.viz.embed import DPI, class_labels, embedding_map, figure_size

    r = run("probe", "-c", ckpt, "-d", data_file, "--protocol", "knn", "--k", "3", "--no-cache",
            "--out", tmp_path / "p", "--json", tmp_path / "p.json")
    assert r.exit_code == 0, r.output
    probe = json.loads((tmp_path / "p.json").read_text())

    res = embedding_map(ckpt, data_file, tmp_path / "embed.png", k=3, cache=False)
    assert res["knn_top1"] == probe["top1"] and res["k"] == probe["k"] == 3
    assert res["method"] == "pca" and res["path"] == str(tmp_path / "embed.png")
    labels = _test_labels(data_file)
    assert res["n_points"] == res["n_part"] == len(labels) == probe["n_test"]
    present = sorted(set(labels.tolist()))
    assert res["classes_present"] == present
    names = open_info(data_file).class_names
    assert names is not None and res["legend"] == [class_labels(names, 60)[c] for c in present]  # action names, present only
    assert res["legend"][0] == names[present[0]] and any(x.endswith("\u2026") for x in res["legend"])  # long ones cut
    w, h = figure_size(len(present))
    assert_picture(tmp_path / "embed.png", size=(round(w * DPI), round(h * DPI)))


def test_cli_embed_tsne_train_part_json_and_max_clips(data_file, ckpt, tmp_path):
    out, js = tmp_path / "sub" / "tsne.png", tmp_path / "tsne.json"
    r = run("viz", "embed", "-c", ckpt, "-d", data_file, "--part", "train", "--method", "tsne", "--max-clips", "6",
            "--k", "3", "--out", out, "--json", js)
    assert r.exit_code == 0, r.output
    res = json.loads(js.read_text())
    assert res["method"] == "tsne" and res["part"] == "train" and res["n_points"] == 6
    assert res["n_part"] == len(_test_labels(data_file, part="train")) > 6
    assert "kNN top-1 (k=3)" in r.output and "tsne.png" in r.output
    assert_picture(out)
    # the same kNN number whichever part is drawn, with the feature cache next to the checkpoint
    again = run("viz", "embed", "-c", ckpt, "-d", data_file, "--k", "3", "--out", tmp_path / "pca.png", "--json", tmp_path / "pca.json")
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "pca.json").read_text())["knn_top1"] == res["knn_top1"]


def test_cli_embed_random_init_without_checkpoint(data_file, tmp_path):
    r = run("viz", "embed", "-d", data_file, "--random-init", "--k", "3", "--out", tmp_path / "r.png", "--json", tmp_path / "r.json")
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["random_init"] is True and res["checkpoint"] is None and 0 <= res["knn_top1"] <= 1
    assert not (tmp_path / ".features").exists()  # no cache folder next to the picture
    assert_picture(tmp_path / "r.png")


def test_class_names_fall_back_to_indices_and_many_classes_get_markers(tmp_path):
    from skelcli.viz.embed import MARKERS, class_labels, figure_size, plot_embedding

    assert class_labels(None, 3) == ["class 0", "class 1", "class 2"]
    assert class_labels(["a", "b"], 3) == ["class 0", "class 1", "class 2"]  # wrong length -> indices
    assert class_labels(["x" * 50], 1)[0].endswith("\u2026") and len(class_labels(["x" * 50], 1)[0]) == 32
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(0, 120, 2), 3)  # 60 of 120 classes present
    xy = rng.normal(size=(len(labels), 2)) + labels[:, None] * 0.05
    texts = plot_embedding(xy, labels, class_labels(None, 120), "many", tmp_path / "many.png")
    assert texts == [f"class {c}" for c in range(0, 120, 2)]
    assert len(MARKERS) * 20 >= 120
    w, h = figure_size(60)
    assert w > figure_size(30)[0]  # a second legend column widens the figure
    assert_picture(tmp_path / "many.png", size=(round(w * 100), round(h * 100)))


def test_bad_embed_options_are_one_line_errors(data_file, ckpt, tmp_path):
    from test_bad_input import one_line_error

    one_line_error(run("viz", "embed", "-c", ckpt, "-d", data_file, "--method", "umap", "--out", tmp_path / "a.png"), "--method", "umap")
    one_line_error(run("viz", "embed", "-c", ckpt, "-d", data_file, "--part", "val", "--out", tmp_path / "a.png"), "--part")
    one_line_error(run("viz", "embed", "-c", ckpt, "-d", data_file, "--max-clips", "0", "--out", tmp_path / "a.png"), "--max-clips")
    one_line_error(run("viz", "embed", "-c", ckpt, "-d", data_file, "--out", tmp_path), "--out", "is a folder")
    one_line_error(run("viz", "embed", "-c", ckpt, "-d", data_file, "--method", "tsne", "--max-clips", "3",
                       "--out", tmp_path / "a.png"), "at least 4 clips")
    assert not (tmp_path / "a.png").exists()


def test_missing_matplotlib_names_the_viz_extra(data_file, ckpt, tmp_path, monkeypatch):
    from test_bad_input import one_line_error

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    r = run("viz", "embed", "-c", ckpt, "-d", data_file, "--out", tmp_path / "e.png")
    one_line_error(r, "skel viz embed", "matplotlib", "[viz]")
    assert not (tmp_path / "e.png").exists()


# ----------------------------------------------------------------------------------------- confusion
CM3 = np.array([[5, 2, 1],
                [3, 4, 0],
                [1, 2, 6]])


def test_top_confusions_on_a_hand_built_matrix():
    from skelcli.eval.report import top_confusions

    top = top_confusions(CM3, ["a", "b", "c"])
    pairs = [(d["true"], d["predicted"], d["count"]) for d in top]
    # count descending; the two 2s: b|a 2/8 = 0.25 before b|c 2/9; the two 1s: c|a 1/8 before a|c 1/9
    assert pairs == [("b", "a", 3), ("a", "b", 2), ("c", "b", 2), ("a", "c", 1), ("c", "a", 1)]
    assert [d["share_of_true"] for d in top] == pytest.approx([3 / 7, 2 / 8, 2 / 9, 1 / 8, 1 / 9])
    assert (top[0]["true_index"], top[0]["predicted_index"]) == (1, 0)
    assert top_confusions(CM3, ["a", "b", "c"], k=2) == top[:2]
    assert [d["true"] for d in top_confusions(CM3)] == ["1", "0", "2", "0", "2"]  # no names -> indices
    tied = np.array([[0, 1, 1], [1, 0, 1], [0, 0, 2]])  # four 1s, every share 0.5 -> by true, then predicted
    assert [(d["true_index"], d["predicted_index"]) for d in top_confusions(tied)] == [(0, 1), (0, 2), (1, 0), (1, 2)]
    assert top_confusions(np.diag([3, 4])) == []


def test_row_normalisation_and_seriation():
    from skelcli.eval.report import row_normalise, seriation

    cm = np.array([[5, 2, 1, 0], [3, 4, 0, 0], [0, 0, 0, 0], [1, 2, 0, 6]])
    norm = row_normalise(cm)
    assert norm.sum(axis=1) == pytest.approx([1, 1, 0, 1])
    assert norm[0, 1] == pytest.approx(2 / 8)
    # accuracies 5/8, 4/7, -, 6/9: worst first, the class without true samples last
    assert seriation(cm).tolist() == [1, 0, 3, 2]
    assert seriation(np.diag([2, 2, 2])).tolist() == [0, 1, 2]  # ties keep the index order


def test_save_confusion_png_sorted_row_normalised_and_returns_top(tmp_path, monkeypatch):
    import skelcli.eval.report as report

    shown = []
    real = report._confusion_png_matplotlib
    monkeypatch.setattr(report, "_confusion_png_matplotlib",
                        lambda cm, path, labels, n: (shown.append((cm.copy(), list(labels), n)), real(cm, path, labels, n)))
    cm = np.zeros((5, 5), dtype=np.int64)
    cm[:3, :3] = CM3  # classes 3 and 4 never occur
    res = report.save_confusion(cm, tmp_path, class_names=["a", "b", "c", "d", "e"])
    assert np.array_equal(np.load(res["npy"]), cm)  # the saved matrix stays full-size, index order
    assert np.array_equal(np.loadtxt(res["csv"], delimiter=",", dtype=int), cm)
    assert res["top_confusions"] == report.top_confusions(cm, ["a", "b", "c", "d", "e"])
    m, labels, n = shown[-1]
    assert labels == ["b", "a", "c"] and n == 5  # present classes, accuracy ascending
    assert np.array_equal(m, CM3[np.ix_([1, 0, 2], [1, 0, 2])])
    img = assert_picture(res["png"])
    assert img.shape[1] > img.shape[0]  # the colour bar sits right of the square matrix
    json.dumps(res)  # JSON-ready


def test_probe_and_finetune_report_top_confusions(data_file, ckpt, tmp_path):
    from skelcli.data.store import open_info
    from skelcli.eval.report import top_confusions

    names = open_info(data_file).class_names
    r = run("probe", "-c", ckpt, "-d", data_file, "--protocol", "knn", "--k", "3", "--out", tmp_path / "p", "--json", tmp_path / "p.json")
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "p.json").read_text())
    top = res["files"]["top_confusions"]
    assert top == top_confusions(np.load(tmp_path / "p" / "confusion.npy"), names)
    assert "top confusions" in r.output
    for pair in top[:5]:
        assert f"{pair['true']} -> {pair['predicted']}: {pair['count']}" in r.output

    r = run("finetune", "-c", ckpt, "-d", data_file, "--preset", "small", "--epochs", "1", "--batch-size", "8",
            "--out", tmp_path / "f", "--json", tmp_path / "f.json")
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "f.json").read_text())
    run0 = res["runs"][0]
    assert run0["confusion_files"]["top_confusions"] == top_confusions(np.load(run0["confusion_files"]["npy"]), names)
    assert "top confusions" in r.output
