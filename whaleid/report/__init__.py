"""``whaleid report``: an evaluation report biologists can look at (issue 21).

Labelled query photos go through the pipeline of ``POST /identify`` (or a Kaggle submission's lists
are read), and one self-contained HTML file shows the settings, MAP@5 and the CMC curve per scoring
mode, MAP@5 against the new_whale threshold, known-vs-new confusion, genuine and impostor score
distributions, and the worst cases as photo strips with their keypoint matches.

Modules: :mod:`.queries` (running and caching the queries), :mod:`.stats` (the numbers),
:mod:`.figures` and :mod:`.strips` (matplotlib), :mod:`.html` (the page), :mod:`.build` (the command),
:mod:`.cli` (its options).
"""

from .build import build_report

__all__ = ["build_report"]
