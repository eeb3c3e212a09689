"""Service parts without a bundle: the micro-batcher, the streaming body limit, the error map."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from fastapi import FastAPI, UploadFile
from fastapi.testclient import TestClient

from core import errors
from service.batching import MicroBatcher
from service.errors import STATUS, install_error_handlers, status_of
from service.limits import BodyLimitMiddleware


def test_error_map_covers_the_odd_image_statuses():
    assert status_of(errors.EmptyUploadError()) == 400
    assert status_of(errors.ImageTooLargeError("x")) == 413
    assert status_of(errors.UnsupportedFormatError("x")) == 415
    assert status_of(errors.InvalidImageError("x")) == 422
    assert status_of(errors.UnknownIdentityError("w")) == 404
    assert status_of(errors.ManifestError("x")) == 500
    assert status_of(errors.StoreBusyError("x")) == 503 and status_of(errors.StorageError("x")) == 503
    assert status_of(errors.InsufficientStorageError("x")) == 507
    assert set(STATUS.values()) == {400, 404, 409, 413, 415, 422, 503, 507}


def test_micro_batcher_groups_concurrent_requests_and_isolates_failures():
    calls = []

    def fn(x):
        calls.append(len(x))
        if (x == -1).any():
            raise RuntimeError("poisoned")
        return x.reshape(len(x), -1)[:, :2] * 2

    async def main():
        b = MicroBatcher(fn, max_boxes=20, max_wait_s=0.05, input_shape=(1, 1, 2))
        await b.start()
        good = [np.full((5, 1, 1, 2), i, np.float32) for i in range(3)]
        bad = np.full((5, 1, 1, 2), -1, np.float32)
        results = await asyncio.gather(*(b.submit(g) for g in good), b.submit(bad), return_exceptions=True)
        with pytest.raises(ValueError):
            await b.submit(np.zeros((2, 3, 1, 2), np.float32))
        await b.stop()
        return results

    results = asyncio.run(main())
    assert calls[0] == 20  # the four requests went as one call of 20 boxes
    for i in range(3):
        np.testing.assert_array_equal(results[i], np.full((5, 2), 2 * i, np.float32))
    assert isinstance(results[3], RuntimeError)  # only the poisoned request failed (after per-request retries)


def test_micro_batcher_splits_at_max_boxes():
    calls = []

    async def main():
        b = MicroBatcher(
            lambda x: (calls.append(len(x)), x.reshape(len(x), -1))[1],
            max_boxes=8,
            max_wait_s=0.05,
            input_shape=(1, 1, 1),
        )
        await b.start()
        await asyncio.gather(*(b.submit(np.zeros((5, 1, 1, 1), np.float32)) for _ in range(3)))
        await b.stop()

    asyncio.run(main())
    assert calls == [5, 5, 5]  # 5 + 5 > 8: each request alone


def _app(limit):
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/up")
    async def up(file: UploadFile):
        return {"n": len(await file.read())}

    app.add_middleware(BodyLimitMiddleware, limit_for=lambda path, method: limit if method == "POST" else None)
    return app


def test_body_limit_refuses_over_limit_bodies():
    with TestClient(_app(2000)) as c:
        assert c.post("/up", files={"file": ("a", b"x" * 1000)}).json() == {"n": 1000}
        r = c.post("/up", files={"file": ("a", b"x" * 5000)})
        assert r.status_code == 413 and r.json()["detail"] == "upload too large: over the limit of 2000 bytes"

        def chunks():  # no Content-Length: counted while streaming
            yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\n'
            for _ in range(10):
                yield b"y" * 500

        r = c.post("/up", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
        assert r.status_code == 413
