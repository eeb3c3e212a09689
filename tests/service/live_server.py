"""A ``whaleid serve`` subprocess on 127.0.0.1 for end-to-end tests (:class:`service.process.ServeProcess`
with the tests' defaults: a short micro-batch wait)."""

from __future__ import annotations

from pathlib import Path

from service.process import ServeProcess, free_port

__all__ = ["Server", "free_port"]


class Server(ServeProcess):
    """``ServeProcess`` with ``WHALEID_BATCH_WAIT_MS=5`` unless the test sets it, and a 20 s stop."""

    def __init__(self, bundle: Path, gallery: Path, log: Path, env: dict | None = None, wrap: list[str] | None = None):
        super().__init__(bundle, gallery, log, {"WHALEID_BATCH_WAIT_MS": "5", **(env or {})}, wrap)

    def stop(self, wait_s: float = 20.0) -> None:
        super().stop(wait_s)
