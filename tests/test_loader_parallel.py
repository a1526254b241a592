"""Parallel lazy readers (ClipLoader num_workers) and the shared decompressed frames cache."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from skelcli.data.loader import ClipDataset, ClipLoader
from test_loader import write_encoded_store


def batches_of(loader: ClipLoader, epochs: int = 2) -> list[tuple]:
    out = []
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for b in loader:
            out.append((b.joints.clone(), b.valid.clone(), b.label.clone(), [loader.dataset.names[i] for i in loader.last_indices]))
    return out


def assert_same(a: list[tuple], b: list[tuple]) -> None:
    assert len(a) == len(b) and len(a) > 0
    for x, y in zip(a, b):
        assert torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) and torch.equal(x[2], y[2]) and x[3] == y[3]


def gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()  # reaped: no zombie entry either


@pytest.fixture
def enc(tmp_path) -> Path:
    path = tmp_path / "enc.h5"
    write_encoded_store(path, n=40)
    return path


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize(
    "workers,context,rank,world",
    [(1, None, 0, 1), (4, None, 0, 1), (1, None, 1, 2), (4, None, 1, 2), (2, "spawn", 1, 2)],
)
def test_workers_give_the_in_memory_batches(enc, workers, context, rank, world):
    mem = ClipDataset.from_store(enc, "xsub", "train")
    lazy = ClipDataset.from_store(enc, "xsub", "train", memory_budget_gb=1e-9)
    assert mem.in_memory and not lazy.in_memory
    kw = dict(seed=5, drop_last=False, rank=rank, world_size=world)
    expected = batches_of(ClipLoader(mem, 4, **kw))
    with ClipLoader(lazy, 4, num_workers=workers, worker_context=context, **kw) as loader:
        assert_same(batches_of(loader), expected)
    assert mp.active_children() == []


def test_workers_stop_on_close_break_and_consumer_error(enc):
    lazy = ClipDataset.from_store(enc, "xsub", "train", memory_budget_gb=1e-9)
    loader = ClipLoader(lazy, 2, num_workers=2)
    it = iter(loader)
    next(it)
    pids = [p.pid for p in mp.active_children()]
    assert len(pids) == 2
    loader.close()
    assert all(gone(p) for p in pids) and mp.active_children() == []

    with pytest.raises(RuntimeError, match="consumer"):
        for _ in loader:
            pids = [p.pid for p in mp.active_children()]
            raise RuntimeError("consumer failed")
    assert pids and all(gone(p) for p in pids)

    with pytest.raises(KeyboardInterrupt):
        with ClipLoader(lazy, 2, num_workers=2) as kb:
            for _ in kb:
                pids = [p.pid for p in mp.active_children()]
                raise KeyboardInterrupt
    assert pids and all(gone(p) for p in pids)


def test_worker_errors_reach_the_consumer(enc):
    lazy = ClipDataset.from_store(enc, "xsub", "train", memory_budget_gb=1e-9)
    lazy._path = enc.with_name("missing.h5")  # every worker's read fails
    with pytest.raises(Exception, match="missing"):
        list(ClipLoader(lazy, 2, num_workers=2))
    deadline = time.time() + 5
    while mp.active_children() and time.time() < deadline:
        time.sleep(0.05)
    assert mp.active_children() == []


def test_shared_cache_single_process(enc, tmp_path):
    mem = ClipDataset.from_store(enc, "xsub", "train")
    cached = ClipDataset.from_store(enc, "xsub", "train", shared_cache=tmp_path / "cache")
    files = list((tmp_path / "cache").glob("*.frames.npy"))
    assert len(files) == 1 and cached.in_memory and cached._frames.numpy().base is not None
    assert_same(batches_of(ClipLoader(cached, 4, seed=2, num_workers=2)), batches_of(ClipLoader(mem, 4, seed=2)))
    again = ClipDataset.from_store(enc, "xsub", "train", shared_cache=tmp_path / "cache")
    assert list((tmp_path / "cache").glob("*.frames.npy")) == files and torch.equal(again._frames, cached._frames)
    limited = ClipDataset.from_store(enc, "xsub", "train", limit=5, shared_cache=tmp_path / "cache")
    assert len(limited) == 5 and len(list((tmp_path / "cache").glob("*.frames.npy"))) == 2
    st = enc.stat()
    os.utime(enc, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the file "changed": a new key, the old cache removed
    fresh = ClipDataset.from_store(enc, "xsub", "train", shared_cache=tmp_path / "cache")
    now = sorted((tmp_path / "cache").glob(f"enc.h5.xsub-train-{len(mem)}.*.frames.npy"))
    assert len(now) == 1 and now != files and torch.equal(fresh._frames, cached._frames)
    assert torch.equal(cached._frames, mem._frames)  # the removed file's map stays readable


def _rank_main(rank: int, world: int, init: str, path: str, cache: str, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        os.environ["LOCAL_RANK"] = str(rank)
        ds = ClipDataset.from_store(path, "xsub", "train", shared_cache=cache)
        res = batches_of(ClipLoader(ds, 3, seed=7, drop_last=False, rank=rank, world_size=world))
        torch.save(res, Path(out) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def _run_ranks(tmp_path: Path, path: Path, cache: Path, tag: str) -> list:
    out = tmp_path / f"out_{tag}"
    out.mkdir()
    init = f"file://{tmp_path / f'pg_{tag}'}"
    torch.multiprocessing.spawn(_rank_main, args=(2, init, str(path), str(cache), str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


def test_two_gloo_ranks_share_one_cache_file(enc, tmp_path):
    cache = tmp_path / "cache"
    got = _run_ranks(tmp_path, enc, cache, "a")
    files = list(cache.glob("*.frames.npy"))
    assert len(files) == 1
    mem = ClipDataset.from_store(enc, "xsub", "train")
    for r in range(2):
        assert_same(got[r], batches_of(ClipLoader(mem, 3, seed=7, drop_last=False, rank=r, world_size=2)))

    write_encoded_store(enc, n=31)  # a changed file: a new cache (built once), never the old one
    got = _run_ranks(tmp_path, enc, cache, "b")
    new = set(cache.glob("*.frames.npy")) - set(files)
    assert len(new) == 1
    mem = ClipDataset.from_store(enc, "xsub", "train")
    for r in range(2):
        assert_same(got[r], batches_of(ClipLoader(mem, 3, seed=7, drop_last=False, rank=r, world_size=2)))


def test_pretrain_with_reader_processes_and_the_shared_cache_trains_identically(data_file, tmp_path):
    """`skel pretrain --set data.num_workers=2 --set data.shared_cache=true`: the cache file is written
    to data.cache_dir, and the losses equal those of the default loader step for step (same batches)."""
    from typer.testing import CliRunner

    from skelcli.cli import app

    def losses(out: Path, *extra: str) -> list[float]:
        args = ["pretrain", "--method", "mae", "--data", str(data_file), "--preset", "small", "--epochs", "2", "--batch-size", "4",
                "--device", "cpu", "--seed", "3", "--out", str(out), "--no-progress", "--set", "runtime.log_every=1", *extra]
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 0, r.output
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        return [row["loss"] for row in rows if row["kind"] == "step"]

    plain = losses(tmp_path / "plain")
    cache = tmp_path / "cache"
    fast = losses(tmp_path / "fast", "--set", "data.num_workers=2", "--set", "data.shared_cache=true",
                  "--set", f"data.cache_dir={cache}")
    assert len(plain) == 4 and fast == plain
    assert len(list(cache.glob("tiny.h5.xsub-train-9.*.frames.npy"))) == 1
    assert mp.active_children() == []


@pytest.mark.parametrize("setting,field", [
    ("data.num_workers=-1", "data.num_workers"),
    ("data.shared_cache=maybe", "data.shared_cache"),
    ("runtime.compile_backend=tensorrt", "runtime.compile_backend"),
])
def test_bad_loader_and_compile_settings_fail_at_parse_time_naming_the_field(data_file, tmp_path, setting, field):
    from helpers import assert_one_line_error, run_cli

    r = run_cli("pretrain", "--method", "mae", "--data", data_file, "--preset", "small", "--device", "cpu",
                "--out", tmp_path / "run", "--no-progress", "--set", setting)
    assert_one_line_error(r, field)
    assert not (tmp_path / "run").exists()


def test_a_cache_dir_that_is_a_file_fails_at_parse_time_and_the_file_is_kept(data_file, tmp_path):
    from helpers import assert_one_line_error, run_cli

    target = tmp_path / "not_a_folder"
    target.write_text("keep")
    r = run_cli("pretrain", "--method", "mae", "--data", data_file, "--preset", "small", "--device", "cpu",
                "--out", tmp_path / "run", "--no-progress", "--set", "data.shared_cache=true", "--set", f"data.cache_dir={target}")
    assert_one_line_error(r, "data.cache_dir")
    assert target.read_text() == "keep" and not (tmp_path / "run").exists()
