"""`foundry-fleet up`: the daemon. Builds the fleet from its configuration, then starts the adapters (the
control API, the web and backups apps, the Discord bot) and the schedules (reconcile, backups, status
updates, certificates)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import uvicorn
from starlette.applications import Starlette

from foundry_fleet.api.app import Reads, create_app
from foundry_fleet.config import FleetConfig
from foundry_fleet.domain.errors import Conflict, FleetError
from foundry_fleet.domain.events import Outcome
from foundry_fleet.runtime.base import Capability
from foundry_fleet.releases.policy import DownloadPolicy, UnpackLimits
from foundry_fleet.services.data_import import DataImport
from foundry_fleet.services import uid_claims
from foundry_fleet.services.access import Access
from foundry_fleet.services.backups import Backups
from foundry_fleet.services.config_reload import ConfigReload
from foundry_fleet.services.daemon_exit import take_stop_request
from foundry_fleet.services.doctor.dns import HostAddresses, dns_checks, interface_addresses, system_resolver
from foundry_fleet.services.doctor.ports import port_in_use
from foundry_fleet.services.doctor.report import Status
from foundry_fleet.services.next_steps import next_steps
from foundry_fleet.services.certificates import CertificateWatch
from foundry_fleet.services.daemon_info import DaemonInfo
from foundry_fleet.services.daemon_lock import DaemonLock
from foundry_fleet.services.release_registry import ReleaseRegistry
from foundry_fleet.services.panel_cards import PanelCards
from foundry_fleet.services.resource_samples import ResourceSamples
from foundry_fleet.services.runtime_images import ReleaseImage
from foundry_fleet.services.runtime_report import RuntimeReport, node_report
from foundry_fleet.services.operations import Operations
from foundry_fleet.runtime.procfs import available_memory_mb
from foundry_fleet.services.idle_watch import IdleRecords, IdleWatch
from foundry_fleet.services.memory_guard import MemoryGuard
from foundry_fleet.services.wakes import Wakes
from foundry_fleet.services.edge_status import edge_problem_reporter, report_host_conflicts
from foundry_fleet.services.status_updates import Notifier, StatusUpdates
from foundry_fleet.services.snapshot_files import SnapshotFiles
from foundry_fleet.services.supervision_records import SupervisionRecords
from foundry_fleet.services.supervisor import Supervisor, SupervisionSettings
from foundry_fleet.wiring.runtimes import make_runtime
from foundry_fleet.wiring.sftp import start_fleet_sftp
from foundry_fleet.services.tls_permission import load_or_create_secret, secret_path
from foundry_fleet.web.app import by_socket, create_web_app
from foundry_fleet.web.backups import create_backups_app
from foundry_fleet.wiring.drivers import describe_storage, make_edge, make_notifier, managed_caddy
from foundry_fleet.wiring.metrics import MetricsDoor, fleet_collector, make_metrics
from foundry_fleet.wiring.services import FleetServices
from foundry_fleet.wiring.services import (
    make_backups, make_bot_services, make_status_updates, make_web_login, make_wizard, open_services,
)
from foundry_fleet.wiring.services import make_access, make_panel_sessions
from foundry_fleet.services.bulletin import Bulletin
from foundry_fleet.web.panel.services import Panel
from foundry_fleet.wiring.panel import card_sources, health_check, panel_services, runtime_facts, status_from

if TYPE_CHECKING:
    from foundry_fleet.bot.client import BotServices
    from foundry_fleet.services.web_login import WebLogin

log = logging.getLogger("foundry_fleet.daemon")

RECONCILE_EVERY = 30.0
BACKUP_CHECK_EVERY = 30.0  # the smallest sensible plan interval is a minute or more


def bind_private_socket(path: Path) -> socket.socket:
    """A unix socket only its owner can use (the control API and the backups door have no other lock)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    if path.exists() or path.is_symlink():
        path.unlink()  # left by a daemon that died; the lock proves no live one uses it
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    path.chmod(0o600)
    sock.listen(64)
    return sock


def report_capabilities(caps: list[Capability]) -> None:
    """Say once, at start-up, what this host gives the fleet and what it does not."""
    for cap in caps:
        if cap.available:
            log.info("available: %s (%s)", cap.name, cap.detail)
        else:
            log.warning("NOT available: %s: %s", cap.name, cap.detail)


