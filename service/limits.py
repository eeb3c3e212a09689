"""Request body limits enforced while the body streams in (pure ASGI middleware).

A body over the limit gets ``413`` as soon as the limit is crossed: the middleware counts the
bytes it hands to the application, answers itself, and tells the application the client went
away. ``Content-Length`` is used only to refuse early; it is never trusted to accept (chunked
bodies and lying headers are counted too). Nothing beyond the limit is ever buffered.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from core.preprocess import describe_bytes, over_limit

# multipart framing (boundaries, part headers, other form fields) on top of the photo bytes
MULTIPART_OVERHEAD_BYTES = 64 * 1024
#: The setting behind each upload route's body limit (the limit is the setting plus the multipart
#: framing): the 413 message names it, with the setting's value.
LIMIT_SETTINGS = {"/identify": "WHALEID_MAX_UPLOAD_BYTES", "/gallery": "WHALEID_MAX_REQUEST_BYTES"}


def upload_too_large(limit_bytes: int, path: str = "") -> str:
    """The 413 message of a body over ``limit_bytes`` on ``path``: the limit in MiB and the setting that raises it.

    Example: ``upload too large: over the limit of 20 MiB (raise it with WHALEID_MAX_UPLOAD_BYTES)``.
    """
    setting = LIMIT_SETTINGS.get(path)
    framed = setting is not None and limit_bytes > MULTIPART_OVERHEAD_BYTES
    shown = limit_bytes - MULTIPART_OVERHEAD_BYTES if framed else limit_bytes
    return over_limit("upload", describe_bytes(shown), setting)


class BodyLimitMiddleware:
    """Refuse request bodies over ``limit_for(path, method)`` bytes with 413 while they stream.

    Args:
        app: the ASGI application.
        limit_for: ``(path, method) -> limit in bytes or None`` (None: no limit).
        on_reject: optional callback ``(path) -> None`` (metrics).
    """

    def __init__(self, app, limit_for: Callable[[str, str], int | None], on_reject=None):
        self.app = app
        self.limit_for = limit_for
        self.on_reject = on_reject

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limit_for(scope.get("path", ""), scope.get("method", "GET"))
        if limit is None:
            return await self.app(scope, receive, send)
        state = {"received": 0, "rejected": False, "started": False}

        async def reject():
            state["rejected"] = True
            if self.on_reject is not None:
                self.on_reject(scope.get("path", ""))
            if state["started"]:
                return
            detail = upload_too_large(limit, scope.get("path", ""))
            body = json.dumps({"detail": detail, "code": "upload_too_large"}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 413,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})

        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > limit:
                    await reject()
                    return None

        async def limited_receive():
            if state["rejected"]:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > limit:
                    await reject()
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            if state["rejected"]:
                return  # we already answered 413; drop whatever the application says
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not state["rejected"]:
                raise
