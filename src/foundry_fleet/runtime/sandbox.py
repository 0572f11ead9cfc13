"""The bubblewrap sandbox one instance runs in.

Inside, the instance sees only what Foundry needs: the system's programs and libraries (read-only),
its own release (read-only), its own data directory (read-write) and the shared assets (read-only,
at `Data/shared`, because Foundry serves nothing outside `Data/`). Other tenants' directories, the
fleet's database and the host's /home, /root, /var and /sys do not exist in there.

Paths are the same inside and outside, so `argv` and options.json need no translation.

Deliberate choices:
- No `--die-with-parent`: the parent is the control plane, and instances must outlive its restarts.
- No `--new-session`: the task keeps the process group the runtime created, so one killpg reaches
  bwrap, its init and node. TIOCSTI (the reason for --new-session) needs a terminal, and the task has
  none: it runs in a session of its own with stdin on /dev/null.
- A network namespace of its own when the runtime can give it one (network.py): only loopback
  until the forwarder adds the one way in, so tenant code never holds a host port. Without it the
  sandbox keeps the host's network, and the firewall (firewall.py) keeps other machines away from
  the instance port.
- A seccomp filter (seccomp.py), loaded by bwrap just before the command runs, so it binds setpriv
  and the server alike.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from foundry_fleet.domain.instance_layout import SHARED_MOUNT
from foundry_fleet.runtime.base import Capability, TaskSpec

# What node needs from the host, and why:
#   /usr, /bin, /lib, /lib64   node, the ELF loader, libc/libstdc++, ICU and tz data, CA bundle
#                              (on merged-/usr systems the last three are symlinks into /usr)
#   /etc/ssl                   OpenSSL config and the CA links node uses for HTTPS to foundryvtt.com
#   /etc/resolv.conf, /etc/hosts, /etc/nsswitch.conf   name resolution
#   /etc/localtime             local time in log lines
SYSTEM_PATHS = (
    "/usr",
    "/bin",
    "/lib",
    "/lib64",
    "/etc/ssl",
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/nsswitch.conf",
    "/etc/localtime",
    # NixOS: programs and libraries live in the store, and /etc's files are links through /etc/static.
    # Neither exists elsewhere, and a path that does not exist is not mirrored.
    "/nix/store",
    "/etc/static",
)

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


def find_bwrap() -> str | None:
    return shutil.which("bwrap")


def probe(bwrap: str | None, run_as: list[str] | None = None) -> Capability:
    """Run a real (tiny) sandbox once: installed is not the same as usable.

    `run_as` prefixes the command (e.g. setpriv to an unprivileged uid): instances start bwrap as
    their own uid, which needs unprivileged user namespaces, something root's own try cannot show.
    """
    if bwrap is None:
        return Capability(
            "sandbox",
            False,
            "bubblewrap is not installed (apt install bubblewrap): every instance could read the "
            "others' data and write the shared assets wherever file permissions allow",
        )
    argv = [bwrap, "--ro-bind", "/", "/", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
            "--proc", "/proc", "--dev", "/dev", "true"]
    try:
        result = subprocess.run(
            [*(run_as or []), *argv], stdin=subprocess.DEVNULL, capture_output=True, timeout=10, cwd="/"
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Capability("sandbox", False, f"{bwrap} could not run: {exc}")
    if result.returncode != 0:
        err = result.stderr.decode(errors="replace").strip()
        who = " for an unprivileged uid (are user namespaces disabled?)" if run_as else ""
        return Capability("sandbox", False, f"{bwrap} is installed but fails here{who}: {err}")
    return Capability("sandbox", True, f"bubblewrap at {bwrap}: private /proc, pid/ipc/uts namespaces, "
                      "only the instance's own directories visible, shared assets read-only")


class _Mounts:
    """Builds mount options, creating each destination's parents first with mode 0755.

    Privileged bwrap makes missing parents mode 0700 and root-owned; the server, which runs as
    the instance's own uid, could then not reach /etc/ssl or its own data directory.
    """

    def __init__(self) -> None:
        self.args: list[str] = []
        self._made: set[str] = {"/"}

    def _parents(self, dest: str) -> None:
        parents = [str(p) for p in reversed(Path(dest).parents)]
        for parent in parents:
            if parent not in self._made:
                self.args += ["--perms", "0755", "--dir", parent]
                self._made.add(parent)

    def add(self, option: str, source: str, dest: str) -> None:
        self._parents(dest)
        self.args += [option, source, dest]
        self._made.add(dest)

    def tmpfs(self, dest: str) -> None:
        self._parents(dest)
        self.args += ["--tmpfs", dest]
        self._made.add(dest)

    def mirror(self, path: str) -> None:
        """Expose a host path at the same place: symlinks stay symlinks, the rest is bound read-only."""
        if os.path.islink(path):
            self.add("--symlink", os.readlink(path), path)
        elif os.path.exists(path):
            self.add("--ro-bind", path, path)


def _node_dirs(argv0: str, env_path: str) -> list[str]:
    """The node binary's directory, when it lives outside /usr (e.g. /opt/node/bin)."""
    found = shutil.which(argv0, path=env_path) if "/" not in argv0 else argv0
    if not found:
        return []
    dirs = []
    for candidate in {os.path.dirname(os.path.abspath(found)), os.path.dirname(os.path.realpath(found))}:
        if not (candidate == "/usr" or candidate.startswith("/usr/") or candidate in ("/bin", "/sbin")):
            dirs.append(candidate)
    return sorted(dirs)


