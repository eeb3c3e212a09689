"""``whaleid catalogue export|import`` and ``whaleid reindex`` (the work is in :mod:`whaleid.catalogue`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from whaleid.cli_base import Bundle, _domain_errors, _echo_json, _setup_logging, app

catalogue_app = typer.Typer(
    help="The catalogue as one archive (photos, whales, metadata, history): export, import.", no_args_is_help=True
)
app.add_typer(catalogue_app, name="catalogue")

GalleryDir = Annotated[Path | None, typer.Option(help="Gallery folder (default BUNDLE/gallery).")]
AllowMissing = Annotated[
    bool,
    typer.Option(
        help="Leave out photos stored without their bytes (galleries built before 2026-12) instead of failing."
    ),
]


@catalogue_app.command("export")
@_domain_errors
def export(
    bundle: Bundle,
    out: Annotated[Path, typer.Option("--out", help="The archive to write (a zip file).", dir_okay=False)],
    gallery_dir: GalleryDir = None,
    allow_missing: AllowMissing = False,
) -> None:
    """Write the gallery's whales, photos (their original bytes), metadata and audit log to an archive."""
    _setup_logging()
    from whaleid.catalogue import export_catalogue

    _echo_json(export_catalogue(bundle, out, gallery_dir, allow_missing))


@catalogue_app.command("import")
@_domain_errors
def import_(
    bundle: Bundle,
    archive: Annotated[
        Path,
        typer.Option("--archive", help="A catalogue archive (whaleid catalogue export).", exists=True, dir_okay=False),
    ],
    gallery_dir: GalleryDir = None,
) -> None:
    """Add an archive's whales and photos to the gallery, embedded with this bundle's model (any model).

    The whole archive is checked first: a corrupt one changes nothing. Photos a whale already holds are
    skipped, so importing twice changes nothing."""
    _setup_logging()
    from whaleid.catalogue import import_catalogue

    _echo_json(import_catalogue(bundle, archive, gallery_dir))


@app.command("reindex")
@_domain_errors
def reindex(
    old_gallery: Annotated[Path, typer.Argument(help="The old gallery folder (or the old bundle).", exists=True)],
    bundle: Annotated[Path, typer.Option("--bundle", help="The new bundle (its model embeds every photo again).")],
    out: Annotated[
        Path | None,
        typer.Option("--out", help="The new gallery folder (default: NEW_BUNDLE/gallery).", file_okay=False),
    ] = None,
    allow_missing: AllowMissing = False,
) -> None:
    """Re-embed every stored photo with a new model: whales, photos, metadata and history carry over."""
    _setup_logging()
    from whaleid.catalogue import reindex as run_reindex

    _echo_json(run_reindex(old_gallery, bundle, out, allow_missing))
