"""Evaluation recipes: each paper's downstream protocol as a typed settings class with a name.

A recipe is a strict pydantic model (unknown or wrong fields fail at parse time naming the field)
plus three class attributes: ``name`` (what ``--recipe`` takes and every result JSON records),
``protocol`` (``linear`` | ``knn`` | ``retrieval`` | ``finetune``) and ``sources`` (the official files
its values come from). Field defaults are the official values; ``--set field=value`` changes one,
and the result JSON then says which were changed (:meth:`Recipe.describe`).

| protocol  | recipes                  | default                                          |
|-----------|--------------------------|--------------------------------------------------|
| linear    | ``mamp``, ``slim``, ``sklearn`` | the checkpoint's paper: slim -> slim, others -> mamp |
| knn       | ``skel``, ``slim``       | slim -> slim, others -> skel                     |
| retrieval | ``skel``, ``slim``       | slim -> slim, others -> skel                     |
| finetune  | ``mamp``, ``slim``       | slim -> slim, others -> mamp                     |

MAE and GFP have no released evaluation code; GFP evaluates on the MAMP code base (spec/gfp.md 5), so
both take MAMP's recipes. Citation keys as in spec/protocols-and-checkpoints.md: [S path] =
KAIST-VICLab/SLiM at 2b8bb41, [M path] = maoyunyao/MAMP at 09e6252.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationError

from skelcli.errors import SkelError
from skelcli.settings import StrictModel, merge_overrides, to_jsonable


class Recipe(StrictModel):
    """Base of every recipe; see the module docstring."""

    name: ClassVar[str] = ""
    protocol: ClassVar[str] = ""
    sources: ClassVar[tuple[str, ...]] = ()

    def describe(self) -> dict[str, Any]:
        """JSON-ready ``{"name", "protocol", "sources", "settings", "changed"}``; ``changed`` lists the
        fields that differ from the official defaults."""
        settings = to_jsonable(self)
        defaults = to_jsonable(type(self)())
        changed = sorted(k for k in settings if settings[k] != defaults[k])
        return {"name": self.name, "protocol": self.protocol, "sources": list(self.sources), "settings": settings,
                "changed": changed}

    def label(self) -> str:
        """``name`` plus the changed fields, e.g. ``slim (iterations set by hand)``."""
        changed = self.describe()["changed"]
        return self.name + (f" ({', '.join(changed)} set by hand)" if changed else "")


# ----------------------------------------------------------------------------------- linear
class SklearnLinearRecipe(Recipe):
    """Our fast, deterministic probe (not a paper's): StandardScaler + LogisticRegression (lbfgs) on
    centre-crop features of the frozen encoder."""

    name: ClassVar[str] = "sklearn"
    protocol: ClassVar[str] = "linear"
    sources: ClassVar[tuple[str, ...]] = ("skelcli (scikit-learn LogisticRegression)",)

    max_iter: int = Field(1000, ge=1)
    C: float = Field(1.0, gt=0)


#: MAMP's linear-probe (lr, global batch) per dataset: config/*/linprobe_t120_layer8.yaml run by
#: script_linprobe.sh on 2 GPUs (spec/protocols-and-checkpoints.md 3.1). Absolute lrs, no batch scaling.
MAMP_LINEAR = {"ntu60": (0.1, 256), "ntu120": (0.1, 256), "pku-mmd-v1": (0.1, 128), "pku-mmd-v2": (0.01, 32)}
MAMP_LINEAR_DEFAULT = (0.1, 256)


class MampLinearRecipe(Recipe):
    """MAMP's linear probe [M main_linprobe.py, engine_linprobe.py, config/*/linprobe_t120_layer8.yaml,
    script_linprobe.sh]: frozen encoder in eval mode, feature = mean over persons (padded ones
    included), segments and joints of the final-norm tokens; head BatchNorm1d(affine=False, eps 1e-6) +
    Linear (trunc-normal 0.01); SGD momentum 0.9, wd 0; per-iteration half-cosine to 0, no warmup;
    100 epochs; ``drop_last``; every epoch the training clips are re-augmented (crop 0.5-1 of at least
    64 frames, rotation 0.3 rad) and re-encoded; test view = centre crop 0.95. Reported: the best epoch
    on the test split (``max_accuracy``).

    ``lr`` / ``batch_size`` None = the dataset's official values (:data:`MAMP_LINEAR`)."""

    name: ClassVar[str] = "mamp"
    protocol: ClassVar[str] = "linear"
    sources: ClassVar[tuple[str, ...]] = ("maoyunyao/MAMP main_linprobe.py", "maoyunyao/MAMP config/*/linprobe_t120_layer8.yaml",
                                          "maoyunyao/MAMP script_linprobe.sh")

    epochs: int = Field(100, ge=1)
    lr: float | None = Field(None, gt=0, description="None = the dataset's (NTU / PKU-I 0.1, PKU-II 0.01)")
    batch_size: int | None = Field(None, ge=2, description="global batch; None = the dataset's (NTU 256, PKU-I 128, PKU-II 32)")
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    min_lr: float = Field(0.0, ge=0)
    person_pool: Literal["mean", "mean_valid", "concat"] = "mean"
    crop_min: float = Field(0.5, gt=0, le=1)
    crop_max: float = Field(1.0, gt=0, le=1)
    min_crop_frames: int = Field(64, ge=1)
    rotation: float = Field(0.3, ge=0)
    test_crop: float = Field(0.95, gt=0, le=1)

    def resolved(self, dataset: str) -> tuple[float, int]:
        """(lr, global batch) for ``dataset``: the set values, else MAMP's for that dataset (NTU's for others)."""
        lr, batch = MAMP_LINEAR.get(dataset, MAMP_LINEAR_DEFAULT)
        return (self.lr if self.lr is not None else lr, self.batch_size if self.batch_size is not None else batch)


