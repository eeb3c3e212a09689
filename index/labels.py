"""Labelled photos in the Kaggle 2019 layout and the split by identity (torch-free).

Layout: a folder of photos plus a labels CSV, either Kaggle's ``train.csv`` (``Image,Id``) or
``image,whale_id`` columns (``../shared/data/flukes/labels.csv``), and optionally a boxes CSV
``image,x0,y0,x1,y1`` in pixels of the stored photos. ``new_whale`` marks a photo of a whale that
has no identity (never a class; a validation query answered ``new_whale``); ``unknown`` rows
(Kaggle test photos) are ignored.

Validation is split **by identity**: a share of identities is held out whole (open set: their
photos must be answered ``new_whale``), and a share of the remaining identities with at least two
photos lose one photo each to validation (closed set). The training photos of the known identities
form the validation gallery.
"""

from __future__ import annotations

import csv
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import ConfigError
from index.ranking import NEW_WHALE

UNKNOWN = "unknown"
_IMAGE_COLUMNS = ("Image", "image")
_ID_COLUMNS = ("Id", "whale_id", "id")


@dataclass(frozen=True)
class Photo:
    """One labelled photo.

    Attributes:
        image: file name inside the images folder.
        whale_id: the identity, or ``new_whale``.
        box: ``(4,) float32`` xyxy pixels of the stored photo, or None (full frame).
        pseudo: a pseudo-label (used for training only, never scored).
    """

    image: str
    whale_id: str
    box: tuple[float, float, float, float] | None = None
    pseudo: bool = False


def _pick(fieldnames: Sequence[str], options: Sequence[str], path: Path) -> str:
    for name in options:
        if name in fieldnames:
            return name
    raise ConfigError(f"{path}: needs one of the columns {list(options)}, has {list(fieldnames)}")


def read_labels(path: str | Path) -> list[tuple[str, str]]:
    """``(image, whale_id)`` rows of a labels CSV (``Image,Id`` or ``image,whale_id``); ``unknown`` skipped.

    Raises:
        ConfigError: unreadable file or missing columns.
    """
    path = Path(path)
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            img_col = _pick(reader.fieldnames or [], _IMAGE_COLUMNS, path)
            id_col = _pick(reader.fieldnames or [], _ID_COLUMNS, path)
            rows = [(r[img_col].strip(), r[id_col].strip()) for r in reader]
    except OSError as exc:
        raise ConfigError(f"cannot read labels {path}: {exc.strerror or exc}") from exc
    return [(img, wid) for img, wid in rows if img and wid and wid != UNKNOWN]


def read_boxes(path: str | Path) -> dict[str, tuple[float, float, float, float]]:
    """``image -> (x0, y0, x1, y1)`` from a boxes CSV (pixels of the stored photo)."""
    path = Path(path)
    out = {}
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            img_col = _pick(reader.fieldnames or [], _IMAGE_COLUMNS, path)
            for r in reader:
                box = tuple(float(r[k]) for k in ("x0", "y0", "x1", "y1"))
                if box[2] > box[0] and box[3] > box[1]:
                    out[r[img_col].strip()] = box
    except (OSError, KeyError, ValueError) as exc:
        raise ConfigError(f"cannot read boxes {path}: {exc}") from exc
    return out


def load_photos(
    images: str | Path,
    labels: str | Path,
    boxes: str | Path | None = None,
    extra_labels: Sequence[str | Path] = (),
    max_images: int = 0,
    seed: int = 0,
) -> list[Photo]:
    """Read labels (and boxes, and pseudo-labels) into :class:`Photo` records.

    Raises:
        ConfigError: missing folder, unreadable CSV, or listed photos missing from the folder.
    """
    folder = Path(images)
    if not folder.is_dir():
        raise ConfigError(f"images folder {folder} does not exist")
    box_of = read_boxes(boxes) if boxes else {}
    rows = read_labels(labels)
    if max_images and len(rows) > max_images:
        rows = random.Random(seed).sample(rows, max_images)
    photos = [Photo(img, wid, box_of.get(img)) for img, wid in rows]
    seen = {p.image for p in photos}
    for extra in extra_labels:
        for img, wid in read_labels(extra):
            if img not in seen and wid != NEW_WHALE:
                photos.append(Photo(img, wid, box_of.get(img), pseudo=True))
                seen.add(img)
    missing = [p.image for p in photos if not (folder / p.image).is_file()]
    if missing:
        n = len(missing)
        verb = "photo listed in the labels is" if n == 1 else "photos listed in the labels are"
        raise ConfigError(f"{n} {verb} not in {folder}, e.g. {missing[:3]}")
    return photos


