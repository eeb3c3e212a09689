from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Query, Request, UploadFile

from core.errors import InvalidRequestError
from core.manifest import ScoringModeName
from service.deps import Service
from service.schemas import ERRORS, IdentifyResponse
from service.uploads import UploadRoute

router = APIRouter(tags=["identify"], route_class=UploadRoute)

#: Options of POST /identify, all query parameters: a form field of that name is refused, never ignored.
QUERY_OPTIONS = ("k", "threshold", "scoring", "explain")


@router.post(
    "/identify",
    response_model=IdentifyResponse,
    response_model_exclude_none=True,
    responses={k: v for k, v in ERRORS.items() if k not in (401, 403, 404)},
    summary="Identify a fluke photo",
)
async def identify(
    request: Request,
    service: Service,
    file: Annotated[UploadFile, File(description="The fluke photo (JPEG, PNG, WebP, BMP, GIF, TIFF, AVIF).")],
    k: Annotated[int, Query(ge=1, le=20, description="How many ranked entries (new_whale included).")] = 5,
    threshold: Annotated[
        float | None,
        Query(ge=-1.0, le=1.0, description="new_whale threshold (default: the bundle's for the scoring mode)."),
    ] = None,
    scoring: Annotated[
        ScoringModeName | None, Query(description="Scoring mode (default: the bundle's; GET /ready lists them).")
    ] = None,
    explain: Annotated[bool, Query(description="Include matched keypoint pairs (local and fused modes).")] = False,
) -> dict:
    """Embed the photo through its TTA boxes (multi-box TTA) and return the top-k identities of the gallery,
    with `new_whale` inserted at the first rank whose score falls below the threshold.

    Example: `curl -F file=@fluke.jpg http://127.0.0.1:8000/identify`
    """
    form = await request.form()  # the form FastAPI already parsed (cached)
    other = sorted({key for key in form if key != "file"})
    if other:
        options = [key for key in other if key in QUERY_OPTIONS]
        raise InvalidRequestError(
            f"{', '.join(repr(key) for key in options)} go in the URL, not the form: POST /identify?{options[0]}=..."
            if options
            else f"unknown form field(s) {', '.join(repr(key) for key in other)}: send the photo alone, as 'file'"
        )
    sent = len(form.getlist("file"))
    if sent > 1:
        raise InvalidRequestError(
            f"one photo per request in the field 'file' (got {sent}); POST /gallery takes several"
        )
    data = await file.read()
    return await service.identify(data, k=k, threshold=threshold, scoring=scoring, explain=explain)
