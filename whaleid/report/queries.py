"""The report's queries: labelled photos run through the ``POST /identify`` pipeline, cached per query.

Each query goes through :class:`index.identify.Identifier` (the pipeline that ``POST /identify`` and
``whaleid predict`` share: decoding, TTA boxes, the network, the gallery search, the scoring mode's
re-ranking with its keypoint pairs, the exact-photo rule). The identities are asked for without a
new_whale threshold (``-inf``: new_whale never enters the list), ``CMC_K`` of them, so that the
report can place new_whale at any threshold afterwards with the project's own
:func:`index.ranking.insert_new_whale`.

A query's result is appended as one JSON line to ``queries.jsonl`` in the report folder, keyed by
photo, model version and scoring mode; a rerun skips the queries already there (resumable after an
interruption; a truncated last line is ignored).
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from core.errors import ConfigError, InputImageError
from core.fileio import read_jsonl_by, sha256_bytes
from index.identify import Identifier, PreparedPhoto
from index.ranking import NEW_WHALE

log = logging.getLogger(__name__)

#: Identities asked of each query (the CMC curve runs to k = 20).
CMC_K = 20
#: Ranks whose keypoint pairs are kept in the cache (the strips show the top 5).
PAIRS_K = 5
CACHE_NAME = "queries.jsonl"


@dataclass(frozen=True)
class Query:
    """One labelled photo.

    Attributes:
        image: file name in the images folder.
        whale_id: its label as written in the labels CSV.
        truth: ``whale_id`` when the gallery knows the whale, else ``new_whale``.
        box: ``(x0, y0, x1, y1)`` pixels from the boxes CSV, or None (the bundle's detector or the
            full frame, as ``POST /identify``).
    """

    image: str
    whale_id: str
    truth: str
    box: tuple[float, float, float, float] | None = None


def check_inputs(bundle: Path, images: Path, labels: Path, boxes: Path | None, submission: Path | None) -> None:
    """Fail before any work when an input is missing.

    Raises:
        ConfigError: naming the missing file or folder.
    """
    need = [(Path(bundle) / "manifest.json", "the bundle's manifest"), (labels, "the labels CSV")]
    if boxes is not None:
        need.append((boxes, "the boxes CSV"))
    if submission is not None:
        need.append((submission, "the submission CSV"))
    for path, what in need:
        if not Path(path).is_file():
            raise ConfigError(f"{what} {path} does not exist")
    if not Path(images).is_dir():
        raise ConfigError(f"the images folder {images} does not exist")


def select_queries(
    rows: Sequence[tuple[str, str, tuple | None]], known: set[str], max_queries: int = 0, seed: int = 0
) -> list[Query]:
    """The report's queries: a seeded random subset of ``max_queries`` rows (0: all), in file order.

    The subset is drawn as ``whaleid compare-modes`` draws it, so both score the same photos.

    Args:
        rows: ``(image, whale_id, box or None)`` from the labels and boxes CSVs.
        known: the gallery's whale ids.
        max_queries: at most this many (0: every row).
        seed: seed of the draw.
    """
    rows = list(rows)
    if max_queries and len(rows) > max_queries:
        pick = np.random.default_rng(seed).choice(len(rows), max_queries, replace=False)
        rows = [rows[i] for i in sorted(pick)]
    return [Query(img, wid, wid if wid in known else NEW_WHALE, box) for img, wid, box in rows]


def cache_key(image: str, model_version: str, mode: str) -> str:
    return f"{image}|{model_version}|{mode}"


def read_cache(path: Path) -> dict[str, dict]:
    """Records already computed, by :func:`cache_key` (a truncated last line is ignored)."""
    return read_jsonl_by(path, "key")


def prepare_with_box(identifier: Identifier, data: bytes, box) -> PreparedPhoto:
    """:meth:`Identifier.prepare`, with the labelled box in place of the detector's when one is given.

    Without a box this *is* ``identifier.prepare(data)``; with one, the box becomes the base box of
    the TTA boxes and of the local features, as a detector's box would (everything else, e.g. the
    decoded photo and its checksum, stays as ``prepare`` made it).
    """
    prep = identifier.prepare(data)
    if box is not None:
        prep.base_box = np.asarray(box, np.float32)
        prep.boxes = identifier.embedder.boxes_for(prep.image.pixels, prep.base_box)
        prep.inputs = identifier.embedder.batch_for(prep.image.pixels, prep.boxes)
    return prep


def identify_query(identifier: Identifier, data: bytes, mode: str, box=None) -> dict:
    """Rank the gallery for one photo in ``mode``: the top :data:`CMC_K` identities, no new_whale.

    Returns:
        ``ranked``: ``[[whale_id, score, best_image_id], ...]`` best first (scores as the service
        rounds them); ``pairs``: ``whale_id -> [[[xq, yq], [xg, yg]], ...]`` inlier keypoint pairs in
        photo pixels (``local`` and ``fused``, top :data:`PAIRS_K`); ``boxes`` (TTA boxes),
        ``base_box``, ``image_size``, ``looks_like_fluke``, ``exact_photo``.
    """
    prep = prepare_with_box(identifier, data, box)
    out = np.asarray(identifier.embedder.embed_fn(prep.inputs), dtype=np.float32)
    query, _ = identifier.embeddings_of(prep, out)
    res = identifier.rank(prep, query, CMC_K, mode, float("-inf"), explain=(mode != "embedding"))
    ranked, pairs, exact = [], {}, False
    for p in res["predictions"]:
        if p["whale_id"] == NEW_WHALE:
            continue
        ev = p.get("evidence", {})
        ranked.append([p["whale_id"], p["score"], ev.get("best_image_id")])
        exact = exact or bool(ev.get("exact_photo"))
        if "keypoint_pairs" in ev and len(ranked) <= PAIRS_K:
            pairs[p["whale_id"]] = ev["keypoint_pairs"]
    return {
        "ranked": ranked,
        "pairs": pairs,
        "boxes": res["boxes"],
        "base_box": res["detected_box"],
        "image_size": res["image_size"],
        "looks_like_fluke": res["looks_like_fluke"],
        "exact_photo": exact,
    }


def run_queries(
    identifier: Identifier,
    images: Path,
    queries: Sequence[Query],
    modes: Sequence[str],
    cache_path: Path,
    progress: bool = True,
) -> dict[str, list[dict]]:
    """Every query in every mode through :func:`identify_query`; cached and resumable.

    A photo the gallery already holds for its own whale (same bytes) is skipped, as ``whaleid
    evaluate`` skips it (it would match itself); an unreadable photo is recorded with its error.

    Returns:
        ``mode -> records`` in query order. A record has ``image``, ``truth``, ``mode``,
        ``model_version`` and either the fields of :func:`identify_query`, or ``skipped``
        (``enrolled``), or ``error``.
    """
    version = identifier.manifest.model_version
    done = read_cache(cache_path)
    todo = [(q, m) for m in modes for q in queries if cache_key(q.image, version, m) not in done]
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    total = len(queries) * len(modes)
    bar = tqdm(total=total, initial=total - len(todo), desc="report queries", unit="query", disable=not progress)
    store = identifier.gallery.store
    t0 = time.perf_counter()
    with open(cache_path, "a") as fh:
        for q, mode in todo:
            rec = {"key": cache_key(q.image, version, mode), "image": q.image, "truth": q.truth, "mode": mode}
            rec["model_version"] = version
            try:
                data = (Path(images) / q.image).read_bytes()
                sha = sha256_bytes(data)
                if q.truth != NEW_WHALE and any(w == q.truth for w, _ in store.photos_with_sha256(sha)):
                    rec["skipped"] = "enrolled"
                else:
                    rec.update(identify_query(identifier, data, mode, q.box))
            except (OSError, InputImageError) as exc:
                rec["error"] = getattr(exc, "detail", None) or str(exc)
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
            done[rec["key"]] = rec
            bar.set_postfix_str(mode)
            bar.update(1)
    bar.close()
    if todo:
        log.info("%d queries run in %.0f s", len(todo), time.perf_counter() - t0)
    return {m: [done[cache_key(q.image, version, m)] for q in queries] for m in modes}


def read_submission(path: Path, queries: Iterable[Query]) -> list[dict]:
    """Records of a Kaggle submission (``Image,Id`` with space-separated labels) for the labelled queries.

    A record's ``labels`` are the submitted labels (new_whale included, no scores). Queries absent
    from the submission are recorded with an ``error``.

    Raises:
        ConfigError: an unreadable file or one without the ``Image`` and ``Id`` columns.
    """
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            if not {"Image", "Id"} <= set(reader.fieldnames or ()):
                raise ConfigError(f"submission {path} needs the columns Image,Id (found {reader.fieldnames})")
            labels_of = {r["Image"].strip(): (r["Id"] or "").split() for r in reader}
    except OSError as exc:
        raise ConfigError(f"cannot read submission {path}: {exc.strerror or exc}") from exc
    out = []
    for q in queries:
        rec = {"image": q.image, "truth": q.truth, "mode": "submission"}
        if q.image in labels_of:
            rec["labels"] = labels_of[q.image][:5]
        else:
            rec["error"] = "not in the submission"
        out.append(rec)
    return out
