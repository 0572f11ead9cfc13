"""The fleet's systemd unit, rendered from what it runs: pure, so that tests and `--dry-run` see exactly
what `service install` writes.

The sandbox settings shared with the NixOS module live in unit_settings.json. What is added here
depends on the fleet: the paths it writes (its root, the release cache, the host-wide uid claims, and
for the podman runtime Podman's own state), the secrets systemd hands it (`LoadCredential=`, see
credentials.py) and what runs before it (the ZFS mounts for ZFS storage).
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

UNIT_NAME = "foundry-fleet.service"

# /var/lib/foundry-fleet, made by systemd if missing: every fleet on the host writes its claimed uid
# blocks there (services/uid_claims.py), and it is the usual fleet root.
STATE_DIRECTORY = "foundry-fleet"
# What rootful Podman writes: its storage, its networks' definitions (netavark's lock and the fleet's
# network) and builds' scratch (made at install when missing), and its run state and network
# namespaces under /run (gone at each boot: made by systemd at each start, and kept after a stop for
# podman's own commands).
PODMAN_PATHS = (Path("/var/lib/containers"), Path("/etc/containers/networks"), Path("/var/tmp"))
# crun and runc keep their containers' state in /run/crun and /run/runc.
PODMAN_RUN_DIRECTORIES = {"RuntimeDirectory": "containers libpod netns crun runc", "RuntimeDirectoryPreserve": "yes"}
# The lock of legacy iptables, where the host has one (iptables-nft takes no lock file).
OPTIONAL_PATHS = (Path("/run/xtables.lock"),)


@cache
def _settings_file() -> dict[str, Any]:
    return json.loads(files("foundry_fleet.deploy").joinpath("unit_settings.json").read_text())


def shared_settings() -> dict[str, str | list[str]]:
    """The [Service] settings of every fleet's unit, shared with the NixOS module."""
    return _settings_file()["service"]


def podman_settings() -> dict[str, str | list[str]]:
    """What the podman runtime adds, after the shared settings: CAP_MKNOD (rootful crun makes the
    containers' device nodes) and writable tunables (netavark turns on net.ipv4.ip_forward)."""
    return _settings_file()["podman"]


@dataclass(frozen=True)
class UnitSpec:
    """What one fleet's unit runs and may touch."""

    command: tuple[str, ...]  # the foundry-fleet executable, then its arguments
    writable: tuple[Path, ...]  # directories the daemon writes, beyond the read-only system
    credentials: dict[str, Path] = field(default_factory=dict)  # name -> the secret's configured path
    after: tuple[str, ...] = ()  # units that must be up first (ZFS mounts)
    extra: dict[str, str | list[str]] = field(default_factory=dict)  # settings after the shared ones


def fleet_unit_spec(executable: Path, config_path: Path, root: Path, release_cache: Path, leave_running: bool,
                    storage: str, runtime: str, credentials: dict[str, Path]) -> UnitSpec:
    """The unit of the fleet whose fleet.toml is `config_path`."""
    command = [str(executable), "--config", str(config_path), "up"]
    if leave_running:
        command.append("--leave-running")
    writable = [root]
    if release_cache != root and root not in release_cache.parents:
        writable.append(release_cache)
    podman = runtime in ("podman", "nomad")  # nomad: this host builds the instances' Podman image
    if podman:
        writable += PODMAN_PATHS
    after = ("zfs-import.target", "zfs-mount.service") if storage == "zfs" else ()
    return UnitSpec(tuple(command), tuple(writable), dict(sorted(credentials.items())), after,
                    {**podman_settings(), **PODMAN_RUN_DIRECTORIES} if podman else {})


def _quote(arg: str) -> str:
    # systemd splits ExecStart= like a shell does for quotes, and expands % and $ itself.
    quoted = shlex.quote(arg) if any(c.isspace() or c in "'\"\\" for c in arg) else arg
    return quoted.replace("%", "%%").replace("$", "$$")


def _path_value(path: Path) -> str:
    text = str(path)
    if any(c.isspace() for c in text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text.replace("%", "%%")


def render_unit(spec: UnitSpec) -> str:
    """The unit file's text."""
    after = ["network-online.target", *spec.after]
    lines = [
        "# Written by `foundry-fleet service install`; `foundry-fleet service uninstall` removes it.",
        "[Unit]",
        "Description=foundry-fleet: Foundry Virtual Tabletop for many game masters",
        # Wants, not Requires: a host whose pools come up another way (zfs-fuse, a custom import) has no
        # such units, and the fleet then checks its pool itself as it starts.
        f"Wants={' '.join(['network-online.target', *spec.after])}",
        f"After={' '.join(after)}",
        "",
        "[Service]",
        f"ExecStart={' '.join(_quote(a) for a in spec.command)}",
        # `systemctl reload`: the daemon reads fleet.toml again on SIGHUP (as `foundry-fleet reload`).
        "ExecReload=/bin/kill -HUP $MAINPID",
    ]
    for key, value in shared_settings().items():
        for one in value if isinstance(value, list) else [value]:
            lines.append(f"{key}={one}")
    for key, value in spec.extra.items():  # after: a string replaces the shared one, a list adds to it
        lines += [f"{key}={one}" for one in (value if isinstance(value, list) else [value])]
    lines.append(f"StateDirectory={STATE_DIRECTORY}")
    lines += [f"ReadWritePaths={_path_value(p)}" for p in spec.writable]
    lines += [f"ReadWritePaths=-{_path_value(p)}" for p in OPTIONAL_PATHS]
    lines += [f"LoadCredential={name}:{_path_value(path)}" for name, path in spec.credentials.items()]
    lines += ["", "[Install]", "WantedBy=multi-user.target", ""]
    return "\n".join(lines)
