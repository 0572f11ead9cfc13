"""What `up` tells a person once the fleet serves: where to go, and what the host still needs (a trusted
local CA, DNS records) before browsers get there. Plain text for the daemon's console log."""

from __future__ import annotations

from collections.abc import Sequence

from foundry_fleet.config import FleetConfig
from foundry_fleet.services.doctor.dns import is_local_domain
from foundry_fleet.services.doctor.report import Check, Status


def next_steps(config: FleetConfig, instances: Sequence[tuple[str, str]], dns: Sequence[Check] = ()) -> str:
    """`instances`: (name, URL) of each; `dns`: the doctor's DNS checks, asked only for a real domain."""
    port = "" if config.edge.https_port == 443 else f":{config.edge.https_port}"
    lines = [f"the fleet serves its panel at https://{config.host_for(config.fleet.fleet_host)}{port}/"]
    if instances:
        lines += [f"  {name}: {url}" for name, url in instances]
    else:
        lines.append("no instances yet: add a Foundry release (`foundry-fleet release add FoundryVTT-<version>.zip`), "
                     "then `foundry-fleet instance create NAME --release VERSION`")
    if config.edge.tls == "internal":
        # Browsers refuse the fleet's certificates until its own CA is trusted on the machine they run on.
        lines.append("its certificates come from the fleet's local CA: trust it with `foundry-fleet trust` "
                     "(as root for the system store; `foundry-fleet trust --print` shows the commands)")
    domain = config.fleet.domain
    if not is_local_domain(domain):
        lines.append(f"DNS: {domain} and *.{domain} need A (IPv4) and AAAA (IPv6) records naming this host")
        for check in dns:
            said = "resolves here" if check.status is Status.PASS else check.status.value
            lines.append(f"  {check.name.removeprefix('dns ')}: {said}: {check.detail}"
                         + (f" ({check.fix})" if check.fix and check.status is not Status.PASS else ""))
    return "\n".join(lines)

