"""FastAPI dependencies: the loaded service and the API-key check for writes."""

from __future__ import annotations

import hashlib
import secrets
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request

from service.engine import WhaleService
from service.errors import MISSING_API_KEY, WRONG_API_KEY


def get_service(request: Request) -> WhaleService:
    return request.app.state.service


Service = Annotated[WhaleService, Depends(get_service)]


def require_api_key(service: Service, x_api_key: Annotated[str | None, Header()] = None) -> None:
    """When ``WHALEID_API_KEY`` is set, writes need it in ``X-API-Key`` (401 without, 403 wrong)."""
    expected = service.settings.api_key
    if expected is None:
        return
    if not x_api_key:
        raise HTTPException(401, MISSING_API_KEY)
    if not secrets.compare_digest(x_api_key.encode(), expected.get_secret_value().encode()):
        raise HTTPException(403, WRONG_API_KEY)


WriteAccess = Depends(require_api_key)


def actor(x_api_key: Annotated[str | None, Header()] = None) -> str:
    """Who makes a change, for the audit log: ``key:<first 12 hex digits of the key's sha256>`` (so two keys
    can be told apart without storing either), or ``anonymous`` without a key."""
    if not x_api_key:
        return "anonymous"
    return "key:" + hashlib.sha256(x_api_key.encode()).hexdigest()[:12]


Actor = Annotated[str, Depends(actor)]
