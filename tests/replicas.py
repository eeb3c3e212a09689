"""Several ``whaleid serve`` replicas on one PostgreSQL store, and a load of identify and enrol clients
(``tests/service/test_postgres_replicas.py`` and ``scripts/pg_replicas_load.py``).

Synthetic photos only (``helpers.texture``): the tiny torch-free bundle needs no ``../shared``.
"""

from __future__ import annotations

import hashlib
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from helpers import jpeg_bytes, texture, tiny_bundle, view

from service.process import ServeProcess

#: replicas' settings: a short micro-batch wait, and a change may wait 10 s for another replica's
REPLICA_ENV = {"WHALEID_BATCH_WAIT_MS": "5", "WHALEID_BUSY_TIMEOUT_S": "10", "WHALEID_LOG_LEVEL": "warning"}


def replica_bundle(folder: Path) -> Path:
    """The tiny bundle the replicas serve (16-d embeddings, centroid scoring, local features kept)."""
    return tiny_bundle(folder, thresholds={"embedding": 0.5}, seed=5)


class Replicas:
    """``n`` service processes on ``store_url``, each with its own gallery folder (its FAISS snapshot).

    Attributes:
        servers: the running :class:`ServeProcess` es; ``urls`` their base URLs (updated on restart).
    """

    def __init__(self, root: Path, bundle: Path, store_url: str, n: int = 2):
        self.root, self.bundle, self.store_url = Path(root), Path(bundle), store_url
        self.servers: list[ServeProcess] = [self._server(i) for i in range(n)]
        self.urls: list[str] = []

    def _server(self, i: int) -> ServeProcess:
        folder = self.root / f"replica{i}"
        folder.mkdir(parents=True, exist_ok=True)
        env = {**REPLICA_ENV, "WHALEID_STORE_URL": self.store_url}
        return ServeProcess(self.bundle, folder, self.root / f"replica{i}.log", env)

    def start(self) -> Replicas:
        for s in self.servers:
            s.start(timeout_s=180)
        self.urls = [s.url for s in self.servers]
        return self

    def restart(self, i: int) -> None:
        """Start replica ``i`` again (a new process on a new port, the same gallery folder)."""
        self.servers[i].stop()
        self.servers[i] = self._server(i).start(timeout_s=180)
        self.urls[i] = self.servers[i].url

    def stop(self) -> None:
        for s in self.servers:
            s.stop()


def photo(seed: int) -> bytes:
    """A synthetic fluke photo, different for every seed."""
    return jpeg_bytes(texture(seed))


