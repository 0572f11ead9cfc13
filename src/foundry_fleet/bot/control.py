"""The control API as the bot uses it: on behalf of one Discord user, whose rights the API checks.

`FleetApi` wraps AsyncControlClient for one principal; `CreateThroughApi` is how the setup wizard
makes a tenant's instance (through the daemon, so it is supervised and routed at once).
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

import httpx

from foundry_fleet.api.async_client import AsyncControlClient
from foundry_fleet.api.client import MOVE_TIMEOUT
from foundry_fleet.api.answer import answer
from foundry_fleet.api.endpoints import ACTOR_HEADER
from foundry_fleet.domain.errors import DaemonNotRunning, NotFound
from foundry_fleet.domain.names import validate_instance_name
from foundry_fleet.services.access import Principal
from foundry_fleet.services.views import CreatedInstance, InstanceView

def not_answering() -> DaemonNotRunning:
    return DaemonNotRunning("the fleet daemon is not answering right now",
                            "try again in a minute; if it persists, tell a fleet admin")


def _path(*parts: str) -> str:
    # Names come from people: quoted, so none can reach another endpoint.
    return "/v1/" + "/".join(quote(p, safe="") for p in parts)


class FleetApi:
    def __init__(self, client: AsyncControlClient, principal: Principal) -> None:
        self.client = client
        self.principal = principal

    async def call(self, method: str, *parts: str, **kwargs: Any) -> Any:
        try:
            return await self.client.call(self.principal.discord_id, self.principal.admin, method, _path(*parts),
                                          **kwargs)
        except httpx.TransportError:
            raise not_answering() from None

    # reading ------------------------------------------------------------------------------

    async def instances(self) -> list[dict[str, Any]]:
        """What this user may see: their own instances, or every one for an admin."""
        return await self.call("GET", "instances")

    async def mine(self) -> list[dict[str, Any]]:
        return [v for v in await self.instances() if v.get("owner") == self.principal.discord_id]

    async def resolve(self, name: str | None) -> str:
        """The instance a command means: the one named, or the user's only one."""
        if name and name.strip():
            return validate_instance_name(name.strip())
        return (await self.pick(None))["name"]

    async def pick(self, name: str | None) -> dict[str, Any]:
        """Like `resolve`, but the instance as the API shows it (one call either way)."""
        if name and name.strip():
            return await self.instance(validate_instance_name(name.strip()))
        mine = sorted(await self.mine(), key=lambda v: v["name"])
        if len(mine) == 1:
            return mine[0]
        if not mine:
            raise NotFound("you have no instance yet", "if you were invited, run /fleet setup")
        names = ", ".join(v["name"] for v in mine)
        raise NotFound(f"you have {len(mine)} instances: say which one", f"add instance: one of {names}")

    async def instance(self, name: str) -> dict[str, Any]:
        return await self.call("GET", "instances", name)

    async def logs(self, name: str, lines: int) -> list[str]:
        return (await self.call("GET", "instances", name, "logs", params={"lines": lines}))["lines"]

    async def backups(self, name: str) -> list[dict[str, Any]]:
        return await self.call("GET", "instances", name, "backups")

    async def releases(self) -> list[dict[str, Any]]:
        return await self.call("GET", "releases")

    # changing -----------------------------------------------------------------------------

    async def power(self, name: str, verb: str) -> dict[str, Any]:
        """start, stop or restart, answering once the instance has settled."""
        return await self.call("POST", "instances", name, verb, params={"wait": "true"})

    async def take_backup(self, name: str, label: str) -> dict[str, Any]:
        return await self.call("POST", "instances", name, "backups", json={"label": label})

    async def restore(self, name: str, snapshot: str) -> dict[str, Any]:
        return await self.call("POST", "instances", name, "restore", json={"snapshot": snapshot})

    async def upgrade(self, name: str, release: str) -> dict[str, Any]:
        return await self.call("POST", "instances", name, "upgrade", json={"release": release})

    async def suspend(self, name: str, reason: str) -> dict[str, Any]:
        return await self.call("POST", "instances", name, "suspend", json={"reason": reason})

    async def resume(self, name: str) -> dict[str, Any]:
        return await self.call("POST", "instances", name, "resume")

    async def set_idle_after(self, name: str, idle_after: str) -> dict[str, Any]:
        """A duration ("2h"), "off" or "fleet"; the service says what is wrong with anything else."""
        return await self.call("PUT", "instances", name, "idle-after", json={"idle_after": idle_after})

    async def move(self, name: str, node: str) -> dict[str, Any]:
        # As long as the CLI waits: a move to another home takes as long as its data takes to send.
        return await self.call("POST", "instances", name, "move", json={"node": node}, timeout=MOVE_TIMEOUT)

    async def import_data(self, name: str, url: str, into: str, replace: bool) -> dict[str, Any]:
        """A zip attached in Discord: the daemon downloads it from Discord's file host alone."""
        params = {"url": url, "source": "discord-attachment", "into": into, "replace": str(replace).lower()}
        # As long as the CLI waits: a snapshot of a large instance comes before the copy.
        return await self.call("POST", "instances", name, "import", params=params, timeout=MOVE_TIMEOUT)

    async def delete(self, name: str) -> dict[str, Any]:
        return await self.call("DELETE", "instances", name, params={"purge": "false"})


class CreateThroughApi:
    """`SetupWizard(create=...)`: called in the wizard's worker thread, it creates and starts the
    instance through the daemon on the bot's event loop. The wizard has checked the invite; the
    event log names the tenant as the actor."""

    def __init__(self, transport: httpx.AsyncBaseTransport, loop: asyncio.AbstractEventLoop,
                 timeout: float = 300.0) -> None:
        self.loop = loop
        self.timeout = timeout
        self._client = httpx.AsyncClient(transport=transport, base_url="http://fleet.invalid", timeout=timeout)

    async def aclose(self) -> None:
        await self._client.aclose()

    def __call__(self, name: str, release: str, license_key: str | None = None, owner: str | None = None
                 ) -> CreatedInstance:
        future = asyncio.run_coroutine_threadsafe(self._create(name, release, license_key, owner), self.loop)
        return future.result(self.timeout + 5)

    async def _create(self, name: str, release: str, license_key: str | None, owner: str | None) -> CreatedInstance:
        body = {"name": name, "release": release, "license_key": license_key, "owner": owner, "start": True}
        headers = {ACTOR_HEADER: f"discord:{owner}"} if owner else {}
        try:
            r = await self._client.post("/v1/instances", json=body, headers=headers)
        except httpx.TransportError:
            raise not_answering() from None
        data = answer(r)
        return CreatedInstance(InstanceView(**data["instance"]), data.get("admin_password"))
