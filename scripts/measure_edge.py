"""Measure the trailing-edge cue (issue 17, phase 1): extraction accuracy and identification alone.

Two studies, both printed and written as JSON:

* ``keypoints``: the tips and notch found by :func:`index.edge.extract_edge` against the hand-placed
  keypoints of ``../shared/data/kaggle-annotations/keypoints.csv`` (pudae; points 1 and 5 are the
  tips, 3 the notch, in the original photos' pixels) on the photos of ``../shared/data/flukes/images``
  (shrunk to 768 px wide: the keypoints are rescaled by 768 / original width, the original width
  read from the ratio of the photo's box to its original box in ``bboxs.csv``). Photos whose
  keypoints do not fit their original box (IoU under 0.5: annotated in another frame) are left
  out and counted. Errors are in % of the hand-placed tip-to-tip distance.
* ``split``: the playground2018 split of the README's tables (gallery and queries CSVs with their
  boxes; the full frame where a photo has no box), the same 300 queries as ``whaleid compare-modes
  --max-queries 300`` (``np.random.default_rng(0).choice(len(rows), 300, replace=False)``, sorted;
  truth = the whale when it has gallery photos, else new_whale). Whales are ranked by the edge
  alone (each whale's best gallery photo); the new_whale threshold is chosen on the queries by the
  ``max_map5`` rule of :func:`index.evaluate.evaluate_rankings`. A query without an edge gets an
  empty ranking (its answer is new_whale).

Extracted edges are cached as ``WTE1`` blobs under ``--cache`` (default ``/tmp/edge-cache``).

Usage::

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python scripts/measure_edge.py split --out /tmp/edge-split.json
    OMP_NUM_THREADS=1 .venv/bin/python scripts/measure_edge.py keypoints --out /tmp/edge-keypoints.json
    # after `whaleid report BUNDLE ... --max-queries 300 --scoring embedding local fused --out /tmp/report-pg`:
    OMP_NUM_THREADS=1 .venv/bin/python scripts/measure_edge.py fuse --report-queries /tmp/report-pg/queries.jsonl

* ``fuse``: an offline three-cue fusion, see :func:`fuse_study`.
* ``tune``: descriptor choices on other queries of the split, see :func:`tune_study`.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np

from core.preprocess import load_image_file
from index.build import FOLDER_LIMITS
from index.edge import (
    DEFAULT_POINTS,
    DEFAULT_SCALES,
    NoEdge,
    TrailingEdge,
    decode_descriptor,
    edge_distances,
    encode_descriptor,
    extract_edge,
    integral_curvature,
)
from index.labels import read_boxes, read_labels
from index.ranking import NEW_WHALE

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
PG = SHARED / "flukes" / "playground2018" / "images"
SPLIT = Path("/tmp/pgb/split")


# --- extraction with a cache ---------------------------------------------------------------------


def describe_cached(images: Path, name: str, box, cache: Path) -> tuple[object, float | None]:
    """The photo's descriptor (or NoEdge) and the extraction time in seconds (None when cached)."""
    stem = cache / name
    wte, none = stem.with_suffix(".wte"), stem.with_suffix(".noedge")
    if wte.exists():
        desc = decode_descriptor(wte.read_bytes(), str(wte))
        if desc.curvature.shape[1] != DEFAULT_POINTS or desc.scales != tuple(np.float32(DEFAULT_SCALES).tolist()):
            desc = integral_curvature(desc.edge)  # cached with other descriptor settings: redescribe
        return desc, None
    if none.exists():
        reason, detail = none.read_text().split("\n", 1)
        return NoEdge(reason, detail), None
    pixels = load_image_file(images / name, FOLDER_LIMITS).pixels
    t0, c0 = time.perf_counter(), time.process_time()
    edge = extract_edge(pixels, box)
    desc = edge if isinstance(edge, NoEdge) else integral_curvature(edge)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    if isinstance(desc, NoEdge):
        none.write_text(f"{desc.reason}\n{desc.detail}")
    else:
        wte.write_bytes(encode_descriptor(desc))
    (stem.with_suffix(".ms")).write_text(f"{1000 * seconds:.2f} {1000 * cpu:.2f}")
    return desc, seconds


