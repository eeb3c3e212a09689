"""Training data: classes of a stage, the in-memory photo cache and box jitter.

Labels, boxes and the split by identity are torch-free and live in :mod:`index.labels` (re-exported
here). A horizontally flipped photo is a different identity (classes doubled), as the 1st- to
3rd-place solutions of Kaggle 2019 Humpback Whale Identification did.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.boxes import clip_box, expand_box, full_frame, shift_box
from core.errors import ConfigError
from core.preprocess import DecodeLimits, crop_resize, load_image_file
from index.labels import (  # noqa: F401 - re-exported
    Photo,
    Split,
    load_photos,
    read_boxes,
    read_labels,
    split_by_identity,
    split_from_json,
    split_to_json,
)
from index.ranking import NEW_WHALE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassMap:
    """Class indices of a training stage: identity ``i`` is class ``i``, its mirror ``i + n``."""

    identities: tuple[str, ...]
    flip: bool

    @property
    def num_classes(self) -> int:
        return len(self.identities) * (2 if self.flip else 1)

    def samples(self, photos: Sequence[Photo]) -> list[tuple[Photo, int, bool]]:
        """``(photo, class, flipped)`` training samples: each photo, and its mirror when ``flip``."""
        index = {w: i for i, w in enumerate(self.identities)}
        n = len(self.identities)
        out = []
        for p in photos:
            if p.whale_id not in index:
                continue
            out.append((p, index[p.whale_id], False))
            if self.flip:
                out.append((p, index[p.whale_id] + n, True))
        return out


def class_map(photos: Sequence[Photo], min_images: int, flip: bool) -> ClassMap:
    """Identities with at least ``min_images`` training photos (``new_whale`` excluded), sorted."""
    counts = Counter(p.whale_id for p in photos if p.whale_id != NEW_WHALE)
    ids = tuple(sorted(w for w, c in counts.items() if c >= max(1, min_images)))
    if not ids:
        raise ConfigError(f"no identity has at least {min_images} training photos")
    return ClassMap(ids, flip)


class ImageCache:
    """Decoded photos kept in memory, downscaled so their longest side is at most ``max_side_px``.

    ``get`` returns the array and the scale applied (boxes are multiplied by it). ``max_side_px``
    of 0 keeps nothing and decodes at full resolution on every call.
    """

    def __init__(self, folder: str | Path, max_side_px: int = 512):
        self.folder = Path(folder)
        self.max_side_px = int(max_side_px)
        self._cache: dict[str, tuple[np.ndarray, float]] = {}
        self._limits = DecodeLimits(max_bytes=200 * 1024 * 1024, max_pixels=200_000_000)

    def get(self, name: str) -> tuple[np.ndarray, float]:
        hit = self._cache.get(name)
        if hit is not None:
            return hit
        pixels = load_image_file(self.folder / name, self._limits).pixels
        scale = 1.0
        if self.max_side_px:
            h, w = pixels.shape[:2]
            scale = min(1.0, self.max_side_px / max(h, w))
            if scale < 1.0:
                size = (max(1, round(h * scale)), max(1, round(w * scale)))
                pixels = crop_resize(pixels, full_frame(w, h), size, "bilinear")
                scale = size[1] / w
            self._cache[name] = (pixels, scale)
        return pixels, scale


def jitter_box(box: np.ndarray, width: int, height: int, amount: float, rng: np.random.Generator) -> np.ndarray:
    """Random box jitter for training crops: expand by ``U(1, 1 + amount)`` and shift by up to
    ``amount / 2`` of the box size in each direction; clipped to the photo. ``(4,) float32`` pixels."""
    if amount <= 0:
        return clip_box(box, width, height)
    b = expand_box(box, 1.0 + rng.uniform(0.0, amount))
    b = shift_box(b, rng.uniform(-amount / 2, amount / 2), rng.uniform(-amount / 2, amount / 2))
    return clip_box(b, width, height)
