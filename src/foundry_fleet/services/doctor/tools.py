"""What the runtime needs on this host: the bubblewrap sandbox, cgroup controllers, iptables and, per
Foundry major among the fleet's releases, a Node.js that runs it (local runtime); Podman and the Node.js
images (podman runtime).

The findings are the runtime's own health lines (`Capability`): with the daemon running, those it found
when it started (what `foundry-fleet runtime show` prints); without it, the same probes run here, each
one that changes nothing on the host. This module only judges them and says what to do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from foundry_fleet.domain.errors import FleetError
from foundry_fleet.domain.release import node_range_for
from foundry_fleet.runtime.base import Capability
from foundry_fleet.services.doctor.report import Check, failed, passed, skipped, warned

SANDBOX_FIX = "install bubblewrap (apt install bubblewrap) and let it make namespaces here: `bwrap --ro-bind / / " \
              "--unshare-pid true` must work (unprivileged user namespaces, or the fleet run as root)"
CGROUPS_FIX = "run the fleet as root on a host whose cgroups have the memory, cpu and pids controllers " \
              "(cgroup v2 with systemd has them; on v1 mount each)"
FIREWALL_FIX = "run the fleet as root with iptables installed (apt install iptables)"
PODMAN_FIX = "install Podman as `make run RUNTIME=podman` does (apt install podman runc conmon catatonit " \
             "netavark aardvark-dns)"


def sandbox_check(cap: Capability) -> Check:
    if cap.available:
        return passed("sandbox (bubblewrap)", cap.detail)
    return failed("sandbox (bubblewrap)", cap.detail, SANDBOX_FIX)


def _all_available(name: str, caps: Iterable[Capability], none: str, fix: str, label: Callable[[str], str],
                   missing_tail: str = "") -> Check | list[Capability]:
    """A failed check naming each line that is not available (or `none` without lines), else the lines."""
    lines = list(caps)
    missing = [c for c in lines if not c.available]
    if not lines:
        return failed(name, none, fix)
    if missing:
        return failed(name, "; ".join(f"{label(c.name)}: {c.detail}" for c in missing) + missing_tail, fix)
    return lines


def cgroups_check(caps: Iterable[Capability]) -> Check:
    """The cgroup-<controller> lines: every limit (memory, CPU, processes) needs its controller."""
    lines = _all_available("cgroups", caps, "no cgroup controller was found", CGROUPS_FIX,
                           lambda n: n.removeprefix("cgroup-"), ": those limits are not enforced")
    if isinstance(lines, Check):
        return lines
    names = ", ".join(c.name.removeprefix("cgroup-") for c in lines)
    return passed("cgroups", f"{names} ({lines[0].detail})")


def firewall_check(cap: Capability) -> Check:
    """iptables, which keeps instance ports (local) or containers' network (podman) off other machines."""
    if cap.available:
        return passed("iptables", cap.detail)
    return failed("iptables", cap.detail, FIREWALL_FIX)


def podman_check(caps: Iterable[Capability]) -> Check:
    """Podman's health lines (podman, oci runtime, rootful, init, cgroup limits): all must hold."""
    lines = _all_available("podman", caps, "Podman was not found", PODMAN_FIX, lambda n: n)
    if isinstance(lines, Check):
        return lines
    return passed("podman", "; ".join(c.detail for c in lines))


def node_checks(generations: Iterable[int], resolve: Callable[[int], str]) -> list[Check]:
    """A Node.js for each Foundry major the fleet has releases of (`resolve`: services/node_binaries.py,
    as the runtime finds it when an instance starts)."""
    majors = sorted(set(generations))
    if not majors:
        return [skipped("node", "no release added yet (`foundry-fleet release add ZIP_OR_URL`): no Foundry major "
                                "to find a Node.js for")]
    checks = []
    for generation in majors:
        name = f"node for Foundry {generation}"
        try:
            path = resolve(generation)
        except FleetError as e:
            checks.append(failed(name, e.message, e.hint or "install a Node.js that runs it and name it in [node] binaries"))
            continue
        checks.append(passed(name, f"{path} (Foundry {generation} needs Node.js {node_range_for(generation)})"))
    return checks


def image_checks(images: list[dict[str, Any]] | None) -> list[Check]:
    """The podman runtime's Node.js image per Foundry major, as `status` reports them. One not made yet is
    a warning: the first start makes it, pulled or built from this host's node, which takes a while."""
    if images is None:
        return [skipped("node images", "not known without the fleet's Podman service")]
    if not images:
        return [skipped("node images", "no release added yet (`foundry-fleet release add ZIP_OR_URL`)")]
    checks = []
    for image in images:
        name = f"node image for Foundry {image['generation']}"
        if image.get("present"):
            checks.append(passed(name, image.get("detail") or "present"))
        elif image.get("present") is None:
            checks.append(skipped(name, f"unknown: {image.get('detail')}"))
        else:
            checks.append(warned(name, f"not made yet ({image.get('detail')}): the first start of an instance makes "
                                       "it", "make it now: `foundry-fleet runtime image`"))
    return checks


def not_for_runtime(runtime: str, why: str) -> list[Check]:
    return [skipped("runtime tools", f"the {runtime} runtime: {why}")]
