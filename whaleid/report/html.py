"""The report as one self-contained HTML file: settings, headline table, figures and strips, images inline.

Every image is a ``data:`` URI (PNG figures, JPEG photo strips) and the style sheet is inline, so the file opens
offline and can be mailed or archived as it is. Text from the inputs (file names, whale ids) is
escaped.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from html import escape

from .stats import WORST, ModeStats

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem auto; max-width: 1200px; color: #222; padding: 0 1rem; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
h3 { font-size: 1rem; }
table { border-collapse: collapse; margin: 0.5rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1rem 0; } figcaption { font-size: 0.85rem; color: #555; max-width: 900px; }
img { max-width: 100%; }
.figs { display: flex; flex-wrap: wrap; gap: 1rem; }
.note { font-size: 0.85rem; color: #555; }
"""


def data_uri(image: bytes) -> str:
    """A ``data:`` URI of PNG or JPEG bytes (told apart by their first bytes)."""
    mime = "image/jpeg" if image[:2] == b"\xff\xd8" else "image/png"
    return f"data:{mime};base64," + base64.b64encode(image).decode("ascii")


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return escape(str(v))


def _table(rows: Sequence[Sequence], head: Sequence[str] | None = None, cls: str = "") -> str:
    out = [f'<table class="{cls}">']
    if head:
        out.append("<tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr>")
    for row in rows:
        cells = []
        for i, v in enumerate(row):
            num = i > 0 and isinstance(v, (int, float))
            cells.append(f'<td class="num">{_fmt(v)}</td>' if num else f"<td>{_fmt(v)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def headline_rows(stats: Sequence[ModeStats]) -> list[list]:
    """One row per mode: the figures two reports are compared by."""
    return [
        [
            s.mode,
            s.map5,
            s.top1,
            s.top1_known,
            s.top5_known,
            s.threshold,
            s.threshold_source,
            s.best_threshold,
            s.best_map5,
            s.counts["scored"],
            s.counts["known"],
            s.counts["new"],
        ]
        for s in stats
    ]


HEADLINE_HEAD = [
    "mode",
    "MAP@5",
    "top-1",
    "top-1 known",
    "top-5 known",
    "threshold",
    "threshold from",
    "best threshold",
    "best MAP@5",
    "queries",
    "known",
    "new",
]


def render(
    settings: dict, stats: Sequence[ModeStats], figures: dict[str, tuple[str, bytes]], strips: dict[str, dict]
) -> str:
    """The report page.

    Args:
        settings: name -> value, shown first (bundle version, modes, thresholds, counts, inputs).
        stats: the modes' figures.
        figures: key -> (caption, PNG bytes), in display order.
        strips: mode -> category -> list of ``(image name, PNG bytes)``.
    """
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>whaleid report: {escape(str(settings.get('model version', '')))}</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>whaleid evaluation report</h1>",
        "<h2>Settings</h2>",
        _table([[k, v] for k, v in settings.items()], cls="settings"),
        "<h2>Results</h2>",
        _table(headline_rows(stats), HEADLINE_HEAD, cls="headline"),
        '<p class="note">MAP@5 and top-1 are over the final top-5 lists (new_whale placed by the threshold); '
        "top-1/top-5 known: share of known-whale queries whose whale is first / in the top 5 identities. "
        "Best threshold: the max_map5 rule on these very queries (optimistic).</p>",
        '<div class="figs">',
    ]
    for key, (caption, data) in figures.items():
        parts.append(
            f'<figure id="fig-{escape(key)}"><img src="{data_uri(data)}" alt="{escape(caption)}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>"
        )
    parts.append("</div>")
    parts.append("<h2>Worst cases</h2>")
    parts.append(
        '<p class="note">Query photo: base box red, TTA boxes yellow. Candidates: the final answer, each whale\'s '
        "gallery photo that matches best and new_whale where the threshold places it; the true answer framed "
        "green; scores as the service returns them.</p>"
    )
    for mode, cats in strips.items():
        for cat, items in cats.items():
            parts.append(f"<h3>{escape(mode)}: {escape(WORST[cat])} ({len(items)} shown)</h3>")
            if not items:
                parts.append('<p class="note">none</p>')
            for name, data in items:
                parts.append(
                    f'<figure class="strip"><img src="{data_uri(data)}" alt="strip of {escape(name)}"></figure>'
                )
    parts.append("</body></html>")
    return "\n".join(parts)
