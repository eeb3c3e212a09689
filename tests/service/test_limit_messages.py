"""413 messages give the limit in MiB and name the setting that raises it (issue 23: they gave a raw
byte count, ``over the limit of 21037056 bytes``, while the README says 20 MiB)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import png_bytes, tiny_bundle

from core.errors import ImageTooLargeError
from core.preprocess import DecodeLimits, decode_image, describe_bytes
from service.limits import MULTIPART_OVERHEAD_BYTES, upload_too_large

MiB = 1024 * 1024


def test_sizes_read_as_people_read_them():
    assert describe_bytes(20 * MiB) == "20 MiB"
    assert describe_bytes(21037056) == "20.1 MiB"
    assert describe_bytes(2000) == "2000 bytes"


def test_body_limit_message_names_the_setting_and_its_value():
    assert (
        upload_too_large(20 * MiB + MULTIPART_OVERHEAD_BYTES, "/identify")
        == "upload too large: over the limit of 20 MiB (raise it with WHALEID_MAX_UPLOAD_BYTES)"
    )
    assert upload_too_large(100 * MiB + MULTIPART_OVERHEAD_BYTES, "/gallery").endswith(
        "100 MiB (raise it with WHALEID_MAX_REQUEST_BYTES)"
    )
    assert upload_too_large(2000, "/other") == "upload too large: over the limit of 2000 bytes"


def test_decode_limit_message_names_the_setting():
    data = png_bytes(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    limits = DecodeLimits(2 * MiB, 100, "WHALEID_MAX_UPLOAD_BYTES", "WHALEID_MAX_IMAGE_PIXELS")
    with pytest.raises(ImageTooLargeError) as exc:
        decode_image(data, limits)
    assert exc.value.detail == "image too large: over the limit of 100 pixels (raise it with WHALEID_MAX_IMAGE_PIXELS)"
    with pytest.raises(ImageTooLargeError) as exc:
        decode_image(data, DecodeLimits(1000, bytes_setting="WHALEID_MAX_UPLOAD_BYTES"))
    assert exc.value.detail == "image too large: over the limit of 1000 bytes (raise it with WHALEID_MAX_UPLOAD_BYTES)"


def test_identify_413_says_mib_and_the_setting(tmp_path):
    pytest.importorskip("onnx")
    from fastapi.testclient import TestClient

    from service.config import Settings
    from service.main import create_app

    bundle = tiny_bundle(tmp_path / "bundle")
    with TestClient(create_app(Settings(bundle=bundle, max_upload_bytes=MiB))) as c:
        r = c.post("/identify", files={"file": ("big.jpg", b"x" * (2 * MiB), "image/jpeg")})
    assert r.status_code == 413
    assert r.json() == {
        "detail": "upload too large: over the limit of 1 MiB (raise it with WHALEID_MAX_UPLOAD_BYTES)",
        "code": "upload_too_large",
    }


def test_gallery_413_for_one_photo_says_mib_and_the_setting(tmp_path):
    pytest.importorskip("onnx")
    from fastapi.testclient import TestClient

    from service.config import Settings
    from service.main import create_app

    bundle = tiny_bundle(tmp_path / "bundle")
    with TestClient(create_app(Settings(bundle=bundle, max_upload_bytes=MiB))) as c:
        # the body is under WHALEID_MAX_REQUEST_BYTES (100 MiB): the photo's own limit refuses it
        r = c.post("/gallery", files={"files": ("big.jpg", b"x" * (2 * MiB), "image/jpeg")})
    assert r.status_code == 413
    assert r.json()["detail"] == "upload too large: over the limit of 1 MiB (raise it with WHALEID_MAX_UPLOAD_BYTES)"
