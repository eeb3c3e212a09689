from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from service.deps import Service
from service.storage import disk_report, low_disk_detail, tmp_folder

router = APIRouter(tags=["health"])


@router.get("/health", summary="Alive")
def health() -> dict:
    """The process is up (it may still be loading the bundle)."""
    return {"status": "ok"}


@router.get("/ready", summary="Bundle loaded")
def ready(request: Request, service: Service) -> dict:
    """The bundle is loaded: model version, embedding dimension, gallery size, onnxruntime providers in use,
    GPU name when there is one, TTA policy (with or without a detector) and scoring modes; the free space
    of the gallery's disk and of the uploads' temporary folder (`disk`). 503 `low_disk_space` when either
    has less than `WHALEID_MIN_FREE_BYTES`."""
    info = service.ready_info()
    settings = service.settings
    folders = {"gallery": service.gallery_dir, "tmp": tmp_folder(settings.tmp_dir)}
    info["disk"], low = disk_report(folders, settings.min_free_bytes)
    if low:  # 503: enrolments would fail with 507 soon
        detail = low_disk_detail(info["disk"], low, settings.min_free_bytes)
        body = {**info, "status": "low_disk_space", "detail": detail, "code": "low_disk_space"}
        return JSONResponse(body, status_code=503)
    return info


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(service: Service) -> Response:
    return Response(service.metrics.render(), media_type=service.metrics.content_type)
