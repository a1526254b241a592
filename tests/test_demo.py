"""`skel demo` (what `make demo` runs), shortened: one method, one epoch, no benchmark."""

import json

from typer.testing import CliRunner

from skelcli.cli import app


def test_demo_runs_the_chain_and_writes_its_summary(tmp_path):
    out = tmp_path / "demo"
    r = CliRunner().invoke(app, ["demo", "--out", str(out), "--methods", "mamp,nosuch", "--epochs", "1", "--no-benchmark", "--quiet"])
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "demo.json").read_text())
    assert summary["synth"]["files"] == 768 and summary["prepare"]["kept"] > 700
    assert summary["prepare"]["splits"]["xsub"]["train"] > 0
    mamp = summary["methods"]["mamp"]
    assert mamp["pretrain"]["epochs"] == 1 and mamp["pretrain"]["steps"] > 0
    for key in ("linear", "knn"):
        assert 0.0 <= mamp[key] <= 1.0 and 0.0 <= mamp["random_init"][key] <= 1.0
    assert "nosuch" not in summary["methods"] and "skipping nosuch" in r.output
    assert (out / "runs" / "mamp" / "last.pt").is_file() and (out / "runs" / "mamp" / "probe-linear" / "metrics.json").is_file()
    assert "frozen-encoder" in r.output and "gain" in r.output  # the comparison table (wrapped at 80 columns)
