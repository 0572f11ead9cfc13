"""The state database: migrations match the models, WAL is on, and an up-to-date schema opens fast."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.config import Config as AlembicConfig
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
import pytest

from foundry_fleet.store.database import MIGRATIONS, SCHEMA_REVISION, make_engine, open_database
from foundry_fleet.store.models import Base


def test_schema_revision_is_alembic_head() -> None:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    assert ScriptDirectory.from_config(cfg).get_current_head() == SCHEMA_REVISION


def test_migrations_create_exactly_the_models(tmp_path: Path) -> None:
    db = tmp_path / "state" / "fleet.sqlite"
    open_database(db)
    engine = make_engine(db)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    assert (db.stat().st_mode & 0o777) == 0o600
    with sqlite3.connect(db) as raw:
        assert raw.execute("pragma journal_mode").fetchone()[0] == "wal"
        assert raw.execute("select version_num from alembic_version").fetchone()[0] == SCHEMA_REVISION


def test_an_up_to_date_database_opens_without_alembic(tmp_path: Path) -> None:
    db = tmp_path / "fleet.sqlite"
    open_database(db)
    code = (
        "import sys; from pathlib import Path; from foundry_fleet.store.database import open_database; "
        f"open_database(Path({str(db)!r})); print('alembic' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def migrate(db: Path, revision: str, *, down: bool = False) -> None:
    """The database at `db` brought to `revision` by Alembic, up (or down) from where it is."""
    from alembic import command

    engine = make_engine(db)
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            (command.downgrade if down else command.upgrade)(cfg, revision)
    finally:
        engine.dispose()


def add_release(conn: sqlite3.Connection) -> None:
    """Release 13.345, for instances to refer to."""
    conn.execute("INSERT INTO releases (version, generation, build, layout, entry, sha256, zip_bytes, "
                 "unpacked_bytes, path, source, added_at) VALUES ('13.345', 13, 345, 'node', 'main.js', "
                 "'', 0, 0, '/r', 'file', 0)")


def test_a_task_recorded_before_0006_gets_its_address_and_pid(tmp_path: Path) -> None:
    """A daemon upgraded in place: rows of running instances keep being routed until re-attached."""
    db = tmp_path / "fleet.sqlite"
    migrate(db, "0005")
    with sqlite3.connect(db) as conn:
        add_release(conn)
        insert = ("INSERT INTO instances (name, release_version, port, desired, state, state_reason, task, "
                  "extra_hosts, restarts, crash_times, created_at, updated_at) "
                  "VALUES (?, '13.345', ?, 'running', ?, '', ?, '[]', 0, '[]', 0, 0)")
        conn.execute(insert, ("alice", 30001, "running", '{"name": "alice", "pid": 4242, "leader_pid": 4240}'))
        conn.execute(insert, ("bob", 30002, "stopped", None))
    open_database(db)
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT name, address, pid FROM instances ORDER BY name").fetchall()
    assert rows == [("alice", "127.0.0.1:30001", 4242), ("bob", None, None)]


def test_instances_from_before_0007_have_no_node_asked_for(tmp_path: Path) -> None:
    """A daemon upgraded in place: its instances stay where their runtime placed them."""
    db = tmp_path / "fleet.sqlite"
    migrate(db, "0006")
    with sqlite3.connect(db) as conn:
        add_release(conn)
        conn.execute("INSERT INTO instances (name, release_version, port, desired, state, state_reason, "
                     "extra_hosts, restarts, crash_times, created_at, updated_at) "
                     "VALUES ('alice', '13.345', 30001, 'running', 'stopped', '', '[]', 0, '[]', 0, 0)")
    open_database(db)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT name, node FROM instances").fetchall() == [("alice", None)]
        conn.execute("UPDATE instances SET node = 'node-b'")
    migrate(db, "0006", down=True)
    with sqlite3.connect(db) as conn:
        assert [c[1] for c in conn.execute("PRAGMA table_info(instances)")].count("node") == 0


def test_instances_from_before_0008_are_in_the_fleets_own_home_and_a_move_under_way_blocks_a_downgrade(
        tmp_path: Path) -> None:
    """A daemon upgraded in place: its instances keep their data where it was (home NULL = "fleet"); going
    back while a move is journalled, or an instance is in another home, would lose where its data is."""
    db = tmp_path / "fleet.sqlite"
    migrate(db, "0007")
    with sqlite3.connect(db) as conn:
        add_release(conn)
        conn.execute("INSERT INTO instances (name, release_version, port, desired, state, state_reason, "
                     "extra_hosts, restarts, crash_times, created_at, updated_at, node) "
                     "VALUES ('alice', '13.345', 30001, 'running', 'stopped', '', '[]', 0, '[]', 0, 0, 'node-a')")
    open_database(db)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT name, node, home FROM instances").fetchall() == [("alice", "node-a", None)]
        conn.execute("INSERT INTO moves (instance, source_home, target_home, source_node, target_node, phase, "
                     "started_at) VALUES ('alice', 'fleet', 'pool-b', 'node-a', 'node-b', 'copying', 1.0)")

    def downgrade() -> None:
        migrate(db, "0007", down=True)

    with pytest.raises(RuntimeError, match="a move between homes is under way: start the daemon once"):
        downgrade()
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM moves")
        conn.execute("UPDATE instances SET home = 'pool-b'")
    with pytest.raises(RuntimeError, match="instances alice keep their data in homes of their own"):
        downgrade()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE instances SET home = NULL")
    downgrade()
    with sqlite3.connect(db) as conn:
        assert [c[1] for c in conn.execute("PRAGMA table_info(instances)")].count("home") == 0
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'moves'").fetchone() == (0,)


def test_a_journalled_move_goes_with_its_instance(tmp_path: Path) -> None:
    """moves.instance refers to the instance: deleting the instance cannot leave a move of nothing."""
    db = tmp_path / "fleet.sqlite"
    open_database(db)
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA foreign_keys=ON")
        add_release(conn)
        conn.execute("INSERT INTO instances (name, release_version, port, desired, state, state_reason, "
                     "extra_hosts, restarts, crash_times, created_at, updated_at) "
                     "VALUES ('alice', '13.345', 30001, 'running', 'stopped', '', '[]', 0, '[]', 0, 0)")
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("INSERT INTO moves (instance, source_home, target_home, target_node, phase, started_at) "
                         "VALUES ('nobody', 'fleet', 'pool-b', 'node-b', 'copying', 1.0)")
        conn.execute("INSERT INTO moves (instance, source_home, target_home, target_node, phase, started_at) "
                     "VALUES ('alice', 'fleet', 'pool-b', 'node-b', 'copying', 1.0)")
        conn.execute("DELETE FROM instances WHERE name = 'alice'")
        assert conn.execute("SELECT count(*) FROM moves").fetchone() == (0,)


def test_an_upgrade_keeps_a_copy_of_the_database_from_before_its_migration(tmp_path: Path) -> None:
    """What an operator rolls back to, with the foundry-fleet that wrote it."""
    db = tmp_path / "fleet.sqlite"
    migrate(db, "0007")
    with sqlite3.connect(db) as conn:
        add_release(conn)
    open_database(db)
    copy = tmp_path / f"fleet.sqlite.before-{SCHEMA_REVISION}"
    assert (copy.stat().st_mode & 0o777) == 0o600
    kept = sqlite3.connect(copy)
    try:
        assert kept.execute("select version_num from alembic_version").fetchone()[0] == "0007"
        assert kept.execute("select version from releases").fetchall() == [("13.345",)]
    finally:
        kept.close()
    open_database(db)  # already up to date: nothing migrated, no copy made again
    assert sorted(p.name for p in tmp_path.iterdir() if ".before-" in p.name) == [copy.name]


def test_a_database_from_a_newer_foundry_fleet_is_refused_unchanged(tmp_path: Path) -> None:
    from foundry_fleet.domain.errors import Unsupported

    db = tmp_path / "fleet.sqlite"
    open_database(db)
    with sqlite3.connect(db) as conn:
        conn.execute("update alembic_version set version_num = '0099'")
    before = db.read_bytes()
    with pytest.raises(Unsupported) as refused:
        open_database(db)
    assert "schema revision 0099, newer than this foundry-fleet knows" in refused.value.message
    assert db.read_bytes() == before
