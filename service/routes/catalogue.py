"""The catalogue's identity operations (rename, merge, move photos), photo metadata and the audit log.

Each change is one durable transaction in the store with its audit entry (who: the API key's fingerprint,
never the key), then the FAISS index follows; an impossible change is a 4xx and changes nothing.
"""

from __future__ import annotations

from typing import Annotated

from anyio import to_thread
from fastapi import APIRouter, Query

from index.metadata import parse_metadata
from service.deps import Actor, Service, WriteAccess
from service.routes.gallery import MAX_SQLITE_INT, ImageId
from service.schemas import (
    ERRORS,
    AuditPage,
    CatalogueChange,
    MergeRequest,
    MoveRequest,
    PhotoMetadataModel,
    RenameRequest,
)

router = APIRouter(tags=["catalogue"])
#: a JSON body may be malformed or miss a field (400), besides the write's own errors
WRITE_ERRORS = {k: ERRORS[k] for k in (400, 401, 403, 404, 409, 422)}


@router.patch(
    "/gallery/{whale_id}",
    response_model=CatalogueChange,
    dependencies=[WriteAccess],
    responses=WRITE_ERRORS,
    summary="Rename a whale",
)
async def rename(service: Service, whale_id: str, body: RenameRequest, actor: Actor) -> dict:
    """Give a whale another id; its photos, history and matches stay. 409 when the new id is taken (merge the
    two whales instead).

    Example: `curl -X PATCH -H 'Content-Type: application/json' -d '{"whale_id": "HW-0042"}' .../gallery/whale-00012`
    """
    await to_thread.run_sync(service.gallery.rename, whale_id, body.whale_id, actor)
    service.changed()
    return {"whale_id": body.whale_id, "gallery_size": len(service.gallery)}


@router.post(
    "/gallery/{whale_id}/merge",
    response_model=CatalogueChange,
    dependencies=[WriteAccess],
    responses=WRITE_ERRORS,
    summary="Merge a whale into another (two ids that are one whale)",
)
async def merge(service: Service, whale_id: str, body: MergeRequest, actor: Actor) -> dict:
    """Move every photo of the whale in the path to `into`; the whale in the path disappears. A photo `into`
    already holds (same bytes) is dropped, not doubled. Merging a whale into itself is a 422; when another
    request merged or deleted it first, a 404.
    """
    out = await to_thread.run_sync(service.gallery.merge, whale_id, body.into, actor)
    service.changed()
    return {
        "whale_id": body.into,
        "gallery_size": len(service.gallery),
        "moved_image_ids": out.moved_image_ids,
        "dropped_duplicates": out.duplicate_image_ids,
        "source_deleted": True,
    }


@router.post(
    "/gallery/{whale_id}/move",
    response_model=CatalogueChange,
    dependencies=[WriteAccess],
    responses=WRITE_ERRORS,
    summary="Move photos to another whale, or to a new one (split)",
)
async def move(service: Service, whale_id: str, body: MoveRequest, actor: Actor) -> dict:
    """Move some photos of the whale in the path to `to` (created when new: one whale that was two). A
    whale left without photos is deleted."""
    out = await to_thread.run_sync(service.gallery.move, whale_id, body.image_ids, body.to, actor)
    service.changed()
    return {
        "whale_id": body.to,
        "gallery_size": len(service.gallery),
        "moved_image_ids": out.moved_image_ids,
        "created": out.created,
        "source_deleted": out.source_deleted,
    }


@router.patch(
    "/gallery/{whale_id}/images/{image_id}",
    response_model=PhotoMetadataModel,
    dependencies=[WriteAccess],
    responses={k: ERRORS[k] for k in (400, 401, 403, 404, 422)},
    summary="Edit a photo's date, place and notes",
)
async def edit_metadata(
    service: Service, whale_id: str, image_id: ImageId, body: PhotoMetadataModel, actor: Actor
) -> dict:
    """Set the fields sent (null clears one); the others stay. Returns the photo's metadata after the change."""
    sent = body.model_dump(exclude_unset=True)
    checked = parse_metadata({k: v for k, v in sent.items() if v is not None}).as_dict()
    fields = {k: checked.get(k) for k in sent}
    await to_thread.run_sync(service.gallery.update_metadata, whale_id, image_id, fields, actor)
    service.changed()
    records = await to_thread.run_sync(service.store.images_of, whale_id)
    return next(r.metadata for r in records if r.image_id == image_id)


@router.get("/audit", response_model=AuditPage, summary="The catalogue's changes, newest first")
async def audit(
    service: Service,
    offset: Annotated[int, Query(ge=0, le=MAX_SQLITE_INT)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict:
    """Every enrolment, deletion, rename, merge, move and metadata edit: when, what, by which API key."""
    entries = await to_thread.run_sync(service.store.audit_log, offset, limit)
    total = await to_thread.run_sync(service.store.count_audit)
    return {"total": total, "offset": offset, "limit": limit, "entries": [e.__dict__ for e in entries]}
