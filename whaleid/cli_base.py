"""What every ``whaleid`` command shares: the typer app, option types, logging and error handling.

The commands are in :mod:`whaleid.cli` (catalogue, serving, evaluation) and
:mod:`whaleid.cli_training` (training, export, detector, pseudo-labels).

Each subcommand imports its implementation lazily, so ``whaleid serve`` never imports torch and
``whaleid --help`` is instant. Domain errors (``core.errors``) are printed as one clear line and
exit with status 2.
"""

from __future__ import annotations

import functools
import json
import logging
import os
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
