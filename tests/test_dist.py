"""Scale-out (issue 7): DDP parity with one process, ordered distributed feature extraction, sample-keyed draws.

Two gloo processes on the CPU, started either through the real CLI (``skel pretrain --nproc 2``,
which re-launches itself through torchrun) or with ``torch.multiprocessing.spawn``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from skelcli.engine.checkpoint import load_checkpoint
from skelcli.engine.config import resolve_pretrain_settings
from skelcli.engine.dist import DistContext, plan_batches
from skelcli.engine.rng import SampleDraws, rank_positions
from skelcli.engine.train import pretrain
from skelcli.errors import SkelError

TINY = [
    "method.encoder.num_frames=8", "method.encoder.t_patch=4", "method.encoder.dim=16", "method.encoder.depth=1",
    "method.encoder.heads=2", "method.decoder.dim=16", "method.decoder.depth=1", "method.decoder.heads=2",
    "data.batch_size=4", "data.min_crop_frames=8", "optim.epochs=2", "optim.warmup_epochs=1",
    "runtime.checkpoint_every=1", "runtime.log_every=1", "runtime.device=\"cpu\"",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _settings(data_file: Path, extra: list[str] | None = None):
    return resolve_pretrain_settings("mamp", "small", None, None, TINY + (extra or []), data_file, "xsub")


def _cli_args(data_file: Path, out: Path, extra: list[str] | None = None) -> list[str]:
    args = ["pretrain", "--method", "mamp", "--data", str(data_file), "--split", "xsub", "--preset", "small",
            "--out", str(out), "--no-progress"]
    for item in TINY + (extra or []):
        args += ["--set", item]
    return args


def _params(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], dim: int = 16, lr_sum: float = 4 * 2e-3) -> None:
    """Equal up to float rounding. The attention *key* bias (rows dim..2*dim of qkv.bias) has an
    exactly zero gradient in theory (softmax is shift-invariant per query), so its gradient is pure
    rounding noise that Adam normalises to steps of up to ~lr whatever the summation order: those
    entries are only required to stay within the summed learning rate of the run."""
    assert a.keys() == b.keys()
    for k in a:
        x, y = a[k].clone(), b[k].clone()
        if k.endswith("attn.qkv.bias"):
            key_a, key_b = x[dim : 2 * dim].clone(), y[dim : 2 * dim].clone()
            assert (key_a - key_b).abs().max() <= lr_sum, k
            x[dim : 2 * dim] = y[dim : 2 * dim] = 0
        assert torch.allclose(x, y, rtol=1e-4, atol=1e-6), (k, (x - y).abs().max())


# ------------------------------------------------------------------ batch plan and sample-keyed draws
def test_batch_plan_keeps_the_global_batch():
    assert plan_batches(128, 1).describe().startswith("global batch 128 = 1 process(es) x 1")
    p = plan_batches(128, 4, max_per_device_batch=20)  # 32 per process > 20 -> 2 micro-batches of 16
    assert (p.per_process, p.micro_batch, p.accumulation) == (32, 16, 2)
    p = plan_batches(96, 2, max_per_device_batch=40)  # 48 -> ceil(48/40) = 2 divides 48 -> 24
    assert (p.micro_batch, p.accumulation) == (24, 2)
    p = plan_batches(30, 1, max_per_device_batch=7)  # 30 -> 5 is the first count >= 5 dividing 30 -> 6 each
    assert (p.micro_batch, p.accumulation) == (6, 5)
    with pytest.raises(SkelError, match="not divisible by 4 processes"):
        plan_batches(6, 4)


def test_sample_keyed_draws_do_not_depend_on_the_layout():
    full = SampleDraws(3, 1, 17, 8, torch.arange(8)).uniform("mask", (2, 5))  # one process, one batch
    for world, accum in ((2, 1), (4, 1), (2, 2), (1, 4)):
        micro = 8 // (world * accum)
        for r in range(world):
            for k in range(accum):
                pos = rank_positions(k, micro, world, r)
                part = SampleDraws(3, 1, 17, 8, pos).uniform("mask", (2, 5))
                assert torch.equal(part, full[pos])
    # streams and steps are independent draws
    other = SampleDraws(3, 1, 18, 8, torch.arange(8)).uniform("mask", (2, 5))
    crop = SampleDraws(3, 1, 17, 8, torch.arange(8)).uniform("crop", (2, 5))
    assert not torch.equal(full, other) and not torch.equal(full, crop)
    rows = SampleDraws(3, 1, 17, 8, torch.tensor([5, 1])).rows("mask", 4, 5)  # 2 samples x 2 persons
    assert torch.equal(rows, full[[5, 1]].reshape(4, 5))


# ------------------------------------------------------------------ DDP parity through the CLI
def test_accumulated_micro_batches_match_one_batch(data_file, tmp_path):
    one = pretrain(_settings(data_file), tmp_path / "one", progress=False)
    assert (one.world_size, one.global_batch, one.accumulation, one.steps) == (1, 4, 1, 4)  # 9 clips // 4 = 2 steps x 2 epochs
    acc = pretrain(_settings(data_file), tmp_path / "acc", progress=False, max_per_device_batch=2)
    assert (acc.accumulation, acc.per_process_batch) == (2, 4)
    _assert_close(_params(one.checkpoint), _params(acc.checkpoint))


def test_two_processes_match_one_process_through_sigterm_and_resume(data_file, tmp_path):
    """`skel pretrain --nproc 2` (re-launched through torchrun, 2 gloo processes) against a
    1-process run of the same global batch: SIGTERM to the launcher mid-run (forwarded to the workers,
    exit 143, no traceback) makes every rank stop
    at the same step boundary and rank 0 write last.pt, whose parameters equal the 1-process run's
    at that step; `--resume auto` under 2 processes then ends with the 1-process final parameters."""
    extra = ["optim.epochs=30"]
    ref = pretrain(_settings(data_file, extra), tmp_path / "ref", progress=False)  # 60 steps, checkpoint every epoch
    out = tmp_path / "two"
    args = [sys.executable, "-m", "skelcli", *_cli_args(data_file, out, extra), "--nproc", "2", "--json", str(tmp_path / "two.json")]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and '"kind": "step"' in metrics.read_text():
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)

    assert "world size 2" in output and "global batch 4 = 2 process(es) x 1" in output, output[-3000:]
    assert output.count("skel pretrain mamp") == 1  # rank-0 console only
    lines = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert lines[0]["kind"] == "setup" and lines[0]["world_size"] == 2 and lines[0]["backend"] == "gloo"
    res = json.loads((tmp_path / "two.json").read_text())["result"]
    assert (res["world_size"], res["per_process_batch"], res["global_batch"]) == (2, 2, 4)
    last = load_checkpoint(out / "last.pt")
    assert len(last["rng_ranks"]) == 2
    ref_losses = [x["loss"] for x in map(json.loads, (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()) if x["kind"] == "step"]
    two_losses = [x["loss"] for x in lines if x["kind"] == "step"]
    assert two_losses == pytest.approx(ref_losses[: len(two_losses)], rel=1e-4)
    # the launcher forwards the signal to the workers: no torchrun traceback, the single-process exit code
    assert "Traceback" not in output and proc.returncode in (0, 143), output[-3000:]
    if proc.returncode != 0:  # interrupted (the usual case): stopped cleanly at a step boundary
        assert res["interrupted"] == "SIGTERM" and last["step"] == res["steps"] < ref.steps, output[-3000:]
        assert lines[-1]["kind"] == "interrupted"
        if last["batch_in_epoch"] == 0:  # at an epoch boundary: the 1-process run kept that checkpoint too
            _assert_close(_params(tmp_path / "ref" / f"checkpoint-{last['epoch']:04d}.pt"), last["model"], lr_sum=last["step"] * 2e-3)
        resumed = subprocess.run([*args, "--resume", "auto"], capture_output=True, text=True, env=ENV, timeout=240)
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    final = load_checkpoint(out / "last.pt")
    assert final["step"] == ref.steps == 60
    _assert_close(_params(ref.checkpoint), final["model"], lr_sum=60 * 2e-3)


# ------------------------------------------------------------------ distributed feature extraction
def _extract_worker(rank: int, world: int, init_file: str, data_path: str, out_dir: str) -> None:
    import torch.distributed as tdist

    from skelcli.engine.dist import gather_rows_in_order
    from skelcli.eval.features import features_of, load_split
    from skelcli.models.encoder import EncoderConfig, SkeletonEncoder

    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        encoder = SkeletonEncoder(EncoderConfig(num_frames=8, t_patch=4, dim=16, depth=1, heads=2))
        split = load_split(data_path, "xsub", "test")
        feats = features_of(encoder, split, batch_size=2, device="cpu")
        # rows that name their own position: 7 positions over 2 ranks -> padded shard [r::2] of 8
        positions = torch.tensor([0, 1, 2, 3, 4, 5, 6, 0])[rank::world]
        ctx = DistContext(rank, world)
        order = gather_rows_in_order(positions.double()[:, None] * 10, positions, 7, ctx)
        np.savez(Path(out_dir) / f"rank{rank}.npz", feats=feats, order=order.numpy())
    finally:
        tdist.destroy_process_group()


def test_feature_extraction_under_two_processes_matches_one(data_file, tmp_path):
    import torch.multiprocessing as mp

    from skelcli.eval.features import features_of, load_split
    from skelcli.models.encoder import EncoderConfig, SkeletonEncoder

    torch.manual_seed(0)
    encoder = SkeletonEncoder(EncoderConfig(num_frames=8, t_patch=4, dim=16, depth=1, heads=2))
    split = load_split(data_file, "xsub", "test")
    single = features_of(encoder, split, batch_size=2, device="cpu")
    assert single.shape[0] == len(split) and len(split) % 2 == 1  # an odd count: one rank gets a padded duplicate

    mp.spawn(_extract_worker, args=(2, str(tmp_path / "pg"), str(data_file), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        with np.load(tmp_path / f"rank{rank}.npz") as z:
            np.testing.assert_allclose(z["feats"], single, rtol=1e-5, atol=1e-6)  # every sample once, original order
            np.testing.assert_array_equal(z["order"][:, 0], np.arange(7) * 10.0)


def _centring_worker(rank: int, world: int, init_file: str, logits, out_dir: str) -> None:
    import torch.distributed as tdist

    from skelcli.methods.slim_heads import sinkhorn_knopp, softmax_centring

    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        q = sinkhorn_knopp(logits.chunk(world)[rank], 0.07)
        uneven = logits[:5] if rank == 0 else logits[5:]  # 5 and 7 rows
        centre = torch.zeros(1, logits.shape[1])
        first = softmax_centring(uneven, centre, 0.07, 0.9)
        after_first = centre.clone()
        second = softmax_centring(uneven, centre, 0.07, 0.9)
        torch.save({"q": q, "first": first, "second": second, "c1": after_first, "c2": centre}, f"{out_dir}/q{rank}.pt")
    finally:
        tdist.destroy_process_group()


def test_teacher_centring_is_over_the_global_batch(tmp_path):
    """SLiM's teacher targets on 2 processes (gloo): Sinkhorn-Knopp equals one process on the whole batch, and
    DINO's softmax centring keeps one centre on both processes, the EMA of the global batch mean even when the
    processes hold 5 and 7 rows."""
    import torch.multiprocessing as mp

    from skelcli.methods.slim_heads import sinkhorn_knopp

    logits = torch.randn(12, 7, generator=torch.Generator().manual_seed(0))
    mp.spawn(_centring_worker, args=(2, str(tmp_path / "init"), logits, str(tmp_path)), nprocs=2, join=True)
    out = [torch.load(tmp_path / f"q{r}.pt") for r in range(2)]
    q = torch.cat([o["q"] for o in out])
    torch.testing.assert_close(q, sinkhorn_knopp(logits, 0.07), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(12))
    c1 = 0.1 * logits.mean(0, keepdim=True)
    c2 = 0.9 * c1 + 0.1 * logits.mean(0, keepdim=True)
    for o in out:
        torch.testing.assert_close(o["c1"], c1, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(o["c2"], c2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.cat([o["first"] for o in out]), torch.softmax(logits / 0.07, dim=1))
    torch.testing.assert_close(torch.cat([o["second"] for o in out]), torch.softmax((logits - c1) / 0.07, dim=1))


def test_finetune_under_torchrun_two_processes(data_file, tmp_path):
    """`torchrun -m skelcli finetune` (gloo): DDP over the global batch, one writer, one console."""
    out = tmp_path / "ft"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "skelcli", "finetune",
           "--from-scratch", "--data", str(data_file), "--split", "xsub", "--preset", "small", "--epochs", "2",
           "--batch-size", "4", "--device", "cpu", "--out", str(out), "--json", str(tmp_path / "ft.json")]
    r = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads((tmp_path / "ft.json").read_text())
    run = res["runs"][0]
    assert run["epochs"] == 2 and run["steps"] == 2 * (run["n_train"] // 4)  # global batch 4 split over 2 ranks
    assert (out / "finetuned.pt").is_file() and (out / "metrics.json").is_file()
    assert r.stdout.count("JSON written to") == 1  # rank-0 console only
