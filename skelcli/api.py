"""The Python API: load an encoder, embed clips, predict actions (issue 13).

The same three functions are available at the package top level (``skelcli.load_encoder``,
``skelcli.embed``, ``skelcli.predict``) and back the commands ``skel embed`` and ``skel predict``::

    import skelcli

    enc = skelcli.load_encoder("runs/mamp/last.pt")       # SkeletonEncoder, eval mode
    feats = enc(x)                                         # x (B, T, V, C) -> (B, D)

    out = skelcli.embed("runs/mamp/last.pt", "data/ntu60.h5", split="xsub", part="test")
    out["features"]                                        # (N, D) float32

    rows = skelcli.predict("runs/ft/finetuned.pt", raw="./my_skeletons", top_k=5)
    rows[0]["top_names"], rows[0]["top_probs"]

Layouts (DESIGN.md "Tensor conventions"): clips ``(N, M, T, V, C)`` float32 (M persons, T frames,
V joints, C coordinates); the encoder takes one person per sequence ``(B = N*M, T, V, C)`` and returns
the method's downstream feature ``(B, D)``: SLiM [CLS || mean patch] (2 x 256 = 512 at paper size),
the MAE family (mae, mamp, gfp) the mean over tokens (256 at paper size). No wrapper is needed:
``SkeletonEncoder.forward`` already pools.

The evaluation view is the one of ``skel probe`` / ``skel finetune``: a centre crop keeping
``test_crop`` (0.95) of each clip's valid frames, resized to the encoder's input length
(:func:`skelcli.data.clips.test_view`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Sequence, Union

import numpy as np
import torch

from skelcli import __version__
from skelcli.errors import SkelError
from skelcli.models.encoder import SkeletonEncoder

PathLike = Union[str, Path]
EmbedPool = Literal["mean", "sum", "none"]
EMBED_POOLS: tuple[str, ...] = ("mean", "sum", "none")
PARTS: tuple[str, ...] = ("train", "test", "all")
#: Centre-crop fraction of the evaluation view when the checkpoint does not say otherwise (spec E).
TEST_CROP = 0.95


# ---------------------------------------------------------------------------------------- encoder
def load_encoder(path: PathLike, *, device: str | torch.device = "cpu") -> SkeletonEncoder:
    """The downstream encoder of a checkpoint (pretrained or fine-tuned), in eval mode on ``device``.

    ``encoder(x)``: x (B, T, V, C) float32 per-person clips with T = ``encoder.config.num_frames``
    -> (B, D) with D = ``encoder.feature_dim``. One-line SkelError for a missing, corrupt or foreign file.
    """
    from skelcli.engine.checkpoint import load_encoder as load_encoder_checkpoint
    from skelcli.engine.dist import resolve_device

    encoder, _info, _ckpt = load_encoder_checkpoint(path)
    return encoder.to(resolve_device(device)).eval()


# ------------------------------------------------------------------------------------------- data
def _check_part(part: str) -> None:
    if part not in PARTS:
        raise SkelError(f"unknown --part {part!r}; choose one of: {', '.join(PARTS)}")


def _load_clips(data: PathLike, split: str, part: str):
    """Clips of ``part`` ("train", "test" or "all" = every clip of the file, in file order) as a
    :class:`~skelcli.eval.features.SplitData`; ``split`` must be a protocol of the file even for "all"."""
    from skelcli.data.store import read_samples
    from skelcli.eval.features import SplitData, check_split, data_info, load_split

    _check_part(part)
    if part != "all":
        return load_split(data, split, part)
    info = data_info(data)
    check_split(info, split)
    s = read_samples(data, np.arange(info.num_samples, dtype=np.int64))
    offsets = np.asarray(s.offsets, dtype=np.int64)
    return SplitData(np.asarray(s.joints, dtype=np.float32), offsets, np.asarray(s.labels, dtype=np.int64), np.diff(offsets),
                     str(info.dataset), int(info.num_classes), list(s.names))


def _person_valid(clips) -> np.ndarray:
    """(n, M) bool: a person slot is non-empty when any of its joints is non-zero in any frame."""
    n = len(clips)
    m = clips.joints.shape[1]
    valid = np.zeros((n, m), dtype=bool)
    per_frame = np.abs(clips.joints).reshape(clips.joints.shape[0], m, -1).sum(axis=-1) > 0  # (F, M)
    for i in range(n):
        valid[i] = per_frame[clips.offsets[i] : clips.offsets[i + 1]].any(axis=0)
    return valid


def _pool(person_feats: np.ndarray, valid: np.ndarray, person_pool: str) -> np.ndarray:
    """(N, M, D) per-person features + (N, M) bool non-empty -> (N, D), or (N, M, D) for "none".

    "mean": mean over all M slots, empty persons included (the MAMP reference, = ``skel probe``'s
    "mean"); "sum": sum over non-empty persons (SLiM, spec/slim.md 5.3; all slots when none is non-empty).
    """
    from skelcli.eval.features import pool_persons

    if person_pool == "none":
        return person_feats
    feats = torch.from_numpy(person_feats)
    if person_pool == "mean":
        return pool_persons(feats, torch.from_numpy(valid), "mean").numpy()
    w = valid.astype(np.float32)
    w[w.sum(axis=1) == 0] = 1.0
    return (person_feats * w[..., None]).sum(axis=1).astype(np.float32)


def _check_pool(person_pool: str) -> None:
    if person_pool not in EMBED_POOLS:
        raise SkelError(f"unknown --person-pool {person_pool!r}; choose one of: {', '.join(EMBED_POOLS)}")


def _read_array(array, encoder: SkeletonEncoder) -> np.ndarray:
    """The ``--input`` array (an ndarray or a .npy path), checked: (N, M, T, V, C) float32 with the
    encoder's V joints and C coordinates, finite."""
    cfg = encoder.config
    layout = f"(N, M, T, V={cfg.num_joints}, C={cfg.in_chans}) = (clips, persons, frames, joints, coordinates) float32"
    if isinstance(array, (str, Path)):
        path = Path(array)
        if not path.is_file():
            raise SkelError(f"input array not found: {path}")
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise SkelError(f"{path}: not a .npy array ({str(exc).splitlines()[0][:120]})") from None
    array = np.asarray(array)
    if array.ndim != 5 or array.shape[3] != cfg.num_joints or array.shape[4] != cfg.in_chans or min(array.shape) < 1:
        raise SkelError(f"input array has shape {tuple(array.shape)}; expected {layout}")
    if not np.issubdtype(array.dtype, np.floating) and not np.issubdtype(array.dtype, np.integer):
        raise SkelError(f"input array has dtype {array.dtype}; expected {layout}")
    return array


