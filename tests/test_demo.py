"""`skel demo` (what `make demo` runs), shortened: one epoch, no benchmark; the verdict words."""

import json

from typer.testing import CliRunner

from skelcli.cli import app
from skelcli.demo import verdict


def test_demo_runs_the_chain_side_by_side_and_writes_its_summary(tmp_path):
    """Two methods in spawned single-thread workers (--parallel 2): their progress lines reach the
    parent's output, methods of one encoder shape share one random-encoder baseline, and the table is not
    cut to 80 columns when the output is not a terminal. 4 of the 16 classes (192 files, 48 per class)."""
    out = tmp_path / "demo"
    r = CliRunner().invoke(app, ["demo", "--out", str(out), "--methods", "mae,mamp,nosuch", "--epochs", "1", "--classes", "4",
                                 "--no-benchmark", "--parallel", "2"])
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "demo.json").read_text())
    assert summary["synth"]["files"] == 192 and summary["prepare"]["kept"] > 180
    assert summary["prepare"]["splits"]["xsub"]["train"] > 0
    assert set(summary["methods"]) == {"mae", "mamp"} and "skipping nosuch" in r.output
    steps = summary["methods"]["mae"]["pretrain"]["steps"]
    for name in ("mae", "mamp"):
        e = summary["methods"][name]
        assert e["pretrain"]["epochs"] == 1 and e["pretrain"]["steps"] == steps > 0
        for key in ("linear", "knn"):
            assert 0.0 <= e[key] <= 1.0 and 0.0 <= e["random_init"][key] <= 1.0
        assert (e["clear_win"], e["verdict"]) == verdict(e, 0.05)
        assert f"pretrain {name}: {steps}/{steps} (100%)" in r.output  # LineProgress, relayed from the worker
        assert f"    {name}: {steps} steps in " in r.output and "; feature map in " in r.output  # drawn in the worker
        assert (out / "runs" / name / "last.pt").is_file() and (out / "runs" / name / "probe-linear" / "metrics.json").is_file()
        row = next(line for line in r.output.splitlines() if "│" in line and line.strip("│ ").startswith(name))
        assert e["verdict"] in row
    assert summary["methods"]["mae"]["random_init"] == summary["methods"]["mamp"]["random_init"]
    # the features of each encoder are extracted once: the kNN probes and the maps read the linear probes' cache,
    # the random encoder's included (train and test of the trained and of the random encoder next to mae's run)
    assert [len(list((out / "runs" / m / ".features").glob("feats-*.npz"))) for m in ("mae", "mamp")] == [4, 2]
    probe_dirs = [out / "runs" / d / f"probe-{p}" for d in ("mae", "mamp", "random-mae") for p in ("linear", "knn")]
    assert all((d / "confusion.npy").is_file() and not (d / "confusion.png").exists() for d in probe_dirs)
    assert {summary["methods"][m]["random_init_from"] for m in ("mae", "mamp")} == {"mae"}
    header = next(line for line in r.output.splitlines() if "method" in line and "kNN" in line)
    assert "verdict" in header and len(header) > 80
    # the pictures (issue 16 item 6): both methods' curves overlaid, one feature map each, named in the table
    from PIL import Image

    assert summary["pictures"]["curves"] == [str(out / "curves.png")] and "feature map" in header
    for name in ("mae", "mamp"):
        png = out / f"embed_{name}.png"
        assert summary["pictures"]["embed"][name] == str(png) and Image.open(png).size[0] > 300
        assert f"embed_{name}.png" in next(line for line in r.output.splitlines() if "│" in line and line.strip("│ ").startswith(name))
    assert Image.open(out / "curves.png").size[0] > 300


def test_demo_without_matplotlib_says_so_once_and_finishes(tmp_path, monkeypatch):
    """No [viz] extra: the method's job draws no feature map, the pictures stage prints one line naming the
    extra, the table has no picture column; probes and summary as usual (in-process: --parallel 1)."""
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    out = tmp_path / "demo"
    r = CliRunner().invoke(app, ["demo", "--out", str(out), "--methods", "mae", "--epochs", "1", "--classes", "2",
                                 "--no-benchmark", "--parallel", "1"])
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "demo.json").read_text())
    assert summary["pictures"] == {} and "embed_png" not in summary["methods"]["mae"]
    assert r.output.count("the pictures need matplotlib (pip install 'skelcli[viz]')") == 1
    assert not list(out.glob("*.png")) and "feature map" not in r.output
    assert 0.0 <= summary["methods"]["mae"]["linear"] <= 1.0


