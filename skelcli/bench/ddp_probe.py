"""A one-process torchrun job for ``skel gpu-check``: NCCL (gloo on CPU) + DistributedDataParallel.

``skel pretrain`` only builds a process group for two or more processes, so ``gpu-check`` starts this
module under ``torchrun --nproc-per-node 1``: it initialises the process group of the device
(``nccl`` on CUDA), checks an ``all_reduce``, wraps the MAMP method (small preset) in
``DistributedDataParallel``, takes a few training steps on batches from the real loader over
``--data`` and writes what happened to ``--out`` as JSON.

    torchrun --standalone --nproc-per-node 1 -m skelcli.bench.ddp_probe --data FILE.h5 --device cuda --out probe.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch", type=int, default=16)
    args = p.parse_args(argv)

    from torch.nn.parallel import DistributedDataParallel

    from skelcli.bench.throughput import build_method, make_optimizer
    from skelcli.data.loader import ClipDataset, ClipLoader

    backend = "nccl" if args.device == "cuda" else "gloo"
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    t0 = time.perf_counter()
    dist.init_process_group(backend)
    try:
        x = torch.full((4,), float(dist.get_rank() + 1), device=device)
        dist.all_reduce(x)
        expected = sum(range(1, dist.get_world_size() + 1))
        method, settings = build_method("mamp", "small", "ntu60", device)
        ddp = DistributedDataParallel(method, device_ids=[local] if device.type == "cuda" else None)
        optimizer = make_optimizer(method, settings)
        dataset = ClipDataset.from_store(args.data, "xsub", "train", limit=args.batch * args.steps)
        loader = ClipLoader(dataset, args.batch, shuffle=True, drop_last=True, seed=0, device=device,
                            rank=dist.get_rank(), world_size=dist.get_world_size())
        losses = []
        for batch in loader:
            loss = ddp(batch)["loss"]
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
        result = {"backend": dist.get_backend(), "world_size": dist.get_world_size(), "device": str(device),
                  "all_reduce_ok": bool(torch.all(x == expected).item()), "steps": len(losses),
                  "losses": [round(v, 4) for v in losses], "finite": all(math.isfinite(v) for v in losses),
                  "seconds": time.perf_counter() - t0}
        result["status"] = "ok" if result["all_reduce_ok"] and result["finite"] and losses else "failed"
        if dist.get_rank() == 0:
            args.out.write_text(json.dumps(result, indent=2) + "\n")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
