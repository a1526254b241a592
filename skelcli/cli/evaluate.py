"""`skel probe`, `skel retrieve`, `skel finetune`: downstream evaluation of a pretrained encoder."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from skelcli.cli._app import command, console, err_console
from skelcli.paths import check_out_dir, check_out_file


def escape(text: str) -> str:
    """``text`` for a rich table cell or console line, printed literally (paths with [brackets])."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def _default_out(checkpoint: Optional[Path], name: str) -> Path:
    return (checkpoint.parent if checkpoint is not None else Path("runs")) / name


def _fmt(value: Any, pct: bool = True) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{100 * value:.2f} %" if pct else f"{value:.4g}"
    return str(value)


def _write_json(path: Optional[Path], payload: dict[str, Any]) -> None:
    from skelcli.eval.report import write_json

    if path is not None:
        write_json(path, payload)
        console.print(f"JSON written to {path}", markup=False, highlight=False)


def _source(checkpoint: Optional[Path], random_init: bool) -> str:
    if checkpoint is None:
        return "random init"
    return f"{checkpoint} (random init)" if random_init else str(checkpoint)


def _test_classes_present(data: Path, split: str) -> int:
    """Number of distinct labels in the test part of ``split`` of the data file (read without /joints)."""
    import numpy as np

    from skelcli.data.store import read_labels, split_indices

    return int(len(np.unique(read_labels(data, split_indices(data, split, "test")))))


def _top_confusions_cell(files: Optional[dict[str, Any]], n: int = 10) -> str:
    """The first ``n`` of save_confusion's ``top_confusions`` as lines "true -> predicted: count (share of the true class)"."""
    pairs = (files or {}).get("top_confusions")
    if pairs is None:
        return "-"
    if not pairs:
        return "none"
    return "\n".join(escape(f"{p['true']} -> {p['predicted']}: {p['count']} ({100 * p['share_of_true']:.0f} %)")
                     for p in pairs[:n])


_ckpt_opt = typer.Option(None, "--checkpoint", "-c", help="Checkpoint (.pt) with an encoder.")
_data_opt = typer.Option(..., "--data", "-d", help="Prepared HDF5 file (skel prepare).")
_split_opt = typer.Option("xsub", "--split", help="Protocol name in the file (xsub, xview, xset).")
_device_opt = typer.Option("auto", "--device", help="auto | cpu | cuda")
_random_opt = typer.Option(False, "--random-init", help="Use a randomly initialised encoder (the checkpoint's config, or --preset's).")
_preset_opt = typer.Option("small", "--preset", help="Encoder config for --random-init without a checkpoint: small | paper.")
_json_opt = typer.Option(None, "--json", help="Also write the results as JSON to this file.")


