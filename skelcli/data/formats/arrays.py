"""``arrays``: a folder of per-clip ``.npy`` / ``.npz`` files plus a CSV ``name,label[,split]``.

The format for skeletons from anywhere else (a pose estimator run on your own videos, a motion-capture
export). ``skel prepare arrays --raw FOLDER --topology coco17 --out mine.h5``:

* every ``*.npy`` / ``*.npz`` under FOLDER (recursive) is one clip; its name is the path relative to
  FOLDER without the suffix (``walk/clip01``); an ``.npy`` holds the joints, an ``.npz`` the key
  ``joints`` (or its only array) and optionally ``score`` (T, [M,] V), appended as the confidence;
* joints are (T, V, C) for one person or (T, M, V, C); C is the topology's channels (``--topology``
  is required: the layout cannot be guessed from a shape);
* the CSV (the only ``*.csv`` in FOLDER, or one given as a second ``--raw``) has a header with
  ``name`` and ``label`` and optionally ``split`` (``train`` / ``test``; ``val`` counts as test).
  Integer labels are 0-based class indices; any other labels are class names, numbered in sorted
  order and stored as the file's class names;
* without a ``split`` column the clips are split at random, stratified by class, with
  ``--split-seed`` and ``--test-fraction`` (protocol ``default``).

Rows without a file, files without a row, unreadable files and wrong shapes go to ``/rejected``.
:func:`export_arrays` writes a prepared store back out in this format (a round trip is exact).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from skelcli.data.formats import Clip, Importer, ImportOptions, Imported, register
from skelcli.errors import SkelError

SUFFIXES = (".npy", ".npz")


def _find_csv(raws: Sequence[Path]) -> tuple[Path, Path]:
    folders = [r for r in raws if r.is_dir()]
    csvs = [r for r in raws if r.is_file() and r.suffix.lower() == ".csv"]
    if len(folders) != 1:
        raise SkelError("arrays: give one --raw FOLDER of .npy/.npz clips (and optionally --raw labels.csv)")
    folder = folders[0]
    if not csvs:
        csvs = sorted(folder.glob("*.csv"))
        if len(csvs) != 1:
            found = ", ".join(p.name for p in csvs) or "none"
            raise SkelError(f"arrays: expected exactly one .csv in {folder} (found {found}); pass it as --raw labels.csv")
    return folder, csvs[0]


def _read_csv(path: Path) -> list[dict[str, str]]:
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            fields = [f.strip() for f in (reader.fieldnames or [])]
            if "name" not in fields or "label" not in fields:
                raise SkelError(f"{path}: the header must name the columns 'name' and 'label' (and optionally 'split'); got {fields}")
            return [{k.strip(): (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SkelError(f"cannot read {path}: {exc}") from None


def _load(path: Path) -> np.ndarray | tuple[np.ndarray, np.ndarray | None]:
    if path.suffix.lower() == ".npy":
        return np.load(path, allow_pickle=False), None
    with np.load(path, allow_pickle=False) as z:
        keys = list(z.keys())
        if "joints" in z:
            joints = z["joints"]
        elif len([k for k in keys if k != "score"]) == 1:
            joints = z[[k for k in keys if k != "score"][0]]
        else:
            raise ValueError(f"holds {keys}; expected a 'joints' array (and optionally 'score')")
        return joints, (z["score"] if "score" in z else None)


def _stratified_split(labels: dict[str, int], seed: int, fraction: float) -> dict[str, list[str]]:
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in sorted(set(labels.values())):
        names = sorted(n for n, lab in labels.items() if lab == c)
        order = rng.permutation(len(names))
        n_test = int(round(fraction * len(names))) if len(names) > 1 else 0
        test += [names[i] for i in order[:n_test]]
        train += [names[i] for i in order[n_test:]]
    return {"train": sorted(train), "test": sorted(test)}


@register
class ArraysImporter(Importer):
    name = "arrays"
    default_topology = "ntu25"
    help = "a folder of per-clip .npy/.npz (T, [M,] V, C) plus a CSV name,label[,split]"

    def read(self, raws: Sequence[Path], options: ImportOptions) -> Imported:
        if options.topology is None:
            raise SkelError("arrays: pass --topology (a built-in name such as coco17, or a .toml file): "
                            "the joint layout cannot be guessed from the array shapes")
        topo = options.topology
        folder, csv_path = _find_csv(raws)
        rows = _read_csv(csv_path)
        rejected: list[tuple[str, str]] = []
        files = {str(p.relative_to(folder).with_suffix("")): p for p in sorted(folder.rglob("*"))
                 if p.is_file() and p.suffix.lower() in SUFFIXES}
        raw_labels: dict[str, str] = {}
        split_of: dict[str, str] = {}
        has_split = any(r.get("split") for r in rows)
        for r in rows:
            name = r.get("name", "")
            if not name:
                rejected.append(("(csv row)", "empty name"))
            elif name in raw_labels:
                rejected.append((name, "listed twice in the CSV"))
            elif name not in files:
                rejected.append((name, f"no {'/'.join(SUFFIXES)} file for this CSV row"))
            elif has_split and r.get("split", "").lower() not in ("train", "test", "val"):
                rejected.append((name, f"split {r.get('split')!r} is not train, test or val"))
            elif not r.get("label"):
                rejected.append((name, "no label"))
            else:
                raw_labels[name] = r["label"]
                if has_split:
                    split_of[name] = "train" if r["split"].lower() == "train" else "test"
        for name in files:
            if name not in raw_labels and not any(n == name for n, _ in rejected):
                rejected.append((name, f"not listed in {csv_path.name}"))
        if all(v.lstrip("-").isdigit() for v in raw_labels.values()):
            labels = {n: int(v) for n, v in raw_labels.items()}
            class_names = None
            num_classes = max(labels.values(), default=-1) + 1
        else:
            class_names = sorted(set(raw_labels.values()))
            labels = {n: class_names.index(v) for n, v in raw_labels.items()}
            num_classes = len(class_names)
        if has_split:
            parts = {"train": sorted(n for n, s in split_of.items() if s == "train"),
                     "test": sorted(n for n, s in split_of.items() if s == "test")}
        else:
            parts = _stratified_split(labels, options.split_seed, options.test_fraction)

        def clips() -> Iterator[Clip]:
            for name in sorted(labels):
                try:
                    joints, score = _load(files[name])
                except (OSError, ValueError, EOFError) as exc:
                    rejected.append((name, f"cannot read {files[name].name}: {exc}"))
                    continue
                joints = np.asarray(joints, dtype=np.float32)
                if joints.ndim == 3:
                    joints = joints[:, None]
                if score is not None:
                    score = np.asarray(score, dtype=np.float32)
                    score = score[:, None] if score.ndim == 2 else score
                    if score.shape != joints.shape[:3]:
                        rejected.append((name, f"score shape {score.shape} does not match joints {joints.shape[:3]}"))
                        continue
                    joints = np.concatenate([joints, score[..., None]], axis=-1)
                yield Clip(name, joints, labels[name])

        source: dict[str, Any] = {"csv": str(csv_path.resolve()), "split": "csv" if has_split else
                                  f"random stratified, seed {options.split_seed}, test fraction {options.test_fraction}"}
        return Imported(dataset=folder.name, topology=topo, clips=clips(), num_classes=max(num_classes, 1),
                        splits={"default": parts}, rejected=rejected, class_names=class_names, source=source,
                        total=len(labels))

    def write_synthetic(self, out: Path, clips, topology, **kwargs: Any) -> list[Path]:
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for c in clips:
            path = out / f"{c.name}.npy"
            np.save(path, c.joints)
            written.append(path)
        written.append(_write_csv(out / "labels.csv", [(c.name, str(c.label), c.split) for c in clips]))
        return written


def _write_csv(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["name", "label", "split"])
        w.writerows(rows)
    return path


def export_arrays(store: Path, out: Path, protocol: str | None = None, force: bool = False) -> dict[str, Any]:
    """Write every sample of a prepared store as ``out/<name>.npy`` (T, 2, V, C) float32, plus
    ``out/labels.csv`` (name, label, split of ``protocol``: the store's first protocol by default) and
    ``out/topology.toml``. ``skel prepare arrays --raw out --topology out/topology.toml`` reads it
    back identically."""
    from skelcli.data.store import open_info, read_samples, split_indices

    info = open_info(store)
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise SkelError(f"{out} is not empty; pass --force to write into it")
    protocols = sorted(info.protocols)
    proto = protocol or (protocols[0] if protocols else None)
    if proto is not None and proto not in info.protocols:
        raise SkelError(f"unknown protocol {proto!r} for {store}; available: {', '.join(protocols) or 'none'}")
    part = {}
    if proto is not None:
        for p in ("train", "test"):
            for i in split_indices(store, proto, p):
                part[int(i)] = p
    out.mkdir(parents=True, exist_ok=True)
    data = read_samples(store, np.arange(info.num_samples))
    rows = []
    for k, name in enumerate(data.names):
        safe = name.replace("/", "_")
        np.save(out / f"{safe}.npy", data.joints[data.offsets[k]:data.offsets[k + 1]])
        rows.append((safe, str(int(data.labels[k])), part.get(k, "train")))
    _write_csv(out / "labels.csv", rows)
    (out / "topology.toml").write_text(topology_toml(info.topology), encoding="utf-8")
    return {"out": str(out), "clips": len(rows), "protocol": proto, "topology": info.topology.name}


def topology_toml(t) -> str:
    """A TOML text that :func:`skelcli.topology.load_topology` reads back as ``t``."""
    import json

    lines = [f"name = {json.dumps(t.name)}", f"dims = {t.dims}", f"confidence = {'true' if t.confidence else 'false'}",
             f"center = {t.center}", f"joints = {json.dumps(list(t.joint_names))}", f"parents = {json.dumps(list(t.parents))}",
             f"mirror = {json.dumps([list(p) for p in t.mirror_pairs])}"]
    if t.description:
        lines.append(f"description = {json.dumps(t.description)}")
    lines.append("[parts]")
    lines += [f"{json.dumps(n)} = {json.dumps(list(j))}" for n, j in t.parts]
    return "\n".join(lines) + "\n"
