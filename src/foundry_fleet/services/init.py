"""`foundry-fleet init`: write a documented fleet.toml and lay out the fleet root."""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path

from foundry_fleet.config import CONFIG_NAME, load_config
from foundry_fleet.domain.errors import Conflict, InvalidInput
from foundry_fleet.domain.names import validate_domain
from foundry_fleet.domain.ports import parse_port_range
from foundry_fleet.files.atomic import write_atomic
from foundry_fleet.services.uid_claims import choose_block

TEMPLATE = """\
# foundry-fleet configuration. Every key is optional except [fleet] root; the values below are
# the defaults unless `foundry-fleet init` was told otherwise. Relative paths are relative to this file.

[fleet]
# Where the fleet keeps its state: state/fleet.sqlite, shared/, instances/<name>/{{data,install}},
# releases/ (the release cache), logs/, run/ (control socket, locks).
root = {root}
# Tenants reach their instance at https://<instance>.<domain>/-/
domain = {domain}
# The fleet's own host: <fleet_host>.<domain>
fleet_host = "fleet"
# Who hosts this fleet, and how players reach you (an e-mail address or an http(s) URL): shown on the
# pages a player sees when a table is closed, suspended or cannot start.
# operator_name = "this fleet's host"
# contact = "host@example.org"

[edge]
http_port = {http_port}
https_port = {https_port}
# internal: a local CA (no domain needed); acme: Let's Encrypt (needs a public domain and ports 80/443);
# on-demand: certificates only for hostnames of existing instances.
tls = {tls}
acme_email = ""
acme_staging = false
# The fleet's own web endpoints (health, TLS permission, backup sign-in) listen on loopback here;
# Caddy publishes them at https://<fleet_host>.<domain>/.
web_port = {web_port}
# Open websockets survive a config reload for this long, so changing one tenant never
# disconnects another tenant's players.
stream_close_delay_hours = 8.0
# caddy_binary = "/usr/local/bin/caddy"   # default: the caddy that comes with foundry-fleet
# on_nomad = false   # runtime nomad: run Caddy as a Nomad job (fvtt-caddy), still configured by the fleet

[storage]
# directory: plain directories (the embedded default). zfs: datasets under zfs_base, laid out by
# `foundry-fleet storage init --zfs POOL[/PATH]` (which also sets these two keys).
driver = "directory"
# zfs_base = "tank/foundry"

[runtime]
# What runs each instance. local: a bubblewrap sandbox on this host (own network namespace, cgroup
# limits, seccomp). podman: a rootful Podman container per instance (see [podman]). nomad: a Nomad job per
# instance, on one node or many (see [nomad]). Switch a fleet with
# `foundry-fleet runtime set DRIVER` while its instances are stopped.
driver = {runtime}

# [podman]
# The image per Node.js major (any major: image_node<N>), pulled where a registry is reachable; without
# one, or when it cannot be pulled, the fleet builds localhost/foundry-fleet/node:<version> offline from
# this host's node binary (`foundry-fleet runtime image` builds it ahead of time).
# image_node20 = "docker.io/library/node:20-slim"
# A podman API service that already runs; default: the fleet starts its own on run/podman/podman.sock,
# with its own containers.conf beside it.
# socket = "/run/podman/podman.sock"
# pull_timeout = 60.0

{nomad}
[releases]
# The host-wide release cache (zips and unpacked releases); default <root>/releases.
# cache_dir = "/var/cache/foundry-fleet"
# Download hosts allowed for `release add URL` (exact, or *.suffix). HTTPS only, never private addresses.
allowed_hosts = ["foundryvtt.com", "*.foundryvtt.com"]
max_download_mb = 2048
max_unpacked_mb = 4096
max_entries = 200000

[node]
# Node.js binary per Foundry major (v12: 18-20, v13: 20-22, v14: 24). Unset majors use `default`.
default = "node"
# binaries = {{ "14" = "/opt/node-24/bin/node" }}

[instances]
# Instance ports; firewalled from other machines when the fleet runs as root (players use the edge).
port_range = [{port_low}, {port_high}]
# Each instance runs as its own user from this range when the fleet runs as root. Chosen by `init`
# so that no other fleet, user, group or /etc/subuid range on this host uses it; the daemon refuses
# to start while another fleet or a process that is not one of its instances uses one of these ids.
uid_range = [{uid_low}, {uid_high}]
# Seconds between SIGTERM and SIGKILL when stopping an instance.
stop_timeout = 10.0
# An instance without connected players and without visits for this long sleeps (its server stops,
# its memory is freed) and wakes when someone opens its URL; `off`: never. Per instance:
# `foundry-fleet instance set NAME --idle-after 2h|off|fleet`.
idle_after = "60min"
# A wake is refused (the page says the host is full, admins are told) unless the host's free memory
# covers the instance's [limits] memory_mb plus this.
wake_reserve_mb = 256

[supervisor]
backoff_initial = 1.0      # seconds before the first restart after a crash, doubling each time
backoff_max = 60.0
crash_loop_count = 5       # more crashes than this ...
crash_loop_minutes = 10.0  # ... within this window marks the instance failed
stable_after = 60.0        # a run this long resets the backoff
health_interval = 15.0     # seconds between health checks of /-/api/status (exits are noticed at once)
health_timeout = 2.0
health_failures = 3        # failed checks in a row before a running instance is restarted
start_timeout = 120.0      # seconds an instance may take to become healthy

[limits]
# Per instance, applied through cgroups where the host allows it.
memory_mb = 2048
cpu_percent = 100          # 100 = one core
pids = 512
# disk_mb limits what each instance keeps: its data and its snapshots together (0: no limit). On ZFS it
# is a quota (the tenant's writes fail at it); on directory storage the fleet cannot stop a write, so
# new snapshots of an instance at its limit are refused (a restore's safety snapshot and a delete's
# final one never are), and the owner and ops are told. Both warn above 90 %.
disk_mb = 0

[backups]
# Snapshots of every instance's data, in znapzend's syntax: keep one per hour for 7 days, one per day
# for 30 days, one per week for a year (units: s, min, h, d, w, m = month, y). `foundry-fleet backup
# plan NAME PLAN` overrides it for one instance. Manual snapshots (`backup now`) are never thinned.
plan = "7d=>1h,30d=>1d,1y=>1w"
tsformat = "%Y-%m-%d-%H%M%SZ"

# Copies of the snapshots elsewhere, each kept by its own plan. With ZFS storage the target is a dataset
# here (POOL/PATH, e.g. a pool on a USB disk) or over ssh ([user@]host:POOL/PATH): `zfs send -I` from
# the last common snapshot. With directory storage it is a restic repository (a path or any restic URL),
# whose password is in password_file (chmod 600). A destination that cannot be reached is retried every
# round, and the snapshots it still needs are kept here until it has them.
# [[backups.destinations]]
# name = "offsite"
# target = "backup@backup.example.org:tank/foundry"
# plan = "30d=>1d,1y=>1w"
# instances = []           # only these instances; empty: all
# password_file = "restic-password"

[discord]
# Optional. With a bot token file, `up` starts the Discord bot: invites, the tenant setup wizard,
# everyday commands, and status updates in ops_channel_id. With client_id and client_secret_file,
# tenants sign in with Discord to fetch their backups at https://<instance>.<domain>/backups/
# (register https://<fleet_host>.<domain>/auth/callback as the app's redirect URI).
# token_file = "discord-token"        # chmod 600
# guild_id = "123456789012345678"
admin_role = "fleet-admin"
admin_users = []                      # Discord user ids that are admins in any case
# ops_channel_id = "123456789012345678"
# client_id = "123456789012345678"
# client_secret_file = "discord-client-secret"   # chmod 600
session_hours = 12.0

[logs]
max_kb = 10240             # rotate an instance's log at this size ...
keep = 5                   # ... keeping this many old files

[panel]
# The web panel at https://<fleet_host>.<domain>/: admins see every instance, tenants their own; sign in
# with Discord ([discord] client_id), or with a one-time link from `foundry-fleet panel login`.
enabled = true
sampling = true            # off: no memory and CPU figures (the panel shows none, /metrics neither)
sample_interval = 30.0     # seconds between samples of each running instance's memory and CPU ...
history_minutes = 60       # ... kept in memory this long (the panel's sparklines)

[metrics]
# /metrics in Prometheus' text format at https://<fleet_host>.<domain>/metrics, for the bearer token in
# token_file (made on first start, chmod 600); listen also serves it without a token on a local address.
# token_file = "/etc/foundry-fleet/metrics.token"   # default: state/metrics.token in the fleet root
listen = ""                # e.g. "127.0.0.1:9464"

[sftp]
# Tenants' files over SFTP: user name = instance name, confined to its Data/ folder, public keys only
# (`foundry-fleet instance sftp-key add` or /fleet sftp-key add). The host key is made on first start.
enabled = false
listen = "0.0.0.0:2222"
"""


