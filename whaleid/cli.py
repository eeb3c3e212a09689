"""The ``whaleid`` command line.

Each subcommand imports its implementation lazily, so ``whaleid serve`` never imports torch and
``whaleid --help`` is instant. Domain errors (``core.errors``) are printed as one clear line and
exit with status 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from index.ranking import DEFAULT_NEW_WHALE_SHARE
from whaleid.cli_base import Boxes, Bundle, Images, Labels, _domain_errors, _echo_json, _installed, _setup_logging, app


@app.command()
def version() -> None:
    """Print the whaleid version and the versions of the libraries it runs on."""
    import importlib.metadata as md

    import whaleid

    typer.echo(f"whaleid {whaleid.__version__}")
    for names in (
        ("numpy",),
        ("pillow",),
        ("onnxruntime", "onnxruntime-gpu"),
        ("faiss-cpu", "faiss-gpu"),
        ("fastapi",),
        ("torch",),
        ("timm",),
    ):
        found = [f"{n} {md.version(n)}" for n in names if _installed(n)]
        typer.echo("  " + (", ".join(found) if found else f"{names[0]} (not installed)"))


@app.command()
@_domain_errors
def evaluate(
    target: Annotated[Path, typer.Argument(help="A run folder (torch) or a bundle folder (onnxruntime).")],
    images: Annotated[Path | None, typer.Option(help="Photos (bundle: required unless it came from a run).")] = None,
    labels: Annotated[Path | None, typer.Option(help="Labels CSV (bundle).")] = None,
    boxes: Annotated[Path | None, typer.Option(help="Boxes CSV (bundle).")] = None,
    untrained: Annotated[bool, typer.Option(help="Run: evaluate a randomly initialised network instead.")] = False,
    baseline: Annotated[bool, typer.Option(help="Also print the new_whale + 4 most frequent baseline.")] = False,
    use_threshold: Annotated[bool, typer.Option(help="Bundle: score at the manifest's threshold.")] = False,
) -> None:
    """MAP@5 on the validation split of a run, through torch (run) or onnxruntime (bundle)."""
    _setup_logging()
    from whaleid import workflows

    _echo_json(workflows.evaluate(target, images, labels, boxes, untrained, baseline, use_threshold))


@app.command("build-gallery")
@_domain_errors
def build_gallery(
    bundle: Bundle,
    images: Images,
    labels: Labels,
    boxes: Boxes = None,
    gallery_dir: Annotated[Path | None, typer.Option(help="Gallery folder (default BUNDLE/gallery).")] = None,
    reset: Annotated[bool, typer.Option(help="Delete the existing gallery first.")] = False,
    local_features: Annotated[
        bool | None,
        typer.Option(
            "--local-features/--no-local-features",
            help="Store SIFT features for local/fused scoring (default: as the manifest says).",
        ),
    ] = None,
    edges: Annotated[
        bool | None,
        typer.Option(
            "--edges/--no-edges",
            help="Store each photo's trailing edge for the edge_fused mode (about 0.15 s a photo; default: as "
            "the manifest says).",
        ),
    ] = None,
    embedding_scoring: Annotated[
        str | None,
        typer.Option(help="centroid (a mean vector per whale) or image_max (its best photo); default: the manifest's."),
    ] = None,
    faiss_factory: Annotated[
        str | None,
        typer.Option(help="FAISS index, e.g. IDMap2,Flat (exact), IVF1024,Flat (100k whales and more); saved."),
    ] = None,
) -> None:
    """Embed labelled photos x their TTA boxes through the bundle's ONNX model and enrol them."""
    _setup_logging()
    from whaleid import workflows

    if embedding_scoring not in (None, "centroid", "image_max"):
        raise typer.BadParameter("--embedding-scoring is centroid or image_max")
    _echo_json(
        workflows.build_gallery(
            bundle,
            images,
            labels,
            boxes,
            gallery_dir,
            reset,
            local_features=local_features,
            edges=edges,
            embedding_scoring=embedding_scoring,
            faiss_factory=faiss_factory,
        )
    )


@app.command("compare-modes")
@_domain_errors
def compare_modes(
    bundle: Bundle,
    images: Images,
    labels: Labels,
    boxes: Boxes = None,
    max_queries: Annotated[int, typer.Option(help="Random subset of queries (0: all).")] = 0,
    shortlist_k: Annotated[
        list[int] | None,
        typer.Option(help="Also score fused with this shortlist size (repeatable; 0 = every whale)."),
    ] = None,
    matcher: Annotated[
        str | None, typer.Option(help="Local matcher: lnbnn or brute_force (default: the bundle's).")
    ] = None,
    verify_k: Annotated[int | None, typer.Option(help="lnbnn: best-voted photos verified by RANSAC.")] = None,
    evidence_out: Annotated[
        Path | None, typer.Option(help="Write each query's evidence (shortlist, votes, inliers) as JSON lines.")
    ] = None,
) -> None:
    """Top-1 and MAP@5 of the embedding, local and fused scoring modes on the same labelled queries."""
    _setup_logging()
    from whaleid import workflows

    _echo_json(
        workflows.compare_modes(
            bundle,
            images,
            labels,
            boxes,
            max_queries,
            fused_ks=tuple(shortlist_k or ()),
            matcher=matcher,
            verify_k=verify_k,
            evidence_out=evidence_out,
        )
    )


