"""The bundle's fluke detector on onnxruntime (torch-free), used by the service and ``build-gallery``.

``detector.onnx`` takes whole photos resized to the detector's input size and returns
``(n, 4)`` box fractions ``(x0, y0, x1, y1)``; :meth:`OnnxBoxDetector.detect` turns them into pixel
boxes on each upright photo. See :mod:`training.detector` for how it is trained.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from core.boxes import clip_box, full_frame
from core.errors import ManifestError
from core.manifest import Manifest
from core.preprocess import crop_resize, normalize
from index.embedder import OnnxModel


class OnnxBoxDetector:
    """Finds the fluke in photos with ``detector.onnx``.

    Args:
        model: the detector's onnxruntime session.
        spec: its preprocessing (input size, mean, std, interpolation).
        min_size_frac: boxes narrower or lower than this fraction of the photo fall back to the full
            frame (a degenerate prediction is worse than none).
    """

    def __init__(self, model: OnnxModel, spec, min_size_frac: float = 0.05):
        self.model = model
        self.spec = spec
        self.min_size_frac = float(min_size_frac)

    @classmethod
    def from_bundle(cls, bundle: str | Path, manifest: Manifest, providers=None) -> OnnxBoxDetector:
        """Open a bundle's detector (checksum checked).

        Raises:
            ManifestError: the manifest lists no detector.
            CorruptArtifactError: the file is missing or its checksum differs.
        """
        if manifest.detector is None:
            raise ManifestError("the manifest lists no detector")
        d = manifest.detector
        model = OnnxModel(Path(bundle) / d.file, providers, expected_sha256=d.sha256)
        return cls(model, d.preprocess)

    def detect(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Boxes of the fluke in each photo.

        Args:
            images: ``(H, W, 3) uint8`` upright photos.

        Returns:
            ``(n, 4) float32`` xyxy boxes in pixels of each photo, at least 1 px, inside the photo.
        """
        if not len(images):
            return np.empty((0, 4), np.float32)
        h, w = self.spec.input_size
        batch = np.stack(
            [
                normalize(
                    crop_resize(im, full_frame(im.shape[1], im.shape[0]), (h, w), self.spec.interpolation), self.spec
                )
                for im in images
            ]
        )
        frac = self.model(batch)
        out = np.empty((len(images), 4), np.float32)
        for i, (im, f) in enumerate(zip(images, frac, strict=True)):
            ih, iw = im.shape[:2]
            if (f[2] - f[0]) < self.min_size_frac or (f[3] - f[1]) < self.min_size_frac:
                out[i] = full_frame(iw, ih)
            else:
                out[i] = clip_box(f * np.array([iw, ih, iw, ih], np.float32), iw, ih)
        return out
