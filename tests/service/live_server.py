"""A ``whaleid serve`` subprocess on 127.0.0.1 for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A ``whaleid serve`` subprocess; ``restart()`` keeps the same gallery folder.

    ``wrap`` is a command put before the server's (e.g. ``unshare ... sh -c '...; exec "$@"'``).
    """

    def __init__(self, bundle: Path, gallery: Path, log: Path, env: dict | None = None, wrap: list[str] | None = None):
        self.bundle, self.gallery, self.log_path = bundle, gallery, log
        self.env = env or {}
        self.wrap = wrap or []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 120, ready_path: str = "/ready") -> Server:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "WHALEID_BATCH_WAIT_MS": "5", **self.env}
        self.log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                *self.wrap,
                sys.executable,
                "-m",
                "whaleid",
                "serve",
                str(self.bundle),
                "--port",
                str(self.port),
                "--gallery-dir",
                str(self.gallery),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + ready_path, timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError("server did not become ready: " + self.log_path.read_text()[-3000:])

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if getattr(self, "log", None):
            self.log.close()