def _array_features(encoder: SkeletonEncoder, array: np.ndarray, *, batch_size: int, device: torch.device,
                    test_crop: float, progress: Optional[Callable[[int], None]]) -> tuple[np.ndarray, np.ndarray, bool]:
    """Per-person features of a preprocessed array (N, M, T, V, C) -> ((N, M, D) float32, (N, M) bool
    non-empty, cropped). T equal to the encoder's input length: encoded as given (no crop). Otherwise
    the test view of :func:`skelcli.data.clips.test_view`, each clip's valid frames being those up to
    its last non-zero frame."""
    from skelcli.data.clips import ClipBatch, test_view
    from skelcli.eval.features import encode_views, iter_batches

    n, m, t = array.shape[:3]
    frames = encoder.config.num_frames
    crop = t != frames
    encoder.eval().to(device)
    feats, valid = [], []
    with torch.inference_mode():
        for idx in iter_batches(n, batch_size):
            chunk = np.array(array[idx[0] : idx[-1] + 1], dtype=np.float32)  # a writable copy (the .npy is memory-mapped)
            if not np.isfinite(chunk).all():
                raise SkelError(f"input array holds NaN or infinite values (clips {idx[0]}..{idx[-1]})")
            x = torch.from_numpy(chunk).to(device)
            nonzero = x.abs().flatten(3).sum(dim=-1) > 0  # (b, M, T)
            valid.append(nonzero.any(dim=-1).cpu().numpy())
            if crop:
                frame_any = nonzero.any(dim=1)  # (b, T)
                last = torch.where(frame_any, torch.arange(1, t + 1, device=device), 0).amax(dim=1)
                zeros = torch.zeros(len(idx), dtype=torch.long, device=device)
                x = test_view(ClipBatch(x, last.clamp(min=1), zeros), frames, test_crop)
            feats.append(encode_views(encoder, x, "concat").reshape(len(idx), m, -1).cpu().numpy())
            if progress is not None:
                progress(len(idx))
    return np.concatenate(feats).astype(np.float32), np.concatenate(valid), crop


