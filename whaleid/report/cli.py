"""The ``whaleid report`` command's options (registered in :mod:`whaleid.cli`); the work is lazy-imported."""

from __future__ import annotations

import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

#: ``--scoring embedding local fused``: the words after the first mode arrive as extra arguments.
CONTEXT = {"allow_extra_args": True}


def report(
    ctx: typer.Context,
    bundle: Annotated[Path, typer.Argument(help="Bundle folder (manifest.json, model.onnx, gallery/).")],
    images: Annotated[Path, typer.Option("--images", help="Folder of the query photos.")],
    labels: Annotated[
        Path, typer.Option("--labels", help="CSV: Image,Id (Kaggle) or image,whale_id: the queries and their truth.")
    ],
    boxes: Annotated[
        Path | None, typer.Option("--boxes", help="CSV: image,x0,y0,x1,y1 in pixels (the queries' base boxes).")
    ] = None,
    scoring: Annotated[
        list[str] | None,
        typer.Option(help="Scoring modes: --scoring embedding local fused (default: the bundle's)."),
    ] = None,
    max_queries: Annotated[int, typer.Option(help="A random subset of the labelled photos (0: all).")] = 0,
    seed: Annotated[int, typer.Option(help="Seed of the --max-queries draw.")] = 0,
    out: Annotated[Path, typer.Option("--out", help="Report folder (report.html, figures/, queries.jsonl).")] = Path(
        "report"
    ),
    submission: Annotated[
        Path | None,
        typer.Option(help="Review this Kaggle submission (Image,Id) instead of running the model."),
    ] = None,
    gallery_images: Annotated[
        Path | None, typer.Option(help="Folder of the gallery photos for the strips (default: --images).")
    ] = None,
    worst: Annotated[int, typer.Option(help="Strips per worst-case category and mode.")] = 5,
) -> None:
    """An evaluation report: CMC, MAP@5 against the threshold, confusion, scores and the worst cases, as HTML.

    The queries run through the pipeline of POST /identify, with a progress bar; per-query results
    are cached in OUT/queries.jsonl, so an interrupted run resumes. Prints the headline figures as JSON
    (all of them: OUT/summary.json).
    """
    if ctx.args and not scoring:
        raise typer.BadParameter(f"unexpected arguments {ctx.args}", param_hint="BUNDLE")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from whaleid.report.build import build_report

    summary = build_report(
        bundle,
        images,
        labels,
        boxes,
        _split_modes([*(scoring or []), *ctx.args]),
        max_queries,
        seed,
        out,
        submission,
        gallery_images,
        worst,
        command="whaleid " + shlex.join(sys.argv[1:]),
    )
    modes = {m: {k: v for k, v in s.items() if k != "cmc"} for m, s in summary["modes"].items()}
    typer.echo(
        json.dumps({"modes": modes, "html": summary["html"], "summary": str(Path(out) / "summary.json")}, indent=2)
    )


def _split_modes(scoring: list[str] | None) -> list[str] | None:
    """Modes as given: ``--scoring embedding local``, ``--scoring embedding,local`` or repeated ``--scoring``."""
    if not scoring:
        return None
    return [m for s in scoring for m in s.replace(",", " ").split() if m]
