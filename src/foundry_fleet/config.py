"""fleet.toml: the fleet's configuration, validated by pydantic with one clear message per bad key."""

from __future__ import annotations

import os
import re
from pathlib import Path
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from foundry_fleet.config_file import (  # noqa: F401 - re-exported: where fleet.toml and the layout are
    CONFIG_ENV, CONFIG_NAME, DEFAULT_ROOT, FleetPaths, find_config, read_toml, resolve_root,
)
from foundry_fleet.credentials import use_loaded_credentials
from foundry_fleet.domain.backup_plan import TimeFormat, parse_plan
from foundry_fleet.domain.crash_policy import CrashPolicy
from foundry_fleet.domain.errors import InvalidInput
from foundry_fleet.domain.homes import HOME_NAME, MAIN_HOME
from foundry_fleet.domain.idle import OFF, format_idle_after, parse_idle_after
from foundry_fleet.domain.hosts import validate_host_label
from foundry_fleet.domain.names import validate_domain
from foundry_fleet.domain.private_address import private_listen_address
from foundry_fleet.domain.tenant_pages import DEFAULT_OPERATOR, Operator, validate_contact, validate_operator_name


# Where foundryvtt.com serves release zips from (timed URLs point at these).
DEFAULT_DOWNLOAD_HOSTS = ["foundryvtt.com", "*.foundryvtt.com"]


def _as_value_error(validate: Callable[[str], str], value: str) -> str:
    """A domain rule's refusal as the ValueError pydantic reports with the key's name."""
    try:
        return validate(value)
    except InvalidInput as e:
        raise ValueError(e.message) from None


class _Section(BaseModel):
    # inf and nan are valid TOML floats: an infinite timeout or delay would stall, or overflow a
    # timer (asyncio and time.sleep raise OverflowError), so every float must be finite.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


HOUR = 3600.0
DAY = 24 * HOUR


class FleetSection(_Section):
    root: Path = Field(description="where the fleet keeps its state; relative paths are relative to fleet.toml")
    domain: str = Field("localhost", description="tenant hosts are <instance>.<domain>")
    fleet_host: str = Field("fleet", description="the fleet's own host label: <fleet_host>.<domain>")
    operator_name: str = Field(DEFAULT_OPERATOR, description="who hosts this fleet, on the pages players see")
    contact: str = Field("", description="an e-mail address or an http(s) URL shown on those pages")

    @field_validator("operator_name")
    @classmethod
    def _operator_name(cls, v: str) -> str:
        return _as_value_error(validate_operator_name, v)

    @field_validator("contact")
    @classmethod
    def _contact(cls, v: str) -> str:
        return _as_value_error(validate_contact, v)

    @property
    def operator(self) -> Operator:
        return Operator(self.operator_name, self.contact)

    @field_validator("domain")
    @classmethod
    def _domain(cls, v: str) -> str:
        return _as_value_error(validate_domain, v)

    @field_validator("fleet_host")
    @classmethod
    def _fleet_host(cls, v: str) -> str:
        # It reaches Caddy's host matcher: a placeholder such as {http.request.host} would match any host.
        return _as_value_error(lambda value: validate_host_label(value, "fleet_host"), v)


class EdgeSection(_Section):
    http_port: int = Field(8080, ge=1, le=65535)
    https_port: int = Field(8443, ge=1, le=65535)
    tls: Literal["internal", "acme", "on-demand"] = "internal"
    acme_email: str = ""
    acme_staging: bool = Field(False, description="use Let's Encrypt's staging CA (for trying things out)")
    web_port: int = Field(8099, ge=1, le=65535, description="loopback port of the fleet's own web endpoints")
    stream_close_delay_hours: float = Field(8.0, gt=0, le=24 * 30,
                                            description="open websockets survive config reloads this long")
    caddy_binary: str | None = Field(None, description="default: the caddy that comes with foundry-fleet")
    on_nomad: bool = Field(False, description="run Caddy as a Nomad service job (runtime nomad); the fleet "
                                              "still configures it through its admin API")

    @model_validator(mode="after")
    def _distinct_ports(self) -> EdgeSection:
        ports = [self.http_port, self.https_port, self.web_port]
        if len(set(ports)) != 3:
            raise ValueError("http_port, https_port and web_port must all differ")
        return self


