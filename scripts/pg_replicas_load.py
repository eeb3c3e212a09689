"""Two service replicas on one throw-away PostgreSQL under a concurrent load, and what it costs.

Starts a PostgreSQL cluster (``initdb`` + ``pg_ctl`` in a temporary folder), two ``whaleid serve``
replicas of the tiny torch-free test bundle on it, then 8 identify and 2 enrolling clients spread over
both replicas for ``--seconds`` (60 by default). Checks what issue 20 asks: no 5xx, every 201 in the
store, both replicas' indexes equal to the store (each saves its FAISS index at a graceful stop, tagged
with the store generation). Prints and writes a JSON summary (``--out``).

Usage: ``OMP_NUM_THREADS=1 python scripts/pg_replicas_load.py --seconds 60 --out /tmp/pg_load.json``
(needs the ``postgres``, ``serve`` and ``train`` extras: ``onnx`` builds the tiny bundle).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from pg_cluster import PgCluster  # noqa: E402
from replicas import Replicas, index_matches_store, replica_bundle, run_load  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--identify-clients", type=int, default=8)
    ap.add_argument("--enrol-clients", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    from core.manifest import load_manifest
    from index.store import open_store

    root = Path(tempfile.mkdtemp(prefix="whaleid-pg-load-"))
    cluster = PgCluster()
    try:
        url = cluster.create_database("load")
        bundle = replica_bundle(root / "bundle")
        group = Replicas(root, bundle, url).start()
        try:
            res = run_load(group.urls, args.seconds, args.identify_clients, args.enrol_clients)
            rss_kib = [s.rss_kib() for s in group.servers]
        finally:
            time.sleep(1.5)  # the change feed's last wake-ups
            group.stop()
        store = open_store(url, load_manifest(bundle).model.embedding_dim)
        stored = store.stored_photos()
        missing = [a for a in res.acknowledged if a not in stored]
        indexes = [index_matches_store(s.gallery, store, bundle) for s in group.servers]
        store.close()
        summary = {
            "seconds": args.seconds,
            "clients": {"identify": args.identify_clients, "enrol": args.enrol_clients},
            **res.summary(),
            "identify_per_s": round(res.statuses["identify"][200] / args.seconds, 1),
            "enrol_per_s": round(res.statuses["enrol"][201] / args.seconds, 2),
            "server_errors_not_503": res.server_errors(),
            "acknowledged_missing_from_store": len(missing),
            "indexes_equal_store": [{"equal": ok, "detail": why} for ok, why in indexes],
            "replica_rss_mib_at_end": [round(k / 1024, 1) for k in rss_kib],
        }
    finally:
        cluster.remove()
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    ok = not missing and all(ok for ok, _ in indexes) and not any(res.server_errors().values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
