"""Keep instance ports away from other machines: players reach Foundry only through the edge.

Without a network namespace of their own (network.py; no slirp4netns, or not root) instances
listen on the host network, on every interface (Foundry must accept the edge's connections), so
without a filter anyone who can reach the server could talk to an instance directly, skipping TLS
and the edge's sign-in. (With namespaces, each instance port is held on 127.0.0.1 by its forwarder;
the rule stays as a second line.) One dedicated chain, jumped to from INPUT, drops new TCP connections to the instance
port range that arrive on any interface but loopback, for IPv4 and IPv6.

Only connection attempts (SYN without ACK) are dropped: replies to the host's own outgoing
connections pass even when their local port happens to fall inside the range. The chain is
rewritten atomically with `iptables-restore --noflush`, so re-running never duplicates rules and
there is no moment without the rule.

A second chain, jumped to from OUTPUT, keeps the instances' outbound NAT (their forwarders) off the
host's own addresses and link-local ones: see `EgressFilter`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

from foundry_fleet.runtime.base import Capability

DEFAULT_CHAIN = "FOUNDRY-FLEET"


@dataclass(frozen=True)
class _Family:
    label: str
    tool: str
    restore: str


FAMILIES = (_Family("IPv4", "iptables", "iptables-restore"), _Family("IPv6", "ip6tables", "ip6tables-restore"))


def _run(argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=30)


def _families() -> list[tuple[_Family, str, str]]:
    found = []
    for fam in FAMILIES:
        tool, restore = shutil.which(fam.tool), shutil.which(fam.restore)
        if tool and restore:
            found.append((fam, tool, restore))
    return found


def _ensure_jump(tool: str, builtin: str, chain: str) -> bool:
    if _run([tool, "-w", "-C", builtin, "-j", chain]).returncode == 0:
        return True
    return _run([tool, "-w", "-I", builtin, "1", "-j", chain]).returncode == 0


def _chain_rules(chain: str, builtin: str) -> dict[str, list[str]]:
    """`iptables -S` of the chain and of the built-in chain's jumps to it, per family."""
    out: dict[str, list[str]] = {}
    for fam, tool, _restore in _families():
        listed = _run([tool, "-w", "-S", chain])
        lines = listed.stdout.splitlines() if listed.returncode == 0 else []
        jumps = [
            line for line in _run([tool, "-w", "-S", builtin]).stdout.splitlines()
            if line.split()[-2:] == ["-j", chain]
        ]
        out[fam.label] = lines + jumps
    return out


def _checked_chain(chain: str) -> str:
    if not chain or len(chain) > 28 or not all(c.isalnum() or c in "-_" for c in chain):
        raise ValueError(f"iptables chain name {chain!r} is not usable")
    return chain


def _load_chain(chain: str, builtin: str, script_for: Callable[[str], str]) -> tuple[list[str], list[str]]:
    """Rewrite `chain` atomically in every family (`script_for(label)` gives its iptables-restore input)
    and make sure `builtin` jumps to it; returns the families done and what failed in the others."""
    done, failed = [], []
    for fam, tool, restore in _families():
        result = _run([restore, "-w", "--noflush"], stdin=script_for(fam.label))
        if result.returncode == 0 and _ensure_jump(tool, builtin, chain):
            done.append(fam.label)
        else:
            failed.append(f"{fam.label}: {result.stderr.strip() or f'could not add the {builtin} jump'}")
    return done, failed


def _remove_chain(chain: str, builtin: str) -> None:
    """Take the chain and every jump to it away (idempotent)."""
    if os.geteuid() != 0:
        return
    for _fam, tool, _restore in _families():
        for _ in range(100):
            if _run([tool, "-w", "-D", builtin, "-j", chain]).returncode != 0:
                break
        _run([tool, "-w", "-F", chain])
        _run([tool, "-w", "-X", chain])


