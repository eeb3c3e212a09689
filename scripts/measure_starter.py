"""Measure a bundle's embedding on a run's split, as the README's "Real flukes" table does, plus the
recall of the true whale in the embedding's top-K whales (what ``fused`` re-ranks).

The validation gallery is ``split.train`` (boxes from the split, mirrored photos enrolled as mirror
identities when the bundle was trained so); queries are ``split.queries()``, embedded with their boxes
(``--view boxes``, as ``whaleid evaluate`` and training do) or without (``--view service``: the
bundle's TTA boxes of the full photo, as ``POST /identify`` sees an upload). The new_whale threshold
is chosen on the queries (maximum MAP@5), as in the README's table. Torch-free (onnxruntime).

    .venv/bin/python scripts/measure_starter.py starter --split runs/cpu-lite0/split.json \
        --images ../shared/data/flukes/playground2018/images --out runs/cpu-lite0/starter-eval.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from core.manifest import load_manifest
from index.build import build_gallery, embed_folder
from index.evaluate import evaluate_gallery
from index.gallery import Gallery
from index.labels import split_from_json
from index.ranking import NEW_WHALE
from whaleid.workflows import bundle_embedder


def recall_at(hits, truths, ks) -> dict[int, float]:
    """Share of known-whale queries whose whale is among their first ``k`` hits, per ``k``."""
    known = [(row, t) for row, t in zip(hits, truths, strict=True) if t != NEW_WHALE]
    return {k: float(np.mean([t in [h.whale_id for h in row[:k]] for row, t in known])) for k in ks}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--split", type=Path, required=True, help="split.json of the training run")
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--view", choices=["boxes", "service", "both"], default="both")
    ap.add_argument("--out", type=Path, required=True, help="JSON of the figures")
    args = ap.parse_args()

    manifest = load_manifest(args.bundle)
    embedder = bundle_embedder(args.bundle, manifest)
    split = split_from_json(json.loads(args.split.read_text()))
    flipped = bool(manifest.training.get("flip_identities", False))
    out: dict = {"bundle": str(args.bundle), "model_version": manifest.model_version, "split": split.summary()}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="whaleid-measure-") as tmp:
        gallery = Gallery(tmp, manifest.model.embedding_dim, durable=False)
        build_gallery(
            gallery,
            embedder,
            args.images,
            [(p.image, p.whale_id, p.box) for p in split.train],
            flipped=flipped,
            thumbnails=False,
            originals=False,
        )
        out["gallery_s"] = round(time.perf_counter() - t0, 1)
        queries = split.queries()
        truth_of = {p.image: t for p, t in queries}
        views = ["boxes", "service"] if args.view == "both" else [args.view]
        for view in views:
            t = time.perf_counter()
            rows = [(p.image, p.box if view == "boxes" else None) for p, _ in queries]
            names, embs = [], []
            for ep in embed_folder(embedder, args.images, rows, desc=f"queries ({view})"):
                names.append(ep.image)
                embs.append(ep.embedding.embedding)
            truths = [truth_of[n] for n in names]
            embs = np.asarray(embs, np.float32).reshape(len(embs), -1)
            report, _ = evaluate_gallery(gallery, embs, truths)
            hits = gallery.search(embs, 200)
            rec = recall_at(hits, truths, (1, 5, 50, 100, 200))
            out[view] = {
                **{k: v for k, v in report.as_dict().items() if k != "extra"},
                "recall_known_at": {str(k): round(v, 4) for k, v in rec.items()},
                "seconds": round(time.perf_counter() - t, 1),
            }
            print(view, json.dumps(out[view]), flush=True)
        gallery.close()
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
