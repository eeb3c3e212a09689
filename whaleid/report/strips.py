"""A worst case as a strip of photos: the query with its boxes, the five candidates, their keypoint matches.

Row 1: the query photo (its base box thick, its TTA boxes thin) and the final answer: each
candidate's best gallery photo (the one the service names in ``best_image_id``) with its rank, whale
id and score, and new_whale where the threshold puts it; the true answer's frame is green. Row 2
(``local`` and ``fused``): the inlier keypoint pairs of the first identity, and of the true whale when
it is among the top 5 identities, drawn between query and candidate.

Gallery photos are read from the gallery-photos folder by the file name the store keeps (so the
keypoints, in photo pixels, land right); without the file, the stored thumbnail is shown without
keypoints.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from PIL import Image  # noqa: E402

from core.errors import InputImageError  # noqa: E402
from core.preprocess import decode_image  # noqa: E402
from index.build import FOLDER_LIMITS  # noqa: E402
from index.ranking import NEW_WHALE, insert_new_whale  # noqa: E402

from .figures import png  # noqa: E402

#: Longest side of a photo in a strip, pixels.
STRIP_PX = 480
#: At most this many keypoint pairs drawn per match.
MAX_PAIRS = 80


def _shrink(pixels: np.ndarray, max_px: int = STRIP_PX) -> tuple[np.ndarray, float]:
    """The photo with its longest side at most ``max_px``, and the scale applied."""
    h, w = pixels.shape[:2]
    s = min(1.0, max_px / max(h, w))
    if s < 1.0:
        pixels = np.asarray(Image.fromarray(pixels).resize((max(1, round(w * s)), max(1, round(h * s)))))
    return pixels, s


class PhotoSource:
    """Query and gallery photos for the strips, downscaled and cached.

    Args:
        images: folder of the query photos.
        store: the gallery's store (file names and thumbnails of its photos).
        gallery_images: folder of the gallery photos (default: ``images``).
    """

    def __init__(self, images: Path, store, gallery_images: Path | None = None):
        self.images, self.store = Path(images), store
        self.gallery_images = Path(gallery_images) if gallery_images else self.images
        self._cache: dict = {}
        self._records: dict[str, list] = {}

    def query(self, name: str) -> tuple[np.ndarray, float] | None:
        """``(pixels, scale)`` of a query photo (upright, as the pipeline decoded it), or None."""
        return self._read(self.images / name)

    def _read(self, path: Path):
        if path not in self._cache:
            try:
                self._cache[path] = _shrink(decode_image(path.read_bytes(), FOLDER_LIMITS).pixels)
            except (OSError, InputImageError):
                self._cache[path] = None
        return self._cache[path]

    def gallery(self, whale_id: str, image_id: int | None) -> tuple[np.ndarray, float | None] | None:
        """``(pixels, scale)`` of a whale's gallery photo (``image_id``, else its first one); the scale is
        None for a thumbnail (keypoints cannot be placed on it); None when there is nothing to show."""
        if whale_id not in self._records:
            try:
                self._records[whale_id] = self.store.images_of(whale_id)
            except Exception:  # an unknown whale (a submission may name anything)
                self._records[whale_id] = []
        recs = self._records[whale_id]
        rec = next((r for r in recs if r.image_id == image_id), recs[0] if recs else None)
        if rec is None:
            return None
        if rec.source and (self.gallery_images / rec.source).is_file():
            got = self._read(self.gallery_images / rec.source)
            if got is not None:
                return got
        blob = self.store.image_blob(rec.image_id, "thumbnail") if rec.has_thumbnail else None
        if blob:
            return np.asarray(Image.open(io.BytesIO(blob)).convert("RGB")), None
        return None


def _blank(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=8, transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _match_panel(ax, q, g, pairs, title: str) -> None:
    """Query and candidate side by side at one height, inlier pairs as lines."""
    (qp, qs), (gp, gs) = q, g
    h = min(qp.shape[0], gp.shape[0])
    fq, fg = h / qp.shape[0], h / gp.shape[0]
    qi = np.asarray(Image.fromarray(qp).resize((max(1, round(qp.shape[1] * fq)), h)))
    gi = np.asarray(Image.fromarray(gp).resize((max(1, round(gp.shape[1] * fg)), h)))
    ax.imshow(np.concatenate([qi, gi], axis=1))
    p = np.asarray(pairs, np.float32).reshape(-1, 2, 2)[:MAX_PAIRS]
    cmap = plt.get_cmap("hsv")
    for i, ((xq, yq), (xg, yg)) in enumerate(p):
        c = cmap(i / max(len(p), 1))
        ax.plot([xq * qs * fq, qi.shape[1] + xg * gs * fg], [yq * qs * fq, yg * gs * fg], "-o", color=c, lw=0.7, ms=2)
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def _answer(rec: dict, threshold: float | None) -> list[tuple[str, float | None, int | None]]:
    """The final top 5 ``(label, score, best gallery photo id)``: new_whale placed by the threshold, or
    a submission's own labels (no scores)."""
    if "labels" in rec:
        return [(w, None, None) for w in rec["labels"][:5]]
    ranked = rec.get("ranked", [])[:5]
    if threshold is None:
        return [tuple(r) for r in ranked]
    image_of = {w: i for w, _, i in ranked}
    return [(w, s, image_of.get(w)) for w, s in insert_new_whale([(w, s) for w, s, _ in ranked], threshold, 5)]


