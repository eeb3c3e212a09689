"""Photo metadata (when and where, who, which encounter) and perceptual hashes of photos.

**When and where from EXIF** (:func:`metadata_from_exif`), read without decoding the pixels:

* ``taken_at`` comes from ``DateTimeOriginal`` (else ``DateTime``), the camera's *local* clock. Its zone is
  ``OffsetTimeOriginal`` (else ``OffsetTime``) when the camera wrote one (EXIF 2.31+), and the time is
  then stored with that offset (``2019-07-14T09:31:05-04:00``). Without an offset, the GPS time stamp
  (``GPSDateStamp`` + ``GPSTimeStamp``, always UTC) is used when present (``...Z``). Otherwise the local
  time is stored **without** a zone (``2019-07-14T09:31:05``): EXIF cannot say which zone the camera was
  set to, and guessing one would shift the date of photos taken near midnight.
* ``latitude``/``longitude`` in decimal degrees (WGS 84) from ``GPSLatitude``/``GPSLongitude`` and their
  ``Ref`` (``S`` and ``W`` negative); a position at exactly (0, 0) is taken as "no fix".

Values a person sends (form fields of ``POST /gallery`` and ``POST /identify``, ``PATCH`` of a photo)
take precedence over EXIF, field by field, and are validated (:class:`PhotoMetadata`: ranges, the ISO 8601
shape of :data:`TAKEN_AT_PATTERN`, lengths): a bad value is a clear 422, never stored. A position is used
(scoped searches) only when both latitude and longitude are set; a date that has the shape but is no
calendar date (2019-02-30) is stored as sent and falls outside every dated scope.

**Near-duplicates**: :func:`perceptual_hash` is the 64-bit DCT perceptual hash of the ``imagehash``
library (``phash``: the photo in grey at 32x32, the sign of its 8x8 lowest DCT frequencies against their
median). A re-saved JPEG or a resized copy of a photo stays within a few bits of it; two different fluke
photos differ in about half of the 64. :data:`NEAR_DUPLICATE_BITS` is the cut-off.
"""

from __future__ import annotations

import io
import math
from datetime import date, datetime
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from core.errors import InvalidRequestError

#: What ``taken_at`` must look like: an ISO 8601 date, or date and time, with an optional UTC offset (the
#: API's schema states the same pattern, so a request the document allows is never refused for it).
TAKEN_AT_PATTERN = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?)?(Z|[+-][0-9]{2}:[0-9]{2})?$"
)

#: Hamming distance (of 64 bits) at or below which two photos are reported as near-duplicates.
NEAR_DUPLICATE_BITS = 8
#: Earth radius for distances between positions (km, the mean radius of WGS 84).
EARTH_RADIUS_KM = 6371.0088

_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825
_DATETIME, _DATETIME_ORIGINAL, _OFFSET_TIME, _OFFSET_TIME_ORIGINAL = 0x0132, 0x9003, 0x9010, 0x9011


class PhotoMetadata(BaseModel):
    """What is known of a photo besides its pixels (every field optional).

    Attributes:
        taken_at: when it was taken: ISO 8601 date or date-time, with an offset when known.
        latitude, longitude: where, decimal degrees (WGS 84), -90..90 and -180..180.
        location: a place name (e.g. ``Hervey Bay``), matched case-insensitively by a scoped search.
        encounter_id: the field team's encounter or sighting id.
        photographer: who took it (credit).
        notes: free text.
    """

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    taken_at: str | None = Field(None, max_length=40, pattern=TAKEN_AT_PATTERN)
    latitude: float | None = Field(None, ge=-90.0, le=90.0)
    longitude: float | None = Field(None, ge=-180.0, le=180.0)
    location: str | None = Field(None, max_length=200)
    encounter_id: str | None = Field(None, max_length=100)
    photographer: str | None = Field(None, max_length=200)
    notes: str | None = Field(None, max_length=2000)

    @field_validator("taken_at", mode="before")
    @classmethod
    def _empty_date_is_none(cls, v):
        return None if v == "" else v

    @field_validator("location", "encounter_id", "photographer", "notes")
    @classmethod
    def _empty_is_none(cls, v: str | None) -> str | None:
        return v or None

    def as_dict(self) -> dict[str, Any]:
        """The fields that are set."""
        return {k: v for k, v in self.model_dump().items() if v is not None}

    def merged_over(self, other: PhotoMetadata | None) -> PhotoMetadata:
        """These values, completed by ``other``'s where these are unset (form fields over EXIF)."""
        if other is None:
            return self
        return PhotoMetadata(**{**other.as_dict(), **self.as_dict()})


def parse_metadata(fields: dict[str, Any]) -> PhotoMetadata:
    """Validate metadata a person sent (empty strings mean "not given").

    Raises:
        InvalidRequestError: a field out of range, malformed or unknown (the message names it).
    """
    given = {k: v for k, v in fields.items() if v not in (None, "")}
    try:
        meta = PhotoMetadata(**given)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "metadata"
        raise InvalidRequestError(f"invalid photo metadata: {where}: {first['msg']}") from None
    return meta


def _ratio(v) -> float:
    return float(v[0]) / float(v[1]) if isinstance(v, tuple) else float(v)


def _degrees(dms, ref) -> float | None:
    try:
        d, m, s = (_ratio(x) for x in dms)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    value = d + m / 60.0 + s / 3600.0
    return -value if str(ref).upper().startswith(("S", "W")) else value