#: SLiM's linear-probe learning-rate list [S slim/eval/linear.py, --learning-rates default].
SLIM_LINEAR_LRS = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1)


class SlimDownstreamView(Recipe):
    """The view fields every SLiM downstream recipe shares [S slim/data/augmentations.py
    DownstreamAugmentation, slim/data/datasets/ntu.py]: train view = ping-pong buffer to
    ``pad_min_frames``, crop p ~ U[crop_min, crop_max] of the valid frames (at least
    ``min_crop_frames``) resampled to ``frames``, then mirror / bone-aware scaling / rotation (tilt on
    x and z, yaw on y) / Gaussian noise, each with its probability; test view = the official frame
    selection (:func:`skelcli.eval.slim_eval.slim_test_view`)."""

    frames: int | None = Field(None, ge=1, description="view length; None = the encoder's input length (64 for SLiM's encoder)")
    crop_min: float = Field(0.5, gt=0, le=1)
    crop_max: float = Field(1.0, gt=0, le=1)
    min_crop_frames: int = Field(16, ge=1)
    pad_min_frames: int = Field(150, ge=0)
    mirror_p: float = Field(0.5, ge=0, le=1)
    scale_p: float = Field(0.5, ge=0, le=1)
    scale_range: tuple[float, float] = (0.85, 1.15)
    scale_mode: Literal["official", "kinematic"] = "official"
    rotate_p: float = Field(0.5, ge=0, le=1)
    tilt: float = Field(0.3, ge=0)
    yaw: float = Field(math.pi, ge=0)
    noise_sigma: float = Field(0.01, ge=0)
    noise_p: float = Field(0.5, ge=0, le=1)
    precision: Literal["fp16", "fp32"] = Field("fp16", description="encoder autocast on CUDA (teacher param_dtype); CPU runs fp32")