def strip_figure(rec: dict, photos: PhotoSource, threshold: float | None) -> tuple[bytes, int]:
    """The strip of one worst case (a record of :func:`whaleid.report.queries.run_queries`): JPEG bytes and
    the number of keypoint-match panels drawn.

    The candidates are the final answer: the top-5 identities with new_whale placed by ``threshold``
    (a submission's own list); the query's title gives the true whale's rank among the ranked
    identities when it is beyond them (up to 20).
    """
    full = rec.get("ranked", [])
    ranked = full[:5]
    answer = _answer(rec, threshold)
    pairs = rec.get("pairs") or {}
    truth = rec["truth"]
    q = photos.query(rec["image"])
    matches = []
    if q is not None and pairs and ranked:
        want = [ranked[0][0]] + [w for w, _, _ in ranked[1:] if w == truth]
        for w in want:
            g = photos.gallery(w, next(i for x, _, i in ranked if x == w))
            if w in pairs and g is not None and g[1] is not None:
                matches.append((w, g))
    fig = plt.figure(figsize=(13, 2.4 + (2.6 if matches else 0)))
    grid = fig.add_gridspec(2 if matches else 1, 6, height_ratios=[1, 1.15] if matches else [1])
    ax = fig.add_subplot(grid[0, 0])
    if q is None:
        _blank(ax, "query unreadable")
    else:
        pixels, s = q
        ax.imshow(pixels)
        for b in rec.get("boxes") or []:
            ax.add_patch(
                Rectangle((b[0] * s, b[1] * s), (b[2] - b[0]) * s, (b[3] - b[1]) * s, fill=False, ec="#ffcc00", lw=0.6)
            )
        if rec.get("base_box"):
            b = rec["base_box"]
            ax.add_patch(
                Rectangle((b[0] * s, b[1] * s), (b[2] - b[0]) * s, (b[3] - b[1]) * s, fill=False, ec="red", lw=1.6)
            )
        ax.set_xticks([])
        ax.set_yticks([])
    label = "new whale" if truth == NEW_WHALE else truth
    where = ""
    if "labels" not in rec and truth != NEW_WHALE:  # the model's ranking (a submission has no scores)
        at = [(i, sc) for i, (w, sc, _) in enumerate(full) if w == truth]
        where = f" (identity #{at[0][0] + 1}, {at[0][1]:.3f})" if at else f" (not in the first {len(full)})"
    ax.set_title(f"query {rec['image']}\ntruth: {label}{where}", fontsize=8)
    for j in range(5):
        ax = fig.add_subplot(grid[0, j + 1])
        if j >= len(answer):
            _blank(ax, "-")
            continue
        wid, score, image_id = answer[j]
        g = photos.gallery(wid, image_id) if wid != NEW_WHALE else None
        if wid == NEW_WHALE:
            _blank(ax, "new_whale" + ("" if threshold is None else f"\n(scores below {threshold:.3f})"))
        elif g is None:
            _blank(ax, "no gallery photo")
        else:
            ax.imshow(g[0])
            ax.set_xticks([])
            ax.set_yticks([])
        right = wid == truth
        for sp in ax.spines.values():
            sp.set_edgecolor("#2ca02c" if right else "#cccccc")
            sp.set_linewidth(3 if right else 1)
        n_in = len(pairs.get(wid, [])) if wid in pairs else None
        detail = "" if score is None or wid == NEW_WHALE else f"{score:.3f}"
        if n_in is not None:
            detail += f", {n_in} inliers"
        ax.set_title(
            f"#{j + 1} {wid}{' (true)' if right else ''}\n{detail}", fontsize=8, color="#2ca02c" if right else "black"
        )
    for n, (w, g) in enumerate(matches[:2]):
        ax = fig.add_subplot(grid[1, 3 * n : 3 * n + 3])
        _match_panel(ax, q, g, pairs[w], f"keypoint matches: query and {w} ({len(pairs[w])} inliers)")
    fig.tight_layout()
    return png(fig, dpi=80, fmt="jpeg"), len(matches[:2])