def _checked_zfs_base(value: str | None) -> str | None:
    if value is None:
        return None
    from foundry_fleet.storage.zfs_layout import parse_base

    try:
        return parse_base(value)[1]
    except InvalidInput as e:
        raise ValueError(e.message) from None


class StorageSection(_Section):
    driver: Literal["directory", "zfs"] = "directory"
    zfs_base: str | None = Field(None, description="POOL or POOL/PATH holding the fleet's datasets (zfs driver)")

    @field_validator("zfs_base")
    @classmethod
    def _zfs_base(cls, value: str | None) -> str | None:
        return _checked_zfs_base(value)

    @model_validator(mode="after")
    def _base_for_zfs(self) -> StorageSection:
        if self.driver == "zfs" and not self.zfs_base:
            raise ValueError('driver = "zfs" needs zfs_base = "POOL[/PATH]" (see `foundry-fleet storage init --zfs`)')
        return self


class ReleasesSection(_Section):
    cache_dir: Path | None = Field(None, description="host-wide release cache; default <root>/releases")
    allowed_hosts: list[str] = Field(default_factory=lambda: list(DEFAULT_DOWNLOAD_HOSTS))
    allow_private_addresses: bool = Field(False, description="tests only: allow loopback/private download hosts")
    extra_ca_file: Path | None = Field(None, description="tests only: trust this CA for downloads")
    account_site: str = Field("https://foundryvtt.com",
                              description="tests only: the site `release add --account` logs in to")
    max_download_mb: int = Field(2048, ge=1)
    max_unpacked_mb: int = Field(4096, ge=1)
    max_entries: int = Field(200_000, ge=1)


class RuntimeSection(_Section):
    driver: str = Field("local", description='what runs instances: "local" (bubblewrap on this host), '
                                             '"podman" (a rootful Podman container each; see [podman]), '
                                             '"fake" (in memory, for tests)')

    @field_validator("driver")
    @classmethod
    def _known_driver(cls, v: str) -> str:
        from foundry_fleet.wiring.runtimes import RUNTIMES  # the registry: one line per driver

        if v not in RUNTIMES:
            raise ValueError(f"unknown runtime driver {v!r}; known: {', '.join(sorted(RUNTIMES))}")
        return v


class PodmanSection(_Section):
    """The podman runtime: which API socket, which Node.js image per Node major.

    `image_node<major>` keys (any major), e.g. `image_node20 = "docker.io/library/node:20-slim"`: the
    image to run for that Node major, pulled when not present; without one (or when it cannot be had)
    the fleet builds an image offline from the host's node binary.
    """

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    socket: Path | None = Field(None, description="an already running Podman API socket; default: the fleet "
                                                  "runs its own at <root>/run/podman/podman.sock")
    pull_timeout: float = Field(60.0, gt=0, le=HOUR, description="seconds a configured image may take to pull")

    @model_validator(mode="after")
    def _image_keys(self) -> PodmanSection:
        for key, value in (self.model_extra or {}).items():
            if not re.fullmatch(r"image_node[0-9]{1,3}", key):
                raise ValueError(f"unknown key {key!r}: [podman] takes socket, pull_timeout and "
                                 "image_node<major> (e.g. image_node20)")
            if not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value):
                raise ValueError(f"{key} must be an image reference such as \"docker.io/library/node:20-slim\"")
        return self

    def image_for(self, major: int) -> str | None:
        """The configured image for Node.js `major`, or None."""
        value = (self.model_extra or {}).get(f"image_node{major}")
        return value if isinstance(value, str) else None




