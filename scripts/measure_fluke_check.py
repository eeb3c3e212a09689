"""Measure the not-a-fluke check (index/fluke_check.py) on real flukes and on non-fluke photos.

    python scripts/measure_fluke_check.py BUNDLE --out fluke_check.json [--gallery-whales 300]

First the one-class photo model (``index.fluke_check.PHOTO_MODEL``) is fitted on a seeded half of
the photos of ``../shared/data/flukes/playground2018`` and printed (paste it into the module when it
changes); the other half is never used to fit anything.

The bundle's gallery is rebuilt in a temporary folder from ``../shared/data/flukes/playground2018``:
every photo (with its box, as ``whaleid quickstart`` enrols) of the first ``--gallery-whales``
whales (sorted ids) with at least two photos. Then every photo below is identified exactly as
``POST /identify`` does (no box), and the share flagged ``looks_like_fluke: false`` is reported:

* real flukes: the playground photos of whales *not* in the gallery (new whales) from the half the
  photo model was not fitted on, and the 2019 photos of ``../shared/data/flukes/images`` (other
  encodings of the same catalogue: some are copies of photos the model was fitted on);
* non-flukes: the decodable odd images of ``../shared/data/odd-images``; the PNG/JPEG images shipped
  by installed packages and Debian (plots, diagrams, logos); generated images (noise, gradients,
  flat colours, a circuit-board-like pattern, text, checkerboards); and empty sea: the part of a
  real photo beside the fluke's box (left or right of it, when at least 200 x 100 pixels).

Nothing is downloaded; the real photos are read in place.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
PLAYGROUND = SHARED / "flukes" / "playground2018"
FLUKES_2019 = SHARED / "flukes" / "images"
ODD = SHARED / "odd-images"
PACKAGE_IMAGE_ROOTS = [Path(sys.prefix) / "lib", Path("/usr/share"), Path("/usr/lib")]


def jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def generated(n_each: int = 10, seed: int = 0) -> list[tuple[str, bytes]]:
    """Non-fluke photos made here: ``(name, JPEG bytes)``."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_each):
        h, w = int(rng.integers(300, 800)), int(rng.integers(400, 1200))
        out.append((f"noise-{i}", jpeg(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))))
        g = np.linspace(0, 1, w)[None, :, None] * rng.uniform(0, 255, 3) + np.linspace(0, 1, h)[:, None, None] * 60
        out.append((f"gradient-{i}", jpeg(np.clip(g, 0, 255).astype(np.uint8))))
        out.append((f"flat-{i}", jpeg(np.full((h, w, 3), rng.integers(0, 256, 3), np.uint8))))
        board = np.zeros((h, w, 3), np.uint8)
        board[:] = (20, int(rng.integers(90, 140)), 40)
        for _ in range(60):  # traces, pads and chips of a circuit board
            p = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            q = (p[0] + int(rng.integers(-200, 200)), p[1]) if rng.random() < 0.5 else (p[0], p[1] + 150)
            cv2.line(board, p, q, (200, 170, 60), int(rng.integers(1, 5)))
            cv2.circle(board, p, int(rng.integers(3, 8)), (210, 200, 150), -1)
        for _ in range(6):
            x, y = int(rng.integers(0, w - 80)), int(rng.integers(0, h - 50))
            cv2.rectangle(board, (x, y), (x + int(rng.integers(40, 120)), y + int(rng.integers(20, 60))), (15,) * 3, -1)
        out.append((f"circuit-{i}", jpeg(board)))
        text = np.full((h, w, 3), 245, np.uint8)
        for line in range(10):
            cv2.putText(text, f"whaleid test page {i}.{line} lorem ipsum", (10, 40 + 35 * line), 0, 0.9, (0,) * 3, 2)
        out.append((f"text-{i}", jpeg(text)))
        cell = int(rng.integers(8, 64))
        yy, xx = np.mgrid[0:h, 0:w]
        checker = (((yy // cell) + (xx // cell)) % 2 * 255).astype(np.uint8)
        out.append((f"checker-{i}", jpeg(np.repeat(checker[:, :, None], 3, axis=2))))
    return out


def package_images(limit: int = 80) -> list[tuple[str, bytes]]:
    """PNG/JPEG files of at least 3 kB shipped by installed packages (icons excluded)."""
    found = []
    for root in PACKAGE_IMAGE_ROOTS:
        for pattern in ("*.png", "*.jpg", "*.jpeg"):
            for p in root.rglob(pattern):
                if "icons" in p.parts or not p.is_file() or p.stat().st_size < 3000:
                    continue
                found.append(p)
    found = sorted(set(found))[:limit]
    return [(str(p), p.read_bytes()) for p in found]


def odd_images() -> list[tuple[str, bytes]]:
    rows = list(csv.DictReader((ODD / "MANIFEST.csv").read_text().splitlines()))
    return [(r["file"], (ODD / r["file"]).read_bytes()) for r in rows if r["expected"].startswith("identify")]


def empty_sea(boxes: dict[str, tuple[float, ...]], names: list[str], limit: int = 100) -> list[tuple[str, bytes]]:
    """The part of real photos beside the fluke's box (sea, sky, no fluke)."""
    out = []
    for name in names:
        if name not in boxes:
            continue
        im = np.asarray(Image.open(PLAYGROUND / "images" / name).convert("RGB"))
        x0, _, x1, _ = boxes[name]
        h, w = im.shape[:2]
        side = im[:, : int(x0)] if x0 >= w - x1 else im[:, int(x1) :]
        if side.shape[1] >= 200 and h >= 100:
            out.append((f"sea-{name}", jpeg(np.ascontiguousarray(side))))
        if len(out) >= limit:
            break
    return out


def fit_photo_model(names: list[str], quantile: float = 0.99) -> dict:
    """The one-class model of :data:`index.fluke_check.PHOTO_MODEL` fitted on these playground photos."""
    from core.preprocess import decode_image
    from index.build import FOLDER_LIMITS
    from index.fluke_check import photo_features, photo_statistics

    stats = [
        photo_statistics(decode_image((PLAYGROUND / "images" / n).read_bytes(), FOLDER_LIMITS).pixels) for n in names
    ]
    feats = photo_features(np.array(stats))
    mean = feats.mean(axis=0)
    precision = np.linalg.inv(np.cov(feats, rowvar=False))
    z = feats - mean
    dist = np.sqrt(np.einsum("ij,jk,ik->i", z, precision, z))
    return {
        "mean": tuple(round(float(v), 6) for v in mean),
        "precision": tuple(tuple(round(float(v), 6) for v in row) for row in precision),
        "max_distance": round(float(np.quantile(dist, quantile)), 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--gallery-whales", type=int, default=300)
    ap.add_argument("--new-whale-queries", type=int, default=400)
    ap.add_argument("--work", type=Path, help="Working folder, kept (default: a temporary one); its gallery is reused.")
    args = ap.parse_args()

    from core.manifest import load_manifest
    from index.build import FOLDER_LIMITS
    from index.fluke_check import PHOTO_MODEL
    from index.gallery import Gallery
    from index.identify import Identifier
    from index.labels import read_boxes
    from whaleid.workflows import build_gallery, bundle_embedder

    by_id = defaultdict(list)
    for r in csv.DictReader((PLAYGROUND / "labels.csv").read_text().splitlines()):
        if r["whale_id"] != "new_whale":
            by_id[r["whale_id"]].append(r["image"])
    multi = sorted(w for w, imgs in by_id.items() if len(imgs) >= 2)
    enrolled = multi[: args.gallery_whales]
    others = sorted(img for w, imgs in by_id.items() if w not in set(enrolled) for img in imgs)
    boxes = read_boxes(PLAYGROUND / "boxes.csv")
    every = sorted(p.name for p in (PLAYGROUND / "images").iterdir())
    order = np.random.default_rng(0).permutation(len(every))
    fit_half = [every[i] for i in order[: len(every) // 2]]
    t0 = time.perf_counter()
    model = fit_photo_model(fit_half)
    print(f"photo model fitted on {len(fit_half)} photos in {time.perf_counter() - t0:.0f} s: {model}")
    if model != PHOTO_MODEL:
        print("  (differs from index.fluke_check.PHOTO_MODEL: paste it there; measured below with the module's)")
    held_out = set(every) - set(fit_half)
    held = [n for n in others if n in held_out]  # photos of whales not in the gallery, never fitted on
    new_whale_photos = held[:: max(1, len(held) // args.new_whale_queries)][: args.new_whale_queries]

    tmp = args.work or Path(tempfile.mkdtemp(prefix="fluke-check-"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        bundle = tmp / "bundle"
        if not bundle.exists():
            shutil.copytree(args.bundle, bundle, ignore=shutil.ignore_patterns("gallery"))
        with open(tmp / "gallery.csv", "w", newline="") as fh:
            csv.writer(fh).writerows([("image", "whale_id"), *[(img, w) for w in enrolled for img in by_id[w]]])
        t0 = time.perf_counter()
        stats = build_gallery(
            bundle, PLAYGROUND / "images", tmp / "gallery.csv", PLAYGROUND / "boxes.csv", progress=False
        )
        manifest = load_manifest(bundle)
        gallery = Gallery.for_manifest(bundle / manifest.gallery.folder, manifest)
        ident = Identifier(manifest, gallery, bundle_embedder(bundle, manifest), FOLDER_LIMITS, "embedding")
        thr, n_ref = ident.fluke_checker.reference()
        print(f"gallery: {stats} in {time.perf_counter() - t0:.0f} s; reference {n_ref} photos, flag below {thr:.4f}")

        sets = {
            "real: new whales (playground2018, held-out half)": [
                (n, (PLAYGROUND / "images" / n).read_bytes()) for n in new_whale_photos
            ],
            "real: 2019 photos": [(p.name, p.read_bytes()) for p in sorted(FLUKES_2019.iterdir())],
            "non-fluke: odd images": odd_images(),
            "non-fluke: package images": package_images(),
            "non-fluke: generated": generated(),
            "non-fluke: empty sea": empty_sea(boxes, others),
        }
        report = {"bundle": str(args.bundle), "model_version": manifest.model_version, "gallery": stats}
        report.update(reference_photos=n_ref, min_similarity=thr, sets={})
        for label, photos in sets.items():
            flagged, sims, reasons = 0, [], defaultdict(int)
            for name, data in photos:
                try:
                    res = ident.identify(data, 5, "embedding", threshold=0.5)  # the ranking is not scored here
                except Exception as exc:  # noqa: BLE001 - a photo the service refuses (4xx) is not counted
                    print(f"  skipped {name}: {getattr(exc, 'detail', exc)}")
                    continue
                sims.append(res["fluke_check"]["gallery_similarity"])
                if not res["looks_like_fluke"]:
                    flagged += 1
                    reasons[res["fluke_check"]["reason"]] += 1
            n = len(sims)
            report["sets"][label] = {
                "photos": n,
                "flagged": flagged,
                "share_flagged": round(flagged / max(n, 1), 4),
                "reasons": dict(reasons),
                "similarity_quantiles": [round(float(q), 4) for q in np.quantile(sims, [0.01, 0.05, 0.5, 0.95])]
                if sims
                else [],
            }
            print(f"{label}: {flagged}/{n} flagged ({flagged / max(n, 1):.1%}) {dict(reasons)}")
        gallery.close()
    finally:
        if args.work is None:
            shutil.rmtree(tmp, ignore_errors=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
