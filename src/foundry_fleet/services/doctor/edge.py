"""The edge as the running daemon reports it (`foundry-fleet status`): Caddy serves the current
configuration, and every host of a running instance (and the fleet's own host) serves a valid certificate,
judged as the daemon's certificate watch judges it (services/certificates.py). Without the daemon neither
can be asked: both are skipped, saying so. And whether the TLS mode suits the number of hosts."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from foundry_fleet.edge.driver import CertificateState
from foundry_fleet.services.certificates import EXPIRY_WARNING_S, certificate_problem
from foundry_fleet.services.doctor.report import Check, failed, passed, skipped, warned

NOT_RUNNING = "the daemon is not running, and only it can ask its edge: start it (`foundry-fleet up`) and run " \
              "`foundry-fleet doctor` again"


def edge_checks(status: dict[str, Any] | None, tls: str, fleet_host: str, caddy_log: Path,
                now: float | None = None) -> list[Check]:
    """`status`: the running daemon's `status` (None: it is not running); `tls`: [edge] tls."""
    if status is None:
        return [skipped("edge", NOT_RUNNING), skipped("certificates", NOT_RUNNING)]
    return [_served(status.get("edge") or {}, caddy_log),
            _certificates(status, tls, fleet_host, caddy_log, time.time() if now is None else now)]


def _served(edge: dict[str, Any], caddy_log: Path) -> Check:
    conflicts = edge.get("host_conflicts") or []
    if edge.get("in_sync") is False:
        return failed("edge", f"Caddy does not serve the current configuration: {edge.get('problem') or 'unknown'}",
                      f"see `foundry-fleet status` and the edge's log ({caddy_log})")
    if conflicts:
        first = conflicts[0]
        more = f" (and {len(conflicts) - 1} more)" if len(conflicts) > 1 else ""
        return failed("edge", f"host {first['host']} is not served for {first['instance']}: {first['why']}{more}",
                      f"set the hostnames of {first['instance']} again without it (`foundry-fleet instance hosts "
                      f"{first['instance']} HOST...`, or --clear)")
    return passed("edge", "Caddy serves the current configuration")


def _certificates(status: dict[str, Any], tls: str, fleet_host: str, caddy_log: Path, now: float) -> Check:
    # A stopped instance's host is served a 503 page: its certificate is not the point (as the watch decides).
    wanted = {fleet_host} | {h for i in status.get("instances") or [] if i.get("state") == "running"
                             for h in i.get("hosts") or []}
    states = [CertificateState(**h) for h in status.get("hosts") or [] if h.get("host") in wanted]
    if not states:
        return skipped("certificates", "the daemon serves no host yet")
    warning = 0.0 if tls == "internal" else EXPIRY_WARNING_S
    problems = [p for p in (certificate_problem(s, now, warning) for s in states) if p]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        fix = (f"see the edge's log ({caddy_log}); restarting the daemon makes Caddy issue them again"
               if tls == "internal" else
               f"each host's DNS must point here and ports 80 and 443 be reachable from the internet for ACME; "
               f"see the edge's log ({caddy_log})")
        return failed("certificates", "; ".join(problems[:3]) + more, fix)
    expiries = sorted(s.not_after for s in states if s.not_after)
    until = f", the first expiring {expiries[0]}" if expiries else ""
    hosts = f"{len(states)} hosts serve" if len(states) != 1 else f"{states[0].host} serves"
    return passed("certificates", f"{hosts} a valid certificate{until}")


# With `internal` or `acme`, Caddy checks every managed name at each config load: 42.7 ms at 1,000 hosts,
# 805 ms at 5,000 (bench/RESULTS.md, "Edge config push at fleet scale"); on-demand manages none at a load.
SCALE_HOSTS = 1000


def scale_check(tls: str, hosts: int) -> Check:
    """Whether `[edge] tls` keeps a config push small with this many hosts (every change to any tenant,
    a sleep or a wake among them, is one)."""
    name = "certificates at scale"
    if tls == "on-demand":
        return passed(name, f"{hosts} hosts; with on-demand TLS a config push manages no certificate")
    if hosts <= SCALE_HOSTS:
        return passed(name, f'{hosts} hosts; with tls = "{tls}" each config push checks each of their certificates, '
                            f"which stays small up to about {SCALE_HOSTS:,}")
    return warned(name, f'{hosts:,} hosts with tls = "{tls}": every change to any tenant makes Caddy check all '
                        f"{hosts:,} certificates again (about 0.16 ms each)",
                  'set [edge] tls = "on-demand" in fleet.toml and restart the daemon: each host then gets its '
                  "certificate at its first visit, vouched for by the fleet")
