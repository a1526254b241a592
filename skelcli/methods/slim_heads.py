"""SLiM projection heads, Sinkhorn-Knopp centring (spec/slim.md 2.4, 2.6, 2.7) and DINO's softmax centring.

Both heads (CLS ``dino_head`` for GLCL, patch ``ibot_head`` for MFM) are DINOv2 DINOHeads:
a 3-layer MLP in -> hidden -> hidden -> bottleneck with GELU, L2 normalisation, then a bias-free
weight-normalised prototype layer ``w_k = g_k * v_k / ||v_k||``. DINOv2 initialises g to 1 and trains
it like any weight (lr and weight decay); ``train_norm=False`` keeps g = 1, DINO v1's
``norm_last_layer``, which spec/slim.md 2.4 first assumed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from skelcli.models.layers import trunc_normal_


class DINOHead(nn.Module):
    """(B, in_dim) -> (B, num_prototypes) logits (before temperature).

    ``freeze_prototypes`` (set by the method for the first epoch, spec 2.4) detaches the prototype
    weight so it gets no gradient and AdamW skips it, as DINOv2's cancelled last-layer gradient.
    """

    def __init__(self, in_dim: int, num_prototypes: int, hidden_dim: int = 2048, bottleneck_dim: int = 256, num_layers: int = 3,
                 train_norm: bool = True) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError("a DINO head needs at least one layer")
        layers: list[nn.Module] = []
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [bottleneck_dim]
        for i in range(num_layers):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < num_layers - 1:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        proto = nn.Linear(bottleneck_dim, num_prototypes, bias=False)  # PyTorch default init, as DINOv2
        self.prototypes = nn.Parameter(proto.weight.detach().clone())  # (K, bottleneck): v
        #: (K, 1) weight-norm magnitudes g, 1 at the start; 2-D so that AdamW decays it, as DINOv2 does.
        self.prototype_norm = nn.Parameter(torch.ones(num_prototypes, 1), requires_grad=train_norm)
        self.freeze_prototypes = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.normalize(self.mlp(x), dim=-1, eps=1e-6 if x.dtype == torch.float16 else 1e-12)
        w, g = self.prototypes, self.prototype_norm
        if self.freeze_prototypes:  # DINOv2 cancels the whole last layer's gradient (v and g)
            w, g = w.detach(), g.detach()
        return F.linear(z, F.normalize(w, dim=1) * g)


@torch.no_grad()
def sinkhorn_knopp(logits: torch.Tensor, temperature: float, iterations: int = 3) -> torch.Tensor:
    """Balanced soft assignment of B samples to K prototypes (SwAV / DINOv2 centring).

    logits: (B, K) teacher head outputs. Q = exp(logits / temperature) is alternately normalised
    so that every prototype gets total mass 1/K and every sample 1/B; the result is scaled so that
    each row (sample) sums to 1 and each column to B/K. Computed in float32. Returns (B, K).
    Under torch.distributed the prototype sums, the total mass, the shift and B are all-reduced, so
    the balance holds over the global batch (every process's samples), as in the reference.
    """
    import torch.distributed as tdist

    dist = tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1

    def reduce(t: torch.Tensor, op=None) -> torch.Tensor:
        if dist:
            tdist.all_reduce(t, op=op or tdist.ReduceOp.SUM)
        return t

    z = logits.float() / temperature
    shift = reduce(z.max().detach().clone(), tdist.ReduceOp.MAX if dist else None)
    q = torch.exp(z - shift).t()  # (K, B_local); a shift common to all processes cancels
    k = q.shape[0]
    b = int(reduce(torch.tensor(q.shape[1], device=q.device, dtype=torch.float64)).item())
    q = q / reduce(q.sum())
    # At a low temperature whole rows or columns can underflow to 0; the floor keeps them at 0 instead of
    # 0 / 0 = NaN (a sample whose every entry underflowed gets an all-zero target and adds nothing to the
    # loss). Above the floor the divisions are exactly those of the reference.
    tiny = torch.finfo(q.dtype).tiny
    for _ in range(iterations):
        q = q / reduce(q.sum(dim=1, keepdim=True)).clamp_min(tiny) / k
        q = q / q.sum(dim=0, keepdim=True).clamp_min(tiny) / b
    return (q * b).t()


@torch.no_grad()
def softmax_centring(logits: torch.Tensor, centre: torch.Tensor, temperature: float, momentum: float) -> torch.Tensor:
    """DINO's teacher targets (Caron et al. 2021, section 3.1; iBOT keeps a second centre for patch
    tokens): softmax((logits - centre) / temperature) over the K prototypes, then the centre moves
    to ``momentum * centre + (1 - momentum) * mean(logits)`` in place.

    logits: (B, K) teacher head outputs; centre: (1, K) float32 buffer. Returns (B, K) float32, rows
    summing to 1. Unlike Sinkhorn-Knopp nothing forces a batch to spread over all K prototypes.
    Under torch.distributed the logit sums and counts are all-reduced, so every process keeps the
    same centre (the mean over the global batch); with B = 0 over all processes it does not move.
    """
    import torch.distributed as tdist

    z = logits.float()
    out = torch.softmax((z - centre) / temperature, dim=-1)
    total = z.sum(dim=0, keepdim=True)
    count = torch.tensor(float(z.shape[0]), device=z.device)
    if tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1:
        tdist.all_reduce(total)
        tdist.all_reduce(count)
    moved = momentum * centre + (1.0 - momentum) * total / count.clamp_min(1.0)
    centre.copy_(torch.where(count > 0, moved, centre))  # no host sync on a GPU
    return out


def target_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Mean entropy of target distributions (B, K) over log K: 1.0 = uniform targets, which carry no signal
    (DINO's "uniform collapse"); one-hot targets give 0. Detached fp32 scalar."""
    p = probs.detach().float()
    return -(p * torch.log(p.clamp_min(1e-12))).sum(-1).mean() / math.log(p.shape[-1])


__all__ = ["DINOHead", "sinkhorn_knopp", "softmax_centring", "target_entropy"]
