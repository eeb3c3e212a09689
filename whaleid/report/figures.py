"""The report's figures, drawn with matplotlib (Agg backend: no display needed), returned as PNG bytes.

* :func:`cmc_figure`: top-k accuracy of known whales, k = 1..20 (CMC), one line per mode.
* :func:`threshold_figure`: MAP@5 against the new_whale threshold, the threshold used marked.
* :func:`confusion_figure`: known vs new at the threshold, one 2x2 table per mode.
* :func:`score_figure`: scores of genuine and impostor top-1 candidates, per mode.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .stats import ModeStats  # noqa: E402

#: One colour per mode, the same in every figure.
COLOURS = {"embedding": "#1f77b4", "local": "#2ca02c", "fused": "#d62728", "submission": "#9467bd"}
DPI = 110


def png(fig, dpi: int = DPI, fmt: str = "png") -> bytes:
    """The figure as PNG bytes (or ``fmt="jpeg"``: JPEG, quality 85, for photos); the figure is closed."""
    buf = io.BytesIO()
    extra = {"pil_kwargs": {"quality": 85}} if fmt == "jpeg" else {}
    fig.savefig(buf, format=fmt, dpi=dpi, bbox_inches="tight", **extra)
    plt.close(fig)
    return buf.getvalue()


def cmc_figure(stats: Sequence[ModeStats]) -> bytes:
    """Top-k accuracy of the known-whale queries (the true whale among the first k identities)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for s in stats:
        k = np.arange(1, len(s.cmc) + 1)
        ax.plot(k, s.cmc, marker="o", ms=3, color=COLOURS.get(s.mode), label=f"{s.mode} (top-1 {s.cmc[0]:.3f})")
    ax.set_xlabel("k (identities shown)")
    ax.set_ylabel("known-whale queries with the whale in the top k")
    ax.set_xticks(range(1, max(len(s.cmc) for s in stats) + 1))
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(f"CMC: top-k accuracy ({stats[0].counts['known']} known-whale queries)")
    return png(fig)


def threshold_figure(stats: Sequence[ModeStats]) -> bytes:
    """MAP@5 against the new_whale threshold per mode; the threshold used (x) and the best one (o)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for s in stats:
        if s.curve_thresholds is None:
            continue
        c = COLOURS.get(s.mode)
        ax.plot(s.curve_thresholds, s.curve_map5, color=c, label=f"{s.mode}")
        ax.axvline(s.threshold, color=c, ls="--", lw=0.8)
        ax.plot([s.threshold], [s.map5], "X", color=c, ms=9, label=f"{s.mode} used: t={s.threshold:.3f}, {s.map5:.3f}")
        ax.plot([s.best_threshold], [s.best_map5], "o", mfc="none", color=c, ms=9)
    ax.set_xlabel("new_whale threshold (score below it: new_whale goes first)")
    ax.set_ylabel("MAP@5")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title("MAP@5 against the new_whale threshold (o: best on these queries)")
    return png(fig)


def confusion_figure(stats: Sequence[ModeStats]) -> bytes:
    """Known vs new at the threshold: truth in rows, first answer (a whale or new_whale) in columns."""
    fig, axes = plt.subplots(1, len(stats), figsize=(3.4 * len(stats), 3.2), squeeze=False)
    for ax, s in zip(axes[0], stats, strict=True):
        c = s.confusion
        m = np.array(
            [[c["known_right"] + c["known_wrong"], c["known_called_new"]], [c["new_called_known"], c["new_called_new"]]]
        )
        ax.imshow(m, cmap="Blues", vmin=0, vmax=max(int(m.max()), 1))
        text = [
            [f"{m[0, 0]}\n({c['known_right']} right whale)", f"{m[0, 1]}"],
            [f"{m[1, 0]}", f"{m[1, 1]}"],
        ]
        for i in range(2):
            for j in range(2):
                dark = m[i, j] > 0.6 * max(int(m.max()), 1)
                ax.text(j, i, text[i][j], ha="center", va="center", color="white" if dark else "black", fontsize=10)
        ax.set_xticks([0, 1], ["a whale", "new_whale"])
        ax.set_yticks([0, 1], ["known", "new"])
        ax.set_xlabel("first answer")
        ax.set_ylabel("truth")
        thr = "submission" if s.threshold is None else f"t={s.threshold:.3f}"
        ax.set_title(f"{s.mode} ({thr})", fontsize=10)
    fig.tight_layout()
    return png(fig)


def score_figure(stats: Sequence[ModeStats]) -> bytes:
    """Histograms of the top-1 candidate's score: the true whale (genuine) or another (impostor)."""
    with_scores = [s for s in stats if s.genuine is not None]
    fig, axes = plt.subplots(1, len(with_scores), figsize=(3.8 * len(with_scores), 3.2), squeeze=False)
    for ax, s in zip(axes[0], with_scores, strict=True):
        both = np.concatenate([s.genuine, s.impostor])
        bins = np.linspace(float(both.min()), float(both.max()) + 1e-6, 31) if both.size else 10
        ax.hist(s.impostor, bins=bins, alpha=0.6, color="#888888", label=f"impostor ({len(s.impostor)})")
        ax.hist(s.genuine, bins=bins, alpha=0.6, color=COLOURS.get(s.mode), label=f"genuine ({len(s.genuine)})")
        ax.axvline(s.threshold, color="black", ls="--", lw=1, label=f"threshold {s.threshold:.3f}")
        ax.set_xlabel("top-1 candidate's score")
        ax.set_ylabel("queries")
        ax.set_title(s.mode, fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return png(fig)