class SlimLinearRecipe(SlimDownstreamView):
    """SLiM's linear evaluation [S slim/eval/linear.py, scripts/eval_linear.sh,
    slim/configs/eval/slim_eval.yaml, slim/data/augmentations.py DownstreamAugmentation]
    (spec/protocols-and-checkpoints.md 1): a grid of linear heads trained together on the frozen
    teacher's features, over ``n_last_blocks`` x ``avgpool`` x ``learning_rates``.

    Features per block: the final-norm CLS summed over non-empty persons; with avgpool the token mean of
    the last block's patch tokens (person sum) is appended. Heads: Linear, weight N(0, 0.01), bias 0,
    plain cross-entropy summed over heads; SGD momentum 0.9, wd 0, one group per head at
    ``lr * batch_size / 256``; cosine to 0 over ``iterations``, no warmup; shuffled infinite sampler with
    drop_last. Train view: DownstreamAugmentation (crop 0.5-1, >= 16 frames, to 64; mirror, bone-aware
    scaling 0.85-1.15, rotation tilt 0.3 / yaw pi, noise 0.01, each p 0.5); test view: the official
    frame selection. The official heads live in a dict keyed by the scaled lr printed with 5 decimals,
    so at batch 64 two lrs collide and 48 of the 52 heads train (``official_key_collision``).

    Reported: the best head on the **test** split at the final evaluation (the paper's choice), and the
    head chosen on ``val_fraction`` of the training clips carved out (our addition, independent of the
    test split)."""

    name: ClassVar[str] = "slim"
    protocol: ClassVar[str] = "linear"
    sources: ClassVar[tuple[str, ...]] = ("KAIST-VICLab/SLiM slim/eval/linear.py", "KAIST-VICLab/SLiM scripts/eval_linear.sh",
                                          "KAIST-VICLab/SLiM slim/configs/eval/slim_eval.yaml",
                                          "KAIST-VICLab/SLiM slim/data/augmentations.py")

    learning_rates: tuple[float, ...] = SLIM_LINEAR_LRS
    n_last_blocks: tuple[int, ...] = (1, 4)
    avgpool: tuple[bool, ...] = (False, True)
    batch_size: int = Field(64, ge=1, description="global batch: 16 per GPU x 4 GPUs (scripts/eval_linear.sh)")
    lr_base_batch: int = Field(256, ge=1, description="lr is scaled by batch_size / lr_base_batch (linear.py scale_lr)")
    iterations: int = Field(20_000, ge=1, description="10 'epochs' x epoch_length 2000")
    eval_every: int = Field(2_000, ge=1)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    head_init_std: float = Field(0.01, gt=0)
    official_key_collision: bool = Field(True, description="train only the heads whose official key is unique (48 at batch 64)")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="training clips carved out to choose a head without the test split")


# -------------------------------------------------------------------------------------- kNN
class SkelKnnRecipe(Recipe):
    """Our kNN probe: distance-weighted cosine KNeighborsClassifier on L2-normalised centre-crop
    features (the method's person pooling)."""

    name: ClassVar[str] = "skel"
    protocol: ClassVar[str] = "knn"
    sources: ClassVar[tuple[str, ...]] = ("skelcli (scikit-learn KNeighborsClassifier)",)

    k: int = Field(20, ge=1)


class SlimKnnRecipe(Recipe):
    """SLiM's k-NN [S slim/eval/knn.py, scripts/eval_knn.sh] (spec/protocols-and-checkpoints.md 2.1):
    gallery = train split, queries = test split, both in the official test view; last block only,
    per person [CLS_p0, CLS_p1, meanpatch_p0, meanpatch_p1] with empty persons zeroed, L2-normalised;
    dot-product similarity; the ``max_k`` nearest weighted by softmax(sim / ``temperature``); class
    score for k = sum of the first k weights per class. Reported: k = ``report_k`` (1, "Table 2b")."""

    name: ClassVar[str] = "slim"
    protocol: ClassVar[str] = "knn"
    sources: ClassVar[tuple[str, ...]] = ("KAIST-VICLab/SLiM slim/eval/knn.py", "KAIST-VICLab/SLiM scripts/eval_knn.sh")

    ks: tuple[int, ...] = (1, 10, 20, 100, 200)
    report_k: int = Field(1, ge=1)
    temperature: float = Field(0.07, gt=0)
    batch_size: int = Field(256, ge=1)
    frames: int | None = Field(None, ge=1, description="view length; None = the encoder's input length (64 for SLiM's encoder)")
    precision: Literal["fp16", "fp32"] = "fp16"


# -------------------------------------------------------------------------------- retrieval
class SkelRetrievalRecipe(Recipe):
    """Action retrieval as CMD / ISC report it (spec/mamp-and-data.md H): gallery = train split, queries =
    test split, cosine 1-NN top-1 on centre-crop features, plus mAP and precision@k."""

    name: ClassVar[str] = "skel"
    protocol: ClassVar[str] = "retrieval"
    sources: ClassVar[tuple[str, ...]] = ("Mikexu007/CMD action_retrieval_cmd.py", "fmthoker/skeleton-contrast action_retrieval.py")

    k: int = Field(1, ge=1)
    precision_k: tuple[int, ...] = (1, 5, 10)


class SlimRetrievalRecipe(SlimKnnRecipe):
    """SLiM's retrieval number is its k-NN at k = 1 (scripts/eval_knn.sh, "Table 2b"): the
    :class:`SlimKnnRecipe` features and vote, plus mAP and precision@k on the same features."""

    protocol: ClassVar[str] = "retrieval"

    precision_k: tuple[int, ...] = (1, 5, 10)


# ------------------------------------------------------------------------------------ registry
RECIPES: dict[str, dict[str, type[Recipe]]] = {
    "linear": {"mamp": MampLinearRecipe, "slim": SlimLinearRecipe, "sklearn": SklearnLinearRecipe},
    "knn": {"skel": SkelKnnRecipe, "slim": SlimKnnRecipe},
    "retrieval": {"skel": SkelRetrievalRecipe, "slim": SlimRetrievalRecipe},
}


