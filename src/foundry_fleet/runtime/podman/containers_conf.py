"""The fleet's own containers.conf: the settings Podman needs on these hosts, in a file the fleet owns.

The host's /etc/containers stays untouched; every podman process the fleet starts (the API service,
and through it conmon and `podman container cleanup`) reads this file through `CONTAINERS_CONF`.

Why each setting (see FIELD-NOTES "Podman"): crun refuses a cgroup hybrid layout (v1 controllers with
the v2 tree beside them), so there `runc`; on a cgroup v2 host `crun`, the runtime Debian and Ubuntu
install with Podman (runc there is often missing), and runc where crun is not installed; without systemd, `cgroupfs` and a file events log; conmon cannot raise its own limits (no
CAP_SYS_RESOURCE), so the containers' default ulimits must fit under conmon's, or every start fails
in setrlimit.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from foundry_fleet.files.atomic import write_atomic

CONF_NAME = "containers.conf"
CONF_ENV = "CONTAINERS_CONF"

# An init that forwards signals to the server: Node as PID 1 would ignore SIGTERM.
INIT_CANDIDATES = ("/usr/libexec/podman/catatonit", "/usr/bin/catatonit")


def find_init() -> str | None:
    for path in INIT_CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    found = shutil.which("catatonit")
    return found


def oci_runtime(cgroup_root: Path = Path("/sys/fs/cgroup"), which=shutil.which) -> str:
    """The OCI runtime podman should use on this host: crun on a cgroup v2 host, else runc, whichever of
    them is installed when only one is."""
    unified = (cgroup_root / "cgroup.controllers").exists()  # v2 alone, mounted at the top
    preferred, other = ("crun", "runc") if unified else ("runc", "crun")
    return preferred if which(preferred) or not which(other) else other


def render(init_path: str | None = None, runtime: str = "runc") -> str:
    lines = [
        "# Written by foundry-fleet; rewritten at every start of the fleet's podman service.",
        "[containers]",
        'default_ulimits = ["nofile=16384:16384", "nproc=32768:32768"]',
        "[engine]",
        f'runtime = "{runtime}"',
        'cgroup_manager = "cgroupfs"',
        'events_logger = "file"',
    ]
    if init_path:
        lines.append(f'init_path = "{init_path}"')
    return "\n".join(lines) + "\n"


def write(directory: Path) -> Path:
    """Write (atomically, only when it changed) `<directory>/containers.conf`; its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CONF_NAME
    text = render(find_init(), oci_runtime())
    try:
        if path.read_text() == text:
            return path
    except OSError:
        pass
    write_atomic(path, text, 0o644)
    return path


def environment(conf: Path) -> dict[str, str]:
    """The environment of a podman process the fleet starts: the host's, with the fleet's config."""
    env = dict(os.environ)
    env[CONF_ENV] = str(conf)
    return env
