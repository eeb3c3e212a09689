"""Batch prediction over a folder (Kaggle submission), class balance, and pseudo-labels (torch-free).

``predict`` identifies every photo of a folder exactly as ``POST /identify`` does (the same
:class:`index.identify.Identifier`: decoding, TTA boxes, search, the scoring mode's re-ranking, the
exact-photo rule, new_whale placed by the threshold; the bundle's default scoring mode and its
threshold unless told otherwise), and appends one JSON line per photo to a log that makes the run
resumable: a restarted run skips the photos already in the log with the same scoring mode,
threshold and model version. The submission (``Image,Id`` with five space-separated labels) is
written at the end from the log.

Class balance is the 1st-place trick of Kaggle 2019 Humpback Whale Identification: looking at the
whole batch's top-5 lists, a photo whose first two candidates are close (``score1 - score2 <
margin``), whose second candidate is nobody's top-1, and whose first candidate is already top-1 or
top-2 for many photos (``>= min_claims``) gets its first two swapped.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from core.errors import InputImageError
from core.fileio import atomic_write_text, read_jsonl_by
from index.build import FOLDER_LIMITS
from index.bundle import open_bundle
from index.gallery import Gallery
from index.ranking import NEW_WHALE

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".avif"}
TOP_K = 5  # ranked entries per photo (new_whale included), as Kaggle's submission


@dataclass(frozen=True)
class ClassBalance:
    """Thresholds of the class-balance swap.

    Attributes:
        margin: swap only when ``score1 - score2 < margin`` (0.3 on the 1st place's probabilities;
            our scores are cosine similarities, so pick it on validation).
        min_claims: the first candidate must be top-1 or top-2 for at least this many photos.
    """

    margin: float = 0.3
    min_claims: int = 3


def class_balance(rows: Sequence[Sequence[tuple[str, float]]], rule: ClassBalance) -> tuple[list[list], list[int]]:
    """Apply the class-balance swap to a batch of final top-5 lists (new_whale already placed).

    Only lists whose first two entries are both identities are considered.

    Args:
        rows: each photo's ``(label, score)`` list, best first.
        rule: thresholds.

    Returns:
        The new lists and the indices of the rows that were swapped.
    """
    top1 = Counter(r[0][0] for r in rows if r)
    claims = Counter()
    for r in rows:
        for label, _ in r[:2]:
            claims[label] += 1
    out, swapped = [], []
    for i, r in enumerate(rows):
        r = list(r)
        if len(r) >= 2 and NEW_WHALE not in (r[0][0], r[1][0]):
            (c1, s1), (c2, s2) = r[0], r[1]
            if s1 - s2 < rule.margin and top1[c2] == 0 and claims[c1] >= rule.min_claims:
                r[0], r[1] = r[1], r[0]
                swapped.append(i)
        out.append(r)
    return out, swapped


def list_photos(folder: str | Path) -> list[str]:
    return sorted(p.name for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_log(path: Path) -> dict[str, dict]:
    """Photos already predicted (a truncated last line from a crash is ignored)."""
    return read_jsonl_by(path, "image")


def predict_folder(
    bundle,
    images,
    out_csv,
    log_path=None,
    balance: ClassBalance | None = None,
    threshold: float | None = None,
    labels=None,
    progress: bool = True,
    scoring: str | None = None,
    gallery_dir=None,
) -> dict:
    """``whaleid predict``: identify every photo of a folder; write the submission and the JSON lines log.

    Each photo goes through :meth:`index.identify.Identifier.identify`, the pipeline of
    ``POST /identify`` (its boxes in one network call, as the service runs a lone request), so the
    top-5 lists are the service's.

    Args:
        bundle: bundle folder (its gallery is searched).
        images: folder of photos.
        out_csv: submission path (``Image,Id``).
        log_path: JSON lines log (default: ``out_csv`` with ``.jsonl``); makes the run resumable.
        balance: apply the class-balance swap with these thresholds.
        threshold: new_whale threshold (default: the manifest's for the scoring mode).
        labels: optional labels CSV: only its photos are predicted, and MAP@5 is reported (truth: the
            whale id when it is in the gallery, else new_whale).
        scoring: ``embedding``, ``local`` or ``fused`` (default: the manifest's).
        gallery_dir: gallery folder (default: the bundle's).

    Returns:
        ``scoring``, ``threshold``, ``model_version`` used, and counts: ``photos``, ``predicted_now``,
        ``resumed``, ``unreadable``, ``not_a_fluke``, ``swapped`` (and ``map5``, ``top1`` with ``labels``).

    Raises:
        InvalidRequestError: a scoring mode the bundle lacks, or one without a threshold.
        LabelsError: an unreadable labels file (before any photo is embedded).
    """
    out_csv = Path(out_csv)
    log_path = Path(log_path) if log_path else out_csv.with_suffix(".jsonl")
    names = list_photos(images)
    truth = None
    opened = open_bundle(bundle, gallery_dir)
    manifest, gallery = opened.manifest, opened.gallery
    identifier = None
    try:
        identifier = opened.identifier(FOLDER_LIMITS, scoring)
        mode, thr = identifier.resolve(scoring, threshold)
        used = {"scoring": mode, "threshold": thr, "model_version": manifest.model_version}
        if labels is not None:
            from index.labels import read_labels

            known = set(gallery.whale_ids())
            truth = {img: (w if w in known else NEW_WHALE) for img, w in read_labels(labels)}
            names = [n for n in names if n in truth]
        done = {n: r for n, r in read_log(log_path).items() if all(r.get(key) == v for key, v in used.items())}
        todo = [n for n in names if n not in done]
        log_path.parent.mkdir(parents=True, exist_ok=True)
        bar = tqdm(total=len(names), initial=len(names) - len(todo), desc="predict", unit="photo", disable=not progress)
        with open(log_path, "a") as fh:
            for name in todo:
                try:
                    res = identifier.identify((Path(images) / name).read_bytes(), TOP_K, mode, thr)
                    rec = {
                        "image": name,
                        "predictions": [[p["whale_id"], p["score"]] for p in res["predictions"]],
                        "looks_like_fluke": res["looks_like_fluke"],
                        "boxes": res["boxes"],
                        **used,
                    }
                except (OSError, InputImageError) as exc:
                    rec = {"image": name, "predictions": [], "error": getattr(exc, "detail", str(exc)), **used}
                fh.write(json.dumps(rec) + "\n")
                fh.flush()
                done[name] = rec
                bar.update(1)
            os.fsync(fh.fileno())
        bar.close()
        fallback = _frequent_fill(gallery)
    finally:
        if identifier is not None and identifier.matcher is not None:
            identifier.matcher.close()
        gallery.close()
    finals = [[(w, s) for w, s in done[name]["predictions"]] or [(NEW_WHALE, thr)] for name in names]
    swapped: list[int] = []
    if balance is not None:
        finals, swapped = class_balance(finals, balance)
    lines = ["Image,Id"]
    for name, final in zip(names, finals, strict=True):
        labels = [w for w, _ in final]
        for w in fallback:  # a short list (tiny gallery or unreadable photo) is filled to 5 distinct labels
            if len(labels) >= 5:
                break
            if w not in labels:
                labels.append(w)
        lines.append(f"{name},{' '.join(labels[:5])}")
    atomic_write_text(out_csv, "\n".join(lines) + "\n")
    out = {
        **used,
        "photos": len(names),
        "predicted_now": len(todo),
        "resumed": len(names) - len(todo),
        "unreadable": sum(1 for n in names if done[n].get("error")),
        "not_a_fluke": sum(1 for n in names if done[n].get("looks_like_fluke") is False),
        "swapped": len(swapped),
        "submission": str(out_csv),
        "log": str(log_path),
    }
    if truth is not None and names:
        from training.metrics import map_at_k, top1_accuracy

        preds = [line.split(",", 1)[1].split() for line in lines[1:]]
        truths = [truth[n] for n in names]
        out.update(map5=round(map_at_k(preds, truths), 5), top1=round(top1_accuracy(preds, truths), 5))
    return out


def _frequent_fill(gallery: Gallery) -> list[str]:
    """new_whale then the identities with the most photos: the filler of short lists."""
    rows = gallery.store.list_identities(0, 100000)
    return [NEW_WHALE] + [r.whale_id for r in sorted(rows, key=lambda r: (-r.n_images, r.whale_id))[:5]]


def pseudo_label(
    bundle, images, out_csv, min_confidence: float = 0.96, progress: bool = True, scoring: str | None = None
) -> dict:
    """``whaleid pseudo-label``: confident top-1 identities (never new_whale) as extra training labels.

    Every photo goes through the pipeline of ``POST /identify`` (:class:`index.identify.Identifier`,
    the bundle's scoring mode unless ``scoring`` says otherwise) with ``min_confidence`` as the
    new_whale threshold, so a photo is labelled exactly when the service would rank a whale first
    with at least that score. Photos the gallery already holds (same bytes) and photos that do not
    look like flukes are left out. Writes ``image,whale_id,confidence`` rows; ``whaleid train
    --extra-labels`` takes the file, marks its photos as pseudo-labels, trains on them and never
    scores them.

    Raises:
        InvalidRequestError: a scoring mode the bundle lacks.
    """
    opened = open_bundle(bundle)
    gallery = opened.gallery
    identifier = None
    rows = []
    names = list_photos(images)
    try:
        identifier = opened.identifier(FOLDER_LIMITS, scoring)
        mode, _ = identifier.resolve(scoring, min_confidence)
        for name in tqdm(names, desc="pseudo-label", unit="photo", disable=not progress):
            try:
                res = identifier.identify((Path(images) / name).read_bytes(), 1, mode, min_confidence)
            except (OSError, InputImageError) as exc:
                log.warning("skipping %s: %s", name, getattr(exc, "detail", exc))
                continue
            top = res["predictions"][0]
            if (
                top["whale_id"] != NEW_WHALE
                and res["looks_like_fluke"]
                and not top.get("evidence", {}).get("exact_photo")
            ):
                rows.append((name, top["whale_id"], top["score"]))
    finally:
        if identifier is not None and identifier.matcher is not None:
            identifier.matcher.close()
        gallery.close()
    Path(out_csv).parent.mkdir(parents=True, exist_ok=True)
    with open(out_csv, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "whale_id", "confidence"])
        w.writerows(rows)
    return {
        "photos": len(names),
        "labelled": len(rows),
        "min_confidence": min_confidence,
        "scoring": mode,
        "model_version": opened.manifest.model_version,
        "out": str(out_csv),
    }