@dataclass
class Split:
    """A split by identity. ``train`` is also the validation gallery."""

    train: list[Photo] = field(default_factory=list)
    val_closed: list[Photo] = field(default_factory=list)
    val_open: list[Photo] = field(default_factory=list)
    val_new_whale: list[Photo] = field(default_factory=list)
    #: new_whale photos not used for validation (negatives for the binary head)
    train_new_whale: list[Photo] = field(default_factory=list)

    def queries(self) -> list[tuple[Photo, str]]:
        """Validation queries with their truth (the whale id, or ``new_whale``)."""
        return (
            [(p, p.whale_id) for p in self.val_closed]
            + [(p, NEW_WHALE) for p in self.val_open]
            + [(p, NEW_WHALE) for p in self.val_new_whale]
        )

    def summary(self) -> dict:
        q = self.queries()
        return {
            "train_photos": len(self.train),
            "train_identities": len({p.whale_id for p in self.train}),
            "queries": len(q),
            "queries_known": len(self.val_closed),
            "queries_new_whale": len(self.val_open) + len(self.val_new_whale),
            "new_whale_share": round((len(self.val_open) + len(self.val_new_whale)) / max(len(q), 1), 3),
            "queries_held_out_whales": len({p.whale_id for p in self.val_open}),
            "queries_held_out_photos": len(self.val_open),
            "queries_unnamed": len(self.val_new_whale),
            "new_whale_unused": len(self.train_new_whale),
        }


def split_by_identity(
    photos: Sequence[Photo],
    val_open_fraction: float = 0.15,
    val_closed_fraction: float = 0.5,
    val_new_whale_fraction: float = 1.0,
    seed: int = 0,
) -> Split:
    """Split photos by identity (see the module docstring). Deterministic for a seed.

    Pseudo-labelled photos always go to ``train``; ``new_whale`` photos never do.
    """
    rng = random.Random(seed)
    by_id: dict[str, list[Photo]] = defaultdict(list)
    out = Split()
    new_whales = []
    for p in photos:
        if p.pseudo:
            out.train.append(p)
        elif p.whale_id == NEW_WHALE:
            new_whales.append(p)
        else:
            by_id[p.whale_id].append(p)
    ids = sorted(by_id)
    rng.shuffle(ids)
    n_open = int(round(val_open_fraction * len(ids)))
    for wid in ids[:n_open]:
        out.val_open.extend(by_id[wid])
    known = sorted(ids[n_open:])
    multi = [w for w in known if len(by_id[w]) >= 2]
    rng.shuffle(multi)
    lose_one = set(multi[: int(round(val_closed_fraction * len(multi)))])
    for wid in known:
        group = sorted(by_id[wid], key=lambda p: p.image)
        if wid in lose_one:
            k = rng.randrange(len(group))
            out.val_closed.append(group[k])
            group = group[:k] + group[k + 1 :]
        out.train.extend(group)
    new_whales.sort(key=lambda p: p.image)
    rng.shuffle(new_whales)
    n_val_new = int(round(val_new_whale_fraction * len(new_whales)))
    out.val_new_whale = new_whales[:n_val_new]
    out.train_new_whale = new_whales[n_val_new:]
    return out


def split_to_json(split: Split) -> dict:
    """A JSON-able form of a split (saved as ``split.json`` in a run folder)."""

    def rows(photos):
        return [[p.image, p.whale_id, list(p.box) if p.box else None, p.pseudo] for p in photos]

    return {k: rows(getattr(split, k)) for k in ("train", "val_closed", "val_open", "val_new_whale", "train_new_whale")}


def split_from_json(data: dict) -> Split:
    def photos(rows):
        return [Photo(r[0], r[1], tuple(r[2]) if r[2] else None, bool(r[3])) for r in rows]

    return Split(**{k: photos(v) for k, v in data.items()})
