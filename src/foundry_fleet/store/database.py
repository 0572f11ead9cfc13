"""Open the fleet's SQLite database (WAL) and bring its schema up to date with Alembic."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import sessionmaker

from foundry_fleet.domain.errors import Unsupported

MIGRATIONS = Path(__file__).parent / "migrations"
# The newest migration. Checked against Alembic's own head by the tests; it lets an up-to-date
# database open without importing Alembic at all (which costs the long-running daemon ~10 MB).
SCHEMA_REVISION = "0010"


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    cur = dbapi_conn.cursor()
    # WAL lets the daemon and a CLI read and write the same file without blocking each other.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


def make_engine(path: Path) -> Engine:
    path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(f"sqlite:///{path}", future=True)
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def current_revision(engine: Engine) -> str | None:
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except OperationalError:
        return None  # a new database: no alembic_version table yet


def known_revisions() -> set[str]:
    return {p.name.split("_", 1)[0] for p in (MIGRATIONS / "versions").glob("[0-9]*_*.py")}


def copy_before_migrating(path: Path) -> Path:
    """`<db>.before-<new revision>`: a consistent copy (SQLite's online backup) to go back to with the
    foundry-fleet that wrote it, should the new one have to be rolled back."""
    import sqlite3

    copy = path.with_name(f"{path.name}.before-{SCHEMA_REVISION}")
    source, target = sqlite3.connect(path), sqlite3.connect(copy)
    try:
        source.backup(target)
        target.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, to copy back as it is
    finally:
        target.close()
        source.close()
    copy.chmod(0o600)
    return copy


def migrate(engine: Engine, path: Path | None = None) -> None:
    """Bring the schema to the newest revision (a no-op, without Alembic, when it is there). A database
    written by a newer foundry-fleet is refused, not guessed at; one about to be migrated is copied first."""
    current = current_revision(engine)
    if current == SCHEMA_REVISION:
        return
    if current is not None and current not in known_revisions():
        raise Unsupported(
            f"the fleet's database has schema revision {current}, newer than this foundry-fleet knows "
            f"(up to {SCHEMA_REVISION}): a newer foundry-fleet migrated it",
            "run that newer foundry-fleet again, or go back with the copy it kept before migrating "
            f"(state/fleet.sqlite.before-{current}) together with the foundry-fleet that wrote it")
    if current is not None and path is not None:
        copy_before_migrating(path)
    from alembic import command
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def open_database(path: Path) -> sessionmaker:
    """An engine with an up-to-date schema, as a session factory."""
    fresh = not path.exists()
    engine = make_engine(path)
    migrate(engine, path)
    if fresh:
        path.chmod(0o600)
    return sessionmaker(engine, expire_on_commit=False)
