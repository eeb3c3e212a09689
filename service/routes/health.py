from __future__ import annotations

from fastapi import APIRouter, Request, Response

from service.deps import Service

router = APIRouter(tags=["health"])


@router.get("/health", summary="Alive")
def health() -> dict:
    """The process is up (it may still be loading the bundle)."""
    return {"status": "ok"}


@router.get("/ready", summary="Bundle loaded")
def ready(request: Request, service: Service) -> dict:
    """The bundle is loaded: model version, embedding dimension, gallery size, onnxruntime providers in use,
    GPU name when there is one, TTA policy (with or without a detector) and scoring modes."""
    return service.ready_info()


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(service: Service) -> Response:
    return Response(service.metrics.render(), media_type=service.metrics.content_type)
