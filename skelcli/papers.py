"""The published numbers ``skel reproduce`` compares against: one table, every number with its source.

A cell is keyed by (paper, table, dataset, split, variant):

* ``paper``: ``mamp`` | ``gfp`` | ``slim``;
* ``table``: ``linear`` | ``semi`` | ``finetune`` | ``transfer`` | ``retrieval`` (:data:`TABLES`);
* ``dataset``: the ``dataset`` attribute of a prepared file (``ntu60``, ``ntu120``, ``pku-mmd-v1``,
  ``pku-mmd-v2``); for ``transfer`` the dataset fine-tuned on;
* ``split``: ``xsub`` | ``xview`` | ``xset``;
* ``variant``: ``""``, the label fraction for ``semi`` (``"0.01"``, ``"0.1"``), ``"from <dataset>"``
  (the pretraining data) for ``transfer``.

``value`` is top-1 in percent, or None where the number is not known (``note`` says why).
``verified`` is True only when the number was read in the paper's own table or in its authors' official
release (repository README, model card); numbers recalled from memory, taken from AI-written paper notes
or aggregators, or quoted by another paper are ``verified=False`` even where several such sources agree.
``release`` is the number of the authors' released checkpoints where their README gives one (not the
paper's number). ``source`` names the spec section (``spec/...`` = /work/shared/spec in the project
notes) and the original source named there.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

TABLES = ("linear", "semi", "finetune", "transfer", "retrieval")

DATASET_NAMES = {"ntu60": "NTU-60", "ntu120": "NTU-120", "pku-mmd-v1": "PKU-MMD I", "pku-mmd-v2": "PKU-MMD II"}


@dataclass(frozen=True)
class Paper:
    name: str
    title: str
    reference: str
    #: The tables the paper reports (the default of ``skel reproduce --table``).
    tables: tuple[str, ...]
    #: Per table: which of our numbers is the paper's (how the paper picks its reported value).
    reported: dict[str, str]


PAPERS: dict[str, Paper] = {
    "mamp": Paper(
        "mamp", "MAMP: Masked Motion Prediction for self-supervised 3D action representation learning",
        "ICCV 2023; code maoyunyao/MAMP",
        ("linear", "finetune", "semi", "transfer"),
        {"linear": "best epoch on the test split (MAMP's max_accuracy)",
         "finetune": "best epoch on the test split, mean over repeats",
         "semi": "best epoch on the test split, mean over repeats (MAMP's script_semi.sh runs 5)",
         "transfer": "best epoch on the test split of the target data",
         "retrieval": "cosine 1-NN top-1 (CMD / ISC protocol; MAMP reports no retrieval)"},
    ),
    "gfp": Paper(
        "gfp", "GFP: Towards Efficient General Feature Prediction in Masked Skeleton Modeling",
        "ICCV 2025, arXiv 2509.03609; no official code (evaluated with MAMP's recipes)",
        ("linear", "semi", "finetune", "transfer", "retrieval"),
        {"linear": "best epoch on the test split (MAMP's recipe, which GFP reuses)",
         "finetune": "best epoch on the test split, mean over repeats (MAMP's recipe)",
         "semi": "best epoch on the test split, mean over repeats (MAMP's recipe)",
         "transfer": "best epoch on the test split of the target data (MAMP's recipe)",
         "retrieval": "cosine 1-NN top-1 (CMD / ISC protocol; GFP's exact k and metric are unknown)"},
    ),
    "slim": Paper(
        "slim", "SLiM: Less is More, masked feature learning for skeleton representation learning",
        "arXiv 2603.10648; code KAIST-VICLab/SLiM",
        ("linear", "semi", "retrieval"),
        {"linear": "best head of the grid on the test split at the final evaluation (SLiM linear.py)",
         "semi": "top-1 of the single head at the final test evaluation (SLiM finetune.py)",
         "retrieval": "k-NN top-1 at k = 1 (SLiM scripts/eval_knn.sh, 'Table 2b')",
         "finetune": "SLiM's fine-tuning recipe on all labels (no official full fine-tune protocol)",
         "transfer": "SLiM's fine-tuning recipe on the target data (no official transfer protocol)"},
    ),
}


@dataclass(frozen=True)
class Published:
    """One published number (or the record that it is unknown)."""

    paper: str
    table: str
    dataset: str
    split: str
    variant: str
    value: float | None
    verified: bool
    source: str
    note: str = ""
    release: float | None = None
    release_source: str = ""

    @property
    def key(self) -> tuple[str, str, str, str, str]:
        return (self.paper, self.table, self.dataset, self.split, self.variant)

    @property
    def status(self) -> str:
        """``published`` (a number), ``unknown`` (the paper reports the table, the number was not
        retrievable) or ``not published`` (no source says the paper has this cell)."""
        if self.value is not None:
            return "published"
        return "unknown" if self.table in PAPERS[self.paper].tables else "not published"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status}


# --------------------------------------------------------------------------------------------- sources
_SLIM_MAIN = ("spec/slim.md 6.1; SLiM project page main table [P] (KAIST-VICLab/kaist-viclab.github.io "
              "SLiM_site/static/image/main_table.png)")
_SLIM_README = "spec/slim.md 6.1; KAIST-VICLab/SLiM README [C] and model card JeonghyeokDo/SLiM [H] (released probes)"
_SLIM_OTHER = "spec/slim.md 6.2 (paper tables 2a/2b not retrievable)"
_SLIM_KNN_README = "spec/slim.md 6.2; KAIST-VICLab/SLiM README [C] (k-NN of the released encoders)"
_GFP_LINEAR = "spec/gfp.md 5.2; papernotes [PN] transcription of the GFP tables, confirmed by wizwand [WZ] and the AMR note [AMR]"
_GFP_SEMI = "spec/gfp.md 5.3; papernotes [PN]"
_GFP_RETR = "spec/gfp.md 5.4; papernotes [PN]"
_GFP_NONE = "spec/gfp.md 5.5 (no reachable source quotes GFP's fine-tune or transfer numbers)"
_MAMP_MEMORY = "spec/mamp-and-data.md J (paper values recalled from memory, UNVERIFIED)"
_MAMP_README = "spec/mamp-and-data.md J; maoyunyao/MAMP README 'latest pretrained models'"
_MAMP_QUOTED_LIN = ("spec/slim.md 6.1 and spec/gfp.md 5.2: MAMP's row in SLiM's comparison table [P] and in GFP's [PN] "
                    "(not checked against the MAMP paper)")
_MAMP_QUOTED_SEMI = "spec/gfp.md 5.3: MAMP's row in GFP's semi-supervised table [PN] (not checked against the MAMP paper)"
_MAMP_TRANSFER = "spec/mamp-and-data.md C.4 and spec/protocols-and-checkpoints.md 3.4 (protocol only; the paper's numbers were not retrieved)"

_NOT_CHECKED_GFP = "not checked against the GFP PDF; SLiM's comparison table [P] lists the same value"
_CORROBORATED = "the same value is in SLiM's comparison table [P] (spec/slim.md 6.1, spec/ecosystem.md 2)"


def _row(paper: str, table: str, dataset: str, split: str, variant: str, value: float | None, verified: bool, source: str,
         note: str = "", release: float | None = None, release_source: str = "") -> Published:
    return Published(paper, table, dataset, split, variant, value, verified, source, note, release, release_source)


PUBLISHED: tuple[Published, ...] = (
    # ------------------------------------------------------------------------------------------ SLiM
    _row("slim", "linear", "ntu60", "xsub", "", 87.9, True, _SLIM_MAIN, "also listed by wizwand [W]", 87.88, _SLIM_README),
    _row("slim", "linear", "ntu60", "xview", "", 93.2, True, _SLIM_MAIN, "also listed by wizwand [W]", 93.24, _SLIM_README),
    _row("slim", "linear", "ntu120", "xsub", "", 81.2, True, _SLIM_MAIN, "also listed by wizwand [W]"),
    _row("slim", "linear", "ntu120", "xset", "", 83.6, True, _SLIM_MAIN, "also listed by wizwand [W]"),
    _row("slim", "linear", "pku-mmd-v2", "xsub", "", 59.7, True, _SLIM_MAIN, "PKU-MMD II; no PKU-MMD I number in the table"),
    _row("slim", "semi", "ntu60", "xsub", "0.01", None, False, _SLIM_OTHER, "SLiM's semi-supervised table was not retrievable"),
    _row("slim", "semi", "ntu60", "xsub", "0.1", None, False, _SLIM_OTHER,
         "not retrievable; an aggregator value of 88.8 could not be verified"),
    _row("slim", "semi", "ntu60", "xview", "0.01", None, False, _SLIM_OTHER, "SLiM's semi-supervised table was not retrievable"),
    _row("slim", "semi", "ntu60", "xview", "0.1", None, False, _SLIM_OTHER, "SLiM's semi-supervised table was not retrievable"),
    _row("slim", "retrieval", "ntu60", "xsub", "", None, False, _SLIM_OTHER, "SLiM's retrieval table was not retrievable",
         72.3, _SLIM_KNN_README),
    _row("slim", "retrieval", "ntu60", "xview", "", None, False, _SLIM_OTHER,
         "not retrievable; a quoted 89.9 could not be verified", 89.8, _SLIM_KNN_README),
    # ------------------------------------------------------------------------------------------ GFP
    _row("gfp", "linear", "ntu60", "xsub", "", 85.9, False, _GFP_LINEAR, _NOT_CHECKED_GFP),
    _row("gfp", "linear", "ntu60", "xview", "", 92.0, False, _GFP_LINEAR, _NOT_CHECKED_GFP),
    _row("gfp", "linear", "ntu120", "xsub", "", 79.1, False, _GFP_LINEAR, _NOT_CHECKED_GFP + " (below S-JEPA's 79.6)"),
    _row("gfp", "linear", "ntu120", "xset", "", 80.3, False, _GFP_LINEAR, _NOT_CHECKED_GFP),
    _row("gfp", "linear", "pku-mmd-v2", "xsub", "", 56.2, False, _GFP_LINEAR, _NOT_CHECKED_GFP),
    _row("gfp", "semi", "ntu60", "xsub", "0.01", 71.8, False, _GFP_SEMI, "AI-written paper note; not checked against the PDF"),
    _row("gfp", "semi", "ntu60", "xsub", "0.1", 88.7, False, _GFP_SEMI, "also listed by wizwand [WZ]; not checked against the PDF"),
    _row("gfp", "semi", "ntu60", "xview", "0.01", 72.9, False, _GFP_SEMI, "AI-written paper note; not checked against the PDF"),
    _row("gfp", "semi", "ntu60", "xview", "0.1", 92.1, False, _GFP_SEMI, "AI-written paper note; not checked against the PDF"),
    _row("gfp", "retrieval", "ntu60", "xview", "", 87.1, False, _GFP_RETR,
         "GFP's k and metric are unknown (MAMP measured at 70.0 in the same table)"),
    _row("gfp", "finetune", "ntu60", "xsub", "", None, False, _GFP_NONE, "no reachable source quotes it"),
    _row("gfp", "finetune", "ntu60", "xview", "", None, False, _GFP_NONE, "no reachable source quotes it"),
    _row("gfp", "finetune", "ntu120", "xsub", "", None, False, _GFP_NONE, "no reachable source quotes it"),
    _row("gfp", "finetune", "ntu120", "xset", "", None, False, _GFP_NONE, "no reachable source quotes it"),
    _row("gfp", "transfer", "pku-mmd-v2", "xsub", "from ntu60", None, False, _GFP_NONE, "no reachable source quotes it"),
    _row("gfp", "transfer", "pku-mmd-v2", "xsub", "from ntu120", None, False, _GFP_NONE, "no reachable source quotes it"),
    _row("gfp", "transfer", "pku-mmd-v2", "xsub", "from pku-mmd-v1", None, False, _GFP_NONE, "no reachable source quotes it"),
    # ------------------------------------------------------------------------------------------ MAMP
    _row("mamp", "linear", "ntu60", "xsub", "", 84.9, False, _MAMP_MEMORY, _CORROBORATED, 85.0, _MAMP_README),
    _row("mamp", "linear", "ntu60", "xview", "", 89.1, False, _MAMP_MEMORY, _CORROBORATED, 89.0, _MAMP_README),
    _row("mamp", "linear", "ntu120", "xsub", "", 78.6, False, _MAMP_MEMORY, _CORROBORATED, 78.1, _MAMP_README),
    _row("mamp", "linear", "ntu120", "xset", "", 79.1, False, _MAMP_MEMORY, _CORROBORATED, 79.5, _MAMP_README),
    _row("mamp", "linear", "pku-mmd-v2", "xsub", "", 53.8, False, _MAMP_QUOTED_LIN, "quoted by SLiM and GFP, not read in the MAMP paper"),
    _row("mamp", "finetune", "ntu60", "xsub", "", 93.1, False, _MAMP_MEMORY, "", 93.0, _MAMP_README),
    _row("mamp", "finetune", "ntu60", "xview", "", 97.5, False, _MAMP_MEMORY, "", 97.5, _MAMP_README),
    _row("mamp", "finetune", "ntu120", "xsub", "", 90.0, False, _MAMP_MEMORY, "", 89.8, _MAMP_README),
    _row("mamp", "finetune", "ntu120", "xset", "", 91.3, False, _MAMP_MEMORY, "", 91.5, _MAMP_README),
    _row("mamp", "semi", "ntu60", "xsub", "0.01", 66.0, False, _MAMP_QUOTED_SEMI, "quoted by GFP"),
    _row("mamp", "semi", "ntu60", "xsub", "0.1", 88.0, False, _MAMP_QUOTED_SEMI, "quoted by GFP"),
    _row("mamp", "semi", "ntu60", "xview", "0.01", 68.7, False, _MAMP_QUOTED_SEMI, "quoted by GFP"),
    _row("mamp", "semi", "ntu60", "xview", "0.1", 91.5, False, _MAMP_QUOTED_SEMI, "quoted by GFP"),
    _row("mamp", "transfer", "pku-mmd-v2", "xsub", "from ntu60", None, False, _MAMP_TRANSFER, "the paper's number was not retrieved"),
    _row("mamp", "transfer", "pku-mmd-v2", "xsub", "from ntu120", None, False, _MAMP_TRANSFER, "the paper's number was not retrieved"),
    _row("mamp", "transfer", "pku-mmd-v2", "xsub", "from pku-mmd-v1", None, False, _MAMP_TRANSFER,
         "the paper's number was not retrieved"),
)

_INDEX: dict[tuple[str, str, str, str, str], Published] = {p.key: p for p in PUBLISHED}
assert len(_INDEX) == len(PUBLISHED), "duplicate cell in PUBLISHED"

#: Why a cell that is not in :data:`PUBLISHED` has no paper number, per (paper, table).
_ABSENT = {
    ("mamp", "retrieval"): ("spec/mamp-and-data.md H; spec/gfp.md 5.4",
                            "MAMP reports no retrieval (GFP [PN] measured MAMP at 70.0 on NTU-60 xview)"),
    ("slim", "finetune"): ("spec/slim.md 6.2; spec/protocols-and-checkpoints.md 2.3",
                           "no full fine-tune table found and no such script in the SLiM code; whether the paper has one is unknown"),
    ("slim", "transfer"): ("spec/slim.md 6.2; spec/protocols-and-checkpoints.md 2.3",
                           "no transfer table found and no such script in the SLiM code; whether the paper has one is unknown"),
    ("gfp", "retrieval"): (_GFP_RETR, "only NTU-60 xview is known"),
    ("gfp", "linear"): (_GFP_LINEAR, "no such cell in the table (PKU-MMD I linear is unknown)"),
    ("mamp", "linear"): (_MAMP_MEMORY, "no such cell known"),
    ("slim", "linear"): (_SLIM_MAIN, "no such cell in the table (no PKU-MMD I number)"),
    ("slim", "retrieval"): (_SLIM_OTHER, "only NTU-60 k-NN numbers of the released encoders are known"),
}


def lookup(paper: str, table: str, dataset: str, split: str, variant: str = "") -> Published:
    """The published cell, or a ``value=None`` record whose ``note`` says why there is no number."""
    hit = _INDEX.get((paper, table, dataset, split, variant))
    if hit is not None:
        return hit
    source, note = _ABSENT.get((paper, table), (
        {"mamp": "spec/mamp-and-data.md J, C", "gfp": "spec/gfp.md 5", "slim": "spec/slim.md 6"}.get(paper, "-"),
        "no source gives this cell"))
    return Published(paper, table, dataset, split, variant, None, False, source, note)


def paper_text(cell: Published) -> str:
    """The paper column of the report: ``87.9``, ``87.9 (unverified)``, ``unknown`` or ``not published``."""
    if cell.value is None:
        return cell.status
    return f"{cell.value:.1f}" + ("" if cell.verified else " (unverified)")


def cells_of(paper: str) -> list[Published]:
    return [p for p in PUBLISHED if p.paper == paper]
