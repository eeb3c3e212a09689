from __future__ import annotations

import re
from datetime import date
from typing import Annotated

from fastapi import APIRouter, File, Query, Request, UploadFile
from pydantic import BeforeValidator

from core.errors import InvalidRequestError
from core.manifest import ScoringModeName
from index.metadata import SearchScope
from service.deps import Service
from service.forms import METADATA_FIELDS, MetadataForm
from service.schemas import ERRORS, IdentifyResponse
from service.uploads import UploadRoute

router = APIRouter(tags=["identify"], route_class=UploadRoute)
#: a number in a scope parameter (a sign, digits, an optional fraction), and one without a sign
_NUM, _UNUM = r"-?[0-9]{1,12}(\.[0-9]{1,12})?", r"[0-9]{1,12}(\.[0-9]{1,12})?"


def _iso_date(v):
    """Only ``YYYY-MM-DD`` strings become dates (pydantic would also take a number as a Unix time)."""
    if isinstance(v, str) and re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", v):
        return v
    raise ValueError("a date is YYYY-MM-DD")


IsoDate = Annotated[date, BeforeValidator(_iso_date)]

#: Options of POST /identify, all query parameters: a form field of that name is refused, never ignored.
#: (Form fields may carry the query photo's metadata: taken_at, latitude, ... as for POST /gallery.)
QUERY_OPTIONS = ("k", "threshold", "scoring", "explain", "scope_location", "scope_bbox", "scope_near")


@router.post(
    "/identify",
    response_model=IdentifyResponse,
    response_model_exclude_none=True,
    responses={k: v for k, v in ERRORS.items() if k not in (401, 403, 404, 409)},
    summary="Identify a fluke photo",
)
async def identify(
    request: Request,
    service: Service,
    file: Annotated[UploadFile, File(description="The fluke photo (JPEG, PNG, WebP, BMP, GIF, TIFF, AVIF).")],
    meta: MetadataForm,
    k: Annotated[int, Query(ge=1, le=20, description="How many ranked entries (new_whale included).")] = 5,
    threshold: Annotated[
        float | None,
        Query(ge=-1.0, le=1.0, description="new_whale threshold (default: the bundle's for the scoring mode)."),
    ] = None,
    scoring: Annotated[
        ScoringModeName | None, Query(description="Scoring mode (default: the bundle's; GET /ready lists them).")
    ] = None,
    explain: Annotated[bool, Query(description="Include matched keypoint pairs (local and fused modes).")] = False,
    scope_location: Annotated[
        str | None, Query(max_length=200, description="Answer only whales photographed at this place name.")
    ] = None,
    scope_bbox: Annotated[
        str | None,
        Query(
            pattern=rf"^{_NUM},{_NUM},{_NUM},{_NUM}$",
            description="Only whales photographed inside lat_min,lon_min,lat_max,lon_max (decimal degrees).",
        ),
    ] = None,
    scope_near: Annotated[
        str | None,
        Query(
            pattern=rf"^{_NUM},{_NUM},{_UNUM}$",
            description="Only whales photographed within radius_km of lat,lon: 'lat,lon,radius_km'.",
        ),
    ] = None,
    scope_from: Annotated[
        IsoDate | None, Query(description="Only whales photographed on or after this date (YYYY-MM-DD).")
    ] = None,
    scope_to: Annotated[
        IsoDate | None, Query(description="Only whales photographed on or before this date (YYYY-MM-DD).")
    ] = None,
) -> dict:
    """Embed the photo through its TTA boxes (multi-box TTA) and return the top-k identities of the gallery,
    with `new_whale` inserted at the first rank whose score falls below the threshold.

    Example: `curl -F file=@fluke.jpg http://127.0.0.1:8000/identify`
    """
    form = await request.form()  # the form FastAPI already parsed (cached)
    other = sorted({key for key in form if key != "file" and key not in METADATA_FIELDS})
    if other:
        options = [key for key in other if key in QUERY_OPTIONS]
        raise InvalidRequestError(
            f"{', '.join(repr(key) for key in options)} {'goes' if len(options) == 1 else 'go'} in the URL, "
            f"not the form: POST /identify?{options[0]}=..."
            if options
            else f"unknown form field(s) {', '.join(repr(key) for key in other)}: send the photo alone, as 'file'"
        )
    sent = len(form.getlist("file"))
    if sent > 1:
        raise InvalidRequestError(
            f"one photo per request in the field 'file' (got {sent}); POST /gallery takes several"
        )
    scope = _scope(scope_location, scope_bbox, scope_near, scope_from, scope_to)
    data = await file.read()
    return await service.identify(
        data, k=k, threshold=threshold, scoring=scoring, explain=explain, scope=scope, metadata=meta
    )


def _scope(location, bbox, near, date_from, date_to) -> SearchScope | None:
    """The search scope of the ``scope_*`` parameters, or None. A scope nothing can be inside (a box whose
    corners are swapped, dates in the wrong order) is a valid scope that leaves no whale."""
    box = tuple(float(v) for v in bbox.split(",")) if bbox else None
    circle = tuple(float(v) for v in near.split(",")) if near else None
    scope = SearchScope(location=location or None, bbox=box, near=circle, date_from=date_from, date_to=date_to)
    return None if scope.is_empty() else scope
