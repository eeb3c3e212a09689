"""A throw-away PostgreSQL cluster for tests: ``initdb`` + ``pg_ctl`` in a temporary folder.

The server listens only on a unix socket in that folder (and a free port number, which names the
socket). As root, ``initdb`` refuses to run, so the cluster then runs as ``nobody`` (``runuser``).
Tests that need it skip with the reason when the PostgreSQL binaries or psycopg are missing (CI
installs Debian's ``postgresql`` package and the ``postgres`` extra); nothing is mocked.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))  # Debian keeps them off PATH
    return versions[-1] if versions else None


def _free_port() -> int:
    from service.process import free_port

    return free_port()


class PgCluster:
    """One PostgreSQL server in a temporary folder (``start``, ``stop``, ``restart``, ``url``)."""

    def __init__(self):
        self.initdb, self.pg_ctl = _binary("initdb"), _binary("pg_ctl")
        if not (self.initdb and self.pg_ctl):
            pytest.skip("PostgreSQL's initdb/pg_ctl are not installed (Debian: apt-get install postgresql)")
        pytest.importorskip("psycopg", reason="psycopg is not installed (pip install -e '.[postgres]')")
        self.folder = Path(tempfile.mkdtemp(prefix="whaleid-pg-"))
        self.data, self.log = self.folder / "data", self.folder / "server.log"
        self.port = _free_port()
        self._as = ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []
        if self._as:
            os.chown(self.folder, _uid("nobody"), -1)
        self._run([self.initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
        opts = {"port": self.port, "unix_socket_directories": f"'{self.folder}'", "listen_addresses": "''"}
        opts |= {"fsync": "off", "max_connections": 200}  # a test cluster: speed over crash safety of the OS
        with open(self.data / "postgresql.conf", "a") as f:
            f.writelines(f"{k} = {v}\n" for k, v in opts.items())
        self.start()

    def _run(self, cmd: list[str]) -> None:
        done = subprocess.run([*self._as, *cmd], capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stdout}{done.stderr}")

    def start(self) -> None:
        self._run([self.pg_ctl, "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start"])

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; ``mode="immediate"`` as a crash would (recovery on the next start)."""
        self._run([self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop"])

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={self.folder}&port={self.port}"

    def create_database(self, name: str, migrate: bool = True) -> str:
        """A new empty database (with whaleid's schema when ``migrate``); returns its URL."""
        import psycopg

        from index.store.pg_migrate import migrate as apply

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        if migrate:
            apply(self.url(name))
        return self.url(name)

    def remove(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)


def _uid(name: str) -> int:
    import pwd

    return pwd.getpwnam(name).pw_uid


_shared: PgCluster | None = None
_databases: dict[str, str] = {}


def shared_cluster() -> PgCluster:
    """One cluster for the whole test session (started on first use, removed at exit)."""
    global _shared
    if _shared is None:
        _shared = PgCluster()
        atexit.register(_shared.remove)
    return _shared


def database_for(folder: Path) -> str:
    """The URL of a migrated database of its own for a test's temporary folder (created once)."""
    key = str(folder)
    if key not in _databases:
        name = "t_" + hashlib.sha1(key.encode()).hexdigest()[:16]
        _databases[key] = shared_cluster().create_database(name)
    return _databases[key]
