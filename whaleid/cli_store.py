"""``whaleid store ...``: the gallery store's administration (the PostgreSQL schema, for now)."""

from __future__ import annotations

from typing import Annotated

import typer

from whaleid.cli_base import _domain_errors, _echo_json, _setup_logging, app

store_app = typer.Typer(help="The gallery store shared by replicas (PostgreSQL).", no_args_is_help=True)
app.add_typer(store_app, name="store")


@store_app.command("migrate")
@_domain_errors
def migrate(
    url: Annotated[
        str, typer.Argument(help="postgresql://user:password@host:port/database", envvar="WHALEID_STORE_URL")
    ],
) -> None:
    """Create or upgrade the gallery store's schema in a PostgreSQL database (safe to run again, and
    from several replicas at once). Prints the versions applied."""
    _setup_logging()
    from index.store import postgres_module

    pg_migrate = postgres_module("pg_migrate")
    redact = postgres_module("postgres_errors").redact

    applied = pg_migrate.migrate(url)
    _echo_json({"database": redact(url), "applied": applied, "schema_version": pg_migrate.SCHEMA_VERSION})
