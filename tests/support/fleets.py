"""Real fleets for the tests: a fleet root made by `init_fleet`, its ports from the test's own block and
quick supervision settings, driven through the real CLI and daemon."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.cgroups import groups_under
from tests.support.discord_oauth_standin import DiscordOAuthStandin
from tests.support.harness import FleetHarness
from tests.support.ports import port_block

MADE: list[FleetHarness] = []  # every fleet of this run, for the check that none outlives the run


def leftovers_of_made_fleets() -> list[str]:
    """Tear down every fleet of this run that is still running or left control groups or containers
    behind, and say which: each is a test that did not clean up after itself."""
    found = []
    for h in MADE:
        containers = _containers_left(h)
        users = h.exec_users() if h.nomad is not None else []
        if h.running() or groups_under(h.cgroup_parent) or containers or users:
            what = ("daemon still running" if h.running() else
                    f"containers left: {', '.join(containers)}" if containers else
                    f"exec users left: uids {users}" if users else
                    "control groups left")
            try:
                h.tear_down()
                found.append(f"{h.root}: {what}")
            except AssertionError as e:
                found.append(str(e))
    MADE.clear()
    return found


def _containers_left(h: FleetHarness) -> list[str]:
    if not h.uses_podman():
        return []
    try:
        return [c.name for c in h.containers()]
    except AssertionError as e:  # podman could not list them: say why, and let the tear-down try
        return [str(e)]


def zfs_fleet_on(tmp_path: Path, zfs_base: str, disk_mb: int) -> Iterator[FleetHarness]:
    """A fleet whose storage is `zfs_base`, each instance limited to `disk_mb`; stopped (and its processes
    gone) before the datasets go. For fixtures: `yield from zfs_fleet_on(...)`."""
    h = make_fleet(tmp_path, **{"disk_mb = 0": f"disk_mb = {disk_mb}"})
    h.cli("storage", "init", "--zfs", zfs_base)
    yield h
    h.tear_down()


def fleet_up_with(tmp_path: Path, runtime: str, *release_zips: Path, homes: Sequence[Home] = (),
                  zfs_base: str | None = None) -> Iterator[FleetHarness]:
    """A fleet on `runtime` holding `release_zips`, up; torn down afterwards. For module fixtures:
    `yield from fleet_up_with(...)`. `homes` and `zfs_base`: as make_fleet takes them."""
    h = make_fleet(tmp_path, runtime=runtime, homes=homes, zfs_base=zfs_base)
    try:
        for release in release_zips:
            h.cli("release", "add", str(release))
        h.up()
        yield h
    finally:
        h.tear_down()


@dataclass(frozen=True)
class Home:
    """Storage of its own that some Nomad nodes keep instances' data in: one [[nomad.homes]] table."""

    name: str
    nodes: tuple[str, ...]
    root: Path  # as this host reaches it
    zfs_base: str | None = None  # POOL/PATH for a ZFS fleet's home
    node_root: Path | None = None  # as its nodes see it (the stand-in's nodes are this host: another view of root)


@contextmanager
def seen_at(source: Path, view: Path) -> Iterator[Path]:
    """`source` bind-mounted at `view` (made), unmounted afterwards: a home's root as its nodes see it,
    at another path than the fleet's host uses."""
    view.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "--bind", str(source), str(view)], check=True)
    try:
        yield view
    finally:
        done = subprocess.run(["umount", str(view)], capture_output=True, text=True)
        if done.returncode != 0:
            subprocess.run(["umount", "-l", str(view)], check=False)
            raise AssertionError(f"{view} was busy at its unmount: {done.stderr.strip()}")


def make_fleet(tmp_path: Path, runtime: str = "local", homes: Sequence[Home] = (), zfs_base: str | None = None,
               **overrides: str) -> FleetHarness:
    """A fleet at `tmp_path`/fleet whose instances run on `runtime` ("local", "podman" or "nomad");
    `overrides` replace text of the generated fleet.toml (old=new). On "nomad", a stand-in Nomad
    (`h.nomad`) with two nodes, node-a on 127.0.0.1 and node-b on 127.0.0.2, runs the instances with its
    exec driver, its dynamic ports from the fleet's port block; tear_down stops it. `zfs_base`: its
    storage is laid out there (`storage init --zfs`); `homes`: the nodes they name keep data there."""
    from foundry_fleet.services.init import init_fleet

    # Under pytest's own temp dir, whose parents are mode 0700 like /root: instances running as
    # their own uids must work there too.
    root = tmp_path / "fleet"
    config = init_fleet(root)
    h = FleetHarness(root=root, config=config)
    MADE.append(h)
    low = port_block()
    h.edit_config("port_range = [30000, 30999]", f"port_range = [{low}, {low + 49}]")
    # The edge's ports come from the same block: every test fleet runs its own Caddy.
    h.edit_config("http_port = 8080", f"http_port = {low + 80}")
    h.edit_config("https_port = 8443", f"https_port = {low + 81}")
    h.edit_config("web_port = 8099", f"web_port = {low + 82}")
    # Quick supervision so crash handling is observable within a test.
    for key, value in {
        "backoff_initial = 1.0": "backoff_initial = 0.2",
        "backoff_max = 60.0": "backoff_max = 1.0",
        "crash_loop_count = 5": "crash_loop_count = 3",
        "health_interval = 15.0": "health_interval = 0.5",
        "stop_timeout = 10.0": "stop_timeout = 5.0",
        "start_timeout = 120.0": "start_timeout = 20.0",
        "memory_mb = 2048": "memory_mb = 512",
        **overrides,
    }.items():
        h.edit_config(key, value)
    if runtime != "local":
        set_runtime(h, runtime)
    if runtime == "nomad":
        start_nomad(h, tmp_path, (low, low + 49))
    if zfs_base is not None:
        h.cli("storage", "init", "--zfs", zfs_base)
    add_homes(h, homes)
    return h