@command("probe")
def probe(
    checkpoint: Optional[Path] = _ckpt_opt,
    data: Path = _data_opt,
    split: str = _split_opt,
    protocol: str = typer.Option("linear", "--protocol", help="linear | knn"),
    head: str = typer.Option("sklearn", "--head", help="linear head: sklearn (logistic regression) | sgd (papers' protocol)"),
    k: int = typer.Option(20, "--k", help="kNN neighbours (distance-weighted, cosine)."),
    epochs: int = typer.Option(100, "--epochs", help="Epochs of the sgd head."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate of the sgd head (default: MAMP's for the data set: 0.1, PKU-II 0.01)."),
    batch_size: int = typer.Option(128, "--batch-size", help="Clips per batch of feature extraction."),
    head_batch_size: Optional[int] = typer.Option(
        None, "--head-batch-size", help="Global batch of the sgd head (default: MAMP's, 256 for NTU, 128 PKU-I, 32 PKU-II; last partial batch dropped)."),
    person_pool: Optional[str] = typer.Option(None, "--person-pool", help="mean | mean_valid | concat (default from the method)."),
    device: str = _device_opt,
    random_init: bool = _random_opt,
    preset: str = _preset_opt,
    seed: int = typer.Option(0, "--seed"),
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not read or write the feature cache."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (default: next to the checkpoint)."),
    json_out: Optional[Path] = _json_opt,
) -> None:
    """Probe a frozen encoder: linear classifier or kNN on its features.

    Example:  skel probe --checkpoint runs/mamp/last.pt --data data/ntu60.h5 --split xsub --protocol knn --k 20
    Papers' protocol:  skel probe -c runs/mamp/last.pt -d data/ntu60.h5 --protocol linear --head sgd --epochs 100
    """
    from rich.table import Table

    from skelcli.eval.probe import run_probe

    name = f"probe-{protocol}{'-' + head if protocol == 'linear' else ''}-{split}{'-random' if random_init else ''}"
    out_dir = check_out_dir(out or _default_out(checkpoint, name))
    check_out_file(json_out, "--json")

    def on_epoch(epoch: int, top1: float) -> None:
        if epoch == 0 or (epoch + 1) % 10 == 0 or epoch + 1 == epochs:
            console.print(f"  sgd head epoch {epoch + 1}/{epochs}: test top-1 {100 * top1:.2f} %")

    with console.status(f"probe {protocol}: extracting features"):
        res = run_probe(checkpoint, data, split, out_dir, kind=protocol, head=head, k=k, epochs=epochs, lr=lr,
                        batch_size=batch_size, head_batch_size=head_batch_size, person_pool=person_pool, device=device, random_init=random_init,
                        preset=preset, seed=seed, cache=not no_cache, on_epoch=on_epoch)
    table = Table(title=f"skel probe {protocol}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_row("encoder", escape(_source(checkpoint, random_init)))
    table.add_row("method / epoch", f"{res['method']} / {res['epoch']}")
    table.add_row("data", f"{res['dataset']} {split} ({res['n_train']} train, {res['n_test']} test; "
                  f"{res['classes_present']} of {res['num_classes']} classes in the test split)")
    table.add_row("protocol", f"{protocol}" + (f" ({head})" if protocol == "linear" else f" (k={res.get('k')})"))
    if head == "sgd" and protocol == "linear":
        table.add_row("top-1 last epoch", _fmt(res["last_top1"]))
        table.add_row("top-1 best epoch", f"{_fmt(res['best_top1'])} (epoch {res['best_epoch']})")
    else:
        table.add_row("top-1", _fmt(res["top1"]))
    table.add_row("top-5", _fmt(res["top5"]))
    table.add_row("mean class accuracy", _fmt(res["mean_class"]))
    table.add_row("top confusions\n(true -> predicted:\nclips, % of true)", _top_confusions_cell(res.get("files")))
    table.add_row("run folder", escape(str(out_dir)))
    console.print(table)
    if res.get("converged") is False:
        err_console.print("warning: logistic regression did not converge within max_iter")
    _write_json(json_out, res)


@command("retrieve")
def retrieve(
    checkpoint: Optional[Path] = _ckpt_opt,
    data: Path = _data_opt,
    split: str = _split_opt,
    k: int = typer.Option(1, "--k", help="Neighbours for the retrieval accuracy (spec H: 1)."),
    precision_k: str = typer.Option("1,5,10", "--precision-k", help="Comma-separated k values for precision@k."),
    batch_size: int = typer.Option(128, "--batch-size"),
    person_pool: Optional[str] = typer.Option(None, "--person-pool", help="mean | mean_valid | concat (default from the method)."),
    device: str = _device_opt,
    random_init: bool = _random_opt,
    preset: str = _preset_opt,
    seed: int = typer.Option(0, "--seed"),
    no_cache: bool = typer.Option(False, "--no-cache"),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (default: next to the checkpoint)."),
    json_out: Optional[Path] = _json_opt,
) -> None:
    """Action retrieval: train split = gallery, test split = queries, cosine similarity.

    Example:  skel retrieve --checkpoint runs/mamp/last.pt --data data/ntu60.h5 --split xsub --k 1 --json retrieval.json
    """
    from rich.table import Table

    from skelcli.errors import SkelError
    from skelcli.eval.retrieval import run_retrieval

    try:
        ks = [int(x) for x in precision_k.split(",") if x.strip()]
    except ValueError:
        raise SkelError(f"--precision-k must be comma-separated integers, got {precision_k!r}") from None
    out_dir = check_out_dir(out or _default_out(checkpoint, f"retrieve-{split}{'-random' if random_init else ''}"))
    check_out_file(json_out, "--json")
    with console.status("retrieve: extracting features"):
        res = run_retrieval(checkpoint, data, split, out_dir, k=k, ks=ks, batch_size=batch_size, person_pool=person_pool,
                            device=device, random_init=random_init, preset=preset, seed=seed, cache=not no_cache)
    table = Table(title="skel retrieve", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_row("encoder", escape(_source(checkpoint, random_init)))
    table.add_row("data", f"{res['dataset']} {split} (gallery {res['n_gallery']}, queries {res['n_query']}; "
                  f"{res['classes_present']} of {res['num_classes']} classes among the queries)")
    table.add_row(f"top-1 (k={res['k']})", _fmt(res["top1"]))
    table.add_row("mAP", _fmt(res["mAP"]))
    for kk, v in res["precision_at"].items():
        table.add_row(f"precision@{kk}", _fmt(v))
    if res["queries_without_match"]:
        table.add_row("queries without a match", str(res["queries_without_match"]))
    table.add_row("run folder", escape(str(out_dir)))
    console.print(table)
    _write_json(json_out, res)


@command("finetune")
def finetune(
    checkpoint: Optional[Path] = _ckpt_opt,
    data: Path = _data_opt,
    split: str = _split_opt,
    preset: str = typer.Option("paper", "--preset", help="paper (MAMP recipe, spec C.2) | small (CPU-sized)."),
    label_fraction: Optional[float] = typer.Option(None, "--label-fraction", help="Semi-supervised: fraction of training labels, e.g. 0.01 or 0.1."),
    balanced: bool = typer.Option(False, "--balanced", help="Stratified subset with at least one clip per class."),
    repeats: int = typer.Option(1, "--repeats", help="Run N seeds (seed, seed+1, ...) and report mean and std."),
    from_scratch: bool = typer.Option(False, "--from-scratch", help="Random-initialised encoder, same recipe (layer decay 1.0)."),
    val_fraction: float = typer.Option(0.0, "--val-fraction", help="Carve this fraction of training clips out for model selection."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Override the preset's epochs."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Override the preset's batch size."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Override the preset's peak learning rate."),
    seed: int = typer.Option(0, "--seed"),
    subset_seed: Optional[int] = typer.Option(None, "--subset-seed", help="Keep one label subset for every repeat."),
    device: str = _device_opt,
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (default: next to the checkpoint)."),
    resume: Optional[str] = typer.Option(None, "--resume", help="auto: continue every repeat from its last.pt in --out."),
    force: bool = typer.Option(False, "--force", help="Start over in a folder that holds fine-tuning checkpoints; old files move to old-<time>/."),
    tensorboard: bool = typer.Option(False, "--tensorboard", help="Also log each repeat to <out>/tb/ for TensorBoard (extra \\[viz])."),
    json_out: Optional[Path] = _json_opt,
) -> None:
    """Fine-tune encoder + head end to end; semi-supervised, transfer and from-scratch variants.

    Example:  skel finetune -c runs/mamp/last.pt -d data/ntu60.h5 --split xsub --preset paper
    Semi:     skel finetune -c runs/mamp/last.pt -d data/ntu60.h5 --label-fraction 0.01 --balanced --repeats 5
    Transfer: skel finetune -c runs/ntu120/last.pt -d data/pku_v2.h5 --split xsub
    Baseline: skel finetune -c runs/mamp/last.pt -d data/ntu60.h5 --from-scratch
    Continue after Ctrl-C / SIGTERM (last.pt is saved every epoch and at the next step):  add --resume auto
    """
    from rich.table import Table

    from skelcli.eval.finetune import FinetuneSettings, run_finetune
    from skelcli.viz.tensorboard import tensorboard_writer

    overrides: dict[str, Any] = dict(FinetuneSettings.preset(preset))
    overrides.update({"label_fraction": label_fraction, "balanced": balanced, "repeats": repeats, "from_scratch": from_scratch,
                      "val_fraction": val_fraction, "seed": seed, "subset_seed": subset_seed, "device": device})
    for key, value in (("epochs", epochs), ("batch_size", batch_size), ("lr", lr)):
        if value is not None:
            overrides[key] = value
    if label_fraction is not None:
        from skelcli.eval.finetune import check_fraction

        check_fraction(label_fraction)
    settings = FinetuneSettings(**overrides)
    tag = "scratch" if from_scratch else "finetune"
    frac = f"-frac{label_fraction:g}" if label_fraction is not None else ""
    out_dir = check_out_dir(out or _default_out(checkpoint, f"{tag}-{split}{frac}"))
    check_out_file(json_out, "--json")

    def on_epoch(repeat: int, epoch: int, row: dict[str, Any]) -> None:
        extra = f", val {100 * row['val_top1']:.2f} %" if "val_top1" in row else ""
        console.print(f"  repeat {repeat + 1}/{settings.repeats} epoch {epoch + 1}/{settings.epochs}: "
                      f"loss {row['loss']:.4f}, test top-1 {100 * row['test_top1']:.2f} %{extra}")

    from rich.markup import escape

    from skelcli.engine.rundir import exit_code

    res = run_finetune(checkpoint, data, split, settings, out_dir, preset=preset, on_epoch=on_epoch, resume=resume, force=force,
                       tensorboard=tensorboard_writer() if tensorboard else None,
                       notify=lambda line: console.print(line, highlight=False, markup=False),
                       warn=lambda msg: err_console.print(f"[yellow]warning:[/] {escape(msg)}", highlight=False))
    if "interrupted" in res:
        console.print(f"interrupted by {res['interrupted']} in repeat {res['repeat'] + 1} after {res['steps']} steps: "
                      f"{res['checkpoint']} saved; continue with --resume auto --out {res['out']}", highlight=False, markup=False)
        raise typer.Exit(exit_code(res["interrupted"]))
    table = Table(title=f"skel finetune ({'from scratch' if from_scratch else 'pretrained'})", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    pre = res["pretrain"]
    table.add_row("encoder", "random init" if from_scratch else escape(str(checkpoint)))
    table.add_row("pretrained on", f"{pre['dataset']} ({pre['num_classes']} classes, {pre['method']})" if pre["method"] else "-")
    fd = res["finetune_data"]
    present = _test_classes_present(data, split)
    table.add_row("fine-tuned on", f"{fd['dataset']} {split} ({present} of {fd['num_classes']} classes in the test split, "
                  f"{res['runs'][0]['train_clips']} training clips)")
    if label_fraction is not None:
        table.add_row("label fraction", f"{label_fraction:g}{' (balanced)' if balanced else ''}")

    def ms(d: dict[str, float]) -> str:
        return f"{100 * d['mean']:.2f} %" + (f" ± {100 * d['std']:.2f}" if settings.repeats > 1 else "")

    table.add_row("top-1 last epoch", ms(res["last_top1"]))
    table.add_row("top-1 best epoch", ms(res["best_top1"]))
    if "test_top1_at_val_best" in res:
        table.add_row("top-1 at best val epoch", ms(res["test_top1_at_val_best"]))
    table.add_row("repeats", str(settings.repeats))
    table.add_row("top confusions" + (" (repeat 1)" if settings.repeats > 1 else "") + "\n(true -> predicted:\nclips, % of true)",
                  _top_confusions_cell(res["runs"][0].get("confusion_files")))
    table.add_row("run folder", escape(str(out_dir)))
    console.print(table)
    _write_json(json_out, res)
