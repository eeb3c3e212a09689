"""What a replica on PostgreSQL costs in memory: its resident set (RSS) with 0 and N gallery photos.

Fills a throw-away PostgreSQL catalogue with ``N`` synthetic photos (random L2-normalised embeddings of
the production dimension, 512; 4 photos per whale; no local features, thumbnails or originals, which stay
in the database), starts one ``whaleid serve`` replica of a tiny torch-free bundle of that dimension on
it, sends one identify (the index is loaded) and reads the process's ``VmRSS``. The difference between
the gallery sizes is what the photos cost; the bundle's own network is the same in both.

Usage: ``OMP_NUM_THREADS=1 python scripts/pg_replica_memory.py --photos 0 10000 40000 [--scoring image_max]``
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from helpers import jpeg_bytes, texture, tiny_bundle  # noqa: E402
from pg_cluster import PgCluster  # noqa: E402

from service.process import ServeProcess  # noqa: E402

DIM = 512
PER_WHALE = 4


def fill(url: str, n: int, seed: int = 0) -> None:
    from index.store import NewImage, open_store

    store = open_store(url, DIM)
    rng = np.random.default_rng(seed)
    whales = n // PER_WHALE
    for start in range(0, whales, 250):
        groups = []
        for w in range(start, min(whales, start + 250)):
            vecs = rng.normal(size=(PER_WHALE, DIM)).astype(np.float32)
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            groups.append((f"m{w:06d}", [NewImage(f"{w}-{k}", v) for k, v in enumerate(vecs)], False))
        store.add_image_groups(groups)
    store.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, nargs="+", default=[0, 10_000])
    ap.add_argument("--scoring", choices=["centroid", "image_max"], default="centroid")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import httpx

    from core.manifest import load_manifest

    root = Path(tempfile.mkdtemp(prefix="whaleid-pg-mem-"))
    bundle = tiny_bundle(root / "bundle", dim=DIM, seed=1)
    manifest = load_manifest(bundle)
    manifest.gallery.embedding_scoring = args.scoring
    manifest.save(bundle)
    cluster = PgCluster()
    rows = []
    try:
        for n in args.photos:
            url = cluster.create_database(f"mem{n}")
            t0 = time.monotonic()
            fill(url, n)
            fill_s = time.monotonic() - t0
            env = {"WHALEID_STORE_URL": url, "WHALEID_LOG_LEVEL": "warning", "WHALEID_INTRA_OP_THREADS": "1"}
            server = ServeProcess(bundle, root / f"g{n}", root / f"serve{n}.log", env)
            (root / f"g{n}").mkdir()
            t0 = time.monotonic()
            server.start(timeout_s=300)
            start_s = time.monotonic() - t0
            try:
                r = httpx.post(server.url + "/identify", files={"file": ("q.jpg", jpeg_bytes(texture(1)))}, timeout=60)
                assert r.status_code == 200, r.text
                time.sleep(1.0)
                rows.append(
                    {
                        "photos": n,
                        "whales": n // PER_WHALE,
                        "rss_mib": round(server.rss_kib() / 1024, 1),
                        "fill_s": round(fill_s, 1),
                        "start_s": round(start_s, 1),
                    }
                )
            finally:
                server.stop()
            print(rows[-1], flush=True)
    finally:
        cluster.remove()
    base = rows[0]
    for row in rows[1:]:
        row["mib_per_10k_photos"] = round((row["rss_mib"] - base["rss_mib"]) / row["photos"] * 10_000, 1)
    out = {"dim": DIM, "scoring": args.scoring, "photos_per_whale": PER_WHALE, "rows": rows}
    print(json.dumps(out, indent=2))
    if args.out:
        args.out.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
