"""Open the fleet's SQLite database (WAL) and bring its schema up to date with Alembic."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"
# The newest migration. Checked against Alembic's own head by the tests; it lets an up-to-date
# database open without importing Alembic at all (which costs the long-running daemon ~10 MB).
SCHEMA_REVISION = "0008"


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


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (a no-op, without Alembic, when it is there)."""
    if current_revision(engine) == SCHEMA_REVISION:
        return
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
    migrate(engine)
    if fresh:
        path.chmod(0o600)
    return sessionmaker(engine, expire_on_commit=False)
