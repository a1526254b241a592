"""`skel probe`, `skel retrieve`: frozen-encoder evaluation of a pretrained encoder (`skel finetune` is in finetune.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

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


_recipe_set_opt = typer.Option(None, "--set", help="Change one setting of the recipe, e.g. --set iterations=2000 (repeatable).")


def _recipe_row(res: dict[str, Any]) -> str:
    rec = res["recipe"]
    return escape(res.get("recipe_label", rec["name"]))


@command("probe")
def probe(
    checkpoint: Optional[Path] = _ckpt_opt,
    data: Path = _data_opt,
    split: str = _split_opt,
    protocol: str = typer.Option("linear", "--protocol", help="linear | knn"),
    recipe: Optional[str] = typer.Option(
        None, "--recipe", help="linear: mamp | slim | sklearn; knn: skel | slim (default: the checkpoint's paper: slim for SLiM, else mamp / skel)."),
    overrides: Optional[List[str]] = _recipe_set_opt,
    head: Optional[str] = typer.Option(None, "--head", help="Older spelling of the linear recipe: sklearn | sgd (= --recipe mamp)."),
    k: Optional[int] = typer.Option(None, "--k", help="kNN neighbours (skel: 20; slim: the reported k, 1)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs of the mamp linear head (100)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate of the mamp linear head (default: MAMP's for the data set: 0.1, PKU-II 0.01)."),
    batch_size: int = typer.Option(128, "--batch-size", help="Clips per batch of feature extraction."),
    head_batch_size: Optional[int] = typer.Option(
        None, "--head-batch-size", help="Global batch of the linear head (mamp: 256 NTU, 128 PKU-I, 32 PKU-II; slim: 64)."),
    person_pool: Optional[str] = typer.Option(None, "--person-pool", help="mean | mean_valid | concat (default from the method)."),
    device: str = _device_opt,
    random_init: bool = _random_opt,
    preset: str = _preset_opt,
    seed: int = typer.Option(0, "--seed"),
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not read or write the feature cache."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (default: next to the checkpoint)."),
    json_out: Optional[Path] = _json_opt,
) -> None:
    """Probe a frozen encoder with a paper's protocol: linear head(s) or kNN on its features.

    Example:  skel probe --checkpoint runs/mamp/last.pt --data data/ntu60.h5 --split xsub            (MAMP's linear probe)
    SLiM:     skel probe -c runs/slim/last.pt -d data/ntu60.h5 --recipe slim                          (the 48-head grid)
    Fast:     skel probe -c runs/mamp/last.pt -d data/ntu60.h5 --recipe sklearn                       (logistic regression)
    kNN:      skel probe -c runs/mamp/last.pt -d data/ntu60.h5 --protocol knn --k 20
    """
    from rich.table import Table

    from skelcli.eval.probe import run_probe

    name = f"probe-{protocol}{'-' + (recipe or head) if (recipe or head) else ''}-{split}{'-random' if random_init else ''}"
    out_dir = check_out_dir(out or _default_out(checkpoint, name))
    check_out_file(json_out, "--json")

    def on_epoch(epoch: int, top1: float, unit: str = "epoch") -> None:  # mamp: every epoch; slim: each evaluation of the grid
        if unit != "epoch" or epoch == 0 or (epoch + 1) % 10 == 0:
            best = " (best head)" if unit != "epoch" else ""
            console.print(f"  linear head {unit} {epoch + 1}: test top-1 {100 * top1:.2f} %{best}", highlight=False)

    with console.status(f"probe {protocol}: extracting features"):
        res = run_probe(checkpoint, data, split, out_dir, kind=protocol, recipe=recipe, recipe_overrides=overrides, head=head, k=k,
                        epochs=epochs, lr=lr, batch_size=batch_size, head_batch_size=head_batch_size, person_pool=person_pool,
                        device=device, random_init=random_init, preset=preset, seed=seed, cache=not no_cache, on_epoch=on_epoch)
    rec = res["recipe"]["name"]
    table = Table(title=f"skel probe {protocol} (recipe {rec})", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_row("encoder", escape(_source(checkpoint, random_init)))
    table.add_row("method / epoch", f"{res['method']} / {res['epoch']}")
    table.add_row("data", f"{res['dataset']} {split} ({res['n_train']} train, {res['n_test']} test; "
                  f"{res['classes_present']} of {res['num_classes']} classes in the test split)")
    table.add_row("recipe", _recipe_row(res))
    if protocol == "linear" and rec == "mamp":
        table.add_row("top-1 last epoch", _fmt(res["last_top1"]))
        table.add_row("top-1 best epoch", f"{_fmt(res['best_top1'])} (epoch {res['best_epoch']}; reported)")
    elif protocol == "linear" and rec == "slim":
        best = res["best_head"]
        table.add_row("top-1 best head (test)", f"{_fmt(best['test_top1'])} ({escape(best['key'])}; reported, chosen on the test split)")
        chosen = res.get("val_chosen")
        if chosen:
            table.add_row("top-1 val-chosen head", f"{_fmt(chosen['test_top1'])} ({escape(chosen['key'])}, chosen on {res['n_val']} "
                          "training clip(s) held out)")
        table.add_row("heads trained", str(res["num_heads"]))
    elif protocol == "knn" and rec == "slim":
        table.add_row("top-1", f"{_fmt(res['top1'])} (k={res['k']}, reported)")
        table.add_row("top-1 per k", ", ".join(f"k={kk}: {_fmt(v)}" for kk, v in res["accuracy_at_k"].items()))
    else:
        table.add_row("top-1", _fmt(res["top1"]) + (f" (k={res.get('k')})" if protocol == "knn" else ""))
    table.add_row("top-5", _fmt(res["top5"]))
    table.add_row("mean class accuracy", _fmt(res["mean_class"]))
    table.add_row("top confusions\n(true -> predicted:\nclips, % of true)", _top_confusions_cell(res.get("files")))
    table.add_row("run folder", escape(str(out_dir)))
    console.print(table)
    for note in res.get("notes", []):
        console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)
    if res.get("converged") is False:
        err_console.print("warning: logistic regression did not converge within max_iter")
    _write_json(json_out, res)


@command("retrieve")
def retrieve(
    checkpoint: Optional[Path] = _ckpt_opt,
    data: Path = _data_opt,
    split: str = _split_opt,
    recipe: Optional[str] = typer.Option(None, "--recipe", help="skel (cosine 1-NN, CMD / ISC) | slim (SLiM's k-NN at k=1); default: the checkpoint's paper."),
    overrides: Optional[List[str]] = _recipe_set_opt,
    k: Optional[int] = typer.Option(None, "--k", help="Neighbours for the retrieval accuracy (both recipes: 1)."),
    precision_k: Optional[str] = typer.Option(None, "--precision-k", help="Comma-separated k values for precision@k (1,5,10)."),
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
        ks = None if precision_k is None else [int(x) for x in precision_k.split(",") if x.strip()]
    except ValueError:
        raise SkelError(f"--precision-k must be comma-separated integers, got {precision_k!r}") from None
    out_dir = check_out_dir(out or _default_out(checkpoint, f"retrieve-{split}{'-random' if random_init else ''}"))
    check_out_file(json_out, "--json")
    with console.status("retrieve: extracting features"):
        res = run_retrieval(checkpoint, data, split, out_dir, recipe=recipe, recipe_overrides=overrides, k=k, ks=ks, batch_size=batch_size, person_pool=person_pool,
                            device=device, random_init=random_init, preset=preset, seed=seed, cache=not no_cache)
    table = Table(title=f"skel retrieve (recipe {res['recipe']['name']})", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_row("encoder", escape(_source(checkpoint, random_init)))
    table.add_row("recipe", _recipe_row(res))
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
