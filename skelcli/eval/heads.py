"""Classification heads for probing and fine-tuning, the fine-tune model and layer-wise lr decay.

* :class:`LinearProbeHead` — spec/mamp-and-data.md A.10 / C.1: BatchNorm1d(affine=False,
  eps 1e-6) then Linear, weight trunc-normal std 0.01 (MoCo v3 style), bias 0.
* :class:`MampFinetuneHead` — spec A.10 ``ActionHeadFinetune``: dropout 0.3 on the token features,
  mean over the temporal segments keeping joints apart -> (N, M, V*D), mean over persons, then
  Linear(V*D, 2048) -> BatchNorm1d(2048) -> ReLU -> Linear(2048, classes); both Linear layers
  xavier-uniform with zero bias, as MAMP's ``_init_weights`` (spec/protocols-and-checkpoints.md 3.2).
* :class:`PooledLinearHead` — one Linear on the encoder's pooled [CLS || mean patch] feature, averaged
  over non-empty persons (the ``mamp`` recipe's head for SLiM-shaped encoders, spec/slim.md 5.3).
* :class:`SlimLinearHead` — SLiM's official semi-supervised head (the ``slim`` recipe).
* :func:`layer_decay_multipliers` — spec C.2 table (decay 0.8, L = depth + 1).
"""

from __future__ import annotations

import contextlib
from typing import Any, Literal

import torch
from torch import nn

from skelcli.eval.features import pool_persons
from skelcli.models.encoder import SkeletonEncoder
from skelcli.models.layers import trunc_normal_

HeadKind = Literal["mamp", "pooled_linear"]

# Parameters of the encoder that sit before the first block (the "embedding layer", layer id 0).
EMBED_PARAMS = ("patch_embed", "joint_embed", "temp_embed", "cls_token", "cls_pos", "registers", "mask_embed")


class LinearProbeHead(nn.Module):
    """(N, F) -> (N, classes): BN (no affine, eps 1e-6) + Linear, trunc-normal std 0.01 (spec C.1)."""

    def __init__(self, in_dim: int, num_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(in_dim, affine=False, eps=1e-6)
        self.fc = nn.Linear(in_dim, num_classes)
        trunc_normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(x))


