"""The training engine: schedule, settings resolution, exact resume, resilience (issue 3 item 4, issue 7 item 2)."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import pytest
import torch

from skelcli.engine.checkpoint import load_checkpoint
from skelcli.engine.config import resolve_pretrain_settings
from skelcli.engine.schedule import LRSchedule, cosine_value, warmup_cosine
from skelcli.engine.train import find_resume_checkpoint, pretrain
from skelcli.errors import SkelError

TINY = [
    "method.encoder.num_frames=8", "method.encoder.t_patch=4", "method.encoder.dim=16", "method.encoder.depth=1",
    "method.encoder.heads=2", "method.decoder.dim=16", "method.decoder.depth=1", "method.decoder.heads=2",
    "data.batch_size=3", "data.min_crop_frames=8", "optim.epochs=3", "optim.warmup_epochs=1",
    "runtime.checkpoint_every=1", "runtime.log_every=1", "runtime.device=\"cpu\"",
]


def _settings(data_file: Path, method: str = "mamp", extra: list[str] | None = None):
    return resolve_pretrain_settings(method, "small", None, None, TINY + (extra or []), data_file, "xsub")


# ------------------------------------------------------------------ schedule
def test_warmup_cosine_at_hand_computed_points():
    # paper recipe: lr 1e-3 -> min 5e-4, 20 warmup epochs of 400 (spec B)
    assert warmup_cosine(0.0, 1e-3, 5e-4, 20, 400) == 0.0
    assert warmup_cosine(10.0, 1e-3, 5e-4, 20, 400) == pytest.approx(5e-4)
    assert warmup_cosine(20.0, 1e-3, 5e-4, 20, 400) == pytest.approx(1e-3)
    assert warmup_cosine(210.0, 1e-3, 5e-4, 20, 400) == pytest.approx(7.5e-4)  # half-way: cos(pi/2) = 0
    assert warmup_cosine(400.0, 1e-3, 5e-4, 20, 400) == pytest.approx(5e-4)
    assert cosine_value(0, 100, 0.994, 1.0) == pytest.approx(0.994)
    assert cosine_value(50, 100, 0.994, 1.0) == pytest.approx(0.997)
    assert cosine_value(100, 100, 0.994, 1.0) == pytest.approx(1.0)
    assert cosine_value(5, 100, 1.0, 0.0, warmup_steps=10, warmup_start=0.0) == pytest.approx(0.5)


def test_lr_schedule_per_step_and_group_scale_and_wd_cosine():
    w = torch.nn.Parameter(torch.zeros(2, 2))
    b = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([
        {"params": [w], "weight_decay": 0.04, "lr_scale": 0.5, "apply_wd": True},
        {"params": [b], "weight_decay": 0.0, "lr_scale": 1.0, "apply_wd": False},
    ], lr=1.0)
    sched = LRSchedule(opt, lr=1e-3, min_lr=0.0, warmup_epochs=1, epochs=3, steps_per_epoch=10,
                       weight_decay=0.04, weight_decay_end=0.4)
    sched.apply(5)  # epoch 0.5 of 1 warmup epoch
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * 5e-4)
    assert opt.param_groups[1]["lr"] == pytest.approx(5e-4)
    sched.apply(20)  # epoch 2: half-way through the cosine (1 of 2 epochs)
    assert opt.param_groups[1]["lr"] == pytest.approx(5e-4)
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(0.04 + (0.4 - 0.04) * (1 - math.cos(math.pi * 20 / 30)) / 2)
    assert opt.param_groups[1]["weight_decay"] == 0.0


@pytest.mark.parametrize("name", ["gfp", "slim"])
def test_the_multi_tensor_adamw_gives_the_per_tensor_weights(name):
    """schedule.adamw (foreach=True, chosen for speed on CPU) against torch's CPU default, the per-tensor
    loop: the same method, batches, draws and lr / weight-decay schedule give bit-identical weights."""
    import copy

    from skelcli.bench.throughput import build_method, synthetic_batch
    from skelcli.engine.schedule import adamw

    torch.manual_seed(0)
    method, settings = build_method(name, "small", "ntu60", torch.device("cpu"))
    twin = copy.deepcopy(method)
    init = {k: v.clone() for k, v in method.state_dict().items()}
    batch = synthetic_batch(4, method.encoder.config.num_frames, torch.device("cpu"), seed=3)
    opts = [adamw(method.param_groups(0.05), 3e-3, (0.9, 0.95)),
            torch.optim.AdamW(twin.param_groups(0.05), lr=3e-3, betas=(0.9, 0.95), foreach=False)]
    assert opts[0].defaults["foreach"] is True
    for model, opt in zip((method, twin), opts):
        sched = LRSchedule(opt, lr=3e-3, min_lr=1e-5, warmup_epochs=1, epochs=3, steps_per_epoch=2,
                           weight_decay=0.05, weight_decay_end=0.2)
        torch.manual_seed(1)
        for step in range(6):
            sched.apply(step)
            opt.zero_grad(set_to_none=True)
            model(batch)["loss"].backward()
            opt.step()
            model.after_step(step, 6)
    a, b = method.state_dict(), twin.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert sum(not torch.equal(a[k], init[k]) for k in a) > len(a) // 2  # the steps did move the weights


# ------------------------------------------------------------------ settings
def test_presets_and_resolution_order(tmp_path):
    paper = resolve_pretrain_settings("mamp", "paper", "ntu120")
    assert (paper.optim.epochs, paper.data.batch_size, paper.optim.lr, paper.optim.min_lr) == (400, 128, 1e-3, 5e-4)
    assert (paper.optim.betas, paper.optim.weight_decay, paper.optim.warmup_epochs) == ((0.9, 0.95), 0.05, 20)
    assert (paper.method.tau, paper.method.decoder.depth, paper.method.mask_ratio) == (0.75, 5, 0.9)
    ntu60 = resolve_pretrain_settings("mamp", "paper", "ntu60")
    assert (ntu60.method.tau, ntu60.method.decoder.depth) == (0.80, 3)
    assert resolve_pretrain_settings("mamp", "paper", "pku-mmd-v1").method.tau == 0.80
    toml = tmp_path / "run.toml"
    toml.write_text('[optim]\nepochs = 7\nlr = 2e-4\n[method]\nmask_ratio = 0.8\n')
    s = resolve_pretrain_settings("mae", "small", "ntu60", toml, ["optim.lr=3e-4"], None, None, epochs=9)
    assert s.method.name == "mae" and s.method.mask_ratio == 0.8 and s.method.encoder.dim == 32  # small preset
    assert s.optim.lr == 3e-4 and s.optim.epochs == 9  # --set beats TOML, a CLI flag beats --set


def test_unknown_field_in_toml_fails_naming_it(tmp_path):
    toml = tmp_path / "bad.toml"
    toml.write_text("[optim]\nlearning_rate = 1e-3\n")
    with pytest.raises(SkelError, match=r"optim\.learning_rate"):
        resolve_pretrain_settings("mamp", "small", "ntu60", toml)
    with pytest.raises(SkelError, match="unknown method 'nope'"):
        resolve_pretrain_settings("nope", "small", "ntu60")


# ------------------------------------------------------------------ training
class _Signal:
    """Send ourselves SIGTERM after a given step (a real signal through the real handler)."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_step_end(self, info) -> None:
        if info["step"] == self.at_step:
            os.kill(os.getpid(), signal.SIGTERM)


