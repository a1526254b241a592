"""`skel reproduce`: a paper's chain end to end on tiny data, resume by stage records, the published table."""

from __future__ import annotations

import json
import math

import pytest
from helpers import assert_one_line_error
from helpers import run_cli as run

from skelcli.papers import PAPERS, PUBLISHED, TABLES, lookup, paper_text


def _report(out):
    assert (out / "report.md").is_file() and (out / "report.json").is_file()
    return json.loads((out / "report.json").read_text())


def _cells_filled(rep) -> None:
    for c in rep["cells"]:
        assert c["ours_text"].strip() and c["paper_text"].strip(), c
        if c["stage"] is not None:  # a stage ran: it must give a number
            assert c["ours"] is not None and math.isfinite(c["ours"]) and 0 <= c["ours"] <= 1, c
            assert c["recipe"], c
        assert c["source"], c


def test_slim_small_end_to_end_then_resume_skips_every_stage(data_file, tmp_path):
    out = tmp_path / "repro"
    args = ["reproduce", "slim", "--data", data_file, "--preset", "small", "--out", out, "--device", "cpu", "--no-progress"]
    r = run(*args)
    assert r.exit_code == 0, r.output
    rep = _report(out)
    assert rep["smoke_run"] is True and rep["comparable_with_paper"] is False
    md = (out / "report.md").read_text()
    assert "SMOKE RUN" in md and "NOT comparable" in md
    assert rep["tables"] == ["linear", "semi", "retrieval"]  # SLiM's tables; the tiny file is NTU-60
    assert {(c["table"], c["variant"]) for c in rep["cells"]} == {("linear", ""), ("semi", "0.01"), ("semi", "0.1"), ("retrieval", "")}
    _cells_filled(rep)
    linear = next(c for c in rep["cells"] if c["table"] == "linear")
    assert linear["paper"] == 87.9 and linear["verified"] is True and linear["recipe"].startswith("slim")
    assert "val-chosen head" in linear["others"]
    m = rep["machine"]
    assert m["cpu"] and m["torch"] and "gpu" in m
    first = {s["stage"]: s for s in rep["stages"]}
    assert set(first) == {"pretrain", "linear", "semi-0.01", "semi-0.1", "retrieval"}
    assert all(s["this_run"] == "ran" and s["status"] == "done" and s["seconds"] > 0 for s in first.values())
    assert rep["seconds"]["this_invocation"] > 0

    # The folder holds a run: without --resume it is refused in one line.
    assert_one_line_error(run(*args), "--resume")

    # --resume: every stage is skipped (records unchanged), the report is rewritten.
    r = run(*args, "--resume")
    assert r.exit_code == 0, r.output
    rep2 = _report(out)
    again = {s["stage"]: s for s in rep2["stages"]}
    assert set(again) == set(first)
    for name, s in again.items():
        assert s["this_run"] == "skipped", s
        assert s["finished_at"] == first[name]["finished_at"] and s["started_at"] == first[name]["started_at"]
    assert [c["ours"] for c in rep2["cells"]] == [c["ours"] for c in rep["cells"]]
    assert rep2["finished_at"] > rep["finished_at"]

    # A lost pretrain record (as after a crash between the last checkpoint and the record): --resume goes through
    # the pretrain engine's resume, which finds the finished checkpoint and trains nothing; the checkpoint is
    # unchanged, so the evaluation stages stay skipped.
    (out / "stages" / "pretrain.json").unlink()
    r = run(*args, "--resume")
    assert r.exit_code == 0, r.output
    rep3 = _report(out)
    stages3 = {s["stage"]: s for s in rep3["stages"]}
    assert stages3["pretrain"]["this_run"] == "ran"
    assert rep3["pretrain"]["complete"] is True and rep3["pretrain"]["resumed_from"]
    assert all(stages3[n]["this_run"] == "skipped" for n in first if n != "pretrain")


def test_mamp_chain_with_transfer_and_changed_settings(data_file, tmp_path):
    from skelcli.reproduce import run_reproduce

    out = tmp_path / "mamp"
    rep = run_reproduce("mamp", data_file, out, preset="small", device="cpu", transfer_data=data_file, pretrain_epochs=1,
                        sets={"pretrain": ["data.batch_size=4"], "linear": ["epochs=2"], "finetune": ["epochs=1"]},
                        log=lambda _: None)
    assert rep["tables"] == ["linear", "finetune", "semi", "transfer"]
    _cells_filled(rep)
    cells = {(c["table"], c["variant"]): c for c in rep["cells"]}
    assert cells[("linear", "")]["paper"] == 84.9 and cells[("linear", "")]["verified"] is False  # recalled from memory
    assert "last epoch" in cells[("linear", "")]["others"]
    assert cells[("transfer", "from ntu60")]["paper_status"] == "unknown"
    assert "linear.epochs=2" in (out / "report.md").read_text()
    # Changing a stage's setting re-runs that stage only.
    rep2 = run_reproduce("mamp", data_file, out, preset="small", device="cpu", transfer_data=data_file, pretrain_epochs=1,
                         tables=["linear", "finetune"], resume=True,
                         sets={"pretrain": ["data.batch_size=4"], "linear": ["epochs=3"], "finetune": ["epochs=1"]}, log=lambda _: None)
    runs = {s["stage"]: s["this_run"] for s in rep2["stages"]}
    assert runs == {"pretrain": "skipped", "linear": "ran", "finetune": "skipped"}


