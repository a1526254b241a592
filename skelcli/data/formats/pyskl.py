"""``pyskl``: the pyskl / mmaction2 skeleton annotation pickle (spec/formats.md 1).

Layout: one pickle holding ``{"split": {name: [ids]}, "annotations": [dict, ...]}``, or (pyskl's
custom extractor) a plain list of annotations. An annotation has ``frame_dir`` (the id; ``filename``
wins when present), ``label`` (0-based), ``total_frames``, ``keypoint`` (M, T, V, C) and, for 2-D
poses, ``keypoint_score`` (M, T, V) and ``img_shape`` (H, W).

Safety: the file is read by a restricted unpickler. It rebuilds numpy arrays, dtypes and numpy
scalars (``_reconstruct``, ``ndarray``, ``dtype``, ``scalar``, ``_frombuffer`` of protocol 5, under
``numpy.core`` and ``numpy._core``) and the two helpers protocol 2 needs for the bytes inside them
(``bytes``, ``_codecs.encode`` to latin-1: mmcv writes protocol 2). Any other global is refused with a
SkelError before anything is called, so a crafted pickle cannot run code.

Conversion:

* keypoint (M, T, V, C) -> (T, M, V, C) float32 (float16 files are cast); with a confidence topology
  the score is appended as the last channel (values kept as stored, no zeroing of low-score joints);
  a missing ``keypoint_score`` then rejects the clip. Persons are kept in the stored order;
* topology: ``--topology``, else inferred from the first keypoint: V=17, C=2 -> coco17;
  V=25, C=3 -> ntu25; V=18, C=2 -> openpose18; anything else asks for ``--topology``;
* NTU-style ids ``SsssCcccPpppRrrrAaaa`` fill setup / camera / subject / replication;
* dataset = the file stem; num_classes = max label + 1, or 60 / 120 for stems starting with
  ``ntu60`` / ``ntu120`` (which also get the NTU class names).

Split keys -> store protocol / part:

===========================================  ==========  =====================
pickle split key                             protocol    part
===========================================  ==========  =====================
``xsub_train`` / ``xsub_val`` (``_test``)     xsub        train / test
``xview_train`` / ``xview_val`` (``_test``)   xview       train / test
``xset_train`` / ``xset_val`` (``_test``)     xset        train / test
``train`` / ``val`` or ``test``               default     train / test
``train1`` / ``test1`` (.. ``3``)             split1..3   train / test
any other key                                 the key     train (with a warning)
no split (a plain list of annotations)        all         train (with a warning)
===========================================  ==========  =====================

When a file has both ``val`` and ``test``, ``test`` is ``default``'s test part and ``val`` becomes
protocol ``default_val`` (train / val as test), with a warning.

Entries that are not dicts, have no id, no label, an empty keypoint (M = 0 or T = 0), a wrong shape
or no score where one is needed go to ``/rejected`` with the reason.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import importlib
import pickle
import re
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from skelcli.data.formats import Clip, Importer, ImportOptions, Imported, register
from skelcli.errors import SkelError
from skelcli.topology import Topology, get_topology

#: (V, C) of ``keypoint`` -> the layout assumed when no --topology is given.
INFER_TOPOLOGY: dict[tuple[int, int], str] = {(17, 2): "coco17", (25, 3): "ntu25", (18, 2): "openpose18"}

#: NTU ids: setup, camera, subject (performer), replication, action.
NTU_ID = re.compile(r"^S(\d{3})C(\d{3})P(\d{3})R(\d{3})A(\d{3})$")

#: Pixel frame of the synthetic 2-D pickles (NTU's 1080 x 1920) and the body-unit -> pixel scale.
SYNTH_SHAPE = (1080, 1920)
SYNTH_SCALE = 400.0

_PROTOCOL_KEY = re.compile(r"^(xsub|xview|xset)_(train|val|test)$")
_NUMBERED_KEY = re.compile(r"^(train|test)([1-9])$")

# ----------------------------------------------------------------------------- restricted unpickling

#: Globals a numpy-bearing annotation pickle may name: (module, name) -> (module to import, attribute).
_NUMPY_GLOBALS: dict[tuple[str, str], tuple[str, str]] = {}
for _core in ("numpy.core", "numpy._core"):
    _NUMPY_GLOBALS[(f"{_core}.multiarray", "_reconstruct")] = ("multiarray", "_reconstruct")
    _NUMPY_GLOBALS[(f"{_core}.multiarray", "scalar")] = ("multiarray", "scalar")
    _NUMPY_GLOBALS[(f"{_core}.numeric", "_frombuffer")] = ("numeric", "_frombuffer")
del _core


def _latin1_encode(text: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """What protocol-2 pickles call as ``_codecs.encode(str, "latin1")`` to rebuild a bytes object;
    nothing else is accepted."""
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1" or errors != "strict":
        raise pickle.UnpicklingError("_codecs.encode is admitted only for latin-1 text (protocol-2 bytes)")
    return text.encode("latin-1")


def _numpy_core(submodule: str):
    """numpy's ``_core.<submodule>`` (numpy 2), else ``core.<submodule>`` (numpy 1)."""
    try:
        return importlib.import_module(f"numpy._core.{submodule}")
    except ImportError:
        return importlib.import_module(f"numpy.core.{submodule}")


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds only plain containers, numbers, strings and numpy arrays / scalars;
    every other global is refused (SkelError naming it) before it is looked up or called."""

    def __init__(self, file, source: str) -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        # protocol 0-2 pickles name Python 2 modules (__builtin__, copy_reg, ...): judge and report the
        # Python 3 names, as the default unpickler would resolve them
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        key = (module, name)
        if key in _NUMPY_GLOBALS:
            sub, attr = _NUMPY_GLOBALS[key]
            return getattr(_numpy_core(sub), attr)
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if key == ("builtins", "bytes"):
            return bytes
        if key == ("_codecs", "encode"):
            return _latin1_encode
        raise SkelError(f"refusing to load {module}.{name} from {self.source}: pyskl pickles hold only dicts, "
                        "lists, tuples, strings, numbers and numpy arrays")

    def persistent_load(self, pid: Any) -> Any:
        raise SkelError(f"refusing a persistent id in {self.source}: pyskl pickles hold only dicts, lists, tuples, "
                        "strings, numbers and numpy arrays")


def load_pickle(path: Path) -> Any:
    """The object in ``path``, through :class:`RestrictedUnpickler`. SkelError for a refused global
    or a file that is not a (complete) pickle."""
    try:
        with open(path, "rb") as fh:
            return RestrictedUnpickler(fh, str(path)).load()
    except SkelError:
        raise
    except OSError as exc:
        raise SkelError(f"pyskl: cannot read {path}: {exc.strerror or exc}") from None
    except EOFError:
        raise SkelError(f"pyskl: {path} ends early (truncated or empty pickle)") from None
    except Exception as exc:  # UnpicklingError, or whatever a malformed opcode stream raises
        raise SkelError(f"pyskl: {path} is not a readable pickle ({type(exc).__name__}: {exc})") from None


# ----------------------------------------------------------------------------- helpers


def map_split_key(key: str) -> Optional[tuple[str, str]]:
    """A pickle split key -> (protocol, part), None for a key outside the table."""
    m = _PROTOCOL_KEY.match(key)
    if m:
        return m[1], "train" if m[2] == "train" else "test"
    if key == "train":
        return "default", "train"
    if key in ("val", "test"):
        return "default", "test"
    m = _NUMBERED_KEY.match(key)
    if m:
        return f"split{m[2]}", m[1]
    return None


def build_splits(split: dict, warnings: list[str]) -> dict[str, dict[str, list[str]]]:
    """The pickle's ``split`` dict -> protocol -> part -> ids (module docstring table)."""
    out: dict[str, dict[str, list[str]]] = {}
    keys = [str(k) for k in split]
    both_val_test = "val" in keys and "test" in keys
    for key, ids in split.items():
        key = str(key)
        if isinstance(ids, (str, bytes)) or not isinstance(ids, (list, tuple, np.ndarray)):
            raise SkelError(f"pyskl: split[{key!r}] must be a list of clip ids, got {type(ids).__name__}")
        ids = [str(i) for i in ids]
        mapped = map_split_key(key)
        if both_val_test and key == "val":
            mapped = ("default_val", "test")
            warnings.append("split has both 'val' and 'test': protocol default = train / test, "
                            "default_val = train / val")
        if mapped is None:
            mapped = (key.replace("/", "_"), "train")
            warnings.append(f"unknown split key {key!r}: kept as protocol {mapped[0]!r} with every listed clip in "
                            "part 'train'")
        proto, part = mapped
        out.setdefault(proto, {}).setdefault(part, []).extend(ids)
    if "default_val" in out and "train" in out.get("default", {}):
        out["default_val"]["train"] = list(out["default"]["train"])
    for proto, parts in out.items():
        if _PROTOCOL_KEY.match(f"{proto}_train") or proto == "default" or re.fullmatch(r"split[1-9]", proto):
            parts.setdefault("train", [])
            parts.setdefault("test", [])
    return out


