"""The fleet's container network: out to the world, but not to the host nor from one container to another.

All of the fleet's containers sit on one Podman bridge network of the fleet's own
(`foundry-fleet-<fleet id>`, interface `ff<fleet id>`), NATed out like Podman's default. Two iptables
chains of the fleet's, jumped to first from INPUT and FORWARD (IPv4, and IPv6 shut entirely), close
what a hostile tenant would try next:

- INPUT: every new connection from the bridge to the host itself is refused, whichever host address
  it dials (the bridge's gateway, the host's public address, 127.0.0.1 through the gateway): the
  host's own services (sshd, databases, the fleet's API) are not the tenants' business. The edge's
  connections to the published ports go the other way (OUTPUT, then DNAT into the bridge) and their
  answers are not new, so they pass.
- FORWARD: frames from the bridge to the bridge (container to container; iptables sees bridged traffic
  when the kernel's br_netfilter passes it on, `net.bridge.bridge-nf-call-iptables = 1`), and
  connections to link-local addresses (cloud metadata at 169.254.169.254) are dropped.

DNS: the containers use the host's resolvers as listed in its resolv.conf (Podman copies them), which
are forwarded like any other outside address; a resolver on the host's loopback would not be.
"""

from __future__ import annotations

import asyncio
import re
import shlex
import subprocess
from pathlib import Path

from foundry_fleet.runtime.base import Capability
from foundry_fleet.runtime.firewall import _checked_chain, _load_chain, _remove_chain, _chain_rules
from foundry_fleet.runtime.podman.api import PodmanApi, PodmanRefused
from foundry_fleet.runtime.podman.container_spec import FLEET_LABEL

BRIDGE_NF = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
LINK_LOCAL = "169.254.0.0/16"


