"""How long a replica takes to catch up with another's change, with and without the change log.

Fills a throw-away PostgreSQL catalogue with ``--photos`` synthetic photos (512-d embeddings, 4 per
whale), opens two galleries on it (two replicas, in one process), then: replica A enrols one photo and
replica B catches up from the change log (``Gallery._catch_up``: the identities touched since its
generation), and, for comparison, B rebuilds from the whole store (what a replica does without the log,
or the first time). Median of ``--repeats``.

Usage: ``OMP_NUM_THREADS=1 python scripts/pg_catch_up.py --photos 10000 40000``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "scripts"), str(REPO / "tests")]

from pg_cluster import PgCluster  # noqa: E402
from pg_replica_memory import DIM, fill  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, nargs="+", default=[10_000])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    from index.gallery import Gallery
    from index.store import NewImage

    root = Path(tempfile.mkdtemp(prefix="whaleid-pg-catchup-"))
    cluster = PgCluster()
    rows = []
    try:
        for n in args.photos:
            url = cluster.create_database(f"c{n}")
            fill(url, n)
            a = Gallery(root / f"a{n}", DIM, store_url=url)
            b = Gallery(root / f"b{n}", DIM, store_url=url)
            b.store._callbacks.clear()  # B is driven by hand here, not by its listener
            rng = np.random.default_rng(n)
            incremental, rebuild = [], []
            for r in range(args.repeats):
                v = rng.normal(size=DIM).astype(np.float32)
                a.add(f"new{r}", [NewImage(f"new{r}", v / np.linalg.norm(v))])
                t0 = time.perf_counter()
                with b._mutate:
                    assert b._catch_up()
                incremental.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                with b._mutate:
                    b._generation = -1  # as a replica without the change log
                    b._load_or_rebuild()
                rebuild.append(time.perf_counter() - t0)
            rows.append(
                {
                    "photos": n,
                    "catch_up_ms": round(1000 * statistics.median(incremental), 1),
                    "rebuild_ms": round(1000 * statistics.median(rebuild), 1),
                }
            )
            print(rows[-1], flush=True)
            a.close()
            b.close()
    finally:
        cluster.remove()
    print(json.dumps({"dim": DIM, "repeats": args.repeats, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