async def serve(config: FleetConfig, leave_running: bool = False, config_file: Path | None = None) -> None:
    """`config_file`: where `config` was read from, for `reload` and SIGHUP (None: neither reads it again)."""
    lock = DaemonLock(config.paths.daemon_lock)
    lock.acquire()
    try:
        await _serve_locked(config, leave_running, config_file)
    finally:
        lock.release()


async def _serve_locked(config: FleetConfig, leave_running: bool, config_file: Path | None) -> None:
    take_stop_request(config.paths)  # one left for a daemon that had gone before it was read
    # From the first moment: a stop asked for while the daemon starts (a `systemctl stop` right after a
    # restart) is carried out once it has started, instances stopped or left as told, rather than
    # ending it midway by the signal's default action with whatever it had started left behind.
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    runtime = make_runtime(config)
    services = open_services(config, actor="daemon", runtime=runtime)
    if os.geteuid() == 0:
        # Before anything starts: as root each instance runs as a uid of uid_range, which no other
        # fleet's tenants and no other process may hold.
        uid_claims.check_fleet(config, services.sessions, runtime.host_processes())  # e.g. containers' monitors
    services.homes.check_configured(config.home_names)  # before any instance's data is looked for
    services.storage.ensure_layout()
    services.storage.snapshots.sweep_views(idle_seconds=0)  # views a previous daemon left behind
    # A start-up that fails undoes what it had set up (the firewall, sockets, Caddy), leaving the host as
    # it was; once the daemon serves, the shutdown below does.
    starting = contextlib.AsyncExitStack()
    try:
        caps = await runtime.open()  # e.g. the firewall line reports what was set up for the port range
        starting.push_async_callback(runtime.close, instances_left_running=leave_running)
        runtime_report = RuntimeReport(runtime.name, runtime.capabilities, list(caps))
        caps.append(Capability("storage", True, describe_storage(services.storage)))
        report_capabilities(caps)

        edge = make_edge(config, services.sites, on_problem=edge_problem_reporter(services.events))
        # Every change to instances reaches the edge; service calls may come from worker threads.
        services.changes.subscribe(lambda: loop.call_soon_threadsafe(edge.request_update))
        # A new instance's first snapshot is due at once: the schedule looks when instances change, not
        # only every BACKUP_CHECK_EVERY seconds.
        backups_may_be_due = asyncio.Event()
        services.changes.subscribe(lambda: loop.call_soon_threadsafe(backups_may_be_due.set))
        web_sock = bind_loopback(config.edge.web_port)
        starting.callback(web_sock.close)
        # Tenants' backups: only the edge (the fleet's own user) may open this socket.
        backups_path = config.paths.run / "backups.sock"
        backups_sock = bind_private_socket(backups_path)
        starting.callback(backups_path.unlink, missing_ok=True)
        starting.callback(backups_sock.close)
        web_login = make_web_login(services)
        # One Access for every door (control API, panel, bot): a reload of the admins reaches them all.
        access = make_access(services)
        panel_sessions = make_panel_sessions(services, web_login, access)
        if problem := web_login.problem():
            log.error("Discord sign-in for backups will not work: %s", problem)
        # Before Caddy starts: it reads this file whenever it asks for an on-demand certificate.
        tls_secret = load_or_create_secret(secret_path(config))
        # Visits to instances that do not serve: answered (a page saying their table starts) from the first
        # moment, and woken once the operations below exist.
        wakes = Wakes(services.hostnames.instance_for_host, operations=None)
        # The panel signs people in from the first moment; its pages work once the operations exist.
        panel = Panel(panel_sessions if config.panel.enabled else None)
        bulletin = Bulletin()  # what the panel's live pages wait on
        services.changes.subscribe(lambda: loop.call_soon_threadsafe(bulletin.bump))
        metrics = make_metrics(config)  # the daemon's own figures at once, the fleet's once it is built (below)
        web_app = by_socket(str(backups_path),
                            create_backups_app(SnapshotFiles(services.storage.snapshots), services.hostnames.instance_for_host,
                                               web_login.logout_token if web_login.enabled else None,
                                               config.fleet.operator),
                            create_web_app(services.hostnames.known_hosts, web_login, tls_secret, wakes, metrics, panel,
                                           config.fleet.operator))
        web = uvicorn.Server(uvicorn.Config(web_app, log_level="warning", lifespan="off"))
        web_task = asyncio.create_task(web.serve(sockets=[web_sock, backups_sock]))
        starting.push_async_callback(stop_server, web, web_task)
        metrics_door = MetricsDoor(config.metrics.listen_address, metrics)
        starting.push_async_callback(metrics_door.close)
        sftp = await start_fleet_sftp(services)
        if sftp is not None:
            starting.push_async_callback(sftp.close)
        # Status updates start here, so the edge's news from this start (refused config, claimed hosts) is told.
        updates = make_status_updates(services, make_notifier(config))
        updates.start_from_now()
        if conflicts := report_host_conflicts(services.hostnames, services.events):
            log.error("%d hostname(s) are claimed twice and served to one instance only: see `foundry-fleet status`",
                      conflicts)
        caddy_pid = None if config.edge.on_nomad else adopted_caddy_pid(config)
        check_edge_ports(config, caddy_pid)  # Caddy would fail on a taken port with a page of its log
        # A Caddy a previous daemon left running keeps serving its players; one started here goes.
        starting.push_async_callback(edge.close, stop_caddy=caddy_pid is None and not leave_running)
        await edge.start()
        caps.append(Capability("edge", True, f"{edge.host.describe()} on :{config.edge.http_port} and "
                                             f":{config.edge.https_port}, TLS {config.edge.tls}"))

        backups = make_backups(services)
        for name in backups.repair():  # before any instance starts on half-restored data
            log.warning("finished an interrupted restore of %s", name)
        if services.moves is not None:  # before any instance starts: each is in exactly one home again
            for recovered in services.moves.recover("daemon"):
                log.warning("%s", recovered.describe())
        for user in make_wizard(services).repair():
            log.warning("settled the setup of Discord user %s, interrupted while provisioning", user)
        def instance_state_changed() -> None:
            edge.request_update()
            bulletin.bump()

        records = SupervisionRecords(services.sessions, services.storage,
                                     changed=lambda: loop.call_soon_threadsafe(instance_state_changed),
                                     own_host=config.host_for)
        supervisor = Supervisor(records, runtime, SupervisionSettings.from_config(config), repair=services.repair_interrupted)
        info = DaemonInfo(pid=os.getpid(), started_at=time.time(), root=str(config.root), capabilities=caps,
                          runtime=runtime_report)
        imports = DataImport(UnpackLimits.from_config(config.releases), config.root / "imports",
                             DownloadPolicy.from_config(config.releases), tuple(config.discord.attachment_hosts))
        if swept := imports.sweep():
            log.warning("removed %d import(s) left staged by a daemon that stopped", swept)
        # One operations service: the control API, and through it the bot and the CLI, all use this one,
        # so one lock per instance holds for every caller.
        operations = Operations(services.lifecycle(), supervisor, backups, config.supervisor.start_timeout, edge,
                                moves=services.moves, memory=memory_guard(config, runtime.capabilities.multi_node),
                                imports=imports)
        services.sites.busy = operations.busy
        # Each running instance's memory and CPU of the last hour, in memory: the panel and /metrics read these.
        samples = ResourceSamples.from_config(config.panel, supervisor.running, supervisor.stats, on_round=bulletin.bump)
        certificates = CertificateWatch(services.sites, services.events, edge.certificate, config.edge.tls)
        idle = IdleWatch(supervisor, IdleRecords(services.sessions), edge.requests_in_flight,
                         config.instances.idle_after_seconds, every=config.supervisor.health_interval,
                         busy=operations.busy)
        bot_services = (make_bot_services(open_services(config, actor="bot"), access)
                        if config.discord.token_file is not None else None)
        reload = (None if config_file is None else
                  live_config(config_file, config, services, idle, backups, access, web_login))
        reads = Reads(services.instances, services.hostnames, services.events, services.releases, access)
        app = create_app(reads, operations, supervisor, backups, info, edge=edge,
                         runtime_images=runtime_image_check(config, services.releases),
                         runtime_nodes=lambda: node_report(runtime.nodes),
                         panel_link=panel_sessions.make_link if config.panel.enabled else None,
                         figures=PanelCards(access, card_sources(supervisor, backups, certificates, samples)).figures,
                         reload=reload.reload if reload else None)
        sock = bind_private_socket(config.paths.socket)
        starting.callback(config.paths.socket.unlink, missing_ok=True)
        starting.callback(sock.close)
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))

        starting.push_async_callback(supervisor.shutdown, stop_instances=not leave_running)
        await supervisor.start()
        wakes.operations = operations
        edge.request_update()
        services.events.record("daemon.start", str(config.root), Outcome.OK, f"pid {os.getpid()}")
        log.info("fleet daemon running for %s (control socket %s)", config.root, config.paths.socket)
        api = asyncio.create_task(server.serve(sockets=[sock]))
        starting.push_async_callback(stop_server, server, api)
        scheduler = asyncio.create_task(run_backup_schedule(backups, backups_may_be_due))
        status_task = asyncio.create_task(updates.run())
        certificates_task = asyncio.create_task(certificates.run())
        metrics.watch(fleet_collector(services, supervisor, backups, certificates, samples))
        panel.services = panel_services(config, services, operations, supervisor, backups, certificates, bulletin,
                                        samples, access, health=health_check(config, services, status_from(app)),
                                        runtime_facts=runtime_facts(info, runtime.nodes))
        idle_task = asyncio.create_task(idle.run())
        samples_task = asyncio.create_task(samples.run())
        bot_task = None
        if bot_services is not None:
            bot_task = asyncio.create_task(run_discord_bot(config, bot_services, app, updates))
        if reload is not None:
            loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(reload_on_signal(reload)))
    except BaseException:
        await starting.aclose()
        raise
    starting.pop_all()
    try:
        log.info("%s", await asyncio.to_thread(next_steps_now, config, services))  # once it serves: what next
        while not stopping.is_set() and not api.done():
            try:
                await asyncio.wait_for(stopping.wait(), RECONCILE_EVERY)
            except TimeoutError:
                await supervisor.reconcile()
    finally:
        leave_running = leave_running and not take_stop_request(config.paths)
        log.info("shutting down (%s instances)", "leaving running" if leave_running else "stopping")
        scheduler.cancel()
        status_task.cancel()
        certificates_task.cancel()
        idle_task.cancel()
        samples_task.cancel()
        if bot_task is not None:
            bot_task.cancel()
            await asyncio.gather(bot_task, return_exceptions=True)
        server.should_exit = True
        web.should_exit = True
        await supervisor.shutdown(stop_instances=not leave_running)
        await runtime.close(instances_left_running=leave_running)
        # Left running, Caddy keeps players connected until the next daemon adopts it.
        await edge.close(stop_caddy=not leave_running)
        await api
        await web_task
        await metrics_door.close()
        if sftp is not None:
            await sftp.close()
        sock.close()
        web_sock.close()
        backups_sock.close()
        backups_path.unlink(missing_ok=True)
        config.paths.socket.unlink(missing_ok=True)
        services.events.record("daemon.stop", str(config.root), Outcome.OK, "instances left running" if leave_running else "")


