"""`skel viz embed`: a 2-D map of a frozen encoder's features coloured by action, kNN top-1 in the title."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from skelcli.cli._app import command, console, missing_extra
from skelcli.cli.viz import viz_app
from skelcli.paths import check_out_file


@command("embed", group=viz_app)
def embed(
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", "-c", help="Checkpoint (.pt) with an encoder."),
    data: Path = typer.Option(..., "--data", "-d", help="Prepared HDF5 file (skel prepare)."),
    split: str = typer.Option("xsub", "--split", help="Protocol name in the file (xsub, xview, xset)."),
    part: str = typer.Option("test", "--part", help="Clips to map: test | train (the kNN always uses train -> test)."),
    method: str = typer.Option("pca", "--method", help="pca (instant) | tsne (scikit-learn t-SNE, seconds to a minute)."),
    random_init: bool = typer.Option(False, "--random-init", help="A randomly initialised encoder (the checkpoint's config, or --preset's)."),
    preset: str = typer.Option("small", "--preset", help="Encoder config for --random-init without a checkpoint: small | paper."),
    max_clips: int = typer.Option(2000, "--max-clips", help="Plot at most N clips of the part (a seeded draw)."),
    k: int = typer.Option(20, "--k", help="kNN neighbours for the top-1 in the title (as skel probe --protocol knn)."),
    batch_size: int = typer.Option(128, "--batch-size", help="Clips per batch for feature extraction."),
    person_pool: Optional[str] = typer.Option(None, "--person-pool", help="mean | mean_valid | concat (default from the method)."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    seed: int = typer.Option(0, "--seed", help="Seed of the clip draw, t-SNE and --random-init."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not read or write the feature cache next to the checkpoint."),
    out: Path = typer.Option(..., "--out", "-o", help="PNG file to write."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the results as JSON to this file."),
) -> None:
    """Map the frozen encoder's features to 2-D (PCA or t-SNE), coloured by action, with the kNN top-1.

    Example:  skel viz embed --checkpoint runs/mamp/last.pt --data data/ntu60.h5 --out embed.png
    t-SNE of the training clips:  skel viz embed -c runs/mamp/last.pt -d data/ntu60.h5 --part train --method tsne --out tsne.png
    Baseline:  skel viz embed -c runs/mamp/last.pt -d data/ntu60.h5 --random-init --out embed-random.png
    """
    from rich.markup import escape
    from rich.table import Table

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise missing_extra("matplotlib", "viz", "skel viz embed") from None
    from skelcli.eval.report import write_json
    from skelcli.viz.embed import embedding_map

    check_out_file(out, "--out")
    check_out_file(json_out, "--json")
    with console.status(f"viz embed: features and {method}"):
        res = embedding_map(checkpoint, data, out, split=split, part=part, method=method, random_init=random_init,
                            max_clips=max_clips, k=k, batch_size=batch_size, person_pool=person_pool, device=device,
                            preset=preset, seed=seed, cache=not no_cache)
    table = Table(title="skel viz embed", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    source = "random init" if checkpoint is None else f"{checkpoint}{' (random init)' if random_init else ''}"
    table.add_row("encoder", escape(source))
    table.add_row("data", f"{res['dataset']} {split}/{part}: {res['n_points']} of {res['n_part']} clips mapped, "
                  f"{len(res['classes_present'])} of {res['num_classes']} classes")
    table.add_row("map", f"{method} of {res['feature_dim']}-d features ({res['person_pool']} over persons)")
    table.add_row(f"kNN top-1 (k={res['k']})", f"{100 * res['knn_top1']:.2f} % ({res['n_train']} train -> {res['n_test']} test)")
    table.add_row("picture", escape(res["path"]))
    console.print(table)
    if json_out is not None:
        write_json(json_out, res)
        console.print(f"JSON written to {json_out}", markup=False, highlight=False)
