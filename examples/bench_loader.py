"""Benchmark the training input path: batched crop/resize/rotation and the clip loader.

Measures
  1. ``train_view`` (random crop p in [0.5, 1] with >= 64 frames, linear resize to 120 frames,
     3-axis rotation) on a batch of 128 NTU-like clips (40-300 frames): ms per batch, median over
     repeats; the same for ``test_view``.
  2. ``ClipLoader`` batches/s over a prepared HDF5 file of synthetic NTU-like clips, read into memory
     and read lazily per batch (memory budget forced to ~0), with the prefetch thread on; the lazy
     path again with each ``--workers`` count of reader processes, and (``--shared-cache``) the
     memory-mapped decompressed cache that DDP ranks of a machine share (its build time included).

Usage:
  OMP_NUM_THREADS=1 python examples/bench_loader.py [--clips 2000] [--batch 128] [--repeats 30] [--device cpu]
      [--workers 0 2 4] [--shared-cache] [--skip-transforms]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from skelcli.data.clips import test_view, train_view
from skelcli.data.loader import ClipDataset, ClipLoader
from skelcli.methods.base import ClipBatch
from skelcli.settings import DataSettings


def ntu_like(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n clips of 40-300 frames: (F, 2, 25, 3) float32 frames, offsets (n+1), labels (n)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(40, 301, size=n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    frames = rng.standard_normal((int(offsets[-1]), 2, 25, 3), dtype=np.float32) * 0.3
    labels = rng.integers(0, 60, size=n)
    return frames, offsets, labels


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_transforms(batch_size: int, repeats: int, device: torch.device) -> dict[str, float]:
    frames, offsets, labels = ntu_like(batch_size, seed=1)
    ds = ClipDataset(frames, offsets, labels)
    joints, valid, label = ds.collate(np.arange(batch_size))
    batch = ClipBatch(joints, valid, label).to(device)
    data = DataSettings()
    gen = torch.Generator().manual_seed(0)
    out: dict[str, float] = {}
    for name, fn in (
        ("train_view", lambda: train_view(batch, 120, data, generator=gen)),
        ("test_view", lambda: test_view(batch, 120)),
    ):
        for _ in range(3):
            fn()
        times, cpu = [], []
        for _ in range(repeats):
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            sync(device)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        out[name] = statistics.median(times) * 1e3
        out[name + "_cpu"] = statistics.median(cpu) * 1e3  # robust to other processes on a shared machine
    return out


def time_loader(ds: ClipDataset, batch_size: int, device: torch.device, epochs: int = 2, workers: int = 0) -> dict[str, float]:
    loader = ClipLoader(ds, batch_size, shuffle=True, drop_last=True, seed=0, device=device, prefetch=2, num_workers=workers)
    t0 = time.perf_counter()
    batches = 0
    wait = prepare = 0.0
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for _ in loader:
            batches += 1
        wait += loader.stats.wait_s
        prepare += loader.stats.prepare_s
    elapsed = time.perf_counter() - t0
    loader.close()
    return {"batches_per_s": batches / elapsed, "clips_per_s": batches * batch_size / elapsed,
            "ms_per_batch": 1e3 * elapsed / batches, "prepare_ms": 1e3 * prepare / batches}


def write_h5(path: Path, frames: np.ndarray, offsets: np.ndarray, labels: np.ndarray) -> None:
    """A prepared file of the given clips, through the project's own writer."""
    from skelcli.data import store

    n = len(labels)
    samples = (
        store.Sample(name=f"S001C001P{1 + i % 40:03d}R001A{1 + int(labels[i]):03d}", joints=frames[offsets[i] : offsets[i + 1]], label=int(labels[i]))
        for i in range(n)
    )
    all_idx = np.arange(n)
    splits = {"xsub": {"train": all_idx, "test": all_idx[: n // 10]}}
    store.write_store(path, samples, dataset="ntu60", num_classes=60, splits=splits, rejected=[],
                      preprocessing={}, source={"name": "bench_loader"}, force=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, nargs="*", default=[0], help="reader processes for the lazy path (each count timed)")
    parser.add_argument("--shared-cache", action="store_true", help="also time the memory-mapped decompressed cache")
    parser.add_argument("--skip-transforms", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {device}, "
          f"{os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if not args.skip_transforms:
        report_transforms(args, device)
    frames, offsets, labels = ntu_like(args.clips, seed=2)
    mem = time_loader(ClipDataset(frames, offsets, labels), args.batch, device)
    print(f"loader, arrays in memory: {mem['batches_per_s']:.1f} batches/s ({mem['ms_per_batch']:.2f} ms/batch, padding {mem['prepare_ms']:.2f} ms)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.h5"
        write_h5(path, frames, offsets, labels)
        size_mb = path.stat().st_size / 1e6
        runs = [("HDF5 in memory", dict(memory_budget_gb=8.0), 0)]
        runs += [(f"HDF5 lazy, {w} workers", dict(memory_budget_gb=1e-9), w) for w in args.workers]
        if args.shared_cache:
            runs += [(f"HDF5 shared mmap cache, {w} workers", dict(shared_cache=Path(tmp) / "cache"), w) for w in args.workers]
        for label_, kw, workers in runs:
            t0 = time.perf_counter()
            ds = ClipDataset.from_store(path, "xsub", "train", **kw)
            load_s = time.perf_counter() - t0
            r = time_loader(ds, args.batch, device, workers=workers)
            print(f"loader, {label_} ({size_mb:.0f} MB file, {len(ds)} clips, open {load_s:.2f} s{' incl. cache build' if label_.startswith('HDF5 shared') and workers == args.workers[0] else ''}, in_memory={ds.in_memory}): "
                  f"{r['batches_per_s']:.1f} batches/s, {r['clips_per_s']:.0f} clips/s ({r['ms_per_batch']:.2f} ms/batch)")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def report_transforms(args, device: torch.device) -> None:
    t = time_transforms(args.batch, args.repeats, device)
    print(f"train_view, {args.batch} clips of 40-300 frames -> 120 frames + rotation: {t['train_view']:.2f} ms/batch wall, "
          f"{t['train_view_cpu']:.2f} ms CPU (median of {args.repeats})")
    print(f"test_view,  {args.batch} clips: {t['test_view']:.2f} ms/batch wall, {t['test_view_cpu']:.2f} ms CPU")


if __name__ == "__main__":
    main()