def extract_all(images: Path, rows, cache: Path, label: str) -> dict:
    """Descriptors of ``(image, box)`` rows; prints progress every 200 photos."""
    out, times, cpu = {}, [], []
    for i, (name, box) in enumerate(rows):
        desc, sec = describe_cached(images, name, box, cache)
        out[name] = desc
        ms_file = (cache / name).with_suffix(".ms")
        if ms_file.exists():
            wall, used = ms_file.read_text().split()
            times.append(float(wall))
            cpu.append(float(used))
        if (i + 1) % 200 == 0:
            print(f"{label}: {i + 1}/{len(rows)} photos", flush=True)
    return out, times, cpu


def failure_summary(descs: dict, boxed: set[str]) -> dict:
    fails = {n: d.reason for n, d in descs.items() if isinstance(d, NoEdge)}
    with_box = [n for n in descs if n in boxed]
    return {
        "photos": len(descs),
        "failed": len(fails),
        "failed_share": round(len(fails) / max(len(descs), 1), 4),
        "reasons": dict(Counter(fails.values())),
        "photos_with_box": len(with_box),
        "failed_share_with_box": round(sum(n in fails for n in with_box) / max(len(with_box), 1), 4),
        "failed_share_full_frame": round(
            sum(n in fails for n in descs if n not in boxed) / max(len(descs) - len(with_box), 1), 4
        ),
    }


# --- the split study -----------------------------------------------------------------------------