@app.command()
@_domain_errors
def calibrate(
    bundle: Bundle,
    images: Images,
    labels: Labels,
    boxes: Boxes = None,
    rule: Annotated[str, typer.Option(help="Rule saved in the manifest: max_map5 or new_whale_share.")] = "max_map5",
    share: Annotated[float, typer.Option(help="Target new_whale share for the share rule.")] = DEFAULT_NEW_WHALE_SHARE,
    mode: Annotated[str, typer.Option(help="Scoring mode (built in: embedding, local, fused).")] = "embedding",
    gallery_dir: Annotated[Path | None, typer.Option(help="Gallery folder (default BUNDLE/gallery).")] = None,
    shortlist_k: Annotated[
        int | None, typer.Option(help="fused only: identities from the embedding ranking to re-rank (saved).")
    ] = None,
    matcher: Annotated[str | None, typer.Option(help="local/fused: lnbnn or brute_force (saved).")] = None,
    verify_k: Annotated[int | None, typer.Option(help="lnbnn: best-voted photos verified by RANSAC (saved).")] = None,
) -> None:
    """Choose the new_whale threshold on labelled photos and write it to the manifest.

    A photo of a whale in the gallery is a query for that whale; a photo of any other whale (or a
    new_whale photo) must be answered new_whale. Photos already enrolled (same bytes) are skipped.
    """
    _setup_logging()
    from whaleid import workflows

    _echo_json(
        workflows.calibrate(
            bundle,
            images,
            labels,
            boxes,
            rule,
            share,
            mode,
            gallery_dir=gallery_dir,
            shortlist_k=shortlist_k,
            matcher=matcher,
            verify_k=verify_k,
        )
    )


@app.command()
@_domain_errors
def serve(
    bundle: Bundle,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    gallery_dir: Annotated[Path | None, typer.Option(help="Gallery folder (default BUNDLE/gallery).")] = None,
) -> None:
    """Serve POST /identify and /gallery for a bundle (other settings: WHALEID_* environment variables)."""
    _setup_logging()
    from core.manifest import load_manifest

    load_manifest(bundle)  # a clear one-line error for a wrong path, before the server starts
    from service.config import Settings
    from service.main import run

    overrides = {"bundle": bundle} | ({"gallery_dir": gallery_dir} if gallery_dir is not None else {})
    run(host=host, port=port, settings=Settings(**overrides))


@app.command()
@_domain_errors
def predict(
    bundle: Bundle,
    images: Images,
    out: Annotated[Path, typer.Option("--out", help="Submission CSV (Image,Id with 5 labels).")] = Path(
        "submission.csv"
    ),
    log: Annotated[
        Path | None,
        typer.Option(help="JSON lines log (default: OUT with .jsonl, e.g. sub.jsonl); makes the run resumable."),
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option(help="Only these photos, and report MAP@5 against the labels.", exists=True, dir_okay=False),
    ] = None,
    class_balance: Annotated[bool, typer.Option(help="Apply the 1st-place class-balance swap.")] = False,
    balance_margin: Annotated[float, typer.Option(help="Class balance: swap when score1 - score2 < this.")] = 0.3,
    balance_min_claims: Annotated[int, typer.Option(help="Class balance: class 1 top-1/2 for >= this many.")] = 3,
    threshold: Annotated[
        float | None, typer.Option(help="new_whale threshold (default: the manifest's for the scoring mode).")
    ] = None,
    scoring: Annotated[
        str | None, typer.Option(help="embedding, local or fused (default: the bundle's, as POST /identify).")
    ] = None,
) -> None:
    """Identify every photo of a folder as POST /identify does: a Kaggle submission and a JSON lines log (resumable).

    The summary names the scoring mode, threshold and model version used.
    """
    _setup_logging()
    from whaleid.predict import ClassBalance, predict_folder

    balance = ClassBalance(balance_margin, balance_min_claims) if class_balance else None
    _echo_json(predict_folder(bundle, images, out, log, balance, threshold, labels=labels, scoring=scoring))


@app.command()
@_domain_errors
def quickstart(
    images: Annotated[
        Path | None,
        typer.Option(help="Your photos (Kaggle layout); default: a synthetic set.", exists=True, file_okay=False),
    ] = None,
    labels: Annotated[Path | None, typer.Option(help="Labels CSV for --images.", exists=True, dir_okay=False)] = None,
    boxes: Annotated[
        Path | None, typer.Option(help="Optional boxes CSV for --images.", exists=True, dir_okay=False)
    ] = None,
    home: Annotated[Path, typer.Option(help="Working folder (data, run, bundle).")] = Path("artifacts/quickstart"),
    host: Annotated[str, typer.Option(help="Interface to serve on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    serve: Annotated[bool, typer.Option(help="Serve after building.")] = True,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Training-config override key=value (repeatable, --train).")
    ] = None,
    train: Annotated[
        bool, typer.Option(help="Fine-tune the starter model on the photos first (configs/cpu-lite0.yaml).")
    ] = False,
    starter: Annotated[
        Path | None, typer.Option(help="Starter bundle (default: the one shipped).", exists=True, file_okay=False)
    ] = None,
) -> None:
    """Serve the starter model with your photos (or synthetic ones) enrolled and calibrated; --train trains first."""
    _setup_logging()
    from whaleid.quickstart import quickstart as run_quickstart

    if labels is not None:
        from index.labels import read_labels

        read_labels(labels)  # a labels file without its columns fails now, not after minutes of work
    run_quickstart(images, labels, boxes, home, host, port, serve, overrides=set_, train=train, starter=starter)


from whaleid.report.cli import CONTEXT as _REPORT_CONTEXT  # noqa: E402  (typer only; the work is lazy)
from whaleid.report.cli import report as _report  # noqa: E402

app.command("report", context_settings=_REPORT_CONTEXT)(_domain_errors(_report))

import whaleid.cli_catalogue  # noqa: E402, F401  (whaleid catalogue export|import, whaleid reindex)
import whaleid.cli_store  # noqa: E402, F401  (whaleid store migrate: registers it on the same app)

# The training commands come after these in --help (they need the train extra).
from whaleid import cli_training  # noqa: E402, F401  (registers them on the same app)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