def live_config(path: Path, config: FleetConfig, services: FleetServices, idle: IdleWatch, backups: Backups,
                access: Access, web_login: WebLogin) -> ConfigReload:
    """What `reload` may change while the daemon runs: values these services read each time they use them.
    `access`: the daemon's one, which every door (control API, panel, bot) asks."""
    def idle_after(new: FleetConfig) -> None:
        idle.fleet_idle_after = new.instances.idle_after_seconds

    def plan(new: FleetConfig) -> None:
        backups.records.default_plan = new.backups.plan

    def admins(new: FleetConfig) -> None:
        access.admin_users = frozenset(new.discord.admin_users)
        web_login.settings.admin_users = list(new.discord.admin_users)  # the backups pages ask it

    return ConfigReload(path, config, {"instances.idle_after": idle_after, "backups.plan": plan,
                                       "discord.admin_users": admins}, services.events)


async def reload_on_signal(reload: ConfigReload) -> None:
    try:
        await asyncio.to_thread(reload.reload, "signal:SIGHUP")
    except FleetError as e:  # a bad edit: the daemon goes on with what it has
        log.error("fleet.toml not reloaded: %s", e.message)
    except Exception:  # noqa: BLE001 - a signal must never take the daemon down
        log.exception("fleet.toml not reloaded")


