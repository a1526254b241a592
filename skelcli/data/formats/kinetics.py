"""``kinetics-skeleton``: ST-GCN's Kinetics-skeleton release (OpenPose COCO-18, 2-D + score).

Layout (spec/formats.md 3): ``kinetics_train/`` and ``kinetics_val/`` hold one ``<video_id>.json``
per clip, and ``kinetics_<part>_label.json`` next to each folder maps video ids to
``{label, label_index, has_skeleton}``. ``--raw`` is the root holding them, or any of the
``kinetics_<part>/`` folders (each finds its label file next to it); a label file may also be given
as a ``--raw`` of its own.

A clip JSON is ``{"data": [{"frame_index": f, "skeleton": [{"pose": [x0, y0, ...], "score": [...]}]}],
"label": str, "label_index": int}`` with coordinates in [0, 1] of the frame. The import follows
ST-GCN's feeder so that a store equals what its arrays hold, frame by frame:

* T = max(frame_index) (1-based; frame f goes to row f - 1); gaps, unsorted frames and empty
  ``skeleton`` lists are zero rows (leading / trailing ones are trimmed by ``prepare``);
* at most 5 persons are read per frame, in list order (``num_person_in``); in **each frame** they are
  sorted by their summed joint score and the best 2 kept (``num_person_out``), so identities may swap
  between frames, as in ST-GCN;
* channels x, y, score with x - 0.5, y - 0.5 (coordinates in [-0.5, 0.5]), and x = y = 0 wherever the
  score is 0 (``coord_space = "normalized_image_centered"``).

Protocol ``default``: train = ``kinetics_train`` clips, test = ``kinetics_val`` clips. Entries with
``has_skeleton`` false, a ``label_index`` that disagrees with the label file, unreadable or
truncated JSON, and clips without a label entry go to ``/rejected``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from skelcli.data.formats import Clip, Importer, ImportOptions, Imported, register, resolve_topology
from skelcli.errors import SkelError
from skelcli.topology import Topology

#: Persons read per frame, in list order (ST-GCN ``num_person_in``).
PERSONS_IN = 5
#: Persons kept per frame, best summed score first (ST-GCN ``num_person_out``).
PERSONS_OUT = 2
#: ST-GCN's arrays hold this many frames; longer clips are kept in full, with a note.
STGCN_FRAMES = 300
#: A frame_index beyond this is taken for a corrupt file rather than allocated.
MAX_FRAME_INDEX = 100_000

_FOLDER = re.compile(r"^kinetics_(?P<part>[A-Za-z0-9]+)$")
_LABEL_FILE = re.compile(r"^kinetics_(?P<part>[A-Za-z0-9]+)_label\.json$")


def _split_of(part: str) -> str:
    return "train" if part == "train" else "test"


def _check_topology(topo: Topology) -> None:
    if topo.dims != 2 or not topo.confidence:
        raise SkelError(f"kinetics-skeleton holds 2-D poses with a score per joint (x, y, score); topology {topo.name} "
                        f"is {topo.describe()}: pass a 2-D layout with a confidence channel, e.g. openpose18")


def _find_parts(raws: Sequence[Path]) -> tuple[dict[str, Path], dict[str, Path]]:
    """(part -> clip folder, part -> label file) from the --raw paths."""
    folders: dict[str, Path] = {}
    labels: dict[str, Path] = {}

    def add_folder(part: str, folder: Path) -> None:
        if part in folders and folders[part].resolve() != folder.resolve():
            raise SkelError(f"kinetics-skeleton: two kinetics_{part}/ folders given ({folders[part]} and {folder})")
        folders[part] = folder

    for raw in raws:
        if raw.is_file():
            m = _LABEL_FILE.match(raw.name)
            if not m:
                raise SkelError(f"kinetics-skeleton: --raw {raw} is a file but not a kinetics_<part>_label.json label file; "
                                "give the Kinetics-skeleton root or its kinetics_train/ / kinetics_val/ folders")
            labels[m["part"]] = raw
            continue
        m = _FOLDER.match(raw.name)
        if m and (m["part"] in ("train", "val") or any(raw.glob("*.json"))) and \
                not any(_FOLDER.match(p.name) for p in raw.iterdir() if p.is_dir()):
            add_folder(m["part"], raw)  # a kinetics_<part>/ folder itself
            continue
        found = False
        for sub in sorted(raw.iterdir()):
            fm = _FOLDER.match(sub.name)
            if sub.is_dir() and fm:
                add_folder(fm["part"], sub)
                found = True
        if not found:
            raise SkelError(f"kinetics-skeleton: no kinetics_train/ or kinetics_val/ folder in {raw} "
                            "(give the Kinetics-skeleton root or those folders)")
    for part, folder in folders.items():
        if part not in labels:
            path = folder.parent / f"kinetics_{part}_label.json"
            if not path.is_file():
                raise SkelError(f"kinetics-skeleton: no label file {path.name} next to {folder}/ (looked for {path})")
            labels[part] = path
    for part in labels:
        if part not in folders:
            folder = labels[part].parent / f"kinetics_{part}"
            if not folder.is_dir():
                raise SkelError(f"kinetics-skeleton: label file {labels[part]} has no kinetics_{part}/ folder next to it")
            folders[part] = folder
    return folders, labels


def _read_label_file(path: Path) -> dict[str, dict[str, Any]]:
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SkelError(f"kinetics-skeleton: cannot read label file {path}: {exc}") from None
    if not isinstance(table, dict):
        raise SkelError(f"kinetics-skeleton: label file {path} must be a JSON object video_id -> "
                        f"{{label, label_index, has_skeleton}}, got {type(table).__name__}")
    return table


def _label_index(entry: Any) -> Optional[int]:
    if not isinstance(entry, dict):
        return None
    v = entry.get("label_index")
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        return None
    return v


def parse_clip(doc: Any, num_joints: int) -> np.ndarray:
    """A clip JSON object -> float32 (T, 2, V, 3) as ST-GCN's feeder builds it (see the module
    docstring). ValueError with the reason for a malformed clip."""
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise ValueError("no 'data' list of frames")
    frames: dict[int, list] = {}
    for k, frame in enumerate(doc["data"]):
        if not isinstance(frame, dict):
            raise ValueError(f"data[{k}] is not an object")
        f = frame.get("frame_index")
        if isinstance(f, bool) or not isinstance(f, int):
            raise ValueError(f"data[{k}]: frame_index {f!r} is not an integer")
        if f < 1:
            raise ValueError(f"data[{k}]: frame_index {f} (frames are 1-based)")
        if f > MAX_FRAME_INDEX:
            raise ValueError(f"data[{k}]: frame_index {f} is implausibly large (over {MAX_FRAME_INDEX})")
        persons = frame.get("skeleton", [])
        if persons is None:
            persons = []
        if not isinstance(persons, list):
            raise ValueError(f"frame {f}: 'skeleton' is not a list")
        frames[f] = persons  # a repeated frame_index overwrites, as in the feeder
    if not frames:
        raise ValueError("no frames (empty 'data')")
    t = max(frames)
    arr = np.zeros((t, PERSONS_IN, num_joints, 3), dtype=np.float64)
    for f, persons in frames.items():
        for m, person in enumerate(persons[:PERSONS_IN]):
            if not isinstance(person, dict):
                raise ValueError(f"frame {f} person {m}: not an object")
            pose, score = person.get("pose"), person.get("score")
            if not isinstance(pose, list) or len(pose) != 2 * num_joints:
                raise ValueError(f"frame {f} person {m}: 'pose' has {len(pose) if isinstance(pose, list) else 'no'} "
                                 f"values, expected {2 * num_joints} (x, y per joint)")
            if not isinstance(score, list) or len(score) != num_joints:
                raise ValueError(f"frame {f} person {m}: 'score' has {len(score) if isinstance(score, list) else 'no'} "
                                 f"values, expected {num_joints}")
            try:
                xy = np.asarray(pose, dtype=np.float64).reshape(num_joints, 2)
                sc = np.asarray(score, dtype=np.float64)
            except (TypeError, ValueError):
                raise ValueError(f"frame {f} person {m}: 'pose' / 'score' hold non-numbers") from None
            arr[f - 1, m, :, :2] = xy
            arr[f - 1, m, :, 2] = sc
    # per frame: best summed score first (stable: ties keep the list order), keep two
    order = np.argsort(-arr[..., 2].sum(axis=2), axis=1, kind="stable")[:, :PERSONS_OUT]
    arr = np.take_along_axis(arr, order[:, :, None, None], axis=1)
    arr[..., :2] -= 0.5
    arr[..., :2][arr[..., 2] == 0] = 0.0
    return arr.astype(np.float32)


@register
class KineticsSkeletonImporter(Importer):
    name = "kinetics-skeleton"
    default_topology = "openpose18"
    help = "ST-GCN Kinetics-skeleton: kinetics_{train,val}/<id>.json + kinetics_{train,val}_label.json (OpenPose 18, x, y, score)"

    def read(self, raws: Sequence[Path], options: ImportOptions) -> Imported:
        topo = resolve_topology(options, self.default_topology)
        _check_topology(topo)
        folders, label_files = _find_parts(raws)
        tables = {part: _read_label_file(path) for part, path in label_files.items()}
        rejected: list[tuple[str, str]] = []
        warnings: list[str] = []

        names: dict[int, str] = {}
        max_index = -1
        for part, table in tables.items():
            for vid, entry in table.items():
                idx = _label_index(entry)
                if idx is None:
                    continue
                max_index = max(max_index, idx)
                lab = entry.get("label")
                if isinstance(lab, str) and lab and idx not in names:
                    names[idx] = lab
        if max_index < 0:
            raise SkelError("kinetics-skeleton: no entry with a label_index in " + ", ".join(map(str, label_files.values())))
        num_classes = max_index + 1
        class_names = [names[i] for i in range(num_classes)] if len(names) == num_classes else None

        # plan: (part, video id, file) for every clip file; label entries without a file are reported
        plan: list[tuple[str, str, Path]] = []
        for part in sorted(folders):
            files = {p.stem: p for p in sorted(folders[part].glob("*.json")) if p.is_file()}
            table = tables[part]
            lf = label_files[part].name
            for vid, path in files.items():
                entry = table.get(vid)
                if entry is None:
                    rejected.append((vid, f"no entry in {lf}"))
                elif not isinstance(entry, dict):
                    rejected.append((vid, f"entry in {lf} is not an object"))
                elif entry.get("has_skeleton") is False:
                    rejected.append((vid, "no skeleton (has_skeleton false)"))
                elif _label_index(entry) is None:
                    rejected.append((vid, f"entry in {lf} has no valid label_index ({entry.get('label_index')!r})"))
                else:
                    plan.append((part, vid, path))
            for vid, entry in table.items():
                if vid in files:
                    continue
                if isinstance(entry, dict) and entry.get("has_skeleton") is False:
                    rejected.append((vid, "no skeleton (has_skeleton false)"))
                else:
                    rejected.append((vid, f"listed in {lf} but no {vid}.json in {folders[part].name}/"))
        if not plan and not any(any(folders[p].glob("*.json")) for p in folders):
            raise SkelError("kinetics-skeleton: no clip .json file in " + ", ".join(f"{f}/" for f in folders.values()))

        splits = {"default": {"train": sorted(v for p, v, _ in plan if _split_of(p) == "train"),
                              "test": sorted(v for p, v, _ in plan if _split_of(p) == "test")}}
        long_clips = [0]

        def clips() -> Iterator[Clip]:
            for part, vid, path in plan:
                label = _label_index(tables[part][vid])
                try:
                    doc = json.loads(path.read_text(encoding="utf-8"))
                except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                    rejected.append((vid, f"cannot read {path.name}: {exc}"))
                    continue
                if isinstance(doc, dict) and "label_index" in doc and doc["label_index"] != label:
                    rejected.append((vid, f"label_index {doc['label_index']!r} in {path.name} but {label} in "
                                          f"{label_files[part].name}"))
                    continue
                try:
                    joints = parse_clip(doc, topo.num_joints)
                except ValueError as exc:
                    rejected.append((vid, str(exc)))
                    continue
                if len(joints) > STGCN_FRAMES:
                    long_clips[0] += 1
                    if long_clips[0] == 1:
                        warnings.append(f"some clips are longer than {STGCN_FRAMES} frames (ST-GCN's arrays hold "
                                        f"{STGCN_FRAMES}); they are kept in full")
                yield Clip(vid, joints, label)

        source = {"files": len(plan), "label_files": {p: str(f.resolve()) for p, f in sorted(label_files.items())},
                  "folders": {p: str(f.resolve()) for p, f in sorted(folders.items())}}
        preprocessing = {"coord_space": "normalized_image_centered",
                         "coordinates": "x - 0.5, y - 0.5 of [0, 1] image coordinates; x = y = 0 where score = 0 (ST-GCN feeder)",
                         "persons": f"per frame, the {PERSONS_OUT} best by summed joint score of the first {PERSONS_IN} listed (ST-GCN feeder)",
                         "frames": "frame_index f at row f - 1; zero rows for missing frames"}
        return Imported(dataset="kinetics-skeleton", topology=topo, clips=clips(), num_classes=num_classes, splits=splits,
                        rejected=rejected, class_names=class_names, source=source, preprocessing=preprocessing,
                        total=len(plan), warnings=warnings)

    def write_synthetic(self, out: Path, clips, topology: Topology, **kwargs: Any) -> list[Path]:
        """The release layout; body units -> [0, 1] image coordinates x' = 0.5 + 0.25 x, y' = 0.5 - 0.25 y
        (clipped), 3 decimals as in the release; missed joints (score 0) are (0, 0). The first train
        clip gets a second person and, every third frame, a low-score third one listed first; one
        extra val entry has ``has_skeleton`` false and no frames."""
        _check_topology(topology)
        out = Path(out)
        written: list[Path] = []
        tables: dict[str, dict[str, Any]] = {"train": {}, "val": {}}
        crowded = next((c.name for c in clips if c.split == "train"), None)
        for c in clips:
            part = "train" if c.split == "train" else "val"
            label = f"synthetic action {c.label}"
            persons = [c.joints[:, 0]]
            if c.name == crowded:
                second = c.joints[:, 0].copy()
                second[..., 0] = np.where(second[..., 2] > 0, second[..., 0] + 0.9, 0.0)
                second[..., 2] *= 0.8
                persons.append(second)
            data = []
            for t in range(len(c.joints)):
                skel = [_person(p[t]) for p in persons]
                if c.name == crowded and t % 3 == 0:
                    ghost = c.joints[t, 0].copy()
                    ghost[..., 0] -= 0.7
                    ghost[..., 2] = 0.05
                    skel.insert(0, _person(ghost))
                data.append({"frame_index": t + 1, "skeleton": skel})
            written.append(_dump(out / f"kinetics_{part}" / f"{c.name}.json",
                                 {"data": data, "label": label, "label_index": int(c.label)}))
            tables[part][c.name] = {"has_skeleton": True, "label": label, "label_index": int(c.label)}
        empty = "nobody_000"
        written.append(_dump(out / "kinetics_val" / f"{empty}.json",
                             {"data": [], "label": "synthetic action 0", "label_index": 0}))
        tables["val"][empty] = {"has_skeleton": False, "label": "synthetic action 0", "label_index": 0}
        for part, table in tables.items():
            written.append(_dump(out / f"kinetics_{part}_label.json", table))
        return written


def _person(joint: np.ndarray) -> dict[str, list[float]]:
    """(V, 3) body units x, y, score -> one ST-GCN person."""
    score = joint[:, 2].astype(np.float64)
    x = np.clip(0.5 + 0.25 * joint[:, 0].astype(np.float64), 0.0, 1.0)
    y = np.clip(0.5 - 0.25 * joint[:, 1].astype(np.float64), 0.0, 1.0)
    missed = score <= 0
    x[missed] = 0.0
    y[missed] = 0.0
    pose = np.stack([x, y], axis=1).reshape(-1)
    return {"pose": [round(float(v), 3) for v in pose], "score": [round(float(v), 3) for v in np.clip(score, 0.0, 1.0)]}


def _dump(path: Path, obj: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, separators=(",", ":")), encoding="utf-8")
    return path


__all__ = ["KineticsSkeletonImporter", "parse_clip"]
