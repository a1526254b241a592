"""Pretraining beats a random encoder on synthetic data (issues 3-6: "linear-probe accuracy of a briefly
pretrained encoder beats a random-initialised one by a clear margin").

The whole chain runs through the real CLI (CliRunner): ``skel synth`` -> ``skel prepare`` ->
``skel pretrain --preset small`` -> ``skel probe`` (linear and kNN) on the pretrained checkpoint and on
a freshly initialised encoder of the same config (``--random-init``). The data is the "hard" synthetic
setting (``SynthSettings.difficulty``): classes come in pairs that share pose, angle ranges and tempo
and differ only in how two joints are coordinated (in phase vs anti-phase).

Status (measured 2026-11-21, see the report of task I): with the small preset (and with 2-5x more
steps, decoder depth 3, batch 16) the pretrained encoder does NOT beat the random one by a clear
margin on any synthetic setting tried (linear top-1, xsub, 12 hard classes: MAMP 47-49 % vs random
47 %; 16 easy classes: MAMP 69-79 % vs random 91 %). The check is therefore an expected failure
(``xfail``, not strict) that runs only with ``SKELCLI_SLOW_TESTS=1`` (about 1.5 min on 2 cores); it
turns into a pass, and should lose the marker, once the pretraining recipe buys the margin.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from skelcli.cli import app

#: The synthetic data of the check (also what the demo and the GFP / SLiM checks use).
SYNTH_ARGS = ["--difficulty", "hard", "--classes", "12", "--subjects", "4", "--setups", "2", "--replications", "2",
              "--no-faults", "--seed", "0"]
#: Linear top-1 margin (absolute) that pretraining must buy over the random encoder.
MARGIN = 0.10


def _invoke(args: list[str]) -> None:
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("repr")
    _invoke(["synth", "ntu60", "--out", str(root / "raw"), *SYNTH_ARGS])
    h5 = root / "synth.h5"
    _invoke(["prepare", "ntu60", "--raw", str(root / "raw"), "--out", str(h5), "--workers", "1"])
    return h5


def _pretrain_and_probe(h5: Path, method: str, tmp: Path) -> dict[str, float]:
    run = tmp / method
    _invoke(["pretrain", "--method", method, "--data", str(h5), "--split", "xsub", "--preset", "small", "--seed", "0",
             "--out", str(run), "--no-progress", "--json", str(tmp / f"{method}.json")])
    summary = json.loads((tmp / f"{method}.json").read_text())
    out: dict[str, float] = {}
    for tag, extra in (("pretrained", []), ("random", ["--random-init"])):
        for protocol in ("linear", "knn"):
            js = tmp / f"{method}-{tag}-{protocol}.json"
            _invoke(["probe", "--checkpoint", str(run / "last.pt"), "--data", str(h5), "--split", "xsub",
                     "--protocol", protocol, "--seed", "0", "--no-cache", "--out", str(tmp / f"{tag}-{protocol}"),
                     "--json", str(js), *extra])
            res = json.loads(js.read_text())
            assert res["n_test"] > 0 and res["random_init"] is bool(extra)
            out[f"{tag}_{protocol}"] = float(res["top1"])
    assert summary["result"]["steps"] > 0 and summary["settings"]["method"]["mask_ratio"] == 0.9
    return out


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("SKELCLI_SLOW_TESTS"), reason="slow learned-representation check; set SKELCLI_SLOW_TESTS=1")
@pytest.mark.xfail(strict=False, reason="measured: small-preset MAMP does not yet beat a random encoder by 10 points (task I report)")
def test_mamp_pretraining_beats_random_encoder(prepared: Path, tmp_path: Path) -> None:
    r = _pretrain_and_probe(prepared, "mamp", tmp_path)
    assert r["pretrained_linear"] >= r["random_linear"] + MARGIN, r
    assert r["pretrained_knn"] >= r["random_knn"], r
