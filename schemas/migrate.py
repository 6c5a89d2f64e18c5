"""Run the Alembic migrations in `schemas/migrations` against a database URL."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(database_url: str, event_tables: str = "persister") -> Config:
    """`event_tables`: who makes `events` and `event_resources` (see
    `schemas.sharing`)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # Passed as an attribute, not an option: option values go through
    # ConfigParser interpolation, which mangles '%' in passwords.
    config.attributes["database_url"] = database_url
    config.attributes["event_tables"] = event_tables
    return config


def upgrade(database_url: str, event_tables: str = "persister", revision: str = "head") -> None:
    """Raises `schemas.sharing.Refused` for a database that cannot be shared
    as `event_tables` says, having changed nothing."""
    command.upgrade(alembic_config(database_url, event_tables), revision)
