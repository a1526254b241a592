"""Shared test helpers (importable from any test module: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import numpy as np


def toy_split(n_per: int, classes: int, seed: int, *, frames: tuple[int, int] = (12, 20), second_person: bool = False):
    """A SplitData of clips whose class sets a constant pose offset: easy for any encoder.

    Clips of ``frames`` = [lo, hi) frames (12-19), 2 persons, 25 joints; person 0 = N(0, 0.1) + (c - C/2);
    person 1 empty, or with ``second_person`` N(0, 0.1) - (c - C/2) in every other clip of a class.
    """
    from skelcli.eval.features import SplitData

    rng = np.random.default_rng(seed)
    parts, labels = [], []
    for c in range(classes):
        for i in range(n_per):
            t = int(rng.integers(*frames))
            clip = np.zeros((t, 2, 25, 3), dtype=np.float32)
            clip[:, 0] = 0.1 * rng.normal(size=(t, 25, 3)) + (c - classes / 2)
            if second_person and i % 2:
                clip[:, 1] = 0.1 * rng.normal(size=(t, 25, 3)) - (c - classes / 2)
            parts.append(clip)
            labels.append(c)
    lengths = np.array([p.shape[0] for p in parts])
    return SplitData(np.concatenate(parts), np.concatenate([[0], np.cumsum(lengths)]), np.array(labels), lengths, "toy", classes,
                     [f"s{i}" for i in range(len(labels))])


class StopAfter:
    """Stands in for the SIGINT/SIGTERM handler (``StopSignal``): reports SIGTERM from the ``n``-th check on."""

    def __init__(self, n: int) -> None:
        self.n, self.checks = n, 0

    @property
    def received(self):
        self.checks += 1
        return "SIGTERM" if self.checks >= self.n else None


# ----------------------------------------------------------------- pretraining-gain checks (CLI)
#: Exactly the data of `skel demo` (seed 0, raw-file faults on): 768 files of 16 classes, 4 subjects,
#: 2 setups; 753 clips kept, 376 in the xsub test split, so one clip is 0.27 points of top-1.
MEDIUM_SYNTH = ["--difficulty", "medium", "--classes", "16", "--subjects", "4", "--setups", "2", "--seed", "0"]


def cli_ok(args: list[str]) -> str:
    """Run ``skel ARGS`` through CliRunner; assert success and return the output."""
    from typer.testing import CliRunner

    from skelcli.cli import app

    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    return r.output


def medium_data(root):
    """`skel synth ntu60 --difficulty medium` (the demo's 768 files) -> `skel prepare`; returns the .h5 path."""
    cli_ok(["synth", "ntu60", "--out", str(root / "raw"), *MEDIUM_SYNTH])
    h5 = root / "medium.h5"
    cli_ok(["prepare", "ntu60", "--raw", str(root / "raw"), "--out", str(h5), "--workers", "1"])
    return h5


def pretrain_small(h5, method: str, out, epochs: int | None = None):
    """`skel pretrain --preset small --seed 0` (``--epochs`` if given); returns the path of last.pt."""
    cli_ok(["pretrain", "--method", method, "--preset", "small", "--data", str(h5), "--split", "xsub", "--device", "cpu",
            "--seed", "0", "--out", str(out), "--no-progress", *(["--epochs", str(epochs)] if epochs else [])])
    return out / "last.pt"


def json_top1(args: list[str], out, key: str = "top1") -> float:
    """Run a probe / finetune command with ``--json out`` and read ``key`` (finetune: the mean over repeats)."""
    import json

    cli_ok([*args, "--json", str(out)])
    value = json.loads(out.read_text())[key]
    return float(value["mean"] if isinstance(value, dict) else value)


#: The fast probes every gain test measures with (logistic regression, cosine kNN k=20), for every method.
FAST_RECIPES = {"linear": "sklearn", "knn": "skel"}


def probe_vs_random(h5, ckpt, tmp_path) -> dict[str, tuple[float, float]]:
    """`skel probe` linear and kNN top-1 of the checkpoint's encoder and of a random encoder of the
    same shape: {"linear": (trained, random), "knn": (trained, random)}. The kNN probes read the features
    that the linear ones extracted (the feature cache next to the checkpoint, keyed by the encoder's weights)."""
    out = {}
    for proto in ("linear", "knn"):
        common = ["probe", "--checkpoint", str(ckpt), "--data", str(h5), "--split", "xsub", "--protocol", proto,
                  "--recipe", FAST_RECIPES[proto], "--device", "cpu"]
        out[proto] = (json_top1([*common, "--out", str(tmp_path / f"{proto}-trained")], tmp_path / f"{proto}-trained.json"),
                      json_top1([*common, "--random-init", "--out", str(tmp_path / f"{proto}-random")], tmp_path / f"{proto}-random.json"))
    return out


def assert_gain(results: dict[str, tuple[float, float]], margin: float) -> None:
    """Every protocol's trained top-1 exceeds the baseline's by at least ``margin``.

    The one rule for every "pretraining helps" test: ``margin`` is chosen well under the smallest
    gain measured over seeds (each test's docstring gives the measurements), so that the verdict
    cannot flip by floating-point noise, a BLAS kernel or a CPU model (each moves a result by about
    as much as another training seed does).
    """
    gains = {p: round(t - r, 4) for p, (t, r) in results.items()}
    assert all(g >= margin for g in gains.values()), f"gains {gains} (need >= {margin}) from {results}"


def distinct_colours(img) -> int:
    """Distinct RGB colours of a decoded picture (H, W, C >= 3), uint8 or float in [0, 1]. Each pixel is
    packed into one uint32 first: np.unique(..., axis=0) on the (H*W, 3) rows took
    2.9 s of the 5.4 s of test_viz_curves' two-runs test (cProfile, AMD EPYC, 2026-12-06)."""
    rgb = np.asarray(img)[..., :3]
    if rgb.dtype != np.uint8:
        rgb = (rgb * 255).round().astype(np.uint8)
    packed = (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8) | rgb[..., 2]
    return len(np.unique(packed))


def run_cli(*args):
    """``skel ARGS`` through CliRunner (arguments stringified); returns the Result."""
    from typer.testing import CliRunner

    from skelcli.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def assert_one_line_error(r, text: str) -> None:
    """A failed command that printed exactly one ``error:`` line containing ``text`` and no traceback."""
    assert r.exit_code != 0, r.output
    assert "Traceback" not in r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and text in lines[0], r.output
