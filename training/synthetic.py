"""A small synthetic fluke data set in the Kaggle layout, for tests and the offline quickstart.

An identity is a fixed random pattern: a fluke-shaped dark silhouette with its own trailing-edge
notches and white patches. Its photos are random views of it: position, size, rotation, sea
background, lighting, blur, grayscale and JPEG quality vary. Writes ``images/``, ``train.csv``
(``Image,Id``, with ``new_whale`` rows: photos of whales seen once) and ``boxes.csv``
(``image,x0,y0,x1,y1`` pixels: the silhouette's bounding box).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from core.fileio import atomic_write_bytes

PATTERN_W, PATTERN_H = 200, 80


@dataclass(frozen=True)
class SyntheticSpec:
    """Size of the synthetic set.

    Attributes:
        identities: whales with a name.
        photos_per_identity: ``(min, max)`` photos of each (inclusive).
        new_whales: extra whales photographed once and labelled ``new_whale``.
        image_size: ``(H, W)`` of every photo in pixels.
        seed: everything is derived from it.
    """

    identities: int = 40
    photos_per_identity: tuple[int, int] = (3, 6)
    new_whales: int = 20
    image_size: tuple[int, int] = (128, 256)
    seed: int = 0


def _fluke_pattern(rng: np.random.Generator) -> Image.Image:
    """An RGBA fluke: silhouette with identity-specific trailing edge and white patches."""
    mask = Image.new("L", (PATTERN_W, PATTERN_H), 0)
    draw = ImageDraw.Draw(mask)
    xs = np.linspace(0, PATTERN_W - 1, 41)
    # leading edge: two lobes rising to the tips, a dip in the middle
    top = 18 + 14 * np.abs(np.sin(np.pi * xs / (PATTERN_W - 1))) - 12 * np.exp(-(((xs - PATTERN_W / 2) / 14) ** 2))
    # trailing edge: a smooth curve plus this whale's own notches
    bottom = PATTERN_H - 8 - 10 * np.exp(-(((xs - PATTERN_W / 2) / 20) ** 2))
    for _ in range(rng.integers(3, 7)):
        c, w, d = rng.uniform(10, PATTERN_W - 10), rng.uniform(3, 9), rng.uniform(4, 12)
        bottom -= d * np.exp(-(((xs - c) / w) ** 2))
    poly = [(float(x), float(y)) for x, y in zip(xs, top, strict=True)]
    poly += [(float(x), float(y)) for x, y in zip(xs[::-1], bottom[::-1], strict=True)]
    draw.polygon(poly, fill=255)
    skin = Image.new("RGB", (PATTERN_W, PATTERN_H), tuple(int(v) for v in rng.integers(15, 45, 3)))
    sd = ImageDraw.Draw(skin)
    for _ in range(rng.integers(5, 11)):
        cx, cy = rng.uniform(0, PATTERN_W), rng.uniform(10, PATTERN_H - 10)
        rx, ry = rng.uniform(5, 30), rng.uniform(4, 16)
        shade = int(rng.integers(190, 255))
        sd.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=(shade, shade, shade))
    for _ in range(rng.integers(2, 6)):  # dark scars
        x0, y0 = rng.uniform(0, PATTERN_W), rng.uniform(10, PATTERN_H - 10)
        sd.line([x0, y0, x0 + rng.uniform(-30, 30), y0 + rng.uniform(-10, 10)], fill=(10, 10, 10), width=3)
    pattern = skin.convert("RGBA")
    pattern.putalpha(mask)
    return pattern


def _sea(rng: np.random.Generator, h: int, w: int) -> Image.Image:
    base = rng.uniform([40, 70, 90], [110, 140, 170])
    grad = np.linspace(0.8, 1.2, h)[:, None, None]
    noise = rng.normal(0, 10, (h, w, 1))
    waves = 12 * np.sin(np.arange(w)[None, :, None] / rng.uniform(6, 20) + rng.uniform(0, 6))
    arr = np.clip(base[None, None, :] * grad + noise + waves, 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def render_view(pattern: Image.Image, rng: np.random.Generator, size_hw: tuple[int, int]) -> tuple[Image.Image, tuple]:
    """One photo of a fluke pattern and the pixel box of the fluke in it."""
    h, w = size_hw
    width = int(w * rng.uniform(0.55, 0.85))
    fluke = pattern.resize((width, max(2, int(width * PATTERN_H / PATTERN_W * rng.uniform(0.85, 1.15)))))
    fluke = fluke.rotate(rng.uniform(-8, 8), resample=Image.Resampling.BILINEAR, expand=True)
    photo = _sea(rng, h, w)
    fx = int(rng.uniform(0, max(1, w - fluke.width)))
    fy = int(rng.uniform(0, max(1, h - fluke.height)))
    photo.paste(fluke, (fx, fy), fluke)
    alpha = np.asarray(fluke.getchannel("A")) > 127
    ys, xs = np.nonzero(alpha)
    box = (
        float(max(0, fx + xs.min())),
        float(max(0, fy + ys.min())),
        float(min(w, fx + xs.max() + 1)),
        float(min(h, fy + ys.max() + 1)),
    )
    arr = np.asarray(photo, dtype=np.float32) * rng.uniform(0.75, 1.25) + rng.uniform(-20, 20)
    photo = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if rng.random() < 0.3:
        photo = photo.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    if rng.random() < 0.3:
        photo = photo.convert("L").convert("RGB")
    return photo, box


def make_synthetic_dataset(out_dir: str | Path, spec: SyntheticSpec | None = None) -> Path:
    """Write the synthetic set into ``out_dir`` (``images/``, ``train.csv``, ``boxes.csv``).

    Returns:
        ``out_dir``.
    """
    spec = spec or SyntheticSpec()
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(spec.seed)
    labels, boxes = [], []
    whales = [
        (f"w_{i:07x}", rng.integers(spec.photos_per_identity[0], spec.photos_per_identity[1] + 1))
        for i in range(spec.identities)
    ]
    whales += [("new_whale", 1)] * spec.new_whales
    counter = 0
    for whale_id, n_photos in whales:
        pattern = _fluke_pattern(rng)
        for _ in range(int(n_photos)):
            photo, box = render_view(pattern, rng, spec.image_size)
            name = f"{counter:08x}.jpg"
            counter += 1
            buf = io.BytesIO()
            photo.save(buf, format="JPEG", quality=int(rng.integers(70, 95)))
            atomic_write_bytes(out / "images" / name, buf.getvalue())
            labels.append((name, whale_id))
            boxes.append((name, *(round(v, 1) for v in box)))
    with open(out / "train.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("Image", "Id"), *labels])
    with open(out / "boxes.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("image", "x0", "y0", "x1", "y1"), *boxes])
    return out
