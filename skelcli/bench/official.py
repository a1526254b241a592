"""The official MAMP training step as a baseline: ``skel benchmark --baseline official --official-src DIR``.

The model code is imported at run time from a checkout of https://github.com/maoyunyao/MAMP that the
user provides; nothing of it is copied into this project. What this module relies on (read from that
repository, commit 09e6252):

* ``model_mamp/transformer.py`` defines ``Transformer`` (the pretraining model; ``model/transformer.py``
  is the linear-probe / fine-tune classifier). It does ``from .drop import DropPath``, so it is
  loaded as a submodule of a private package whose path is the checkout's ``model_mamp/`` folder;
  ``model_mamp/__init__.py`` (``from model_mamp import transformer``) is not executed.
* ``Transformer(dim_in, dim_feat, decoder_dim_feat, depth, decoder_depth, num_heads, mlp_ratio,
  num_frames, num_joints, patch_size, t_patch_size, qkv_bias, qk_scale, drop_rate, attn_drop_rate,
  drop_path_rate, norm_layer, norm_skes_loss)``; the NTU60 values are in
  ``config/ntu60_xsub_joint/pretrain_mamp_t120_layer8+3_mask90.yaml`` (see :func:`official_model_args`).
* ``forward(x, mask_ratio=0.80, motion_stride=1, motion_aware_tau=0.75)`` takes the clips as
  (N, C=3, T=120, V=25, M=2) and returns ``(loss, pred, mask)``. The motion target is computed inside
  ``forward`` (``extract_motion``), so ``engine_pretrain.train_one_epoch`` passes the raw clips only,
  with ``mask_ratio`` / ``motion_stride`` / ``motion_aware_tau`` from the config (0.9 / 1 / 0.80).
* ``main_pretrain.py``: AdamW with betas (0.9, 0.95), weight decay 0.05 except biases and norm weights
  (timm ``add_weight_decay``), lr 1e-3 from the config.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import math
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import torch

from skelcli.errors import SkelError

#: the official pretraining model, relative to the checkout root
MODEL_FILE = Path("model_mamp") / "transformer.py"
MODEL_CLASS = "Transformer"
#: the official NTU60 pretraining config the constructor arguments follow
OFFICIAL_CONFIG = "config/ntu60_xsub_joint/pretrain_mamp_t120_layer8+3_mask90.yaml"
_PACKAGE = "_skelcli_official_mamp"  # private name the checkout's model_mamp/ is imported under


def check_official_src(src: Path | str | None, flag: str = "--official-src") -> Path:
    """The checkout root, or a one-line SkelError naming the flag and what is missing."""
    if src is None or str(src) == "":
        raise SkelError(f"--baseline official needs {flag} PATH: the root of a maoyunyao/MAMP checkout")
    root = Path(src).expanduser()
    if not root.is_dir():
        raise SkelError(f"{flag} {src}: no such folder (pass the root of a maoyunyao/MAMP checkout)")
    if not (root / MODEL_FILE).is_file():
        hint = ""
        if (root / "transformer.py").is_file() and root.name == "model_mamp":
            hint = f" (that is the model folder itself; pass its parent {root.parent})"
        raise SkelError(f"{flag} {src}: no {MODEL_FILE.as_posix()}; pass the root of a maoyunyao/MAMP checkout{hint}")
    return root.resolve()


def _under(path: str | None, root: Path) -> bool:
    if not path:
        return False
    try:
        Path(path).resolve().relative_to(root)
        return True
    except (ValueError, OSError):
        return False


def load_official_mamp(src: Path | str) -> type:
    """Import ``model_mamp/transformer.py`` from the checkout ``src`` and return its ``Transformer`` class.

    The file is loaded under a private package name (so its ``from .drop import ...`` resolves inside
    the checkout) with ``src`` on ``sys.path`` only while it executes (a top-level import of the
    checkout's own modules also works). Afterwards ``sys.path`` is restored and every module that came
    from the checkout is taken out of ``sys.modules`` again; the returned class keeps working (its
    functions hold their globals).
    """
    root = check_official_src(src)
    model_path = root / MODEL_FILE
    before = set(sys.modules)
    saved_path = list(sys.path)
    package = types.ModuleType(_PACKAGE)
    package.__path__ = [str(model_path.parent)]  # a namespace-like package: __init__.py is not run
    package.__package__ = _PACKAGE
    name = f"{_PACKAGE}.{model_path.stem}"
    spec = importlib.util.spec_from_file_location(name, model_path)
    if spec is None or spec.loader is None:
        raise SkelError(f"{root}: cannot import {MODEL_FILE.as_posix()}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[_PACKAGE] = package
    sys.modules[name] = module
    sys.path.insert(0, str(root))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            spec.loader.exec_module(module)
    except Exception as exc:
        raise SkelError(f"{root}: importing {MODEL_FILE.as_posix()} failed: {type(exc).__name__}: {exc}") from None
    finally:
        sys.path[:] = saved_path
        for key in set(sys.modules) - before:
            mod = sys.modules.get(key)
            if key == _PACKAGE or key.startswith(_PACKAGE + ".") or _under(getattr(mod, "__file__", None), root):
                del sys.modules[key]
    cls = getattr(module, MODEL_CLASS, None)
    if not isinstance(cls, type) or not issubclass(cls, torch.nn.Module):
        raise SkelError(f"{root}: {MODEL_FILE.as_posix()} has no {MODEL_CLASS} model class; is this a maoyunyao/MAMP checkout?")
    return cls


def official_model_args(encoder_cfg, decoder_depth: int, decoder_dim: int | None = None,
                        norm_target: bool = True) -> dict[str, Any]:
    """Constructor arguments of the official ``Transformer``, sized like our MAMP.

    With our paper encoder (256 x 8, 8 heads, 120 frames, 4-frame tokens) and the NTU60 decoder
    depth 3 these are exactly ``model_args`` of the official ``config/ntu60_xsub_joint/
    pretrain_mamp_t120_layer8+3_mask90.yaml``: dim_in 3, dim_feat 256, decoder_dim_feat 256,
    depth 8, decoder_depth 3, num_heads 8, mlp_ratio 4, num_frames 120, num_joints 25, patch_size 1,
    t_patch_size 4, qkv_bias True, qk_scale None, drop rates 0, norm_skes_loss True. (The official
    decoder uses the encoder's head count and MLP ratio.)
    """
    return {
        "dim_in": int(encoder_cfg.in_chans),
        "dim_feat": int(encoder_cfg.dim),
        "decoder_dim_feat": int(decoder_dim or encoder_cfg.dim),
        "depth": int(encoder_cfg.depth),
        "decoder_depth": int(decoder_depth),
        "num_heads": int(encoder_cfg.heads),
        "mlp_ratio": encoder_cfg.mlp_ratio,
        "num_frames": int(encoder_cfg.num_frames),
        "num_joints": int(encoder_cfg.num_joints),
        "patch_size": 1,
        "t_patch_size": int(encoder_cfg.t_patch),
        "qkv_bias": bool(encoder_cfg.qkv_bias),
        "qk_scale": None,
        "drop_rate": 0.0,
        "attn_drop_rate": 0.0,
        "drop_path_rate": float(encoder_cfg.drop_path),
        "norm_skes_loss": bool(norm_target),
    }


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only, none on biases / 1-d parameters (as timm's add_weight_decay)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def _git_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def measure_official(cfg, device: torch.device, src: Path | str, encoder_cfg, decoder_depth: int, tau: float,
                     mask_ratio: float = 0.9, *, motion_stride: int = 1, decoder_dim: int | None = None,
                     norm_target: bool = True) -> dict[str, Any]:
    """Time the official MAMP training step on ``device`` at ``cfg.batch_size``.

    Same protocol as :func:`skelcli.bench.throughput.reference_task`: smooth random clips
    (N, 3, T, V, 2) (cumulative sums of small noise) already on the device, forward (the official
    model computes the motion target and the motion-aware mask itself), backward, AdamW step, under
    ``cfg.precision`` autocast like ours; ``cfg.warmup`` untimed steps, ``cfg.repeats`` windows of
    ``cfg.iters`` steps. Raises SkelError when the first step's loss is not finite (the official
    engine stops there too).
    """
    from skelcli.bench.throughput import run_round_robin

    task = official_task(cfg, device, src, encoder_cfg, decoder_depth, tau, mask_ratio, motion_stride=motion_stride,
                         decoder_dim=decoder_dim, norm_target=norm_target)
    return official_result(run_round_robin([task], cfg.repeats, device)[0])


def official_task(cfg, device: torch.device, src: str | Path, encoder_cfg, decoder_depth: int, tau: float,
                  mask_ratio: float, *, motion_stride: int = 1, decoder_dim: int | None = None, norm_target: bool = True):
    """The official training step as a :class:`skelcli.bench.throughput.Task` (see :func:`measure_official`)."""
    from skelcli.bench.throughput import Task
    from skelcli.engine.dist import autocast_context

    root = check_official_src(src)
    model_cls = load_official_mamp(root)
    args = official_model_args(encoder_cfg, decoder_depth, decoder_dim, norm_target)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # SkeleEmbed prints its sizes
            model = model_cls(**args)
    except Exception as exc:
        raise SkelError(f"{root}: building the official {MODEL_CLASS}({', '.join(args)}) failed: "
                        f"{type(exc).__name__}: {exc}") from None
    model = model.to(device).train()
    opt = torch.optim.AdamW(_param_groups(model, 0.05), lr=1e-3, betas=(0.9, 0.95))
    x = torch.randn(cfg.batch_size, args["dim_in"], args["num_frames"], args["num_joints"], 2,
                    device=device).cumsum(dim=2) * 0.01
    losses: list[torch.Tensor] = []

    def step() -> None:
        with autocast_context(device, cfg.precision):
            out = model(x, mask_ratio=mask_ratio, motion_stride=motion_stride, motion_aware_tau=tau)
        loss = out[0] if isinstance(out, (tuple, list)) else out
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if not losses:
            losses.append(loss.detach())  # read after the timing: no extra sync inside it

    info = {"impl": f"official MAMP (maoyunyao/MAMP {MODEL_FILE.as_posix()} {MODEL_CLASS}, eager, {cfg.precision})",
            "decoder_depth": decoder_depth, "batch_size": cfg.batch_size, "src": str(root), "src_commit": _git_commit(root),
            "model_args": args, "mask_ratio": mask_ratio, "motion_stride": motion_stride, "tau": tau, "_losses": losses}
    return Task("baseline", step, cfg.iters, cfg.warmup, info=info)


def official_result(task) -> dict[str, Any]:
    """The report entry of a timed :func:`official_task`; a non-finite first loss is a SkelError."""
    from skelcli.bench.throughput import baseline_result

    out = baseline_result(task)
    losses = out.pop("_losses")
    first_loss = float(losses[0].float().item())
    if not math.isfinite(first_loss):
        raise SkelError(f"official MAMP ({out['src']}): the first training step's loss is {first_loss}")
    out["first_loss"] = first_loss
    return out


def verdict_line(ours_samples_per_s: float | None, official: dict[str, Any]) -> str:
    """One line comparing our MAMP training throughput with the official step's."""
    theirs = official.get("samples_per_s")
    batch = official.get("batch_size")
    if theirs is None or not math.isfinite(theirs) or theirs <= 0:
        return "official MAMP step not measured"
    if ours_samples_per_s is None or not math.isfinite(ours_samples_per_s):
        return f"official MAMP step {theirs:.1f} samples/s; ours not measured (add mamp to --methods)"
    ratio = ours_samples_per_s / theirs
    word = "faster" if ratio >= 1 else "slower"
    return (f"ours {ratio:.2f}x the official MAMP step, {word} (ours {ours_samples_per_s:.1f} vs {theirs:.1f} "
            f"samples/s, same device and batch {batch})")
