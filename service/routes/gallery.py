from __future__ import annotations

from typing import Annotated

from anyio import to_thread
from fastapi import APIRouter, File, Form, HTTPException, Path, Query, Request, Response, UploadFile

from service.deps import Actor, Service, WriteAccess
from service.errors import TOO_MANY_FILES
from service.forms import MetadataForm
from service.schemas import ERRORS, Deleted, EnrolResponse, GalleryPage, WhaleDetail
from service.uploads import UploadRoute

router = APIRouter(prefix="/gallery", tags=["gallery"], route_class=UploadRoute)
# SQLite's largest integer: a larger offset or image id cannot even be looked up (422, not a 500)
MAX_SQLITE_INT = 2**63 - 1
ImageId = Annotated[int, Path(ge=1, le=MAX_SQLITE_INT, description="A photo's id (from POST /gallery).")]


@router.post(
    "",
    status_code=201,
    response_model=EnrolResponse,
    dependencies=[WriteAccess],
    responses={k: v for k, v in ERRORS.items() if k not in (404, 409)},  # a new whale id is created, never 404
    summary="Enrol a new whale or add photos to a known one",
)
async def enrol(
    service: Service,
    files: Annotated[list[UploadFile], File(description="One or more photos of the same whale.")],
    actor: Actor,
    meta: MetadataForm,
    whale_id: Annotated[
        str | None, Form(description="Known or new whale id; left out: a new readable id is assigned.")
    ] = None,
) -> dict:
    """Add photos to a whale (created when new). The 201 is sent after the store is on disk (fsynced).
    A photo already stored for that whale (same bytes) is not added twice. A bad photo fails the whole
    request and nothing is stored.

    Example: `curl -F files=@a.jpg -F files=@b.jpg -F whale_id=w_1287fbc http://127.0.0.1:8000/gallery`
    """
    if len(files) > service.settings.max_files:
        raise HTTPException(413, TOO_MANY_FILES.format(limit=service.settings.max_files))
    photos = [(f.filename or "", await f.read()) for f in files]
    return await service.enrol(photos, whale_id or None, meta, actor)


@router.get("", response_model=GalleryPage, summary="List whales (paged, with photo counts)")
async def list_whales(
    service: Service,
    offset: Annotated[int, Query(ge=0, le=MAX_SQLITE_INT)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    q: Annotated[str, Query(max_length=64, description="Whale id prefix.")] = "",
) -> dict:
    store = service.store
    rows = await to_thread.run_sync(store.list_identities, offset, limit, q)
    total = await to_thread.run_sync(store.count_matching, q)
    return {
        "total": total,
        "offset": offset,
        "limit": limit,
        "whales": [{"whale_id": r.whale_id, "images": r.n_images, "created_at": r.created_at} for r in rows],
    }


@router.get("/{whale_id}", response_model=WhaleDetail, responses={404: ERRORS[404]}, summary="A whale's photos")
async def whale(service: Service, whale_id: str, request: Request) -> dict:
    images = await to_thread.run_sync(service.store.images_of, whale_id)
    return {
        "whale_id": whale_id,
        "images": [
            {
                "image_id": r.image_id,
                "sha256": r.sha256,
                "source": r.source,
                "box": r.box_xyxy_px,
                "added_at": r.added_at,
                "metadata": r.metadata,
                "has_original": r.has_original,
                "thumbnail_url": str(request.url_for("thumbnail", whale_id=whale_id, image_id=r.image_id).path)
                if r.has_thumbnail
                else None,
            }
            for r in images
        ],
    }


@router.get(
    "/{whale_id}/images/{image_id}",
    name="thumbnail",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}}, 404: ERRORS[404]},
    summary="A photo's thumbnail",
)
async def thumbnail(service: Service, whale_id: str, image_id: ImageId, request: Request) -> Response:
    """JPEG thumbnail (longest side `WHALEID_THUMBNAIL_PX`), cacheable: image ids are never reused."""
    from core.errors import UnknownImageError

    store = service.store
    owner = await to_thread.run_sync(store.image_owner, image_id)
    if owner != whale_id:
        raise UnknownImageError(whale_id, image_id)
    blob = await to_thread.run_sync(store.image_blob, image_id, "thumbnail")
    if blob is None:
        raise UnknownImageError(whale_id, image_id)
    etag = '"' + (await to_thread.run_sync(store.image_sha256, image_id) or str(image_id))[:32] + '"'
    headers = {"Cache-Control": "public, max-age=31536000, immutable", "ETag": etag}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(blob, media_type="image/jpeg", headers=headers)


@router.delete(
    "/{whale_id}",
    response_model=Deleted,
    dependencies=[WriteAccess],
    responses={k: ERRORS[k] for k in (401, 403, 404)},
    summary="Delete a whale and all its photos",
)
async def delete_whale(service: Service, whale_id: str, actor: Actor) -> dict:
    await to_thread.run_sync(service.gallery.remove_identity, whale_id, actor)
    service.changed()
    return {"whale_id": whale_id, "identity_deleted": True, "gallery_size": len(service.gallery)}


@router.delete(
    "/{whale_id}/images/{image_id}",
    response_model=Deleted,
    dependencies=[WriteAccess],
    responses={k: ERRORS[k] for k in (401, 403, 404)},
    summary="Delete one photo of a whale",
)
async def delete_image(service: Service, whale_id: str, image_id: ImageId, actor: Actor) -> dict:
    deleted = await to_thread.run_sync(service.gallery.remove_image, whale_id, image_id, actor)
    service.changed()
    return {
        "whale_id": whale_id,
        "image_id": image_id,
        "identity_deleted": deleted,
        "gallery_size": len(service.gallery),
    }