def split_study(args) -> dict:
    from index.evaluate import evaluate_rankings
    from index.gallery import Hit

    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    images = Path(args.images)
    gal_rows = read_labels(args.split / "gallery.csv")
    gal_boxes = read_boxes(args.split / "gallery_boxes.csv")
    q_rows = read_labels(args.split / "queries.csv")
    q_boxes = read_boxes(args.split / "queries_boxes.csv")
    if args.max_queries and len(q_rows) > args.max_queries:  # compare-modes' rule, exactly
        pick = np.random.default_rng(args.seed).choice(len(q_rows), args.max_queries, replace=False)
        q_rows = [q_rows[i] for i in sorted(pick)]
    gallery_whales = {w for _, w in gal_rows if w != NEW_WHALE}
    sha_of_gallery = {}
    for name, wid in gal_rows:
        sha_of_gallery.setdefault(wid, set()).add(hashlib.sha256((images / name).read_bytes()).hexdigest())
    queries, skipped = [], 0
    for name, wid in q_rows:
        truth = wid if wid in gallery_whales else NEW_WHALE
        if truth != NEW_WHALE and hashlib.sha256((images / name).read_bytes()).hexdigest() in sha_of_gallery[wid]:
            skipped += 1  # enrolled for its own whale: it would match itself (compare-modes skips it too)
            continue
        queries.append((name, truth))
    print(f"{len(gal_rows)} gallery photos, {len(queries)} queries ({skipped} skipped)", flush=True)

    g_desc, g_ms, g_cpu = extract_all(images, [(n, gal_boxes.get(n)) for n, _ in gal_rows], cache, "gallery")
    q_desc, q_ms, q_cpu = extract_all(images, [(n, q_boxes.get(n)) for n, _ in queries], cache, "queries")
    g_names = [n for n, _ in gal_rows if not isinstance(g_desc[n], NoEdge)]
    wid_of = dict(gal_rows)
    g_ids = [wid_of[n] for n in g_names]
    g_stack = np.stack([g_desc[n].curvature for n in g_names]).astype(np.float32)
    whales_with_edge = set(g_ids)

    rng = np.random.default_rng(1)
    hits, t_all, t_short, c_all, c_short = [], [], [], [], []
    for name, _ in queries:
        d = q_desc[name]
        if isinstance(d, NoEdge):
            hits.append([])
            continue
        t0, c0 = time.perf_counter(), time.process_time()
        dist = edge_distances(d, g_stack)
        t_all.append(time.perf_counter() - t0)
        c_all.append(time.process_time() - c0)
        sub = rng.choice(len(g_stack), min(50, len(g_stack)), replace=False)
        t0, c0 = time.perf_counter(), time.process_time()
        edge_distances(d, g_stack[sub])
        t_short.append(time.perf_counter() - t0)
        c_short.append(time.process_time() - c0)
        best: dict[str, float] = {}
        for wid, dd in zip(g_ids, dist.tolist(), strict=True):
            if dd < best.get(wid, np.inf):
                best[wid] = dd
        ranked = sorted(best.items(), key=lambda kv: kv[1])[:5]
        hits.append([Hit(w, -dd, -1) for w, dd in ranked])
    truths = [t for _, t in queries]
    report, _ = evaluate_rankings(hits, truths, len(gallery_whales))
    # The same figures on the queries the edge can answer at all: an edge, and a known whale
    # with at least one gallery edge (or new_whale).
    able = [
        i
        for i, (n, t) in enumerate(queries)
        if not isinstance(q_desc[n], NoEdge) and (t == NEW_WHALE or t in whales_with_edge)
    ]
    sub_report, _ = evaluate_rankings([hits[i] for i in able], [truths[i] for i in able], len(gallery_whales))
    keep = ("map5", "top1", "top1_known", "top5_known", "threshold", "queries", "queries_known", "queries_new_whale")
    return {
        "queries_skipped_enrolled": skipped,
        "all_queries": {k: v for k, v in report.as_dict().items() if k in keep},
        "queries_with_edge_and_known_whale_edge": {k: v for k, v in sub_report.as_dict().items() if k in keep},
        "gallery_extraction": failure_summary(g_desc, set(gal_boxes)),
        "query_extraction": failure_summary(q_desc, set(q_boxes)),
        "gallery_whales": len(gallery_whales),
        "gallery_whales_with_an_edge": len(whales_with_edge),
        "extract_ms_per_photo_wall": _stats(g_ms + q_ms),
        "extract_ms_per_photo_cpu": _stats(g_cpu + q_cpu),
        "match_ms_per_query_all_gallery": _stats([1000 * t for t in t_all]),
        "match_ms_per_query_50_photos": _stats([1000 * t for t in t_short]),
        "match_cpu_ms_per_query_all_gallery": _stats([1000 * t for t in c_all]),
        "match_cpu_ms_per_query_50_photos": _stats([1000 * t for t in c_short]),
        "gallery_edges_matched": len(g_stack),
    }


def _stats(ms: list[float]) -> dict:
    if not ms:
        return {"n": 0}
    a = np.asarray(ms)
    return {
        "n": len(a),
        "mean": round(float(a.mean()), 1),
        "p50": round(float(np.median(a)), 1),
        "p95": round(float(np.percentile(a, 95)), 1),
    }


# --- the keypoint study --------------------------------------------------------------------------