def add_homes(h: FleetHarness, homes: Sequence[Home]) -> None:
    """`[[nomad.homes]]` tables at the end of the fleet's configuration, one per home."""
    text = h.config.read_text().rstrip("\n") + "\n"
    for home in homes:
        text += f"\n[[nomad.homes]]\nname = {json.dumps(home.name)}\nnodes = {json.dumps(list(home.nodes))}\n" \
                f"root = {json.dumps(str(home.root))}\n"
        if home.zfs_base is not None:
            text += f"zfs_base = {json.dumps(home.zfs_base)}\n"
        if home.node_root is not None:
            text += f"node_root = {json.dumps(str(home.node_root))}\n"
    h.config.write_text(text)


NOMAD_TOKEN = "fleet-test-token"


def start_nomad(h: FleetHarness, tmp_path: Path, port_range: tuple[int, int]) -> None:
    """A stand-in Nomad for the fleet `h`, and its [nomad] section: address, token file (0600), exec tasks."""
    import os

    from tests.support.nomad_standin import NomadStandin, StandinNode

    nodes = [StandinNode("node-a", "127.0.0.1", memory_mb=4096), StandinNode("node-b", "127.0.0.2", memory_mb=4096)]
    h.nomad = NomadStandin(tmp_path / "nomad", nodes, token=NOMAD_TOKEN, port_range=port_range).start()
    token_file = h.root / "nomad-token"
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(NOMAD_TOKEN + "\n")
    set_section(h, "nomad", {"address": h.nomad.url, "token_file": str(token_file), "task_driver": "exec"})


def set_section(h: FleetHarness, name: str, values: dict[str, str]) -> None:
    """Set `values` (strings) in the `[name]` table of the fleet's configuration: in place where the
    table (uncommented) is there already, else as a new table at the end (a commented-out example of it
    stays a comment)."""
    import re

    text = h.config.read_text()
    section = re.search(rf"^\[{re.escape(name)}\]\n(?:(?!\[).*\n?)*", text, re.MULTILINE)
    lines = {key: f"{key} = {json.dumps(value)}" for key, value in values.items()}
    if section is None:
        h.config.write_text(text.rstrip("\n") + f"\n\n[{name}]\n" + "\n".join(lines.values()) + "\n")
        return
    body = section.group(0)
    for key, line in lines.items():
        pattern = re.compile(rf"^{re.escape(key)}\s*=.*$", re.MULTILINE)
        if pattern.search(body):
            body = pattern.sub(lambda _m, line=line: line, body, count=1)
        else:
            body = body.replace(f"[{name}]\n", f"[{name}]\n{line}\n", 1)
    h.config.write_text(text[:section.start()] + body + text[section.end():])


def sign_in_with(h: FleetHarness, discord: DiscordOAuthStandin, admins: Sequence[str] = ()) -> None:
    """Discord sign-in (backups, panel) through the stand-in `discord`, its client secret in a 0600 file;
    `admins`: [discord] admin_users."""
    secret = h.config.parent / "discord-client-secret"
    secret.write_text(discord.client_secret + "\n")
    secret.chmod(0o600)
    h.edit_config("[discord]\n", "\n".join([
        "[discord]", f'client_id = "{discord.client_id}"', 'client_secret_file = "discord-client-secret"',
        f'oauth_base = "{discord.base}"', f'api_base = "{discord.api}"', ""]))
    h.edit_config("admin_users = []", f"admin_users = {json.dumps(list(admins))}")


def set_runtime(h: FleetHarness, driver: str) -> None:
    """`[runtime] driver = ...` in the fleet's configuration, whether or not it names a runtime yet."""
    import re

    text = h.config.read_text()
    section = re.search(r"^\[runtime\]\n(?:(?!\[).*\n)*", text, re.MULTILINE)
    if section is None:
        h.config.write_text(text.rstrip("\n") + f'\n\n[runtime]\ndriver = "{driver}"\n')
        return
    body = section.group(0)
    line = re.compile(r"^driver\s*=.*$", re.MULTILINE)
    new_body = line.sub(f'driver = "{driver}"', body, count=1) if line.search(body) else \
        body.replace("[runtime]\n", f'[runtime]\ndriver = "{driver}"\n', 1)
    h.config.write_text(text[:section.start()] + new_body + text[section.end():])
