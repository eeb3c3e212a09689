"""What one enrolled photo costs in the PostgreSQL catalogue: bytes per column and on disk.

Starts a throw-away PostgreSQL cluster and one ``whaleid serve`` replica of a tiny torch-free bundle
with the production embedding dimension (512) and local features on, enrols ``--photos`` real fluke
photos from ``../shared/data/flukes/images`` through ``POST /gallery`` (one whale per photo, with the
manifest's mirror images when it has them), then reads the average size of each stored column and
``pg_total_relation_size('images')`` (table, TOAST and indexes) per photo row.

Usage: ``OMP_NUM_THREADS=1 python scripts/pg_photo_bytes.py --photos 40``
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from helpers import FLUKES, tiny_bundle  # noqa: E402
from pg_cluster import PgCluster  # noqa: E402

from service.process import ServeProcess  # noqa: E402

COLUMNS = ("embedding", "thumbnail", "local_features", "original", "metadata", "phash")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=40)
    args = ap.parse_args()
    images = sorted((FLUKES / "images").glob("*.jpg"))[: args.photos]
    if not images:
        sys.exit(f"no photos in {FLUKES / 'images'}: this script needs ../shared")

    import httpx
    import psycopg

    root = Path(tempfile.mkdtemp(prefix="whaleid-pg-bytes-"))
    bundle = tiny_bundle(root / "bundle", hw=(128, 256), dim=512, seed=2)
    cluster = PgCluster()
    try:
        url = cluster.create_database("bytes")
        (root / "g").mkdir()
        server = ServeProcess(bundle, root / "g", root / "serve.log", {"WHALEID_STORE_URL": url}).start(300)
        try:
            for i, path in enumerate(images):
                files = [("files", (path.name, path.read_bytes(), "image/jpeg"))]
                r = httpx.post(server.url + "/gallery", files=files, data={"whale_id": f"b{i:04d}"}, timeout=120)
                assert r.status_code == 201, r.text
        finally:
            server.stop()
        with psycopg.connect(url) as conn:
            cols = ", ".join(f"avg(coalesce(octet_length({c}::text), 0))" for c in ("metadata", "phash"))
            blobs = ", ".join(f"avg(coalesce(octet_length({c}), 0))" for c in COLUMNS[:4])
            row = conn.execute(f"SELECT count(*), {blobs}, {cols} FROM images").fetchone()
            total = conn.execute("SELECT pg_total_relation_size('images')").fetchone()[0]
            photo_rows = conn.execute(
                "SELECT count(*) FROM images m JOIN identities i ON i.id = m.identity_id WHERE NOT i.flipped"
            ).fetchone()[0]
        file_bytes = sum(p.stat().st_size for p in images) / len(images)
        out = {
            "photos_enrolled": len(images),
            "rows": row[0],
            "photo_rows": photo_rows,
            "mean_jpeg_file_bytes": round(file_bytes),
            "mean_bytes_per_row": {c: round(float(v)) for c, v in zip(COLUMNS, row[1:], strict=True)},
            "table_toast_and_indexes_bytes_per_photo": round(total / photo_rows),
        }
    finally:
        cluster.remove()
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