NOMAD_TEMPLATE = """\
{comment}[nomad]
# The nomad runtime: Nomad schedules each instance as a service job (fvtt-<name>) on the node holding its
# data, and lays instances out with the parameterized job fvtt-provision (see deploy/nomad/).
{comment}address = {address}          # Nomad's HTTP API; https:// with ca_file for TLS
# region = "global"                     # default: the agent's region
{comment}namespace = "default"
{token_line}
{ca_line}
# datacenters = ["*"]
# How an instance runs on its node: podman (the image from [podman]) or exec (the node binary of [node]).
{comment}task_driver = "podman"
# mhz_per_core = 2000                   # what [limits] cpu_percent = 100 asks of Nomad, in MHz
# timeout = 10.0                        # seconds per API call; Nomad down is retried with backoff
# wait = "300s"                         # blocking queries: Nomad answers at once on a change
# node_root = "/srv/foundry-fleet"      # the fleet root as the nodes see it; default: this root
# Nodes keeping instances' data on storage of their own, one [[nomad.homes]] each (a node in at most one;
# nodes in none share the fleet root). `instance move` to a node of another home sends the data there.
# This host reaches each home's files at its root (a pool imported here, or the node's fleet root mounted
# here at the same path); a ZFS pool on another machine runs its zfs commands there over ssh.
# [[nomad.homes]]
# name = "pool-b"
# nodes = ["node-b"]
# root = "/srv/fleet-b"                 # the home's fleet root as this host reaches it (absolute)
# node_root = "/srv/fleet-b"            # the same as its nodes see it; default: root
# zfs_base = "tankb/fleet"              # with [storage] driver = "zfs" (the home's own datasets)
# ssh = "root@node-b"                   # ZFS only: the host whose pool it is, its commands run there
# ssh_command = ["ssh", "-i", "/etc/foundry-fleet/node-key"]  # default ["ssh"]
"""