class MampFinetuneHead(nn.Module):
    """MAMP fine-tune head (spec A.10).

    Input: patch-token features (N, M, L, D) with L = Tp * V time-major. Output: (N, classes).
    """

    def __init__(self, dim: int, num_joints: int, num_classes: int, hidden: int = 2048, dropout: float = 0.3) -> None:
        super().__init__()
        self.num_joints = num_joints
        self.drop = nn.Dropout(dropout)
        self.fc1 = nn.Linear(num_joints * dim, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.fc2 = nn.Linear(hidden, num_classes)
        for fc in (self.fc1, self.fc2):  # MAMP's Transformer._init_weights: xavier-uniform, zero bias
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)

    def forward(self, tokens: torch.Tensor, person_valid: torch.Tensor | None = None) -> torch.Tensor:
        n, m, l, d = tokens.shape
        x = self.drop(tokens).reshape(n, m, l // self.num_joints, self.num_joints, d)
        x = x.mean(dim=2).reshape(n, m, self.num_joints * d).mean(dim=1)  # (N, V*D)
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


class PooledLinearHead(nn.Module):
    """SLiM head: dropout + Linear on the pooled per-person feature averaged over valid persons.

    Input: (N, M, F) pooled features ([CLS || mean patch] for cls_mean encoders). Output: (N, classes).
    """

    def __init__(self, in_dim: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(in_dim, num_classes)
        trunc_normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, pooled: torch.Tensor, person_valid: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(pool_persons(pooled, person_valid, "mean_valid")))


class SlimLinearHead(nn.Module):
    """SLiM's semi-supervised head [S slim/eval/finetune.py] (spec/protocols-and-checkpoints.md 2.2): one
    Linear, weight N(0, ``init_std``) and zero bias, on the final-norm CLS of the last ``n_last_blocks``
    blocks concatenated oldest first and, with ``avgpool``, the last block's patch-token mean; both
    summed over non-empty persons (:func:`skelcli.eval.slim_eval.slim_features`). Input: that features
    dict; output (N, classes), computed in fp32 as the official ``.float()`` inputs."""

    def __init__(self, dim: int, num_classes: int, n_last_blocks: int = 1, avgpool: bool = True, init_std: float = 0.01) -> None:
        super().__init__()
        self.n_last, self.avgpool = int(n_last_blocks), bool(avgpool)
        self.fc = nn.Linear(dim * (self.n_last + int(self.avgpool)), num_classes)
        nn.init.normal_(self.fc.weight, mean=0.0, std=init_std)
        nn.init.zeros_(self.fc.bias)

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        cls = feats["cls"]
        x = cls[:, -self.n_last:].reshape(cls.shape[0], -1)
        if self.avgpool:
            x = torch.cat([x, feats["patch"]], dim=-1)
        return self.fc(x.float())


def slim_head_config(num_classes: int, n_last_blocks: int = 1, avgpool: bool = True, init_std: float = 0.01) -> dict[str, Any]:
    """``head_config`` of a :class:`SlimLinearHead` (stored in fine-tuned checkpoints)."""
    return {"kind": "slim_linear", "num_classes": int(num_classes), "n_last_blocks": int(n_last_blocks), "avgpool": bool(avgpool),
            "init_std": float(init_std), "person_pool": "sum"}


def head_config_for(encoder: SkeletonEncoder, num_classes: int, dropout: float = 0.3, hidden: int = 2048) -> dict[str, Any]:
    """The head that fits an encoder: MAMP head for mean-pooled encoders, pooled linear for cls_mean (SLiM)."""
    cfg = encoder.config
    kind: HeadKind = "pooled_linear" if cfg.pool == "cls_mean" else "mamp"
    return {"kind": kind, "num_classes": int(num_classes), "dropout": float(dropout), "hidden": int(hidden)}


def build_head(encoder: SkeletonEncoder, head_config: dict[str, Any]) -> nn.Module:
    cfg = encoder.config
    if head_config["kind"] == "mamp":
        return MampFinetuneHead(cfg.dim, cfg.num_joints, head_config["num_classes"], head_config["hidden"], head_config["dropout"])
    if head_config["kind"] == "pooled_linear":
        return PooledLinearHead(cfg.feature_dim, head_config["num_classes"], head_config["dropout"])
    if head_config["kind"] == "slim_linear":
        return SlimLinearHead(cfg.dim, head_config["num_classes"], head_config["n_last_blocks"], head_config["avgpool"],
                              head_config.get("init_std", 0.01))
    raise ValueError(f"unknown head kind {head_config['kind']!r}")


class FinetuneModel(nn.Module):
    """Encoder + head trained end to end. forward: clips (N, M, T, V, C) -> logits (N, classes).

    ``person_mask`` (N, M) bool, used by the ``slim_linear`` head: SLiM's non-empty persons of the clips'
    buffers (None: from the views). ``autocast``: a context factory around the encoder of a
    ``slim_linear`` model (SLiM autocasts the features only); the default does nothing."""

    def __init__(self, encoder: SkeletonEncoder, head_config: dict[str, Any]) -> None:
        super().__init__()
        self.encoder = encoder
        self.head_config = dict(head_config)
        self.head = build_head(encoder, head_config)
        self.autocast: Any = contextlib.nullcontext

    def forward(self, x: torch.Tensor, person_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.head_config["kind"] == "slim_linear":
            from skelcli.eval.slim_eval import slim_features

            with self.autocast():
                feats = slim_features(self.encoder, x, self.head.n_last, person_mask)
            return self.head(feats)
        n, m, t, v, c = x.shape
        valid = x.reshape(n, m, -1).abs().sum(dim=-1) > 0  # (N, M) non-empty persons
        feats = self.encoder.forward_features(x.reshape(n * m, t, v, c))  # (N*M, P+L, D)
        if self.head_config["kind"] == "mamp":
            p = self.encoder.config.num_prefix
            tokens = feats[:, p:].reshape(n, m, -1, feats.shape[-1])
            return self.head(tokens, valid)
        pooled = self.encoder.pool(feats).reshape(n, m, -1)
        return self.head(pooled, valid)


def layer_id(name: str, depth: int) -> int:
    """Layer index of an encoder parameter name (relative to the encoder): embeddings 0, block k -> k+1,
    everything after the blocks (final norm) -> depth+1."""
    root = name.split(".", 1)[0]
    if root in EMBED_PARAMS:
        return 0
    if root == "blocks":
        return int(name.split(".")[1]) + 1
    return depth + 1


def layer_decay_multipliers(encoder: SkeletonEncoder, decay: float) -> dict[str, float]:
    """lr multiplier per encoder parameter name (spec C.2, BEiT/MAE layer decay with L = depth + 1):

    embeddings (patch/joint/temporal embeddings, CLS, registers, mask token): decay^(depth+1);
    block k: decay^(depth-k); final norm: 1.0. The head (not part of the encoder) gets 1.0.
    """
    depth = encoder.config.depth
    num_layers = depth + 1
    return {name: float(decay ** (num_layers - layer_id(name, depth))) for name, _ in encoder.named_parameters()}


def finetune_param_groups(model: FinetuneModel, weight_decay: float, layer_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: per-parameter lr_scale from layer decay; no decay on 1-D parameters and biases
    (spec C.2: the position embeddings are >1-D and do get decay)."""
    scales = {f"encoder.{k}": v for k, v in layer_decay_multipliers(model.encoder, layer_decay).items()}
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1 or name.endswith(".bias")
        groups.setdefault((no_decay, scales.get(name, 1.0)), []).append(p)
    return [
        {"params": ps, "weight_decay": 0.0 if nd else weight_decay, "lr_scale": sc, "apply_wd": not nd}
        for (nd, sc), ps in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0]))
    ]
