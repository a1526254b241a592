"""`skel prepare` and `skel info`: raw datasets -> HDF5 store, and a summary/check of a store."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from skelcli.cli._app import command, console, fail
from skelcli.errors import SkelError


class Kind(str, Enum):
    ntu60 = "ntu60"
    ntu120 = "ntu120"
    pku_mmd_v1 = "pku-mmd-v1"
    pku_mmd_v2 = "pku-mmd-v2"
    pyskl = "pyskl"
    ctrgcn_npz = "ctrgcn-npz"
    kinetics_skeleton = "kinetics-skeleton"
    nw_ucla = "nw-ucla"
    arrays = "arrays"


#: The raw NTU / PKU-MMD kinds; every other Kind is an importer of skelcli.data.formats.
RAW_KINDS = ("ntu60", "ntu120", "pku-mmd-v1", "pku-mmd-v2")


class SecondActor(str, Enum):
    zeros = "zeros"
    copy = "copy"


class VerifyInputs(str, Enum):
    stat = "stat"
    hash = "hash"


@command("prepare")
def prepare(
    kind: Kind = typer.Argument(
        ..., help="Raw dataset (ntu60, ntu120, pku-mmd-v1, pku-mmd-v2) or format (pyskl, ctrgcn-npz, kinetics-skeleton, "
        "nw-ucla, arrays; docs/data.md)."),
    raw: List[Path] = typer.Option(..., "--raw", help="Raw data folder (searched recursively) or file, as the format needs; repeat for several."),
    out: Path = typer.Option(..., "--out", help="Output HDF5 file."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Parser processes (default: all cores)."),
    force: bool = typer.Option(False, "--force", help="Rebuild even if the inputs are unchanged."),
    missing_list: Optional[Path] = typer.Option(None, "--missing-list", help="Official missing-skeleton list to cross-check (NTU)."),
    second_actor: Optional[SecondActor] = typer.Option(
        None, "--second-actor", help="Single-actor NTU samples: actor 2 = zeros (ntu60 default) or copy of actor 1 (ntu120 default)."
    ),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the report as JSON to this file."),
    max_frames: Optional[int] = typer.Option(
        None, "--max-frames", help="PKU-MMD: keep at most the first N frames of a clip (default 300, as the reference); 0 keeps every frame."
    ),
    verify_inputs: VerifyInputs = typer.Option(
        VerifyInputs.stat, "--verify-inputs",
        help="How a re-run decides the raw files are unchanged (then it does nothing): stat = name, size and mtime; "
        "hash = name, size and a blake2b hash of the bytes (reads the raw data once more; catches same-size edits "
        "with a kept mtime, e.g. rsync -t). A store built with stat holds no hashes: the first hash run rebuilds it.",
    ),
    topology: Optional[str] = typer.Option(
        None, "--topology", help="Formats: joint layout, a built-in name (ntu25, kinect20, coco17, openpose18, h36m17, "
        "mediapipe33) or a .toml file (default: the format's own)."),
    protocol: Optional[List[str]] = typer.Option(
        None, "--protocol", help="ctrgcn-npz: the protocol of each --raw file, in order (e.g. xsub, xview, xset)."),
    split_seed: int = typer.Option(0, "--split-seed", help="arrays: seed of the random stratified split when the CSV has no split column."),
    test_fraction: float = typer.Option(0.2, "--test-fraction", help="arrays: share of each class in the random test split."),
) -> None:
    """Parse raw skeleton files into one HDF5 store (denoised, translated, splits included).

    Example: skel prepare ntu120 --raw ./nturgbd_skeletons_s001_to_s017 --raw ./nturgbd_skeletons_s018_to_s032 --out data/ntu120.h5

    The store is written to OUT.tmp-<pid> and renamed when complete: Ctrl-C (exit 130) or SIGTERM
    (exit 143) removes the temporary file and leaves an existing OUT as it was; temporary files of
    runs killed outright (kill -9) are removed by the next run.
    """
    from skelcli.data.prepare import default_settings, prepare_dataset
    from skelcli.paths import check_out_file

    check_out_file(json_out, "--json")
    if kind.value not in RAW_KINDS:
        raw_only = {"--workers": workers, "--missing-list": missing_list, "--second-actor": second_actor, "--max-frames": max_frames}
        given = [flag for flag, value in raw_only.items() if value is not None]
        if given:
            raise SkelError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to the raw NTU / PKU-MMD kinds, not to {kind.value}")
        _prepare_format(kind.value, raw, out, topology, protocol or [], split_seed, test_fraction, force, json_out)
        return
    if topology is not None or protocol:
        raise SkelError("--topology and --protocol apply to the formats (pyskl, ctrgcn-npz, ...); "
                        f"{kind.value} is always the ntu25 layout with its own protocols")
    if second_actor is not None and not kind.value.startswith("ntu"):
        raise SkelError("--second-actor applies to ntu60/ntu120 only")
    overrides = {"second_actor": second_actor.value} if second_actor is not None else {}
    settings = default_settings(kind.value, **overrides)
    if max_frames is not None:
        if not kind.value.startswith("pku"):
            raise SkelError("--max-frames applies to pku-mmd-v1/pku-mmd-v2 only (NTU clips are never cut)")
        if max_frames < 0:
            raise SkelError(f"--max-frames must be 0 (keep every frame) or positive, got {max_frames}")
        settings = settings.model_copy(update={"max_frames": max_frames or None})
    _run_and_report(lambda: prepare_dataset(kind.value, raw, out, settings, workers=workers, force=force, progress=True,
                                            missing_list=missing_list, verify_inputs=verify_inputs.value), json_out)


def _run_and_report(build, json_out: Optional[Path]) -> None:
    """Run ``build()`` (a prepare that returns a PrepareReport) with SIGTERM as exit 143, print the report
    table and write it as JSON when asked."""
    from skelcli.data.prepare import Terminated, sigterm_raises

    try:
        with sigterm_raises():
            report = build()
    except Terminated:
        fail("interrupted", code=143)
    _render_report(report)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report.to_json(), indent=2))


def _prepare_format(fmt, raw, out, topology, protocols, split_seed, test_fraction, force, json_out) -> None:
    from skelcli.data.formats import ImportOptions, prepare_format
    from skelcli.topology import get_topology

    if not 0 < test_fraction < 1:
        raise SkelError(f"--test-fraction must be between 0 and 1, got {test_fraction}")
    options = ImportOptions(topology=get_topology(topology) if topology else None, protocols=list(protocols),
                            split_seed=split_seed, test_fraction=test_fraction)
    _run_and_report(lambda: prepare_format(fmt, raw, out, options, force=force, progress=True), json_out)


def _render_report(r) -> None:
    from rich.markup import escape
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
        console.print(f"  [yellow]rejected[/] {escape(str(name))}: {escape(reason)}", highlight=False)
    for w in r.warnings:
        console.print(f"[yellow]note:[/] {escape(w)}", highlight=False)


def verify_store(path: Path) -> list[str]:
    """Check that every dataset is present and readable (every /joints chunk decodes), every frame is
    finite, the offsets, labels and split indices are consistent and in range.

    Returns a list of problems (empty = fine); a check that cannot run because its dataset is missing
    or unreadable is itself a problem. A file that cannot be opened at all (missing, not HDF5,
    truncated, foreign schema) is a SkelError. Reads /joints chunk-wise.
    """
    import numpy as np

    from skelcli.data.store import META_FIELDS, _h5_detail, _topology_attr, open_store

    problems: list[str] = []
    with open_store(path) as f:

        def read(key: str):
            if key not in f:
                problems.append(f"/{key} is missing")
                return None
            try:
                return f[key][()]
            except (OSError, KeyError, ValueError, TypeError) as exc:
                problems.append(f"/{key} cannot be read ({_h5_detail(exc)})")
                return None

        try:
            num_classes = int(f.attrs["num_classes"])
        except (KeyError, OSError, TypeError, ValueError):
            problems.append("attribute num_classes is missing or not an integer")
            num_classes = None
        offsets = read("offsets")
        labels = read("label")
        names = read("name")
        meta = {k: read(f"meta/{k}") for k in META_FIELDS}
        n = len(offsets) - 1 if offsets is not None else None
        frames = None
        if "joints" not in f:
            problems.append("/joints is missing")
        else:
            joints = f["joints"]
            frames = joints.shape[0]
            try:
                topo = _topology_attr(f)
                expected = (2, topo.num_joints, topo.channels)
            except SkelError as exc:
                problems.append(str(exc))
                topo, expected = None, joints.shape[1:]
            if joints.shape[1:] != expected:
                problems.append(f"/joints has shape {joints.shape}, expected (F, {', '.join(map(str, expected))}) for topology {topo.name}")
            else:
                problems += _check_joints(joints)
        if offsets is not None and frames is not None:
            if len(offsets) == 0 or offsets[0] != 0 or np.any(np.diff(offsets) <= 0) or offsets[-1] != frames:
                problems.append("/offsets is not strictly increasing from 0 to the number of frames")
        if n is not None:
            for key, arr in [("label", labels), ("name", names)] + [(f"meta/{k}", v) for k, v in meta.items()]:
                if arr is not None and arr.shape[0] != n:
                    problems.append(f"/{key} has {arr.shape[0]} rows, expected {n}")
        if labels is not None and num_classes is not None and len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            problems.append(f"labels outside 0..{num_classes - 1}")
        splits = f.get("splits")
        if splits is None:
            problems.append("/splits is missing")
        else:
            for proto in splits:
                for part in splits[proto]:
                    ind = read(f"splits/{proto}/{part}")
                    if ind is None:
                        continue
                    if n is not None and len(ind) and (ind.min() < 0 or ind.max() >= n):
                        problems.append(f"split {proto}/{part}: index out of range")
                    if len(np.unique(ind)) != len(ind):
                        problems.append(f"split {proto}/{part}: duplicate indices")
    return problems


def _check_joints(joints) -> list[str]:
    """Read /joints in chunk-aligned blocks: chunks that do not decode (by frame range) and non-finite frames."""
    import numpy as np

    from skelcli.data.store import CHUNK_FRAMES, _h5_detail

    chunk = joints.chunks[0] if joints.chunks else CHUNK_FRAMES
    step = chunk * 64
    bad_chunks: list[tuple[int, int, str]] = []
    non_finite = 0

    def scan(block) -> int:
        return int((~np.isfinite(block)).any(axis=(1, 2, 3)).sum())

    for lo in range(0, joints.shape[0], step):
        hi = min(lo + step, joints.shape[0])
        try:
            non_finite += scan(joints[lo:hi])
            continue
        except OSError:
            pass
        for c_lo in range(lo, hi, chunk):  # locate the chunks that fail
            c_hi = min(c_lo + chunk, hi)
            try:
                non_finite += scan(joints[c_lo:c_hi])
            except OSError as exc:
                bad_chunks.append((c_lo, c_hi, _h5_detail(exc)))
    problems = []
    if bad_chunks:
        where = ", ".join(f"frames {a}-{b - 1}" for a, b, _ in bad_chunks[:3]) + (", ..." if len(bad_chunks) > 3 else "")
        problems.append(f"/joints: {len(bad_chunks)} chunk(s) cannot be decoded ({where}: {bad_chunks[0][2]})")
    if non_finite:
        problems.append(f"{non_finite} frame(s) with non-finite values")
    return problems


def store_summary(path: Path) -> dict:
    """Counts, classes, splits, frame statistics and provenance of a store, as a dict."""
    import numpy as np

    from skelcli.data.store import META_FIELDS, open_info, open_store

    info = open_info(path)
    with open_store(path) as f:
        missing = [f"/{k}" for k in ("joints", "offsets", "label", "name", *(f"meta/{m}" for m in META_FIELDS)) if k not in f]
        if missing:
            raise SkelError(f"{path}: the store lacks {', '.join(missing)}; the file is incomplete "
                            "(`skel info --verify` lists every problem; re-run `skel prepare` with --force)")
        lengths = np.diff(f["offsets"][()])
        labels = f["label"][()]
        actors = f["meta"]["num_actors"][()]
        n_rej = int(f["rejected"]["name"].shape[0]) if "rejected" in f else 0
        created_by = str(f.attrs.get("created_by", ""))
        size = Path(path).stat().st_size
    counts = np.unique(labels, return_counts=True)[1]
    return {
        "path": str(path),
        "dataset": info.dataset,
        "schema_version": info.schema_version,
        "created_by": created_by,
        "num_samples": info.num_samples,
        "num_classes": info.num_classes,
        "classes_present": int(len(np.unique(labels))),
        "samples_per_class": {
            "min": int(counts.min()) if len(labels) else 0,
            "max": int(counts.max()) if len(labels) else 0,
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
        "padded_300_float32_bytes": int(info.num_samples * 300 * 2 * info.topology.num_joints * info.topology.channels * 4),
        "topology": info.topology.to_dict(),
        "preprocessing": info.preprocessing,
        "source": info.source,
    }


@command("info")
def info(
    path: Path = typer.Argument(..., help="HDF5 store written by `skel prepare`."),
    verify: bool = typer.Option(False, "--verify", help="Check that every dataset is present and decodes, every frame is finite, labels and split indices are in range."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON instead of tables."),
) -> None:
    """Summarise (and optionally verify) a skeleton store.

    Example: skel info data/ntu60.h5 --verify

    With --verify, problems are listed one per line and the exit code is 2.
    """
    from rich.markup import escape

    try:
        summary = store_summary(path)
        summary_error = None
    except SkelError as exc:
        if not verify:
            raise
        summary, summary_error = None, exc  # --verify says which part of the file is broken
    problems = verify_store(path) if verify else []
    if summary_error is not None and not problems:
        raise summary_error
    if as_json:
        payload = summary if summary is not None else {"path": str(path)}
        if verify:
            payload["verify"] = {"ok": not problems, "problems": problems}
        console.print_json(json.dumps(payload))
    else:
        if summary is not None:
            _render_summary(path, summary)
        if verify and not problems:
            console.print("[green]verify: ok[/] (datasets readable, shapes, finiteness, labels and split indices)")
        for prob in problems:
            console.print(f"[red]verify:[/] {escape(prob)}", highlight=False)
    if problems:
        fail(f"{path}: verify found {len(problems)} problem(s)")


def _render_summary(path: Path, summary: dict) -> None:
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=escape(f"{path} ({summary['dataset']}, schema v{summary['schema_version']})"))
    t.add_column("item")
    t.add_column("value", justify="right")
    t.add_row("samples", str(summary["num_samples"]))
    t.add_row("classes (present / total)", f"{summary['classes_present']} / {summary['num_classes']}")
    spc = summary["samples_per_class"]
    t.add_row("samples per present class (min / max)", f"{spc['min']} / {spc['max']}")
    if "topology" in summary:
        from skelcli.topology import Topology

        t.add_row("topology", escape(Topology.from_dict(summary["topology"]).describe()))
    t.add_row("two-actor samples", str(summary["two_actor_samples"]))
    t.add_row("rejected raw files", str(summary["rejected"]))
    fr = summary["frames"]
    t.add_row("frames min / mean / max", f"{fr['min']} / {fr['mean']:.1f} / {fr['max']}")
    for proto, parts in sorted(summary["splits"].items()):
        t.add_row(f"split {proto}", " / ".join(f"{k} {v}" for k, v in sorted(parts.items(), reverse=True)))
    ratio = summary["file_bytes"] / max(1, summary["padded_300_float32_bytes"])
    t.add_row("file size", f"{summary['file_bytes'] / 1e6:.2f} MB ({ratio:.1%} of 300-frame padded float32)")
    t.add_row("created by", escape(summary["created_by"]))
    console.print(t)
    p = Table(title="provenance")
    p.add_column("key")
    p.add_column("value")
    settings = summary["preprocessing"].get("settings", {}) if isinstance(summary["preprocessing"], dict) else {}
    for k, v in sorted(settings.items()):
        p.add_row(escape(f"setting {k}"), escape(json.dumps(v)))
    source = summary["source"] if isinstance(summary["source"], dict) else {}
    for k in ("raw_dirs", "files", "split_files", "missing_list"):
        if k in source:
            p.add_row(f"source {k}", escape(json.dumps(source[k])))
    console.print(p)


@command("export-arrays")
def export_arrays_cmd(
    data: Path = typer.Argument(..., help="HDF5 store written by `skel prepare`."),
    out: Path = typer.Option(..., "--out", help="Folder to write (must be empty unless --force)."),
    split: Optional[str] = typer.Option(None, "--split", help="Protocol whose train/test parts go into labels.csv (default: the first)."),
    force: bool = typer.Option(False, "--force", help="Write into a non-empty folder."),
) -> None:
    """Write a store as the `arrays` format: one .npy (T, 2, V, C) per clip, labels.csv, topology.toml.

    Example: skel export-arrays data/ntu60.h5 --out ntu60_arrays --split xsub
    then:    skel prepare arrays --raw ntu60_arrays --topology ntu60_arrays/topology.toml --out copy.h5
    """
    from skelcli.data.formats.arrays import export_arrays
    from skelcli.paths import check_out_dir

    check_out_dir(out, "--out")
    rep = export_arrays(data, out, protocol=split, force=force)
    console.print(f"wrote {rep['clips']} clips ({rep['topology']} layout, split {rep['protocol']}) to {rep['out']}",
                  markup=False, soft_wrap=True)