class HomeSection(_Section):
    """Storage of their own for some Nomad nodes (`[[nomad.homes]]`): an instance whose home it is keeps its
    data there, runs only on its nodes, and `instance move` sends the data when it changes home.

    The fleet's host reaches every home's files itself: `root` is a path it can read and write (a pool
    imported here, a node's fleet dataset mounted here). A ZFS home's commands run here, or with `ssh` on
    the host whose pool it is (then its datasets are mounted at `root` there, and `root` here is a mount of
    that same tree)."""

    name: str = Field(pattern=HOME_NAME.pattern, description=f'the home\'s name (not "{MAIN_HOME}", the fleet\'s own)')
    nodes: list[str] = Field(min_length=1, description="the Nomad node names that see this home")
    root: Path = Field(description="the home's fleet root as the fleet's host reaches it (absolute)")
    node_root: Path | None = Field(None, description="the same as the home's nodes see it; default: root")
    zfs_base: str | None = Field(None, description="POOL[/PATH] of the home's datasets ([storage] driver = \"zfs\")")
    ssh: str | None = Field(None, description="ZFS: [user@]host whose pool this is; its zfs/zpool commands run "
                                              "there over ssh")
    ssh_command: list[str] = Field(default_factory=lambda: ["ssh"], min_length=1,
                                   description='with ssh: the ssh to run, e.g. ["ssh", "-i", "/etc/foundry-fleet/key"]')

    @field_validator("name")
    @classmethod
    def _not_main(cls, v: str) -> str:
        if v == MAIN_HOME:
            raise ValueError(f'"{MAIN_HOME}" is the fleet\'s own home (its root and the nodes in no other home): '
                             "name this one differently")
        return v

    @field_validator("nodes")
    @classmethod
    def _nodes(cls, v: list[str]) -> list[str]:
        for node in v:
            if not node or len(node) > 255 or any(c.isspace() for c in node) or not node.isprintable():
                raise ValueError(f"{node[:80]!r} is not a Nomad node name (as `foundry-fleet status` lists nodes)")
        if len(v) != len(set(v)):
            raise ValueError("a node is listed twice")
        return v

    @field_validator("root", "node_root")
    @classmethod
    def _absolute(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_absolute():
            raise ValueError(f"{str(v)!r} is not an absolute path")
        return v

    @field_validator("zfs_base")
    @classmethod
    def _zfs_base(cls, value: str | None) -> str | None:
        return _checked_zfs_base(value)

    @field_validator("ssh")
    @classmethod
    def _ssh_host(cls, value: str | None) -> str | None:
        from foundry_fleet.storage.zfs_cmd import is_user_host

        if value is not None and not is_user_host(value):
            raise ValueError(f"ssh = {value[:80]!r} is not [user@]host (e.g. \"root@node-b\")")
        return value

    @model_validator(mode="after")
    def _ssh_alone(self) -> HomeSection:
        if self.ssh is None and "ssh_command" in self.model_fields_set:
            raise ValueError(f"[[nomad.homes]] {self.name!r} has ssh_command but no ssh: add ssh = \"[user@]host\" "
                             "(the host whose pool this is), or remove ssh_command")
        if self.ssh is not None and self.node_root is not None and self.node_root != self.root:
            raise ValueError(f"[[nomad.homes]] {self.name!r} is driven over ssh, so its datasets are mounted at its "
                             f"root ({str(self.root)!r}) on {self.ssh} and the fleet's host must see them at that "
                             f"same path: remove node_root ({str(self.node_root)!r}) and mount the tree there")
        return self

    @property
    def nodes_root(self) -> Path:
        """The home's root as its nodes see it."""
        return self.node_root or self.root


_NOMAD_NAME = re.compile(r"^[a-zA-Z0-9-]{1,128}$")  # Nomad's namespace and region names
_DURATION = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(ms|s|m)$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0}


