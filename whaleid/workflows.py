"""What the CLI commands do, as plain functions (also used by the quickstart and by tests).

Bundle operations (``build-gallery``, ``calibrate``, ``evaluate BUNDLE``) run on onnxruntime and
never import torch; only ``evaluate RUN_DIR`` does.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np

from core.errors import ConfigError, ManifestError
from core.manifest import Manifest, ThresholdSpec, load_manifest
from index import modes
from index.build import build_gallery as _build_gallery
from index.build import embed_folder
from index.bundle import bundle_embedder, gallery_folder, is_bundle, open_bundle
from index.embedder import PhotoEmbedder
from index.evaluate import evaluate_embedder, evaluate_gallery
from index.gallery import Gallery
from index.labels import read_boxes, read_labels, split_from_json
from index.ranking import DEFAULT_NEW_WHALE_SHARE, NEW_WHALE
from index.study import study_modes

log = logging.getLogger(__name__)


def read_labelled(labels: str | Path, boxes: str | Path | None = None) -> list[tuple[str, str, tuple | None]]:
    """``(image, whale_id, box or None)`` rows from a labels CSV and an optional boxes CSV (torch-free)."""
    box_of = read_boxes(boxes) if boxes else {}
    return [(img, wid, box_of.get(img)) for img, wid in read_labels(labels)]


def build_gallery(
    bundle,
    images,
    labels,
    boxes=None,
    gallery_dir=None,
    reset=False,
    progress=True,
    local_features: bool | None = None,
    embedding_scoring: str | None = None,
    faiss_factory: str | None = None,
    edges: bool | None = None,
) -> dict:
    """``whaleid build-gallery``: enrol labelled photos into the bundle's gallery, then snapshot its index.

    ``local_features`` True turns local-feature matching on in the manifest (SIFT defaults of
    :class:`core.manifest.LocalFeatureSpec`) and stores each photo's features; False turns it off;
    None keeps the manifest's setting; ``edges`` likewise for the trailing edge (``manifest.edge``, the
    ``edge_fused`` mode). ``embedding_scoring`` (``centroid`` or ``image_max``) likewise
    changes how the gallery scores identities, and ``faiss_factory`` (e.g. ``IVF1024,Flat`` for
    100k identities and more, see the README's gallery-scale table) the FAISS index; the index is
    rebuilt from the store, which keeps every embedding.

    Raises:
        ConfigError: an unknown scoring or a factory string FAISS cannot build.
    """
    manifest = load_manifest(bundle)
    changes = {}
    if embedding_scoring is not None and embedding_scoring != manifest.gallery.embedding_scoring:
        changes["embedding_scoring"] = embedding_scoring
    if faiss_factory is not None and faiss_factory != manifest.gallery.factory:
        from index.gallery import INDEX_FILE
        from index.vectors import VectorIndex

        try:
            VectorIndex(manifest.model.embedding_dim, faiss_factory)
        except ValueError as exc:
            raise ConfigError(f"--faiss-factory {faiss_factory!r}: {exc}") from exc
        changes["factory"] = faiss_factory
        # the index file was built with the old factory; the store rebuilds it
        (gallery_folder(bundle, manifest, gallery_dir) / INDEX_FILE).unlink(missing_ok=True)
    if changes:
        manifest = manifest.model_copy(update={"gallery": manifest.gallery.model_copy(update=changes)})
        manifest.save(bundle)
    if local_features is not None and (manifest.local_features is not None) != local_features:
        from core.manifest import LocalFeatureSpec

        manifest = manifest.model_copy(update={"local_features": LocalFeatureSpec() if local_features else None})
        manifest.save(bundle)
    if edges is not None and (manifest.edge is not None) != edges:
        from core.manifest import EdgeSpec

        manifest = manifest.model_copy(update={"edge": EdgeSpec() if edges else None})
        manifest.save(bundle)
    folder = gallery_folder(bundle, manifest, gallery_dir)
    if reset and folder.exists():  # empty it (it may be a mount point: keep the folder itself)
        for child in folder.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    opened = open_bundle(bundle, folder, manifest)
    gallery, embedder = opened.gallery, opened.enrol_embedder
    local = None
    if manifest.local_features is not None:
        from index.local import LocalFeatureExtractor

        local = LocalFeatureExtractor(manifest.local_features).encode_photo
    stats = _build_gallery(
        gallery,
        embedder,
        images,
        read_labelled(labels, boxes),
        flipped=manifest.gallery.include_flipped,
        thumbnails=True,
        local_features=local,
        edges=manifest.edge is not None,
        progress=progress,
    )
    gallery.save()
    stats.update(gallery_identities=len(gallery), gallery_folder=str(folder))
    gallery.close()
    if stats["photos"] == 0 and stats["skipped"] > 0:
        raise ConfigError(
            f"no photo was enrolled: all {stats['skipped']} labelled photos were missing or unreadable "
            f"in {images} (the warnings above name each one)"
        )
    return stats


def _queries_against(gallery: Gallery, embedder: PhotoEmbedder, images, rows, progress=True):
    """Embed labelled query photos; truth = whale id when it is in the gallery, else new_whale.

    Photos already enrolled for their whale (same sha256) are skipped: they would match themselves.
    """
    enrolled = {}
    for wid in gallery.whale_ids():
        enrolled[wid] = {r.sha256 for r in gallery.store.images_of(wid)}
    known = set(enrolled)
    truth_of = {img: (wid if wid in known else NEW_WHALE) for img, wid, _ in rows}
    names, embs, skipped = [], [], 0
    for ep in embed_folder(embedder, images, [(img, box) for img, _, box in rows], desc="queries", progress=progress):
        wid = truth_of[ep.image]
        if wid != NEW_WHALE and ep.sha256 in enrolled.get(wid, set()):
            skipped += 1
            continue
        names.append(ep.image)
        embs.append(ep.embedding.embedding)
    return names, [truth_of[n] for n in names], np.asarray(embs, np.float32).reshape(len(embs), -1), skipped


def calibrate(
    bundle, images, labels, boxes=None, rule="max_map5", share=DEFAULT_NEW_WHALE_SHARE, mode="embedding", **options
) -> dict:
    """``whaleid calibrate``: choose the new_whale threshold of ``mode`` on labelled photos; save it.

    ``options`` are :func:`calibrate_modes`'s (``gallery_dir``, ``progress``, ``shortlist_k``, ``matcher``,
    ``verify_k``), which does several modes at once.
    """
    return calibrate_modes(bundle, images, labels, boxes, rule, share, [mode], **options)[mode]


def calibrate_modes(
    bundle,
    images,
    labels,
    boxes=None,
    rule="max_map5",
    share=DEFAULT_NEW_WHALE_SHARE,
    mode_names=("embedding",),
    gallery_dir=None,
    progress=True,
    shortlist_k: int | None = None,
    matcher: str | None = None,
    verify_k: int | None = None,
) -> dict[str, dict]:
    """:func:`calibrate` for several scoring modes on one pass over the photos: each photo is embedded,
    and its local features extracted and matched, once for all of them (``whaleid quickstart`` calibrates
    ``embedding`` and ``fused`` so). Returns ``mode -> calibrate's result``; each mode's threshold and
    coefficients are saved in the manifest.

    ``shortlist_k`` (``fused`` only) sets the number of embedding-ranked identities that ``fused``
    re-ranks, ``matcher`` and ``verify_k`` (``local``/``fused``) the local matcher; each is saved in
    the manifest with the calibration fitted for it.

    Raises:
        ConfigError: an unknown rule or mode, options a mode cannot take, a mode needing local features
            the bundle lacks, an empty gallery, or no usable photo.
    """
    if rule not in ("max_map5", "new_whale_share"):
        raise ConfigError(f"rule must be max_map5 or new_whale_share, got {rule!r}")
    manifest = load_manifest(bundle)
    chosen = [modes.get(m) for m in dict.fromkeys(mode_names)]
    for scoring in chosen:
        if scoring.needs_local_features and manifest.local_features is None:
            raise ConfigError(
                f"mode {scoring.name!r} needs local features: run `whaleid build-gallery --local-features` first"
            )
    if shortlist_k is not None:
        if shortlist_k < 1 or any(m.name != "fused" for m in chosen):
            raise ConfigError("--shortlist-k is a positive number of identities, for --mode fused only")
        spec = manifest.local_features.model_copy(update={"shortlist_k": shortlist_k})
        manifest = manifest.model_copy(update={"local_features": spec})
    if matcher is not None or verify_k is not None:
        if not all(m.needs_local_features for m in chosen):
            raise ConfigError("--matcher and --verify-k are for modes with local features (local, fused)")
        manifest = _with_matcher(manifest, matcher, verify_k)
    opened = open_bundle(bundle, gallery_dir, manifest)
    gallery, embedder = opened.gallery, opened.embedder
    if len(gallery) == 0:
        gallery.close()
        raise ConfigError("the bundle's gallery is empty: run `whaleid build-gallery` first")
    rows = read_labelled(labels, boxes)
    names, truths, embs, skipped = _queries_against(gallery, embedder, images, rows, progress)
    if not names:
        raise ConfigError("no usable validation photo (all enrolled or unreadable)")
    boxes_of = {img: box for img, _, box in rows}
    study = study_modes(
        manifest,
        gallery,
        embedder,
        images,
        names,
        truths,
        embs,
        boxes_of,
        [m.name for m in chosen],
        share,
        rule,
        progress,
    )
    gallery.close()
    thresholds = dict(manifest.thresholds)
    results: dict[str, dict] = {}
    for scoring in chosen:
        mode = scoring.name
        report, params = study["reports"][mode], study["params"][mode]
        if params is not None:
            manifest = scoring.with_params(manifest, params)
        thresholds[mode] = ThresholdSpec(
            value=report.threshold,
            rule=rule,
            new_whale_share=share if rule == "new_whale_share" else None,
            val_map5=report.map5,
        )
        out = report.as_dict()
        out.update(mode=mode, skipped_enrolled=skipped, saved_threshold=report.threshold)
        if params is not None:
            out["params"] = list(params)
        results[mode] = out
    manifest.model_copy(update={"thresholds": thresholds}).save(bundle)
    return results


def evaluate(
    target, images=None, labels=None, boxes=None, untrained=False, baseline=False, use_threshold=False, progress=True
) -> dict:
    """``whaleid evaluate``: a run through torch, or a bundle through onnxruntime.

    A bundle without ``--labels`` is evaluated on its run's split exactly as training evaluated it
    (validation gallery rebuilt through onnxruntime); with ``--labels`` the photos are queries
    against the bundle's own gallery.
    """
    target = Path(target)
    if not is_bundle(target):
        from training.workflows import evaluate_run

        return evaluate_run(target, untrained=untrained, baseline=baseline, progress=progress)
    manifest = load_manifest(target)
    threshold = manifest.threshold_for() if use_threshold and manifest.thresholds else None
    if labels is None:
        run_dir = Path(manifest.training.get("run_dir", ""))
        split_path = run_dir / "split.json"
        if not split_path.exists():
            raise ManifestError(f"the bundle's run split {split_path} is not available: pass --images and --labels")
        split = split_from_json(json.loads(split_path.read_text()))
        report, _ = evaluate_embedder(
            bundle_embedder(target, manifest),
            images or _run_images(run_dir),
            split,
            flipped=bool(manifest.training.get("flip_identities", False)),
            fixed_threshold=threshold,
            progress=progress,
        )
        return report.as_dict()
    if images is None:
        raise ConfigError("--images is required with --labels")
    opened = open_bundle(target, manifest=manifest)
    gallery, embedder = opened.gallery, opened.embedder
    names, truths, embs, skipped = _queries_against(gallery, embedder, images, read_labelled(labels, boxes), progress)
    report, _ = evaluate_gallery(gallery, embs, truths, fixed_threshold=threshold)
    gallery.close()
    out = report.as_dict()
    out["skipped_enrolled"] = skipped
    return out


def _run_images(run_dir: Path) -> Path:
    import yaml

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    return Path(cfg["data"]["images"])


def detect_boxes(bundle, images, out, progress=True) -> int:
    """``whaleid detect-boxes``: the detector's box for every readable photo of a folder, as a CSV."""
    import csv

    from tqdm import tqdm

    from core.preprocess import load_image_file
    from index.build import FOLDER_LIMITS
    from index.detector import OnnxBoxDetector

    manifest = load_manifest(bundle)
    detector = OnnxBoxDetector.from_bundle(bundle, manifest)
    names = sorted(p.name for p in Path(images).iterdir() if p.is_file())
    n = 0
    with open(out, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "x0", "y0", "x1", "y1"])
        for name in tqdm(names, desc="boxes", unit="photo", disable=not progress):
            try:
                pixels = load_image_file(Path(images) / name, FOLDER_LIMITS).pixels
            except Exception:  # noqa: BLE001 - unreadable files are skipped
                continue
            box = detector.detect([pixels])[0]
            writer.writerow([name, *(round(float(v), 1) for v in box)])
            n += 1
    return n


