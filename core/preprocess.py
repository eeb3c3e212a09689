"""Photo decoding and model preprocessing: the one code path shared by training and serving.

``decode_image`` turns untrusted bytes into an upright RGB array, refusing what is not a
photo before any pixel is decoded; ``crops_to_batch`` turns an array plus boxes into the model's
input. Training's evaluation transform, ``build-gallery`` and the service all call these, with
the constants of the bundle's manifest, so they cannot drift apart.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field

from core.errors import EmptyUploadError, ImageTooLargeError, InvalidImageError, UnsupportedFormatError

# Truncated files are an error (422), never silently padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False

#: Raster formats accepted, sniffed from the content (never the file name). TIFF is accepted and
#: its first page used; SVG and other vector or document formats are refused (415).
ACCEPTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "AVIF")

DEFAULT_MAX_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_PIXELS = 40_000_000

INVALID_IMAGE_DETAIL = "invalid image: the file is truncated or corrupt and cannot be decoded"

#: EXIF orientations 2..8 change the pixels; 1 (or none) is already upright.
_ORIENTATIONS_TO_FIX = frozenset(range(2, 9))

#: Background that transparent pixels are composited onto (white).
ALPHA_BACKGROUND = (255, 255, 255)

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
Interpolation = Literal["nearest", "bilinear", "bicubic", "lanczos"]


def describe_bytes(n: int) -> str:
    """A byte count as people read it: ``"20 MiB"``, ``"20.5 MiB"``, or ``"2000 bytes"`` under 1 MiB."""
    if n < 1024 * 1024:
        return f"{n} bytes"
    return f"{n / (1024 * 1024):.1f}".removesuffix(".0") + " MiB"


def over_limit(what: str, limit: str, setting: str | None) -> str:
    """``"<what> too large: over the limit of <limit>"``, naming the setting that raises it when there is one."""
    return f"{what} too large: over the limit of {limit}" + (f" (raise it with {setting})" if setting else "")


@dataclass(frozen=True)
class DecodeLimits:
    """Limits checked before a photo's pixels are decoded.

    Attributes:
        max_bytes: largest accepted file, in bytes.
        max_pixels: largest accepted ``width * height`` of the first frame, in pixels.
        bytes_setting, pixels_setting: the settings that set them (named in the error), if any.
    """

    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    bytes_setting: str | None = None
    pixels_setting: str | None = None


@dataclass(frozen=True)
class DecodedImage:
    """An upright RGB photo.

    Attributes:
        pixels: ``(H, W, 3) uint8``, C-contiguous, after EXIF orientation.
        format: the sniffed format name, e.g. ``"JPEG"``.
        exif_transposed: whether an EXIF orientation tag changed the pixels.
    """

    pixels: np.ndarray
    format: str
    exif_transposed: bool

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])


def _rescale_high_bit_depth(im: Image.Image) -> Image.Image:
    """Map a 16-bit (or 32-bit integer / float) single-channel image to 8 bits.

    The bit depth is inferred from the largest sample: ``bits = ceil(log2(max + 1))`` clamped to
    8..16, and samples are divided by ``(2**bits - 1) / 255``. A true 16-bit photo is therefore
    divided by 257 (not clipped to white), a 12-bit one by about 16, and a file whose samples only
    span 0..255 is left as it is (not turned near-black).
    """
    arr = np.asarray(im, dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    if finite.size == 0:
        return Image.new("L", im.size, 0)
    lo = min(float(finite.min()), 0.0)
    hi = float(finite.max()) - lo
    bits = min(max(math.ceil(math.log2(hi + 1.0)) if hi > 0 else 8, 8), 16)
    scaled = np.clip((np.nan_to_num(arr, nan=0.0) - lo) * (255.0 / (2**bits - 1)), 0, 255)
    return Image.fromarray(np.round(scaled).astype(np.uint8), mode="L")


def _composite(im: Image.Image) -> Image.Image:
    rgba = im.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return _rescale_high_bit_depth(im).convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info):
        return _composite(im)
    if mode == "1":
        return im.convert("L").convert("RGB")
    # L, P without transparency, CMYK (Adobe-inverted CMYK JPEGs are handled by Pillow), YCbCr, LAB...
    return im.convert("RGB")


def decode_image(data: bytes, limits: DecodeLimits | None = None) -> DecodedImage:
    """Decode untrusted bytes into an upright RGB photo.

    Order of checks: empty, byte limit, format sniffed from the content, declared pixel count (all
    before decoding any pixel), then the decode itself. Animated or multi-page files give their
    first frame. EXIF orientation is applied; CMYK, palette, LA, 1-bit and 16-bit modes become RGB
    (transparent pixels composited onto white; 16-bit rescaled, see ``_rescale_high_bit_depth``).

    Args:
        data: the file's bytes.
        limits: byte and pixel limits; ``DecodeLimits()`` when ``None``.

    Returns:
        The decoded photo; ``pixels`` is ``(H, W, 3) uint8``.

    Raises:
        EmptyUploadError: ``data`` is empty.
        ImageTooLargeError: over ``limits.max_bytes`` or ``limits.max_pixels`` (incl. decompression bombs).
        UnsupportedFormatError: not an image, or not one of ``ACCEPTED_FORMATS``.
        InvalidImageError: a supported format whose data cannot be decoded (truncated, corrupt).
    """
    limits = limits or DecodeLimits()
    if not data:
        raise EmptyUploadError()
    if len(data) > limits.max_bytes:
        raise ImageTooLargeError(over_limit("image", describe_bytes(limits.max_bytes), limits.bytes_setting))
    with warnings.catch_warnings():
        # Corrupt EXIF blocks, huge ICC profiles and palette-transparency notices are not errors.
        warnings.simplefilter("ignore")
        try:
            im = Image.open(io.BytesIO(data), formats=list(ACCEPTED_FORMATS))
        except Image.DecompressionBombError as exc:
            raise ImageTooLargeError(over_limit("image", f"{limits.max_pixels} pixels", limits.pixels_setting)) from exc
        except UnidentifiedImageError as exc:
            raise UnsupportedFormatError(
                f"unsupported format: not a raster image of an accepted format ({', '.join(ACCEPTED_FORMATS)})"
            ) from exc
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise InvalidImageError(INVALID_IMAGE_DETAIL) from exc
        fmt = im.format or "unknown"
        width, height = im.size
        if width * height > limits.max_pixels:
            raise ImageTooLargeError(over_limit("image", f"{limits.max_pixels} pixels", limits.pixels_setting))
        if width < 1 or height < 1:
            raise InvalidImageError(INVALID_IMAGE_DETAIL)
        try:
            im.seek(0)
            im.load()
        except (OSError, SyntaxError, ValueError, EOFError, IndexError) as exc:
            raise InvalidImageError(INVALID_IMAGE_DETAIL) from exc
        upright, transposed = im, False
        try:
            orientation = int(im.getexif().get(ExifTags.Base.Orientation, 1) or 1)
            if orientation in _ORIENTATIONS_TO_FIX:
                upright, transposed = ImageOps.exif_transpose(im), True
        except Exception:  # noqa: BLE001 - a broken EXIF block must not abort decoding
            upright, transposed = im, False
        rgb = _to_rgb(upright)
    pixels = np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))
    return DecodedImage(pixels=pixels, format=fmt, exif_transposed=transposed)


def load_image_file(path: str | Path, limits: DecodeLimits | None = None) -> DecodedImage:
    """Read a photo from disk and decode it with :func:`decode_image` (same checks and errors)."""
    return decode_image(Path(path).read_bytes(), limits)


class PreprocessSpec(BaseModel):
    """The model's input contract, stored in the manifest (timm's ``pretrained_cfg`` keys).

    Attributes:
        input_size: ``(H, W)`` of the model input, in pixels.
        mean, std: per-channel RGB normalisation applied to values in ``[0, 1]``.
        interpolation: resampling used to resize a box crop to ``input_size``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_size: tuple[int, int] = Field((256, 512))
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: Interpolation = "bilinear"


