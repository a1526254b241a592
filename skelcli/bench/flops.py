"""FLOP counting for `skel benchmark` (spec/ecosystem.md 6.2, spec/gfp.md 2.7, spec/slim.md 5.2).

Convention (the one that reproduces the papers' MAE-family figures, spec/ecosystem.md 2.1):

* FLOPs = 2 x multiply-adds. ``torch.utils.flop_counter.FlopCounterMode`` already counts
  2 * m * n * k for a matmul, so its numbers are used as they are; MACs = FLOPs / 2.
* Only matmul-like ops are counted (linear, bmm, conv, attention); norms, softmax, GELU are free.
* Per **sample** = both persons (M = 2 person-sequences of the (N*M, T, V, C) batch).
* G = 1e9 (not 1024**3 as pyskl's ``fnp``).

Trap (DESIGN.md "Traps", issue 8): on the default fused CPU kernel FlopCounterMode counts **zero**
for ``scaled_dot_product_attention``. Every count here runs under
``torch.nn.attention.sdpa_kernel(SDPBackend.MATH)``, which decomposes attention into counted bmm's.

Per-module attribution is reliable for forward passes only (the module tracker mis-attributes
backward ops), so the module breakdown is always a forward count; fwd+bwd is reported as a total.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

# Paper figures in GFLOPs per sample (2 persons, 2 FLOPs/MAC): SLiM efficiency table,
# spec/slim.md 5.2 = spec/gfp.md 4.2 Table 1.
PAPER_GFLOPS: dict[str, dict[str, float]] = {
    "mae": {"encoder_pretrain": 1.97, "decoder": 17.70, "inference": 28.32},
    "mamp": {"encoder_pretrain": 1.97, "decoder": 17.70, "inference": 28.32},
    "gfp": {"encoder_pretrain": 1.97, "decoder": 1.57, "target_network": 0.64, "inference": 28.32},
    "slim": {"encoder_pretrain": 3.59, "teacher": 3.59, "inference": 3.59},
}

PERSONS_PER_SAMPLE = 2
CONVENTION = (
    "FLOPs = 2 x multiply-adds (FlopCounterMode, SDPA counted under the MATH backend); "
    f"per sample = {PERSONS_PER_SAMPLE} persons; G = 1e9; forward only unless marked fwd+bwd"
)

#: module categories of the per-module breakdown, in display order
CATEGORIES = ("encoder", "decoder", "target_network", "teacher", "heads", "other")


@dataclass
class FlopReport:
    """FLOPs of one counted call.

    total: all FLOPs of the call. by_module: FLOPs per direct child of the root module (the
    root is the first module entered, e.g. the method), plus ``"(outside modules)"`` for ops run
    by the root itself or by plain functions. samples: samples in the counted batch, so
    ``per_sample(...)`` divides by it.
    """

    total: int
    by_module: dict[str, int] = field(default_factory=dict)
    samples: int = 1
    root: str | None = None
    then_total: int | None = None  # FLOPs of the call and of its ``then`` together (count_flops)

    def per_sample_g(self, flops: int | None = None) -> float:
        """GFLOPs per sample of ``flops`` (default: the total)."""
        value = self.total if flops is None else flops
        return value / self.samples / 1e9

    def by_category(self) -> dict[str, int]:
        """Group ``by_module`` into :data:`CATEGORIES` with :func:`categorize`."""
        out = {c: 0 for c in CATEGORIES}
        for name, flops in self.by_module.items():
            out[categorize(name)] += flops
        return out


def categorize(child: str) -> str:
    """Map a method's child module name to a breakdown category.

    ``encoder`` -> encoder; ``teacher*`` -> teacher (SLiM's EMA network); ``tgn`` / ``target*``
    -> target_network (GFP's TGN); names with ``decoder`` / ``pred`` / ``mask_token`` -> decoder;
    ``*head*`` / ``proj*`` / ``prototype*`` -> heads; anything else -> other.
    """
    name = child.lower()
    if name.startswith("teacher"):
        return "teacher"
    if name.startswith("tgn") or name.startswith("target"):
        return "target_network"
    if name == "encoder" or name.startswith("student") or name == "encoder_norm":
        return "encoder"
    if "decoder" in name or name.startswith("pred") or "mask_token" in name:
        return "decoder"
    if "head" in name or name.startswith("proj") or name.startswith("prototype"):
        return "heads"
    return "other"


def count_flops(fn: Callable[[], object], *, by_module: bool = True, samples: int = 1,
                then: Callable[[object], object] | None = None) -> FlopReport:
    """Run ``fn()`` under FlopCounterMode with the MATH SDPA backend and return its FLOPs.

    ``fn`` may run a forward and (optionally) a backward; the per-module breakdown is only
    meaningful for forward-only calls (module docstring). ``samples`` is the number of samples in
    the batch ``fn`` processes (for per-sample figures). ``then(fn's result)``, if given, runs in the
    same count after the report of ``fn`` is taken (a backward after its forward, without a second
    forward pass): the report covers ``fn`` alone and ``then_total`` both.
    """
    with sdpa_kernel(SDPBackend.MATH):
        counter = FlopCounterMode(display=False, depth=None)
        with counter:
            result = fn()
            total = int(counter.get_total_flops())
            flop_counts = counter.get_flop_counts() if by_module else {}
            if then is not None:
                then(result)
        then_total = int(counter.get_total_flops()) if then is not None else None
    modules: dict[str, int] = {}
    root = None
    if by_module:
        counts = {name: int(sum(ops.values())) for name, ops in flop_counts.items() if name != "Global"}
        roots = [n for n in counts if "." not in n]
        if roots:
            root = max(roots, key=lambda n: counts[n])
            # A child entered through a method other than __call__ (encoder.forward_features) has
            # no entry of its own, only its submodules do: sum the outermost entries per child.
            under = [n for n in counts if n.startswith(root + ".")]
            present = set(under)
            inside = 0
            for name in under:
                parts = name.split(".")
                if any(".".join(parts[:i]) in present for i in range(2, len(parts))):
                    continue  # an ancestor below the root already holds these FLOPs
                modules[parts[1]] = modules.get(parts[1], 0) + counts[name]
                inside += counts[name]
            outside = total - inside
            if outside:
                modules["(outside modules)"] = outside
        elif total:
            modules["(outside modules)"] = total
    return FlopReport(total=total, by_module=modules, samples=samples, root=root, then_total=then_total)


def block_flops(tokens: int, dim: int, mlp_hidden: int, ffn: str = "gelu") -> int:
    """Forward FLOPs of one pre-norm block on one sequence of ``tokens`` tokens (2 FLOPs/MAC).

    qkv 3d^2 + proj d^2 + FFN per token, plus attention scores QK^T and weights x V
    (2 * n^2 * d MACs together; independent of the head count). GELU FFN: 2 * d * h MACs per
    token; SwiGLU: 3 * d * h. spec/gfp.md 2.7: n * 786,432 + 2 * n^2 * 256 MACs at d=256, h=1024.
    """
    ffn_macs = (3 if ffn == "swiglu" else 2) * dim * mlp_hidden
    macs = tokens * (4 * dim * dim + ffn_macs) + 2 * tokens * tokens * dim
    return 2 * macs


def transformer_flops(tokens: int, dim: int, depth: int, mlp_hidden: int, heads: int, ffn: str = "gelu") -> int:
    """Closed-form forward FLOPs of ``depth`` blocks on one sequence (no embeddings, no head).

    ``heads`` must divide ``dim``; it does not change the count (the per-head products add up to
    the full-width ones).
    """
    if dim % heads:
        raise ValueError(f"width {dim} is not divisible by {heads} heads")
    return depth * block_flops(tokens, dim, mlp_hidden, ffn)


def g(flops: float) -> float:
    """FLOPs -> GFLOPs (1e9)."""
    return flops / 1e9
