"""Scoring modes measured and calibrated on the same labelled queries (``calibrate``, ``compare-modes``).

Each query's :class:`~index.modes.Evidence` is gathered once, as wide as the widest mode asked for
(the embedding ranking, the LNBNN votes and the RANSAC-verified photos), and every mode then ranks
it through :func:`index.modes.rank`, exactly as the service ranks an upload. A mode with
coefficients (``local``, ``fused``) has them fitted on genuine/impostor pairs of its own candidates
with **2-fold cross-fitting** (each half of the queries is ranked with coefficients fitted on the
other half; WildFusion fits its calibration on held-out pairs the same way), then each mode's
new_whale threshold is chosen on all queries by the ``rule`` (:func:`index.evaluate.evaluate_rankings`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from core.manifest import Manifest
from core.preprocess import load_image_file
from index import modes
from index.build import FOLDER_LIMITS
from index.evaluate import evaluate_rankings
from index.gallery import Gallery, Hit
from index.ranking import DEFAULT_NEW_WHALE_SHARE, NEW_WHALE

if TYPE_CHECKING:
    from index.embedder import PhotoEmbedder

#: Ranked identities kept per query (new_whale is placed among them before MAP@5 cuts at 5).
RANK_K = 10


def _shortlist_variant(manifest: Manifest, k: int, n_identities: int) -> Manifest:
    """The manifest with ``fused``'s shortlist set to ``k`` identities (0: all of them)."""
    spec = manifest.local_features.model_copy(update={"shortlist_k": k or max(n_identities, 1)})
    return manifest.model_copy(update={"local_features": spec})


def pairs_of(
    evidence: Sequence[modes.Evidence], idx, mode: modes.ScoringMode, manifest: Manifest, truths
) -> modes.Pairs:
    """The genuine/impostor pairs of ``mode``'s candidates for the queries ``idx``."""
    same, cos, inl, lb, query = [], [], [], [], []
    idx = list(idx)
    for q, i in enumerate(idx):
        ev = evidence[i]
        ids = mode.candidates(ev, manifest, RANK_K)
        c = ev.cosines(ids)
        for ident in ids:
            same.append(ev.names[ident] == truths[i])
            cos.append(c[ident])
            inl.append(ev.inliers(ident))
            lb.append(ev.lnbnn_of(ident) or 0.0)
            query.append(q)
    lnbnn_known = bool(evidence) and evidence[0].lnbnn is not None
    extra: dict[str, list] = {}
    for i in idx:
        ev = evidence[i]
        for name, values in mode.pair_features(ev, mode.candidates(ev, manifest, RANK_K), manifest).items():
            extra.setdefault(name, []).extend(np.asarray(values, float).tolist())
    return modes.Pairs(
        np.asarray(same, bool),
        np.asarray(cos, float),
        np.asarray(inl, float),
        np.asarray(lb, float) if lnbnn_known else None,
        {name: np.asarray(v, float) for name, v in extra.items()},
        np.asarray(query, np.int64),
        np.array([truths[i] == NEW_WHALE for i in idx], bool),
    )