def crop_resize(image: np.ndarray | Image.Image, box, size_hw: tuple[int, int], interpolation: str = "bilinear"):
    """Crop ``box`` out of ``image`` and resize it to ``size_hw`` in one resampling step.

    Args:
        image: ``(H, W, 3) uint8`` array or an RGB PIL image.
        box: ``(4,)`` xyxy pixels (floats allowed; Pillow resamples the exact sub-pixel area).
        size_hw: output ``(height, width)`` in pixels.
        interpolation: one of ``nearest``, ``bilinear``, ``bicubic``, ``lanczos``.

    Returns:
        ``(h, w, 3) uint8`` array.
    """
    pil = image if isinstance(image, Image.Image) else Image.fromarray(image)
    b = tuple(float(v) for v in np.asarray(box, dtype=np.float32).reshape(4))
    out = pil.resize((int(size_hw[1]), int(size_hw[0])), _RESAMPLE[interpolation], box=b)
    return np.asarray(out, dtype=np.uint8)


def normalize(crop: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """``(h, w, 3) uint8`` → ``(3, h, w) float32``: ``(x / 255 - mean) / std`` per channel."""
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(3, 1, 1)
    chw = crop.astype(np.float32).transpose(2, 0, 1) / np.float32(255.0)
    return np.ascontiguousarray((chw - mean) / std, dtype=np.float32)


def crops_to_batch(image: np.ndarray, boxes: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Preprocess every box of one photo into one model batch.

    Args:
        image: ``(H, W, 3) uint8`` upright RGB photo.
        boxes: ``(n, 4) float32`` xyxy pixels on ``image``, each at least 1 px (see ``core.boxes``).
        spec: the manifest's preprocessing contract.

    Returns:
        ``(n, 3, spec.input_size[0], spec.input_size[1]) float32``, contiguous.
    """
    pil = Image.fromarray(image)
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    h, w = spec.input_size
    out = np.empty((len(boxes), 3, h, w), dtype=np.float32)
    for i, box in enumerate(boxes):
        out[i] = normalize(crop_resize(pil, box, (h, w), spec.interpolation), spec)
    return out
