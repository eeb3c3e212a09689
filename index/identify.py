"""The identify pipeline of one photo, shared by ``POST /identify`` and ``whaleid predict`` (torch-free).

photo bytes → decode (EXIF, RGB, limits) → base box (detector, or none) → TTA boxes → crops →
network → centre of the box embeddings → gallery search → the scoring mode's ranking
(``embedding``; ``local`` or ``fused`` re-ranking by SIFT + RANSAC) → exact-photo rule → new_whale
placed by the threshold → the not-a-fluke check.

:class:`Identifier` holds the steps; the caller runs the network between :meth:`Identifier.prepare`
and :meth:`Identifier.rank`: the service through its micro-batcher (in an event loop), ``predict``
directly (:meth:`Identifier.identify`). Both therefore rank exactly alike: same decoding, same
boxes, same search, same re-ranking, same rounding.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from core.errors import ConfigError, InvalidRequestError
from core.fileio import sha256_bytes
from core.manifest import Manifest
from core.preprocess import DecodedImage, DecodeLimits, decode_image
from index import modes
from index.embedder import PhotoEmbedder, aggregate_tta
from index.fluke_check import FlukeChecker
from index.metadata import PhotoMetadata, SearchScope, metadata_from_exif
from index.ranking import NEW_WHALE, insert_new_whale

if TYPE_CHECKING:  # index.gallery imports faiss
    from index.gallery import Gallery
    from index.local import LocalFeatureExtractor, LocalMatcher

#: Decimals of the scores and similarities in a response.
SCORE_DECIMALS = 5


@dataclass
class PreparedPhoto:
    """A decoded photo and its model inputs.

    Attributes:
        image: the upright RGB photo.
        sha256: hex checksum of the uploaded bytes (the exact-photo rule).
        base_box: ``(4,) float32`` detector box in pixels, or None.
        boxes: ``(n_boxes, 4) float32`` TTA boxes in pixels.
        inputs: ``(n_boxes, 3, H, W) float32`` network inputs (then the mirror's when asked for).
        timings_ms: milliseconds per stage so far (``decode``, ``boxes``; the caller adds ``embed``).
        metadata: when and where (:class:`index.metadata.PhotoMetadata` fields) from the caller, completed
            by the photo's EXIF.
    """

    image: DecodedImage
    sha256: str
    base_box: np.ndarray | None
    boxes: np.ndarray
    inputs: np.ndarray
    timings_ms: dict[str, float] = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)


class Identifier:
    """A loaded bundle's identify pipeline (thread-safe: searches share the gallery's read lock).

    Args:
        manifest: the bundle's manifest.
        gallery: its gallery.
        embedder: the bundle's :class:`PhotoEmbedder` (its ``embed_fn`` is used by :meth:`identify` only).
        limits: byte and pixel limits of a photo.
        scoring: default scoring mode (default: the manifest's).
        local: SIFT extractor and matcher, when the bundle has local features.
    """

    def __init__(
        self,
        manifest: Manifest,
        gallery: Gallery,
        embedder: PhotoEmbedder,
        limits: DecodeLimits,
        scoring: str | None = None,
        local: tuple[LocalFeatureExtractor, LocalMatcher] | None = None,
    ):
        self.manifest = manifest
        self.gallery = gallery
        self.embedder = embedder
        self.enrol_embedder = embedder.for_enrolment(manifest.gallery.enrol_boxes)
        self.detector = embedder.detector
        self.limits = limits
        self.scoring: str = scoring or manifest.scoring
        self.local, self.matcher = local if local is not None else (None, None)
        self.fluke_checker = FlukeChecker(gallery)
        if self.scoring not in self.available_modes():
            raise ConfigError(
                f"scoring mode {self.scoring!r} is not available with this bundle "
                f"(available: {', '.join(self.available_modes())}; registered: {', '.join(modes.names())})"
            )

    @classmethod
    def for_bundle(
        cls, manifest: Manifest, gallery: Gallery, embedder: PhotoEmbedder, limits: DecodeLimits, scoring=None
    ) -> Identifier:
        """An identifier with the bundle's local matcher when its manifest has local features."""
        local = None
        if manifest.local_features is not None:
            from index.local import LocalFeatureExtractor, LocalMatcher

            local = (LocalFeatureExtractor(manifest.local_features), LocalMatcher(gallery, manifest.local_features))
        return cls(manifest, gallery, embedder, limits, scoring, local)

    def available_modes(self) -> list[str]:
        """The registered scoring modes this bundle can serve (:func:`index.modes.available`)."""
        return (
            modes.available(self.manifest)
            if self.matcher is not None
            else [m for m in modes.available(self.manifest) if not modes.get(m).needs_local_features]
        )

    def resolve(self, scoring: str | None = None, threshold: float | None = None) -> tuple[str, float]:
        """The scoring mode and new_whale threshold of a request (defaults: the identifier's mode, its threshold).

        Raises:
            InvalidRequestError: a mode the bundle lacks, or one without a calibrated threshold (and
                no ``threshold`` given).
        """
        mode: str = scoring or self.scoring
        if mode not in self.available_modes():
            raise InvalidRequestError(
                f"scoring mode {mode!r} is not available in this bundle (available: {self.available_modes()})"
            )
        if threshold is None and mode not in self.manifest.thresholds:
            raise InvalidRequestError(
                f"no new_whale threshold is calibrated for scoring mode {mode!r}: pass threshold= or run "
                "`whaleid calibrate`"
            )
        return mode, (float(threshold) if threshold is not None else self.manifest.threshold_for(mode))

    def prepare(
        self, data: bytes, flipped: bool = False, metadata: PhotoMetadata | None = None, enrol: bool = False
    ) -> PreparedPhoto:
        """Decode a photo and build its network inputs.

        Args:
            data: the photo's bytes.
            flipped: also build the mirror image's inputs (enrolment with mirrored identities).
            metadata: what the caller says of the photo (over what its EXIF says, field by field).
            enrol: the photo is to be enrolled: only the manifest's ``gallery.enrol_boxes`` first TTA
                boxes (a query gets every box).

        Raises:
            InputImageError subclasses: empty, too large, unsupported, undecodable.
        """
        t0 = time.perf_counter()
        image = decode_image(data, self.limits)
        t1 = time.perf_counter()
        base = None
        if self.detector is not None and self.manifest.tta.base == "detector":
            base = self.detector.detect([image.pixels])[0]
        embedder = self.enrol_embedder if enrol else self.embedder
        boxes = embedder.boxes_for(image.pixels, base)
        inputs = embedder.batch_for(image.pixels, boxes, flipped)
        t2 = time.perf_counter()
        meta = (metadata or PhotoMetadata()).merged_over(metadata_from_exif(data)).as_dict()
        return PreparedPhoto(
            image,
            sha256_bytes(data),
            base,
            boxes,
            inputs,
            {"decode": (t1 - t0) * 1e3, "boxes": (t2 - t1) * 1e3},
            meta,
        )

    @staticmethod
    def embeddings_of(prep: PreparedPhoto, out: np.ndarray, flipped: bool = False):
        """The photo's ``(d,) float32`` embedding from the network's ``(n, d)`` output for its inputs
        (and the mirror's, or None)."""
        n = len(prep.boxes)
        return aggregate_tta(out[:n]), (aggregate_tta(out[n:]) if flipped else None)

    def rank(
        self,
        prep: PreparedPhoto,
        query: np.ndarray,
        k: int = 5,
        scoring: str | None = None,
        threshold: float | None = None,
        explain: bool = False,
        scope: SearchScope | None = None,
    ) -> dict:
        """Rank the gallery for an embedded photo: the body of an identify response.

        Args:
            prep: the prepared photo.
            query: ``(d,) float32`` its embedding, L2-normalised.
            k: ranked entries returned (new_whale included).
            scoring, threshold: as :meth:`resolve`.
            explain: attach the keypoint pairs (``local`` and ``fused``).
            scope: answer only whales with a photo inside it (place, area, dates); the response's
                ``scope`` says what was applied and how many whales it left.

        Returns:
            ``predictions`` (``rank``, ``whale_id``, ``score``, ``evidence``), ``boxes``,
            ``detected_box``, ``image_size``, ``exif_rotated``, ``threshold``, ``scoring``,
            ``model_version``, ``looks_like_fluke``, ``fluke_check``, ``timing_ms`` (without ``total``).

        Raises:
            InvalidRequestError: see :meth:`resolve`.
        """
        mode, thr = self.resolve(scoring, threshold)
        spec = modes.get(mode)
        t0 = time.perf_counter()
        names = None
        if scope is not None and not scope.is_empty():
            names = self.gallery.in_scope(scope)
            hits = self.gallery.ranking_within(query, names, spec.embedding_k(self.manifest, k))
        else:
            [hits] = self.gallery.search(query, spec.embedding_k(self.manifest, k))
        prep.timings_ms["search"] = (time.perf_counter() - t0) * 1e3
        match_scope = spec.match_scope(self.manifest)
        features = None
        t1 = time.perf_counter()
        if match_scope != "none" and self.matcher is not None:
            features = self.local.extract(prep.image.pixels, prep.base_box)
        extras = spec.query_extras(self.manifest, prep.image.pixels, prep.base_box)
        ev = modes.gather(self.gallery, hits, query, self.matcher, features, match_scope, names, extras)
        entries = modes.rank(spec, ev, self.manifest, k, explain)
        if features is not None or extras:
            prep.timings_ms["local"] = (time.perf_counter() - t1) * 1e3
        ranked = [(e.whale_id, e.score) for e in entries]
        evidence = self._evidence(entries, query, explain)
        exact = self.gallery.store.photos_with_sha256(prep.sha256)
        if names is not None:  # the exact-photo rule answers in-scope whales only
            allowed = set(names.values())
            exact = [(w, i) for w, i in exact if w in allowed]
        if exact:
            # The photo itself is in the gallery: its whale is certain, whatever the model says.
            exact_ids = {w for w, _ in exact}
            for wid, image_id in exact:
                evidence.setdefault(wid, {}).update(exact_photo=True, best_image_id=image_id)
            ranked = [(w, 1.0) for w in dict.fromkeys(w for w, _ in exact)] + [
                (w, s) for w, s in ranked if w not in exact_ids
            ]
            ranked = ranked[:k]
        final = insert_new_whale(ranked, thr, k)
        predictions = []
        for rank, (wid, score) in enumerate(final, start=1):
            item = {"rank": rank, "whale_id": wid, "score": round(float(score), SCORE_DECIMALS)}
            if wid != NEW_WHALE and wid in evidence:
                item["evidence"] = evidence[wid]
            predictions.append(item)
        check = self.fluke_checker.check(prep.image.pixels, hits, bool(exact))
        extra = {}
        if names is not None:
            extra["scope"] = {"applied": scope.as_dict(), "whales_in_scope": len(names)}
        if prep.metadata:
            extra["photo_metadata"] = prep.metadata
        extra.update(spec.response_extras(ev, explain))
        return extra | {
            "predictions": predictions,
            "boxes": [[round(float(v), 1) for v in b] for b in prep.boxes],
            "detected_box": None if prep.base_box is None else [round(float(v), 1) for v in prep.base_box],
            "image_size": [prep.image.width, prep.image.height],
            "exif_rotated": prep.image.exif_transposed,
            "threshold": thr,
            "scoring": mode,
            "model_version": self.manifest.model_version,
            "looks_like_fluke": check.looks_like_fluke,
            "fluke_check": check.as_dict(),
            "timing_ms": dict(prep.timings_ms),
        }

    def identify(
        self,
        data: bytes,
        k: int = 5,
        scoring: str | None = None,
        threshold: float | None = None,
        explain: bool = False,
        scope: SearchScope | None = None,
        metadata: PhotoMetadata | None = None,
    ) -> dict:
        """Identify one photo synchronously (the network is ``embedder.embed_fn``, one call for its boxes).

        Raises:
            InputImageError subclasses for bad photos; InvalidRequestError (see :meth:`resolve`).
        """
        self.resolve(scoring, threshold)  # a bad request fails before any work
        t_start = time.perf_counter()
        prep = self.prepare(data, metadata=metadata)
        t0 = time.perf_counter()
        out = np.asarray(self.embedder.embed_fn(prep.inputs), dtype=np.float32)
        prep.timings_ms["embed"] = (time.perf_counter() - t0) * 1e3
        query, _ = self.embeddings_of(prep, out)
        res = self.rank(prep, query, k, scoring, threshold, explain, scope)
        res["timing_ms"]["total"] = (time.perf_counter() - t_start) * 1e3
        return res

    def best_images(self, hits, query: np.ndarray) -> dict[str, tuple[int, float]]:
        """For each hit (anything with ``whale_id`` and ``identity_id``), its gallery photo most similar to
        the query: ``whale_id -> (image_id, cosine)``."""
        out = {}
        for h in hits:
            ids, embs = self.gallery.store.embeddings_with_ids(h.identity_id)
            if len(ids):
                sims = embs @ query
                j = int(np.argmax(sims))
                out[h.whale_id] = (int(ids[j]), float(sims[j]))
        return out

    def _evidence(self, entries: list[modes.RankedIdentity], query: np.ndarray, explain: bool) -> dict[str, dict]:
        """``whale_id -> evidence`` of a ranking: the fields each mode measured (rounded), the best gallery
        photo (by inliers, else by cosine with ``query``, the ``(d,)`` embedding) and, with ``explain``,
        the keypoint pairs."""
        need_best = [e for e in entries if e.image_id is None and e.cosine is not None]
        best = self.best_images(need_best, query) if need_best else {}
        out = {}
        for e in entries:
            ev = {
                "embedding_similarity": e.cosine,
                "inliers": e.inliers,
                "local_score": e.local_score,
                "fused_score": e.fused_score,
                "lnbnn_score": e.lnbnn,
                "best_image_id": e.image_id if e.image_id is not None else best.get(e.whale_id, (None,))[0],
            }
            ev = {k: (round(v, SCORE_DECIMALS) if isinstance(v, float) else v) for k, v in ev.items()}
            if explain and e.pairs is not None:
                ev["keypoint_pairs"] = np.round(e.pairs, 1).tolist()
            ev.update(e.extra or {})
            out[e.whale_id] = {k: v for k, v in ev.items() if v is not None}
        return out
