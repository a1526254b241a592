"""Benchmark: raw `.skeleton` parse speed per core, and HDF5 size / read speed per compression.

Usage:  OMP_NUM_THREADS=1 python examples/bench_parse.py [--repeat 5] [--copies 20]

* Parse: one process (= one core), the genuine NTU files in ../shared/realdata/ntu when present,
  else generated NTU-length text (80 frames, 1-2 bodies). Reports MB/s for the parser alone
  (spec D.1) and for parse + denoise + translate (D.3-D.5), best of --repeat passes.
* Store: the prepared samples (replicated --copies times to get a few thousand) written with
  gzip-1 / gzip-4 / lzf (all with shuffle) and uncompressed; reports the file size as a fraction of
  the reference 300-frame padded float32 layout (N x 300 x 150 x 4 B, spec D.5) and the time to
  read every sample back with read_samples.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from skelcli.data import store
from skelcli.data.ntu import NtuPrepareSettings, format_skeleton, load_sample, parse_name, parse_skeleton_bytes

REALDATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "realdata" / "ntu"


def generated_files(out: Path, n: int = 40) -> list[Path]:
    """NTU-length synthetic text files (80 frames; every third file has two bodies)."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        base = rng.uniform(-0.5, 0.5, (25, 3)) + np.array([0.0, 0.0, 3.0])
        frames = []
        for t in range(80):
            bodies = [("72057594037931101", np.concatenate([base + 0.01 * t, rng.uniform(0, 500, (25, 8)), np.full((25, 1), 2)], 1))]
            if i % 3 == 0:
                bodies.append(("72057594037931102", np.concatenate([base + 1.0, rng.uniform(0, 500, (25, 8)), np.full((25, 1), 2)], 1)))
            frames.append(bodies)
        p = out / f"S001C001P{i % 40 + 1:03d}R001A{i % 60 + 1:03d}.skeleton"
        p.write_text(format_skeleton(frames))
        paths.append(p)
    return paths


def bench_parse(files: list[Path], repeat: int) -> dict:
    blobs = [f.read_bytes() for f in files]
    mb = sum(len(b) for b in blobs) / 1e6
    best_parse = best_full = cpu_parse = cpu_full = float("inf")
    settings = NtuPrepareSettings()
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        for b in blobs:
            parse_skeleton_bytes(b)
        best_parse = min(best_parse, time.perf_counter() - t)
        cpu_parse = min(cpu_parse, time.process_time() - c)
        t, c = time.perf_counter(), time.process_time()
        for f in files:
            load_sample(f, settings)  # includes reading the file from the page cache
        best_full = min(best_full, time.perf_counter() - t)
        cpu_full = min(cpu_full, time.process_time() - c)
    return {
        "files": len(files), "MB": mb, "parse_MBps": mb / best_parse, "full_MBps": mb / best_full,
        "parse_MBps_cpu": mb / cpu_parse, "full_MBps_cpu": mb / cpu_full,
    }


def bench_store(files: list[Path], copies: int, second_actor: str) -> list[dict]:
    settings = NtuPrepareSettings(second_actor=second_actor)
    base = [load_sample(f, settings) for f in files]
    samples = [
        store.Sample(f"{s.meta.name}_{k}", s.joints, s.meta.label, s.meta.setup, s.meta.camera, s.meta.subject, s.meta.replication, s.num_actors)
        for k in range(copies) for s in base
    ]
    padded = len(samples) * 300 * 150 * 4
    variants = {
        "none": {},
        "gzip-1+shuffle": {"compression": "gzip", "compression_opts": 1, "shuffle": True},
        "gzip-4+shuffle": {"compression": "gzip", "compression_opts": 4, "shuffle": True},
        "lzf+shuffle": {"compression": "lzf", "shuffle": True},
        "lzf": {"compression": "lzf"},
    }
    rows = []
    saved = store.COMPRESSION
    try:
        with tempfile.TemporaryDirectory() as d:
            for name, comp in variants.items():
                store.COMPRESSION = comp
                p = Path(d) / f"{name}.h5"
                t = time.perf_counter()
                store.write_store(p, samples, dataset="ntu60", num_classes=60, splits={}, rejected=[], preprocessing={}, source={}, force=True)
                t_write = time.perf_counter() - t
                t_read = float("inf")
                for _ in range(3):  # best of 3 (the page cache is warm after the first)
                    t = time.perf_counter()
                    ss = store.read_samples(p, np.arange(len(samples)))
                    t_read = min(t_read, time.perf_counter() - t)
                rows.append({
                    "variant": name, "second_actor": second_actor, "samples": len(samples), "MB": p.stat().st_size / 1e6,
                    "fraction_of_padded": p.stat().st_size / padded, "write_s": t_write, "read_all_s": t_read,
                    "read_MBps_raw": ss.joints.nbytes / 1e6 / t_read,
                })
    finally:
        store.COMPRESSION = saved
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--copies", type=int, default=20)
    ap.add_argument("--generated", action="store_true", help="use generated text even when real files exist")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = sorted(REALDATA.glob("*.skeleton")) if REALDATA.is_dir() and not args.generated else []
        source = f"{len(files)} real NTU files from {REALDATA.resolve()}" if files else "generated NTU-length files"
        if not files:
            files = generated_files(Path(tmp))
        files = [f for f in files if parse_name(f.name)]
        r = bench_parse(files, args.repeat)
        print(f"parse ({source}), 1 process:")
        print(f"  {r['MB']:.1f} MB in {r['files']} files: parser {r['parse_MBps']:.1f} MB/s wall, {r['parse_MBps_cpu']:.1f} MB/s per CPU-second")
        print(f"  parse+denoise+translate: {r['full_MBps']:.1f} MB/s wall, {r['full_MBps_cpu']:.1f} MB/s per CPU-second")
        print(f"store ({args.copies} copies of the prepared samples), size vs 300-frame padded float32:")
        for second in ("zeros", "copy"):
            for row in bench_store(files, args.copies, second):
                print(
                    f"  {row['variant']:<15} actor2={row['second_actor']:<5} {row['MB']:7.2f} MB = {row['fraction_of_padded']:.3f} of padded;"
                    f" write {row['write_s']:.2f} s, read all {row['read_all_s']:.3f} s ({row['read_MBps_raw']:.0f} MB/s decoded)"
                )
        print(f"store default: {store.COMPRESSION}")


if __name__ == "__main__":
    main()