def keypoint_study(args) -> dict:
    flukes = SHARED / "flukes"
    ann = SHARED / "kaggle-annotations"
    with open(ann / "keypoints.csv", newline="") as fh:
        kps = {r["filename"]: r for r in csv.DictReader(fh)}
    with open(ann / "bboxs.csv", newline="") as fh:
        orig_box = {r["Image"]: [float(r[c]) for c in ("x0", "y0", "x1", "y1")] for r in csv.DictReader(fh)}
    boxes = read_boxes(flukes / "boxes.csv")
    names = sorted(n for n in kps if (flukes / "images" / n).exists())
    rows, excluded, fails = [], [], Counter()
    for name in names:
        r = kps[name]
        pts = np.array([[float(r[f"{i}_x"]), float(r[f"{i}_y"])] for i in "1234567890"])
        ob, nb = np.array(orig_box[name]), np.array(boxes[name])
        lo, hi = pts.min(0), pts.max(0)
        inter = np.prod(np.clip(np.minimum(hi, ob[2:]) - np.maximum(lo, ob[:2]), 0, None))
        iou = inter / (np.prod(hi - lo) + np.prod(ob[2:] - ob[:2]) - inter)
        if iou < 0.5:
            excluded.append(name)
            continue
        pixels = load_image_file(flukes / "images" / name, FOLDER_LIMITS).pixels
        if pixels.shape[1] == 768:  # shrunk: 768 / original width, the width from the box ratio
            ratio = ((nb[2] - nb[0]) / (ob[2] - ob[0]) + (nb[3] - nb[1]) / (ob[3] - ob[1])) / 2
            scale = 768.0 / round(768.0 / ratio)
        else:
            scale = 1.0
        truth = pts * scale
        t0 = time.perf_counter()
        edge = extract_edge(pixels, boxes[name])
        ms = 1000 * (time.perf_counter() - t0)
        width = float(np.linalg.norm(truth[4] - truth[0]))
        row = {"image": name, "ms": round(ms, 1), "width_px": round(width, 1)}
        if isinstance(edge, TrailingEdge):
            for key, got, want in (
                ("left_tip", edge.left_tip, truth[0]),
                ("notch", edge.notch, truth[2]),
                ("right_tip", edge.right_tip, truth[4]),
            ):
                row[key] = round(100 * float(np.linalg.norm(got - want)) / width, 2)
        else:
            row["no_edge"] = edge.reason
            fails[edge.reason] += 1
        rows.append(row)
    ok = [r for r in rows if "no_edge" not in r]
    summary = {
        "photos_with_keypoints": len(names),
        "excluded_keypoints_off_their_box": excluded,
        "photos_measured": len(rows),
        "failed": len(rows) - len(ok),
        "failed_share": round((len(rows) - len(ok)) / max(len(rows), 1), 4),
        "reasons": dict(fails),
        "extract_ms": _stats([r["ms"] for r in rows]),
    }
    for key in ("left_tip", "notch", "right_tip"):
        vals = np.array([r[key] for r in ok])
        summary[f"{key}_error_pct_width"] = {
            "mean": round(float(vals.mean()), 2),
            "median": round(float(np.median(vals)), 2),
            "within_5pct": round(float((vals <= 5).mean()), 3),
        }
    tips = np.array([[r["left_tip"], r["right_tip"]] for r in ok]).ravel()
    summary["tips_error_pct_width_mean"] = round(float(tips.mean()), 2)
    summary["rows"] = rows
    return summary


# --- offline three-cue fusion from a report's cached rankings --------------------------------------


def _shifted(cand, z, beta):
    return [(w, sc + beta * zz) for (w, sc), zz in zip(cand, z, strict=True)]


