"""Schemathesis hooks for the fuzz run of ``test_openapi_fuzz.py``: real photos for the photo fields.

The document says a photo is one of the accepted image formats (its multipart ``encoding`` lists
their media types). Schemathesis draws the ``format: binary`` values (the photo fields) from the
strategy registered here: decodable PNG and JPEG images of random size and content, so that
schema-valid requests reach the model and the gallery instead of stopping at 415. Schema-invalid
(negative) cases are drawn by schemathesis itself from the schema (empty files, wrong types, ...).
"""

from __future__ import annotations

import io

import numpy as np
import schemathesis
from hypothesis import strategies as st
from PIL import Image


@st.composite
def _photo(draw: st.DrawFn, fmt: str) -> bytes:
    width = draw(st.integers(min_value=1, max_value=160))
    height = draw(st.integers(min_value=1, max_value=120))
    seed = draw(st.integers(min_value=0, max_value=2**32 - 1))
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format=fmt)
    return buf.getvalue()


# every `format: binary` value of a positive case (the photo fields) is a real PNG or JPEG
schemathesis.openapi.format("binary", st.one_of(_photo("PNG"), _photo("JPEG")))
