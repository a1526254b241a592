"""Memory of DDP ranks on one machine: each rank's own in-memory copy vs one shared decompressed cache.

Writes a synthetic NTU-shaped file (skelcli.bench.gpucheck.write_synthetic_store), starts ``--ranks``
gloo processes with ``torch.multiprocessing.spawn``; each one opens the training split (in memory, or
``shared_cache=True``: the memory-mapped decompressed copy built once by local rank 0), reads every
batch of one epoch of its shard, and reports its resident set (RSS) and proportional set size (PSS,
shared pages divided among the processes that map them, from /proc/self/smaps_rollup).

Usage:
  python examples/bench_shared_cache.py [--clips 6000] [--ranks 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch


def _kb(key: str, path: str) -> int:
    for line in Path(path).read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return -1


def _rank(rank: int, world: int, init: str, data: str, shared: bool, out: str) -> None:
    from skelcli.data.loader import ClipDataset, ClipLoader

    os.environ["LOCAL_RANK"] = str(rank)
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        t0 = time.perf_counter()
        ds = ClipDataset.from_store(data, "xsub", "train", shared_cache=shared, memory_budget_gb=1e3)
        open_s = time.perf_counter() - t0
        clips = 0
        for batch in ClipLoader(ds, 128, seed=0, rank=rank, world_size=world, drop_last=False):
            clips += batch.joints.shape[0]
        _ = ds._frames.sum()  # touch every frame, as an epoch of every rank's shard together would
        torch.distributed.barrier()  # all ranks hold their data now
        rss, pss = _kb("VmRSS", "/proc/self/status"), _kb("Pss", "/proc/self/smaps_rollup")
        Path(out, f"rank{rank}.txt").write_text(f"{rss} {pss} {open_s:.2f} {clips}\n")
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--clips", type=int, default=6000)
    p.add_argument("--ranks", type=int, default=2)
    args = p.parse_args()
    from skelcli.bench.gpucheck import write_synthetic_store

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "synthetic.h5"
        info = write_synthetic_store(data, args.clips, 10)
        print(f"{args.clips} training clips, {info['decompressed_gb']:.2f} GB decompressed, file {info['file_gb']:.2f} GB, "
              f"{os.cpu_count()} CPUs")
        for shared in (False, True):
            out = Path(tmp) / f"out_{shared}"
            out.mkdir()
            torch.multiprocessing.spawn(_rank, args=(args.ranks, f"file://{tmp}/pg_{shared}", str(data), shared, str(out)),
                                        nprocs=args.ranks, join=True)
            rows = [Path(out, f"rank{r}.txt").read_text().split() for r in range(args.ranks)]
            rss = [int(r[0]) / 2**20 for r in rows]
            pss = [int(r[1]) / 2**20 for r in rows]
            print(f"{'shared mmap cache' if shared else 'own copy per rank'}: RSS per rank {', '.join(f'{x:.2f}' for x in rss)} GB, "
                  f"PSS per rank {', '.join(f'{x:.2f}' for x in pss)} GB, PSS total {sum(pss):.2f} GB, "
                  f"open {', '.join(r[2] for r in rows)} s")


if __name__ == "__main__":
    main()
