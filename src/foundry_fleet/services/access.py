"""Who may do what, decided here and not in Discord: a tenant acts on the instances they own, a fleet
admin on all of them. Adapters (the bot, the control API) say who is asking; this module says yes or no.

What a tenant may do to their own instance is a short list (`TENANT_ACTIONS`); everything else (creating
and deleting instances, suspending, invites, the edge) is for admins. Someone who does not own an
instance hears that it does not exist, so tenants cannot probe each other's names.
"""

from __future__ import annotations

from dataclasses import dataclass

from foundry_fleet.domain.errors import Forbidden, InvalidInput, NotFound
from foundry_fleet.domain.names import validate_discord_id
from foundry_fleet.services.instance_views import InstanceViews
from foundry_fleet.services.views import InstanceView

TENANT_ACTIONS = frozenset({
    "view", "start", "stop", "restart", "logs", "backup", "backups", "restore", "upgrade", "backup-plan",
    "sftp-keys", "import",
})


# Who acted, for the event log, when a fleet admin signed in to the panel with a single-use link.
ADMIN_LINK_ACTOR = "panel:admin-link"


@dataclass(frozen=True)
class Principal:
    """A person acting through Discord (or signed in with it), or a fleet admin signed in to the panel
    with a single-use link from the fleet's own user (`discord_id` None)."""

    discord_id: str | None
    admin: bool = False

    def __post_init__(self) -> None:
        if self.discord_id is None:
            # A tenant is known by their Discord id alone: without one, only an admin is anybody.
            if not self.admin:
                raise InvalidInput("only a fleet admin may act without a Discord id",
                                   "sign in with Discord, or ask a fleet admin for a sign-in link")
            return
        validate_discord_id(self.discord_id)

    @property
    def actor(self) -> str:
        return ADMIN_LINK_ACTOR if self.discord_id is None else f"discord:{self.discord_id}"


class Access:
    def __init__(self, instances: InstanceViews, admin_users: frozenset[str]) -> None:
        """`admin_users`: the Discord ids that are fleet admins without the role ([discord] admin_users)."""
        self.instances = instances
        self.admin_users = admin_users

    def principal(self, discord_id: str, has_admin_role: bool = False) -> Principal:
        """The principal for a Discord user: an admin by role or by the config's admin_users."""
        user = validate_discord_id(discord_id)
        return Principal(user, has_admin_role or user in self.admin_users)

    def require_admin(self, principal: Principal, what: str = "this") -> None:
        if not principal.admin:
            raise Forbidden(f"only fleet admins may do {what}", "ask a fleet admin")

    def instance(self, principal: Principal, name: str, action: str = "view") -> InstanceView:
        """The instance, if `principal` may do `action` to it; NotFound for someone else's instance."""
        view = self.instances.get(name)
        if principal.admin:
            return view
        if view.owner != principal.discord_id:
            raise NotFound(f"you have no instance named {name}", "see /fleet status for yours")
        if action not in TENANT_ACTIONS:
            raise Forbidden(f"only fleet admins may {action} an instance", "ask a fleet admin")
        return view

    def visible(self, principal: Principal) -> list[InstanceView]:
        views = self.instances.list()
        return views if principal.admin else [v for v in views if v.owner == principal.discord_id]
