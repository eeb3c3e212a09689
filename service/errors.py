"""The one place where domain errors become HTTP responses, each with a stable ``detail`` string.

| error (core.errors)                        | status |
|--------------------------------------------|--------|
| EmptyUploadError                           | 400    |
| ImageTooLargeError (bytes or pixels)       | 413    |
| UnsupportedFormatError                     | 415    |
| InvalidImageError (truncated, corrupt)     | 422    |
| InvalidIdentityError, InvalidRequestError  | 422    |
| UnknownIdentityError, UnknownImageError    | 404    |
| IdentityConflictError                      | 409    |
| StoreBusyError, StorageError (transient)   | 503 + Retry-After |
| InsufficientStorageError (disk full)       | 507    |
| anything else                              | 500    |
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from core.errors import (
    EmptyUploadError,
    IdentityConflictError,
    ImageTooLargeError,
    InsufficientStorageError,
    InvalidIdentityError,
    InvalidImageError,
    InvalidRequestError,
    StorageError,
    UnknownIdentityError,
    UnknownImageError,
    UnsupportedFormatError,
    WhaleidError,
)

log = logging.getLogger(__name__)

STATUS = {
    EmptyUploadError: 400,
    ImageTooLargeError: 413,
    UnsupportedFormatError: 415,
    InvalidImageError: 422,
    InvalidIdentityError: 422,
    InvalidRequestError: 422,
    UnknownIdentityError: 404,
    IdentityConflictError: 409,
    UnknownImageError: 404,
    StorageError: 503,
    InsufficientStorageError: 507,
}

# Stable messages for errors raised at the HTTP edge itself.
MISSING_FILE = "no photo: send it as the multipart form field '{field}'"
MISSING_API_KEY = "missing API key: send it in the X-API-Key header"
WRONG_API_KEY = "invalid API key"
TOO_MANY_FILES = "too many photos: at most {limit} per request"
INTERNAL = "internal error"
HTTP_CODES = {
    400: "bad_request",
    401: "missing_api_key",
    403: "invalid_api_key",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_many_files",
}
# Codes the HTTP edge sends itself (the domain errors carry theirs): code -> (status, when it is sent).
EDGE_CODES = {
    "missing_field": (400, "a required multipart field (the photo) is missing"),
    "bad_request": (400, "a malformed multipart or form body"),
    "missing_api_key": (401, "a write without the X-API-Key header (when WHALEID_API_KEY is set)"),
    "invalid_api_key": (403, "a write with a wrong X-API-Key"),
    "not_found": (404, "no such route"),
    "method_not_allowed": (405, "a method the route does not serve (the Allow header lists those it does)"),
    "upload_too_large": (413, "the body, or one photo, is over its byte limit (counted while it streams in)"),
    "too_many_files": (413, "more photos in one request than WHALEID_MAX_FILES"),
    "invalid_request": (
        422,
        "a parameter or field of the wrong type or out of its range, or a request the bundle cannot serve "
        "(e.g. a scoring mode it lacks)",
    ),
    "internal_error": (500, "an unexpected error (logged with its traceback); nothing was stored"),
}


def _status_of_class(cls: type) -> int | None:
    for base in cls.__mro__:
        if base in STATUS:
            return STATUS[base]
    return None


def status_of(exc: WhaleidError) -> int:
    return _status_of_class(type(exc)) or 500


def error_codes() -> list[tuple[int, str, str]]:
    """Every error the service sends: ``(status, code, when)``, sorted by status and code.

    The one registry of codes: the domain errors of :data:`STATUS` (each subclass of a mapped class
    with its own ``code``; classes of ``training`` are never raised by the service), the codes the
    edge sends itself (:data:`EDGE_CODES`, whose descriptions come first) and :data:`HTTP_CODES`.
    The OpenAPI document (``service.openapi``) is built from it; a test checks the README's error
    table against the document.
    """
    found = {(status, code): when for code, (status, when) in EDGE_CODES.items()}

    def walk(cls: type) -> None:
        for sub in cls.__subclasses__():
            status = _status_of_class(sub)
            if status is not None and not sub.__module__.startswith(("training", "tests")):
                when = " ".join((sub.__doc__ or sub.__name__).split("\n\n")[0].split()).replace("``", "`")
                found.setdefault((status, sub.code), when[:1].lower() + when[1:].rstrip("."))
            walk(sub)

    walk(WhaleidError)
    for status, code in HTTP_CODES.items():
        found.setdefault((status, code), HTTPStatus(status).phrase)
    return sorted((status, code, when) for (status, code), when in found.items())


def allowed_methods(request: Request) -> str:
    """The methods of every route on the request's path (the ``Allow`` header of a 405), e.g. ``GET, POST``."""
    allowed = []
    for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"):
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] == Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return ", ".join(allowed)


def error_response(status: int, detail: str, **extra) -> JSONResponse:
    return JSONResponse({"detail": detail, **extra}, status_code=status)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(WhaleidError)
    async def _domain(request: Request, exc: WhaleidError):
        status = status_of(exc)
        if isinstance(exc, StorageError):
            # transient (busy store, full or failing disk): the client may retry; the log says why
            log.warning(
                "%s on %s %s: %s (cause: %r)", exc.code, request.method, request.url.path, exc.detail, exc.__cause__
            )
            retry = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s else None
            return JSONResponse({"detail": exc.detail, "code": exc.code}, status_code=status, headers=retry)
        if status >= 500:
            log.error("unexpected %s on %s: %s", type(exc).__name__, request.url.path, exc.detail)
            return error_response(500, INTERNAL, code="internal_error")
        return error_response(status, exc.detail, code=exc.code)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        for err in errors:
            loc = err.get("loc", ())
            if err.get("type") == "missing" and len(loc) == 2 and loc[0] == "body":
                return error_response(400, MISSING_FILE.format(field=loc[1]), code="missing_field")
        parts = []
        for err in errors:
            where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
            parts.append(f"{where}: {err.get('msg', 'invalid')}" if where else err.get("msg", "invalid"))
        return error_response(422, "invalid request: " + "; ".join(parts), code="invalid_request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        # the edge's own refusals (API key, too many files, unknown route, malformed multipart): the
        # same body shape as the domain errors, with a code per status
        code = getattr(exc, "code", None) or HTTP_CODES.get(exc.status_code, "http_error")
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:  # Starlette names only the first route's methods; RFC 9110 wants them all
            headers = {**(headers or {}), "Allow": allowed_methods(request)}
        return JSONResponse({"detail": exc.detail, "code": code}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unexpected error on %s", request.url.path)
        return error_response(500, INTERNAL, code="internal_error")