def _nomad_section(runtime: str, address: str | None, token_file: Path | None, ca_file: Path | None) -> str:
    """[nomad]: filled in for the nomad runtime, an example (commented out) for the others."""
    if runtime != "nomad":
        if address or token_file or ca_file:
            raise InvalidInput("--nomad-addr, --nomad-token-file and --nomad-ca-file are for --runtime nomad",
                               "add --runtime nomad, or leave them out")
        return NOMAD_TEMPLATE.format(comment="# ", address=_toml_str("http://127.0.0.1:4646"),
                                     token_line='# token_file = "nomad-token"     # the ACL token, chmod 600',
                                     ca_line='# ca_file = "nomad-ca.pem"')
    if address is not None:
        from pydantic import ValidationError

        from foundry_fleet.config import NomadSection

        try:
            address = NomadSection(address=address).address
        except ValidationError as e:
            raise InvalidInput(f"--nomad-addr: {e.errors()[0]['msg'].removeprefix('Value error, ')}",
                               "e.g. --nomad-addr http://127.0.0.1:4646") from None
    if token_file is not None:
        from foundry_fleet.private_files import check_private_file

        token_file = token_file.resolve()
        check_private_file(token_file, "the Nomad ACL token file", "--nomad-token-file")
    if ca_file is not None:
        ca_file = ca_file.resolve()
        if not ca_file.is_file():
            raise InvalidInput(f"the Nomad CA file {ca_file} does not exist", "fix --nomad-ca-file")
    token_line = (f"token_file = {_toml_str(str(token_file))}   # the ACL token, chmod 600" if token_file
                  else '# token_file = "nomad-token"     # the ACL token, chmod 600')
    ca_line = f"ca_file = {_toml_str(str(ca_file))}" if ca_file else '# ca_file = "nomad-ca.pem"'
    return NOMAD_TEMPLATE.format(comment="", address=_toml_str(address or "http://127.0.0.1:4646"),
                                 token_line=token_line, ca_line=ca_line)