def clip_id(anno: dict) -> Optional[str]:
    """``filename`` when present, else ``frame_dir`` (spec 1.1); None when neither is there."""
    for key in ("filename", "frame_dir"):
        v = anno.get(key)
        if v is not None and not (isinstance(v, str) and not v):
            return str(v)
    return None


def ntu_meta(name: str) -> dict[str, int]:
    """setup / camera / subject / replication of an NTU-style id (any folder or extension stripped)."""
    stem = Path(name).name.split(".")[0]
    m = NTU_ID.match(stem)
    if not m:
        return {}
    s, c, p, r, _ = (int(g) for g in m.groups())
    return {"setup": s, "camera": c, "subject": p, "replication": r}


def _int_label(v: Any) -> Optional[int]:
    if isinstance(v, (bool, np.bool_)):
        return None
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, np.ndarray) and v.size == 1 and v.dtype.kind in "iu":
        return int(v.reshape(()))
    return None


def _as_array(v: Any) -> Optional[np.ndarray]:
    if v is None:
        return None
    try:
        a = np.asarray(v)
    except (TypeError, ValueError):
        return None
    return a if a.dtype.kind in "fiub" else None


def _first_keypoint_shape(annotations: Sequence[Any]) -> Optional[tuple[int, int]]:
    """(V, C) of the first usable ``keypoint`` array, or None."""
    for anno in annotations:
        if not isinstance(anno, dict):
            continue
        kp = _as_array(anno.get("keypoint"))
        if kp is not None and kp.ndim == 4:
            return kp.shape[2], kp.shape[3]
    return None


