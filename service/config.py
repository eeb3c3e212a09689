"""Service settings: one ``Settings`` class, read from ``WHALEID_*`` environment variables.

Validated at start-up: a missing bundle, a bundle without ``manifest.json`` or a nonsensical limit
stops the service before it listens, with a message naming the variable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.manifest import ScoringModeName

MiB = 1024 * 1024


class Settings(BaseSettings):
    """Service configuration (environment variables ``WHALEID_<NAME>``, case-insensitive).

    Attributes:
        bundle: bundle folder (``manifest.json``, ``model.onnx``...). ``WHALEID_BUNDLE``.
        gallery_dir: gallery folder (default: the bundle's ``gallery/``); put it on its own volume
            to keep the bundle read-only.
        api_key: when set, ``POST``/``DELETE`` on ``/gallery`` need it in the ``X-API-Key`` header.
        max_upload_bytes: largest photo accepted, in bytes (enforced while the body streams in).
        max_request_bytes: largest ``POST /gallery`` body (several photos), in bytes.
        max_image_pixels: largest ``width * height`` accepted, checked before decoding.
        max_files: most photos per ``POST /gallery``.
        batch_max_boxes: most boxes per onnxruntime call when concurrent requests are micro-batched.
        batch_wait_ms: how long the first request of a batch waits for others, in milliseconds.
        providers: onnxruntime providers in order (default: CUDA when available, then CPU).
        intra_op_threads: onnxruntime intra-op threads (default: onnxruntime's choice).
        scoring: default scoring mode (default: the manifest's).
        thumbnail_px: longest side of the thumbnails kept for enrolled photos, in pixels.
        snapshot_every: save the gallery's FAISS snapshot after this many changes (and at shutdown).
        tmp_dir: folder of the uploads' temporary files (default: the system's, ``TMPDIR``); it needs
            room for ``max_request_bytes`` per request in flight.
        min_free_bytes: ``/ready`` fails (503) when the gallery's disk or ``tmp_dir`` has less free space.
        busy_timeout_s: how long a change waits for another process's write lock on the gallery store
            (e.g. ``whaleid build-gallery``), in seconds, before answering 503 ``store_busy``.
        store_url: ``postgresql://user:password@host:port/database``: the gallery store is that
            database, shared by every replica (``pip install 'whaleid[postgres]'``; create its schema
            with ``whaleid store migrate URL``). Default: the SQLite file in the gallery folder.
    """

    model_config = SettingsConfigDict(env_prefix="WHALEID_", case_sensitive=False, extra="ignore")

    bundle: Path
    gallery_dir: Path | None = None
    api_key: SecretStr | None = None
    max_upload_bytes: int = Field(20 * MiB, gt=0)
    max_request_bytes: int = Field(100 * MiB, gt=0)
    max_image_pixels: int = Field(40_000_000, gt=0)
    max_files: int = Field(20, gt=0, le=1000)
    batch_max_boxes: int = Field(40, gt=0, le=4096)
    batch_wait_ms: float = Field(3.0, ge=0, le=1000)
    providers: list[str] | None = None
    intra_op_threads: int | None = Field(None, gt=0)
    scoring: ScoringModeName | None = None
    thumbnail_px: int = Field(256, ge=32, le=2048)
    snapshot_every: int = Field(100, gt=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    tmp_dir: Path | None = None
    min_free_bytes: int = Field(100 * MiB, ge=0)
    busy_timeout_s: float = Field(5.0, ge=0, le=600)
    store_url: SecretStr | None = None

    @field_validator("store_url")
    @classmethod
    def _postgres_url(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None or not v.get_secret_value():
            return None
        if not v.get_secret_value().startswith(("postgresql://", "postgres://")):
            raise ValueError("WHALEID_STORE_URL must be a postgresql://user:password@host:port/database URL")
        return v

    @field_validator("bundle")
    @classmethod
    def _bundle_exists(cls, v: Path) -> Path:
        if not (v / "manifest.json").is_file():
            raise ValueError(f"WHALEID_BUNDLE={v} is not a bundle folder (no manifest.json in it)")
        return v

    @field_validator("scoring")
    @classmethod
    def _known_mode(cls, v: str | None) -> str | None:
        from index import modes

        if v is not None and v not in modes.names():
            raise ValueError(f"WHALEID_SCORING={v!r} is not a scoring mode (known: {', '.join(modes.names())})")
        return v

    @field_validator("tmp_dir")
    @classmethod
    def _tmp_dir_exists(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_dir():
            raise ValueError(f"WHALEID_TMP_DIR={v} is not a folder")
        return v

    @field_validator("api_key")
    @classmethod
    def _empty_key_is_none(cls, v: SecretStr | None) -> SecretStr | None:
        return v if v is not None and v.get_secret_value() else None