@dataclass
class LoadResult:
    """What a load run saw: status codes per kind, identify latencies, the acknowledged enrolments."""

    statuses: dict[str, Counter] = field(default_factory=lambda: {"identify": Counter(), "enrol": Counter()})
    identify_ms: list[float] = field(default_factory=list)
    enrol_ms: list[float] = field(default_factory=list)
    #: (whale_id, sha256 of the photo) of every 201
    acknowledged: list[tuple[str, str]] = field(default_factory=list)
    #: (seconds since the start, kind, status) of every answer (0: no answer, e.g. a killed replica)
    timeline: list[tuple[float, str, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, t: float, kind: str, status: int, ms: float) -> None:
        with self.lock:
            self.statuses[kind][status] += 1
            self.timeline.append((t, kind, status))
            (self.identify_ms if kind == "identify" else self.enrol_ms).append(ms)

    def server_errors(self) -> dict[str, int]:
        """5xx answers other than 503 (the store briefly unavailable), per kind."""
        return {k: sum(n for s, n in c.items() if s >= 500 and s != 503) for k, c in self.statuses.items()}

    def summary(self) -> dict:
        def pct(values, q):
            return round(float(np.percentile(values, q)), 1) if values else None

        return {
            "statuses": {k: dict(sorted(c.items())) for k, c in self.statuses.items()},
            "identify_ms": {"p50": pct(self.identify_ms, 50), "p95": pct(self.identify_ms, 95)},
            "enrol_ms": {"p50": pct(self.enrol_ms, 50), "p95": pct(self.enrol_ms, 95)},
            "acknowledged_enrolments": len(self.acknowledged),
        }


def run_load(
    urls: list[str],
    duration_s: float,
    identify_clients: int = 8,
    enrol_clients: int = 2,
    whale_ids: int = 5,
    seed: int = 0,
    events: list[tuple[float, object]] | None = None,
    after_events_s: float = 4.0,
) -> LoadResult:
    """Identify and enrol clients spread over the replicas (client ``i`` uses ``urls[i % len(urls)]``,
    read again before every request, so a restarted replica's new URL is picked up).

    Enrolling clients add a new photo each time to one of ``whale_ids`` shared whale ids (both
    clients race on the same whales). ``events``: ``(seconds after the start, callable)`` run in
    order from the calling thread (kill a replica, restart the database...); the load goes on at least
    ``after_events_s`` after the last one returned (a slow restart still sees requests after it).
    """
    import httpx

    res, stop = LoadResult(), threading.Event()
    t0 = time.monotonic()
    queries = [jpeg_bytes(view(texture(seed * 1000 + q), q)) for q in range(4)]

    def call(kind: str, fn) -> httpx.Response | None:
        start = time.monotonic()
        try:
            r = fn()
        except httpx.HTTPError:
            r = None  # no answer (a killed replica); not a 5xx
        res.record(start - t0, kind, 0 if r is None else r.status_code, 1000 * (time.monotonic() - start))
        if r is None:
            time.sleep(0.2)
        elif r.status_code == 503:
            time.sleep(min(float(r.headers.get("retry-after", "1")), 2.0) / 4)
        return r

    def identify(i: int) -> None:
        with httpx.Client(timeout=60) as c:
            n = 0
            while not stop.is_set():
                data = queries[n % len(queries)]
                n += 1
                call("identify", lambda d=data: c.post(urls[i % len(urls)] + "/identify", files={"file": ("q.jpg", d)}))

    def enrol(j: int) -> None:
        with httpx.Client(timeout=60) as c:
            n = 0
            while not stop.is_set():
                data, wid = photo(seed * 1000 + 100_000 * (j + 1) + n), f"L{n % whale_ids}"
                n += 1
                r = call(
                    "enrol",
                    lambda d=data, w=wid: c.post(
                        urls[j % len(urls)] + "/gallery", files=[("files", ("p.jpg", d))], data={"whale_id": w}
                    ),
                )
                if r is not None and r.status_code == 201:
                    with res.lock:
                        res.acknowledged.append((wid, hashlib.sha256(data).hexdigest()))

    threads = [threading.Thread(target=identify, args=(i,), daemon=True) for i in range(identify_clients)]
    threads += [threading.Thread(target=enrol, args=(j,), daemon=True) for j in range(enrol_clients)]
    for t in threads:
        t.start()
    for at, action in sorted(events or [], key=lambda e: e[0]):
        time.sleep(max(0.0, at - (time.monotonic() - t0)))
        action()
    if events:
        duration_s = max(duration_s, time.monotonic() - t0 + after_events_s)
    time.sleep(max(0.0, duration_s - (time.monotonic() - t0)))
    stop.set()
    for t in threads:
        t.join(120)
    return res


def index_matches_store(gallery_dir: Path, store, bundle: Path) -> tuple[bool, str]:
    """Whether the FAISS snapshot a stopped replica saved in ``gallery_dir`` equals the store: the
    same generation, one vector per identity, each the L2-normalised mean of its photos' embeddings
    (the manifest's ``centroid`` scoring)."""
    from core.manifest import load_manifest
    from index.vectors import VectorIndex, l2_normalize

    manifest = load_manifest(bundle)
    index, meta = VectorIndex.load(gallery_dir / "index.npz", manifest.model.embedding_dim, manifest.gallery.factory)
    generation, names, _, idents, embs = store.snapshot()
    if meta.get("generation") != generation:
        return False, f"snapshot of generation {meta.get('generation')}, store at {generation}"
    want = set(np.unique(idents).tolist())
    have = set(index.ids.tolist())
    if have != want:
        return False, f"identities: index {len(have)}, store {len(want)} (differ: {sorted(have ^ want)[:10]})"
    for ident in want:
        centroid = l2_normalize(embs[idents == ident].astype(np.float64).sum(axis=0, keepdims=True))[0]
        if not np.allclose(index.vector(ident), centroid, atol=1e-5):
            return False, f"identity {ident} ({names[ident][0]}): centroid differs"
    return True, f"{len(want)} identities, {len(idents)} photos, generation {generation}"


def median(values) -> float | None:
    return statistics.median(values) if values else None