def test_pool_jobs_start_longest_first():
    """The two longest pretrainings start side by side and the FLOPs jobs come last, SLiM's (the longest
    of them) first, so the workers finish together; an unknown job keeps its place at the end."""
    from skelcli.demo import flops_jobs, longest_first

    jobs = [{"name": m} for m in ("mae", "mamp", "gfp", "slim", "custom")]
    jobs += flops_jobs({"methods": ["mae", "mamp", "gfp", "slim"]})
    order = [j["name"] for j in longest_first(jobs)]
    assert order[:4] == ["gfp", "slim", "mae", "mamp"] and order[-1] == "custom"
    assert order[4:6] == ["benchmark-flops:slim", "benchmark-flops:mae"] and order[7] == "benchmark-flops:gfp"


def test_verdict_words():
    entry = {"linear": 0.90, "knn": 0.85, "random_init": {"linear": 0.80, "knn": 0.70}}
    assert verdict(entry, 0.05) == (True, "beats a random encoder: linear +10.0, kNN +15.0 points")
    entry["knn"] = 0.72
    assert verdict(entry, 0.05) == (False, "beats a random encoder by less than 5 points: linear +10.0, kNN +2.0 points")
    entry["knn"] = 0.60
    assert verdict(entry, 0.05) == (False, "does NOT beat a random encoder: linear +10.0, kNN -10.0 points")


def test_bad_demo_values_are_one_line_errors_that_touch_nothing(tmp_path):
    """--parallel 0 / --epochs 0 / --classes 1 or 61 (NTU60 has 60) fail at parse time naming the field, before
    anything is written."""
    out = tmp_path / "demo"
    for flag, field, value in (("--parallel", "parallel", "0"), ("--epochs", "epochs", "0"), ("--classes", "classes", "1"),
                               ("--classes", "classes", "61")):
        r = CliRunner().invoke(app, ["demo", "--out", str(out), flag, value])
        assert r.exit_code == 2, r.output
        assert "Traceback" not in r.output and f"invalid settings: {field}:" in r.output
        assert len([line for line in r.output.splitlines() if line.strip()]) == 1
    assert not out.exists()


def test_log_width_comes_from_skel_width_and_a_bad_value_falls_back(tmp_path):
    """Output that is not a terminal: SKEL_WIDTH columns (default 200); a value that is not a number is
    ignored rather than failing every command."""
    import os
    import subprocess
    import sys

    code = "from skelcli.cli._app import console; print(console.width)"
    for value, width in (("123", "123"), ("abc", "200"), (None, "200")):
        env = {k: v for k, v in os.environ.items() if k != "SKEL_WIDTH"}
        if value is not None:
            env["SKEL_WIDTH"] = value
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert r.stdout.strip() == width and not r.stderr


def test_the_benchmark_flops_jobs_run_in_the_job_pool_one_per_method():
    """The demo counts the quick benchmark's FLOPs as short jobs of its pool, one per method (here
    in-process, at the small preset); pop_flops takes them out of the results and merges them: every
    method carries measure_flops' numbers, and the pretraining jobs' entries stay."""
    from skelcli.demo import FLOPS_JOB, _run_jobs, flops_jobs, pop_flops

    lines: list[str] = []
    bench = {"methods": ["mae", "gfp"], "device": "cpu", "preset": "small", "batch_size": 2, "repeats": 1, "warmup": 0}
    jobs = flops_jobs(bench)
    assert [(j["name"], j["bench"]["methods"]) for j in jobs] == [(f"{FLOPS_JOB}:mae", ["mae"]), (f"{FLOPS_JOB}:gfp", ["gfp"])]
    results = {"mae": {"linear": 0.5}, **_run_jobs(jobs, 1, lines.append)}
    flops = pop_flops(results)
    assert set(flops) == {"mae", "gfp"} and results == {"mae": {"linear": 0.5}}
    assert all(f["train_step_g"] > f["train_forward_g"] > 0 and f["inference_g"] > 0 for f in flops.values())
    assert flops["mae"]["inference_g"] == flops["gfp"]["inference_g"]  # the same small encoder
    assert sum("counted in" in line for line in lines) == 2
    assert pop_flops({"mae": {}}) is None
