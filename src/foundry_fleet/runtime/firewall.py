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
"""

from __future__ import annotations

import os
import shutil
import subprocess
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


class PortFirewall:
    def __init__(self, chain: str = DEFAULT_CHAIN) -> None:
        if not chain or len(chain) > 28 or not all(c.isalnum() or c in "-_" for c in chain):
            raise ValueError(f"iptables chain name {chain!r} is not usable")
        self.chain = chain

    def _families(self) -> list[tuple[_Family, str, str]]:
        found = []
        for fam in FAMILIES:
            tool, restore = shutil.which(fam.tool), shutil.which(fam.restore)
            if tool and restore:
                found.append((fam, tool, restore))
        return found

    def usable(self) -> Capability:
        if os.geteuid() != 0:
            return Capability("firewall", False, "not running as root, so iptables cannot be changed")
        working = []
        problems = []
        for fam, tool, _restore in self._families():
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
        done, failed = [], []
        for fam, tool, restore in self._families():
            result = _run([restore, "-w", "--noflush"], stdin=script)
            if result.returncode == 0 and self._ensure_jump(tool):
                done.append(fam.label)
            else:
                failed.append(f"{fam.label}: {result.stderr.strip() or 'could not add the INPUT jump'}")
        if not done:
            return Capability("firewall", False, f"{where} are reachable from other machines: {'; '.join(failed)}")
        detail = f"{where} accept connections only from this host ({', '.join(done)}, chain {self.chain})"
        if failed:
            detail += f"; NOT protected over {'; '.join(failed)}"
        return Capability("firewall", True, detail)

    def _ensure_jump(self, tool: str) -> bool:
        if _run([tool, "-w", "-C", "INPUT", "-j", self.chain]).returncode == 0:
            return True
        return _run([tool, "-w", "-I", "INPUT", "1", "-j", self.chain]).returncode == 0

    def rules(self) -> dict[str, list[str]]:
        """`iptables -S` of the chain and of INPUT's jumps to it, per family (for checks and status)."""
        out: dict[str, list[str]] = {}
        for fam, tool, _restore in self._families():
            chain = _run([tool, "-w", "-S", self.chain])
            lines = chain.stdout.splitlines() if chain.returncode == 0 else []
            jumps = [
                line for line in _run([tool, "-w", "-S", "INPUT"]).stdout.splitlines()
                if line.split()[-2:] == ["-j", self.chain]
            ]
            out[fam.label] = lines + jumps
        return out

    def remove(self) -> None:
        """Take the chain and every jump to it away (idempotent)."""
        if os.geteuid() != 0:
            return
        for _fam, tool, _restore in self._families():
            for _ in range(100):
                if _run([tool, "-w", "-D", "INPUT", "-j", self.chain]).returncode != 0:
                    break
            _run([tool, "-w", "-F", self.chain])
            _run([tool, "-w", "-X", self.chain])