class NomadSection(_Section):
    """The nomad runtime: which Nomad, and how the fleet's jobs run there (see README, Nomad)."""

    address: str = Field("http://127.0.0.1:4646", description="Nomad's HTTP API, http:// or https://")
    region: str | None = Field(None, description="default: the agent's own region")
    namespace: str = Field("default", description="the namespace of the fleet's jobs")
    token_file: Path | None = Field(None, description="the ACL token, a 0600 file of the fleet's user")
    ca_file: Path | None = Field(None, description="the CA that signed Nomad's TLS certificate (https)")
    datacenters: list[str] = Field(default_factory=lambda: ["*"], min_length=1,
                                   description="where the fleet's jobs may run (globs allowed)")
    task_driver: Literal["podman", "exec"] = Field("podman", description="how an instance runs on its node")
    mhz_per_core: int = Field(2000, ge=1, le=100_000, description="CPU MHz that [limits] cpu_percent = 100 means")
    timeout: float = Field(10.0, gt=0, le=10 * 60, description="seconds each API call may take")
    wait: float = Field(300.0, gt=0, le=600, description='a blocking query\'s wait: seconds, or "300s", "5m"')
    node_root: Path | None = Field(None, description="the fleet root as the nodes see it; default: the fleet root")
    homes: list[HomeSection] = Field(default_factory=list, description="nodes keeping instances' data on "
                                                                       "storage of their own ([[nomad.homes]])")

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{v!r} is not an http:// or https:// URL, e.g. \"http://127.0.0.1:4646\"")
        if parts.username or parts.password or parts.query or parts.fragment or parts.path not in ("", "/"):
            raise ValueError(f"{v!r} must be only scheme, host and port, e.g. \"https://nomad.example.org:4646\" "
                             "(the ACL token goes in token_file)")
        try:
            parts.port  # noqa: B018 - raises on a port out of range
        except ValueError:
            raise ValueError(f"{v!r} has a port out of range") from None
        return v.rstrip("/")

    @field_validator("region", "namespace")
    @classmethod
    def _nomad_name(cls, v: str | None) -> str | None:
        if v is not None and not _NOMAD_NAME.match(v):
            raise ValueError(f"{v!r} is not a Nomad name (letters, digits and dashes, at most 128)")
        return v

    @field_validator("datacenters")
    @classmethod
    def _datacenters(cls, v: list[str]) -> list[str]:
        for dc in v:
            if not dc or any(c.isspace() for c in dc):
                raise ValueError(f"datacenter {dc!r} is empty or has a space")
        return v

    @field_validator("wait", mode="before")
    @classmethod
    def _wait(cls, v: object) -> object:
        if isinstance(v, str):
            m = _DURATION.match(v.strip())
            if not m:
                raise ValueError(f"{v!r} is not a duration: use seconds (300) or \"300s\", \"5m\"")
            return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        return v

    @model_validator(mode="after")
    def _tls(self) -> NomadSection:
        if self.ca_file is not None and not self.address.startswith("https://"):
            raise ValueError("ca_file is set but address is not https://: the CA would not be used")
        return self

    @model_validator(mode="after")
    def _homes_apart(self) -> NomadSection:
        names: set[str] = set()
        home_of_node: dict[str, str] = {}
        for home in self.homes:
            if home.name in names:
                raise ValueError(f"two [[nomad.homes]] are named {home.name!r}")
            names.add(home.name)
            for node in home.nodes:
                if node in home_of_node:
                    raise ValueError(f"node {node!r} is in homes {home_of_node[node]!r} and {home.name!r}: a node "
                                     "sees one home's storage")
                home_of_node[node] = home.name
        return self

    def home_of_node(self, node: str) -> str:
        """The home a node keeps instances' data in: the one listing it, else the fleet's own."""
        return next((h.name for h in self.homes if node in h.nodes), MAIN_HOME)


