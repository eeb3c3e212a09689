from __future__ import annotations

import csv
import io
import re

import numpy as np
import pytest
from helpers import jpeg_bytes, png_bytes
from PIL import Image

from core.errors import (
    EmptyUploadError,
    ImageTooLargeError,
    InputImageError,
    InvalidImageError,
    UnsupportedFormatError,
)
from core.preprocess import (
    DecodeLimits,
    PreprocessSpec,
    crop_resize,
    crops_to_batch,
    decode_image,
    load_image_file,
    normalize,
)

STATUS_TO_ERROR = {
    400: EmptyUploadError,
    413: ImageTooLargeError,
    415: UnsupportedFormatError,
    422: InvalidImageError,
}


def _odd_rows(odd_images_dir):
    with open(odd_images_dir / "MANIFEST.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_odd_images_table(odd_images_dir):
    """Every MANIFEST.csv row: `identify` rows decode upright RGB; 4xx rows raise the matching error."""
    reference = load_image_file(odd_images_dir / "bmp_rgb24.bmp").pixels.astype(np.float64)
    rows = _odd_rows(odd_images_dir)
    assert len(rows) == 28
    for row in rows:
        path = odd_images_dir / row["file"]
        expected = row["expected"]
        m = re.match(r"(\d{3})\b", expected)
        if m:
            with pytest.raises(STATUS_TO_ERROR[int(m.group(1))]) as info:
                load_image_file(path)
            assert info.value.detail, row["file"]
            continue
        assert expected.startswith("identify"), row
        img = load_image_file(path)
        px = img.pixels
        assert px.ndim == 3 and px.shape[2] == 3 and px.dtype == np.uint8, row["file"]
        assert px.flags["C_CONTIGUOUS"]
        naive = np.asarray(Image.open(path).convert("RGB"))
        if naive.std() > 1.0:  # a uniform source (the 940x2 white strip) may decode uniform
            assert px.std() > 1.0, f"{row['file']} decoded to a blank image"
        if row["file"].startswith("exif_orient"):
            # The four EXIF variants of the same 128x128 photo all come out upright and equal to
            # the BMP copy without EXIF (JPEG noise only); mirrored or rotated they would differ
            # by about 60 grey levels.
            assert img.exif_transposed
            assert np.abs(px.astype(np.float64) - reference).mean() < 8.0, row["file"]


def test_cmyk_with_exif_orientation_comes_out_portrait(odd_images_dir):
    img = load_image_file(odd_images_dir / "cmyk_photo_exif_orient6.jpg")
    assert img.pixels.shape == (800, 533, 3)
    assert img.exif_transposed


def test_sixteen_bit_png_in_8_bit_range_is_not_darkened(odd_images_dir):
    img = load_image_file(odd_images_dir / "gray16_I16_trns.png")
    raw = np.asarray(Image.open(odd_images_dir / "gray16_I16_trns.png"), dtype=np.float64)
    assert raw.max() <= 255  # the premise of the MANIFEST row
    np.testing.assert_allclose(img.pixels[..., 0], raw, atol=0.5)


def test_sixteen_bit_full_range_is_rescaled_not_clipped():
    arr = np.array([[0, 257 * 100, 65535, 32896]], dtype=np.uint16)
    img = decode_image(png_bytes(arr))
    # 16-bit: divide by 257 -> 0, 100, 255, 128 (clipping would give 0, 255, 255, 255).
    assert img.pixels[0, :, 0].tolist() == [0, 100, 255, 128]
    assert (img.pixels[..., 0] == img.pixels[..., 2]).all()


def test_twelve_bit_values_use_twelve_bit_scale():
    arr = np.array([[0, 4095, 2048]], dtype=np.uint16)
    img = decode_image(png_bytes(arr))
    # max 4095 -> 12 bits -> scale 255 / 4095: 2048 * 255 / 4095 = 127.5 -> 128
    assert img.pixels[0, :, 0].tolist() == [0, 255, 128]


def test_alpha_is_composited_on_white():
    arr = np.zeros((2, 2, 4), dtype=np.uint8)
    arr[0, 0] = (255, 0, 0, 255)  # opaque red
    arr[0, 1] = (0, 0, 0, 0)  # fully transparent black
    arr[1, 0] = (0, 0, 0, 128)  # half-transparent black over white -> about 127
    img = decode_image(png_bytes(arr))
    assert img.pixels[0, 0].tolist() == [255, 0, 0]
    assert img.pixels[0, 1].tolist() == [255, 255, 255]
    assert abs(int(img.pixels[1, 0, 0]) - 127) <= 1


def test_exif_orientation_6_rotates_clockwise():
    arr = np.zeros((10, 20, 3), dtype=np.uint8)
    arr[0, 0] = 255  # top-left marker
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    im.save(buf, format="PNG", exif=exif)
    img = decode_image(buf.getvalue())
    assert img.pixels.shape == (20, 10, 3)
    # rotated 90 degrees clockwise for display: the top-left pixel ends top-right
    assert np.argwhere(img.pixels[..., 0] == 255).tolist() == [[0, 9]]


def test_limits_are_checked_before_decoding():
    data = jpeg_bytes(np.full((100, 100, 3), 50, np.uint8))
    with pytest.raises(ImageTooLargeError, match="bytes"):
        decode_image(data, DecodeLimits(max_bytes=len(data) - 1))
    with pytest.raises(ImageTooLargeError, match="pixels"):
        decode_image(data, DecodeLimits(max_pixels=100 * 100 - 1))
    assert decode_image(data, DecodeLimits(max_bytes=len(data), max_pixels=100 * 100)).pixels.shape == (
        100,
        100,
        3,
    )


def test_bad_inputs_raise_typed_errors():
    with pytest.raises(EmptyUploadError):
        decode_image(b"")
    with pytest.raises(UnsupportedFormatError):
        decode_image(b"<svg xmlns='http://www.w3.org/2000/svg'/>")
    good = jpeg_bytes(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    with pytest.raises(InvalidImageError):
        decode_image(good[: len(good) // 2])
    # every input error shares one base class, so the service maps them in one place
    assert issubclass(InvalidImageError, InputImageError)


def test_normalize_by_hand():
    spec = PreprocessSpec(input_size=(1, 1), mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 0.5))
    crop = np.array([[[255, 0, 51]]], dtype=np.uint8)
    out = normalize(crop, spec)
    assert out.shape == (3, 1, 1) and out.dtype == np.float32
    # (1 - .5)/.5 = 1 ; (0 - .5)/.25 = -2 ; (0.2 - .5)/.5 = -0.6
    np.testing.assert_allclose(out.ravel(), [1.0, -2.0, -0.6], atol=1e-6)


def test_crop_resize_takes_the_box():
    img = np.zeros((4, 6, 3), dtype=np.uint8)
    img[1:3, 2:5] = 200  # a 2x3 block at x 2..5, y 1..3
    crop = crop_resize(img, (2, 1, 5, 3), (2, 3), "nearest")
    assert crop.shape == (2, 3, 3) and (crop == 200).all()


def test_crops_to_batch_shape_and_degenerate_images():
    spec = PreprocessSpec(input_size=(8, 16))
    strip = np.random.default_rng(1).integers(0, 255, (2, 940, 3), dtype=np.uint8)
    boxes = np.array([[0, 0, 940, 2], [100, 0, 101, 1]], dtype=np.float32)
    batch = crops_to_batch(strip, boxes, spec)
    assert batch.shape == (2, 3, 8, 16) and batch.dtype == np.float32
    assert np.isfinite(batch).all()
    one = crops_to_batch(np.full((1, 1, 3), 7, np.uint8), np.array([[0, 0, 1, 1]], np.float32), spec)
    assert one.shape == (1, 3, 8, 16)
