"""SLiM losses: GLCL (DINO CLS cross-entropy), MFM (iBOT patch cross-entropy), KoLeo.

Forms from spec/slim.md section 4 (read from the released code and DINOv2). All logits are
(rows, K) prototype scores before temperature; teacher targets are Sinkhorn-Knopp
probabilities (rows, K).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_cross_entropy(targets: torch.Tensor, student_logits: torch.Tensor, student_temp: float) -> torch.Tensor:
    """Per-row CE = -sum_k q_k log softmax(z / tau_s)_k. (R, K), (R, K) -> (R,)."""
    return -(targets * F.log_softmax(student_logits.float() / student_temp, dim=-1)).sum(dim=-1)


def glcl_pairs(num_global: int, num_local: int) -> list[tuple[str, int, int]]:
    """The GLCL (student view, teacher view) pairs (spec/slim.md 2.7).

    Returns (kind, student index, teacher global index) with kind "local" or "global": every local
    view against every teacher global view, and each student global view against every *other*
    teacher global view (never a view with itself). 2 globals and 8 locals give 16 + 2 = 18 pairs.
    """
    pairs = [("local", s, g) for s in range(num_local) for g in range(num_global)]
    pairs += [("global", s, g) for s in range(num_global) for g in range(num_global) if s != g]
    return pairs


def glcl_loss(
    student_global: torch.Tensor,
    student_local: torch.Tensor,
    teacher_probs: torch.Tensor,
    student_temp: float = 0.1,
) -> torch.Tensor:
    """L_GLCL = mean over the pairs of :func:`glcl_pairs` of the batch-mean CE (spec section 4).

    student_global: (G, B, K) student CLS logits of the global views; student_local: (L, B, K);
    teacher_probs: (G, B, K) Sinkhorn-Knopp targets of the teacher's global views.
    """
    pairs = glcl_pairs(student_global.shape[0], student_local.shape[0])
    total = student_global.new_zeros((), dtype=torch.float32)
    for kind, s, g in pairs:
        logits = student_local[s] if kind == "local" else student_global[s]
        total = total + soft_cross_entropy(teacher_probs[g], logits, student_temp).mean()
    return total / len(pairs)


def ibot_loss(
    student_logits: torch.Tensor,
    teacher_probs: torch.Tensor,
    view_index: torch.Tensor,
    num_views: int,
    student_temp: float = 0.1,
) -> torch.Tensor:
    """L_MFM: CE on masked patch tokens, averaged within a view, then over all ``num_views``
    global views (unmasked views contribute 0; spec section 4).

    student_logits / teacher_probs: (M, K) for the M masked tokens of all views; view_index: (M,)
    long, the global view each token belongs to.
    """
    if student_logits.shape[0] == 0:
        return student_logits.sum() * 0.0
    ce = soft_cross_entropy(teacher_probs, student_logits, student_temp)
    counts = torch.bincount(view_index, minlength=num_views).clamp(min=1).to(ce.dtype)
    return (ce / counts[view_index]).sum() / num_views


def koleo_loss(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Kozachenko-Leonenko entropy regulariser: -mean_b log(min_{b' != b} ||c_b - c_b'|| + eps)
    over L2-normalised rows of x (B, D) (spec section 4; Sablayrolles et al. 2019)."""
    if x.shape[0] < 2:
        return x.sum() * 0.0
    c = F.normalize(x.float(), dim=-1, eps=1e-8)
    with torch.no_grad():
        sim = c @ c.t()
        sim.fill_diagonal_(-2.0)
        nn_idx = sim.argmax(dim=1)
    dist = (c - c[nn_idx]).norm(dim=-1)
    return -torch.log(dist + eps).mean()


__all__ = ["glcl_loss", "glcl_pairs", "ibot_loss", "koleo_loss", "soft_cross_entropy"]
