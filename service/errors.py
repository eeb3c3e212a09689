"""The one place where domain errors become HTTP responses, each with a stable ``detail`` string.

| error (core.errors)                        | status |
|--------------------------------------------|--------|
| EmptyUploadError                           | 400    |
| ImageTooLargeError (bytes or pixels)       | 413    |
| UnsupportedFormatError                     | 415    |
| InvalidImageError (truncated, corrupt)     | 422    |
| InvalidIdentityError, InvalidRequestError  | 422    |
| UnknownIdentityError, UnknownImageError    | 404    |
| anything else                              | 500    |
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.errors import (
    EmptyUploadError,
    ImageTooLargeError,
    InvalidIdentityError,
    InvalidImageError,
    InvalidRequestError,
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
    UnknownImageError: 404,
}

# Stable messages for errors raised at the HTTP edge itself.
UPLOAD_TOO_LARGE = "upload too large: over the limit of {limit} bytes"
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


def status_of(exc: WhaleidError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def error_response(status: int, detail: str, **extra) -> JSONResponse:
    return JSONResponse({"detail": detail, **extra}, status_code=status)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(WhaleidError)
    async def _domain(request: Request, exc: WhaleidError):
        status = status_of(exc)
        if status >= 500:
            log.error("unexpected %s on %s: %s", type(exc).__name__, request.url.path, exc.detail)
            return error_response(500, INTERNAL)
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
        code = HTTP_CODES.get(exc.status_code, "http_error")
        return JSONResponse(
            {"detail": exc.detail, "code": code}, status_code=exc.status_code, headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unexpected error on %s", request.url.path)
        return error_response(500, INTERNAL)