def memory_guard(config: FleetConfig, multi_node: bool) -> MemoryGuard | None:
    """What a wake must find free on this host. A cluster runtime places instances on its nodes and does
    not overcommit them itself (Nomad leaves an allocation pending until a node has the memory)."""
    if multi_node:
        return None
    return MemoryGuard(available_memory_mb, config.limits.memory_mb, config.instances.wake_reserve_mb,
                       hold_for=config.supervisor.start_timeout)


def runtime_image_check(config: FleetConfig, releases: ReleaseRegistry) -> Callable[[], Awaitable[list[ReleaseImage]]] | None:
    """For `status`: whether the images the cached releases need are there, when the runtime runs images."""
    if config.runtime.driver != "podman":
        return None
    from foundry_fleet.wiring.podman_images import release_image_states

    async def check() -> list[ReleaseImage]:
        return await release_image_states(config, await asyncio.to_thread(releases.list))

    return check


async def run_discord_bot(config: FleetConfig, bot_services: BotServices, control_app: Starlette,
                          updates: StatusUpdates) -> None:
    """The bot, on the control API in this process; status updates go through it once it runs. A bot
    that cannot start (no or bad token) is reported and the fleet goes on without it."""
    from foundry_fleet.bot.runner import run_bot

    def use(notifier: Notifier) -> None:
        updates.notifier = notifier

    try:
        await run_bot(config, bot_services, httpx.ASGITransport(app=control_app), on_notifier=use)
    except FleetError as e:
        log.error("the Discord bot is not running: %s%s", e.message, f" ({e.hint})" if e.hint else "")
    except asyncio.CancelledError:
        raise
    except Exception:  # noqa: BLE001 - Discord being away must not take the fleet down
        log.exception("the Discord bot stopped")


