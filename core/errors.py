"""Typed errors raised by whaleid's domain code.

Domain code (core, index, training) raises these; only ``service/errors.py`` maps them to HTTP
status codes. Each class carries a stable, machine-readable ``code`` and a ``detail`` string that
is safe to show to a user (it never contains a stack trace or a server path unless the error is
about a server-side file).
"""

from __future__ import annotations

from pathlib import Path


class WhaleidError(Exception):
    """Base class of every error whaleid raises on purpose.

    Attributes:
        code: stable identifier of the error kind, e.g. ``"empty_upload"``.
        detail: human-readable message, stable for a given cause.
    """

    code = "whaleid_error"

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


# --- bad input (an uploaded photo) ------------------------------------------------------------


class InputImageError(WhaleidError):
    """Base class of the errors about an uploaded or listed photo."""

    code = "invalid_input"


class EmptyUploadError(InputImageError):
    """The upload holds zero bytes."""

    code = "empty_upload"

    def __init__(self, detail: str = "empty upload: the file has no bytes"):
        super().__init__(detail)


class ImageTooLargeError(InputImageError):
    """The photo is over the byte limit or the pixel limit (checked before decoding pixels)."""

    code = "image_too_large"


class UnsupportedFormatError(InputImageError):
    """The bytes are not an image, or an image format whaleid does not accept (e.g. SVG)."""

    code = "unsupported_format"


class InvalidImageError(InputImageError):
    """The bytes look like a supported image but cannot be decoded (truncated, corrupt)."""

    code = "invalid_image"


# --- artefacts: bundle, manifest, gallery ----------------------------------------------------


class ManifestError(WhaleidError):
    """A manifest cannot be read, or has an unknown or incompatible format version."""

    code = "manifest_error"


class ManifestMismatchError(ManifestError):
    """Model, gallery and manifest disagree (dimension, input size, checksum...)."""

    code = "manifest_mismatch"


class CorruptArtifactError(WhaleidError):
    """An artefact file is missing, truncated or unreadable. The message names the file.

    Attributes:
        path: the file concerned.
    """

    code = "corrupt_artifact"

    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        super().__init__(f"corrupt or unreadable file {self.path}: {reason}")


# --- gallery operations ----------------------------------------------------------------------


class UnknownIdentityError(WhaleidError):
    """No identity with this whale id is in the gallery."""

    code = "unknown_identity"

    def __init__(self, whale_id: str):
        self.whale_id = whale_id
        super().__init__(f"unknown whale_id: {whale_id!r} is not in the gallery")


class IdentityConflictError(WhaleidError):
    """A change that collides with the catalogue as it is: the new whale id is taken (rename, move to a
    new whale), or another request changed the same whale first."""

    code = "whale_id_taken"


class UnknownImageError(WhaleidError):
    """No gallery photo with this image id belongs to this identity."""

    code = "unknown_image"

    def __init__(self, whale_id: str, image_id: int):
        self.whale_id = whale_id
        self.image_id = image_id
        super().__init__(f"unknown image: whale {whale_id!r} has no image {image_id}")


class InvalidIdentityError(WhaleidError):
    """A whale id that cannot be used (empty, reserved such as ``new_whale``, bad characters)."""

    code = "invalid_whale_id"


class InvalidRequestError(WhaleidError):
    """A request that cannot be served as asked (e.g. a scoring mode this bundle lacks)."""

    code = "invalid_request"


class ConfigError(WhaleidError):
    """A configuration file or option is invalid (unknown key, wrong type, bad value)."""

    code = "config_error"


# --- storage: the disk or the gallery store cannot take a change right now ---------------------


class StorageError(WhaleidError):
    """The gallery store or a temporary file cannot be read or written right now (disk I/O error,
    read-only volume, missing folder). Nothing was stored; the same request may succeed later.

    Attributes:
        retry_after_s: seconds a client should wait before retrying (``Retry-After``), or None.
    """

    code = "store_unavailable"
    retry_after_s: int | None = 5


class StoreBusyError(StorageError):
    """Another connection (e.g. ``whaleid build-gallery``) held the gallery store's write lock for
    longer than the busy timeout. Nothing was stored."""

    code = "store_busy"
    retry_after_s = 1


class InsufficientStorageError(StorageError):
    """No space left on the disk of the gallery store or of the upload's temporary file
    (``ENOSPC``, ``EDQUOT``, SQLite's ``SQLITE_FULL``). Nothing was stored."""

    code = "insufficient_storage"
    retry_after_s = None