EPHEMERAL_PORTS = Path("/proc/sys/net/ipv4/ip_local_port_range")


def ephemeral_ports(path: Path = EPHEMERAL_PORTS) -> tuple[int, int] | None:
    """The kernel's range for outgoing connections' local ports; None where it cannot be read."""
    try:
        low, high = (int(x) for x in path.read_text().split())
    except (OSError, ValueError):
        return None
    return low, high


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def init_fleet(
    root: Path,
    domain: str | None = None,
    http_port: int | None = None,
    https_port: int | None = None,
    tls: str | None = None,
    storage: str = "directory",
    force: bool = False,
    zfs_base: str | None = None,
    runtime: str = "local",
    runtimes: Collection[str] | None = None,
    nomad_address: str | None = None,
    nomad_token_file: Path | None = None,
    nomad_ca_file: Path | None = None,
    web_port: int | None = None,
    instance_ports: str | None = None,
    ephemeral: tuple[int, int] | None = None,
) -> Path:
    """Write <root>/fleet.toml and create the layout; refuses to overwrite without `force`.

    `runtimes`: the runtime drivers offered (the CLI's choice); None leaves the check to the configuration,
    which knows every registered driver. `instance_ports`: "LOW-HIGH"; `ephemeral`: the kernel's ephemeral
    range it must stay out of (the caller reads it: `ephemeral_ports()`)."""
    if runtimes is not None and runtime not in runtimes:
        raise InvalidInput(f"unknown runtime driver {runtime!r}", f"use {' or '.join(sorted(runtimes))}")
    if storage not in ("directory", "zfs"):
        raise InvalidInput(f"unknown storage driver {storage!r}", "use directory or zfs")
    if storage == "zfs" and not zfs_base:
        raise InvalidInput("--storage zfs needs --zfs-base POOL[/PATH]", "e.g. --zfs-base tank/foundry")
    if tls is not None and tls not in ("internal", "acme", "on-demand"):
        raise InvalidInput(f"unknown TLS mode {tls!r}", "use internal, acme or on-demand")
    if domain:
        domain = validate_domain(domain)
    for label, port in (("--http-port", http_port), ("--https-port", https_port), ("--web-port", web_port)):
        if port is not None and not 1 <= port <= 65535:
            raise InvalidInput(f"{label} {port} is not a TCP port", "use 1-65535")
    port_low, port_high = parse_port_range(instance_ports, ephemeral) if instance_ports else (30000, 30999)
    nomad = _nomad_section(runtime, nomad_address, nomad_token_file, nomad_ca_file)
    root.mkdir(parents=True, exist_ok=True)
    path = root / CONFIG_NAME
    if path.exists() and not force:
        raise Conflict(f"{path} already exists", "edit it, or pass --force to write a fresh one")
    uid_low, uid_high = choose_block(root)
    # Without a domain: <name>.localhost with a local CA on unprivileged ports; with one: ACME on 80/443.
    text = TEMPLATE.format(
        root=_toml_str("."),
        domain=_toml_str(domain or "localhost"),
        http_port=http_port or (80 if domain else 8080),
        https_port=https_port or (443 if domain else 8443),
        web_port=web_port or 8099,
        port_low=port_low,
        port_high=port_high,
        tls=_toml_str(tls or ("acme" if domain else "internal")),
        runtime=_toml_str(runtime),
        nomad=nomad,
        uid_low=uid_low,
        uid_high=uid_high,
    )
    write_atomic(path, text, 0o644, check=load_config)  # what we write must load: fail here, not at `up`
    config = load_config(path)
    for d in (config.paths.run, config.paths.logs, config.paths.database.parent):
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o700)
    if storage == "zfs":
        from foundry_fleet.services.storage_setup import init_zfs_storage

        init_zfs_storage(path, zfs_base or "")
    return path
