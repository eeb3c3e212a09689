"""The HTTP server: uvicorn, with a JSON error body for requests its HTTP parser refuses.

uvicorn answers a request it cannot parse (a body longer than its ``Content-Length``, bad chunked
framing, a malformed request line or header) with a plain-text ``400 Invalid HTTP request received.``
before the application sees anything. These protocol classes send the JSON body every other error
has (``{"detail", "code": "invalid_http_request"}``) and log the client and the last request on the
connection. What stays out of reach at this level: the bytes of a request whose ``Content-Length``
lies are attributed to that request up to the declared length (the application may answer that
truncated request on its own), and the connection is closed after the 400; a reverse proxy in front
(nginx, Traefik) refuses such framing itself before it reaches the service.
"""

from __future__ import annotations

import json
import logging

from uvicorn.protocols.http.h11_impl import H11Protocol

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is optional in uvicorn
    HttpToolsProtocol = None

log = logging.getLogger(__name__)

INVALID_HTTP = (
    "invalid HTTP request: malformed request line, headers or body framing "
    "(e.g. more body bytes than Content-Length declares); the connection is closed"
)
INVALID_HTTP_CODE = "invalid_http_request"


def _body() -> bytes:
    return json.dumps({"detail": INVALID_HTTP, "code": INVALID_HTTP_CODE}).encode()


def _log_refusal(protocol, msg: str) -> None:
    client = getattr(protocol, "client", None)
    peer = f"{client[0]}:{client[1]}" if client else "unknown client"
    scope = getattr(protocol, "scope", None) or {}
    if not scope.get("method"):  # httptools began a new message on the stray bytes: the one before
        scope = getattr(protocol, "previous_scope", None) or {}
    last = f"{scope.get('method')} {scope.get('path')}" if scope.get("method") else "none"
    headers = dict(scope.get("headers") or [])
    declared = headers.get(b"content-length", b"-").decode("latin-1")
    log.warning(
        "%s from %s (uvicorn: %s; last request on the connection: %s, Content-Length %s)",
        INVALID_HTTP_CODE,
        peer,
        msg,
        last,
        declared,
    )


class JsonH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a JSON 400 for unparsable requests."""

    def send_400_response(self, msg: str) -> None:
        import h11

        _log_refusal(self, msg)
        body = _body()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        self.transport.write(self.conn.send(h11.Response(status_code=400, headers=headers, reason=b"Bad Request")))
        self.transport.write(self.conn.send(h11.Data(data=body)))
        self.transport.write(self.conn.send(h11.EndOfMessage()))
        self.transport.close()


if HttpToolsProtocol is not None:

    class JsonHttpToolsProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol with a JSON 400 for unparsable requests."""

        previous_scope: dict | None = None

        def on_message_begin(self) -> None:
            self.previous_scope = getattr(self, "scope", None)  # to name the request a refusal follows
            super().on_message_begin()

        def send_400_response(self, msg: str) -> None:
            _log_refusal(self, msg)
            body = _body()
            content = [b"HTTP/1.1 400 Bad Request\r\n"]
            for name, value in self.server_state.default_headers:
                content.extend([name, b": ", value, b"\r\n"])
            content.extend(
                [
                    b"content-type: application/json\r\n",
                    b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                    b"connection: close\r\n",
                    b"\r\n",
                    body,
                ]
            )
            self.transport.write(b"".join(content))
            self.transport.close()
else:  # pragma: no cover - httptools is installed with uvicorn[standard]
    JsonHttpToolsProtocol = None


def http_protocol() -> type:
    """The protocol class for ``uvicorn.run(http=...)``: httptools when installed, else h11."""
    return JsonHttpToolsProtocol or JsonH11Protocol