def _params(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def test_run_folder_checkpoints_and_metrics(data_file, tmp_path):
    s = _settings(data_file)
    res = pretrain(s, tmp_path / "run", progress=False)
    assert (res.epochs, res.steps) == (3, 9) and math.isfinite(res.final_loss)
    run = tmp_path / "run"
    assert json.loads((run / "settings.json").read_text())["method"]["name"] == "mamp"
    assert sorted(p.name for p in run.glob("*.pt")) == ["checkpoint-0001.pt", "checkpoint-0002.pt", "checkpoint-0003.pt", "last.pt"]
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["epoch"] == 3 and ckpt["step"] == 9 and ckpt["method"] == "mamp"
    assert ckpt["data"]["dataset"] == "ntu60" and ckpt["data"]["split"] == "xsub"
    assert ckpt["pretraining_only"] == ["decoder"] and set(ckpt["encoder"]) <= {k[len("encoder."):] for k in ckpt["model"]}
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in lines if x["kind"] == "step"]
    assert [x["step"] for x in steps] == list(range(1, 10))
    assert {"loss", "lr", "samples_per_s", "data_wait_share", "epoch"} <= set(steps[0])
    assert [x["epoch"] for x in lines if x["kind"] == "epoch"] == [0, 1, 2]
    # the same folder with another configuration is refused; the same one without --resume too
    with pytest.raises(SkelError, match="different configuration.*optim.lr"):
        pretrain(_settings(data_file, extra=["optim.lr=1e-2"]), run, progress=False)
    with pytest.raises(SkelError, match="already holds checkpoints"):
        pretrain(s, run, progress=False)
    # another method's checkpoint cannot be resumed
    with pytest.raises(SkelError, match="method 'mamp'"):
        pretrain(_settings(data_file, "mae"), tmp_path / "other", resume=run / "last.pt", progress=False)