def embed(
    checkpoint: PathLike,
    data: Optional[PathLike] = None,
    *,
    split: str = "xsub",
    part: str = "test",
    array: Union[np.ndarray, PathLike, None] = None,
    person_pool: str = "mean",
    batch_size: int = 128,
    device: str = "auto",
    test_crop: float = TEST_CROP,
    cache_dir: Optional[PathLike] = None,
    progress: Optional[Callable[[int], None]] = None,
) -> dict[str, Any]:
    """Frozen-encoder features of the clips of a prepared file or of an array.

    Give exactly one of ``data`` (a prepared .h5: clips of ``split`` / ``part``, "train", "test" or
    "all") or ``array`` ((N, M, T, V, C) float32, or the path of such a .npy, already preprocessed
    like ``skel prepare``'s output). Each clip goes through the test view (centre crop ``test_crop``
    resized to the encoder's input length; an array whose T already equals that length is not
    cropped), each person through the encoder, then ``person_pool``: "mean" over the M slots (empty
    persons included, the MAMP reference), "sum" over non-empty persons (SLiM), or "none" (keep them).

    ``data`` reuses ``skel probe``'s extraction (:func:`skelcli.eval.features.extract_features`, and
    its feature cache with ``cache_dir``). ``progress(k)`` is called after each batch of k clips.

    Returns {"features": (N, D) float32 or (N, M, D) for "none", "labels": (N,) int64 0-based, or
    None for an array, "names": N strings (sample names; "0".."N-1" for an array), "settings": dict of
    everything that produced the features}.
    """
    from skelcli.engine.checkpoint import load_encoder as load_encoder_checkpoint
    from skelcli.engine.dist import resolve_device
    from skelcli.eval.features import check_batch_size, encoder_hash, extract_features

    if (data is None) == (array is None):
        raise SkelError("give either --data FILE.h5 or --input ARRAY.npy (exactly one)")
    _check_pool(person_pool)
    check_batch_size(batch_size)
    if data is not None:
        _check_part(part)
    dev = resolve_device(device)
    encoder, info, _ckpt = load_encoder_checkpoint(checkpoint)
    settings: dict[str, Any] = {
        "checkpoint": str(checkpoint), "method": info.method, "epoch": info.epoch, "encoder_hash": encoder_hash(encoder),
        "input_frames": info.input_frames, "feature_dim": info.feature_dim, "person_pool": person_pool,
        "test_crop": float(test_crop), "batch_size": int(batch_size), "device": str(dev), "skelcli_version": __version__,
    }
    if data is not None:
        clips = _load_clips(data, split, part)
        flat, labels = extract_features(encoder, info, data, split, part, batch_size=batch_size, device=dev, cache_dir=cache_dir,
                                        test_crop=test_crop, person_pool="concat", split=clips, progress=progress)
        person_feats = flat.reshape(len(clips), clips.joints.shape[1], -1)
        valid = _person_valid(clips)
        names: list[str] = list(clips.names)
        labels_out: Optional[np.ndarray] = labels.astype(np.int64)
        settings.update({"source": "data", "data": str(data), "dataset": clips.dataset, "split": split, "part": part, "cropped": True})
    else:
        arr = _read_array(array, encoder)
        person_feats, valid, cropped = _array_features(encoder, arr, batch_size=batch_size, device=dev, test_crop=test_crop,
                                                       progress=progress)
        names = [str(i) for i in range(arr.shape[0])]
        labels_out = None
        settings.update({"source": "array", "input": str(array) if isinstance(array, (str, Path)) else "<array>",
                         "input_shape": list(arr.shape), "cropped": bool(cropped)})
    return {"features": _pool(person_feats, valid, person_pool), "labels": labels_out, "names": names, "settings": settings}


