"""`skel prepare` and `skel info`: raw datasets -> HDF5 store, and a summary/check of a store."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from skelcli.cli._app import command, console
from skelcli.errors import SkelError


class Kind(str, Enum):
    ntu60 = "ntu60"
    ntu120 = "ntu120"
    pku_mmd_v1 = "pku-mmd-v1"
    pku_mmd_v2 = "pku-mmd-v2"


class SecondActor(str, Enum):
    zeros = "zeros"
    copy = "copy"


@command("prepare")
def prepare(
    kind: Kind = typer.Argument(..., help="Dataset: ntu60, ntu120, pku-mmd-v1 or pku-mmd-v2."),
    raw: List[Path] = typer.Option(..., "--raw", help="Raw data folder (searched recursively); repeat for several."),
    out: Path = typer.Option(..., "--out", help="Output HDF5 file."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Parser processes (default: all cores)."),
    force: bool = typer.Option(False, "--force", help="Rebuild even if the inputs are unchanged."),
    missing_list: Optional[Path] = typer.Option(None, "--missing-list", help="Official missing-skeleton list to cross-check (NTU)."),
    second_actor: Optional[SecondActor] = typer.Option(
        None, "--second-actor", help="Single-actor NTU samples: actor 2 = zeros (ntu60 default) or copy of actor 1 (ntu120 default)."
    ),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the report as JSON to this file."),
) -> None:
    """Parse raw skeleton files into one HDF5 store (denoised, translated, splits included).

    Example: skel prepare ntu120 --raw ./nturgbd_skeletons_s001_to_s017 --raw ./nturgbd_skeletons_s018_to_s032 --out data/ntu120.h5
    """
    from skelcli.data.prepare import default_settings, prepare_dataset

    if second_actor is not None and not kind.value.startswith("ntu"):
        raise SkelError("--second-actor applies to ntu60/ntu120 only")
    overrides = {"second_actor": second_actor.value} if second_actor is not None else {}
    settings = default_settings(kind.value, **overrides)
    report = prepare_dataset(kind.value, raw, out, settings, workers=workers, force=force, progress=True, missing_list=missing_list)
    _render_report(report)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report.to_json(), indent=2))


def _render_report(r) -> None:
    from rich.table import Table

    t = Table(title=f"skel prepare {r.dataset} -> {r.out} ({r.status})")
    t.add_column("item")
    t.add_column("value", justify="right")
    t.add_row("samples kept", str(r.kept))
    for reason, n in sorted(r.rejected.items(), key=lambda x: -x[1]):
        t.add_row(f"rejected: {reason}", str(n))
    if r.skipped_other_dataset:
        t.add_row(f"skipped: not part of {r.dataset}", str(r.skipped_other_dataset))
    for proto, parts in sorted(r.splits.items()):
        t.add_row(f"split {proto}", " / ".join(f"{k} {v}" for k, v in sorted(parts.items(), reverse=True)))
    if r.frames:
        t.add_row("frames min / mean / max", f"{r.frames['min']:.0f} / {r.frames['mean']:.1f} / {r.frames['max']:.0f}")
    if r.status == "written":
        t.add_row("raw parsed", f"{r.megabytes:.1f} MB in {r.seconds:.1f} s = {r.mb_per_s:.1f} MB/s ({r.workers} workers)")
    if r.missing_list:
        m = r.missing_list
        t.add_row("missing list: listed / not in raw", f"{m['listed']} / {m['listed_not_in_raw']}")
        t.add_row("missing list: listed but parsed fine", str(len(m["listed_but_parsed_ok"])))
        t.add_row("missing list: rejected but not listed", str(len(m["rejected_not_listed"])))
    console.print(t)
    for name, reason in r.rejected_examples[:10]:
        console.print(f"  [yellow]rejected[/] {name}: {reason}", highlight=False)
    for w in r.warnings:
        console.print(f"[yellow]note:[/] {w}", highlight=False)


def verify_store(path: Path) -> list[str]:
    """Check every sample's shape and finiteness, labels in range and split indices in range.

    Returns a list of problems (empty = fine). Reads /joints chunk-wise.
    """
    import h5py
    import numpy as np

    from skelcli.data.store import FRAME_SHAPE, open_info

    info = open_info(path)
    problems: list[str] = []
    with h5py.File(str(path), "r") as f:
        offsets = f["offsets"][()]
        n = len(offsets) - 1
        joints = f["joints"]
        if joints.shape[1:] != FRAME_SHAPE:
            problems.append(f"/joints has shape {joints.shape}, expected (F, 2, 25, 3)")
        if offsets[0] != 0 or np.any(np.diff(offsets) <= 0) or offsets[-1] != joints.shape[0]:
            problems.append("/offsets is not strictly increasing from 0 to the number of frames")
        for key in ("label", "name"):
            if f[key].shape[0] != n:
                problems.append(f"/{key} has {f[key].shape[0]} rows, expected {n}")
        for k in f["meta"]:
            if f["meta"][k].shape[0] != n:
                problems.append(f"/meta/{k} has {f['meta'][k].shape[0]} rows, expected {n}")
        labels = f["label"][()]
        if n and (labels.min() < 0 or labels.max() >= info.num_classes):
            problems.append(f"labels outside 0..{info.num_classes - 1}")
        step = 1 << 16
        bad = 0
        for lo in range(0, joints.shape[0], step):
            block = joints[lo : lo + step]
            bad += int((~np.isfinite(block)).any(axis=(1, 2, 3)).sum())
        if bad:
            problems.append(f"{bad} frame(s) with non-finite values")
        for proto in f.get("splits", {}):
            for part in f["splits"][proto]:
                ind = f["splits"][proto][part][()]
                if len(ind) and (ind.min() < 0 or ind.max() >= n):
                    problems.append(f"split {proto}/{part}: index out of range")
                if len(np.unique(ind)) != len(ind):
                    problems.append(f"split {proto}/{part}: duplicate indices")
    return problems


def store_summary(path: Path) -> dict:
    """Counts, classes, splits, frame statistics and provenance of a store, as a dict."""
    import h5py
    import numpy as np

    from skelcli.data.store import open_info

    info = open_info(path)
    with h5py.File(str(path), "r") as f:
        lengths = np.diff(f["offsets"][()])
        labels = f["label"][()]
        actors = f["meta"]["num_actors"][()]
        n_rej = int(f["rejected"]["name"].shape[0]) if "rejected" in f else 0
        created_by = str(f.attrs.get("created_by", ""))
        size = Path(path).stat().st_size
    return {
        "path": str(path),
        "dataset": info.dataset,
        "schema_version": info.schema_version,
        "created_by": created_by,
        "num_samples": info.num_samples,
        "num_classes": info.num_classes,
        "classes_present": int(len(np.unique(labels))),
        "samples_per_class": {
            "min": int(np.bincount(labels.astype(np.int64))[np.unique(labels)].min()) if len(labels) else 0,
            "max": int(np.bincount(labels.astype(np.int64)).max()) if len(labels) else 0,
        },
        "two_actor_samples": int((actors == 2).sum()),
        "rejected": n_rej,
        "splits": info.protocols,
        "frames": {
            "min": int(lengths.min()) if len(lengths) else 0,
            "mean": float(lengths.mean()) if len(lengths) else 0.0,
            "max": int(lengths.max()) if len(lengths) else 0,
            "total": int(lengths.sum()),
        },
        "file_bytes": size,
        "padded_300_float32_bytes": int(info.num_samples * 300 * 150 * 4),
        "preprocessing": info.preprocessing,
        "source": info.source,
    }


@command("info")
def info(
    path: Path = typer.Argument(..., help="HDF5 store written by `skel prepare`."),
    verify: bool = typer.Option(False, "--verify", help="Check every sample's shape/finiteness and the split indices."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON instead of tables."),
) -> None:
    """Summarise (and optionally verify) a skeleton store.

    Example: skel info data/ntu60.h5 --verify
    """
    from rich.table import Table

    summary = store_summary(path)
    if verify:
        problems = verify_store(path)
        summary["verify"] = {"ok": not problems, "problems": problems}
    if as_json:
        console.print_json(json.dumps(summary))
    else:
        t = Table(title=f"{path} ({summary['dataset']}, schema v{summary['schema_version']})")
        t.add_column("item")
        t.add_column("value", justify="right")
        t.add_row("samples", str(summary["num_samples"]))
        t.add_row("classes (present / total)", f"{summary['classes_present']} / {summary['num_classes']}")
        spc = summary["samples_per_class"]
        t.add_row("samples per present class (min / max)", f"{spc['min']} / {spc['max']}")
        t.add_row("two-actor samples", str(summary["two_actor_samples"]))
        t.add_row("rejected raw files", str(summary["rejected"]))
        fr = summary["frames"]
        t.add_row("frames min / mean / max", f"{fr['min']} / {fr['mean']:.1f} / {fr['max']}")
        for proto, parts in sorted(summary["splits"].items()):
            t.add_row(f"split {proto}", " / ".join(f"{k} {v}" for k, v in sorted(parts.items(), reverse=True)))
        ratio = summary["file_bytes"] / max(1, summary["padded_300_float32_bytes"])
        t.add_row("file size", f"{summary['file_bytes'] / 1e6:.2f} MB ({ratio:.1%} of 300-frame padded float32)")
        t.add_row("created by", summary["created_by"])
        console.print(t)
        p = Table(title="provenance")
        p.add_column("key")
        p.add_column("value")
        for k, v in sorted(summary["preprocessing"].get("settings", {}).items()):
            p.add_row(f"setting {k}", json.dumps(v))
        for k in ("raw_dirs", "files", "split_files", "missing_list"):
            if k in summary["source"]:
                p.add_row(f"source {k}", json.dumps(summary["source"][k]))
        console.print(p)
        if verify:
            if summary["verify"]["ok"]:
                console.print("[green]verify: ok[/] (shapes, finiteness, labels and split indices)")
            else:
                for prob in summary["verify"]["problems"]:
                    console.print(f"[red]verify:[/] {prob}", highlight=False)
    if verify and not summary["verify"]["ok"]:
        raise typer.Exit(1)
