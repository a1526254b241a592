"""`skel embed` (frozen-encoder features to an .npz) and `skel predict` (top-k actions to a CSV).

Thin commands over :mod:`skelcli.api` (``skelcli.embed`` / ``skelcli.predict``); torch is imported
inside the command bodies so ``skel --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from skelcli.cli._app import command, console, err_console
from skelcli.paths import check_out_file

_ckpt_opt = typer.Option(..., "--checkpoint", "-c", help="Checkpoint (.pt).")
_split_opt = typer.Option("xsub", "--split", help="Protocol name in the file (xsub, xview, xset).")
_part_opt = typer.Option("test", "--part", help="train | test | all (every clip of the file).")
_batch_opt = typer.Option(128, "--batch-size", help="Clips per batch.")
_device_opt = typer.Option("auto", "--device", help="auto | cpu | cuda")
_no_progress_opt = typer.Option(False, "--no-progress", help="No progress bar.")


def _counter(description: str, total: int, enabled: bool):
    """(callback(k) adding k clips to a step_progress bar, close()); both no-ops when disabled."""
    from skelcli.progress import step_progress

    if not enabled or total <= 0:
        return (lambda k: None), (lambda: None)
    bar = step_progress(description, total, console=console)
    done = [0]

    def advance(k: int) -> None:
        done[0] += int(k)
        bar.update(done[0])

    return advance, bar.close


def _clip_count(data: Optional[Path], split: str, part: str, array: Optional[Path]) -> int:
    """Number of clips the command will process (for the progress bar); 0 when it cannot be read cheaply."""
    import numpy as np

    from skelcli.eval.features import data_info

    try:
        if array is not None:
            return int(np.load(array, mmap_mode="r", allow_pickle=False).shape[0])
        if data is not None:
            info = data_info(data)
            if part == "all":
                return int(info.num_samples)
            return int((info.protocols.get(split) or {}).get(part, 0))
    except Exception:  # the API call that follows reports the real problem as a one-line error
        return 0
    return 0


@command("embed")
def embed(
    checkpoint: Path = _ckpt_opt,
    data: Optional[Path] = typer.Option(None, "--data", "-d", help="Prepared HDF5 file (skel prepare)."),
    split: str = _split_opt,
    part: str = _part_opt,
    input_array: Optional[Path] = typer.Option(
        None, "--input", help="Preprocessed clips as .npy, (N, M, T, V, C) float32 (instead of --data)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output .npz: features, labels, names, settings (JSON)."),
    person_pool: str = typer.Option("mean", "--person-pool", help="mean (all person slots) | sum (non-empty persons) | none (N, M, D)."),
    batch_size: int = _batch_opt,
    device: str = _device_opt,
    no_progress: bool = _no_progress_opt,
) -> None:
    """Frozen-encoder features of every clip, written to an .npz.

    Example:  skel embed -c runs/mamp/last.pt -d data/ntu60.h5 --split xsub --part test --out feats.npz
    Arrays:   skel embed -c runs/mamp/last.pt --input clips.npy --out feats.npz --person-pool none

    The .npz holds features (N, D) float32 ((N, M, D) with --person-pool none), labels (N,) int64 (-1 for --input), names (N,) str and settings (a JSON string).

    --input clips whose T equals the encoder's input length are encoded as given; other lengths get the same centre test view as --data.
    """
    from rich.markup import escape
    from rich.table import Table

    from skelcli.api import embed as api_embed
    from skelcli.api import save_embedding

    check_out_file(out, "--out")
    advance, close = _counter("embed", _clip_count(data, split, part, input_array), not no_progress)
    try:
        res = api_embed(checkpoint, data, split=split, part=part, array=input_array, person_pool=person_pool,
                        batch_size=batch_size, device=device, progress=advance)
    finally:
        close()
    save_embedding(res, out)
    s = res["settings"]
    table = Table(title="skel embed", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_row("encoder", f"{s['method']} / epoch {s['epoch']} ({s['input_frames']} frames, feature dim {s['feature_dim']})")
    source = f"{s['data']} {s['split']}/{s['part']}" if s["source"] == "data" else f"{s['input']} (test-view crop: {s['cropped']})"
    table.add_row("clips", escape(f"{len(res['names'])} from {source}"))
    table.add_row("features", f"{tuple(res['features'].shape)} float32, person pool {s['person_pool']}")
    table.add_row("written", escape(str(out)))
    console.print(table, highlight=False)


@command("predict")
def predict(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="Fine-tuned checkpoint (finetuned.pt of skel finetune)."),
    data: Optional[Path] = typer.Option(None, "--data", "-d", help="Prepared HDF5 file (skel prepare)."),
    split: str = _split_opt,
    part: str = _part_opt,
    raw: Optional[Path] = typer.Option(None, "--raw", help="Folder of NTU .skeleton files (instead of --data); parsed and denoised as skel prepare does."),
    out: Path = typer.Option(..., "--out", "-o", help="Output CSV: name, true_label, top1_id, top1_name, top1_prob, ..."),
    top_k: int = typer.Option(5, "--top-k", help="Actions listed per clip."),
    batch_size: int = _batch_opt,
    device: str = _device_opt,
    no_progress: bool = _no_progress_opt,
) -> None:
    """Top-k actions per clip from a fine-tuned checkpoint, written to a CSV.

    Example:  skel predict -c runs/ft/finetuned.pt -d data/ntu60.h5 --split xsub --part test --out predictions.csv
    Raw:      skel predict -c runs/ft/finetuned.pt --raw ./nturgbd_skeletons --out predictions.csv --top-k 3
    """
    from rich.markup import escape
    from rich.table import Table

    from skelcli.api import predict as api_predict
    from skelcli.api import write_predictions_csv

    check_out_file(out, "--out")
    if data is not None:
        total = _clip_count(data, split, part, None)
    else:
        total = 1 if raw is not None and raw.is_file() else (len(list(raw.rglob("*.skeleton"))) if raw is not None and raw.is_dir() else 0)
    advance, close = _counter("predict", total, not no_progress)
    warnings: list[str] = []
    try:
        rows = api_predict(checkpoint, data, raw=raw, split=split, part=part, top_k=top_k, batch_size=batch_size,
                           device=device, progress=advance, warn=warnings.append)
    finally:
        close()
    write_predictions_csv(rows, out)
    for w in warnings[:10]:
        err_console.print(f"warning: {escape(w)}", highlight=False, soft_wrap=True)
    if len(warnings) > 10:
        err_console.print(f"warning: {len(warnings) - 10} more file(s) skipped", highlight=False)
    known = [r for r in rows if r["true_label"] is not None]
    table = Table(title="skel predict", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_row("clips", escape(f"{len(rows)} from " + (f"{data} {split}/{part}" if data is not None else f"{raw}")))
    if known:
        top1 = sum(r["top_ids"][0] == r["true_label"] for r in known) / len(known)
        topk = sum(r["true_label"] in r["top_ids"] for r in known) / len(known)
        table.add_row("accuracy (true label known)", f"top-1 {100 * top1:.2f} %, top-{top_k} {100 * topk:.2f} %")
    if warnings:
        table.add_row("skipped files", str(len(warnings)))
    table.add_row("written", escape(str(out)))
    console.print(table, highlight=False)
