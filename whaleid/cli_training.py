"""The training commands of ``whaleid``: synthetic data, training, export, the box detector,
pseudo-labels and the split as CSV (they need the ``train`` extra; each says so when it is missing)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from whaleid.cli_base import (
    Bundle,
    Images,
    _domain_errors,
    _echo_json,
    _setup_logging,
    app,
    check_training_inputs,
)


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


@app.command("train-detector")
@_domain_errors
def train_detector(
    out: Annotated[Path, typer.Option("--out", help="Detector run folder.")],
    images: Annotated[list[Path], typer.Option("--images", help="Photo folder (repeat, paired with --boxes).")],
    boxes: Annotated[list[Path], typer.Option("--boxes", help="Boxes CSV image,x0,y0,x1,y1 (repeatable).")],
    backbone: Annotated[str, typer.Option(help="timm backbone name.")] = "resnet18",
    pretrained: Annotated[
        str, typer.Option(help="Initial backbone weights: 'false', 'pip:efficientnet-lite0' (offline), or a file.")
    ] = "false",
    trunk_blocks: Annotated[
        int | None,
        typer.Option(help="Keep the stem and first N stages of an EfficientNet backbone; read the box off its map."),
    ] = None,
    head_hidden: Annotated[int, typer.Option(help="Width of the box head's hidden layer.")] = 256,
    input_h: Annotated[int, typer.Option(help="Input height in pixels.")] = 96,
    input_w: Annotated[int, typer.Option(help="Input width in pixels.")] = 192,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 20,
    batch_size: Annotated[int, typer.Option(help="Photos per step.")] = 32,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW, warm-up then cosine).")] = 1e-3,
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
        pretrained={"false": False, "true": True}.get(pretrained.lower(), pretrained),
        trunk_blocks=trunk_blocks,
        head_hidden=head_hidden,
        input_size=[input_h, input_w],
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
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