class NodeSection(_Section):
    default: str = Field("node", description="node binary used when no per-major binary is set")
    binaries: dict[str, str] = Field(default_factory=dict, description='per Foundry major, e.g. "14" = "/opt/node24/bin/node"')

    @field_validator("binaries")
    @classmethod
    def _majors(cls, v: dict[str, str]) -> dict[str, str]:
        for key in v:
            if not key.isdigit():
                raise ValueError(f"key {key!r} is not a Foundry major version number")
        return v

    def binary_for(self, generation: int) -> str:
        return self.binaries.get(str(generation), self.default)


class InstancesSection(_Section):
    port_range: tuple[int, int] = (30000, 30999)
    uid_range: tuple[int, int] = Field((200000, 265535), description="uids for instances when run as root")
    stop_timeout: float = Field(10.0, gt=0, le=HOUR)
    idle_after: str = Field(OFF, description="an instance idle this long sleeps and wakes on the next visit "
                                             "(e.g. 60min, 2h); off: never")
    wake_reserve_mb: int = Field(256, ge=0, description="memory a wake leaves free for the host, besides the "
                                                        "instance's own limit")

    @field_validator("idle_after")
    @classmethod
    def _idle_after(cls, v: str) -> str:
        try:
            return format_idle_after(parse_idle_after(v))
        except InvalidInput as e:
            raise ValueError(f"{e.message} ({e.hint})") from None

    @property
    def idle_after_seconds(self) -> float | None:
        return parse_idle_after(self.idle_after)

    @model_validator(mode="after")
    def _ranges(self) -> InstancesSection:
        lo, hi = self.port_range
        if not (1024 <= lo <= hi <= 65535):
            raise ValueError("port_range must be [low, high] with 1024 <= low <= high <= 65535")
        ulo, uhi = self.uid_range
        if not (1000 <= ulo <= uhi < 2**31):
            raise ValueError("uid_range must be [low, high] with 1000 <= low <= high")
        return self


class SupervisorSection(_Section):
    backoff_initial: float = Field(1.0, gt=0, le=HOUR)
    backoff_max: float = Field(60.0, gt=0, le=DAY)
    crash_loop_count: int = Field(5, ge=1, description="more crashes than this ...")
    crash_loop_minutes: float = Field(10.0, gt=0, le=7 * 24 * 60, description="... within this many minutes: failed")
    stable_after: float = Field(60.0, gt=0, le=DAY)
    health_interval: float = Field(15.0, gt=0, le=HOUR, description="a crash is noticed at once; checks find hangs")
    health_timeout: float = Field(2.0, gt=0, le=10 * 60)
    health_failures: int = Field(3, ge=1, description="consecutive failed checks of a running instance before a restart")
    start_timeout: float = Field(120.0, gt=0, le=HOUR)

    def crash_policy(self) -> CrashPolicy:
        return CrashPolicy(
            backoff_initial=self.backoff_initial,
            backoff_max=self.backoff_max,
            max_crashes=self.crash_loop_count,
            window=self.crash_loop_minutes * 60,
            stable_after=self.stable_after,
        )


def _checked_plan(v: str) -> str:
    try:
        return str(parse_plan(v))
    except InvalidInput as e:  # pydantic names the key only for a ValueError
        raise ValueError(f"{e.message} ({e.hint})") from None


