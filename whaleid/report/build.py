"""``whaleid report``: run labelled queries through the identify pipeline and write the evaluation report."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from core.errors import ConfigError
from core.fileio import atomic_write_text
from core.manifest import load_manifest
from index.build import FOLDER_LIMITS
from index.gallery import Gallery
from index.identify import Identifier

from .queries import CACHE_NAME, check_inputs, read_submission, run_queries, select_queries
from .stats import WORST, ModeStats, mode_stats, submission_stats

log = logging.getLogger(__name__)

FIGURE_CAPTIONS = {
    "cmc": "Top-k accuracy (CMC): share of the known-whale queries whose whale is among the first k identities "
    "(k = 1..20; a submission has 5).",
    "map5_threshold": "MAP@5 against the new_whale threshold: left of the curve's peak new whales are called "
    "known, right of it known whales are called new. x: the threshold used; o: the best on these queries.",
    "confusion": "Known vs new at the threshold: the truth in rows, the first answer in columns.",
    "scores": "Scores of the top-1 candidate: genuine (it is the true whale) and impostor (it is not); the dashed "
    "line is the threshold. The less they overlap, the better one threshold separates them.",
}


def build_report(
    bundle,
    images,
    labels,
    boxes=None,
    scoring: Sequence[str] | None = None,
    max_queries: int = 0,
    seed: int = 0,
    out="report",
    submission=None,
    gallery_images=None,
    n_worst: int = 5,
    progress: bool = True,
    command: str | None = None,
) -> dict:
    """Write ``report.html``, ``figures/*.png``, ``summary.json`` (and ``queries.jsonl``, the cache) to ``out``.

    Each query goes through the pipeline of ``POST /identify`` (:mod:`whaleid.report.queries`);
    results are cached per photo, model version and mode, so an interrupted run resumes where it
    stopped. With ``submission``, the lists of that Kaggle submission are scored instead and no
    model is run (the bundle's gallery still decides which whales are known, as ``whaleid
    predict`` does, and gives the strips' photos).

    Args:
        bundle: bundle folder (manifest, model, gallery).
        images: folder of the query photos.
        labels: labels CSV (``Image,Id`` or ``image,whale_id``); truth = the whale when the gallery
            knows it, else new_whale.
        boxes: optional boxes CSV (``image,x0,y0,x1,y1``): the query's base box, in place of the
            detector's (without it: the bundle's detector, or none, as ``POST /identify``).
        scoring: scoring modes (default: the bundle's).
        max_queries: a seeded random subset of this many labelled photos (0: all), drawn as
            ``whaleid compare-modes`` draws it.
        seed: seed of that draw.
        out: report folder.
        submission: a Kaggle submission CSV (``Image,Id``, five space-separated labels) to review.
        gallery_images: folder of the gallery photos for the strips (default: ``images``).
        n_worst: strips per worst-case category and mode.
        progress: show a progress bar.
        command: the command line, shown in the settings.

    Returns:
        The summary (also ``summary.json``): ``settings``, ``modes`` (one summary per mode),
        ``html`` and ``figures`` paths.

    Raises:
        ConfigError: a missing input, a mode the bundle lacks, no readable labelled photo.
    """
    t_start = time.perf_counter()
    bundle, images, out = Path(bundle), Path(images), Path(out)
    check_inputs(bundle, images, labels, boxes, submission)
    from whaleid.workflows import bundle_embedder, gallery_folder, read_labelled

    manifest = load_manifest(bundle)
    rows = read_labelled(labels, boxes)
    if not rows:
        raise ConfigError(f"the labels CSV {labels} has no labelled photo")
    gallery = Gallery.for_manifest(gallery_folder(bundle, manifest), manifest)
    identifier = None
    try:
        if len(gallery) == 0:
            raise ConfigError("the bundle's gallery is empty: run `whaleid build-gallery` first")
        queries = select_queries(rows, set(gallery.whale_ids()), max_queries, seed)
        missing = [q.image for q in queries if not (images / q.image).is_file()]
        if len(missing) == len(queries):
            raise ConfigError(f"none of the labelled photos is in {images} (e.g. {missing[0]})")
        if missing:
            log.warning("%d labelled photos are not in %s (e.g. %s)", len(missing), images, missing[0])
        if submission is not None:
            modes = ["submission"]
            stats = [submission_stats(read_submission(Path(submission), queries), n_worst)]
        else:
            modes = list(dict.fromkeys(scoring or [manifest.scoring]))
            identifier = Identifier.for_bundle(manifest, gallery, bundle_embedder(bundle, manifest), FOLDER_LIMITS)
            lacking = [m for m in modes if m not in identifier.available_modes()]
            if lacking:
                raise ConfigError(
                    f"scoring mode(s) {lacking} not available in this bundle (available: "
                    f"{identifier.available_modes()})"
                )
            records = run_queries(identifier, images, queries, modes, out / CACHE_NAME, progress)
            stats = []
            for m in modes:
                spec = manifest.thresholds.get(m)
                stats.append(mode_stats(records[m], m, spec.value if spec else None, n_worst))
        settings = _settings(bundle, manifest, gallery, images, labels, boxes, submission, stats, max_queries, seed)
        if command:
            settings["command"] = command
        figures = _figures(stats, out / "figures")
        strips = _strips(stats, images, gallery, gallery_images, progress)
    finally:
        if identifier is not None and identifier.matcher is not None:
            identifier.matcher.close()
        gallery.close()
    from .html import render

    settings["report built in"] = f"{time.perf_counter() - t_start:.0f} s"
    html_path = out / "report.html"
    atomic_write_text(html_path, render(settings, stats, figures, strips))
    summary = {
        "settings": {k: v for k, v in settings.items()},
        "modes": {s.mode: s.summary() for s in stats},
        "html": str(html_path),
        "figures": {k: str(out / "figures" / f"{k}.png") for k in figures},
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _settings(bundle, manifest, gallery, images, labels, boxes, submission, stats, max_queries, seed) -> dict:
    from whaleid import __version__

    first = stats[0].counts
    out = {
        "model version": manifest.model_version,
        "bundle": str(Path(bundle).resolve()),
        "bundle created": manifest.created_at,
        "gallery": f"{len(gallery)} identities, {gallery.store.count_images()} photos",
        "scoring modes": ", ".join(s.mode for s in stats),
        "new_whale threshold": "; ".join(
            f"{s.mode}: {'-' if s.threshold is None else f'{s.threshold:.4f}'} ({s.threshold_source})" for s in stats
        ),
        "labels": str(labels),
        "boxes": str(boxes) if boxes else "none (the bundle's detector or the full frame, as POST /identify)",
        "images": str(images),
        "submission": str(submission) if submission else "none (queries run through the identify pipeline)",
        "queries": (
            f"{first['queries']} labelled photos"
            + (f" (a random {max_queries}, seed {seed})" if max_queries else "")
            + f": {first['scored']} scored ({first['known']} known whales, {first['new']} new), "
            f"{first['skipped_enrolled']} skipped (already in the gallery), {first['unreadable']} unreadable"
        ),
        "generated": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "whaleid": __version__,
    }
    return out


def _figures(stats: list[ModeStats], folder: Path) -> dict[str, tuple[str, bytes]]:
    """Draw the figures, save each as ``folder/KEY.png``; ``key -> (caption, PNG bytes)``."""
    from . import figures as f

    made = {"cmc": f.cmc_figure(stats)}
    if any(s.curve_thresholds is not None for s in stats):
        made["map5_threshold"] = f.threshold_figure(stats)
    made["confusion"] = f.confusion_figure(stats)
    if any(s.genuine is not None for s in stats):
        made["scores"] = f.score_figure(stats)
    folder.mkdir(parents=True, exist_ok=True)
    for key, data in made.items():
        (folder / f"{key}.png").write_bytes(data)
    return {k: (FIGURE_CAPTIONS[k], v) for k, v in made.items()}


def _strips(stats: list[ModeStats], images: Path, gallery: Gallery, gallery_images, progress: bool) -> dict:
    """``mode -> category -> [(caption, PNG bytes)]`` for the worst cases (caption: the image name, and
    whether keypoint matches are drawn)."""
    from tqdm import tqdm

    from .strips import PhotoSource, strip_figure

    photos = PhotoSource(images, gallery.store, gallery_images)
    todo = [(s, c, r) for s in stats for c in WORST for r in s.worst.get(c, [])]
    out: dict = {s.mode: {c: [] for c in WORST} for s in stats}
    for s, c, rec in tqdm(todo, desc="report strips", unit="strip", disable=not progress):
        data, n_matches = strip_figure(rec, photos, s.threshold)
        out[s.mode][c].append((rec["image"] + (" with keypoint matches" if n_matches else ""), data))
    return out