def fuse_study(args) -> dict:
    """Re-rank each mode's cached top-20 whales (``whaleid report``'s ``queries.jsonl``) by
    ``score + beta * z``, ``z`` the whale's edge score (minus its best photo's distance) standardised
    over all query-whale pairs, 0 where the query or the whale has no edge. ``beta`` is chosen by
    2-fold cross-fitting on MAP@5 (each half scored with the beta best on the other half), then the
    new_whale threshold by ``max_map5`` on all queries, as compare-modes does. beta = 0 reproduces
    the mode itself. Only the cached 20 whales are re-ranked: a whale outside them cannot rise."""
    from index.evaluate import evaluate_rankings
    from index.gallery import Hit

    cache = Path(args.cache)
    rows = [json.loads(line) for line in Path(args.report_queries).read_text().splitlines() if line.strip()]
    by_mode: dict[str, dict[str, dict]] = {}
    for r in rows:
        by_mode.setdefault(r["mode"], {})[r["image"]] = r
    gal_rows = read_labels(args.split / "gallery.csv")
    gal_boxes = read_boxes(args.split / "gallery_boxes.csv")
    q_boxes = read_boxes(args.split / "queries_boxes.csv")
    g_desc, _, _ = extract_all(args.images, [(n, gal_boxes.get(n)) for n, _ in gal_rows], cache, "gallery")
    edges_of: dict[str, list] = {}
    for n, w in gal_rows:
        if not isinstance(g_desc[n], NoEdge):
            edges_of.setdefault(w, []).append(g_desc[n].curvature)
    out: dict = {}
    for mode, queries in sorted(by_mode.items()):
        names = sorted(queries)
        q_desc, _, _ = extract_all(args.images, [(n, q_boxes.get(n)) for n in names], cache, "queries")
        ranked = [[(w, float(sc)) for w, sc, *_ in queries[n]["ranked"]] for n in names]
        truths = [queries[n]["truth"] for n in names]
        edge = []
        for n, cand in zip(names, ranked, strict=True):
            d = q_desc[n]
            edge.append(
                [
                    np.nan
                    if isinstance(d, NoEdge) or w not in edges_of
                    else -float(edge_distances(d, edges_of[w]).min())
                    for w, _ in cand
                ]
            )
        flat = np.array([e for row in edge for e in row if np.isfinite(e)])
        mu, sd = (float(flat.mean()), float(flat.std()) or 1.0) if flat.size else (0.0, 1.0)

        z = [[0.0 if not np.isfinite(e) else (e - mu) / sd for e in row] for row in edge]

        def rerank(idx, beta, ranked=ranked, z=z):
            return [
                [Hit(w, sc, -1) for w, sc in sorted(_shifted(ranked[i], z[i], beta), key=lambda t: -t[1])] for i in idx
            ]

        betas = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
        halves = (np.arange(len(names))[::2], np.arange(len(names))[1::2])
        chosen, hits = [], [None] * len(names)
        for fit, score in ((halves[0], halves[1]), (halves[1], halves[0])):
            best = max(betas, key=lambda b: evaluate_rankings(rerank(fit, b), [truths[i] for i in fit], 0)[0].map5)
            chosen.append(best)
            for i, h in zip(score, rerank(score, best), strict=True):
                hits[i] = h
        keep = ("map5", "top1_known", "top5_known", "threshold", "queries", "queries_known")
        base = evaluate_rankings(rerank(range(len(names)), 0.0), truths, 0)[0].as_dict()
        fused = evaluate_rankings(hits, truths, 0)[0].as_dict()
        out[mode] = {
            "alone": {k: base[k] for k in keep},
            "with_edge_cross_fitted": {k: fused[k] for k in keep},
            "beta_per_fold": chosen,
            "queries_with_edge": sum(not isinstance(q_desc[n], NoEdge) for n in names),
        }
        print(mode, json.dumps(out[mode]), flush=True)
    return out


# --- descriptor choices, on queries outside the 300 ------------------------------------------------

VARIANTS = (
    {"n_points": 64, "scales": (0.02, 0.04, 0.08), "band": 0.1},
    {"n_points": 64, "scales": (0.02, 0.04, 0.08), "band": 0.05},
    {"n_points": 64, "scales": (0.02, 0.04, 0.08), "band": 0.2},
    {"n_points": 64, "scales": (0.01, 0.02, 0.04), "band": 0.1},
    {"n_points": 64, "scales": (0.02, 0.04, 0.08, 0.16), "band": 0.1},
    {"n_points": 96, "scales": (0.02, 0.04, 0.08), "band": 0.1},
    {"n_points": 64, "scales": (0.02, 0.04, 0.08, 0.16), "band": 0.05},
    {"n_points": 64, "scales": (0.02, 0.04, 0.08), "band": 0.0},
)


