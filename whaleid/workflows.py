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
from core.manifest import MANIFEST_NAME, Manifest, ThresholdSpec, load_manifest
from index.build import build_gallery as _build_gallery
from index.build import embed_folder
from index.embedder import PhotoEmbedder, load_embedder_model
from index.evaluate import evaluate_embedder, evaluate_gallery
from index.gallery import Gallery
from index.labels import read_boxes, read_labels, split_from_json
from index.ranking import NEW_WHALE

log = logging.getLogger(__name__)


def is_bundle(path: str | Path) -> bool:
    return (Path(path) / MANIFEST_NAME).is_file()


def gallery_folder(bundle: str | Path, manifest: Manifest, gallery_dir: str | Path | None = None) -> Path:
    return Path(gallery_dir) if gallery_dir else Path(bundle) / manifest.gallery.folder


def bundle_embedder(bundle: str | Path, manifest: Manifest, providers=None) -> PhotoEmbedder:
    """The bundle's :class:`PhotoEmbedder` on onnxruntime (with its detector, when it has one)."""
    model = load_embedder_model(bundle, manifest, providers)
    detector = None
    if manifest.detector is not None:
        from index.detector import OnnxBoxDetector

        detector = OnnxBoxDetector.from_bundle(bundle, manifest, providers)
    return PhotoEmbedder(model, manifest.preprocess, manifest.tta, detector)


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
) -> dict:
    """``whaleid build-gallery``: enrol labelled photos into the bundle's gallery, then snapshot its index.

    ``local_features`` True turns local-feature matching on in the manifest (SIFT defaults of
    :class:`core.manifest.LocalFeatureSpec`) and stores each photo's features; False turns it off;
    None keeps the manifest's setting. ``embedding_scoring`` (``centroid`` or ``image_max``) likewise
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
    folder = gallery_folder(bundle, manifest, gallery_dir)
    if reset and folder.exists():  # empty it (it may be a mount point: keep the folder itself)
        for child in folder.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    gallery = Gallery.for_manifest(folder, manifest)
    embedder = bundle_embedder(bundle, manifest)
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
    bundle,
    images,
    labels,
    boxes=None,
    rule="max_map5",
    share=0.276,
    mode="embedding",
    gallery_dir=None,
    progress=True,
    shortlist_k: int | None = None,
    matcher: str | None = None,
    verify_k: int | None = None,
) -> dict:
    """``whaleid calibrate``: choose the new_whale threshold of ``mode`` on labelled photos; save it.

    ``shortlist_k`` (``fused`` only) sets the number of embedding-ranked identities that ``fused``
    re-ranks, ``matcher`` and ``verify_k`` (``local``/``fused``) the local matcher; each is saved in
    the manifest with the calibration fitted for it.
    """
    if rule not in ("max_map5", "new_whale_share"):
        raise ConfigError(f"rule must be max_map5 or new_whale_share, got {rule!r}")
    manifest = load_manifest(bundle)
    if mode != "embedding" and manifest.local_features is None:
        raise ConfigError(f"mode {mode!r} needs local features: run `whaleid build-gallery --local-features` first")
    if shortlist_k is not None:
        if mode != "fused" or shortlist_k < 1:
            raise ConfigError("--shortlist-k is a positive number of identities, for --mode fused only")
        spec = manifest.local_features.model_copy(update={"shortlist_k": shortlist_k})
        manifest = manifest.model_copy(update={"local_features": spec})
    if matcher is not None or verify_k is not None:
        if mode == "embedding":
            raise ConfigError("--matcher and --verify-k are for --mode local or fused")
        manifest = _with_matcher(manifest, matcher, verify_k)
    gallery = Gallery.for_manifest(gallery_folder(bundle, manifest, gallery_dir), manifest)
    if len(gallery) == 0:
        raise ConfigError("the bundle's gallery is empty: run `whaleid build-gallery` first")
    embedder = bundle_embedder(bundle, manifest)
    names, truths, embs, skipped = _queries_against(gallery, embedder, images, read_labelled(labels, boxes), progress)
    if not names:
        raise ConfigError("no usable validation photo (all enrolled or unreadable)")
    updates: dict = {}
    if mode == "embedding":
        report, _ = evaluate_gallery(gallery, embs, truths, share, rule)
    else:
        boxes_of = {img: box for img, _, box in read_labelled(labels, boxes)}
        study = local_study(
            bundle, manifest, gallery, embedder, images, names, truths, embs, boxes_of, modes=(mode,), progress=progress
        )
        report = study["reports"][mode]
        spec = manifest.local_features.model_copy(
            update={"calibration": study["calibration"], "fusion": study["fusion"]}
        )
        updates["local_features"] = spec
    thresholds = dict(manifest.thresholds)
    thresholds[mode] = ThresholdSpec(
        value=report.threshold,
        rule=rule,
        new_whale_share=share if rule == "new_whale_share" else None,
        val_map5=report.map5,
    )
    manifest.model_copy(update={"thresholds": thresholds, **updates}).save(bundle)
    gallery.close()
    out = report.as_dict()
    out.update(mode=mode, skipped_enrolled=skipped, saved_threshold=report.threshold)
    if mode != "embedding":
        out.update(calibration=list(study["calibration"]), fusion=list(study["fusion"]))
    return out


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
    gallery = Gallery.for_manifest(gallery_folder(target, manifest), manifest)
    embedder = bundle_embedder(target, manifest)
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


def local_study(
    bundle,
    manifest: Manifest,
    gallery: Gallery,
    embedder: PhotoEmbedder,
    images,
    names,
    truths,
    embs,
    boxes_of=None,
    modes=("embedding", "local", "fused"),
    new_whale_share=0.276,
    progress=True,
    fused_ks=(),
) -> dict:
    """Rank the same queries in the ``embedding``, ``local`` and ``fused`` modes and calibrate the latter two.

    With the LNBNN matcher (``spec.matcher == "lnbnn"``, the default) each query's candidates are
    the identities of its ``verify_k`` best-voted gallery photos, verified by RANSAC
    (:meth:`index.local.LocalMatcher.lnbnn_candidates`), joined in ``fused`` by the embedding's
    ``shortlist_k`` identities, as the service ranks them. With the brute-force matcher each query
    is matched against every stored photo of every identity when ``local`` is asked for, else
    against its embedding shortlist. The local and fused logistic calibrations (with the LNBNN score
    as a feature under LNBNN) are fitted on genuine/impostor pairs with **2-fold cross-fitting**
    (each half of the queries is scored with coefficients fitted on the other half); each mode's
    new_whale threshold is then chosen by the ``max_map5`` rule on all queries.

    Args:
        names, truths: query photos and their truths (whale id, or new_whale).
        embs: ``(q, d) float32`` their embeddings.
        boxes_of: ``image -> box`` to use as the base box (else the detector's, else the full frame).
        fused_ks: further shortlist sizes to score ``fused`` with (reports ``fused@K``; 0 = every
            identity), all from the same matches. The fusion is always fitted on the pairs of the
            manifest's ``shortlist_k``.

    Returns:
        ``reports`` (mode -> EvalReport), ``calibration`` and ``fusion`` fitted on all queries,
        ``seconds_per_query_local`` (added local time per query), ``pairs``.
    """
    import time

    from tqdm import tqdm

    from core.preprocess import load_image_file
    from index.build import FOLDER_LIMITS
    from index.evaluate import evaluate_rankings
    from index.gallery import Hit
    from index.local import LocalFeatureExtractor, LocalMatcher, calibrate_from_pairs, fused_scores, local_scores

    spec = manifest.local_features
    lnbnn_mode = spec.matcher == "lnbnn"
    extractor = LocalFeatureExtractor(spec)
    matcher = LocalMatcher(gallery, spec)
    if lnbnn_mode:
        matcher.descriptors.sync(progress=progress)  # build the descriptor index before timing queries
    answerable = {i: n for i, (n, flipped) in gallery.store.identity_names().items() if not flipped}
    ks = {k: (k if k > 0 else len(answerable)) for k in fused_ks}
    widest = max([spec.shortlist_k, *ks.values()])
    ranking = gallery.search(embs, widest)  # the embedding ranking, as far as any fused shortlist reaches
    shortlists = [r[: spec.shortlist_k] for r in ranking]
    need_all = not lnbnn_mode and ("local" in modes or widest >= len(answerable))
    # per query: identity -> (cosine, inliers, image id, lnbnn score, verified)
    per_query: list[dict[int, tuple[float, int, int | None, float, bool]]] = []
    t_local = 0.0
    for i, name in enumerate(tqdm(names, desc="local features", unit="photo", disable=not progress)):
        pixels = load_image_file(Path(images) / name, FOLDER_LIMITS).pixels
        box = (boxes_of or {}).get(name)
        if box is None and embedder.detector is not None:
            box = embedder.detector.detect([pixels])[0]
        t0 = time.perf_counter()
        feats = extractor.extract(pixels, box)
        if lnbnn_mode:
            lnbnn, matches = matcher.lnbnn_candidates(feats)
            ids = list(dict.fromkeys([*matches, *(h.identity_id for h in ranking[i])]))
        else:
            lnbnn = {}
            ids = list(answerable) if need_all else [h.identity_id for h in ranking[i]]
            matches = matcher.score_identities(feats, ids)
        t_local += time.perf_counter() - t0
        cos = {h.identity_id: h.score for h in ranking[i]}
        missing = [ident for ident in ids if ident not in cos]
        if missing:
            cos.update(gallery.similarities(embs[i], missing))
        rows = {}
        for ident in ids:
            if ident not in answerable:
                continue
            m = matches.get(ident)
            rows[ident] = (
                cos.get(ident, 0.0),
                m.inliers if m else 0,
                m.image_id if m else None,
                float(lnbnn.get(ident, 0.0)),
                m is not None,
            )
        per_query.append(rows)

    def candidates(i: int, mode: str, k_short: int) -> list[int]:
        """The identities a mode ranks for query ``i`` (as the service would)."""
        rows = per_query[i]
        if mode == "local":
            return [ident for ident, r in rows.items() if r[4] or not lnbnn_mode]
        short = [h.identity_id for h in ranking[i][:k_short]]
        verified = [ident for ident, r in rows.items() if r[4]] if lnbnn_mode else []
        return [ident for ident in dict.fromkeys([*short, *verified]) if ident in rows]

    def pairs(idx, mode: str):
        inl, same, cos, lb = [], [], [], []
        for i in idx:
            for ident in candidates(i, mode, spec.shortlist_k):
                c, n, _, v, _ = per_query[i][ident]
                inl.append(n)
                cos.append(c)
                lb.append(v)
                same.append(answerable[ident] == truths[i])
        return inl, same, cos, (lb if lnbnn_mode else None)

    def fit(idx, mode: str):
        inl, same, cos, lb = pairs(idx, mode)
        if not 0 < sum(same) < len(same):
            return None
        return calibrate_from_pairs(inl, same, cos, lnbnn=lb, lnbnn_weight=spec.lnbnn_weight)

    order = np.random.default_rng(0).permutation(len(names))
    folds = [order[: len(order) // 2], order[len(order) // 2 :]]
    fold_of = {int(q): f for f, idx in enumerate(folds) for q in idx}
    coef = {m: {f: fit(folds[1 - f], m) for f in (0, 1)} for m in ("local", "fused")}
    full = {m: fit(range(len(names)), m) for m in ("local", "fused")}
    reports = {}
    runs = [(m, spec.shortlist_k) for m in modes] + [(f"fused@{k or 'all'}", n) for k, n in ks.items()]
    for mode, k_short in runs:
        kind = "fused" if mode.startswith("fused") else mode
        hits = []
        for i in range(len(names)):
            if kind == "embedding":
                hits.append(shortlists[i][:10])
                continue
            c = coef[kind][fold_of[i]] or full[kind]
            calibration = c.calibration if c else spec.calibration
            fusion = (c.fusion if c else None) or spec.fusion
            ids = candidates(i, kind, k_short)
            rows = [(ident, *per_query[i][ident]) for ident in ids]
            if kind == "fused":
                scores = fused_scores([r[1] for r in rows], [r[2] for r in rows], fusion, [r[4] for r in rows])
            else:
                scores = local_scores([r[2] for r in rows], calibration, [r[4] for r in rows])
            ranked = sorted(
                zip(rows, scores, strict=True),
                key=lambda t: (-round(float(t[1]), 6), -t[0][2], -round(t[0][4], 6), answerable[t[0][0]]),
            )[:10]
            hits.append([Hit(answerable[r[0]], float(sc), r[0]) for r, sc in ranked])
        reports[mode], _ = evaluate_rankings(hits, truths, len(gallery), new_whale_share, "max_map5")
    fitted = full["fused" if "fused" in modes else "local"]
    return {
        "reports": reports,
        "calibration": full["local"].calibration if full["local"] else spec.calibration,
        "fusion": full["fused"].fusion if full["fused"] and full["fused"].fusion else spec.fusion,
        "seconds_per_query_local": t_local / max(len(names), 1),
        "pairs": fitted.pairs if fitted else 0,
        "matcher": spec.matcher,
    }


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
) -> dict:
    """Top-1 and MAP@5 of ``embedding``, ``local`` and ``fused`` on the same labelled queries (see
    :func:`local_study`); ``max_queries`` draws a seeded random subset (``local`` matches every
    gallery photo, about 1 to 2 ms a pair on one core); ``fused_ks`` adds ``fused@K`` rows for other
    shortlist sizes (0 = every identity)."""
    manifest = load_manifest(bundle)
    if manifest.local_features is None:
        raise ConfigError("the bundle has no local features: run `whaleid build-gallery --local-features` first")
    manifest = _with_matcher(manifest, matcher, verify_k)
    gallery = Gallery.for_manifest(gallery_folder(bundle, manifest), manifest)
    embedder = bundle_embedder(bundle, manifest)
    rows = read_labelled(labels, boxes)
    if max_queries and len(rows) > max_queries:
        pick = np.random.default_rng(seed).choice(len(rows), max_queries, replace=False)
        rows = [rows[i] for i in sorted(pick)]
    names, truths, embs, skipped = _queries_against(gallery, embedder, images, rows, progress)
    boxes_of = {img: box for img, _, box in rows}
    study = local_study(
        bundle, manifest, gallery, embedder, images, names, truths, embs, boxes_of, progress=progress, fused_ks=fused_ks
    )
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
    out.update(
        calibration=list(study["calibration"]),
        fusion=list(study["fusion"]),
        local_ms_per_query=round(1000 * study["seconds_per_query_local"], 1),
        shortlist_k=manifest.local_features.shortlist_k,
        matcher=manifest.local_features.matcher,
        verify_k=manifest.local_features.verify_k,
        skipped_enrolled=skipped,
    )
    return out
