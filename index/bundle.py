"""Opening a bundle: the one way the service, the CLI workflows and ``predict`` load one (torch-free).

A bundle folder holds ``manifest.json`` (the data contract), ``model.onnx`` (the embedding network),
optionally ``detector.onnx``, and the gallery folder (``gallery/`` unless the manifest or the caller
says otherwise). :func:`open_bundle` checks the model against the manifest and opens the gallery;
:meth:`OpenBundle.identifier` builds the identify pipeline shared by ``POST /identify`` and ``predict``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from core.manifest import MANIFEST_NAME, Manifest, load_manifest
from index.embedder import CPU_BATCH_BOXES, GPU_BATCH_BOXES, OnnxModel, PhotoEmbedder, load_embedder_model

if TYPE_CHECKING:
    from core.preprocess import DecodeLimits
    from index.gallery import Gallery
    from index.identify import Identifier


def is_bundle(path: str | Path) -> bool:
    """Whether ``path`` is a bundle folder (holds a ``manifest.json``)."""
    return (Path(path) / MANIFEST_NAME).is_file()


def gallery_folder(bundle: str | Path, manifest: Manifest, gallery_dir: str | Path | None = None) -> Path:
    """The gallery folder: ``gallery_dir`` when given, else the manifest's folder inside the bundle."""
    return Path(gallery_dir) if gallery_dir else Path(bundle) / manifest.gallery.folder


def bundle_embedder(
    bundle: str | Path, manifest: Manifest, providers: list[str] | None = None, intra_op_threads: int | None = None
) -> PhotoEmbedder:
    """The bundle's :class:`PhotoEmbedder` on onnxruntime (with its detector, when it has one), packing
    :data:`~index.embedder.GPU_BATCH_BOXES` boxes per network call on CUDA, else
    :data:`~index.embedder.CPU_BATCH_BOXES`.

    Raises:
        CorruptArtifactError, ManifestMismatchError: a model file missing, altered or unlike the manifest.
    """
    model = load_embedder_model(bundle, manifest, providers, intra_op_threads)
    detector = None
    if manifest.detector is not None:
        from index.detector import OnnxBoxDetector

        detector = OnnxBoxDetector.from_bundle(bundle, manifest, providers)
    on_gpu = model.providers[:1] == ["CUDAExecutionProvider"]
    batch = GPU_BATCH_BOXES if on_gpu else CPU_BATCH_BOXES
    return PhotoEmbedder(model, manifest.preprocess, manifest.tta, detector, batch_boxes=batch)


@dataclass
class OpenBundle:
    """A loaded bundle. Close it (or use it as a context manager) to close the gallery's store.

    Attributes:
        path: the bundle folder.
        manifest: its manifest (possibly with caller overrides, e.g. another matcher).
        embedder: the network, the detector and the TTA policy.
        gallery_dir: the gallery folder.
        gallery: the opened gallery.
    """

    path: Path
    manifest: Manifest
    embedder: PhotoEmbedder
    gallery_dir: Path
    gallery: Gallery

    @property
    def enrol_embedder(self) -> PhotoEmbedder:
        """The embedder of enrolled photos (the manifest's ``gallery.enrol_boxes`` first TTA boxes)."""
        return self.embedder.for_enrolment(self.manifest.gallery.enrol_boxes)

    @property
    def model(self) -> OnnxModel:
        """The onnxruntime embedding network (the embedder's ``embed_fn``)."""
        return self.embedder.embed_fn  # type: ignore[return-value]

    def identifier(self, limits: DecodeLimits, scoring: str | None = None) -> Identifier:
        """The identify pipeline of this bundle (with its local matcher when it has local features).

        Raises:
            ConfigError: ``scoring`` (default: the manifest's) is not a mode this bundle can serve.
        """
        from index.identify import Identifier

        return Identifier.for_bundle(self.manifest, self.gallery, self.embedder, limits, scoring)

    def close(self) -> None:
        self.gallery.close()

    def __enter__(self) -> OpenBundle:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_bundle(
    bundle: str | Path,
    gallery_dir: str | Path | None = None,
    manifest: Manifest | None = None,
    providers: list[str] | None = None,
    intra_op_threads: int | None = None,
    busy_timeout_s: float = 5.0,
    store_url: str | None = None,
) -> OpenBundle:
    """Load a bundle: its manifest, its checked network (and detector) and its gallery.

    Args:
        bundle: the bundle folder.
        gallery_dir: another gallery folder (default: the manifest's, inside the bundle).
        manifest: use this manifest instead of reading ``manifest.json`` (e.g. with overrides).
        providers: onnxruntime execution providers (default: CUDA when available, else CPU).
        intra_op_threads: onnxruntime's intra-op threads (default: its own).
        busy_timeout_s: seconds a write waits for the store's lock before ``StoreBusyError``.
        store_url: a ``postgresql://`` URL of a store shared by several replicas (default: the
            gallery folder's SQLite file).

    Raises:
        ManifestError: no readable manifest. CorruptArtifactError, ManifestMismatchError: model files
        missing, altered or unlike the manifest. StorageError: the gallery cannot be opened.
    """
    from index.gallery import Gallery

    path = Path(bundle)
    manifest = manifest if manifest is not None else load_manifest(path)
    embedder = bundle_embedder(path, manifest, providers, intra_op_threads)
    folder = gallery_folder(path, manifest, gallery_dir)
    gallery = Gallery.for_manifest(folder, manifest, busy_timeout_s, store_url)
    return OpenBundle(path, manifest, embedder, folder, gallery)