def split_csv(run_dir, out) -> dict:
    """``whaleid split-csv``: a run's split as ``gallery.csv`` (with boxes in ``gallery_boxes.csv``) and
    ``queries.csv`` (original whale ids: photos of whales held out come out as new_whale queries)."""
    import csv

    split = split_from_json(json.loads((Path(run_dir) / "split.json").read_text()))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    gallery = [p for p in split.train if not p.pseudo]
    queries = [p for p, _ in split.queries()]
    for name, photos in (("gallery", gallery), ("queries", queries)):
        with open(out / f"{name}.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["image", "whale_id"])
            w.writerows((p.image, p.whale_id) for p in photos)
        with open(out / f"{name}_boxes.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["image", "x0", "y0", "x1", "y1"])
            w.writerows((p.image, *p.box) for p in photos if p.box)
    return {"gallery": len(gallery), "queries": len(queries), "folder": str(out)}


def _with_matcher(manifest: Manifest, matcher: str | None, verify_k: int | None) -> Manifest:
    """The manifest with its local matcher (``lnbnn`` or ``brute_force``) and ``verify_k`` overridden."""
    updates = {k: v for k, v in (("matcher", matcher), ("verify_k", verify_k)) if v is not None}
    if not updates:
        return manifest
    if matcher not in (None, "lnbnn", "brute_force") or (verify_k is not None and verify_k < 1):
        raise ConfigError("--matcher is lnbnn or brute_force, and --verify-k a positive number of photos")
    return manifest.model_copy(update={"local_features": manifest.local_features.model_copy(update=updates)})


def compare_modes(
    bundle,
    images,
    labels,
    boxes=None,
    max_queries: int = 0,
    seed: int = 0,
    progress=True,
    fused_ks=(),
    matcher: str | None = None,
    verify_k: int | None = None,
    evidence_out: Path | None = None,
) -> dict:
    """Top-1 and MAP@5 of every scoring mode the bundle can serve, on the same labelled queries (see
    :func:`index.study.study_modes`); ``max_queries`` draws a seeded random subset (``local`` matches every
    gallery photo, about 1 to 2 ms a pair on one core); ``fused_ks`` adds ``fused@K`` rows for other
    shortlist sizes (0 = every identity); ``evidence_out`` writes each query's evidence as one JSON line
    (:func:`index.study.evidence_record`)."""
    manifest = load_manifest(bundle)
    if manifest.local_features is None:
        raise ConfigError("the bundle has no local features: run `whaleid build-gallery --local-features` first")
    manifest = _with_matcher(manifest, matcher, verify_k)
    opened = open_bundle(bundle, manifest=manifest)
    gallery, embedder = opened.gallery, opened.embedder
    rows = read_labelled(labels, boxes)
    if max_queries and len(rows) > max_queries:
        pick = np.random.default_rng(seed).choice(len(rows), max_queries, replace=False)
        rows = [rows[i] for i in sorted(pick)]
    names, truths, embs, skipped = _queries_against(gallery, embedder, images, rows, progress)
    boxes_of = {img: box for img, _, box in rows}
    study = study_modes(
        manifest, gallery, embedder, images, names, truths, embs, boxes_of, progress=progress, fused_ks=fused_ks
    )
    if evidence_out is not None:
        from index.study import evidence_record

        with Path(evidence_out).open("w") as fh:
            for name, truth, ev in zip(names, truths, study["evidence"], strict=True):
                record = evidence_record(name, truth, ev, manifest.local_features.shortlist_k)
                fh.write(json.dumps(record) + "\n")
    gallery.close()
    out = {
        mode: {
            k: v
            for k, v in r.as_dict().items()
            if k
            in (
                "map5",
                "top1",
                "top1_known",
                "top5_known",
                "threshold",
                "queries",
                "queries_known",
                "queries_new_whale",
            )
        }
        for mode, r in study["reports"].items()
    }
    params = study["params"]
    out.update(
        params={m: (list(p) if p is not None else None) for m, p in params.items()},
        calibration=list(params.get("local") or manifest.local_features.calibration),
        fusion=list(params.get("fused") or manifest.local_features.fusion),
        local_ms_per_query=round(1000 * study["seconds_per_query_local"], 1),
        shortlist_k=manifest.local_features.shortlist_k,
        matcher=manifest.local_features.matcher,
        verify_k=manifest.local_features.verify_k,
        skipped_enrolled=skipped,
    )
    return out
