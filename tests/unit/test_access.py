"""Who may do what: principals from Discord, and the panel's link-signed admin who has no Discord id."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from foundry_fleet.domain.errors import Forbidden, InvalidInput, NotFound
from foundry_fleet.services.access import ADMIN_LINK_ACTOR, Access, Principal

OWNER, OTHER, ADMIN = "200000000000000001", "200000000000000002", "200000000000000009"


@dataclass
class View:
    name: str
    owner: str | None


class Instances:
    def __init__(self, *views: View) -> None:
        self.views = {v.name: v for v in views}

    def get(self, name: str) -> View:
        if name not in self.views:
            raise NotFound(f"no instance named {name}")
        return self.views[name]

    def list(self) -> list[View]:
        return list(self.views.values())


def access() -> Access:
    return Access(Instances(View("alice", OWNER), View("orphan", None)), frozenset({ADMIN}))  # type: ignore[arg-type]


def test_principals_from_discord() -> None:
    a = access()
    assert a.principal(ADMIN) == Principal(ADMIN, admin=True)
    assert a.principal(OWNER) == Principal(OWNER, admin=False)
    assert a.principal(OWNER, has_admin_role=True).admin
    assert a.principal(f"<@{OWNER}>").discord_id == OWNER
    assert Principal(OWNER).actor == f"discord:{OWNER}"
    with pytest.raises(InvalidInput):
        Principal("not-an-id")


def test_only_an_admin_may_be_nobody_on_discord() -> None:
    with pytest.raises(InvalidInput, match="only a fleet admin"):
        Principal(None)
    with pytest.raises(InvalidInput, match="only a fleet admin"):
        Principal(None, admin=False)
    linked = Principal(None, admin=True)
    assert linked.actor == ADMIN_LINK_ACTOR == "panel:admin-link"


def test_the_link_admin_reaches_every_instance_and_tenants_only_their_own() -> None:
    a = access()
    linked = Principal(None, admin=True)
    a.require_admin(linked)
    assert [v.name for v in a.visible(linked)] == ["alice", "orphan"]
    assert a.instance(linked, "orphan", "delete").name == "orphan"
    owner, other = a.principal(OWNER), a.principal(OTHER)
    assert [v.name for v in a.visible(owner)] == ["alice"]
    assert a.visible(other) == []  # an instance without an owner is nobody's: not a None-id's
    with pytest.raises(NotFound):
        a.instance(other, "alice")
    with pytest.raises(NotFound):
        a.instance(owner, "orphan")
    with pytest.raises(Forbidden):
        a.instance(owner, "alice", "delete")
    # Owners bring their own data in (a snapshot is taken first); someone else's instance does not exist.
    assert a.instance(owner, "alice", "import").name == "alice"
    with pytest.raises(NotFound):
        a.instance(other, "alice", "import")
    with pytest.raises(Forbidden):
        a.require_admin(owner)