async def run_backup_schedule(backups: Backups, may_be_due: asyncio.Event,
                              every: float = BACKUP_CHECK_EVERY) -> None:
    """Take due snapshots and thin old ones, every `every` seconds and whenever `may_be_due` is set; a
    round is cheap when nothing is due."""
    while True:
        may_be_due.clear()
        try:
            result = await asyncio.to_thread(backups.run_schedule)
            for failure in result.failed:
                log.error("backup of %s failed: %s", failure.instance, failure.why)
        except Exception:  # noqa: BLE001 - the schedule must outlive any one bad round
            log.exception("backup round failed")
        try:
            await asyncio.wait_for(may_be_due.wait(), every)
        except TimeoutError:
            pass


def bind_loopback(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as e:
        sock.close()
        raise Conflict(port_in_use("web", "web_port", port)
                       or f"the fleet's web port 127.0.0.1:{port} is taken: {e.strerror}: set [edge] web_port in "
                          "fleet.toml, or init --web-port") from None
    sock.listen(128)
    return sock


def next_steps_now(config: FleetConfig, services: FleetServices) -> str:
    """What to do next, with this fleet's instances and, for a real domain, whether its names resolve here."""
    fleet = config.fleet
    dns = dns_checks(fleet.domain, fleet.fleet_host, system_resolver(), HostAddresses.of(interface_addresses()),
                     edge_elsewhere=config.edge.on_nomad)
    return next_steps(config, [(view.name, view.url) for view in services.instances.list()],
                      [check for check in dns if check.status is not Status.SKIP])


def adopted_caddy_pid(config: FleetConfig) -> int | None:
    """The Caddy a previous daemon left running (its pid file, checked to be that Caddy), or None."""
    caddy = managed_caddy(config)
    return caddy.pid if caddy.adopt() else None


def check_edge_ports(config: FleetConfig, caddy_pid: int | None) -> None:
    """Refuse to start the edge on a port someone else holds, in one line that says how to move it."""
    if config.edge.on_nomad:
        return  # Caddy listens on a node of the cluster, not here
    for label, key, port in (("http", "http_port", config.edge.http_port),
                             ("https", "https_port", config.edge.https_port)):
        if problem := port_in_use(label, key, port, caddy_pid):
            raise Conflict(problem)


async def stop_server(server: uvicorn.Server, task: asyncio.Task[None]) -> None:
    server.should_exit = True
    await asyncio.gather(task, return_exceptions=True)
