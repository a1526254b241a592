"""`skel viz clip`: one skeleton clip as an animated GIF or a contact-sheet PNG, with each method's
masked tokens highlighted (issue 16 item 2). The work is :func:`skelcli.viz.clip.render_clip`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from skelcli.cli._app import command, console, missing_extra
from skelcli.cli.viz import viz_app


@command("clip", group=viz_app)
def clip(
    data: Path = typer.Option(..., "--data", "-d", help="Prepared HDF5 file (skel prepare)."),
    name: str = typer.Option(..., "--name", help="Sample name, e.g. S001C001P001R001A001."),
    mask: Optional[str] = typer.Option(
        None, "--mask", help="none | random | motion | tube (default: the checkpoint method's own masking, none without one)."
    ),
    method_checkpoint: Optional[Path] = typer.Option(
        None, "--method-checkpoint", help="Pretraining checkpoint: its encoder view (frames, patch) and mask settings."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the masking draw."),
    frames: Optional[int] = typer.Option(None, "--frames", min=1, help="GIF: at most this many frames (default 64); PNG: panels (default 12)."),
    out: Path = typer.Option(..., "--out", "-o", help="clip.gif or clip.mp4 (animation) or clip.png (contact sheet)."),
) -> None:
    """Draw one clip of a prepared file, the masked tokens of a method in red.

    The clip goes through the encoder's test view first (centre crop, resize to its frames), so each token (time patch x joint) lines up with the frames it covers; the strip under the skeleton shows every token (dark = masked).

    Examples:

        skel viz clip --data data/ntu60.h5 --name S001C001P001R001A001 --mask motion --out clip.gif

        skel viz clip --data data/ntu60.h5 --name S001C001P001R001A050 --method-checkpoint runs/slim/last.pt --out sheet.png
    """
    from skelcli.paths import check_out_file
    from skelcli.viz import clip as viz

    check_out_file(out, "--out")
    viz.output_kind(out)
    try:
        viz.require_viz()
    except ImportError as exc:
        raise missing_extra(exc.name or "imageio", "viz", "skel viz clip --out x.gif") from None
    result = viz.render_clip(data, name, out, mask=mask, checkpoint=method_checkpoint, seed=seed, frames=frames)
    share = "no mask" if result.masked_share is None else f"{result.mask_kind} mask, {100 * result.masked_share:.1f}% of tokens masked"
    unit = "frames" if out.suffix.lower() in (".gif", ".mp4") else "panels"
    console.print(f"wrote {result.path}: {result.frames} {unit} of the {result.num_frames}-frame view, {share}", highlight=False, soft_wrap=True)
