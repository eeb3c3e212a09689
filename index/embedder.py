"""From a photo to its embedding: TTA boxes, one batch through the network, the centre of the boxes.

The network is any callable ``(n, 3, H, W) float32 -> (n, d) float32``: the onnxruntime session of
a bundle (:class:`OnnxModel`, used by ``build-gallery``, ``calibrate`` and the service) or the torch
model during training's evaluation. Both go through :class:`PhotoEmbedder`, so a gallery built
from a bundle reproduces the centroids of the torch evaluation.

Multi-box TTA (3rd place, Kaggle 2019 Humpback Whale Identification): each photo is embedded
through the boxes of the manifest's TTA policy in one batch; the box embeddings are
L2-normalised, averaged and renormalised.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from core.boxes import TTAPolicy, tta_boxes
from core.errors import CorruptArtifactError, ManifestMismatchError
from core.fileio import sha256_file
from core.manifest import Manifest, check_embedding_dim, check_input_shape
from core.preprocess import PreprocessSpec, crops_to_batch
from index.vectors import l2_normalize

log = logging.getLogger(__name__)

EmbedFn = Callable[[np.ndarray], np.ndarray]

# most boxes per network call when embedding many photos: on the CPU a batch of 64 crops took 1.35x the
# time per crop of a batch of 10-30 (the starter model at 128x256, onnxruntime, 2 cores with AVX2; the
# activations of a large batch outgrow the caches: `benchmarks/embedder.py --batch-sizes`); a GPU wants
# large batches
CPU_BATCH_BOXES = 30
GPU_BATCH_BOXES = 256


class BoxDetector(Protocol):
    """Anything that finds the fluke: ``detect(images)`` for a list of ``(H, W, 3) uint8`` photos
    returns ``(n, 4) float32`` xyxy boxes in pixels of each photo."""

    def detect(self, images: Sequence[np.ndarray]) -> np.ndarray: ...


def aggregate_tta(embeddings: np.ndarray) -> np.ndarray:
    """Centre of a photo's box embeddings: L2-normalise, average, renormalise.

    Args:
        embeddings: ``(n_boxes, d)`` float32.

    Returns:
        ``(d,) float32``, unit length.
    """
    return l2_normalize(l2_normalize(embeddings).astype(np.float64).mean(axis=0, keepdims=True))[0]


def mirror_boxes(boxes: np.ndarray, width: int) -> np.ndarray:
    """Boxes of a photo mirrored left-right: ``x0' = W - x1``, ``x1' = W - x0``. ``(n, 4) float32``."""
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    b[:, [0, 2]] = width - b[:, [2, 0]]
    return b


@dataclass(frozen=True)
class PhotoEmbedding:
    """One photo's embedding.

    Attributes:
        embedding: ``(d,) float32`` unit vector (centre of the TTA boxes).
        boxes: ``(n_boxes, 4) float32`` boxes used, xyxy pixels on the upright photo.
        flipped: ``(d,) float32`` embedding of the mirrored photo, when asked for.
    """

    embedding: np.ndarray
    boxes: np.ndarray
    flipped: np.ndarray | None = None


class PhotoEmbedder:
    """Embeds photos through TTA boxes, batching the boxes of several photos per network call.

    Args:
        embed_fn: ``(n, 3, H, W) float32 -> (n, d) float32``.
        preprocess: the manifest's preprocessing contract.
        tta: the manifest's TTA policy.
        detector: finds the base box when ``tta.base == "detector"`` and no box is given.
        batch_boxes: most boxes per network call in :meth:`embed_many`.
    """

    def __init__(
        self,
        embed_fn: EmbedFn,
        preprocess: PreprocessSpec,
        tta: TTAPolicy,
        detector: BoxDetector | None = None,
        batch_boxes: int = 64,
    ):
        self.embed_fn = embed_fn
        self.preprocess = preprocess
        self.tta = tta
        self.detector = detector
        self.batch_boxes = max(1, int(batch_boxes))

    def for_enrolment(self, enrol_boxes: int | None) -> PhotoEmbedder:
        """The embedder of enrolled photos: the same network and detector through only the first
        ``enrol_boxes`` TTA boxes (the manifest's ``gallery.enrol_boxes``); itself when that is None."""
        policy = self.tta.first(enrol_boxes)
        if policy is self.tta:
            return self
        return PhotoEmbedder(self.embed_fn, self.preprocess, policy, self.detector, self.batch_boxes)

    def boxes_for(self, image: np.ndarray, base_box=None) -> np.ndarray:
        """The TTA boxes of one photo: ``(n_boxes, 4) float32`` pixels.

        The base box is ``base_box`` when given; else the detector's box when the policy's base is
        ``detector`` and a detector is set; else there is none and the policy's fixed crops are used.
        """
        h, w = image.shape[:2]
        if base_box is None and self.tta.base == "detector" and self.detector is not None:
            base_box = self.detector.detect([image])[0]
        return tta_boxes(base_box, w, h, self.tta)

    def batch_for(self, image: np.ndarray, boxes: np.ndarray, flipped: bool = False) -> np.ndarray:
        """``(n, 3, H, W) float32`` inputs of one photo's boxes (then of its mirror image if ``flipped``)."""
        batch = crops_to_batch(image, boxes, self.preprocess)
        if not flipped:
            return batch
        mirrored = np.ascontiguousarray(image[:, ::-1])
        return np.concatenate([batch, crops_to_batch(mirrored, mirror_boxes(boxes, image.shape[1]), self.preprocess)])

    def embed(self, image: np.ndarray, base_box=None, flipped: bool = False) -> PhotoEmbedding:
        """Embed one photo: its TTA boxes go through the network as **one** batch.

        Args:
            image: ``(H, W, 3) uint8`` upright RGB photo.
            base_box: ``(4,)`` xyxy pixels, or None (detector or full frame).
            flipped: also embed the mirror image (same call, batch doubled).
        """
        return next(self.embed_many([(image, base_box)], flipped=flipped))

    def embed_many(self, items: Iterable[tuple[np.ndarray, object]], flipped: bool = False) -> Iterator[PhotoEmbedding]:
        """Embed photos in order, packing the boxes of several photos into each network call.

        Args:
            items: ``(image (H, W, 3) uint8, base_box or None)`` pairs.
            flipped: also embed each photo's mirror image.

        Yields:
            One :class:`PhotoEmbedding` per item, in order.
        """
        pending: list[tuple[np.ndarray, np.ndarray]] = []  # (boxes, inputs)
        size = 0
        for image, base_box in items:
            boxes = self.boxes_for(image, base_box)
            inputs = self.batch_for(image, boxes, flipped)
            if pending and size + len(inputs) > self.batch_boxes:
                yield from self._run(pending, flipped)
                pending, size = [], 0
            pending.append((boxes, inputs))
            size += len(inputs)
        if pending:
            yield from self._run(pending, flipped)

    def _run(self, pending, flipped: bool) -> Iterator[PhotoEmbedding]:
        out = np.asarray(self.embed_fn(np.concatenate([inp for _, inp in pending])), dtype=np.float32)
        start = 0
        for boxes, inputs in pending:
            chunk = out[start : start + len(inputs)]
            start += len(inputs)
            n = len(boxes)
            yield PhotoEmbedding(
                embedding=aggregate_tta(chunk[:n]),
                boxes=boxes,
                flipped=aggregate_tta(chunk[n:]) if flipped else None,
            )


def available_providers(preferred: Sequence[str] | None = None) -> list[str]:
    """onnxruntime providers to use, in order: CUDA when available, then CPU (or ``preferred``)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    wanted = list(preferred) if preferred else ["CUDAExecutionProvider", "CPUExecutionProvider"]
    chosen = [p for p in wanted if p in available]
    return chosen or ["CPUExecutionProvider"]


class OnnxModel:
    """One onnxruntime session over an exported network, checked against the manifest.

    Args:
        path: the ``.onnx`` file.
        providers: onnxruntime execution providers in order of preference (default: CUDA, CPU).
        intra_op_threads: onnxruntime's intra-op thread count (None: its default).
        expected_sha256: when given, the file's checksum must match.

    Raises:
        CorruptArtifactError: the file is missing, unreadable, or its checksum differs.
    """

    def __init__(
        self,
        path: str | Path,
        providers: Sequence[str] | None = None,
        intra_op_threads: int | None = None,
        expected_sha256: str | None = None,
    ):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise CorruptArtifactError(self.path, "file not found")
        if expected_sha256 and sha256_file(self.path) != expected_sha256:
            raise CorruptArtifactError(self.path, "sha256 differs from the manifest's")
        opts = ort.SessionOptions()
        if intra_op_threads:
            opts.intra_op_num_threads = int(intra_op_threads)
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=available_providers(providers))
        except Exception as exc:  # onnxruntime raises its own exception types
            raise CorruptArtifactError(self.path, f"onnxruntime cannot load it ({str(exc)[:200]})") from exc
        self.input = self.session.get_inputs()[0]
        self.output = self.session.get_outputs()[0]

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """``(n, 3, H, W) float32`` → the first output, float32."""
        (out,) = self.session.run([self.output.name], {self.input.name: np.ascontiguousarray(batch, np.float32)})
        return np.asarray(out, dtype=np.float32)


def load_embedder_model(bundle: str | Path, manifest: Manifest, providers=None, intra_op_threads=None) -> OnnxModel:
    """Open a bundle's embedding network and check it against the manifest.

    Raises:
        CorruptArtifactError: missing file or checksum mismatch.
        ManifestMismatchError: input shape or output dimension differs from the manifest.
    """
    model = OnnxModel(
        Path(bundle) / manifest.model.file, providers, intra_op_threads, expected_sha256=manifest.model.sha256
    )
    check_input_shape(manifest, tuple(model.input.shape), f"{manifest.model.file} input")
    out_dim = model.output.shape[-1]
    if isinstance(out_dim, int):
        check_embedding_dim(manifest, out_dim, f"{manifest.model.file} output")
    else:
        h, w = manifest.preprocess.input_size
        probe = model(np.zeros((1, 3, h, w), np.float32))
        check_embedding_dim(manifest, probe.shape[-1], f"{manifest.model.file} output")
    if model.input.name != manifest.model.input_name:
        raise ManifestMismatchError(
            f"{manifest.model.file} input is named {model.input.name!r}, "
            f"the manifest says {manifest.model.input_name!r}"
        )
    return model