def sandbox_env(spec: TaskSpec) -> dict[str, str]:
    """The whole environment the server sees: nothing leaks in from the control plane."""
    env = {"PATH": os.environ.get("PATH", DEFAULT_PATH), "LANG": os.environ.get("LANG", "C.UTF-8")}
    env["HOME"] = str(spec.data_dir)
    env.update(spec.env)
    return env


def bwrap_argv(
    spec: TaskSpec,
    command: list[str],
    bwrap: str,
    info_fd: int | None = None,
    privileged: bool | None = None,
    drop_privileges: list[str] | None = None,
    *,
    resolv_conf: Path | None = None,
    seccomp_fd: int | None = None,
) -> list[str]:
    """The full command line: bwrap, its options, `--`, then `command` (the server's argv).

    `resolv_conf`: give the sandbox a network namespace of its own, with this file as its
    /etc/resolv.conf (the forwarder's DNS; the host's may name a resolver the namespace cannot reach).
    `seccomp_fd`: the descriptor (in bwrap) holding the compiled seccomp filter.

    `privileged`: bwrap itself runs as root (default: this process is root).
    `drop_privileges`: a command (setpriv ...) run inside the sandbox that switches to the
    instance's own uid and then execs the server. Dropping inside, after the mounts are made, means
    the instance's uid never needs to reach its directories through the host's parents (a fleet
    under /root works), and the server still ends up with no capabilities at all.
    """
    if privileged is None:
        privileged = os.geteuid() == 0
    env = sandbox_env(spec)
    args = [
        bwrap,
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        *(["--unshare-net"] if resolv_conf is not None else []),
        "--hostname", spec.name,
        "--proc", "/proc",
        "--dev", "/dev",
    ]
    mounts = _Mounts()
    mounts.tmpfs("/tmp")
    for path in SYSTEM_PATHS:
        if path == "/etc/resolv.conf" and resolv_conf is not None:
            mounts.add("--ro-bind", str(resolv_conf), path)
        else:
            mounts.mirror(path)
    for node_dir in _node_dirs(command[0], env["PATH"]):
        mounts.add("--ro-bind", node_dir, node_dir)

    install = str(spec.install_dir)
    real_install = os.path.realpath(install)
    # node resolves the entry script's symlinks, so a linked release must exist at its real path too.
    if real_install != install:
        mounts.add("--ro-bind", real_install, real_install)
    mounts.add("--ro-bind", install, install)

    data = str(spec.data_dir)
    mounts.add("--bind", data, data)
    if spec.shared_dir is not None:
        mounts.add("--ro-bind", str(spec.shared_dir), str(spec.data_dir / SHARED_MOUNT))
    args += mounts.args

    args += ["--chdir", data, "--clearenv"]
    for key, value in env.items():
        args += ["--setenv", key, value]
    if privileged and not drop_privileges:
        # Privileged bwrap would otherwise hand root's capabilities to the server. (With a drop
        # command, setpriv needs them for the switch and clears them all itself.)
        args += ["--cap-drop", "ALL"]
    if seccomp_fd is not None:
        args += ["--seccomp", str(seccomp_fd)]
    if info_fd is not None:
        args += ["--info-fd", str(info_fd)]
    return [*args, "--", *(drop_privileges or []), *command]
