"""The ``whaleid`` command line.

Each subcommand imports its implementation lazily, so ``whaleid serve`` never imports torch and
``whaleid --help`` is instant. Domain errors (``core.errors``) are printed as one clear line and
exit with status 2.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="whaleid",
    help="Photo-identification of humpback whales from tail flukes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # click's plain help: wraps long option names instead of cutting them short as rich's table does
    rich_markup_mode=None,
)

Images = Annotated[Path, typer.Option("--images", help="Folder of photos.", exists=True, file_okay=False)]
Labels = Annotated[
    Path, typer.Option("--labels", help="CSV: Image,Id (Kaggle) or image,whale_id.", exists=True, dir_okay=False)
]
Boxes = Annotated[
    Path | None, typer.Option("--boxes", help="CSV: image,x0,y0,x1,y1 in pixels.", exists=True, dir_okay=False)
]
Bundle = Annotated[Path, typer.Argument(help="Bundle folder (manifest.json, model.onnx, gallery/).")]


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("faiss.loader", "onnxscript", "onnx_ir", "torch.onnx", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def _domain_errors(fn):
    """Print whaleid's typed errors as one line (exit 2) instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from pydantic import ValidationError

        from core.errors import WhaleidError

        try:
            return fn(*args, **kwargs)
        except WhaleidError as exc:
            typer.secho(f"error: {exc.detail}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None
        except ValidationError as exc:  # the service's WHALEID_* settings, checked at start-up
            for err in exc.errors():
                where = ".".join(str(p) for p in err.get("loc", ()))
                typer.secho(f"error: {where + ': ' if where else ''}{err['msg']}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None
        except ModuleNotFoundError as exc:
            extra = TRAIN_MODULES.get((exc.name or "").split(".")[0])
            if extra is None:
                raise
            typer.secho(
                f"error: this command needs {exc.name!r}, which the {extra!r} extra installs: "
                f"pip install -e '.[{extra}]' (the service and the default quickstart need only '.[serve]')",
                fg=typer.colors.RED,
                err=True,
            )
            raise typer.Exit(2) from None

    return wrapper


#: Top-level modules only the ``train`` extra installs (training, export, the detector).
TRAIN_MODULES = {m: "train" for m in ("torch", "torchvision", "timm", "albumentations", "onnx", "onnxscript")}


def check_training_inputs(data) -> None:
    """Check a training config's photo folder and CSVs before anything long starts (no run folder yet).

    Args:
        data: the config's ``data`` section (``images``, ``labels``, ``boxes``, ``extra_labels``).

    Raises:
        ConfigError: a missing folder or file, or a labels CSV without its columns (naming it).
    """
    from core.errors import ConfigError
    from index.labels import read_labels

    if not data.images or not Path(data.images).is_dir():
        raise ConfigError(f"data.images={data.images or '(empty)'} is not a folder of photos (--images)")
    files = [("data.labels", data.labels), ("data.boxes", data.boxes)]
    files += [("data.extra_labels", p) for p in data.extra_labels or []]
    for key, path in files:
        if (key == "data.labels" or path) and not (path and Path(path).is_file()):
            raise ConfigError(f"{key}={path or '(empty)'} is not a file")
    read_labels(data.labels)


def _installed(name: str) -> bool:
    import importlib.metadata as md

    try:
        md.version(name)
        return True
    except md.PackageNotFoundError:
        return False


def _echo_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


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


@app.command("synth-data")
@_domain_errors
def synth_data(
    out: Annotated[Path, typer.Argument(help="Output folder (images/, train.csv, boxes.csv).")],
    identities: int = 40,
    new_whales: int = 20,
    seed: int = 0,
) -> None:
    """Write the small synthetic fluke data set (Kaggle layout) used by tests and the quickstart."""
    from training.synthetic import SyntheticSpec, make_synthetic_dataset

    make_synthetic_dataset(out, SyntheticSpec(identities=identities, new_whales=new_whales, seed=seed))
    typer.echo(f"wrote {out}/images, {out}/train.csv, {out}/boxes.csv")


@app.command()
@_domain_errors
def train(
    config: Annotated[Path, typer.Argument(help="YAML config, e.g. configs/cpu-small.yaml.", exists=True)],
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override: key.path=value (repeatable).")] = None,
    images: Annotated[Path | None, typer.Option(help="Shortcut for --set data.images=...")] = None,
    labels: Annotated[Path | None, typer.Option(help="Shortcut for --set data.labels=...")] = None,
    boxes: Annotated[Path | None, typer.Option(help="Shortcut for --set data.boxes=...")] = None,
    extra_labels: Annotated[list[Path] | None, typer.Option("--extra-labels", help="Pseudo-label CSVs.")] = None,
    run_dir: Annotated[Path | None, typer.Option(help="Shortcut for --set run_dir=...")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from RUN_DIR/checkpoints/last.pt.")] = False,
) -> None:
    """Train the embedding network (DenseNet121 + ArcFace by default) and evaluate it on validation."""
    _setup_logging()
    from training.config import load_config

    overrides = list(set_ or [])
    for key, value in (("data.images", images), ("data.labels", labels), ("data.boxes", boxes), ("run_dir", run_dir)):
        if value is not None:
            overrides.append(f"{key}={value}")
    if extra_labels:
        overrides.append("data.extra_labels=" + json.dumps([str(p) for p in extra_labels]))
    cfg = load_config(config, overrides)
    check_training_inputs(cfg.data)
    from training.engine import train as run_training  # torch: imported once the inputs are known good

    out = run_training(cfg, resume=resume)
    ev = out / "eval.json"
    if ev.exists():
        _echo_json(json.loads(ev.read_text()))
    typer.echo(f"run folder: {out}")


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


@app.command()
@_domain_errors
def export(
    run_dir: Annotated[Path, typer.Argument(help="Training run folder.")],
    out: Annotated[Path, typer.Option("--out", help="Bundle folder to write.")],
    fp16: Annotated[bool, typer.Option(help="Also convert weights to float16 (for GPUs).")] = False,
    fine_tunable: Annotated[
        bool, typer.Option(help="Keep every weight under its PyTorch name (model.init_from can fine-tune from it).")
    ] = False,
) -> None:
    """Export the embedding network (never the head) to ONNX + manifest, verified against torch."""
    _setup_logging()
    from training.export import export_bundle

    rep = export_bundle(run_dir, out, fp16=fp16, fine_tunable=fine_tunable)
    typer.echo(
        "onnxruntime vs torch, max abs difference by batch size: "
        + ", ".join(f"{n}: {d:.2e}" for n, d in rep.max_abs_diff.items())
    )
    if rep.fp16_min_cosine is not None:
        typer.echo(f"fp16 vs fp32, smallest cosine: {rep.fp16_min_cosine:.6f}")
    typer.echo(f"bundle: {rep.bundle}")


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
    share: Annotated[float, typer.Option(help="Target new_whale share for the share rule.")] = 0.276,
    mode: Annotated[str, typer.Option(help="Scoring mode to calibrate: embedding, local or fused.")] = "embedding",
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
            gallery_dir,
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
    """Serve POST /identify and /gallery for a bundle (settings: WHALEID_* environment variables)."""
    _setup_logging()
    from core.manifest import load_manifest

    load_manifest(bundle)  # a clear one-line error for a wrong path, before the server starts
    os.environ["WHALEID_BUNDLE"] = str(bundle)
    if gallery_dir is not None:
        os.environ["WHALEID_GALLERY_DIR"] = str(gallery_dir)
    from service.main import run

    run(host=host, port=port)


@app.command("train-detector")
@_domain_errors
def train_detector(
    out: Annotated[Path, typer.Option("--out", help="Detector run folder.")],
    images: Annotated[list[Path], typer.Option("--images", help="Photo folder (repeat, paired with --boxes).")],
    boxes: Annotated[list[Path], typer.Option("--boxes", help="Boxes CSV image,x0,y0,x1,y1 (repeatable).")],
    backbone: Annotated[str, typer.Option(help="timm backbone name.")] = "resnet18",
    input_h: Annotated[int, typer.Option(help="Input height in pixels.")] = 96,
    input_w: Annotated[int, typer.Option(help="Input width in pixels.")] = 192,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 20,
    batch_size: Annotated[int, typer.Option(help="Photos per step.")] = 32,
    seed: Annotated[int, typer.Option(help="Split and init seed.")] = 0,
) -> None:
    """Train the fluke box regressor on photos with boxes; prints validation mean IoU beside the full frame's."""
    _setup_logging()
    if len(images) != len(boxes):
        raise typer.BadParameter("give one --boxes per --images")
    from training.detector import DetectorConfig
    from training.detector import train_detector as run

    cfg = DetectorConfig(
        box_csvs=[[str(i), str(b)] for i, b in zip(images, boxes, strict=True)],
        backbone=backbone,
        input_size=[input_h, input_w],
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
    )
    rep = run(cfg, out)
    _echo_json({k: rep[k] for k in ("train_photos", "val_photos", "train_seconds", "val")})


@app.command("export-detector")
@_domain_errors
def export_detector(
    run_dir: Annotated[Path, typer.Argument(help="Detector run folder (from train-detector).")],
    bundle: Annotated[Path, typer.Option("--bundle", help="Bundle to add detector.onnx to.")],
) -> None:
    """Add the detector to a bundle; its TTA boxes then surround the detected fluke."""
    _setup_logging()
    from training.detector import export_detector as run

    _echo_json(run(run_dir, bundle))


@app.command("detect-boxes")
@_domain_errors
def detect_boxes(
    bundle: Bundle,
    images: Images,
    out: Annotated[Path, typer.Option("--out", help="Boxes CSV to write (image,x0,y0,x1,y1).")],
) -> None:
    """Write the bundle detector's box for every photo of a folder (e.g. to train on photos without boxes)."""
    _setup_logging()
    from whaleid import workflows

    typer.echo(f"{workflows.detect_boxes(bundle, images, out)} boxes written to {out}")


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


@app.command("pseudo-label")
@_domain_errors
def pseudo_label(
    bundle: Bundle,
    images: Images,
    out: Annotated[Path, typer.Option("--out", help="CSV of confident labels (image,whale_id,confidence).")],
    min_confidence: Annotated[float, typer.Option(help="Smallest top-1 score kept (the scoring mode's scale).")] = 0.96,
    scoring: Annotated[
        str | None, typer.Option(help="embedding, local or fused (default: the bundle's, as POST /identify).")
    ] = None,
) -> None:
    """Confident predictions on unlabelled photos (never new_whale) as extra labels for `whaleid train`."""
    _setup_logging()
    from whaleid.predict import pseudo_label as run

    _echo_json(run(bundle, images, out, min_confidence, scoring=scoring))


@app.command("split-csv")
@_domain_errors
def split_csv(
    run_dir: Annotated[Path, typer.Argument(help="Training run folder (has split.json).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for gallery.csv and queries.csv.")],
) -> None:
    """Write a run's split as CSVs: gallery.csv (training photos) and queries.csv (validation photos)."""
    from whaleid import workflows

    _echo_json(workflows.split_csv(run_dir, out))


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


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