class FleetNetwork:
    def __init__(self, fleet_id: str) -> None:
        self.fleet_id = fleet_id
        self.name = f"foundry-fleet-{fleet_id}"
        self.interface = f"ff{fleet_id}"[:15]
        self.input_chain = _checked_chain(f"FF-{fleet_id}-IN")
        self.forward_chain = _checked_chain(f"FF-{fleet_id}-FWD")
        self._ready = False
        self.subnet: str | None = None  # once ensured

    # ---------------------------------------------------------------- the Podman network

    async def ensure(self, api: PodmanApi) -> str:
        """The network's name, created (and firewalled) if it is not there yet."""
        found = await api.network(self.name)
        if self._ready and found is not None and await asyncio.to_thread(self._jumps_in_place):
            return self.name
        if found is None:
            try:
                found = await api.create_network({
                    "name": self.name, "driver": "bridge", "network_interface": self.interface,
                    "dns_enabled": False, "internal": False, "ipv6_enabled": False,
                    "labels": {FLEET_LABEL: self.fleet_id},
                })
            except PodmanRefused:
                found = await api.network(self.name)
                if found is None:  # not made meanwhile by another start
                    raise
        subnets = found.get("subnets") or []
        self.subnet = subnets[0].get("subnet") if subnets else None
        cap = await asyncio.to_thread(self.firewall)
        self._ready = cap.available
        return self.name

    async def open(self, api: PodmanApi) -> Capability:
        await self.ensure(api)
        return await asyncio.to_thread(self.firewall)

    async def close(self, api: PodmanApi) -> None:
        """Remove the chains, and the network once no container uses it (with the NAT rules netavark
        left for it, if a container's teardown failed)."""
        await asyncio.to_thread(self.remove_firewall)
        self._ready = False
        found = await api.network(self.name)
        try:
            await api.remove_network(self.name)
        except PodmanRefused:
            return  # still used by a container: it goes with the last one's next close
        subnets = [s.get("subnet") for s in (found or {}).get("subnets") or [] if s.get("subnet")]
        for subnet in subnets:
            await asyncio.to_thread(sweep_network, subnet)

    # ---------------------------------------------------------------- iptables

    def input_script(self, family: str) -> str:
        # Both families: the containers have no IPv6 (container_spec turns it off), but a link-local
        # IPv6 address on the bridge would otherwise reach host services listening on [::].
        new = f"-i {self.interface} -m conntrack --ctstate NEW"
        rules = [f"-A {self.input_chain} {new} -p tcp -j REJECT --reject-with tcp-reset",
                 f"-A {self.input_chain} {new} -j REJECT"]
        return _script(self.input_chain, rules)

    def forward_script(self, family: str) -> str:
        i = f"-i {self.interface}"
        rules = [f"-A {self.forward_chain} {i} -o {self.interface} -j DROP"]
        if family == "IPv4":
            rules += [f"-A {self.forward_chain} {i} -d {LINK_LOCAL} -p tcp -j REJECT --reject-with tcp-reset",
                      f"-A {self.forward_chain} {i} -d {LINK_LOCAL} -j REJECT",
                      f"-A {self.forward_chain} {i} -m addrtype --dst-type LOCAL -j REJECT"]
        else:
            rules.append(f"-A {self.forward_chain} {i} -j DROP")  # the network routes no IPv6
        return _script(self.forward_chain, rules)

    def firewall(self) -> Capability:
        """Load both chains (atomically, idempotent) and put their jumps first."""
        done_in, failed_in = _load_chain(self.input_chain, "INPUT", self.input_script)
        done_fwd, failed_fwd = _load_chain(self.forward_chain, "FORWARD", self.forward_script)
        if "IPv4" not in done_in or "IPv4" not in done_fwd:
            why = "; ".join(failed_in + failed_fwd) or "iptables is not installed (apt install iptables)"
            return Capability("network isolation", False,
                              f"containers on {self.name} can reach the host's services: {why}")
        detail = (f"containers on {self.name} reach the outside, not the host (chain {self.input_chain}) "
                  f"nor link-local addresses (chain {self.forward_chain})")
        if not _bridge_filtered():
            return Capability("network isolation", False,
                              f"{detail}; but they can reach each other directly: bridged traffic bypasses "
                              f"iptables (modprobe br_netfilter; sysctl net.bridge.bridge-nf-call-iptables=1)")
        return Capability("network isolation", True, f"{detail} nor each other")

    def _jumps_in_place(self) -> bool:
        """Do INPUT and FORWARD still jump to the chains (IPv4)? Someone may have flushed them."""
        return all(subprocess.run(["iptables", "-w", "-C", builtin, "-j", chain], capture_output=True,
                                  timeout=30).returncode == 0
                   for chain, builtin in ((self.input_chain, "INPUT"), (self.forward_chain, "FORWARD")))

    def rules(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for chain, builtin in ((self.input_chain, "INPUT"), (self.forward_chain, "FORWARD")):
            for family, lines in _chain_rules(chain, builtin).items():
                out.setdefault(family, []).extend(lines)
        return out

    def remove_firewall(self) -> None:
        _remove_chain(self.input_chain, "INPUT")
        _remove_chain(self.forward_chain, "FORWARD")


def sweep_forwarding(container_id: str, subnet: str | None, port: int | None) -> int:
    """Delete the port forwarding netavark left for a container it did not tear down (its namespace
    mount was lost, or its start failed half-way): the jump naming the container, and the rules for its
    port in the forwarding chain of the network with `subnet`. Left there, they would catch the next
    container published on that port (the stale rule comes first). How many rules went."""
    if not re.fullmatch(r"[0-9a-f]{64}", container_id):
        return 0
    rules = [line for line in _nat_rules() if line.startswith("-A NETAVARK")]
    ours = _forwarding_chains(rules, subnet)
    stale = [line for line in rules
             if f"id: {container_id}" in line or (port and line.split()[1] in ours and f"--dport {port} " in line)]
    return _delete(stale)


def sweep_dead_forwarding(network: str, subnet: str | None, live_ids: set[str], live_ips: set[str]) -> int:
    """Delete the port forwarding of the fleet's network that no live container owns: the jumps naming
    a container of `network` not in `live_ids`, and the DNAT rules of the network's forwarding chain to
    an address not in `live_ips`. What a daemon, a test or the host dying half-way through a teardown
    leaves behind would otherwise redirect 127.0.0.1:<port> to nothing, whatever later listens on that
    port (a container, or an instance of the local runtime). How many rules went."""
    rules = [line for line in _nat_rules() if line.startswith("-A NETAVARK")]
    ours = _forwarding_chains(rules, subnet)
    stale = []
    for line in rules:
        jump = re.search(rf"dnat name: {re.escape(network)} id: ([0-9a-f]{{64}})", line)
        if jump and jump.group(1) not in live_ids:
            stale.append(line)
            continue
        target = re.search(r"--to-destination ([0-9.]+):\d+", line)
        if line.split()[1] in ours and target and target.group(1) not in live_ips:
            stale.append(line)
    return _delete(stale)


def sweep_network(subnet: str) -> None:
    """Delete the NAT chains netavark keeps for a removed network's `subnet` (its masquerade chain and
    its port forwarding chain) when a failed teardown left them."""
    rules = _nat_rules()
    chains = {line.split()[-1] for line in rules
              if line.startswith("-A POSTROUTING ") and f" -s {subnet} " in f"{line} " and "-j NETAVARK-" in line}
    chains |= _forwarding_chains(rules, subnet)
    _delete([line for line in rules if line.startswith("-A ") and line.split()[-1] in chains])
    for chain in chains:
        subprocess.run(["iptables", "-w", "-t", "nat", "-F", chain], capture_output=True, timeout=30)
        subprocess.run(["iptables", "-w", "-t", "nat", "-X", chain], capture_output=True, timeout=30)


def _nat_rules() -> list[str]:
    listed = subprocess.run(["iptables", "-w", "-t", "nat", "-S"], capture_output=True, text=True, timeout=30)
    return listed.stdout.splitlines()


def _forwarding_chains(rules: list[str], subnet: str | None) -> set[str]:
    """netavark's port forwarding chains of the network with `subnet` (their rules name it as source)."""
    if not subnet:
        return set()
    return {line.split()[1] for line in rules
            if line.startswith("-A NETAVARK-DN-") and f" -s {subnet} " in f"{line} "}


def _delete(rules: list[str]) -> int:
    """Delete these `-A` lines of the nat table; how many went."""
    removed = 0
    for line in rules:
        args = shlex.split(line)
        args[0] = "-D"
        if subprocess.run(["iptables", "-w", "-t", "nat", *args], capture_output=True, timeout=30).returncode == 0:
            removed += 1
    return removed


def _script(chain: str, rules: list[str]) -> str:
    return f"*filter\n:{chain} - [0:0]\n" + "".join(f"{r}\n" for r in rules) + "COMMIT\n"


def _bridge_filtered() -> bool:
    if not BRIDGE_NF.exists():
        # The module that shows bridged traffic to iptables is not loaded; loaded, it defaults to on.
        # (Set to 0 by the host's admin, it stays 0: that is theirs to decide, and is reported.)
        subprocess.run(["modprobe", "br_netfilter"], capture_output=True, timeout=30)
    try:
        return BRIDGE_NF.read_text().strip() == "1"
    except OSError:
        return False