def register_recipe(cls: type[Recipe]) -> type[Recipe]:
    """Add a recipe class under (its protocol, its name); returns the class (usable as a decorator)."""
    RECIPES.setdefault(cls.protocol, {})[cls.name] = cls
    return cls


def default_recipe_name(protocol: str, method: str | None) -> str:
    """The paper recipe of the checkpoint's method: SLiM checkpoints take SLiM's, every other method
    (MAE, MAMP, GFP, random encoders of their shape) MAMP's, or ``skel`` where MAMP has none (kNN,
    retrieval)."""
    names = RECIPES.get(protocol, {})
    if (method or "").startswith("slim") and "slim" in names:
        return "slim"
    return "mamp" if "mamp" in names else "skel"


def get_recipe(protocol: str, name: str | None, method: str | None = None, overrides: list[str] | None = None,
               base: dict[str, Any] | None = None) -> Recipe:
    """Build a recipe: ``name`` (None = :func:`default_recipe_name` for ``method``), then ``base`` values,
    then ``--set field=value`` ``overrides``. Unknown names and bad fields are one-line SkelErrors
    naming the recipe and the field."""
    names = RECIPES.get(protocol)
    if not names:
        raise SkelError(f"no recipes for protocol {protocol!r}; available: {', '.join(RECIPES)}")
    name = name or default_recipe_name(protocol, method)
    if name not in names:
        raise SkelError(f"unknown --recipe {name!r} for {protocol}; available: {', '.join(names)}")
    cls = names[name]
    values = merge_overrides(dict(base or {}), overrides)
    nested = [k for k, v in values.items() if isinstance(v, dict)]
    if nested:
        raise SkelError(f"recipe {name}: --set takes a field of the recipe (e.g. --set iterations=200), got {nested[0]}.*")
    try:
        return cls(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "?"
        raise SkelError(f"recipe {name} ({protocol}): {field}: {err['msg']}") from None


def recipe_names(protocol: str) -> list[str]:
    return list(RECIPES.get(protocol, {}))


# --------------------------------------------------------------------------------- finetune
class MampFinetuneRecipe(Recipe):
    """MAMP's fine-tuning [M main_finetune.py, engine_finetune.py, util/lr_decay.py,
    config/*/finetune_t120_layer8_decay.yaml, script_finetune.sh] (spec/protocols-and-checkpoints.md
    3.2), also its semi-supervised runs [M config/ntu60_*/semi_*.yaml, script_semi.sh] (3.3): drop path
    0.3, head dropout 0.3 (MAMP head, hidden 2048), layer-wise lr decay 0.8, label smoothing 0.1, AdamW
    (0.9, 0.999) wd 0.05 without decay on 1-D parameters, lr 3e-4 -> 1e-5 per-iteration half-cosine
    after 5 linear warmup epochs, 100 epochs, global batch 48 (24 per GPU x 2); train view = crop 0.5-1
    of at least 64 frames + rotation 0.3 rad, test view = centre crop 0.95. Reported: the best epoch on
    the test split (``max_accuracy``). These are the recipe fields of
    :class:`skelcli.eval.finetune.FinetuneSettings` (same names and defaults); ``--preset small``
    changes them as there."""

    name: ClassVar[str] = "mamp"
    protocol: ClassVar[str] = "finetune"
    sources: ClassVar[tuple[str, ...]] = ("maoyunyao/MAMP main_finetune.py", "maoyunyao/MAMP util/lr_decay.py",
                                          "maoyunyao/MAMP config/*/finetune_t120_layer8_decay.yaml",
                                          "maoyunyao/MAMP script_finetune.sh", "maoyunyao/MAMP script_semi.sh")

    epochs: int = Field(100, ge=1)
    batch_size: int = Field(48, ge=2)
    lr: float = Field(3e-4, gt=0)
    min_lr: float = Field(1e-5, ge=0)
    warmup_epochs: float = Field(5, ge=0)
    weight_decay: float = Field(0.05, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    layer_decay: float = Field(0.8, gt=0, le=1)
    drop_path: float = Field(0.3, ge=0, lt=1)
    head_dropout: float = Field(0.3, ge=0, lt=1)
    head_hidden: int = Field(2048, ge=1)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    crop_min: float = Field(0.5, gt=0, le=1)
    crop_max: float = Field(1.0, gt=0, le=1)
    min_crop_frames: int = Field(64, ge=1)
    rotation: float = Field(0.3, ge=0)
    test_crop: float = Field(0.95, gt=0, le=1)


class SlimFinetuneRecipe(SlimDownstreamView):
    """SLiM's semi-supervised evaluation (end-to-end fine-tuning) [S slim/eval/finetune.py,
    scripts/eval_semi.sh, slim/data/datasets/ntu.py, slim/configs/eval/slim_eval.yaml]
    (spec/protocols-and-checkpoints.md 2.2):

    * model: the whole teacher encoder trainable, drop path 0 (slim_eval.yaml ``drop_path_rate: 0.0``);
      one ``LinearClassifier`` (finetune.py ``setup_finetune_classifier``: ``n_blocks = 1``,
      ``avgpool = True``) on the last block's final-norm CLS summed over non-empty persons concatenated
      with the token mean of the last block's patch tokens (person sum): 2·D inputs; weight N(0, 0.01),
      bias 0 (``LinearClassifier.__init__``); plain cross-entropy;
    * optimiser: ``torch.optim.SGD`` momentum 0.9, weight decay 1e-4 on every parameter, two groups:
      backbone lr 1e-5 and head lr 1e-3 (eval_semi.sh ``--backbone-lr 1e-5 --head-lr 1e-3``), both
      × batch·world/256 (``scale_lr``); global batch 256 = 128 per GPU (finetune.py default
      ``batch_size=128``) × 2 GPUs (eval_semi.sh default ``GPUS=0,1``), so the factor is 1;
    * schedule: ``CosineAnnealingLR(max_iter, eta_min=0)`` stepped every iteration, no warmup,
      max_iter = epochs 10 × epoch_length 2000 = 20,000; evaluation on the test split every 2000
      iterations (``eval_period_iterations``) and once at the end;
    * precision: fp16 autocast around the encoder only (``FinetuneModelWrapper``; the head input is
      cast ``.float()``), **no** GradScaler; fp32 on a CPU;
    * views: train = DownstreamAugmentation(split='train'), test = its official frame selection;
    * subset: class-balanced, the official ``np.random.seed(42)`` draw (ntu.py ``NTU_Classification``),
      :func:`skelcli.eval.finetune.slim_subset`;
    * reported: top-1 of the single head at the **final** evaluation (the function's return value);
      the best evaluation is kept for reference only (it is selected on the test split).

    Differences (ours): under torchrun the whole model is DDP-wrapped, so backbone gradients are
    all-reduced (the official code wraps only the head, so each rank's encoder drifts on its own shard)."""

    name: ClassVar[str] = "slim"
    protocol: ClassVar[str] = "finetune"
    sources: ClassVar[tuple[str, ...]] = ("KAIST-VICLab/SLiM slim/eval/finetune.py", "KAIST-VICLab/SLiM scripts/eval_semi.sh",
                                          "KAIST-VICLab/SLiM slim/data/datasets/ntu.py",
                                          "KAIST-VICLab/SLiM slim/configs/eval/slim_eval.yaml",
                                          "KAIST-VICLab/SLiM slim/data/augmentations.py")

    batch_size: int = Field(256, ge=1, description="global batch: 128 per GPU x 2 GPUs (scripts/eval_semi.sh)")
    lr_base_batch: int = Field(256, ge=1, description="both lrs are scaled by batch_size / lr_base_batch (finetune.py scale_lr)")
    backbone_lr: float = Field(1e-5, gt=0)
    head_lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    min_lr: float = Field(0.0, ge=0, description="cosine floor as a fraction of each group's lr (eta_min 0)")
    iterations: int = Field(20_000, ge=1, description="10 'epochs' x epoch_length 2000")
    eval_every: int = Field(2_000, ge=1)
    n_last_blocks: int = Field(1, ge=1, description="CLS of the last n blocks go into the head")
    avgpool: bool = Field(True, description="append the last block's patch-token mean")
    head_init_std: float = Field(0.01, gt=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    drop_path: float = Field(0.0, ge=0, lt=1)
    subset_seed: int = Field(42, description="seed of the class-balanced label subset (ntu.py NTU_Classification seed=42)")

    def scaled_lrs(self) -> tuple[float, float]:
        """(backbone lr, head lr) after ``scale_lr``: lr * batch_size / lr_base_batch."""
        f = self.batch_size / self.lr_base_batch
        return self.backbone_lr * f, self.head_lr * f


register_recipe(MampFinetuneRecipe)
register_recipe(SlimFinetuneRecipe)