def metadata_from_exif(data: bytes) -> PhotoMetadata:
    """``taken_at`` and the GPS position from a photo's EXIF (see the module docstring for the time-zone
    rules); an empty :class:`PhotoMetadata` when the photo has none or it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            exif = img.getexif()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return PhotoMetadata()
    sub = exif.get_ifd(_EXIF_IFD)
    gps = exif.get_ifd(_GPS_IFD)
    fields: dict[str, Any] = {}
    stamp = sub.get(_DATETIME_ORIGINAL) or exif.get(_DATETIME)
    if isinstance(stamp, str):
        try:
            local = datetime.strptime(stamp.strip("\x00 "), "%Y:%m:%d %H:%M:%S")
        except ValueError:
            local = None
        if local is not None:
            offset = sub.get(_OFFSET_TIME_ORIGINAL) or sub.get(_OFFSET_TIME)
            if isinstance(offset, str) and len(offset.strip()) == 6:
                fields["taken_at"] = local.isoformat() + offset.strip()
            elif gps.get(29) and gps.get(7):  # GPSDateStamp, GPSTimeStamp (UTC)
                try:
                    h, mi, s = (_ratio(x) for x in gps[7])
                    day = datetime.strptime(str(gps[29]).strip("\x00 "), "%Y:%m:%d")
                    utc = day.replace(hour=int(h), minute=int(mi), second=int(s))
                    fields["taken_at"] = utc.isoformat() + "Z"
                except (TypeError, ValueError, ZeroDivisionError):
                    fields["taken_at"] = local.isoformat()
            else:
                fields["taken_at"] = local.isoformat()
    if gps.get(2) and gps.get(4):
        lat, lon = _degrees(gps[2], gps.get(1, "N")), _degrees(gps[4], gps.get(3, "E"))
        if lat is not None and lon is not None and (lat, lon) != (0.0, 0.0) and abs(lat) <= 90 and abs(lon) <= 180:
            fields["latitude"], fields["longitude"] = round(lat, 7), round(lon, 7)
    try:
        return PhotoMetadata(**fields)
    except ValidationError:
        return PhotoMetadata()


def perceptual_hash(pixels: np.ndarray) -> str:
    """The photo's 64-bit DCT perceptual hash as 16 hex digits (``imagehash.phash``).

    Args:
        pixels: ``(H, W, 3) uint8`` RGB photo (upright).
    """
    import imagehash
    from PIL import Image

    return str(imagehash.phash(Image.fromarray(pixels)))


def hamming(a: str, b: str) -> int:
    """Bits in which two 16-hex-digit hashes differ."""
    return int(int(a, 16) ^ int(b, 16)).bit_count()


def near_duplicates(phash: str, stored: list[tuple[int, str, str]], max_bits: int = NEAR_DUPLICATE_BITS) -> list:
    """Stored photos within ``max_bits`` of ``phash``: ``[(whale_id, image_id, bits)]``, nearest first.

    Args:
        phash: the new photo's hash.
        stored: ``(image_id, whale_id, phash)`` of the stored photos (``GalleryStore.photo_hashes``).
    """
    if not stored:
        return []
    ids = np.array([int(h, 16) for _, _, h in stored], dtype=np.uint64)
    x = ids ^ np.uint64(int(phash, 16))
    bits = np.unpackbits(x.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)
    hits = [(stored[i][1], stored[i][0], int(bits[i])) for i in np.flatnonzero(bits <= max_bits)]
    return sorted(hits, key=lambda t: (t[2], t[1]))


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in kilometres (haversine)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


class SearchScope(BaseModel):
    """Which whales a scoped identification may answer: those with at least one photo that matches every
    criterion given.

    Attributes:
        location: place name, case-insensitive exact match.
        bbox: ``(lat_min, lon_min, lat_max, lon_max)`` decimal degrees.
        near: ``(lat, lon, radius_km)``.
        date_from, date_to: inclusive range of ``taken_at`` (ISO dates; a photo without a date is out).
    """

    model_config = ConfigDict(extra="forbid")

    location: str | None = None
    bbox: tuple[float, float, float, float] | None = None
    near: tuple[float, float, float] | None = None
    date_from: date | None = None
    date_to: date | None = None

    def is_empty(self) -> bool:
        return not any(v is not None for v in self.model_dump().values())

    def as_dict(self) -> dict[str, Any]:
        return {k: (v.isoformat() if isinstance(v, date) else v) for k, v in self.model_dump().items() if v is not None}

    def matches(self, meta: dict[str, Any]) -> bool:
        """Whether one photo's metadata (``PhotoMetadata`` fields) is inside the scope."""
        if self.location is not None and (meta.get("location") or "").casefold() != self.location.casefold():
            return False
        lat, lon = meta.get("latitude"), meta.get("longitude")
        if self.bbox is not None:
            if lat is None or lon is None:
                return False
            lat0, lon0, lat1, lon1 = self.bbox
            if not (lat0 <= lat <= lat1 and lon0 <= lon <= lon1):
                return False
        if self.near is not None and (
            lat is None or lon is None or distance_km(lat, lon, self.near[0], self.near[1]) > self.near[2]
        ):
            return False
        if self.date_from is not None or self.date_to is not None:
            try:
                day = datetime.fromisoformat((meta.get("taken_at") or "").replace("Z", "+00:00")).date()
            except ValueError:
                return False  # no date, or one that is not a calendar date (2019-02-30): out of a dated scope
            if (self.date_from and day < self.date_from) or (self.date_to and day > self.date_to):
                return False
        return True