class DestinationSection(_Section):
    """A place the snapshots are copied to, kept by its own plan."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,39}$")
    # ZFS storage: POOL[/PATH] on this host, or [user@]host:POOL[/PATH] over ssh.
    # Directory storage: a restic repository (a path, or any restic backend URL such as sftp:... or s3:...).
    target: str = Field(min_length=1)
    plan: str = Field(description="znapzend syntax: what the destination keeps")
    instances: list[str] = Field(default_factory=list, description="only these instances; empty: all")
    password_file: Path | None = Field(None, description="restic: the repository's password, a 0600 file")
    ssh_command: list[str] = Field(default_factory=lambda: ["ssh"], min_length=1,
                                   description='ZFS over ssh: the ssh to run, e.g. ["ssh", "-p", "2222", "-i", "key"]')

    _plan = field_validator("plan")(_checked_plan)


class BackupsSection(_Section):
    plan: str = Field("7d=>1h,30d=>1d,1y=>1w", description="znapzend syntax: retention=>interval,...")
    tsformat: str = Field("%Y-%m-%d-%H%M%SZ", description="snapshot names; a trailing Z means UTC")
    destinations: list[DestinationSection] = Field(default_factory=list)

    @field_validator("destinations")
    @classmethod
    def _unique_destinations(cls, v: list[DestinationSection]) -> list[DestinationSection]:
        names = [d.name for d in v]
        if len(names) != len(set(names)):
            raise ValueError("two backup destinations have the same name")
        return v

    _plan = field_validator("plan")(_checked_plan)

    @field_validator("tsformat")
    @classmethod
    def _tsformat(cls, v: str) -> str:
        try:
            TimeFormat(v)
        except InvalidInput as e:
            raise ValueError(f"{e.message} ({e.hint})") from None
        return v


class LimitsSection(_Section):
    memory_mb: int = Field(2048, ge=64)
    cpu_percent: int = Field(100, ge=1, description="100 = one core")
    pids: int = Field(512, ge=16)
    disk_mb: int = Field(0, ge=0, description="limit on each instance's data and snapshots together; 0: none")


class LogsSection(_Section):
    max_kb: int = Field(10240, ge=1)
    keep: int = Field(5, ge=1)


_SNOWFLAKE = r"^[0-9]{15,21}$"


class DiscordSection(_Section):
    """The bot, and Discord sign-in for tenants' backup pages. The fleet runs fine with neither."""

    token_file: Path | None = Field(None, description="the bot token, a 0600 file; set: `up` starts the bot")
    guild_id: str | None = Field(None, pattern=_SNOWFLAKE, description="the server whose members the bot serves")
    admin_role: str = Field("fleet-admin", min_length=1, max_length=100, description="members with it are admins")
    admin_users: list[str] = Field(default_factory=list, description="Discord user ids that are always admins")
    ops_channel_id: str | None = Field(None, pattern=_SNOWFLAKE, description="where status updates go")
    client_id: str | None = Field(None, pattern=_SNOWFLAKE, description="OAuth2 application id (backup sign-in)")
    client_secret_file: Path | None = Field(None, description="OAuth2 client secret, a 0600 file")
    oauth_base: str = Field("https://discord.com", description="tests only: a stand-in Discord")
    api_base: str = Field("https://discord.com/api", description="tests only: a stand-in Discord API")
    session_hours: float = Field(12.0, gt=0, le=24 * 30, description="how long a sign-in lasts (backups and the panel)")
    attachment_hosts: list[str] = Field(default_factory=lambda: ["cdn.discordapp.com", "media.discordapp.net"],
                                        description="tests only: where zips attached to /fleet import come from")

    @field_validator("admin_users")
    @classmethod
    def _admin_users(cls, v: list[str]) -> list[str]:
        import re

        bad = [u for u in v if not re.match(_SNOWFLAKE, u)]
        if bad:
            raise ValueError(f"{bad[0]!r} is not a Discord user id (15-21 digits; Developer Mode: Copy User ID)")
        return v

    @property
    def login_enabled(self) -> bool:
        return self.client_id is not None and self.client_secret_file is not None


class PanelSection(_Section):
    """The web panel at https://<fleet host>/ and the resource figures it shows."""

    enabled: bool = Field(True, description="serve the panel on the fleet host")
    sample_interval: float = Field(30.0, ge=1, le=HOUR, description="seconds between two samples of each "
                                   "running instance's memory and CPU (kept in memory for the last hour)")
    history_minutes: int = Field(60, ge=1, le=24 * 60, description="how much of the samples is kept")
    sampling: bool = Field(True, description="sample the running instances' memory and CPU at all (off: the panel "
                           "and /metrics show none)")


