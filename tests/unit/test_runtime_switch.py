"""Choosing and switching the runtime driver of a fleet: `init --runtime`, `runtime set` on a real state
database (refused while the daemon or an instance runs, the old driver's task handles dropped, an event
for each attempt), fleet.toml edited in place, and the runtime block `status` shows without a daemon."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from foundry_fleet.config import load_config
from foundry_fleet.domain.errors import Conflict, InvalidInput
from foundry_fleet.services.config_keys import set_section_keys
from foundry_fleet.services.daemon_lock import DaemonLock
from foundry_fleet.services.init import init_fleet
from foundry_fleet.services.runtime_switch import switch_runtime
from foundry_fleet.store.database import open_database
from foundry_fleet.store.models import EventRow, Instance, Release

LOCAL_HANDLE = {"driver": "local", "name": "alice", "started_at": 1.0, "state": {"pid": 4242}}


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    return init_fleet(tmp_path / "fleet")


@pytest.fixture
def sessions(config_path: Path) -> sessionmaker[Session]:
    sessions = open_database(load_config(config_path).paths.database)
    with sessions.begin() as s:
        s.add(Release(version="13.345", generation=13, build=345, layout="node", entry="main.js", sha256="0" * 64,
                      zip_bytes=1, unpacked_bytes=1, path="/nowhere", source="test"))
    return sessions


def add_instance(sessions: sessionmaker[Session], name: str, port: int, state: str,
                 task: dict[str, object] | None = None) -> None:
    with sessions.begin() as s:
        s.add(Instance(name=name, release_version="13.345", port=port, desired="running", state=state,
                       extra_hosts=[], crash_times=[], restarts=0, task=task,
                       address=f"127.0.0.1:{port}" if task else None, pid=4242 if task else None))


def switch_events(sessions: sessionmaker[Session]) -> list[tuple[str, str, str]]:
    with sessions() as s:
        rows = s.scalars(select(EventRow).where(EventRow.action == "runtime.switch").order_by(EventRow.id))
        return [(r.actor, r.outcome, r.message) for r in rows]


def test_init_writes_the_chosen_runtime_and_documents_podman(tmp_path: Path) -> None:
    path = init_fleet(tmp_path / "f", runtime="fake")
    assert load_config(path).runtime.driver == "fake"
    text = path.read_text()
    assert "\n[runtime]\n" in text and '\n# image_node20 = "docker.io/library/node:20-slim"\n' in text
    assert load_config(init_fleet(tmp_path / "g")).runtime.driver == "local"


def test_init_refuses_a_runtime_it_does_not_offer_before_writing_anything(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as info:
        init_fleet(tmp_path / "f", runtime="fake", runtimes=["local", "podman"])
    assert info.value.message == "unknown runtime driver 'fake'" and info.value.hint == "use local or podman"
    assert not (tmp_path / "f").exists()
    with pytest.raises(InvalidInput) as info:  # without a list, the configuration's registry decides
        init_fleet(tmp_path / "g", runtime="docker")
    assert "unknown runtime driver 'docker'" in info.value.message
    assert not (tmp_path / "g" / "fleet.toml").exists()


def test_section_keys_are_set_in_place_keeping_comments(tmp_path: Path, config_path: Path) -> None:
    before = config_path.read_text()
    set_section_keys(config_path, "runtime", {"driver": '"fake"'})
    after = config_path.read_text()
    assert after == before.replace('\ndriver = "local"\n', '\ndriver = "fake"\n')  # nothing else moved
    # A key the section lacks goes after its last key; a section the file lacks is added at the end.
    set_section_keys(config_path, "storage", {"zfs_base": '"tank/foundry"'})
    assert 'driver = "directory"\nzfs_base = "tank/foundry"\n# zfs_base = "tank/foundry"' in config_path.read_text()
    bare = tmp_path / "bare" / "fleet.toml"
    bare.parent.mkdir()
    bare.write_text('[fleet]\nroot = "."  # here\n')
    set_section_keys(bare, "runtime", {"driver": '"fake"'})
    assert bare.read_text() == '[fleet]\nroot = "."  # here\n\n[runtime]\ndriver = "fake"\n'
    assert load_config(bare).runtime.driver == "fake"
    # What would not load is not written.
    with pytest.raises(InvalidInput):
        set_section_keys(bare, "runtime", {"driver": '"docker"'})
    assert load_config(bare).runtime.driver == "fake"


def test_switching_is_refused_while_an_instance_may_run_naming_it_and_how_to_stop_it(
    config_path: Path, sessions: sessionmaker[Session]
) -> None:
    add_instance(sessions, "alice", 30001, "running", LOCAL_HANDLE)
    add_instance(sessions, "bob", 30002, "stopping", {**LOCAL_HANDLE, "name": "bob"})
    add_instance(sessions, "carol", 30003, "stopped")
    before = config_path.read_text()
    with pytest.raises(Conflict) as info:
        switch_runtime(config_path, "fake", actor="cli:ann")
    assert "2 instance(s) may still run on the local runtime: alice (running), bob (stopping)" in info.value.message
    assert "foundry-fleet instance stop alice" in info.value.hint and "foundry-fleet instance stop bob" in info.value.hint
    assert config_path.read_text() == before
    with sessions() as s:
        assert s.scalar(select(Instance.task).where(Instance.name == "alice")) == LOCAL_HANDLE
    assert switch_events(sessions) == [
        ("cli:ann", "refused", "local -> fake: still live: alice (running), bob (stopping)")]


def test_switching_is_refused_while_the_daemon_runs(config_path: Path, sessions: sessionmaker[Session]) -> None:
    daemon = DaemonLock(load_config(config_path).paths.daemon_lock)
    daemon.acquire()  # what a running `foundry-fleet up` holds
    try:
        with pytest.raises(Conflict) as info:
            switch_runtime(config_path, "fake", actor="cli:ann")
    finally:
        daemon.release()
    assert "daemon is running" in info.value.message and "stop the daemon" in info.value.hint
    assert load_config(config_path).runtime.driver == "local"
    assert [e[1] for e in switch_events(sessions)] == ["refused"]


def test_switching_a_stopped_fleet_drops_the_old_drivers_handles_and_switches_back(
    config_path: Path, sessions: sessionmaker[Session]
) -> None:
    add_instance(sessions, "alice", 30001, "stopped", LOCAL_HANDLE)  # left by a daemon that died
    add_instance(sessions, "bob", 30002, "failed")
    result = switch_runtime(config_path, "fake", actor="cli:ann")
    assert (result.previous, result.driver, result.changed, result.cleared) == ("local", "fake", True, ["alice"])
    assert load_config(config_path).runtime.driver == "fake"
    with sessions() as s:
        alice = s.scalar(select(Instance).where(Instance.name == "alice"))
        assert alice is not None and (alice.task, alice.address, alice.pid) == (None, None, None)
        assert alice.desired == "running"  # the next `up` starts it on the new runtime
    again = switch_runtime(config_path, "fake", actor="cli:ann")
    assert (again.changed, again.cleared) == (False, [])
    back = switch_runtime(config_path, "local", actor="cli:bea")
    assert (back.previous, back.changed) == ("fake", True)
    assert load_config(config_path).runtime.driver == "local"
    assert switch_events(sessions) == [
        ("cli:ann", "ok", "local -> fake; dropped the local task handles of alice"),
        ("cli:bea", "ok", "fake -> local"),
    ]
    assert not DaemonLock(load_config(config_path).paths.daemon_lock).is_held()  # the switch let go of it


def test_status_without_the_daemon_shows_the_configured_runtime_with_unknown_health(config_path: Path) -> None:
    from foundry_fleet.cli.local_reads import LocalReads
    from foundry_fleet.wiring.services import open_services

    status = LocalReads(open_services(load_config(config_path), actor="test")).status()
    assert status["runtime"] == {"driver": "local", "isolation": "bubblewrap", "limits": True,
                                 "needs_image": False, "multi_node": False, "health": None,
                                 "images": None, "nodes": None, "nodes_problem": None}  # the daemon asks
