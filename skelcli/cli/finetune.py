"""`skel finetune`: fine-tune a pretrained encoder end to end (full, semi-supervised, transfer, from scratch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer

from skelcli.cli._app import command, console, err_console
from skelcli.cli.evaluate import (_ckpt_opt, _data_opt, _default_out, _device_opt, _json_opt, _recipe_set_opt, _split_opt,
                                  _test_classes_present, _top_confusions_cell, _write_json, escape)
from skelcli.paths import check_out_dir, check_out_file

#: ``--preset small`` for the slim recipe: the same recipe, CPU-sized in length only.
SLIM_SMALL = {"iterations": 200, "eval_every": 50}


@command("finetune")
def finetune(
    checkpoint: Optional[Path] = _ckpt_opt,
    data: Path = _data_opt,
    split: str = _split_opt,
    recipe: Optional[str] = typer.Option(
        None, "--recipe", help="mamp (MAMP's fine-tune / semi recipe) | slim (SLiM's semi-supervised recipe); default: the "
                               "checkpoint's paper (slim for SLiM, else mamp; mamp for --from-scratch)."),
    overrides: Optional[List[str]] = _recipe_set_opt,
    preset: str = typer.Option("paper", "--preset", help="paper (the recipe's official values) | small (CPU-sized: mamp 10 epochs, "
                                                         "batch 16; slim 200 iterations, eval every 50)."),
    label_fraction: Optional[float] = typer.Option(None, "--label-fraction", help="Semi-supervised: fraction of training labels, e.g. 0.01 or 0.1."),
    subsets: Optional[str] = typer.Option(
        None, "--subsets", help="mamp recipe: exact (default: a true --label-fraction) | official (the union of MAMP's per-rank "
                                "draws, about 2x the nominal labels, as its released runs train on)."),
    balanced: bool = typer.Option(False, "--balanced", help="mamp recipe, exact subsets: stratified, at least one clip per class."),
    repeats: int = typer.Option(1, "--repeats", help="Run N seeds (seed, seed+1, ...) and report mean and std."),
    from_scratch: bool = typer.Option(False, "--from-scratch", help="Random-initialised encoder, same recipe (layer decay 1.0)."),
    val_fraction: float = typer.Option(0.0, "--val-fraction", help="Carve this fraction of training clips out for model selection."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="mamp recipe: override the preset's epochs."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Override the recipe's global batch size."),
    lr: Optional[float] = typer.Option(None, "--lr", help="mamp recipe: override the preset's peak learning rate."),
    eval_every: int = typer.Option(1, "--eval-every", help="mamp recipe: evaluate on the test split every N epochs (the recipe: "
                                                                  "every epoch; the last is always evaluated; best = best evaluated)."),
    save_interval: float = typer.Option(30.0, "--save-interval", help="Write last.pt after an epoch (slim recipe: an evaluation) once "
                                                                     "this many seconds have passed since the last write (0: every "
                                                                     "time); always at the end and on Ctrl-C / SIGTERM."),
    seed: int = typer.Option(0, "--seed"),
    subset_seed: Optional[int] = typer.Option(None, "--subset-seed", help="mamp recipe: keep one label subset for every repeat."),
    device: str = _device_opt,
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (default: next to the checkpoint)."),
    resume: Optional[str] = typer.Option(None, "--resume", help="auto: continue every repeat from its last.pt in --out."),
    force: bool = typer.Option(False, "--force", help="Start over in a folder that holds fine-tuning checkpoints; old files move to old-<time>/."),
    tensorboard: bool = typer.Option(False, "--tensorboard", help="Also log each repeat to <out>/tb/ for TensorBoard (extra \\[viz])."),
    json_out: Optional[Path] = _json_opt,
) -> None:
    """Fine-tune encoder + head end to end; semi-supervised, transfer and from-scratch variants.

    Example:  skel finetune -c runs/mamp/last.pt -d data/ntu60.h5 --split xsub --preset paper
    Semi:     skel finetune -c runs/mamp/last.pt -d data/ntu60.h5 --label-fraction 0.01 --repeats 5
              (MAMP's semi-supervised protocol; add --subsets official for the labels its released runs used)
    SLiM:     skel finetune -c runs/slim/last.pt -d data/ntu60.h5 --recipe slim --label-fraction 0.01
    Transfer: skel finetune -c runs/ntu120/last.pt -d data/pku_v2.h5 --split xsub
    Baseline: skel finetune -c runs/mamp/last.pt -d data/ntu60.h5 --from-scratch
    Recipe:   --set field=value changes one recipe field, e.g. --recipe slim --set iterations=2000
    Continue after Ctrl-C / SIGTERM (last.pt is saved at the next step; after epochs at most every --save-interval s):  add --resume auto
    """
    from rich.table import Table

    from skelcli.errors import SkelError
    from skelcli.eval.finetune import FinetuneSettings, run_finetune
    from skelcli.viz.tensorboard import tensorboard_writer

    if recipe is not None and recipe not in ("mamp", "slim"):
        raise SkelError(f"unknown --recipe {recipe!r} for finetune; available: mamp, slim")
    if subsets is not None and subsets not in ("exact", "official"):
        raise SkelError(f"unknown --subsets {subsets!r}; choose exact or official")
    settings_over: dict[str, Any] = dict(FinetuneSettings.preset(preset))
    settings_over.update({"label_fraction": label_fraction, "balanced": balanced, "repeats": repeats, "from_scratch": from_scratch,
                          "val_fraction": val_fraction, "seed": seed, "subset_seed": subset_seed, "device": device,
                          "subsets": subsets or "exact", "eval_every": eval_every,
                          "save_interval_s": save_interval})
    for key, value in (("epochs", epochs), ("batch_size", batch_size), ("lr", lr)):
        if value is not None:
            settings_over[key] = value
    if label_fraction is not None:
        from skelcli.eval.finetune import check_fraction

        check_fraction(label_fraction)
    settings = FinetuneSettings(**settings_over)
    slim_base: dict[str, Any] = dict(SLIM_SMALL) if preset == "small" else {}
    if batch_size is not None:
        slim_base["batch_size"] = batch_size
    refused = [name for name, value in (("--epochs", epochs), ("--lr", lr), ("--subset-seed", subset_seed),
                                        ("--eval-every", eval_every if eval_every != 1 else None)) if value is not None]
    if recipe is None and from_scratch and checkpoint is None:
        recipe = "mamp"
    if recipe is not None:  # a bad --set / option mix fails before any work (else run_finetune checks it once the
        from skelcli.eval.finetune import resolve_finetune_recipe  # checkpoint's method is known, still before writing)

        resolve_finetune_recipe(recipe, None, settings, overrides=overrides, slim_base=slim_base, slim_refused=refused)
    tag = "scratch" if from_scratch else "finetune"
    frac = f"-frac{label_fraction:g}" if label_fraction is not None else ""
    out_dir = check_out_dir(out or _default_out(checkpoint, f"{tag}-{split}{frac}"))
    check_out_file(json_out, "--json")

    def on_epoch(repeat: int, index: int, row: dict[str, Any]) -> None:
        extra = f", val {100 * row['val_top1']:.2f} %" if "val_top1" in row else ""
        where = (f"iteration {row['iteration']}" if "iteration" in row else f"epoch {row['epoch']}/{settings.epochs}")
        console.print(f"  repeat {repeat + 1}/{settings.repeats} {where}: "
                      f"loss {row['loss']:.4f}, test top-1 {100 * row['test_top1']:.2f} %{extra}")

    from rich.markup import escape

    from skelcli.engine.rundir import exit_code

    res = run_finetune(checkpoint, data, split, settings, out_dir, preset=preset, on_epoch=on_epoch, resume=resume, force=force,
                       tensorboard=tensorboard_writer() if tensorboard else None,
                       notify=lambda line: console.print(line, highlight=False, markup=False),
                       warn=lambda msg: err_console.print(f"[yellow]warning:[/] {escape(msg)}", highlight=False),
                       recipe=recipe, recipe_overrides=overrides, slim_base=slim_base, slim_refused=refused)
    if "interrupted" in res:
        console.print(f"interrupted by {res['interrupted']} in repeat {res['repeat'] + 1} after {res['steps']} steps: "
                      f"{res['checkpoint']} saved; continue with --resume auto --out {res['out']}", highlight=False, markup=False)
        raise typer.Exit(exit_code(res["interrupted"]))
    slim = res["recipe"]["name"] == "slim"
    table = Table(title=f"skel finetune ({'from scratch' if from_scratch else 'pretrained'})", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    pre = res["pretrain"]
    table.add_row("recipe", escape(res["recipe_label"]))
    table.add_row("encoder", "random init" if from_scratch else escape(str(checkpoint)))
    table.add_row("pretrained on", f"{pre['dataset']} ({pre['num_classes']} classes, {pre['method']})" if pre["method"] else "-")
    fd = res["finetune_data"]
    present = _test_classes_present(data, split)
    table.add_row("fine-tuned on", f"{fd['dataset']} {split} ({present} of {fd['num_classes']} classes in the test split, "
                  f"{res['runs'][0]['train_clips']} training clips)")
    if label_fraction is not None:
        how = {"official": "official subset", "exact": "exact subset"}[res["subsets"]]
        table.add_row("label fraction", f"{label_fraction:g}{' (balanced)' if balanced else ''}, {how}: "
                      f"{res['labelled_clips']} labelled clips (nominal {res['nominal_labelled_clips']})")

    def ms(d: dict[str, float]) -> str:
        return f"{100 * d['mean']:.2f} %" + (f" ± {100 * d['std']:.2f}" if settings.repeats > 1 else "")

    if slim:
        table.add_row("top-1 final evaluation (reported)", ms(res["last_top1"]))
        table.add_row("top-1 best evaluation\n(reference, chosen on test)", ms(res["best_top1"]))
    else:
        table.add_row("top-1 last epoch", ms(res["last_top1"]))
        table.add_row("top-1 best epoch (reported,\nchosen on test)", ms(res["best_top1"]))
    if "test_top1_at_val_best" in res:
        table.add_row("top-1 at best val " + ("evaluation" if slim else "epoch"), ms(res["test_top1_at_val_best"]))
    table.add_row("repeats", str(settings.repeats))
    table.add_row("top confusions" + (" (repeat 1)" if settings.repeats > 1 else "") + "\n(true -> predicted:\nclips, % of true)",
                  _top_confusions_cell(res["runs"][0].get("confusion_files")))
    table.add_row("run folder", escape(str(out_dir)))
    console.print(table)
    _write_json(json_out, res)