def infer_topology(annotations: Sequence[Any], path: Path) -> Topology:
    """The layout the first usable ``keypoint`` implies (:data:`INFER_TOPOLOGY`)."""
    shape = _first_keypoint_shape(annotations)
    if shape is not None:
        v, c = shape
        name = INFER_TOPOLOGY.get((v, c))
        if name is None:
            raise SkelError(f"pyskl: {path.name}: keypoint has {v} joints x {c} values, no built-in layout is assumed "
                            "for it; pass --topology NAME or FILE.toml")
        return get_topology(name)
    return get_topology(PysklImporter.default_topology)


def _check_first(annotations: Sequence[Any], topo: Topology, path: Path) -> None:
    """SkelError when the first keypoint does not fit the user's topology (a file-wide mismatch)."""
    shape = _first_keypoint_shape(annotations)
    if shape is not None and shape != (topo.num_joints, topo.dims):
        v, c = shape
        raise SkelError(f"pyskl: {path.name}: keypoint has {v} joints x {c} coordinates, topology {topo.name} "
                        f"has {topo.num_joints} joints x {topo.dims} ({topo.describe()}); pass a matching --topology")


def convert(anno: dict, topo: Topology) -> np.ndarray:
    """One annotation -> float32 (T, M, V, C) in the topology's channels. ValueError with the reason."""
    if "keypoint" not in anno:
        raise ValueError("no keypoint")
    kp = _as_array(anno["keypoint"])
    if kp is None:
        raise ValueError("keypoint is not a numeric array")
    if kp.ndim != 4:
        raise ValueError(f"keypoint has shape {kp.shape}, expected (M, T, V, C)")
    m, t, v, c = kp.shape
    if m == 0:
        raise ValueError(f"no person (keypoint has M = 0 persons, shape {kp.shape})")
    if t == 0:
        raise ValueError(f"no frame (keypoint has T = 0 frames, shape {kp.shape})")
    if v != topo.num_joints:
        raise ValueError(f"keypoint has {v} joints, topology {topo.name} has {topo.num_joints}")
    if c != topo.dims:
        raise ValueError(f"keypoint has {c} coordinates per joint, topology {topo.name} has {topo.dims}")
    parts = [kp.astype(np.float32, copy=False)]
    if topo.confidence:
        score = _as_array(anno.get("keypoint_score"))
        if score is None:
            raise ValueError(f"no keypoint_score (topology {topo.name} has a confidence channel)")
        if score.shape != (m, t, v):
            raise ValueError(f"keypoint_score has shape {score.shape}, expected {(m, t, v)} like keypoint")
        parts.append(score.astype(np.float32, copy=False)[..., None])
    joints = np.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0]
    return np.ascontiguousarray(joints.transpose(1, 0, 2, 3), dtype=np.float32)


