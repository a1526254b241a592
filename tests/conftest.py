"""Test-suite wide settings: one intra-op thread (tiny models run slower with more threads on 2 cores)."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

TINY_SYNTH = ["--classes", "3", "--subjects", "2", "--setups", "1", "--replications", "1",
              "--min-frames", "40", "--max-frames", "80", "--no-faults", "--seed", "0"]


@pytest.fixture(scope="session")
def data_file(tmp_path_factory) -> Path:
    """A tiny genuine prepared file: `skel synth` raw files -> `skel prepare` (9 xsub training
    clips of 40-80 frames, 2 persons). Tests must not modify it."""
    from typer.testing import CliRunner

    from skelcli.cli import app

    root = tmp_path_factory.mktemp("tiny_data")
    runner = CliRunner()
    r = runner.invoke(app, ["synth", "ntu60", "--out", str(root / "raw"), *TINY_SYNTH])
    assert r.exit_code == 0, r.output
    out = root / "tiny.h5"
    r = runner.invoke(app, ["prepare", "ntu60", "--raw", str(root / "raw"), "--out", str(out), "--workers", "1"])
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="session")
def medium_h5(tmp_path_factory) -> Path:
    """The demo's synthetic set (helpers.MEDIUM_SYNTH: 768 clips, 16 classes), prepared once per test
    session: pytest-xdist workers share one copy through a lock file in the session's temp folder.
    Tests must not modify it."""
    import fcntl
    import os

    from helpers import medium_data

    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "medium_shared"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = root / "ready"
        if not done.exists():
            medium_data(root)
            done.write_text("ok\n")
    return root / "medium.h5"


@pytest.fixture(scope="session")
def medium_mamp_checkpoint(medium_h5) -> Path:
    """`skel pretrain --method mamp --preset small --seed 0` on medium_h5, once per test session: the
    pytest-xdist workers share it through a lock file, as medium_h5 (two tests use it, and a module
    fixture would be rebuilt whenever the scheduler splits or interleaves them). Tests must not modify it.
    Only the ``slow`` tests (`make test-slow`) use it."""
    import fcntl

    from helpers import pretrain_small

    root = medium_h5.parent
    with open(root / ".lock-mamp", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ckpt = root / "mamp" / "last.pt"
        if not (root / "mamp-ready").exists():
            pretrain_small(medium_h5, "mamp", root / "mamp")
            (root / "mamp-ready").write_text("ok\n")
    return ckpt


#: Tests that take 25-190 s each, in the order they start. The last four are the demo-budget pretraining-gain
#: tests, marked ``slow``: `make test` leaves them to `make test-slow` (CI runs both). CPU seconds in one full
#: run on an AMD EPYC, 2026-12-07: MAE 74 (plus about 15 for the demo's data, which it builds in `make test`),
#: the demo 32, MAMP 157 with the data and its checkpoint (that run), GFP 194, SLiM 186, fine-tuning 27.
#: pytest-xdist's loadgroup hands out the ``xdist_group`` units first (largest first), then single tests in
#: collection order, each worker holding up to three units ahead. In `make test-slow` the four tests are
#: therefore dealt alternately: SLiM then fine-tuning on one worker, MAMP (which writes the checkpoint that
#: fine-tuning reads, long before SLiM ends) then GFP on the other, the most even split of the four; SLiM
#: and MAMP start together, and one builds the demo's data while the other waits for it.
HEAVY_TESTS = (
    "test_pretraining_gain_mae.py::test_mae_pretraining_beats_a_random_encoder_in_linear_and_knn_probes",
    "test_demo.py::test_demo_runs_the_chain_side_by_side_and_writes_its_summary",
    "test_pretraining_gain_slim.py::test_slim_pretraining_beats_a_random_encoder_in_linear_and_knn_probes",
    "test_pretraining_gain.py::test_mamp_pretraining_beats_a_random_encoder_in_linear_and_knn_probes",
    "test_pretraining_gain.py::test_finetuning_the_pretrained_encoder_beats_from_scratch",
    "test_pretraining_gain_gfp.py::test_gfp_pretraining_beats_a_random_encoder_in_linear_and_knn_probes",
)


def pytest_collection_modifyitems(session, config, items):
    """Put the heavy tests first among the single tests, in HEAVY_TESTS order, so that they start early and
    the short tests fill in behind them: the two workers finish together instead of one running a heavy test
    at the end while the other idles."""
    rank = {name: i for i, name in enumerate(HEAVY_TESTS)}

    def key(item) -> int:
        return rank.get(f"{item.path.name}::{item.name}", len(rank))

    items.sort(key=key)  # stable: the short tests keep their order