def tune_study(args) -> dict:
    """Top-1 / top-5 of known whales by the edge alone for each of :data:`VARIANTS`, on
    ``--tune-queries`` known-whale queries drawn (seed 1) from the split's queries that are **not**
    among the 300 of the README's tables, so a choice made here does not flatter those figures.
    Only queries with an edge whose whale has a gallery edge count. Descriptors are recomputed from
    the cached edges (extraction unchanged)."""
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    gal_rows = read_labels(args.split / "gallery.csv")
    gal_boxes = read_boxes(args.split / "gallery_boxes.csv")
    q_rows = read_labels(args.split / "queries.csv")
    q_boxes = read_boxes(args.split / "queries_boxes.csv")
    held = set(np.random.default_rng(args.seed).choice(len(q_rows), args.max_queries, replace=False).tolist())
    whales = {w for _, w in gal_rows if w != NEW_WHALE}
    rest = [r for i, r in enumerate(q_rows) if i not in held and r[1] in whales]
    rest = [rest[i] for i in sorted(np.random.default_rng(1).choice(len(rest), args.tune_queries, replace=False))]
    g_desc, _, _ = extract_all(args.images, [(n, gal_boxes.get(n)) for n, _ in gal_rows], cache, "gallery")
    q_desc, _, _ = extract_all(args.images, [(n, q_boxes.get(n)) for n, _ in rest], cache, "tuning queries")
    g_names = [n for n, _ in gal_rows if not isinstance(g_desc[n], NoEdge)]
    wid_of = dict(gal_rows)
    g_ids = np.array([wid_of[n] for n in g_names])
    queries = [(n, w) for n, w in rest if not isinstance(q_desc[n], NoEdge) and w in set(g_ids)]
    out = {"tuning_queries": len(rest), "counted": len(queries), "variants": []}
    for v in [VARIANTS[i] for i in (args.variants or range(len(VARIANTS)))]:
        t0 = time.process_time()
        gal = np.stack([integral_curvature(g_desc[n].edge, v["n_points"], v["scales"]).curvature for n in g_names])
        ranks = []
        for n, w in queries:
            q = integral_curvature(q_desc[n].edge, v["n_points"], v["scales"])
            dist = edge_distances(q, gal, v["band"])
            best: dict[str, float] = {}
            for wid, dd in zip(g_ids.tolist(), dist.tolist(), strict=True):
                best[wid] = min(dd, best.get(wid, np.inf))
            order = sorted(best, key=best.get)
            ranks.append(order.index(w))
        r = np.array(ranks)
        row = {
            **v,
            "top1": round(float((r == 0).mean()), 4),
            "top5": round(float((r < 5).mean()), 4),
            "cpu_s": round(time.process_time() - t0, 1),
        }
        out["variants"].append(row)
        print(json.dumps(row), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("study", choices=("split", "keypoints", "fuse", "tune"))
    ap.add_argument("--tune-queries", type=int, default=200, help="tune: known-whale queries outside the 300")
    ap.add_argument("--variants", type=int, nargs="*", help="tune: indices into VARIANTS (all by default)")
    ap.add_argument(
        "--report-queries", type=Path, default=Path("/tmp/report-pg/queries.jsonl"), help="fuse: queries.jsonl"
    )
    ap.add_argument("--split", type=Path, default=SPLIT, help="folder with gallery.csv, queries.csv and *_boxes.csv")
    ap.add_argument("--images", type=Path, default=PG)
    ap.add_argument("--cache", default="/tmp/edge-cache")
    ap.add_argument("--max-queries", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    result = {"split": split_study, "keypoints": keypoint_study, "fuse": fuse_study, "tune": tune_study}[args.study](
        args
    )
    text = json.dumps(result, indent=1)
    print(text if args.study == "split" else json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