def test_a_folder_with_checkpoints_is_never_overwritten_without_resume(data_file, tmp_path):
    """Copied checkpoints without their settings.json: a fresh run is refused and every file stays
    byte-identical; --force moves the old files into old-<time>/ instead of deleting them (issue 12)."""
    s = _settings(data_file)
    run = tmp_path / "run"
    pretrain(s, run, progress=False)
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in run.iterdir():
        if p.is_file() and p.name != "settings.json":
            (copy / p.name).write_bytes(p.read_bytes())
    before = {p.name: p.read_bytes() for p in copy.iterdir()}
    with pytest.raises(SkelError, match="already holds checkpoints"):
        pretrain(s, copy, progress=False)
    assert {p.name: p.read_bytes() for p in copy.iterdir()} == before
    pretrain(s, copy, force=True, progress=False)
    (old,) = list(copy.glob("old-*"))
    assert {p.name: p.read_bytes() for p in old.iterdir()} == before
    assert (copy / "last.pt").is_file() and (copy / "settings.json").is_file()


@pytest.mark.parametrize("interval, seen", [(0, [1, 2, 3, 4, 5]), (1e9, [None, 2, 2, 4, 5])])
def test_last_pt_waits_for_the_save_interval_but_never_skips_a_numbered_checkpoint(data_file, tmp_path, interval, seen):
    """runtime.save_interval_s: epochs of last.pt as each epoch ends, 5 epochs, a numbered checkpoint every 2
    (and the final one). 0 writes it at every epoch end; a long interval only with the numbered ones."""
    run = tmp_path / "run"

    class Peek:
        def on_epoch_end(self, info) -> None:
            p = run / "last.pt"
            epochs.append(load_checkpoint(p)["epoch"] if p.exists() else None)

    epochs: list[int | None] = []
    extra = ["optim.epochs=5", "runtime.checkpoint_every=2", f"runtime.save_interval_s={interval}"]
    pretrain(_settings(data_file, extra=extra), run, progress=False, callbacks=[Peek()])
    assert epochs == seen
    assert sorted(p.name for p in run.glob("checkpoint-*.pt")) == ["checkpoint-0002.pt", "checkpoint-0004.pt", "checkpoint-0005.pt"]


def test_a_stop_at_an_epoch_end_saves_whatever_the_interval(data_file, tmp_path):
    """SIGTERM on the last step of epoch 0, no numbered checkpoint due and a save interval of 1e9 s:
    last.pt still holds that step, and the resumed run ends where an uninterrupted one does."""
    s = _settings(data_file, extra=["runtime.checkpoint_every=5", "runtime.save_interval_s=1e9"])
    part = pretrain(s, tmp_path / "run", progress=False, callbacks=[_Signal(3)])
    assert part.interrupted == "SIGTERM" and load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 3
    full = pretrain(s, tmp_path / "full", progress=False)
    done = pretrain(s, tmp_path / "run", resume="auto", progress=False)
    assert done.steps == full.steps
    a, b = _params(full.checkpoint), _params(tmp_path / "run" / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_after_interruption_matches_uninterrupted_run(data_file, tmp_path):
    s = _settings(data_file)
    full = pretrain(s, tmp_path / "full", progress=False)
    # stop at an epoch boundary (after step 3 = end of epoch 0) and mid-epoch (after step 5 of 9)
    for name, at in (("boundary", 3), ("mid", 5)):
        run = tmp_path / name
        part = pretrain(s, run, progress=False, callbacks=[_Signal(at)])
        assert part.interrupted == "SIGTERM" and part.steps == at
        assert load_checkpoint(run / "last.pt")["step"] == at
        done = pretrain(s, run, resume="auto", progress=False)
        assert done.resumed_from == run / "last.pt" and done.steps == full.steps
        a, b = _params(full.checkpoint), _params(run / "last.pt")
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), k