def save_embedding(result: dict[str, Any], out: PathLike) -> Path:
    """Write :func:`embed`'s result atomically as an .npz: ``features``, ``labels`` (int64; -1 where
    unknown), ``names`` (unicode strings), ``settings`` (a JSON string). Loads with ``np.load`` without
    ``allow_pickle``."""
    from skelcli.paths import atomic_write

    out = Path(out)
    feats = result["features"]
    labels = result["labels"] if result["labels"] is not None else np.full(feats.shape[0], -1, dtype=np.int64)
    payload = {"features": feats, "labels": np.asarray(labels, dtype=np.int64), "names": np.asarray(result["names"], dtype=str),
               "settings": np.asarray(json.dumps(result["settings"], sort_keys=True))}
    out.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(out, lambda fh: np.savez(fh, **payload))


# ----------------------------------------------------------------------------------------- predict
def load_finetuned(checkpoint: PathLike, device: str | torch.device = "cpu"):
    """A fine-tuned checkpoint as (:class:`~skelcli.eval.heads.FinetuneModel` in eval mode on
    ``device``, EncoderInfo, raw checkpoint dict). A checkpoint without ``head`` / ``head_config``
    (a pretrained one) is a one-line SkelError pointing at ``skel finetune``."""
    from skelcli.engine.checkpoint import load_encoder as load_encoder_checkpoint
    from skelcli.eval.heads import FinetuneModel

    encoder, info, ckpt = load_encoder_checkpoint(checkpoint)
    head, head_config = ckpt.get("head"), ckpt.get("head_config")
    if not isinstance(head, dict) or not isinstance(head_config, dict):
        raise SkelError(f"{checkpoint}: predict needs a fine-tuned checkpoint with a head: "
                        f"skel finetune --checkpoint {checkpoint} --data FILE.h5 (then use its finetuned.pt)")
    try:
        model = FinetuneModel(encoder, head_config)
        model.head.load_state_dict(head)
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise SkelError(f"{checkpoint}: fine-tuned head does not load ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from None
    return model.to(device).eval(), info, ckpt


def _raw_clips(raw: PathLike, dataset: str, num_classes: int, warn: Optional[Callable[[str], None]]):
    """NTU ``.skeleton`` files under ``raw`` (a folder, searched recursively, or one file), sorted by
    sample name, parsed + denoised + translated exactly as ``skel prepare`` does
    (:func:`skelcli.data.ntu.load_sample` with :func:`skelcli.data.prepare.default_settings`). Files
    that prepare would reject are skipped with ``warn(reason)``. Returns a SplitData whose labels are
    the action ids in the file names (A001 -> 0)."""
    from skelcli.data.ntu import load_sample
    from skelcli.data.prepare import default_settings
    from skelcli.eval.features import SplitData

    raw = Path(raw)
    if not raw.exists():
        raise SkelError(f"--raw {raw} not found")
    files = [raw] if raw.is_file() else sorted(raw.rglob("*.skeleton"), key=lambda p: (p.name, str(p)))
    if not files:
        raise SkelError(f"--raw {raw}: no .skeleton files found")
    settings = default_settings(dataset if dataset in ("ntu60", "ntu120") else "ntu60")
    parts, labels, names = [], [], []
    for path in files:
        try:
            s = load_sample(path, settings)
        except SkelError as exc:
            if warn is not None:
                warn(f"skipped {path.name}: {exc}")
            continue
        except OSError as exc:
            if warn is not None:
                warn(f"skipped {path.name}: unreadable file: {exc.strerror}")
            continue
        parts.append(np.asarray(s.joints, dtype=np.float32))
        labels.append(s.meta.label)
        names.append(s.meta.name)
    if not parts:
        raise SkelError(f"--raw {raw}: none of the {len(files)} .skeleton file(s) could be read")
    lengths = np.array([p.shape[0] for p in parts], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return SplitData(np.concatenate(parts), offsets, np.array(labels, dtype=np.int64), lengths, dataset, num_classes, names)


def _class_names(data: Optional[PathLike], dataset: Optional[str], num_classes: int) -> list[str]:
    """Names for class ids 0..num_classes-1: the data file's ``class_names``, else the dataset's
    action names (:func:`skelcli.data.actions.action_names`), else the id as text."""
    from skelcli.data.actions import action_names
    from skelcli.data.store import open_info

    names = open_info(data).class_names if data is not None else None
    names = names or action_names(dataset or "") or []
    return [str(names[i]) if i < len(names) else str(i) for i in range(num_classes)]


def predict(
    checkpoint: PathLike,
    data: Optional[PathLike] = None,
    *,
    raw: Optional[PathLike] = None,
    split: str = "xsub",
    part: str = "test",
    top_k: int = 5,
    batch_size: int = 128,
    device: str = "auto",
    progress: Optional[Callable[[int], None]] = None,
    warn: Optional[Callable[[str], None]] = None,
) -> list[dict[str, Any]]:
    """Top-k actions of each clip from a fine-tuned checkpoint (encoder + head).

    Give exactly one of ``data`` (a prepared .h5: clips of ``split`` / ``part``, "train", "test" or
    "all") or ``raw`` (a folder of NTU ``.skeleton`` files, parsed and denoised as ``skel prepare``
    does with the checkpoint dataset's default settings). Clips go through the evaluation view of
    ``skel finetune`` (:func:`skelcli.eval.finetune.evaluate_logits`: centre crop, the checkpoint's
    ``test_crop``), probabilities are the softmax of the logits.

    Returns one dict per clip, in clip order: {"name", "true_label" (int, 0-based, or None),
    "top_ids" (k ints, most probable first), "top_names" (k strings), "top_probs" (k floats, descending)}.
    """
    from skelcli.engine.checkpoint import check_head_classes
    from skelcli.engine.dist import resolve_device
    from skelcli.eval.features import check_batch_size, data_info, iter_batches
    from skelcli.eval.finetune import evaluate_logits

    if (data is None) == (raw is None):
        raise SkelError("give either --data FILE.h5 or --raw DIR of .skeleton files (exactly one)")
    check_batch_size(batch_size)
    if data is not None:
        _check_part(part)
    dev = resolve_device(device)
    model, info, ckpt = load_finetuned(checkpoint, dev)
    num_classes = int(ckpt["head_config"]["num_classes"])
    if not 1 <= top_k <= num_classes:
        raise SkelError(f"--top-k must be between 1 and the model's {num_classes} classes, got {top_k}")
    if data is not None:
        check_head_classes(ckpt, int(data_info(data).num_classes), checkpoint, data)
        clips = _load_clips(data, split, part)
        dataset = clips.dataset
    else:
        dataset = str(info.dataset or "ntu60")
        clips = _raw_clips(raw, dataset, num_classes, warn)
    test_crop = float(((info.settings or {}).get("finetune") or {}).get("test_crop", TEST_CROP))
    logits = []
    for idx in iter_batches(len(clips), batch_size):
        logits.append(evaluate_logits(model, clips.subset(idx), batch_size=batch_size, device=dev, test_crop=test_crop))
        if progress is not None:
            progress(len(idx))
    probs = torch.softmax(torch.from_numpy(np.concatenate(logits)).double(), dim=1).numpy()  # (n, classes)
    class_names = _class_names(data, dataset, num_classes)
    top = np.argsort(-probs, axis=1, kind="stable")[:, :top_k]
    rows = []
    for i, name in enumerate(clips.names):
        ids = [int(c) for c in top[i]]
        rows.append({"name": name, "true_label": int(clips.labels[i]), "top_ids": ids,
                     "top_names": [class_names[c] for c in ids], "top_probs": [float(probs[i, c]) for c in ids]})
    return rows


def write_predictions_csv(rows: Sequence[dict[str, Any]], out: PathLike) -> Path:
    """:func:`predict`'s rows as a CSV, atomically: name, true_label (empty when unknown), then
    top1_id, top1_name, top1_prob, ..., topk_id, topk_name, topk_prob."""
    import csv
    import io

    from skelcli.paths import atomic_write

    k = max((len(r["top_ids"]) for r in rows), default=0)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["name", "true_label", *[f"top{j}_{f}" for j in range(1, k + 1) for f in ("id", "name", "prob")]])
    for r in rows:
        cells: list[Any] = [r["name"], "" if r["true_label"] is None else r["true_label"]]
        for c, n, p in zip(r["top_ids"], r["top_names"], r["top_probs"]):
            cells += [c, n, f"{p:.8g}"]
        w.writerow(cells)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(out, lambda fh: fh.write(buf.getvalue().encode()))


__all__ = ["load_encoder", "embed", "predict", "save_embedding", "load_finetuned", "write_predictions_csv"]
