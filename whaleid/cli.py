"""The ``whaleid`` command line. Each subcommand imports its implementation lazily, so that
``whaleid serve`` never imports torch and ``whaleid --help`` is instant."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="whaleid",
    help="Photo-identification of humpback whales from tail flukes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
def version() -> None:
    """Print the whaleid version and the versions of the libraries it runs on."""
    import importlib.metadata as md

    import whaleid

    typer.echo(f"whaleid {whaleid.__version__}")
    for name in ("numpy", "pillow", "onnxruntime", "faiss-cpu", "fastapi", "torch", "timm"):
        try:
            typer.echo(f"  {name} {md.version(name)}")
        except md.PackageNotFoundError:
            typer.echo(f"  {name} (not installed)")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