class PortFirewall:
    def __init__(self, chain: str = DEFAULT_CHAIN) -> None:
        self.chain = _checked_chain(chain)

    def usable(self) -> Capability:
        if os.geteuid() != 0:
            return Capability("firewall", False, "not running as root, so iptables cannot be changed")
        working = []
        problems = []
        for fam, tool, _restore in _families():
            result = _run([tool, "-w", "-S", "INPUT"])
            if result.returncode == 0:
                working.append(fam.label)
            else:
                problems.append(f"{fam.tool}: {result.stderr.strip()}")
        if not working:
            reason = "; ".join(problems) or "iptables is not installed (apt install iptables)"
            return Capability("firewall", False, reason)
        detail = f"iptables chain {self.chain} ({', '.join(working)})"
        if problems:
            detail += "; not covered: " + "; ".join(problems)
        return Capability("firewall", True, detail)

    def protect(self, low: int, high: int) -> Capability:
        """Drop outside connections to tcp ports low..high (inclusive); idempotent."""
        if not (0 < low <= high < 65536):
            raise ValueError(f"port range {low}-{high} is not valid")
        probe = self.usable()
        where = f"instance ports {low}-{high}"
        if not probe.available:
            return Capability(
                "firewall",
                False,
                f"{where} are reachable from other machines: {probe.detail}; "
                "block them in the host's own firewall",
            )
        rule = f"-A {self.chain} ! -i lo -p tcp -m tcp --dport {low}:{high} --syn -j DROP"
        script = f"*filter\n:{self.chain} - [0:0]\n{rule}\nCOMMIT\n"
        done, failed = _load_chain(self.chain, "INPUT", lambda _family: script)
        if not done:
            return Capability("firewall", False, f"{where} are reachable from other machines: {'; '.join(failed)}")
        detail = f"{where} accept connections only from this host ({', '.join(done)}, chain {self.chain})"
        if failed:
            detail += f"; NOT protected over {'; '.join(failed)}"
        return Capability("firewall", True, detail)

    def rules(self) -> dict[str, list[str]]:
        """`iptables -S` of the chain and of INPUT's jumps to it, per family (for checks and status)."""
        return _chain_rules(self.chain, "INPUT")

    def remove(self) -> None:
        """Take the chain and every jump to it away (idempotent)."""
        _remove_chain(self.chain, "INPUT")


# Where a forwarder may not open connections to, per family, besides every address of the host
# itself (`--dst-type LOCAL`: each interface's addresses and all of 127/8): link-local, where cloud
# metadata services hand out the machine's credentials (169.254.169.254), and IPv6 loopback.
_EGRESS_DENIED = {"IPv4": ("169.254.0.0/16",), "IPv6": ("fe80::/10", "::1/128")}


class EgressFilter:
    """Keep instances' outbound NAT off the host's own services and off link-local addresses.

    An instance reaches the outside through its forwarder (slirp4netns, network.py), a process on
    the host: what the instance dials, the forwarder dials from the host. `--disable-host-loopback`
    only closes 10.0.2.2; without this filter an instance reaches every host service bound to a
    non-loopback or wildcard address (sshd, databases, exporters) via the host's own addresses, and
    the cloud metadata service. One chain of the fleet's, jumped to from OUTPUT, rejects (at once,
    not by timeout) new connections that sockets of the forwarders' cgroup open to such addresses,
    except DNS (slirp4netns' resolver proxy asks the host's resolver, often 127.0.0.53 or a
    link-local one). Only NEW connections are matched, so the forwarders' answers on connections
    the edge made to them (127.0.0.1:<port>) pass. Rewritten atomically like the INPUT chain.
    """

    def __init__(self, chain: str) -> None:
        self.chain = _checked_chain(chain)

    def script(self, family: str, cgroup_path: str) -> str:
        who = f'-m cgroup --path "{cgroup_path}" -m conntrack --ctstate NEW'
        rules = [f"-A {self.chain} {who} -p {proto} -m {proto} --dport 53 -j RETURN" for proto in ("udp", "tcp")]
        for where in ("-m addrtype --dst-type LOCAL", *(f"-d {net}" for net in _EGRESS_DENIED[family])):
            # A reset, for TCP: slirp4netns passes a refused connect() on to the instance at once,
            # but an ICMP error arriving after its non-blocking connect() left the instance waiting.
            rules.append(f"-A {self.chain} {who} {where} -p tcp -j REJECT --reject-with tcp-reset")
            rules.append(f"-A {self.chain} {who} {where} -j REJECT")
        return f"*filter\n:{self.chain} - [0:0]\n" + "\n".join(rules) + "\nCOMMIT\n"

    def install(self, cgroup_path: str) -> Capability:
        """Load the chain for the forwarders of `cgroup_path` (which must exist) and jump to it."""
        if not cgroup_path or any(c in cgroup_path for c in '"\n\\') or cgroup_path.startswith("/"):
            raise ValueError(f"cgroup path {cgroup_path!r} cannot go into a rule")
        if os.geteuid() != 0:
            return Capability("egress", False, "not root, so iptables cannot be changed")
        done, failed = _load_chain(self.chain, "OUTPUT", lambda family: self.script(family, cgroup_path))
        if "IPv4" not in done:
            # slirp4netns' NAT is IPv4: without that family the filter protects nothing.
            return Capability("egress", False, "; ".join(failed) or "iptables is not installed (apt install iptables)")
        detail = f"iptables chain {self.chain} ({', '.join(done)})"
        if failed:
            detail += f"; not over {'; '.join(failed)}"
        return Capability("egress", True, detail)

    def rules(self) -> dict[str, list[str]]:
        return _chain_rules(self.chain, "OUTPUT")

    def remove(self) -> None:
        _remove_chain(self.chain, "OUTPUT")