def study_modes(
    manifest: Manifest,
    gallery: Gallery,
    embedder: PhotoEmbedder,
    images: str | Path,
    names: Sequence[str],
    truths: Sequence[str],
    embs: np.ndarray,
    boxes_of: Mapping[str, tuple] | None = None,
    mode_names: Sequence[str] | None = None,
    new_whale_share: float = DEFAULT_NEW_WHALE_SHARE,
    rule: str = "max_map5",
    progress: bool = True,
    fused_ks: Sequence[int] = (),
) -> dict:
    """Rank the same queries in several scoring modes; fit each mode's coefficients.

    Args:
        manifest: the bundle's manifest (its local-feature section chooses the matcher).
        gallery, embedder: the bundle's gallery and embedder (its detector gives boxes the labels lack).
        images: folder of the query photos.
        names, truths: query photo names and their truths (whale id, or new_whale).
        embs: ``(q, d) float32`` their L2-normalised embeddings.
        boxes_of: ``image -> (x0, y0, x1, y1)`` pixels, the base box of local features (else the
            detector's, else the full frame).
        mode_names: modes to rank (default: every registered mode the bundle can serve).
        new_whale_share, rule: the threshold rule (``max_map5`` or ``new_whale_share``).
        fused_ks: further ``fused`` shortlist sizes, reported as ``fused@K`` (0 = every identity),
            from the same evidence; their coefficients are ``fused``'s.

    Returns:
        ``reports`` (mode -> :class:`~index.evaluate.EvalReport`), ``params`` (mode -> coefficients
        fitted on all queries, or None), ``seconds_per_query_local`` (local matching added per query),
        ``pairs`` (pairs of the last mode fitted), ``matcher``, ``evidence`` (each query's
        :class:`~index.modes.Evidence`, in query order).

    Raises:
        ConfigError: an unknown mode name.
    """
    from index.local import LocalFeatureExtractor, LocalMatcher

    chosen = [modes.get(m) for m in (mode_names or modes.available(manifest))]
    spec = manifest.local_features
    names_of = gallery.answerable_names()
    variants = [(m.name, m, manifest) for m in chosen]
    if fused_ks:
        fused = modes.get("fused")
        variants += [(f"fused@{k or 'all'}", fused, _shortlist_variant(manifest, k, len(names_of))) for k in fused_ks]
    widest = max(m.embedding_k(mf, RANK_K) for _, m, mf in variants)
    scopes = {m.match_scope(mf) for _, m, mf in variants}
    scope = "all" if "all" in scopes else ("shortlist" if "shortlist" in scopes else "none")
    extractor = matcher = None
    if scope != "none":
        extractor, matcher = LocalFeatureExtractor(spec), LocalMatcher(gallery, spec)
        if matcher.descriptors is not None:
            matcher.descriptors.sync(progress=progress)  # build the descriptor index before timing queries
    ranking = gallery.search(embs, widest)
    evidence: list[modes.Evidence] = []
    t_local = 0.0
    for i, name in enumerate(tqdm(names, desc="queries", unit="photo", disable=not progress)):
        feats, t0 = None, 0.0
        if extractor is not None:
            pixels = load_image_file(Path(images) / name, FOLDER_LIMITS).pixels
            box = (boxes_of or {}).get(name)
            if box is None and embedder.detector is not None:
                box = embedder.detector.detect([pixels])[0]
            t0 = time.perf_counter()
            feats = extractor.extract(pixels, box)
        extras: dict = {}
        if any(type(m).query_extras is not modes.ScoringMode.query_extras for m in chosen):
            if extractor is None:
                pixels = load_image_file(Path(images) / name, FOLDER_LIMITS).pixels
                box = (boxes_of or {}).get(name)
            t0 = t0 or time.perf_counter()
            for m in chosen:
                extras.update(m.query_extras(manifest, pixels, box))
        evidence.append(modes.gather(gallery, ranking[i], embs[i], matcher, feats, scope, names_of, extras))
        if feats is not None or extras:
            t_local += time.perf_counter() - t0

    order = np.random.default_rng(0).permutation(len(names))
    folds = [order[: len(order) // 2], order[len(order) // 2 :]]
    fold_of = {int(q): f for f, idx in enumerate(folds) for q in idx}
    fitted: dict[str, dict] = {}
    full: dict[str, object] = {}
    n_pairs = 0
    for m in chosen:
        if m.params(manifest) is None:
            continue
        fitted[m.name] = {f: m.fit(pairs_of(evidence, folds[1 - f], m, manifest, truths), manifest) for f in (0, 1)}
        everything = pairs_of(evidence, range(len(names)), m, manifest, truths)
        full[m.name] = m.fit(everything, manifest)
        n_pairs = len(everything.same_whale)
    reports = {}
    for label, m, mf in variants:
        hits = []
        for i in range(len(names)):
            folds_params = fitted.get(m.name, {})
            params = folds_params.get(fold_of[i]) or full.get(m.name)  # None: the manifest's own
            entries = modes.rank(m, evidence[i], mf, RANK_K, params=params)
            hits.append([Hit(e.whale_id, float(e.score), e.identity_id) for e in entries])
        reports[label], _ = evaluate_rankings(hits, truths, len(gallery), new_whale_share, rule)
    return {
        "reports": reports,
        "params": {m.name: full.get(m.name) for m in chosen},
        "seconds_per_query_local": t_local / max(len(names), 1),
        "pairs": n_pairs,
        "matcher": spec.matcher if spec is not None else None,
        "evidence": evidence,
    }


def evidence_record(name: str, truth: str, ev: modes.Evidence, shortlist_k: int) -> dict:
    """One query's evidence as JSON-ready data (``compare-modes --evidence-out``), for studying fusion offline.

    Returns:
        ``{"image", "truth", "embedding": [[whale_id, cosine], ...] (the first ``shortlist_k`` of the
        embedding ranking), "verified": [[whale_id, inliers, cosine], ...] (RANSAC-verified identities),
        "lnbnn": [[whale_id, score], ...] (voted identities, best first; absent with brute force)}``;
        mirror identities are left out.
    """
    short = [h for h in ev.ranking if h.identity_id in ev.names][:shortlist_k]
    verified = ev.verified
    cos = ev.cosines(verified)
    out = {
        "image": name,
        "truth": truth,
        "embedding": [[ev.names[h.identity_id], round(float(h.score), 6)] for h in short],
        "verified": [[ev.names[i], ev.inliers(i), round(cos[i], 6)] for i in verified],
    }
    if ev.lnbnn is not None:
        voted = sorted(((s, i) for i, s in ev.lnbnn.items() if i in ev.names), key=lambda t: -t[0])
        out["lnbnn"] = [[ev.names[i], round(float(s), 6)] for s, i in voted]
    return out
