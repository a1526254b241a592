"""Frozen-encoder features for the downstream protocols (spec/mamp-and-data.md A.10, C.1, H; spec/slim.md 5.3).

Pipeline per batch of clips (N, M, T_max, V, C), zero-padded after each clip's valid frames:

1. test transform: centre crop ``test_crop`` (0.95) resized to the encoder's ``num_frames``
   (:func:`skelcli.data.clips.test_view`) -> (N, M, T, V, C);
2. persons as separate sequences (N*M, T, V, C) through ``encoder.forward`` -> (N*M, F), the
   encoder's own pooling (mean of tokens for MAMP, CLS || mean patch for SLiM);
3. pooled over persons -> (N, F):

   * ``"mean"``: mean over both slots, empty (all-zero) persons included — the MAMP reference
     (spec A.10: zero persons still give non-zero features and count in the average);
   * ``"mean_valid"``: mean over non-empty persons only (SLiM sums over valid persons, spec/slim.md
     5.3; the mean differs from that sum only by a per-clip scale, which we prefer for linear heads);
   * ``"concat"``: the M person features side by side (N, M*F) — SLiM's retrieval feature.

   The default is picked from the checkpoint's method: ``slim`` -> ``mean_valid``, else ``mean``.

Features are computed batched on the device under ``torch.inference_mode`` and cached to an .npz
keyed by a hash of the encoder weights + the data file fingerprint + split + transform settings.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, get_args

import numpy as np
import torch

from skelcli.engine.dist import resolve_device  # noqa: F401 (probe/finetune import it from here)
from skelcli.errors import SkelError

PersonPool = Literal["mean", "mean_valid", "concat"]
PERSON_POOLS: tuple[str, ...] = get_args(PersonPool)


def check_person_pool(pool: str | None) -> None:
    """SkelError listing the choices unless ``pool`` is None (the method's default) or a PersonPool."""
    if pool is not None and pool not in PERSON_POOLS:
        raise SkelError(f"unknown --person-pool {pool!r}; choose one of: {', '.join(PERSON_POOLS)}")


def check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise SkelError(f"--batch-size must be >= 1, got {batch_size}")


# ---------------------------------------------------------------------------------------- data
@dataclass
class SplitData:
    """One split of a prepared file, held in memory.

    joints: (F, M, V, C) float32, every clip's frames concatenated; offsets: (n+1,) int64;
    labels: (n,) int64; lengths: (n,) int64 frames per clip; dataset, num_classes from the file;
    dims: coordinate dimensions of the file's topology (2-D layouts rotate in-plane in train views).
    """

    joints: np.ndarray
    offsets: np.ndarray
    labels: np.ndarray
    lengths: np.ndarray
    dataset: str
    num_classes: int
    names: list[str]
    dims: int = 3
    topology: Any = None  # the file's skelcli.topology.Topology (mirroring / bone scaling in SLiM's views)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batch(self, idx: np.ndarray, device: torch.device | str = "cpu"):
        """Clips ``idx`` as a :class:`~skelcli.methods.base.ClipBatch`: joints (N, M, T_max, V, C)
        zero-padded to the longest clip of the batch, valid (N,), label (N,)."""
        from skelcli.data.clips import ClipBatch

        idx = np.asarray(idx, dtype=np.int64)
        lengths = self.lengths[idx]
        t_max = int(max(lengths.max(initial=1), 1))
        m, v, c = self.joints.shape[1:]
        out = np.zeros((len(idx), m, t_max, v, c), dtype=np.float32)
        for row, i in enumerate(idx):
            clip = self.joints[self.offsets[i] : self.offsets[i + 1]]  # (T_i, M, V, C)
            out[row, :, : clip.shape[0]] = clip.transpose(1, 0, 2, 3)
        return ClipBatch(
            torch.from_numpy(out).to(device),
            torch.from_numpy(np.maximum(lengths, 1)).to(device),
            torch.from_numpy(self.labels[idx]).to(device),
        )

    def subset(self, idx: np.ndarray) -> "SplitData":
        """A new SplitData holding only clips ``idx`` (in that order)."""
        idx = np.asarray(idx, dtype=np.int64)
        parts = [self.joints[self.offsets[i] : self.offsets[i + 1]] for i in idx]
        lengths = np.array([p.shape[0] for p in parts], dtype=np.int64)
        joints = np.concatenate(parts, axis=0) if parts else self.joints[:0]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        return SplitData(joints, offsets, self.labels[idx], lengths, self.dataset, self.num_classes, [self.names[i] for i in idx],
                         self.dims, self.topology)


def preset_encoder_config(preset: str, topology):
    """The encoder config of ``preset`` ("small": the pretraining small preset, "paper": MAMP's) for data
    of ``topology`` (its joint count and values per joint): the shape of --random-init / --from-scratch
    encoders without a checkpoint."""
    from skelcli.methods.mae import small_encoder_config
    from skelcli.models.encoder import EncoderConfig

    if preset not in ("small", "paper"):
        raise SkelError(f"unknown preset {preset!r}; available: paper, small")
    cfg = small_encoder_config() if preset == "small" else EncoderConfig()
    return cfg.model_copy(update={"num_joints": topology.num_joints, "in_chans": topology.channels})


def data_info(path: str | Path):
    """The prepared file's :class:`StoreInfo`; a missing file is a one-line SkelError."""
    from skelcli.data.store import open_info

    path = Path(path)
    if not path.is_file():
        raise SkelError(f"data file not found: {path}")
    return open_info(path)


def check_split(info, protocol: str) -> None:
    """SkelError naming the available protocols when the file has no ``protocol`` split."""
    protocols = dict(getattr(info, "protocols", {}) or {})
    if protocol not in protocols:
        raise SkelError(f"{info.path}: no split {protocol!r}; available: {', '.join(sorted(protocols)) or 'none'}")


def load_split(path: str | Path, protocol: str, part: str) -> SplitData:
    """Read one split (``part`` = "train" or "test") of a prepared HDF5 file into memory."""
    from skelcli.data.store import read_samples, split_indices

    info = data_info(path)
    check_split(info, protocol)
    indices = np.asarray(split_indices(path, protocol, part), dtype=np.int64)
    if indices.size == 0:
        raise SkelError(f"{path}: split {protocol}/{part} is empty")
    s = read_samples(path, indices)
    offsets = np.asarray(s.offsets, dtype=np.int64)
    return SplitData(
        joints=np.asarray(s.joints, dtype=np.float32),
        offsets=offsets,
        labels=np.asarray(s.labels, dtype=np.int64),
        lengths=np.diff(offsets),
        dataset=str(info.dataset),
        num_classes=int(info.num_classes),
        names=list(s.names),
        dims=info.topology.dims,
        topology=info.topology,
    )


def iter_batches(n: int, batch_size: int) -> Iterator[np.ndarray]:
    for start in range(0, n, batch_size):
        yield np.arange(start, min(start + batch_size, n))


# ------------------------------------------------------------------------------------ encoding
def default_person_pool(method: str | None) -> PersonPool:
    """MAMP reference: mean over both slots; SLiM: valid persons only (spec/slim.md 5.3)."""
    return "mean_valid" if (method or "").startswith("slim") else "mean"


def pool_persons(person_feats: torch.Tensor, person_valid: torch.Tensor, mode: PersonPool) -> torch.Tensor:
    """(N, M, F) person features + (N, M) bool non-empty -> (N, F) or (N, M*F) for "concat".

    "mean_valid" falls back to the plain mean for a clip with no non-empty person.
    """
    n, m, f = person_feats.shape
    if mode == "mean":
        return person_feats.mean(dim=1)
    if mode == "concat":
        return person_feats.reshape(n, m * f)
    if mode == "mean_valid":
        w = person_valid.to(person_feats.dtype)
        w = torch.where(w.sum(dim=1, keepdim=True) > 0, w, torch.ones_like(w))
        return (person_feats * w[..., None]).sum(dim=1) / w.sum(dim=1, keepdim=True)
    raise ValueError(f"unknown person pooling {mode!r}")


def encode_views(encoder: torch.nn.Module, views: torch.Tensor, person_pool: PersonPool) -> torch.Tensor:
    """views (N, M, T, V, C) -> features (N, F) (or (N, M*F) for "concat"); no grad handling here."""
    n, m, t, v, c = views.shape
    person = encoder(views.reshape(n * m, t, v, c)).reshape(n, m, -1)
    valid = views.reshape(n, m, -1).abs().sum(dim=-1) > 0
    return pool_persons(person.float(), valid, person_pool)


def encoder_hash(encoder: torch.nn.Module) -> str:
    """sha256 of the encoder config and weights (stable across processes; 16 hex digits)."""
    h = hashlib.sha256()
    cfg = getattr(encoder, "config", None)
    if cfg is not None:
        h.update(cfg.model_dump_json().encode())
    for name, tensor in sorted(encoder.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def file_fingerprint(path: str | Path) -> str:
    """16 hex digits identifying a data file by resolved path, size and mtime (feature-cache key)."""
    p = Path(path).resolve()
    st = p.stat()
    return hashlib.sha256(f"{p}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]


def features_of(
    encoder: torch.nn.Module,
    split: SplitData,
    *,
    batch_size: int,
    device: torch.device | str,
    test_crop: float = 0.95,
    person_pool: PersonPool = "mean",
    progress=None,
) -> np.ndarray:
    """Test-transform features of every clip of ``split`` in order: (n, F) float32.

    Distributed (launched by torchrun, or a process group already initialised): rank r encodes the
    clips ``positions[r::W]`` of the positions padded to a multiple of W (DistributedSampler-style),
    and the rows are all-gathered back into the original order
    (:func:`skelcli.engine.dist.gather_rows_in_order`), so every rank returns every clip exactly
    once, in order, as a single process would.
    """
    from skelcli.data.clips import test_view
    from skelcli.engine.dist import context_of_group, gather_rows_in_order, init_distributed, quiet_non_main

    dev = resolve_device(device)
    ctx = context_of_group(dev)
    if ctx is None:  # launched by torchrun (probe / retrieve): join the job, rank-0 console
        ctx = init_distributed(str(dev.type) if dev.type == "cpu" else "auto")
        quiet_non_main(ctx)
    if ctx.distributed:
        dev = ctx.device
    n = len(split)
    positions = np.arange(n, dtype=np.int64)
    if ctx.distributed:
        per_rank = -(-n // ctx.world_size)
        positions = np.resize(positions, per_rank * ctx.world_size)[ctx.rank :: ctx.world_size]
    was_training = encoder.training
    encoder.eval().to(dev)
    frames = encoder.config.num_frames
    out = []
    with torch.inference_mode():
        for start in range(0, positions.size, batch_size):
            idx = positions[start : start + batch_size]
            batch = split.batch(idx, dev)
            views = test_view(batch, frames, test_crop)
            out.append(encode_views(encoder, views, person_pool).float())
            if progress is not None:
                progress(len(idx))
    encoder.train(was_training)
    rows = torch.cat(out, dim=0)
    if ctx.distributed:
        rows = gather_rows_in_order(rows, torch.from_numpy(positions).to(rows.device), n, ctx)
    return rows.cpu().numpy().astype(np.float32)


def extract_features(
    encoder: torch.nn.Module,
    info,
    data_path: str | Path,
    protocol: str,
    part: str,
    *,
    batch_size: int = 128,
    device: torch.device | str = "cpu",
    cache_dir: str | Path | None = None,
    test_crop: float = 0.95,
    person_pool: PersonPool | None = None,
    split: SplitData | None = None,
    progress=None,
) -> tuple[np.ndarray, np.ndarray]:
    """Frozen-encoder features of one split: (feats (n, F) float32, labels (n,) int64).

    ``info`` is the :class:`~skelcli.engine.checkpoint.EncoderInfo` (or None): its method picks the
    default person pooling. ``split`` may pass an already loaded :class:`SplitData`. With
    ``cache_dir`` the result is stored as ``<cache_dir>/feats-<key>.npz`` and reused when the key
    (encoder weights hash, data fingerprint, protocol/part, crop, pooling, frames) matches.
    """
    pool = person_pool or default_person_pool(getattr(info, "method", None))
    cache_path = None
    if cache_dir is not None:
        key = json.dumps(
            {
                "enc": encoder_hash(encoder),
                "data": file_fingerprint(data_path),
                "split": [protocol, part],
                "crop": test_crop,
                "pool": pool,
                "frames": encoder.config.num_frames,
            },
            sort_keys=True,
        )
        cache_path = Path(cache_dir) / f"feats-{hashlib.sha256(key.encode()).hexdigest()[:20]}.npz"
        if cache_path.is_file():
            try:
                with np.load(cache_path) as z:
                    return z["feats"].astype(np.float32), z["labels"].astype(np.int64)
            except (OSError, KeyError, ValueError):
                cache_path.unlink(missing_ok=True)
    if split is None:
        split = load_split(data_path, protocol, part)
    feats = features_of(encoder, split, batch_size=batch_size, device=device, test_crop=test_crop, person_pool=pool, progress=progress)
    labels = split.labels.copy()
    from skelcli.engine.dist import is_main_process

    if cache_path is not None and is_main_process():  # one writer under torchrun; every rank holds the same result
        tmp = cache_path.with_name(cache_path.stem + ".tmp.npz")
        try:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(tmp, feats=feats, labels=labels)
            tmp.replace(cache_path)
        except OSError:  # the cache is only a speed-up: a read-only or full checkpoint folder skips it
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
    return feats, labels


# ------------------------------------------------------------------------------ command helpers
def prepare_encoder(
    checkpoint: str | Path | None,
    data_path: str | Path,
    protocol: str,
    *,
    random_init: bool = False,
    preset: str = "small",
    seed: int = 0,
):
    """Encoder + EncoderInfo for probe / retrieve, with the bad-input checks of issue 3.

    checkpoint given: its encoder (or, with ``random_init``, a freshly initialised encoder of the same
    config — the "what pretraining bought" baseline). No checkpoint: ``random_init`` is required and the
    encoder config comes from ``preset`` ("small" = the pretraining small preset, "paper" = MAMP).
    Checks that the data file has ``protocol`` and that a fine-tuned checkpoint's head matches the
    file's class count. Returns (encoder in eval mode, info, data StoreInfo).
    """
    from skelcli.engine.checkpoint import EncoderInfo, check_head_classes, load_encoder
    from skelcli.engine.config import check_encoder_fits
    from skelcli.models.encoder import SkeletonEncoder

    dinfo = data_info(data_path)
    check_split(dinfo, protocol)
    if checkpoint is not None:
        encoder, info, ckpt = load_encoder(checkpoint)
        check_encoder_fits(encoder.config, dinfo.topology, str(data_path), prefix=f"{checkpoint}: encoder")
        check_head_classes(ckpt, int(dinfo.num_classes), checkpoint, data_path)
        if random_init:
            torch.manual_seed(seed)
            encoder = SkeletonEncoder(encoder.config).eval()
            info.epoch = 0
    elif random_init:
        cfg = preset_encoder_config(preset, dinfo.topology)
        torch.manual_seed(seed)
        encoder = SkeletonEncoder(cfg).eval()
        info = EncoderInfo(method="random", dataset=None, num_classes=None, epoch=0, input_frames=cfg.num_frames,
                           feature_dim=cfg.feature_dim, settings={})
    else:
        raise SkelError("--checkpoint is required (or --random-init for a randomly initialised encoder)")
    return encoder, info, dinfo