def test_table_plan_and_reasons():
    from skelcli.reproduce import plan_cells

    tables, cells = plan_cells("mamp", "ntu60", "xsub", None, None)
    assert tables == ["linear", "finetune", "semi", "transfer"]
    transfer = [c for c in cells if c.table == "transfer"]
    assert len(transfer) == 1 and transfer[0].stage is None and transfer[0].reason == "not run (no --transfer-data)"
    tables, _ = plan_cells("gfp", "ntu120", "xset", None, None)
    assert "semi" not in tables  # semi-supervised tables are NTU-60 only: dropped from the default
    from skelcli.errors import SkelError

    with pytest.raises(SkelError, match="semi needs an NTU-60 file"):
        plan_cells("gfp", "ntu120", "xset", ["semi"], None)


def test_every_published_number_has_a_source():
    keys = set()
    for p in PUBLISHED:
        assert p.paper in PAPERS and p.table in TABLES, p
        assert p.key not in keys, p
        keys.add(p.key)
        assert p.source.startswith("spec/") and len(p.source) > 12, p
        assert isinstance(p.verified, bool)
        if p.value is None:
            assert p.note and not p.verified, p
            assert p.status in ("unknown", "not published")
        else:
            assert 0 < p.value < 100
        if p.release is not None:
            assert p.release_source.startswith("spec/"), p
        if p.paper == "mamp":
            assert not p.verified  # recalled from memory or quoted by successors, never read in the MAMP paper
    assert [lookup("slim", "linear", d, s).value for d, s in
            (("ntu60", "xsub"), ("ntu60", "xview"), ("ntu120", "xsub"), ("ntu120", "xset"), ("pku-mmd-v2", "xsub"))] == \
        [87.9, 93.2, 81.2, 83.6, 59.7]
    assert all(lookup("slim", "linear", "ntu60", s).verified for s in ("xsub", "xview"))
    assert lookup("slim", "retrieval", "ntu60", "xview").release == 89.8
    assert lookup("gfp", "semi", "ntu60", "xsub", "0.1").value == 88.7
    absent = lookup("mamp", "retrieval", "ntu60", "xsub")
    assert absent.value is None and absent.status == "not published" and absent.source and absent.note
    assert paper_text(lookup("mamp", "linear", "ntu60", "xsub")) == "84.9 (unverified)"
    assert paper_text(lookup("slim", "semi", "ntu60", "xsub", "0.01")) == "unknown"


def test_unknown_paper_or_table_fails_in_one_line(data_file, tmp_path):
    out = tmp_path / "never"
    assert_one_line_error(run("reproduce", "mae2", "--data", data_file, "--out", out), "unknown paper 'mae2'")
    assert_one_line_error(run("reproduce", "slim", "--data", data_file, "--out", out, "--table", "linear,bogus"),
                          "unknown --table 'bogus'")
    assert_one_line_error(run("reproduce", "slim", "--data", data_file, "--out", out, "--preset", "huge"), "unknown --preset")
    assert_one_line_error(run("reproduce", "slim", "--data", data_file, "--out", out, "--set", "iterations=3"), "STAGE.field=value")
    assert_one_line_error(run("reproduce", "gfp", "--data", data_file, "--out", out, "--split", "xset"), "xset")
    assert not out.exists()


def test_interrupted_pretraining_resumes_from_its_checkpoint(data_file, tmp_path, monkeypatch):
    import os
    import signal

    import skelcli.engine.train as engine_train
    from skelcli.reproduce import run_reproduce

    real = engine_train.pretrain

    class SigintAt:
        def on_step_end(self, info):
            if info["step"] == 3:
                os.kill(os.getpid(), signal.SIGINT)  # the engine's StopSignal: checkpoint at this step, then return

    monkeypatch.setattr(engine_train, "pretrain", lambda *a, **kw: real(*a, callbacks=[SigintAt()], **kw))
    out = tmp_path / "int"
    kw = dict(preset="small", device="cpu", tables=["linear"], pretrain_epochs=4,
              sets={"pretrain": ["data.batch_size=4"], "linear": ["epochs=1"]}, log=lambda _: None)
    rep = run_reproduce("mamp", data_file, out, **kw)
    assert rep["interrupted"]["signal"] == "SIGINT" and "pretraining" in rep["interrupted"]["stage"]
    assert rep["cells"][0]["ours"] is None and "interrupted" in rep["cells"][0]["ours_text"]
    assert not (out / "stages" / "pretrain.json").exists()
    monkeypatch.setattr(engine_train, "pretrain", real)
    rep = run_reproduce("mamp", data_file, out, resume=True, **kw)
    assert rep["interrupted"] is None
    assert rep["pretrain"]["resumed_from"] and rep["pretrain"]["epochs"] == 4 and not rep["pretrain"]["complete"]
    assert rep["cells"][0]["ours"] is not None
