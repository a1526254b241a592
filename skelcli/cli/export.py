"""`skel export`: a checkpoint's downstream model as ONNX, TorchScript or a safetensors folder."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from skelcli.cli._app import command, console
from skelcli.paths import check_out_dir, check_out_file


@command("export")
def export(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="Checkpoint (.pt): pretrained (last.pt) or fine-tuned (finetuned.pt)."),
    fmt: str = typer.Option(..., "--format", "-f", help="onnx | torchscript | safetensors"),
    out: Path = typer.Option(..., "--out", help="Output file (.onnx / .pt), or a folder for safetensors."),
    batch: int = typer.Option(2, "--batch", help="Batch size of the example clips used to trace and test the export (also tested at a second size)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the summary as JSON to this file."),
) -> None:
    """Export the downstream model with a dynamic batch axis, then check it against PyTorch.

    Input [bold]clips[/] (batch, M=2, T, V, C) float32: whole clips, cropped/resized to the encoder's
    T frames, an absent person all zeros. Output: fine-tuned checkpoints give [bold]logits[/]
    (batch, classes) (encoder + classification head, persons pooled as in fine-tuning); pretrained
    checkpoints give per-clip [bold]features[/] (batch, F) (the encoder's pooled feature averaged over
    persons as skel probe does: mean_valid for SLiM, mean otherwise).

    The written model is run back (onnxruntime / torch.jit.load / re-import) at two batch sizes;
    a max abs difference to eager PyTorch of 1e-4 or more fails (exit 2) and writes nothing.
    safetensors writes a folder: config.json + model.safetensors (tensors encoder.*, head.*), read
    back by skel import skelcli FOLDER. ONNX / safetensors need the extra: pip install 'skelcli\\[export]'.

    Examples:
      skel export -c runs/ft/finetuned.pt --format onnx --out model.onnx
      skel export -c runs/mamp/last.pt --format torchscript --out encoder.pt --batch 8
      skel export -c runs/slim/last.pt --format safetensors --out slim_export/
    """
    from rich.markup import escape
    from rich.table import Table

    from skelcli.interop.export import check_format, export_checkpoint, require_export_deps

    check_format(fmt)
    require_export_deps(fmt)
    if fmt == "safetensors":
        check_out_dir(out, "--out")
    else:
        check_out_file(out, "--out")
    check_out_file(json_out, "--json")
    res = export_checkpoint(checkpoint, fmt, out, batch=batch)

    def shape(spec: dict) -> str:
        return f"{spec['name']} ({', '.join(str(s) for s in spec['shape'])}) float32"

    table = Table(title=f"skel export {fmt}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    table.add_row("format", fmt)
    table.add_row("checkpoint", escape(res['checkpoint']) + f" ({res['method']}, {'fine-tuned' if res['finetuned'] else 'pretrained'})")
    table.add_row("input", shape(res["input"]))
    table.add_row("output", shape(res["output"]) + (f", person pool {res['person_pool']}" if res["person_pool"] else ""))
    for row in res["verified"]:
        table.add_row(f"max abs diff, batch {row['batch']}", f"{row['max_abs_diff']:.2e} (< {res['tolerance']:g})")
    table.add_row("written", escape(res['out']) + f" ({res['bytes'] / 1e6:.2f} MB)")
    console.print(table)
    if json_out is not None:
        from skelcli.eval.report import write_json

        write_json(json_out, res)
        console.print(f"JSON written to {json_out}", markup=False, highlight=False)