def test_truncated_checkpoint_falls_back_to_the_previous_one(data_file, tmp_path):
    run = tmp_path / "run"
    pretrain(_settings(data_file), run, progress=False)
    for name in ("last.pt", "checkpoint-0003.pt"):  # both files of the final epoch are damaged
        data = (run / name).read_bytes()
        (run / name).write_bytes(data[: len(data) // 2])
    path, ckpt, notes = find_resume_checkpoint(run, "mamp")
    assert path == run / "checkpoint-0002.pt" and ckpt["epoch"] == 2
    assert sum("truncated or corrupt" in n for n in notes) == 2
    res = pretrain(_settings(data_file), run, resume="auto", progress=False)
    assert res.resumed_from == run / "checkpoint-0002.pt" and res.epochs == 3 and len(res.skipped_checkpoints) == 2
    assert load_checkpoint(run / "last.pt")["step"] == 9


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(data_file, tmp_path):
    class Poison:
        def on_epoch_end(self, info) -> None:
            if info["epoch"] == 0:
                with torch.no_grad():
                    info["method"].encoder.patch_embed.weight.fill_(float("nan"))

    run = tmp_path / "run"
    with pytest.raises(SkelError, match=r"non-finite loss \(nan\) at step 3 .*last\.pt|non-finite loss \(nan\) at step 3 .*checkpoint-0001"):
        pretrain(_settings(data_file), run, progress=False, callbacks=[Poison()])
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["epoch"] == 1 and ckpt["step"] == 3
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["kind"] == "error"


SLIM_TINY = [
    "method.encoder.dim=16", "method.encoder.depth=1", "method.encoder.heads=2", "method.num_prototypes=32",
    "method.head_hidden_dim=32", "method.head_bottleneck_dim=16", "method.teacher_temp_warmup_epochs=3",
    "method.teacher_temp_start=0.04", "method.teacher_temp=0.07",
    "data.batch_size=3", "optim.epochs=3", "method.schedule_epochs=3", "optim.warmup_epochs=1",
    "runtime.checkpoint_every=1", "runtime.log_every=1", "runtime.device=\"cpu\"",
]


@pytest.mark.parametrize("centring", ["sinkhorn", "softmax"])
def test_slim_resume_restores_the_teacher_temperature_and_reaches_the_same_weights(data_file, tmp_path, centring):
    """SLiM's teacher temperature is a schedule outside the state dict: a resumed run must continue at
    the next step's value (it used to restart at teacher_temp_start for one step), so weights after a
    SIGTERM + resume equal an uninterrupted run's bit for bit, and so does every logged temperature.
    With softmax centring the two EMA centres resume with the weights (they are compared among them)."""
    s = resolve_pretrain_settings("slim", "small", None, None, [*SLIM_TINY, f"method.centring=\"{centring}\""], data_file, "xsub")
    full = pretrain(s, tmp_path / "full", progress=False)
    run = tmp_path / "cut"
    part = pretrain(s, run, progress=False, callbacks=[_Signal(5)])  # mid-epoch, mid-warmup
    assert part.interrupted == "SIGTERM" and part.steps == 5
    pretrain(s, run, resume="auto", progress=False)
    a, b = _params(full.checkpoint), _params(run / "last.pt")
    assert a.keys() == b.keys() and any(k.startswith("teacher.") for k in a)
    assert ("cls_centre" in a) == (centring == "softmax")
    for k in a:
        assert torch.equal(a[k], b[k]), k

    def temps(folder: Path) -> dict[int, float]:
        rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["teacher_temp"] for r in rows if r.get("kind") == "step" and "teacher_temp" in r}

    t_full, t_cut = temps(tmp_path / "full"), temps(run)
    assert len(t_full) >= 8 and t_cut == t_full
    assert len(set(t_full.values())) > 2  # the warmup really moves it