# ----------------------------------------------------------------------------- importer


@register
class PysklImporter(Importer):
    name = "pyskl"
    default_topology = "coco17"
    help = "pyskl / mmaction2 annotation pickle: {split, annotations} with keypoint (M, T, V, C) [+ keypoint_score]"

    def read(self, raws: Sequence[Path], options: ImportOptions) -> Imported:
        if len(raws) != 1:
            raise SkelError(f"pyskl: give one --raw pickle (one file holds a whole dataset), got {len(raws)}")
        path = Path(raws[0])
        if not path.is_file():
            raise SkelError(f"pyskl: --raw {path} is not a file (give the annotation .pkl)")
        obj = load_pickle(path)
        warnings: list[str] = []
        if isinstance(obj, dict):
            if "annotations" not in obj:
                raise SkelError(f"pyskl: {path.name} holds a dict without 'annotations' (keys: "
                                f"{', '.join(map(str, list(obj)[:8])) or 'none'}); expected {{'split': ..., 'annotations': [...]}}")
            annotations, split = obj["annotations"], obj.get("split")
            if split is None:
                split = {}
                warnings.append(f"{path.name} has no 'split': every clip is in protocol 'all', part 'train'")
            elif not isinstance(split, dict):
                raise SkelError(f"pyskl: {path.name}: 'split' must be a dict split name -> ids, got {type(split).__name__}")
        elif isinstance(obj, (list, tuple)):
            annotations, split = obj, None
            warnings.append(f"{path.name} is a plain list of annotations with no split: every clip is in protocol "
                            "'all', part 'train' (no train / test split was invented)")
        else:
            raise SkelError(f"pyskl: {path.name} holds a {type(obj).__name__}; expected a dict "
                            "{'split': ..., 'annotations': [...]} or a list of annotation dicts")
        if not isinstance(annotations, (list, tuple)):
            raise SkelError(f"pyskl: {path.name}: 'annotations' must be a list, got {type(annotations).__name__}")

        if options.topology is not None:
            topo = options.topology
            _check_first(annotations, topo, path)
        else:
            topo = infer_topology(annotations, path)

        stem = path.stem
        low = stem.lower()
        labels = [_int_label(a.get("label")) for a in annotations if isinstance(a, dict)]
        max_label = max((lb for lb in labels if lb is not None), default=-1)
        dataset_kind = "ntu120" if low.startswith("ntu120") else "ntu60" if low.startswith("ntu60") else None
        num_classes = {"ntu60": 60, "ntu120": 120}[dataset_kind] if dataset_kind else max(max_label + 1, 1)
        class_names = None
        if dataset_kind:
            from skelcli.data.actions import action_names

            class_names = action_names(dataset_kind)

        ids = [clip_id(a) for a in annotations if isinstance(a, dict)]
        present = {i for i in ids if i is not None}
        if split:
            splits = build_splits(split, warnings)
            listed = {n for parts in splits.values() for members in parts.values() for n in members}
            unknown = len(listed - present)
            if unknown:
                warnings.append(f"{unknown} id(s) in the split lists have no annotation")
        else:
            splits = {"all": {"train": sorted(present)}}

        rejected: list[tuple[str, str]] = []

        def clips() -> Iterator[Clip]:
            for k, anno in enumerate(annotations):
                if not isinstance(anno, dict):
                    rejected.append((f"annotations[{k}]", f"not a dict ({type(anno).__name__}); skipped"))
                    continue
                name = clip_id(anno)
                if name is None:
                    rejected.append((f"annotations[{k}]", "no frame_dir or filename (no clip id)"))
                    continue
                if "label" not in anno or anno["label"] is None:
                    rejected.append((name, "no label"))
                    continue
                label = _int_label(anno["label"])
                if label is None:
                    rejected.append((name, f"label {anno['label']!r} is not an integer"))
                    continue
                try:
                    joints = convert(anno, topo)
                except ValueError as exc:
                    rejected.append((name, str(exc)))
                    continue
                yield Clip(name, joints, label, ntu_meta(name))

        preprocessing: dict[str, Any] = {
            "coord_space": "pixels" if topo.dims == 2 else "camera_m",
            "coordinates": "as in the pickle (pyskl keypoint, no normalisation)",
            "persons": "the pickle's person order, first two kept",
            "labels": "0-based, as stored",
        }
        if topo.confidence:
            preprocessing["confidence"] = "keypoint_score appended as the last channel, values as stored"
        source = {"file": str(path.resolve()), "annotations": len(annotations),
                  "split_keys": sorted(map(str, split)) if split else []}
        return Imported(dataset=stem, topology=topo, clips=clips(), num_classes=num_classes, splits=splits,
                        rejected=rejected, class_names=class_names, source=source, preprocessing=preprocessing,
                        total=len(annotations), warnings=warnings)

    def write_synthetic(self, out: Path, clips, topology: Topology, **kwargs: Any) -> list[Path]:
        """One ``synthetic_<topology>.pkl`` in pyskl's layout. 2-D layouts: pixel coordinates in a
        1080 x 1920 frame, u = 960 + 400 x, v = 540 - 400 y (missed joints, score 0, at (0, 0)),
        ``keypoint_score``, ``img_shape`` / ``original_shape``; 3-D: the coordinates as given.
        Split ``xsub_train`` / ``xsub_val`` from each clip's train / test."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        dims = topology.dims
        split: dict[str, list[str]] = {"xsub_train": [], "xsub_val": []}
        annotations = []
        for c in clips:
            j = np.asarray(c.joints, dtype=np.float32).transpose(1, 0, 2, 3)  # (M, T, V, C)
            kp = j[..., :dims]
            anno: dict[str, Any] = {"frame_dir": c.name, "label": int(c.label), "total_frames": int(j.shape[1])}
            score = j[..., dims] if topology.confidence else None
            if dims == 2:
                h, w = SYNTH_SHAPE
                px = np.empty_like(kp)
                px[..., 0] = (w / 2 + SYNTH_SCALE * kp[..., 0].astype(np.float64)).astype(np.float32)
                px[..., 1] = (h / 2 - SYNTH_SCALE * kp[..., 1].astype(np.float64)).astype(np.float32)
                if score is not None:
                    px[score <= 0] = 0.0
                kp = px
                anno["img_shape"] = SYNTH_SHAPE
                anno["original_shape"] = SYNTH_SHAPE
            anno["keypoint"] = np.ascontiguousarray(kp, dtype=np.float32)
            if score is not None:
                anno["keypoint_score"] = np.ascontiguousarray(score, dtype=np.float32)
            annotations.append(anno)
            split["xsub_train" if c.split == "train" else "xsub_val"].append(c.name)
        path = out / f"synthetic_{topology.name}.pkl"
        with open(path, "wb") as fh:
            pickle.dump({"split": split, "annotations": annotations}, fh, protocol=pickle.HIGHEST_PROTOCOL)
        return [path]


__all__ = ["INFER_TOPOLOGY", "PysklImporter", "RestrictedUnpickler", "build_splits", "convert", "load_pickle",
           "map_split_key", "ntu_meta"]
