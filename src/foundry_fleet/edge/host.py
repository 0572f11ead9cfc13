"""Where the edge's Caddy runs: the seam between the edge driver (which configures Caddy through its
admin API) and whatever keeps the Caddy process alive.

Two hosts: the fleet's own detached process (`process.ProcessCaddy`, the default) and a Nomad service
job (`nomad_caddy.CaddyOnNomad`, `[edge] on_nomad = true`). Either way the edge pushes the same config
through the same admin socket; only starting, adopting, watching and stopping differ.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol


class CaddyHost(Protocol):
    @property
    def pid(self) -> int | None:
        """Caddy's process id on this host, when known."""
        ...

    def describe(self) -> str:
        """One line for the start-up report: where Caddy runs."""
        ...

    async def adopt(self) -> bool:
        """Take over a Caddy that already runs (left by an earlier daemon); False if there is none."""
        ...

    async def start(self) -> int | None:
        """Start Caddy with the last config it accepted; its pid when known."""
        ...

    async def wait_ready(self, ping: Callable[[], bool]) -> None:
        """Return once `ping` (the admin API) answers; ExternalFailure if Caddy dies while starting."""
        ...

    def alive(self) -> bool:
        """Whether Caddy runs now (cheap: the edge asks every second)."""
        ...

    async def stop(self) -> None:
        """Stop Caddy; nothing of it is left running."""
        ...

    async def forget_config(self) -> None:
        """The next start begins with an empty config (the last one no longer starts)."""
        ...

    def write_config(self, config: dict[str, Any]) -> None:
        """Keep the config Caddy just accepted."""
        ...

    def local_ca_root(self) -> Path:
        """The root certificate of Caddy's local CA (internal TLS)."""
        ...

    async def detach(self) -> None:
        """Let go of Caddy without stopping it (the daemon leaves it running for the next one)."""
        ...
