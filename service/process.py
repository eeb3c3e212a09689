"""``whaleid serve`` as a child process on a free port of 127.0.0.1 (benchmarks and end-to-end tests).

Standard library only (``urllib`` for the readiness probe), so it runs wherever the service does.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    """``python -m whaleid serve BUNDLE [--gallery-dir DIR]`` with its output in ``log``.

    Args:
        bundle: the bundle folder.
        gallery: another gallery folder, or None (the bundle's).
        log: file the server's stdout and stderr are appended to.
        env: environment variables added to this process's (``WHALEID_*`` settings).
        wrap: a command put before the server's (e.g. ``unshare ... sh -c '...; exec "$@"'``).
        cwd: the server's working directory (default: this process's).
    """

    def __init__(
        self,
        bundle: Path,
        gallery: Path | None,
        log: Path,
        env: dict[str, str] | None = None,
        wrap: list[str] | None = None,
        cwd: Path | None = None,
    ):
        self.bundle, self.gallery, self.log_path = Path(bundle), gallery, Path(log)
        self.env, self.wrap, self.cwd = dict(env or {}), list(wrap or []), cwd
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self._log = None

    def start(self, timeout_s: float = 120.0, ready_path: str = "/ready") -> ServeProcess:
        """Start the server and wait until ``ready_path`` answers 200.

        Raises:
            RuntimeError: the server exited, or was not ready within ``timeout_s`` seconds (it is then
                stopped); the message ends with the tail of its log.
        """
        cmd = [*self.wrap, sys.executable, "-m", "whaleid", "serve", str(self.bundle), "--port", str(self.port)]
        if self.gallery is not None:
            cmd += ["--gallery-dir", str(self.gallery)]
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", **self.env}
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=self.cwd)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self._answers(ready_path):
                return self
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"the server was not ready after {timeout_s:.0f} s:\n{self.log_tail()}")

    def _answers(self, path: str) -> bool:
        try:
            with urllib.request.urlopen(self.url + path, timeout=2) as r:  # noqa: S310 - our own 127.0.0.1 URL
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self, chars: int = 3000) -> str:
        """The last ``chars`` characters of the server's log."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def rss_kib(self) -> int:
        """The server's resident memory in KiB (Linux ``/proc``), 0 when unknown."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def kill9(self) -> None:
        """SIGKILL, as a crash would."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, wait_s: float = 30.0) -> None:
        """SIGTERM (a graceful shutdown), SIGKILL after ``wait_s`` seconds."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(wait_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None
