"""`skel viz`: pictures of clips, masks and embeddings (issue 16). Each sub-command lives in its own
module (``viz_clip.py``, ``viz_embed.py``) and registers on :data:`viz_app` with ``command(..., group=viz_app)``."""

from __future__ import annotations

import typer

from skelcli.cli._app import app

viz_app = typer.Typer(
    name="viz", help="Pictures: skeleton clips with each method's masks (clip), feature maps (embed).", no_args_is_help=True,
    rich_markup_mode="rich",
)
app.add_typer(viz_app, name="viz")
