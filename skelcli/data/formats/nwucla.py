"""``nw-ucla``: Northwestern-UCLA Multiview Action3D as CTR-GCN releases it (``all_sqe``).

Layout (spec/formats.md 4): one ``<name>.json`` per clip, name ``aXX_sYY_eZZ_vWW`` (action, subject,
episode, view), holding ``{"skeletons": [[[x, y, z] * 20] * T]}``: one person, Kinect v1 joints in
the SDK order (``kinect20``, metres). ``--raw`` is a folder, searched recursively (or single files).

* labels: the action ids map through the release's table (a01-a06 -> 0-5, a08 -> 6, a09 -> 7,
  a11 -> 8, a12 -> 9); a07, a10 and any other id are rejected. Never ``int(XX) - 1``;
* meta: subject = YY, camera = view WW, replication = episode ZZ;
* protocol ``xview``: train = views 1 and 2, test = view 3 (1020 / 464 clips in the release);
* coordinates are stored as given (no spine centring, no normalisation: that is the pipeline's);
  a 1-frame clip is valid (the release has two).

Names that do not match the pattern, unreadable JSON and wrong shapes go to ``/rejected``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from skelcli.data.formats import Clip, Importer, ImportOptions, Imported, register, resolve_topology
from skelcli.errors import SkelError
from skelcli.topology import Topology

#: Action id -> 0-based label (CTR-GCN feeder_ucla lists, checked entry by entry in the spec).
ACTIONS: dict[int, int] = {1: 0, 2: 1, 3: 2, 4: 3, 5: 4, 6: 5, 8: 6, 9: 7, 11: 8, 12: 9}
#: Label order names.
CLASS_NAMES = ["pick up with one hand", "pick up with two hands", "drop trash", "walk around", "sit down",
               "stand up", "donning", "doffing", "throw", "carry"]
#: Cross-view protocol: views in the train part; the rest test.
XVIEW_TRAIN = (1, 2)
XVIEW_TEST = (3,)

NAME = re.compile(r"^a(?P<a>\d{2})_s(?P<s>\d{2})_e(?P<e>\d{2})_v(?P<v>\d{2})$")


def parse_name(name: str) -> tuple[int, dict[str, int]]:
    """``aXX_sYY_eZZ_vWW`` -> (label, meta). ValueError with the reason otherwise."""
    m = NAME.match(name)
    if not m:
        raise ValueError("name does not match aXX_sYY_eZZ_vWW (action, subject, episode, view)")
    action = int(m["a"])
    if action not in ACTIONS:
        raise ValueError(f"unknown action id a{m['a']} (NW-UCLA uses a01-a06, a08, a09, a11, a12)")
    return ACTIONS[action], {"subject": int(m["s"]), "camera": int(m["v"]), "replication": int(m["e"])}


def _files(raws: Sequence[Path]) -> list[Path]:
    out: list[Path] = []
    for raw in raws:
        if raw.is_file():
            if raw.suffix.lower() != ".json":
                raise SkelError(f"nw-ucla: --raw {raw} is not a .json file (give the all_sqe folder)")
            out.append(raw)
        else:
            out += sorted(p for p in raw.rglob("*") if p.is_file() and p.suffix.lower() == ".json")
    if not out:
        raise SkelError(f"nw-ucla: no .json clip file in {', '.join(map(str, raws))} (expected aXX_sYY_eZZ_vWW.json, "
                        "CTR-GCN's all_sqe)")
    return sorted(out, key=lambda p: (p.stem, str(p)))


def load_skeletons(path: Path, topo: Topology) -> np.ndarray:
    """A clip file -> float32 (T, 1, V, C). ValueError with the reason for a bad file."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"invalid JSON: {exc}") from None
    if not isinstance(doc, dict) or "skeletons" not in doc:
        raise ValueError("no 'skeletons' key")
    want = (topo.num_joints, topo.channels)
    try:
        arr = np.asarray(doc["skeletons"], dtype=np.float32)
    except (TypeError, ValueError):
        raise ValueError(f"'skeletons' is not a (T, {want[0]}, {want[1]}) array of numbers (ragged or non-numeric)") from None
    if arr.ndim == 2 and arr.shape == want:  # a lone frame written without its frame axis
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1:] != want:
        raise ValueError(f"'skeletons' has shape {arr.shape}, expected (T, {want[0]}, {want[1]})")
    if len(arr) == 0:
        raise ValueError("'skeletons' has no frame")
    return arr[:, None]


