"""How should ``fused`` combine the embedding's cosine with the local evidence? Offline, from the evidence
``whaleid compare-modes --evidence-out FILE`` wrote (one JSON line per query: the embedding's shortlist, the
LNBNN votes and the RANSAC-verified whales), every variant below ranks the same candidates (the
embedding's shortlist joined by the verified whales, as ``fused`` does) and is scored like ``compare-modes``:
coefficients by 2-fold cross-fitting on the same folds (a seeded permutation of the queries), the
new_whale threshold by ``max_map5`` on all queries (``index.evaluate.evaluate_rankings``).

The local evidence of a candidate is ``e = log1p(inliers) + 4 * lnbnn`` (the manifest's ``lnbnn_weight``).

- ``pairs``: the earlier fit, a logistic regression on genuine/impostor pairs of (cosine, e).
- ``map5 grid``: score ``w * cosine + e``, ``w`` chosen on the other fold by MAP@5 (grid).
- ``fused's fit``: :func:`index.local.fusion_for_map5`, what ``fused`` now fits (the same idea on a finer
  grid, then calibrated to a probability).
- ``map5 grid, relative cosine``: as above with ``cosine - best cosine of the query`` (a query's cosines
  shift together with its photo's quality; the gap to its best match does not).
- ``local only``: ``e`` alone over the same candidates (the embedding only widens the candidate list).

Usage::

    python scripts/measure_fusion.py EVIDENCE.jsonl [EVIDENCE2.jsonl ...]
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from index.evaluate import evaluate_rankings  # noqa: E402
from index.gallery import Hit  # noqa: E402
from index.local.calibration import calibrate_from_pairs, fusion_for_map5  # noqa: E402

LNBNN_WEIGHT = 4.0
GRID = [0.0, 1, 2, 3, 4, 6, 8, 10, 12, 15, 20, 25, 30, 40, 60, 80]


def load(path: Path, shortlist_k: int = 50) -> list[dict]:
    """Per query: truth and ``whale -> (cosine, inliers, lnbnn)`` of its fused candidates."""
    out = []
    for line in Path(path).read_text().splitlines():
        r = json.loads(line)
        cos = {w: c for w, c in r["embedding"]}
        short = [w for w, _ in r["embedding"][:shortlist_k]]
        inl = {w: n for w, n, _ in r["verified"]}
        cos.update({w: c for w, _, c in r["verified"]})
        votes = {w: s for w, s in r.get("lnbnn", [])}
        cands = list(dict.fromkeys([*short, *inl]))
        best = max(cos.values()) if cos else 0.0
        out.append(
            {
                "truth": r["truth"],
                "whales": cands,
                "cos": np.array([cos.get(w, 0.0) for w in cands]),
                "rel": np.array([cos.get(w, 0.0) - best for w in cands]),
                "e": np.array([math.log1p(inl.get(w, 0)) + LNBNN_WEIGHT * votes.get(w, 0.0) for w in cands]),
                "inl": np.array([inl.get(w, 0) for w in cands], float),
                "lnbnn": np.array([votes.get(w, 0.0) for w in cands]),
            }
        )
    return out


def report(queries: list[dict], scores: list[np.ndarray]):
    hits = []
    for q, s in zip(queries, scores, strict=True):
        order = np.lexsort((np.arange(len(s)), -s))[:10]
        hits.append([Hit(q["whales"][i], float(s[i]), i) for i in order])
    while any(len(h) < 5 for h in hits):  # pad (never happens with a 50-whale shortlist)
        hits = [h + [Hit(f"_pad{j}", -1e9, -1) for j in range(5 - len(h))] if len(h) < 5 else h for h in hits]
    rep, _ = evaluate_rankings(hits, [q["truth"] for q in queries], 1)
    return rep


def folds_of(n: int) -> list[np.ndarray]:
    order = np.random.default_rng(0).permutation(n)
    return [order[: n // 2], order[n // 2 :]]


def cross_fit(queries, fit, score) -> object:
    """Score each fold with parameters fitted on the other; the report over all queries."""
    folds = folds_of(len(queries))
    scores: list = [None] * len(queries)
    for f in (0, 1):
        params = fit([queries[i] for i in folds[1 - f]])
        for i in folds[f]:
            scores[i] = score(queries[i], params)
    return report(queries, scores)


def grid_fit(feature: str):
    def fit(qs):
        return max(GRID, key=lambda w: report(qs, [w * q[feature] + q["e"] for q in qs]).map5)

    return fit


def pairs_fit(qs):
    same = np.concatenate([np.array([w == q["truth"] for w in q["whales"]]) for q in qs])
    cal = calibrate_from_pairs(
        np.concatenate([q["inl"] for q in qs]),
        same,
        np.concatenate([q["cos"] for q in qs]),
        lnbnn=np.concatenate([q["lnbnn"] for q in qs]),
        lnbnn_weight=LNBNN_WEIGHT,
    )
    return cal.fusion


def map5_fit(qs):
    same = np.concatenate([np.array([w == q["truth"] for w in q["whales"]]) for q in qs])
    fusion, _w, _map5 = fusion_for_map5(
        np.concatenate([q["cos"] for q in qs]),
        np.concatenate([q["inl"] for q in qs]),
        same,
        np.concatenate([np.full(len(q["whales"]), i) for i, q in enumerate(qs)]),
        np.array([q["truth"] == "new_whale" for q in qs]),
        lnbnn=np.concatenate([q["lnbnn"] for q in qs]),
        lnbnn_weight=LNBNN_WEIGHT,
    )
    return fusion


def pairs_score(q, p):
    w_e, w_l, bias, w_v = p
    return w_e * q["cos"] + w_l * np.log1p(q["inl"]) + w_v * q["lnbnn"] + bias


def main() -> None:
    for path in sys.argv[1:]:
        queries = load(Path(path))
        known = sum(q["truth"] != "new_whale" for q in queries)
        print(f"\n{path}: {len(queries)} queries ({known} known)")
        rows = {
            "pairs (today)": cross_fit(queries, pairs_fit, pairs_score),
            "map5 grid, cosine": cross_fit(queries, grid_fit("cos"), lambda q, w: w * q["cos"] + q["e"]),
            "fused's fit (fusion_for_map5)": cross_fit(queries, map5_fit, pairs_score),
            "map5 grid, relative cosine": cross_fit(queries, grid_fit("rel"), lambda q, w: w * q["rel"] + q["e"]),
            "local only (same candidates)": report(queries, [q["e"] for q in queries]),
            "cosine only (same candidates)": report(queries, [q["cos"] for q in queries]),
        }
        for name, rep in rows.items():
            print(
                f"  {name:32s} MAP@5 {rep.map5:.3f}  top-1 known {rep.top1_known:.1%}  top-5 known {rep.top5_known:.1%}"
            )
        for feat in ("cos", "rel"):
            ws = [grid_fit(feat)([queries[i] for i in f]) for f in folds_of(len(queries))]
            print(f"  weights chosen per fold ({feat}): {ws}")


if __name__ == "__main__":
    main()
