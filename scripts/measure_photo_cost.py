"""What one photo costs on disk in the gallery store, with and without its original bytes (README figure).

Enrols the first N labelled photos of the playground set (their boxes, local features on, as
``build-gallery --local-features``) with the starter model into a throw-away gallery, then reports the
store's bytes per photo, what each stored column holds, the same store with the originals dropped
(``UPDATE images SET original=NULL; VACUUM``), the catalogue archive's size and the seconds of
``whaleid reindex`` onto the same model.

    OMP_NUM_THREADS=1 python scripts/measure_photo_cost.py --n 200
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "flukes" / "playground2018"


def store_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("gallery.sqlite*"))


def photo_rows(folder: Path) -> dict[str, tuple[bytes, bytes | None]]:
    """``sha256 -> (embedding, local features)`` of every photo of a gallery folder's store."""
    db = sqlite3.connect(folder / "gallery.sqlite")
    try:
        return {r[0]: r[1:] for r in db.execute("SELECT sha256, embedding, local_features FROM images")}
    finally:
        db.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--data", type=Path, default=DATA)
    args = ap.parse_args()

    from core.manifest import LocalFeatureSpec, load_manifest
    from index.build import build_gallery
    from index.bundle import open_bundle
    from index.local import LocalFeatureExtractor
    from whaleid.catalogue import export_catalogue, reindex
    from whaleid.workflows import read_labelled

    tmp = Path(tempfile.mkdtemp(prefix="photo-cost-"))
    bundle = tmp / "bundle"
    bundle.mkdir()
    for name in ("manifest.json", "model.onnx"):
        shutil.copy(REPO / "starter" / name, bundle / name)
    m = load_manifest(bundle)
    m = m.model_copy(update={"local_features": LocalFeatureSpec()})
    m.save(bundle)
    rows = [r for r in read_labelled(args.data / "labels.csv", args.data / "boxes.csv") if r[1] != "new_whale"]
    rows = rows[: args.n]
    file_bytes = sum((args.data / "images" / r[0]).stat().st_size for r in rows)
    with open_bundle(bundle) as ob:
        local = LocalFeatureExtractor(m.local_features).encode_photo
        t0 = time.perf_counter()
        build_gallery(ob.gallery, ob.embedder, args.data / "images", rows, local_features=local, progress=False)
        build_s = time.perf_counter() - t0
        n = ob.gallery.store.count_images()
    folder = bundle / "gallery"
    with_originals = store_bytes(folder)
    db = sqlite3.connect(folder / "gallery.sqlite")
    cols = {
        c: db.execute(f"SELECT COALESCE(SUM(LENGTH({c})), 0) FROM images").fetchone()[0]
        for c in ("original", "thumbnail", "local_features", "embedding")
    }
    db.close()
    t0 = time.perf_counter()
    archive = export_catalogue(bundle, tmp / "catalogue.zip", progress=False)
    export_s = time.perf_counter() - t0
    new = tmp / "new"
    new.mkdir()
    for name in ("manifest.json", "model.onnx"):
        shutil.copy(bundle / name, new / name)
    t0 = time.perf_counter()
    reindex(folder, new, progress=False)
    reindex_s = time.perf_counter() - t0
    # the same model: reindex must reproduce build-gallery's embeddings and local features
    before, after = photo_rows(folder), photo_rows(new / "gallery")
    diff = max(
        float(np.abs(np.frombuffer(before[k][0], np.float32) - np.frombuffer(after[k][0], np.float32)).max())
        for k in before
    )
    same_features = sum(before[k][1] == after[k][1] for k in before)
    bare = tmp / "bare"
    bare.mkdir()
    shutil.copy(folder / "gallery.sqlite", bare / "gallery.sqlite")
    db = sqlite3.connect(bare / "gallery.sqlite")
    db.execute("UPDATE images SET original=NULL")
    db.commit()
    db.execute("VACUUM")
    db.close()
    without = store_bytes(bare)
    kb = lambda b: round(b / n / 1024, 1)  # noqa: E731
    print(
        json.dumps(
            {
                "photos": n,
                "photo_file_kb": kb(file_bytes),
                "store_kb_per_photo_with_originals": kb(with_originals),
                "store_kb_per_photo_without_originals": kb(without),
                "columns_kb_per_photo": {c: kb(v) for c, v in cols.items()},
                "archive_kb_per_photo": kb(archive["archive_bytes"]),
                "build_s": round(build_s, 1),
                "export_s": round(export_s, 1),
                "reindex_s": round(reindex_s, 1),
                "reindex_same_photos": sorted(before) == sorted(after),
                "reindex_max_embedding_diff": diff,
                "reindex_identical_local_features": same_features,
            },
            indent=1,
        )
    )
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