@register
class NwUclaImporter(Importer):
    name = "nw-ucla"
    default_topology = "kinect20"
    help = "NW-UCLA (CTR-GCN all_sqe): aXX_sYY_eZZ_vWW.json with 'skeletons' (T, 20, 3), Kinect v1"

    def read(self, raws: Sequence[Path], options: ImportOptions) -> Imported:
        topo = resolve_topology(options, self.default_topology)
        files = _files(raws)
        rejected: list[tuple[str, str]] = []
        plan: list[tuple[str, Path, int, dict[str, int]]] = []
        for path in files:
            try:
                label, meta = parse_name(path.stem)
            except ValueError as exc:
                rejected.append((path.stem, str(exc)))
                continue
            plan.append((path.stem, path, label, meta))
        views = {name: meta["camera"] for name, _, _, meta in plan}
        splits = {"xview": {"train": sorted(n for n, v in views.items() if v in XVIEW_TRAIN),
                            "test": sorted(n for n, v in views.items() if v in XVIEW_TEST)}}
        other = sorted({v for v in views.values() if v not in XVIEW_TRAIN + XVIEW_TEST})
        warnings = [f"views {', '.join(f'v{v:02d}' for v in other)} are in no xview part (train v01+v02, test v03)"] if other else []

        def clips() -> Iterator[Clip]:
            for name, path, label, meta in plan:
                try:
                    joints = load_skeletons(path, topo)
                except OSError as exc:
                    rejected.append((name, f"cannot read {path.name}: {exc}"))
                    continue
                except ValueError as exc:
                    rejected.append((name, str(exc)))
                    continue
                yield Clip(name, joints, label, dict(meta))

        preprocessing = {"coord_space": "camera_m", "coordinates": "as in the release (Kinect v1 camera space, metres)",
                         "labels": "action ids a01-a06, a08, a09, a11, a12 -> 0..9 (CTR-GCN feeder_ucla)"}
        return Imported(dataset="nw-ucla", topology=topo, clips=clips(), num_classes=len(CLASS_NAMES), splits=splits,
                        rejected=rejected, class_names=list(CLASS_NAMES), preprocessing=preprocessing,
                        source={"files": len(files)}, total=len(plan), warnings=warnings)

    def write_synthetic(self, out: Path, clips, topology: Topology, **kwargs: Any) -> list[Path]:
        """One ``aXX_sYY_eZZ_vWW.json`` per clip: label k -> the k-th action id of the table, subject
        and view from the clip, episodes numbered from e00 per (action, subject, view)."""
        ids = sorted(ACTIONS, key=ACTIONS.__getitem__)
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        episodes: dict[tuple[int, int, int], int] = {}
        written: list[Path] = []
        for c in clips:
            if not 0 <= c.label < len(ids):
                raise SkelError(f"nw-ucla has {len(ids)} actions; clip {c.name} has label {c.label} (use --classes {len(ids)} or fewer)")
            view = c.view
            if not 1 <= c.subject <= 99 or not 1 <= view <= 99:
                raise SkelError(f"nw-ucla names hold two-digit subject and view ids; clip {c.name} has s{c.subject} v{view}")
            key = (ids[c.label], c.subject, view)
            e = episodes.get(key, 0)
            episodes[key] = e + 1
            if e > 99:
                raise SkelError(f"nw-ucla names hold two-digit episodes; too many clips for a{key[0]:02d} s{key[1]:02d} v{key[2]:02d}")
            name = f"a{key[0]:02d}_s{key[1]:02d}_e{e:02d}_v{key[2]:02d}"
            path = out / f"{name}.json"
            path.write_text(json.dumps({"skeletons": c.joints[:, 0].tolist()}, separators=(",", ":")), encoding="utf-8")
            written.append(path)
        return written


__all__ = ["ACTIONS", "CLASS_NAMES", "NwUclaImporter", "load_skeletons", "parse_name"]
