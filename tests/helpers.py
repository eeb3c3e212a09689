"""Small helpers for tests: encode synthetic arrays as image bytes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FLUKES = SHARED / "data" / "flukes"
ODD_IMAGES = SHARED / "data" / "odd-images"


def png_bytes(arr: np.ndarray, mode: str | None = None, **save) -> bytes:
    """Encode an array as PNG bytes (tiny synthetic test images)."""
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG", **save)
    return buf.getvalue()


def jpeg_bytes(arr: np.ndarray, quality: int = 95, **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality, **save)
    return buf.getvalue()
