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


def build_gallery(bundle, images, labels, boxes=None, gallery_dir=None, reset=False, progress=True) -> dict:
    """``whaleid build-gallery``: enrol labelled photos into the bundle's gallery, then snapshot its index."""
    manifest = load_manifest(bundle)
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
    bundle, images, labels, boxes=None, rule="max_map5", share=0.276, mode="embedding", gallery_dir=None, progress=True
) -> dict:
    """``whaleid calibrate``: choose the new_whale threshold of ``mode`` on labelled photos; save it."""
    if rule not in ("max_map5", "new_whale_share"):
        raise ConfigError(f"rule must be max_map5 or new_whale_share, got {rule!r}")
    manifest = load_manifest(bundle)
    gallery = Gallery.for_manifest(gallery_folder(bundle, manifest, gallery_dir), manifest)
    if len(gallery) == 0:
        raise ConfigError("the bundle's gallery is empty: run `whaleid build-gallery` first")
    embedder = bundle_embedder(bundle, manifest)
    names, truths, embs, skipped = _queries_against(gallery, embedder, images, read_labelled(labels, boxes), progress)
    if not names:
        raise ConfigError("no usable validation photo (all enrolled or unreadable)")
    if mode == "embedding":
        report, _ = evaluate_gallery(gallery, embs, truths, share, rule)
    else:
        from index.local import rerank_evaluate

        report = rerank_evaluate(bundle, manifest, gallery, embedder, images, names, truths, embs, mode, share, rule)
    thresholds = dict(manifest.thresholds)
    thresholds[mode] = ThresholdSpec(
        value=report.threshold,
        rule=rule,
        new_whale_share=share if rule == "new_whale_share" else None,
        val_map5=report.map5,
    )
    manifest.model_copy(update={"thresholds": thresholds}).save(bundle)
    gallery.close()
    out = report.as_dict()
    out.update(mode=mode, skipped_enrolled=skipped, saved_threshold=report.threshold)
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