class MetricsSection(_Section):
    """/metrics in Prometheus' text format."""

    token_file: Path | None = Field(None, description="the bearer token scrapers send to "
                                    "https://<fleet host>/metrics, a 0600 file; default <root>/state/metrics.token, "
                                    "made on first use")
    listen: str = Field("", description='also serve /metrics without a token on this loopback or private '
                        'address, e.g. "127.0.0.1:9464"; empty: not')

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        # Whoever reaches this address reads the metrics without a token: never a public one.
        if not v.strip():
            return ""
        try:
            host, port = private_listen_address(v)
        except InvalidInput as e:
            raise ValueError(f"{e.message} ({e.hint})") from None
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @property
    def listen_address(self) -> tuple[str, int] | None:
        """(host, port) of the token-free door; None: there is none."""
        return private_listen_address(self.listen) if self.listen else None


class SftpSection(_Section):
    """Tenants' file access over SFTP: one account per instance, confined to its Data/ folder."""

    enabled: bool = Field(False, description="serve SFTP (public keys only, registered per instance)")
    listen: str = Field("0.0.0.0:2222", description='"host:port" the SFTP endpoint listens on')
    max_sessions: int = Field(4, ge=1, le=100, description="concurrent SFTP connections per instance")

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        host, _, port = v.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError('expected "host:port", e.g. "0.0.0.0:2222"')
        return v

    @property
    def listen_address(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


class FleetConfig(_Section):
    fleet: FleetSection
    edge: EdgeSection = EdgeSection()
    storage: StorageSection = StorageSection()
    releases: ReleasesSection = ReleasesSection()
    node: NodeSection = NodeSection()
    runtime: RuntimeSection = RuntimeSection()
    podman: PodmanSection = PodmanSection()
    nomad: NomadSection = NomadSection()
    instances: InstancesSection = InstancesSection()
    supervisor: SupervisorSection = SupervisorSection()
    limits: LimitsSection = LimitsSection()
    backups: BackupsSection = BackupsSection()
    logs: LogsSection = LogsSection()
    discord: DiscordSection = DiscordSection()
    panel: PanelSection = PanelSection()
    metrics: MetricsSection = MetricsSection()
    sftp: SftpSection = SftpSection()

    @model_validator(mode="after")
    def _edge_on_nomad(self) -> FleetConfig:
        if self.edge.on_nomad and self.runtime.driver != "nomad":
            raise ValueError('[edge] on_nomad = true needs [runtime] driver = "nomad"')
        return self

    @model_validator(mode="after")
    def _homes_storage(self) -> FleetConfig:
        """Each home is storage of its own: its root and datasets are nobody else's, and it uses the
        fleet's storage driver."""
        roots = [(MAIN_HOME, self.fleet.root)]
        bases = [(MAIN_HOME, self.storage.zfs_base)] if self.storage.zfs_base else []
        for home in self.nomad.homes:
            where = f"[[nomad.homes]] {home.name!r}"
            if self.storage.driver == "zfs" and not home.zfs_base:
                raise ValueError(f'{where} needs zfs_base = "POOL[/PATH]": the fleet\'s [storage] driver is "zfs", '
                                 "and every home uses it")
            if self.storage.driver != "zfs" and home.ssh:
                raise ValueError(f'{where} has ssh but the fleet\'s [storage] driver is "{self.storage.driver}": a '
                                 "directory home on another machine is reached through its mount at root; "
                                 "remove ssh (and ssh_command)")
            if self.storage.driver != "zfs" and home.zfs_base:
                raise ValueError(f'{where} has zfs_base but the fleet\'s [storage] driver is "{self.storage.driver}": '
                                 "remove zfs_base (the home keeps directories under its root)")
            for other, root in roots:
                if _overlaps(home.root, root):
                    raise ValueError(f"{where} root {str(home.root)!r} overlaps the root of home {other!r} "
                                     f"({str(root)!r}): "
                                     "each home needs a root of its own, neither inside the other")
            roots.append((home.name, home.root))
            if home.zfs_base:
                for other, base in bases:
                    if _overlaps_dataset(home.zfs_base, base):
                        raise ValueError(f"{where} zfs_base {home.zfs_base!r} overlaps the datasets of home "
                                         f"{other!r} ({base!r}): "
                                         "each home needs datasets of its own")
                bases.append((home.name, home.zfs_base))
        return self

    def home(self, name: str) -> HomeSection | None:
        """The `[[nomad.homes]]` named `name`; None for the fleet's own home (and unknown names)."""
        return next((h for h in self.nomad.homes if h.name == name), None)

    @property
    def home_names(self) -> tuple[str, ...]:
        return (MAIN_HOME, *(h.name for h in self.nomad.homes))

    @property
    def root(self) -> Path:
        return self.fleet.root

    @property
    def paths(self) -> FleetPaths:
        return FleetPaths(self.fleet.root, self.releases.cache_dir or self.fleet.root / "releases")

    def host_for(self, instance: str) -> str:
        return f"{instance}.{self.fleet.domain}"

    def public_url(self, instance: str) -> str:
        port = "" if self.edge.https_port == 443 else f":{self.edge.https_port}"
        return f"https://{self.host_for(instance)}{port}/-/"


def _overlaps(a: Path, b: Path) -> bool:
    a, b = Path(os.path.normpath(a)), Path(os.path.normpath(b))
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


def _overlaps_dataset(a: str, b: str) -> bool:
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def _describe(err: ValidationError, path: Path) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"])
    more = len(err.errors()) - 1
    tail = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    where = f"[{key}] " if key else ""  # a rule across sections has no one key to name
    return f"{path}: {where}{first['msg']}{tail}"


def load_config(path: Path) -> FleetConfig:
    raw = read_toml(path)
    base = path.resolve().parent
    resolve_root(raw, path)
    releases = raw.get("releases")
    if isinstance(releases, dict) and isinstance(releases.get("cache_dir"), str):
        releases["cache_dir"] = str((base / releases["cache_dir"]).resolve())
    podman = raw.get("podman")
    if isinstance(podman, dict) and isinstance(podman.get("socket"), str) and podman["socket"]:
        podman["socket"] = str((base / podman["socket"]).resolve())
    nomad = raw.get("nomad")
    if isinstance(nomad, dict):
        for key in ("token_file", "ca_file", "node_root"):
            if isinstance(nomad.get(key), str) and nomad[key]:
                nomad[key] = str((base / nomad[key]).resolve())
        # A home's roots stay as written: they must be absolute (a relative one is refused, not guessed).
    metrics = raw.get("metrics")
    if isinstance(metrics, dict) and isinstance(metrics.get("token_file"), str) and metrics["token_file"]:
        metrics["token_file"] = str((base / metrics["token_file"]).resolve())
    discord = raw.get("discord")
    if isinstance(discord, dict):
        for key in ("token_file", "client_secret_file"):
            if isinstance(discord.get(key), str) and discord[key]:
                discord[key] = str((base / discord[key]).resolve())
    backups = raw.get("backups")
    for dest in (backups.get("destinations") or []) if isinstance(backups, dict) else []:
        if isinstance(dest, dict) and isinstance(dest.get("password_file"), str):
            dest["password_file"] = str((base / dest["password_file"]).resolve())
    use_loaded_credentials(raw)
    try:
        return FleetConfig.model_validate(raw)
    except ValidationError as e:
        raise InvalidInput(_describe(e, path), "fix that key in fleet.toml (see the comments there)") from None
